//! The instructions a 5-byte jump overwrites, and their copy out of line.

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

struct Layout {
    offsets: Vec<usize>,
    back: usize,
    slot: Option<usize>,
    len: usize,
}

impl Prologue {
    /// Decodes the instructions at `function` (link-time or runtime address
    /// of `code[0]`) that a 5-byte jump overwrites. The function is `size`
    /// bytes long (its symbol size or unwind range); `code` may extend past
    /// it (the rest of its section). The overwritten instructions must end
    /// inside the function, or in the NOP padding that follows it: a
    /// function shorter than 5 bytes (`xor eax,eax; ret`) followed by
    /// alignment NOPs is relocated with those NOPs, which are moved as they
    /// are (so a function that falls through its padding still works). That
    /// nothing else starts or lands in that padding is the caller's check,
    /// like for the rest of the overwritten bytes.
    ///
    /// A function starting with `endbr64` keeps it: the site, and so the
    /// overwritten bytes, start right after it. Indirect calls and jumps
    /// still land on the `endbr64` with IBT on, and the jumps to the detour
    /// and back are direct, which IBT does not check; it is also where
    /// compilers put the NOPs of `-fpatchable-function-entry` with
    /// `-fcf-protection`, so such a site looks like a compiler's.
    pub fn decode(code: &[u8], function: u64, size: u64) -> Result<Prologue, Refusal> {
        let size_usize = usize::try_from(size).unwrap_or(usize::MAX);
        let skip = if code.len() >= ENDBR64.len()
            && size_usize >= ENDBR64.len()
            && code.starts_with(&ENDBR64)
        {
            ENDBR64.len()
        } else {
            0
        };
        let site = function + skip as u64;
        let mut decoder = Decoder::with_ip(
            64,
            code.get(skip..).unwrap_or(&[]),
            site,
            DecoderOptions::NONE,
        );
        let mut insns: Vec<(Instruction, usize)> = Vec::new();
        let mut covered = 0usize;
        while covered < JMP_LEN {
            let past_end = skip + covered >= size_usize;
            let mut insn = Instruction::default();
            decoder.decode_out(&mut insn);
            if past_end && (insn.is_invalid() || insn.mnemonic() != Mnemonic::Nop) {
                return Err(Refusal::TooShort {
                    size,
                    needed: (skip + JMP_LEN) as u64,
                });
            }
            if insn.is_invalid() {
                if decoder.last_error() == DecoderError::NoMoreBytes {
                    // Past the bytes we were given, hence past the function.
                    return Err(Refusal::TooShort {
                        size,
                        needed: (code.len() + 1).max(skip + JMP_LEN) as u64,
                    });
                }
                return Err(Refusal::Undecodable {
                    at: site + covered as u64,
                });
            }
            let offsets = decoder.get_constant_offsets(&insn);
            let disp_at = if offsets.has_displacement() && offsets.displacement_size() == 4 {
                offsets.displacement_offset()
            } else {
                usize::MAX
            };
            insns.push((insn, disp_at));
            covered += insn.len();
        }
        if size_usize < skip + covered
            && size_usize > skip + covered - insns.last().map_or(0, |i| i.0.len())
        {
            // The last instruction straddles the function's end.
            return Err(Refusal::TooShort {
                size,
                needed: (skip + covered) as u64,
            });
        }
        let original = code[skip..skip + covered].to_vec();
        let end = site + covered as u64;
        let count = insns.len();
        let mut moved = Vec::with_capacity(count);
        let mut offset = 0usize;
        for (i, (insn, disp_at)) in insns.iter().enumerate() {
            let last = i + 1 == count;
            let bytes = &original[offset..offset + insn.len()];
            let op = classify(insn, *disp_at, bytes, last, site, end, &insns)?;
            moved.push(Moved {
                at: insn.ip(),
                offset,
                len: insn.len(),
                op,
            });
            offset += insn.len();
        }
        Ok(Prologue {
            function,
            site,
            original,
            moved,
        })
    }

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

