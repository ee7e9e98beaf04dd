//! The three instruction forms a site may hold, and their encodings.
//!
//! Every site is exactly five bytes and always holds exactly one whole
//! instruction: the 5-byte NOP `0f 1f 44 00 00`, `call rel32` (`e8`) or
//! `jmp rel32` (`e9`). The displacement of a `call`/`jmp` is relative to the
//! end of the instruction, `site + 5`, so the same target encodes differently
//! at different sites; that is why encoding takes the site address.

use std::fmt;

/// The 5-byte NOP (`nopl 0x0(%rax,%rax,1)`), the disabled state of a site.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// GCC's five one-byte NOPs (`-fpatchable-function-entry=5` on gcc 12).
///
/// Never rewritten live: a thread may be stopped between any two of them, and
/// after the rewrite it would resume in the middle of a 5-byte instruction.
pub const NOP1X5: [u8; 5] = [0x90; 5];

/// The one-byte breakpoint the batch protocol parks on the first byte.
pub const INT3: u8 = 0xcc;

pub(crate) const OP_CALL: u8 = 0xe8;
pub(crate) const OP_JMP: u8 = 0xe9;

/// One instruction a site can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    /// The 5-byte NOP: execution falls through to `site + 5`.
    Nop,
    /// `call target`: pushes `site + 5` and jumps to `target`.
    Call(usize),
    /// `jmp target`.
    Jmp(usize),
}

impl Insn {
    /// Encodes this instruction for the site at `site`.
    ///
    /// Fails when the target is out of reach of a signed 32-bit displacement
    /// from `site + 5`.
    pub fn encode(self, site: usize) -> Result<[u8; 5], EncodeError> {
        let (op, target) = match self {
            Insn::Nop => return Ok(NOP5),
            Insn::Call(t) => (OP_CALL, t),
            Insn::Jmp(t) => (OP_JMP, t),
        };
        let rel = rel32(site, target).ok_or(EncodeError { site, target })?;
        let d = rel.to_le_bytes();
        Ok([op, d[0], d[1], d[2], d[3]])
    }

    /// Decodes the five bytes found at `site`, if they are one of our forms.
    pub fn decode(site: usize, bytes: [u8; 5]) -> Option<Insn> {
        if bytes == NOP5 {
            return Some(Insn::Nop);
        }
        let rel = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let target = site.wrapping_add(5).wrapping_add(rel as isize as usize);
        match bytes[0] {
            OP_CALL => Some(Insn::Call(target)),
            OP_JMP => Some(Insn::Jmp(target)),
            _ => None,
        }
    }

    /// The call or jump target, if any.
    pub fn target(self) -> Option<usize> {
        match self {
            Insn::Nop => None,
            Insn::Call(t) | Insn::Jmp(t) => Some(t),
        }
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Insn::Nop => f.write_str("nop5"),
            Insn::Call(t) => write!(f, "call {t:#x}"),
            Insn::Jmp(t) => write!(f, "jmp {t:#x}"),
        }
    }
}

/// The displacement from the end of a 5-byte instruction at `site` to
/// `target`, if it fits in 32 signed bits.
pub fn rel32(site: usize, target: usize) -> Option<i32> {
    let next = (site as i128) + 5;
    i32::try_from(target as i128 - next).ok()
}

/// A `call`/`jmp` whose target is out of rel32 range of its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeError {
    /// The site address.
    pub site: usize,
    /// The unreachable target.
    pub target: usize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "target {:#x} is out of rel32 range of the site at {:#x}",
            self.target, self.site
        )
    }
}

impl std::error::Error for EncodeError {}

/// Formats five bytes the way error reports show them: `0f 1f 44 00 00`.
pub(crate) struct Hex5(pub [u8; 5]);

impl fmt::Display for Hex5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x} {:02x} {:02x} {:02x} {:02x}",
            b[0], b[1], b[2], b[3], b[4]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nop_encodes_anywhere() {
        assert_eq!(Insn::Nop.encode(0).unwrap(), NOP5);
        assert_eq!(Insn::Nop.encode(usize::MAX - 3).unwrap(), NOP5);
    }

    #[test]
    fn call_forward_and_backward() {
        // call from 0x1000 to 0x2000: rel = 0x2000 - 0x1005 = 0xffb.
        assert_eq!(
            Insn::Call(0x2000).encode(0x1000).unwrap(),
            [0xe8, 0xfb, 0x0f, 0x00, 0x00]
        );
        // jmp to itself: rel = -5.
        assert_eq!(
            Insn::Jmp(0x1000).encode(0x1000).unwrap(),
            [0xe9, 0xfb, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn range_limits() {
        let site = 0x7f00_0000_0000usize;
        let max = site + 5 + i32::MAX as usize;
        let min = site + 5 - (1usize << 31);
        assert!(Insn::Call(max).encode(site).is_ok());
        assert!(Insn::Call(min).encode(site).is_ok());
        let e = Insn::Call(max + 1).encode(site).unwrap_err();
        assert_eq!(
            e,
            EncodeError {
                site,
                target: max + 1
            }
        );
        assert!(Insn::Jmp(min - 1).encode(site).is_err());
    }

    #[test]
    fn decode_round_trips() {
        let site = 0x5555_0000_1234usize;
        for insn in [
            Insn::Nop,
            Insn::Call(site + 100),
            Insn::Call(site - 100_000),
            Insn::Jmp(site + 5),
        ] {
            let bytes = insn.encode(site).unwrap();
            assert_eq!(Insn::decode(site, bytes), Some(insn));
        }
        assert_eq!(Insn::decode(site, NOP1X5), None);
        assert_eq!(Insn::decode(site, [0xcc, 0, 0, 0, 0]), None);
        assert_eq!(Insn::decode(site, [0x0f, 0x1f, 0x44, 0x00, 0x01]), None);
    }

    #[test]
    fn hex_format() {
        assert_eq!(Hex5(NOP5).to_string(), "0f 1f 44 00 00");
    }
}
