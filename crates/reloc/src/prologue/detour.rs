//! Building a detour: where each moved instruction goes, from which
//! addresses every rel32 field still reaches its target, and the bytes of
//! the detour and of the jump written at the site.

use super::*;

pub(super) struct Layout {
    pub(super) offsets: Vec<usize>,
    back: usize,
    slot: Option<usize>,
    pub(super) len: usize,
}

impl Prologue {
    pub(super) fn layout(&self) -> Layout {
        let mut offsets = Vec::with_capacity(self.moved.len());
        let mut pos = DETOUR_BODY;
        let mut call = false;
        for m in &self.moved {
            offsets.push(pos);
            pos += match &m.op {
                Op::Copy | Op::RipRelative { .. } => m.len,
                Op::Jmp(_) => 5,
                Op::Jcc { .. } => 6,
                Op::Loop { head, .. } => head.len() + 1 + 2 + 5,
                Op::Call { .. } => {
                    call = true;
                    6 + 5
                }
                Op::CallIndirect { jmp, .. } => {
                    call = true;
                    6 + jmp.len()
                }
            };
        }
        let back = pos;
        pos += JMP_LEN;
        let slot = call.then(|| {
            let s = pos.next_multiple_of(8);
            pos = s + 8;
            s
        });
        Layout {
            offsets,
            back,
            slot,
            len: pos,
        }
    }

    /// Every rel32 field a detour holds that points outside it: (offset in
    /// the detour of the end of the instruction holding it, link-time
    /// target).
    fn external_fields(&self, layout: &Layout) -> Vec<(usize, u64, u64)> {
        let mut f = Vec::new();
        for (m, &off) in self.moved.iter().zip(&layout.offsets) {
            match &m.op {
                Op::Copy => {}
                Op::RipRelative { target, .. } => f.push((off + m.len, *target, m.at)),
                Op::Jmp(Target::Outside(t)) => f.push((off + 5, *t, m.at)),
                Op::Jcc {
                    target: Target::Outside(t),
                    ..
                } => f.push((off + 6, *t, m.at)),
                Op::Loop {
                    head,
                    target: Target::Outside(t),
                } => f.push((off + head.len() + 1 + 2 + 5, *t, m.at)),
                Op::Jmp(_) | Op::Jcc { .. } | Op::Loop { .. } => {}
                Op::Call { target } => f.push((off + 11, *target, m.at)),
                Op::CallIndirect { jmp, rip } => {
                    if let Some((_, t)) = rip {
                        f.push((off + 6 + jmp.len(), *t, m.at));
                    }
                }
            }
        }
        let resume = self.site + self.original.len() as u64;
        f.push((layout.back + JMP_LEN, resume, resume));
        f
    }

    /// The detour addresses (inclusive range, runtime) from which every
    /// rel32 field of the detour reaches its target, for an object loaded
    /// at `bias` (runtime minus link-time address). `None` when no address
    /// does (the prologue's operands are more than 4 GiB apart).
    pub fn detour_window(&self, bias: u64) -> Option<(u64, u64)> {
        let layout = self.layout();
        let mut lo: i128 = 0;
        let mut hi: i128 = (u64::MAX - layout.len as u64) as i128;
        for (end, target, _) in self.external_fields(&layout) {
            let t = target.wrapping_add(bias) as i128;
            // rel = t - (d + end) must fit in an i32.
            lo = lo.max(t - end as i128 - i32::MAX as i128);
            hi = hi.min(t - end as i128 - i32::MIN as i128);
        }
        (lo <= hi).then_some((lo as u64, hi as u64))
    }

