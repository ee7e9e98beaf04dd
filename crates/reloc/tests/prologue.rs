//! Prologue decoding and detour building on hand-assembled bytes, plus
//! property tests over generated instruction sequences.

mod common;

use common::check_equivalent;
use livetrace_reloc::{Fixup, Prologue, Refusal, Unrelocatable, ENDBR64};
use proptest::prelude::*;

const F: u64 = 0x40_1000;
const D: u64 = 0x40_0000_0000 / 0x100; // some address near F (within 2 GiB)

fn decode(code: &[u8]) -> Result<Prologue, Refusal> {
    Prologue::decode(code, F, code.len() as u64)
}

fn relocated(code: &[u8]) -> (Prologue, livetrace_reloc::Detour) {
    let p = decode(code).unwrap_or_else(|r| panic!("{code:02x?} refused: {r}"));
    let d = p.relocate(0, D).unwrap();
    check_equivalent(&p, &d, 0);
    (p, d)
}

fn why(code: &[u8]) -> Unrelocatable {
    match decode(code) {
        Err(Refusal::Unrelocatable { why, .. }) => why,
        other => panic!("{code:02x?}: expected unrelocatable, got {other:?}"),
    }
}

#[test]
fn rip_relative_load_is_moved_with_its_displacement_fixed() {
    // mov rax, [rip+0x1000]; add rax, rdi; ret
    let code = [
        0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00, 0x48, 0x01, 0xf8, 0xc3,
    ];
    let (p, d) = relocated(&code);
    assert_eq!(p.len(), 7);
    assert_eq!(p.fixups(), vec![(F, Fixup::RipRelative)]);
    // The displacement now points from the detour to F+7+0x1000.
    let disp = i32::from_le_bytes(d.bytes[8..12].try_into().unwrap()) as i64;
    assert_eq!((D + 5 + 7) as i64 + disp, (F + 7 + 0x1000) as i64);
}

#[test]
fn rip_relative_with_immediate_after_the_displacement() {
    // cmp dword [rip+0x20], 7 (83 3d disp32 ib): the displacement is
    // relative to the end of the instruction, after the immediate.
    let code = [0x83, 0x3d, 0x20, 0x00, 0x00, 0x00, 0x07, 0xc3];
    let (p, _) = relocated(&code);
    assert_eq!(p.len(), 7);
}

#[test]
fn short_jcc_is_widened_and_points_at_the_original_target() {
    // test rdi, rdi; je +0x10; ...
    let mut code = vec![0x48, 0x85, 0xff, 0x74, 0x10];
    code.extend([0x90; 0x20]);
    let (p, d) = relocated(&code);
    assert_eq!(p.len(), 5);
    assert_eq!(p.fixups()[1], (F + 3, Fixup::Branch));
    assert_eq!(&d.bytes[8..10], &[0x0f, 0x84]);
}

#[test]
fn branch_inside_the_region_stays_in_the_detour() {
    // mov eax, edi; 1: dec eax; jg 1b; add rax, rsi; ret
    let code = [0x89, 0xf8, 0xff, 0xc8, 0x7f, 0xfc, 0x48, 0x01, 0xf0, 0xc3];
    let (p, _) = relocated(&code);
    assert_eq!(p.len(), 6);
    assert_eq!(p.fixups()[2], (F + 4, Fixup::BranchInside));
}

#[test]
fn branch_to_the_site_from_inside_goes_to_the_relocated_copy_not_the_site() {
    // 1: dec edi; jg 1b; nop; ret: the loop must not re-run the detour's site.
    let code = [0xff, 0xcf, 0x7f, 0xfc, 0x90, 0xc3];
    let (p, d) = relocated(&code);
    let rel = i32::from_le_bytes(d.bytes[9..13].try_into().unwrap()) as i64;
    assert_eq!(D as i64 + 13 + rel, (D + 5) as i64, "jg goes to detour+5");
    assert_eq!(p.len(), 5);
}