    fn layout(&self) -> Layout {
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

fn format(insn: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(insn, &mut s);
    s
}

fn refuse(insn: &Instruction, why: Unrelocatable) -> Refusal {
    Refusal::Unrelocatable {
        at: insn.ip(),
        insn: format(insn),
        why,
    }
}

/// Where a relative branch goes, relative to the overwritten bytes.
fn target(
    insn: &Instruction,
    bytes: &[u8],
    site: u64,
    end: u64,
    insns: &[(Instruction, usize)],
) -> Result<Target, Refusal> {
    // A 66 prefix makes the branch rel16 with IP truncation on AMD, and is
    // ignored on Intel (which iced follows): such code means nothing
    // portable, so it is not moved.
    let prefixes = &bytes[..opcode_index(bytes)];
    if insn.op0_kind() != OpKind::NearBranch64 || prefixes.contains(&0x66) {
        return Err(refuse(insn, Unrelocatable::BranchOperandSize));
    }
    let t = insn.near_branch_target();
    if t < site || t >= end {
        return Ok(Target::Outside(t));
    }
    insns
        .iter()
        .position(|(i, _)| i.ip() == t)
        .map(Target::Inside)
        .ok_or_else(|| refuse(insn, Unrelocatable::BranchIntoInsn))
}

/// Index of the opcode byte of a legacy-map instruction: after legacy
/// prefixes and REX bytes, in any order (a REX not right before the opcode
/// is ignored by the CPU, but still a byte to skip).
fn opcode_index(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| {
            !matches!(
                b,
                0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0x40
                    ..=0x4f
            )
        })
        .unwrap_or(bytes.len())
}

fn classify(
    insn: &Instruction,
    disp_at: usize,
    bytes: &[u8],
    last: bool,
    site: u64,
    end: u64,
    insns: &[(Instruction, usize)],
) -> Result<Op, Refusal> {
    match insn.mnemonic() {
        Mnemonic::Syscall | Mnemonic::Sysenter => {
            return Err(refuse(insn, Unrelocatable::SystemCall))
        }
        Mnemonic::Int3
        | Mnemonic::Int
        | Mnemonic::Int1
        | Mnemonic::Into
        | Mnemonic::Ud0
        | Mnemonic::Ud1
        | Mnemonic::Ud2
        | Mnemonic::Hlt => return Err(refuse(insn, Unrelocatable::Trap)),
        Mnemonic::Xbegin => return Err(refuse(insn, Unrelocatable::Xbegin)),
        Mnemonic::Sysexit
        | Mnemonic::Sysret
        | Mnemonic::Iret
        | Mnemonic::Iretd
        | Mnemonic::Iretq
        | Mnemonic::Retf => return Err(refuse(insn, Unrelocatable::FarOrPrivileged)),
        _ => {}
    }
    if insn.is_privileged()
        || insn.is_jmp_far()
        || insn.is_call_far()
        || insn.is_jmp_far_indirect()
        || insn.is_call_far_indirect()
    {
        return Err(refuse(insn, Unrelocatable::FarOrPrivileged));
    }
    let rip = if insn.is_ip_rel_memory_operand() {
        if insn.memory_base() != Register::RIP {
            return Err(refuse(insn, Unrelocatable::EipRelative));
        }
        if disp_at == usize::MAX {
            return Err(refuse(insn, Unrelocatable::EipRelative));
        }
        Some((disp_at, insn.ip_rel_memory_address()))
    } else {
        None
    };
    match insn.flow_control() {
        FlowControl::Next
        | FlowControl::Return
        | FlowControl::IndirectBranch
        | FlowControl::XbeginXabortXend => Ok(match rip {
            Some((disp_at, target)) => Op::RipRelative { disp_at, target },
            None => Op::Copy,
        }),
        FlowControl::UnconditionalBranch => {
            if !insn.is_jmp_short_or_near() {
                return Err(refuse(insn, Unrelocatable::FarOrPrivileged));
            }
            Ok(Op::Jmp(target(insn, bytes, site, end, insns)?))
        }
        FlowControl::ConditionalBranch => {
            let t = target(insn, bytes, site, end, insns)?;
            if insn.is_jcc_short_or_near() {
                let tttn = insn.condition_code() as u8 - 1;
                Ok(Op::Jcc { tttn, target: t })
            } else if insn.is_loop() || insn.is_loopcc() || insn.is_jcx_short() {
                Ok(Op::Loop {
                    head: bytes[..bytes.len() - 1].to_vec(),
                    target: t,
                })
            } else {
                Err(refuse(insn, Unrelocatable::FarOrPrivileged))
            }
        }
        FlowControl::Call => {
            if !last {
                return Err(refuse(insn, Unrelocatable::CallNotLast));
            }
            if insn.code() != Code::Call_rel32_64 || bytes[..opcode_index(bytes)].contains(&0x66) {
                return Err(refuse(insn, Unrelocatable::BranchOperandSize));
            }
            Ok(Op::Call {
                target: insn.near_branch_target(),
            })
        }
        FlowControl::IndirectCall => {
            if !last {
                return Err(refuse(insn, Unrelocatable::CallNotLast));
            }
            if insn.code() != Code::Call_rm64 {
                return Err(refuse(insn, Unrelocatable::FarOrPrivileged));
            }
            let uses_rsp = insn.op0_kind() == OpKind::Memory
                && (insn.memory_base() == Register::RSP || insn.memory_index() == Register::RSP)
                || insn.op0_kind() == OpKind::Register && insn.op0_register() == Register::RSP;
            if uses_rsp {
                return Err(refuse(insn, Unrelocatable::CallThroughStack));
            }
            let mut jmp = bytes.to_vec();
            let op = opcode_index(&jmp);
            if jmp.get(op) != Some(&0xff) || op + 1 >= jmp.len() {
                return Err(refuse(insn, Unrelocatable::FarOrPrivileged));
            }
            // ModRM.reg selects the operation in group 5: /2 call, /4 jmp.
            jmp[op + 1] = (jmp[op + 1] & !0x38) | (4 << 3);
            Ok(Op::CallIndirect { jmp, rip })
        }
        FlowControl::Interrupt | FlowControl::Exception => Err(refuse(insn, Unrelocatable::Trap)),
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
