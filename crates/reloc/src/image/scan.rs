//! Finding references: a linear sweep of each function and of the gaps
//! between them, the jump tables indirect jumps read, and the pointers in
//! dynamic relocations, RELR and data. Every address that may lead into a
//! function's first bytes is a [`Ref`].

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefKind {
    /// A direct jump (`jmp`, `jcc`, `loop`, `jrcxz`, `xbegin`).
    Jump,
    /// A direct call.
    Call,
    /// An address computed or stored: a RIP-relative operand, an absolute
    /// immediate or displacement, a pointer-sized data word.
    Address,
    /// A dynamic relocation's value.
    Relocation,
    /// An entry of a jump table (`from` is the table).
    JumpTable,
    /// An exception landing pad (`from` is the LSDA).
    LandingPad,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Ref {
    pub(super) target: u64,
    pub(super) from: u64,
    pub(super) kind: RefKind,
}

/// Sweeps one function's body linearly: its references, its first
/// undecodable byte, and the jump tables its indirect jumps may read.
pub(super) fn scan_function(
    sections: &Sections,
    c: &Cand,
    fixed: bool,
    refs: &mut Vec<Ref>,
) -> Body {
    if c.size == 0 || !sections.is_exec(c.addr) {
        return Body::default();
    }
    let mut data_refs = Vec::new();
    let end = c.addr + c.size;
    let sweep = sweep(sections, c.addr, end, fixed, refs, &mut data_refs);
    if sweep.indirect_jump {
        for table in data_refs {
            jump_table(sections, table, c.addr, end, refs);
        }
    }
    Body {
        first_error: sweep.first_error,
        indirect_call: sweep.indirect_call,
    }
}

#[derive(Default)]
pub(super) struct Sweep {
    first_error: Option<u64>,
    indirect_jump: bool,
    indirect_call: bool,
}

/// Linear sweep of `[start, end)` (clamped to its section). On a byte that
/// does not decode it notes it and goes on from the next byte.
pub(super) fn sweep(
    sections: &Sections,
    start: u64,
    end: u64,
    fixed: bool,
    refs: &mut Vec<Ref>,
    data_refs: &mut Vec<u64>,
) -> Sweep {
    let mut out = Sweep::default();
    let Some(code) = sections.from(start) else {
        return out;
    };
    let code = &code[..code.len().min((end - start) as usize)];
    let mut pos = 0usize;
    let mut insn = Instruction::default();
    while pos < code.len() {
        let ip = start + pos as u64;
        let mut decoder = Decoder::with_ip(64, &code[pos..], ip, DecoderOptions::NONE);
        let mut bad = None;
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            if insn.is_invalid() {
                bad = Some(insn.ip());
                break;
            }
            note(&insn, sections, fixed, refs, data_refs, &mut out);
        }
        match bad {
            // Resynchronise one byte after the bad instruction's start.
            Some(at) => {
                out.first_error.get_or_insert(at);
                pos = (at - start) as usize + 1;
            }
            None => break,
        }
    }
    out
}

fn note(
    insn: &Instruction,
    sections: &Sections,
    fixed: bool,
    refs: &mut Vec<Ref>,
    data_refs: &mut Vec<u64>,
    out: &mut Sweep,
) {
    let from = insn.ip();
    match insn.flow_control() {
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
            if matches!(
                insn.op0_kind(),
                OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
            ) =>
        {
            let kind = if insn.flow_control() == FlowControl::Call {
                RefKind::Call
            } else {
                RefKind::Jump
            };
            refs.push(Ref {
                target: insn.near_branch_target(),
                from,
                kind,
            });
        }
        FlowControl::XbeginXabortXend if insn.op0_kind() == OpKind::NearBranch64 => {
            refs.push(Ref {
                target: insn.near_branch_target(),
                from,
                kind: RefKind::Jump,
            });
        }
        FlowControl::IndirectBranch if !insn.is_ip_rel_memory_operand() => {
            out.indirect_jump = true;
        }
        FlowControl::IndirectCall => {
            out.indirect_call = true;
        }
        _ => {}
    }
    let mut address = |a: u64| {
        if sections.is_exec(a) {
            refs.push(Ref {
                target: a,
                from,
                kind: RefKind::Address,
            });
        } else if sections.containing(a).is_some() {
            data_refs.push(a);
        }
    };
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Memory => {
                if insn.is_ip_rel_memory_operand() {
                    address(insn.ip_rel_memory_address());
                } else if fixed && insn.memory_base() == Register::None {
                    // `jmp [table + rax*8]`, `mov eax, [abs]`.
                    address(insn.memory_displacement64());
                }
            }
            OpKind::Immediate32to64 | OpKind::Immediate32 | OpKind::Immediate64 if fixed => {
                address(insn.immediate(i));
            }
            _ => {}
        }
    }
}

