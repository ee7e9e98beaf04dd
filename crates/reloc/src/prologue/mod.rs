//! The instructions a 5-byte jump overwrites, and their copy out of line.
//!
//! A [`Prologue`] is decoded once (`decode`) and relocated to wherever its
//! detour is placed (`detour`); this module holds what both share: the
//! moved instructions and how each is fixed up.

mod decode;
mod detour;

use std::fmt;

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, FlowControl, Formatter, Instruction,
    IntelFormatter, Mnemonic, OpKind, Register,
};

use crate::refusal::{Refusal, Unrelocatable};

/// Length of the jump written at the site (`jmp rel32`).
pub const JMP_LEN: usize = 5;
/// `endbr64`: kept in place at the function's entry, the site follows it.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// The canonical 5-byte NOP that opens every detour (its site).
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// Offset in a detour of the relocated instructions (after its NOP site).
pub const DETOUR_BODY: usize = NOP5.len();

/// The whole instructions at a function's entry that a 5-byte jump
/// overwrites, decoded and checked to be movable out of line.
///
/// Built by [`Prologue::decode`] from the function's bytes alone. That the
/// rest of the program never branches into the overwritten bytes is *not*
/// checked here: that takes the whole object ([`Image`](crate::Image)).
#[derive(Clone, Debug)]
pub struct Prologue {
    function: u64,
    site: u64,
    original: Vec<u8>,
    moved: Vec<Moved>,
}

#[derive(Clone, Debug)]
struct Moved {
    at: u64,
    offset: usize,
    len: usize,
    op: Op,
}

#[derive(Clone, Debug)]
enum Op {
    /// Position-independent: copied as is.
    Copy,
    /// A `[rip+disp32]` operand: copied with its displacement recomputed.
    RipRelative { disp_at: usize, target: u64 },
    /// `jmp rel8/rel32`, emitted as `jmp rel32`.
    Jmp(Target),
    /// `jcc rel8/rel32`, emitted as `jcc rel32`; `tttn` is the condition.
    Jcc { tttn: u8, target: Target },
    /// `loop`/`loope`/`loopne`/`jrcxz`/`jecxz` (rel8 only): emitted as
    /// `op +2; jmp +5; jmp rel32 target`. `head` is the instruction without
    /// its rel8.
    Loop { head: Vec<u8>, target: Target },
    /// `call rel32`, the last overwritten instruction: emitted as `push
    /// [rip+slot]` (the original return address) and `jmp rel32`, so the
    /// callee returns straight into the original code and sees the stack the
    /// original call would have made.
    Call { target: u64 },
    /// `call r/m64`, the last overwritten instruction: emitted as `push
    /// [rip+slot]` and the same operand as `jmp r/m64` (`jmp` holds the
    /// instruction with ModRM.reg 4 instead of 2).
    CallIndirect {
        jmp: Vec<u8>,
        rip: Option<(usize, u64)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Outside the overwritten bytes (their end included): the original
    /// code.
    Outside(u64),
    /// The overwritten instruction with this index: its relocated copy.
    Inside(usize),
}

/// What relocation did to one instruction (for tests and diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fixup {
    /// Copied byte for byte.
    Copied,
    /// A RIP-relative operand's displacement recomputed.
    RipRelative,
    /// A relative `jmp`/`jcc` re-encoded with rel32 (widened if it was rel8).
    Branch,
    /// A relative branch into the overwritten bytes themselves, kept inside
    /// the detour.
    BranchInside,
    /// `loop`/`jrcxz`-style rel8-only branch rewritten through a `jmp rel32`.
    LoopRewritten,
    /// A `call` emulated by pushing the original return address.
    CallEmulated,
}