#[test]
fn loop_and_jrcxz_are_rewritten_through_a_near_jump() {
    // mov rcx, rdi; loop +5
    let mut code = vec![0x48, 0x89, 0xf9, 0xe2, 0x05];
    code.extend([0x90; 8]);
    let (p, _) = relocated(&code);
    assert_eq!(p.fixups()[1].1, Fixup::LoopRewritten);
    // xor eax,eax; jrcxz +8; nop ...; and jecxz (67 e3)
    let mut code = vec![0x31, 0xc0, 0xe3, 0x08, 0x90];
    code.extend([0x90; 8]);
    relocated(&code);
    let mut code = vec![0x31, 0xc0, 0x67, 0xe3, 0x08];
    code.extend([0x90; 8]);
    relocated(&code);
}

#[test]
fn last_call_pushes_the_original_return_address() {
    // push rbx; call +0x100; ...
    let mut code = vec![0x53, 0xe8, 0x00, 0x01, 0x00, 0x00];
    code.extend([0x5b, 0xc3]);
    let (p, d) = relocated(&code);
    assert_eq!(p.fixups()[1].1, Fixup::CallEmulated);
    let slot = d.bytes.len() - 8;
    assert_eq!(
        u64::from_le_bytes(d.bytes[slot..].try_into().unwrap()),
        F + 6
    );
    // call [rip+0x200] and call r11 as the last instruction.
    relocated(&[0xff, 0x15, 0x00, 0x02, 0x00, 0x00, 0xc3]);
    relocated(&[0x31, 0xc0, 0x90, 0x41, 0xff, 0xd3, 0xc3]);
    // notrack call [rax+8] (3e ff 50 08): the prefix is kept on the jmp.
    relocated(&[0x90, 0x3e, 0xff, 0x50, 0x08, 0xc3]);
}

#[test]
fn unrelocatable_instructions_are_refused_with_their_reason() {
    // call rax; (more region)
    assert_eq!(
        why(&[0xff, 0xd0, 0x48, 0x01, 0xf0, 0xc3]),
        Unrelocatable::CallNotLast
    );
    // push rdi; nop; call [rsp]
    assert_eq!(
        why(&[0x57, 0x90, 0xff, 0x14, 0x24, 0xc3]),
        Unrelocatable::CallThroughStack
    );
    // mov eax, edi; syscall; ret (region: 2 + 2 + 1)
    assert_eq!(
        why(&[0x89, 0xf8, 0x0f, 0x05, 0xc3, 0x90]),
        Unrelocatable::SystemCall
    );
    // int3 at the entry (someone's breakpoint)
    assert_eq!(
        why(&[0xcc, 0x89, 0xf8, 0x90, 0x90, 0xc3]),
        Unrelocatable::Trap
    );
    // ud2
    assert_eq!(
        why(&[0x0f, 0x0b, 0x90, 0x90, 0x90, 0xc3]),
        Unrelocatable::Trap
    );
    // xbegin +0
    assert_eq!(
        why(&[0xc7, 0xf8, 0x00, 0x00, 0x00, 0x00, 0xc3]),
        Unrelocatable::Xbegin
    );
    // lea rax, [eip+0] (67 prefix)
    assert_eq!(
        why(&[0x67, 0x48, 0x8d, 0x05, 0, 0, 0, 0, 0xc3]),
        Unrelocatable::EipRelative
    );
    // jmp +1 lands inside the next overwritten instruction (mov eax, imm32)
    assert_eq!(
        why(&[0xeb, 0x01, 0xb8, 1, 2, 3, 4, 0xc3]),
        Unrelocatable::BranchIntoInsn
    );
    // 16-bit operand-size jmp (66 e9 rel16... decoded as jmp rel16)
    assert_eq!(
        why(&[0x66, 0xe9, 0x00, 0x00, 0x90, 0x90, 0xc3]),
        Unrelocatable::BranchOperandSize
    );
}