    /// Builds the detour for address `detour`, for the object loaded at
    /// `bias`. Fails with [`Refusal::OutOfReach`] when `detour` is outside
    /// [`detour_window`](Prologue::detour_window).
    pub fn relocate(&self, bias: u64, detour: u64) -> Result<Detour, Refusal> {
        let layout = self.layout();
        let rel32 = |field_end: usize, target: u64, at: u64| -> Result<[u8; 4], Refusal> {
            let from = detour.wrapping_add(field_end as u64);
            let rel = target.wrapping_sub(from) as i64;
            i32::try_from(rel)
                .map(i32::to_le_bytes)
                .map_err(|_| Refusal::OutOfReach {
                    at,
                    target: target.wrapping_sub(bias),
                })
        };
        let resolve = |t: &Target| match *t {
            Target::Outside(a) => a.wrapping_add(bias),
            Target::Inside(i) => detour + layout.offsets[i] as u64,
        };
        let resume = self.site + self.original.len() as u64;
        let mut out = Vec::with_capacity(layout.len);
        out.extend_from_slice(&NOP5);
        for (m, &off) in self.moved.iter().zip(&layout.offsets) {
            debug_assert_eq!(out.len(), off);
            let orig = &self.original[m.offset..m.offset + m.len];
            match &m.op {
                Op::Copy => out.extend_from_slice(orig),
                Op::RipRelative { disp_at, target } => {
                    let mut b = orig.to_vec();
                    let d = rel32(off + m.len, target.wrapping_add(bias), m.at)?;
                    b[*disp_at..disp_at + 4].copy_from_slice(&d);
                    out.extend_from_slice(&b);
                }
                Op::Jmp(t) => {
                    out.push(0xe9);
                    out.extend_from_slice(&rel32(off + 5, resolve(t), m.at)?);
                }
                Op::Jcc { tttn, target } => {
                    out.extend_from_slice(&[0x0f, 0x80 | tttn]);
                    out.extend_from_slice(&rel32(off + 6, resolve(target), m.at)?);
                }
                Op::Loop { head, target } => {
                    out.extend_from_slice(head);
                    out.extend_from_slice(&[0x02, 0xeb, 0x05, 0xe9]);
                    let end = off + head.len() + 1 + 2 + 5;
                    out.extend_from_slice(&rel32(end, resolve(target), m.at)?);
                }
                Op::Call { target } => {
                    let slot = layout.slot.expect("a call has a slot");
                    out.extend_from_slice(&[0xff, 0x35]);
                    out.extend_from_slice(&rel32(off + 6, detour + slot as u64, m.at)?);
                    out.push(0xe9);
                    out.extend_from_slice(&rel32(off + 11, target.wrapping_add(bias), m.at)?);
                }
                Op::CallIndirect { jmp, rip } => {
                    let slot = layout.slot.expect("a call has a slot");
                    out.extend_from_slice(&[0xff, 0x35]);
                    out.extend_from_slice(&rel32(off + 6, detour + slot as u64, m.at)?);
                    let mut b = jmp.clone();
                    if let Some((disp_at, target)) = rip {
                        let end = off + 6 + jmp.len();
                        let d = rel32(end, target.wrapping_add(bias), m.at)?;
                        b[*disp_at..disp_at + 4].copy_from_slice(&d);
                    }
                    out.extend_from_slice(&b);
                }
            }
        }
        debug_assert_eq!(out.len(), layout.back);
        out.push(0xe9);
        out.extend_from_slice(&rel32(
            layout.back + JMP_LEN,
            resume.wrapping_add(bias),
            resume,
        )?);
        if let Some(slot) = layout.slot {
            // Padding is never executed: int3 makes a stray jump loud.
            out.resize(slot, 0xcc);
            out.extend_from_slice(&resume.wrapping_add(bias).to_le_bytes());
        }
        debug_assert_eq!(out.len(), layout.len);
        let site = self.site.wrapping_add(bias);
        let rel = (detour as i64).wrapping_sub(site.wrapping_add(JMP_LEN as u64) as i64);
        let rel = i32::try_from(rel).map_err(|_| Refusal::OutOfReach {
            at: self.site,
            target: detour.wrapping_sub(bias),
        })?;
        let mut jump = [0xe9, 0, 0, 0, 0];
        jump[1..].copy_from_slice(&rel.to_le_bytes());
        Ok(Detour {
            addr: detour,
            bytes: out,
            site,
            original: self.original.clone(),
            jump,
            resume: resume.wrapping_add(bias),
        })
    }
}
