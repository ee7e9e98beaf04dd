//! Landing pads from a function's LSDA (`.gcc_except_table`), the format
//! the Itanium C++ ABI's personality routines read.

const OMIT: u8 = 0xff;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.data.get(self.pos..self.pos + N)?.try_into().ok()?;
        self.pos += N;
        Some(b)
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn sleb(&mut self) -> Option<u64> {
        let mut v = 0i64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift >= 64 {
                return None;
            }
            v |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v as u64);
            }
        }
    }

    /// A `DW_EH_PE_*`-encoded value; only `pcrel` of the applications is
    /// meaningful in an LSDA (the others need bases it does not have).
    fn encoded(&mut self, enc: u8) -> Option<u64> {
        let at = self.base + self.pos as u64;
        let v = match enc & 0x0f {
            0x00 => u64::from_le_bytes(self.bytes::<8>()?),
            0x01 => self.uleb()?,
            0x02 => u64::from(u16::from_le_bytes(self.bytes::<2>()?)),
            0x03 => u64::from(u32::from_le_bytes(self.bytes::<4>()?)),
            0x04 => u64::from_le_bytes(self.bytes::<8>()?),
            0x09 => self.sleb()?,
            0x0a => i16::from_le_bytes(self.bytes::<2>()?) as i64 as u64,
            0x0b => i32::from_le_bytes(self.bytes::<4>()?) as i64 as u64,
            0x0c => u64::from_le_bytes(self.bytes::<8>()?),
            _ => return None,
        };
        match enc & 0x70 {
            0x00 => Some(v),
            0x10 => Some(at.wrapping_add(v)),
            _ => None,
        }
    }
}

/// The landing pads of the LSDA at `lsda` of the function (or FDE range)
/// starting at `start`. `bytes(addr)` gives the object's bytes from `addr`
/// to the end of its section. `None` when the table cannot be read.
pub(crate) fn landing_pads<'a>(
    bytes: impl Fn(u64) -> Option<&'a [u8]>,
    lsda: u64,
    start: u64,
) -> Option<Vec<u64>> {
    let mut r = Reader {
        data: bytes(lsda)?,
        pos: 0,
        base: lsda,
    };
    let lpstart_enc = r.u8()?;
    let lpstart = if lpstart_enc == OMIT {
        start
    } else {
        r.encoded(lpstart_enc)?
    };
    let ttype_enc = r.u8()?;
    if ttype_enc != OMIT {
        r.uleb()?;
    }
    let cs_enc = r.u8()?;
    let cs_len = usize::try_from(r.uleb()?).ok()?;
    let end = r.pos.checked_add(cs_len)?;
    if end > r.data.len() {
        return None;
    }
    let mut pads = Vec::new();
    // Call-site fields are offsets from the function start: format only.
    let cs_format = cs_enc & 0x0f;
    while r.pos < end {
        let _region_start = r.encoded(cs_format)?;
        let _region_len = r.encoded(cs_format)?;
        let pad = r.encoded(cs_format)?;
        let _action = r.uleb()?;
        if pad != 0 {
            pads.push(lpstart.wrapping_add(pad));
        }
    }
    Some(pads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gcc_style_table() {
        // lpstart omitted, ttype udata4 with offset 0x10, call sites in
        // uleb128: (0x4, 0x5, lp 0x20, action 1), (0x10, 0x2, lp 0, 0).
        let t = [
            0xff, 0x9b, 0x10, 0x01, 8, 0x04, 0x05, 0x20, 0x01, 0x10, 0x02, 0x00, 0x00,
        ];
        let pads = landing_pads(|_| Some(&t[..]), 0x5000, 0x1000).unwrap();
        assert_eq!(pads, vec![0x1020]);
    }

    #[test]
    fn reads_clang_style_table_and_rejects_truncation() {
        // clang: call sites udata4.
        let mut t = vec![0xff, 0xff, 0x03, 13];
        t.extend_from_slice(&4u32.to_le_bytes());
        t.extend_from_slice(&8u32.to_le_bytes());
        t.extend_from_slice(&0x30u32.to_le_bytes());
        t.push(0);
        let pads = landing_pads(|_| Some(&t[..]), 0x5000, 0x2000).unwrap();
        assert_eq!(pads, vec![0x2030]);
        assert!(landing_pads(|_| Some(&t[..t.len() - 3]), 0x5000, 0x2000).is_none());
    }
}