#[test]
fn endbr64_stays_and_the_site_follows_it() {
    let mut code = ENDBR64.to_vec();
    code.extend([0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00, 0xc3]);
    let (p, d) = relocated(&code);
    assert!(p.after_endbr());
    assert_eq!(p.site(), F + 4);
    assert_eq!(d.site, F + 4);
    assert_eq!(p.len(), 7);
}

#[test]
fn short_functions_use_their_nop_padding_or_are_refused() {
    // xor eax, eax; ret; then padding (size 3)
    let mut code = vec![0x31, 0xc0, 0xc3];
    code.extend([0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
    let p = Prologue::decode(&code, F, 3).unwrap();
    assert_eq!(p.len(), 9);
    let d = p.relocate(0, D).unwrap();
    check_equivalent(&p, &d, 0);
    // ... followed by int3 padding or nothing: too short.
    let code = [0x31, 0xc0, 0xc3, 0xcc, 0xcc, 0xcc];
    assert_eq!(
        Prologue::decode(&code, F, 3).unwrap_err(),
        Refusal::TooShort { size: 3, needed: 5 }
    );
    assert!(matches!(
        Prologue::decode(&code[..3], F, 3),
        Err(Refusal::TooShort { size: 3, .. })
    ));
    // An instruction that straddles the function's end.
    let code = [0x90, 0xb8, 1, 2, 3, 4, 0x90, 0x90];
    assert!(matches!(
        Prologue::decode(&code, F, 4),
        Err(Refusal::TooShort { size: 4, .. })
    ));
    // endbr64 then a 1-byte ret: too short even for the padding rule here.
    let mut code = ENDBR64.to_vec();
    code.push(0xc3);
    assert!(matches!(decode(&code), Err(Refusal::TooShort { .. })));
}

#[test]
fn undecodable_region_is_refused() {
    // 0x06 is invalid in 64-bit mode.
    assert_eq!(
        decode(&[0x06, 0x90, 0x90, 0x90, 0x90, 0xc3]).unwrap_err(),
        Refusal::Undecodable { at: F }
    );
}

#[test]
fn window_is_exact_and_relocate_refuses_outside_it() {
    // mov rax, [rip+0x1000] and a jmp back: both must reach.
    let code = [0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00, 0xc3];
    let p = decode(&code).unwrap();
    let bias = 0x7f00_0000_0000;
    let (lo, hi) = p.detour_window(bias).unwrap();
    assert!(lo < F + bias && F + bias < hi);
    for d in [lo, hi, (lo + hi) / 2] {
        let det = p.relocate(bias, d).unwrap();
        check_equivalent(&p, &det, bias);
    }
    for d in [lo - 1, hi + 1, 0x1000] {
        assert!(
            matches!(p.relocate(bias, d), Err(Refusal::OutOfReach { .. })),
            "{d:#x} is outside [{lo:#x}, {hi:#x}]"
        );
    }
}

// Generated sequences ----------------------------------------------------

/// One instruction template: bytes, with `rel8`/`rel32`/`disp32`
/// placeholders filled from the strategy.
fn insn() -> impl Strategy<Value = Vec<u8>> {
    let rel8 = any::<i8>().prop_map(|r| r as u8);
    let d32 = any::<i32>().prop_map(|d| d.to_le_bytes());
    let small32 = (-0x10_0000i32..0x10_0000).prop_map(|d| d.to_le_bytes());
    prop_oneof![
        // Position-independent.
        Just(vec![0x55]),
        Just(vec![0x53]),
        Just(vec![0x48, 0x89, 0xe5]),
        Just(vec![0x48, 0x89, 0xf8]),
        Just(vec![0x31, 0xc0]),
        Just(vec![0x90]),
        Just(vec![0x48, 0x8d, 0x04, 0x37]),
        Just(vec![0x48, 0x85, 0xff]),
        Just(vec![0xc3]),
        Just(vec![0xff, 0xe0]),
        any::<u8>().prop_map(|i| vec![0x48, 0x83, 0xec, i]),
        any::<u32>().prop_map(|i| {
            let mut v = vec![0xb8];
            v.extend(i.to_le_bytes());
            v
        }),
        // RIP-relative.
        small32
            .clone()
            .prop_map(|d| [&[0x48, 0x8b, 0x05][..], &d].concat()),
        small32
            .clone()
            .prop_map(|d| [&[0x48, 0x8d, 0x0d][..], &d].concat()),
        (small32.clone(), any::<u8>()).prop_map(|(d, i)| [&[0x83, 0x3d][..], &d, &[i]].concat()),
        (small32.clone(), any::<u32>()).prop_map(|(d, i)| [
            &[0xc7, 0x05][..],
            &d,
            &i.to_le_bytes()
        ]
        .concat()),
        small32
            .clone()
            .prop_map(|d| [&[0xf2, 0x0f, 0x10, 0x05][..], &d].concat()),
        small32
            .clone()
            .prop_map(|d| [&[0xc5, 0xfe, 0x6f, 0x05][..], &d].concat()),
        small32
            .clone()
            .prop_map(|d| [&[0xff, 0x25][..], &d].concat()),
        small32
            .clone()
            .prop_map(|d| [&[0x64, 0x48, 0x8b, 0x05][..], &d].concat()),
        // Branches.
        (0x70u8..0x80, rel8.clone()).prop_map(|(op, r)| vec![op, r]),
        (0x80u8..0x90, d32.clone()).prop_map(|(op, d)| [&[0x0f, op][..], &d].concat()),
        rel8.clone().prop_map(|r| vec![0xeb, r]),
        d32.clone().prop_map(|d| [&[0xe9][..], &d].concat()),
        (0xe0u8..0xe4, rel8.clone()).prop_map(|(op, r)| vec![op, r]),
        rel8.clone().prop_map(|r| vec![0x67, 0xe3, r]),
        // Calls.
        d32.clone().prop_map(|d| [&[0xe8][..], &d].concat()),
        small32
            .clone()
            .prop_map(|d| [&[0xff, 0x15][..], &d].concat()),
        Just(vec![0xff, 0xd0]),
        Just(vec![0x41, 0xff, 0xd3]),
        any::<i8>().prop_map(|d| vec![0xff, 0x50, d as u8]),
    ]
}

fn sequence() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (any::<bool>(), prop::collection::vec(insn(), 1..6)).prop_map(|(endbr, insns)| {
        let mut code = if endbr { ENDBR64.to_vec() } else { Vec::new() };
        for i in insns {
            code.extend(i);
        }
        code.extend([0xc3; 4]);
        (endbr, code)
    })
}

fn check_any(code: &[u8], function: u64, bias: u64, pick: u64) -> Result<(), TestCaseError> {
    match Prologue::decode(code, function, code.len() as u64) {
        Ok(p) => {
            let (lo, hi) = p.detour_window(bias).expect("near operands leave a window");
            let d = lo + pick % (hi - lo).max(1);
            let det = p
                .relocate(bias, d)
                .map_err(|e| TestCaseError::fail(format!("{e}")))?;
            check_equivalent(&p, &det, bias);
            if hi < u64::MAX - 1 {
                let out = matches!(p.relocate(bias, hi + 1), Err(Refusal::OutOfReach { .. }));
                prop_assert!(out, "past the window");
            }
            if lo > 0 {
                let out = matches!(p.relocate(bias, lo - 1), Err(Refusal::OutOfReach { .. }));
                prop_assert!(out, "before the window");
            }
        }
        Err(
            Refusal::Unrelocatable { .. } | Refusal::TooShort { .. } | Refusal::Undecodable { .. },
        ) => {}
        Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_prologues_relocate_equivalently(
        (_endbr, code) in sequence(),
        function in 0x1000u64..0x7fff_0000_0000,
        bias_pages in 0u64..0x10_0000,
        pick in any::<u64>(),
    ) {
        check_any(&code, function, bias_pages << 12, pick)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_relocate_equivalently(
        code in prop::collection::vec(any::<u8>(), 1..24),
        pick in any::<u64>(),
    ) {
        check_any(&code, 0x55_5555_0000, 0, pick)?;
    }
}
