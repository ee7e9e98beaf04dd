//! Helpers shared by the tests: an independent check that a detour does
//! what the original instructions did.

#![allow(dead_code)]

pub mod exec;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use livetrace_reloc::{Detour, Prologue, NOP5};

fn decode_at(bytes: &[u8], pos: usize, ip: u64) -> Instruction {
    let mut d = Decoder::with_ip(64, &bytes[pos..], ip + pos as u64, DecoderOptions::NONE);
    let i = d.decode();
    assert!(
        !i.is_invalid(),
        "detour does not decode at +{pos}: {bytes:02x?}"
    );
    i
}

fn u64_at(d: &Detour, addr: u64) -> u64 {
    let off = (addr - d.addr) as usize;
    u64::from_le_bytes(d.bytes[off..off + 8].try_into().unwrap())
}

/// Decodes the original region (`original` at `p.site()`, link-time) and
/// the detour, and checks instruction by instruction that the detour
/// computes the same thing for an object loaded at `bias`.
pub fn check_equivalent(p: &Prologue, d: &Detour, bias: u64) {
    assert_eq!(&d.bytes[..5], &NOP5, "detour opens with its nop5 site");
    assert_eq!(d.original, p.original());
    assert_eq!(d.site, p.site() + bias);
    let n = p.len() as u64;
    assert_eq!(d.resume, p.site() + n + bias);
    // The site's jump lands on the detour.
    let j = decode_at(&d.jump, 0, d.site);
    assert_eq!(j.code(), Code::Jmp_rel32_64);
    assert_eq!(j.near_branch_target(), d.addr);

    let mut orig = Vec::new();
    let mut dec = Decoder::with_ip(64, p.original(), p.site(), DecoderOptions::NONE);
    while dec.can_decode() {
        orig.push(dec.decode());
    }
    let ends_at = |i: &Instruction| i.ip() + i.len() as u64;
    assert_eq!(orig.last().map(ends_at), Some(p.site() + n));

    // First pass: where each original instruction's copy starts.
    let mut starts = Vec::new();
    let mut pos = 5usize;
    for o in &orig {
        starts.push(d.addr + pos as u64);
        pos += copy_len(o, &d.bytes, pos, d.addr);
    }
    let map = |t: u64| -> u64 {
        if t >= p.site() && t < p.site() + n {
            let k = orig
                .iter()
                .position(|o| o.ip() == t)
                .expect("target on a boundary");
            starts[k]
        } else {
            t + bias
        }
    };

    let mut pos = 5usize;
    for o in &orig {
        let x = decode_at(&d.bytes, pos, d.addr);
        if o.is_jmp_short_or_near() {
            assert_eq!(x.code(), Code::Jmp_rel32_64, "{o} -> {x}");
            assert_eq!(
                x.near_branch_target(),
                map(o.near_branch_target()),
                "{o} -> {x}"
            );
        } else if o.is_jcc_short_or_near() {
            assert!(x.is_jcc_near(), "{o} -> {x}");
            assert_eq!(x.condition_code(), o.condition_code());
            assert_eq!(
                x.near_branch_target(),
                map(o.near_branch_target()),
                "{o} -> {x}"
            );
        } else if o.is_loop() || o.is_loopcc() || o.is_jcx_short() {
            assert_eq!(x.code(), o.code(), "{o} -> {x}");
            let short = decode_at(&d.bytes, pos + x.len(), d.addr);
            let near = decode_at(&d.bytes, pos + x.len() + short.len(), d.addr);
            assert_eq!(
                x.near_branch_target(),
                near.ip(),
                "taken path goes to the jmp rel32"
            );
            assert!(short.is_jmp_short());
            assert_eq!(short.near_branch_target(), near.ip() + near.len() as u64);
            assert_eq!(near.code(), Code::Jmp_rel32_64);
            assert_eq!(near.near_branch_target(), map(o.near_branch_target()));
        } else if o.is_call_near() || o.is_call_near_indirect() {
            assert_eq!(x.code(), Code::Push_rm64, "{o} -> {x}");
            assert!(x.is_ip_rel_memory_operand());
            assert_eq!(
                u64_at(d, x.ip_rel_memory_address()),
                ends_at(o) + bias,
                "pushed return address"
            );
            let y = decode_at(&d.bytes, pos + x.len(), d.addr);
            if o.is_call_near() {
                assert_eq!(y.code(), Code::Jmp_rel32_64);
                assert_eq!(y.near_branch_target(), o.near_branch_target() + bias);
            } else {
                assert_eq!(y.code(), Code::Jmp_rm64, "{o} -> {y}");
                same_operand(o, &y, bias);
            }
        } else {
            assert_eq!(x.code(), o.code(), "{o} -> {x}");
            assert_eq!(x.len(), o.len());
            if o.is_ip_rel_memory_operand() {
                same_operand(o, &x, bias);
                for k in 0..o.op_count() {
                    assert_eq!(o.op_kind(k), x.op_kind(k));
                    if matches!(
                        o.op_kind(k),
                        OpKind::Immediate8
                            | OpKind::Immediate16
                            | OpKind::Immediate32
                            | OpKind::Immediate8to64
                            | OpKind::Immediate32to64
                            | OpKind::Immediate8to32
                            | OpKind::Immediate8to16
                    ) {
                        assert_eq!(o.immediate(k), x.immediate(k));
                    }
                }
            } else {
                let off = (o.ip() - p.site()) as usize;
                assert_eq!(
                    &d.bytes[pos..pos + x.len()],
                    &p.original()[off..off + o.len()],
                    "copied as is"
                );
            }
        }
        pos += copy_len(o, &d.bytes, pos, d.addr);
    }
    let back = decode_at(&d.bytes, pos, d.addr);
    assert_eq!(back.code(), Code::Jmp_rel32_64);
    assert_eq!(back.near_branch_target(), p.site() + n + bias);
    assert_eq!(d.bytes.len(), p.detour_len());
}

fn same_operand(o: &Instruction, x: &Instruction, bias: u64) {
    assert_eq!(o.op0_kind(), x.op0_kind(), "{o} vs {x}");
    if o.op0_kind() == OpKind::Register {
        assert_eq!(o.op0_register(), x.op0_register());
    }
    if o.is_ip_rel_memory_operand() {
        assert!(x.is_ip_rel_memory_operand());
        assert_eq!(
            x.ip_rel_memory_address(),
            o.ip_rel_memory_address() + bias,
            "{o} vs {x}"
        );
    } else if o.op0_kind() == OpKind::Memory {
        assert_eq!(o.memory_base(), x.memory_base());
        assert_eq!(o.memory_index(), x.memory_index());
        assert_eq!(o.memory_index_scale(), x.memory_index_scale());
        assert_eq!(o.memory_displacement64(), x.memory_displacement64());
    }
    assert_eq!(o.memory_segment(), x.memory_segment());
    let _ = Register::None;
}

/// Bytes the detour uses for original instruction `o` (whose copy starts
/// at `pos`).
fn copy_len(o: &Instruction, bytes: &[u8], pos: usize, addr: u64) -> usize {
    if o.is_jmp_short_or_near() {
        5
    } else if o.is_jcc_short_or_near() {
        6
    } else if o.is_loop() || o.is_loopcc() || o.is_jcx_short() {
        let x = decode_at(bytes, pos, addr);
        x.len() + 2 + 5
    } else if o.is_call_near() || o.is_call_near_indirect() {
        6 + if o.is_call_near() { 5 } else { o.len() }
    } else {
        let _ = Mnemonic::Nop;
        o.len()
    }
}