/// A detour built for one address: what to write there, and what the site
/// must become.
///
/// Layout of [`bytes`](Detour::bytes), at [`addr`](Detour::addr):
///
/// ```text
/// +0   nop5                   the detour's own site (the tracing machinery
///                             patches it into `call trampoline` like any
///                             compiler-emitted site)
/// +5   relocated instructions (RIP-relative operands fixed, short branches
///                             widened, branches into the overwritten bytes
///                             kept inside the detour, calls emulated)
///      jmp rel32 → resume     back to the original code after the
///                             overwritten bytes
///      [pad to 8] slot: u64   the original return address, when a call was
///                             emulated
/// ```
///
/// The site (`site`, `original.len()` bytes of original code) must become a
/// `jmp rel32` to `addr` in its first five bytes ([`jump`](Detour::jump));
/// its remaining bytes are left as they are: nothing branches to them (the
/// [`Image`](crate::Image) checks) and, by the time the jump is whole, no
/// thread is inside them (the engine checks; see the crate documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detour {
    /// Where the detour goes.
    pub addr: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The site: runtime address of the first overwritten byte (after an
    /// `endbr64`, if any).
    pub site: u64,
    /// The original bytes at `site` that the relocated instructions replace
    /// (N ≥ 5).
    pub original: Vec<u8>,
    /// The five bytes the site must hold: `jmp rel32` to `addr`.
    pub jump: [u8; JMP_LEN],
    /// Where the detour resumes original code: `site + original.len()`.
    pub resume: u64,
}

impl Detour {
    /// The N bytes the site holds once installed: [`jump`](Detour::jump)
    /// followed by the original bytes past it.
    pub fn site_bytes(&self) -> Vec<u8> {
        let mut b = self.original.clone();
        b[..JMP_LEN].copy_from_slice(&self.jump);
        b
    }

    /// Where, in the detour, the relocated copy of the original instruction
    /// at `orig` starts (the int3 step's trap handler resumes a thread found
    /// at the site's first byte at [`addr`](Detour::addr); this maps any
    /// other instruction boundary, e.g. for a debugger).
    pub fn relocated_addr(&self, prologue: &Prologue, bias: u64, orig: u64) -> Option<u64> {
        let layout = prologue.layout();
        prologue
            .moved
            .iter()
            .zip(&layout.offsets)
            .find(|(m, _)| m.at + bias == orig)
            .map(|(_, &off)| self.addr + off as u64)
    }
}

impl Prologue {
    /// The function's entry.
    pub fn function(&self) -> u64 {
        self.function
    }

    /// The site: the first overwritten byte (the entry, or just after its
    /// `endbr64`).
    pub fn site(&self) -> u64 {
        self.site
    }

    /// N: how many bytes the relocated instructions occupy at the site
    /// (≥ 5). Bytes `site+1 .. site+N` must be unreachable except by falling
    /// through from the site.
    pub fn len(&self) -> usize {
        self.original.len()
    }

    /// Never true: a prologue covers at least [`JMP_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.original.is_empty()
    }

    /// The overwritten bytes as they are in the original code.
    pub fn original(&self) -> &[u8] {
        &self.original
    }

    /// Whether the site follows an `endbr64` kept at the entry.
    pub fn after_endbr(&self) -> bool {
        self.site != self.function
    }

    /// Start addresses of the overwritten instructions.
    pub fn boundaries(&self) -> impl Iterator<Item = u64> + '_ {
        self.moved.iter().map(|m| m.at)
    }

    /// What relocation does to each overwritten instruction, by address.
    pub fn fixups(&self) -> Vec<(u64, Fixup)> {
        self.moved
            .iter()
            .map(|m| {
                let f = match &m.op {
                    Op::Copy => Fixup::Copied,
                    Op::RipRelative { .. } => Fixup::RipRelative,
                    Op::CallIndirect { rip: Some(_), .. } | Op::Call { .. } => Fixup::CallEmulated,
                    Op::CallIndirect { rip: None, .. } => Fixup::CallEmulated,
                    Op::Jmp(Target::Inside(_))
                    | Op::Jcc {
                        target: Target::Inside(_),
                        ..
                    } => Fixup::BranchInside,
                    Op::Jmp(_) | Op::Jcc { .. } => Fixup::Branch,
                    Op::Loop { .. } => Fixup::LoopRewritten,
                };
                (m.at, f)
            })
            .collect()
    }

    /// Bytes a detour for this prologue takes (independent of where it
    /// goes).
    pub fn detour_len(&self) -> usize {
        self.layout().len
    }
}

impl fmt::Display for Fixup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fixup::Copied => "copied",
            Fixup::RipRelative => "rip-relative",
            Fixup::Branch => "branch",
            Fixup::BranchInside => "branch-inside",
            Fixup::LoopRewritten => "loop-rewritten",
            Fixup::CallEmulated => "call-emulated",
        })
    }
}