/// Entries of a jump table at `table` that land in `[lo, hi)`: 32-bit
/// offsets from the table (gcc and clang in position-independent code) or
/// absolute 64-bit addresses (position-dependent code). Reading stops at
/// the first entry of each form that lands elsewhere.
fn jump_table(sections: &Sections, table: u64, lo: u64, hi: u64, refs: &mut Vec<Ref>) {
    let range = lo..hi;
    for k in 0..MAX_TABLE_ENTRIES {
        let Some(e) = sections.read::<4>(table + 4 * k) else {
            break;
        };
        let dest = table.wrapping_add(i32::from_le_bytes(e) as i64 as u64);
        if !range.contains(&dest) {
            break;
        }
        refs.push(Ref {
            target: dest,
            from: table,
            kind: RefKind::JumpTable,
        });
    }
    for k in 0..MAX_TABLE_ENTRIES {
        let Some(e) = sections.read::<8>(table + 8 * k) else {
            break;
        };
        let dest = u64::from_le_bytes(e);
        if !range.contains(&dest) {
            break;
        }
        refs.push(Ref {
            target: dest,
            from: table,
            kind: RefKind::JumpTable,
        });
    }
}

/// Code in executable sections that no candidate covers (padding, code
/// without symbols or unwind info): swept too, for its references.
pub(super) fn gaps(sections: &Sections, cands: &[Cand]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for s in sections.list.iter().filter(|s| s.exec) {
        let end = s.addr + s.data.len() as u64;
        let mut at = s.addr;
        let first = cands.partition_point(|c| c.addr + c.size <= s.addr);
        for c in cands[first..].iter().take_while(|c| c.addr < end) {
            if c.addr > at {
                out.push((at, c.addr));
            }
            at = at.max(c.addr + c.size);
        }
        if at < end {
            out.push((at, end));
        }
    }
    out
}

/// Values of dynamic relocations that point at code: `RELATIVE` (its
/// addend) and symbol relocations (`64`, `GLOB_DAT`, `JUMP_SLOT`) to
/// symbols defined here, plus addend.
pub(super) fn dynamic_pointers(file: &object::File) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Some(relocs) = file.dynamic_relocations() else {
        return out;
    };
    for (slot, r) in relocs {
        let RelocationFlags::Elf { r_type } = r.flags() else {
            continue;
        };
        let value = match (r_type, r.target()) {
            (R_X86_64_RELATIVE, _) => r.addend() as u64,
            (R_X86_64_64 | R_X86_64_GLOB_DAT | R_X86_64_JUMP_SLOT, RelocationTarget::Symbol(i)) => {
                match file.symbol_by_index(i) {
                    Ok(s) if !s.is_undefined() => s.address().wrapping_add(r.addend() as u64),
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.push((slot, value));
    }
    out
}

/// Slots of packed relative relocations (`DT_RELR`, `SHT_RELR`): their
/// values are in the slots themselves.
pub(super) fn relr_pointers(file: &object::File, sections: &Sections) -> Vec<(u64, u64)> {
    const SHT_RELR: u32 = 19;
    let mut out = Vec::new();
    for s in file.sections() {
        let object::SectionFlags::Elf { .. } = s.flags() else {
            continue;
        };
        let is_relr = match s.kind() {
            object::SectionKind::Elf(t) => t == SHT_RELR,
            _ => s.name().is_ok_and(|n| n == ".relr.dyn"),
        };
        if !is_relr {
            continue;
        }
        let Ok(data) = s.data() else { continue };
        let mut base = 0u64;
        let slot = |addr: u64, out: &mut Vec<(u64, u64)>| {
            if let Some(v) = sections.read::<8>(addr) {
                out.push((addr, u64::from_le_bytes(v)));
            }
        };
        for w in data.chunks_exact(8) {
            let e = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if e & 1 == 0 {
                slot(e, &mut out);
                base = e + 8;
            } else {
                for bit in 1..64 {
                    if e >> bit & 1 != 0 {
                        slot(base + (bit - 1) * 8, &mut out);
                    }
                }
                base += 63 * 8;
            }
        }
    }
    out
}

/// Pointer-sized, aligned words of data sections that hold a code address
/// (position-dependent objects, which have no relocations for them).
pub(super) fn data_pointers(sections: &Sections, refs: &mut Vec<Ref>) {
    for s in sections.list.iter().filter(|s| !s.exec) {
        let skip = (s.addr.next_multiple_of(8) - s.addr) as usize;
        let Some(words) = s.data.get(skip..) else {
            continue;
        };
        for (k, w) in words.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if sections.is_exec(v) {
                refs.push(Ref {
                    target: v,
                    from: s.addr + (skip + 8 * k) as u64,
                    kind: RefKind::Address,
                });
            }
        }
    }
}
