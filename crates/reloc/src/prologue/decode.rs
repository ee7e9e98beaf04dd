//! Decoding a prologue: the instructions a 5-byte jump overwrites, each
//! classified by what moving it out of line takes (copied, rip-relative
//! operand adjusted, branch retargeted, `loop` rewritten, call emulated) or
//! why it cannot move.

use super::*;

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
