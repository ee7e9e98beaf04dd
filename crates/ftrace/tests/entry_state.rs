//! What a traced function sees at entry, through every kind of target a
//! site can have (none, dedicated trampoline, list caller, regs caller, an
//! ops' fast path, a per-site stub calling a fast path, the decline thunk a
//! stub's fast path falls back through), entered with the stack aligned as
//! the ABI says and 8 bytes off (gcc's `-fipa-stack-alignment` calls local
//! functions so), while the callback clobbers every register it may —
//! vector registers at their full width — and calls `memcpy` on 4 KiB.
//!
//! The trampolines save the vector state `livetrace_ftrace::vector_state`
//! names; the test runs at the hardware's width and re-runs itself with
//! `LIVETRACE_VECTOR_STATE` at each narrower one.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Once};

use livetrace_ftrace::{
    enabled_functions, insert_external, register, unregister, vector_state, FastPath, Ops, Pattern,
    Trampoline, VectorState, INSIDE_PLACEHOLDER,
};
use livetrace_sites::ExternalSite;

/// Bytes of the capture: 9 general registers, the entry rsp, padding, then
/// vector registers 0-7 at 64 bytes each (the widest).
const GPRS: usize = 72;
const VECS: usize = 128;
const SEEN: usize = VECS + 8 * 64;

std::arch::global_asm!(
    ".pushsection .text.lt_entry_state,\"ax\",@progbits",
    // lt_v_capture<V>: a traced function storing every register it can
    // observe at entry into lt_v_seen: rdi rsi rdx rcx r8 r9 rax r10 r11,
    // its entry rsp, and vector registers 0-7 at width 16 << V.
    ".macro capture V",
    ".p2align 4",
    ".globl lt_v_capture\\V",
    "lt_v_capture\\V: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    mov [rip + lt_v_seen + 0], rdi",
    "    mov [rip + lt_v_seen + 8], rsi",
    "    mov [rip + lt_v_seen + 16], rdx",
    "    mov [rip + lt_v_seen + 24], rcx",
    "    mov [rip + lt_v_seen + 32], r8",
    "    mov [rip + lt_v_seen + 40], r9",
    "    mov [rip + lt_v_seen + 48], rax",
    "    mov [rip + lt_v_seen + 56], r10",
    "    mov [rip + lt_v_seen + 64], r11",
    "    mov [rip + lt_v_seen + 72], rsp",
    "    .irp n, 0, 1, 2, 3, 4, 5, 6, 7",
    "    .if \\V == 0",
    "    movups [rip + lt_v_seen + 128 + 64 * \\n], xmm\\n",
    "    .elseif \\V == 1",
    "    vmovdqu [rip + lt_v_seen + 128 + 64 * \\n], ymm\\n",
    "    .else",
    "    vmovdqu64 [rip + lt_v_seen + 128 + 64 * \\n], zmm\\n",
    "    .endif",
    "    .endr",
    "    ret",
    // lt_v_call<V>(values, misalign): loads those registers from `values`
    // (same layout) and calls lt_v_capture<V> with rsp 16-aligned at the
    // call (the callee's entry rsp is 8 mod 16), or 8 off when `misalign`.
    ".p2align 4",
    ".globl lt_v_call\\V",
    "lt_v_call\\V:",
    "    push rbx",
    "    push rbp",
    "    mov rbx, rdi",
    "    mov rbp, rsp",
    "    and rsp, -16",
    "    test rsi, rsi",
    "    jz 1f",
    "    sub rsp, 8",
    "1:",
    "    .irp n, 0, 1, 2, 3, 4, 5, 6, 7",
    "    .if \\V == 0",
    "    movups xmm\\n, [rbx + 128 + 64 * \\n]",
    "    .elseif \\V == 1",
    "    vmovdqu ymm\\n, [rbx + 128 + 64 * \\n]",
    "    .else",
    "    vmovdqu64 zmm\\n, [rbx + 128 + 64 * \\n]",
    "    .endif",
    "    .endr",
    "    mov rsi, [rbx + 8]",
    "    mov rdx, [rbx + 16]",
    "    mov rcx, [rbx + 24]",
    "    mov r8, [rbx + 32]",
    "    mov r9, [rbx + 40]",
    "    mov rax, [rbx + 48]",
    "    mov r10, [rbx + 56]",
    "    mov r11, [rbx + 64]",
    "    mov rdi, [rbx]",
    "    call lt_v_capture\\V",
    "    mov rsp, rbp",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    ".endm",
    "capture 0",
    "capture 1",
    "capture 2",
    // A fast path (FastPath::new): counts the call in the word whose
    // address is patched over the movabs immediate, and returns into the
    // function. Touches rax only, restored.
    ".p2align 4",
    ".globl lt_v_fast_start",
    "lt_v_fast_start:",
    "    cmp byte ptr fs:[0x5eed0000], 0",
    "    jne 8f",
    "    mov byte ptr fs:[0x5eed0000], 1",
    "    push rax",
    "    movabs rax, 0x1234567812345678",
    "    lock inc qword ptr [rax]",
    "    pop rax",
    "    mov byte ptr fs:[0x5eed0000], 0",
    "    ret",
    "8:  jmp qword ptr [rip + 9f]",
    ".p2align 3",
    "9: .quad 0",
    ".globl lt_v_fast_end",
    "lt_v_fast_end:",
    // A fast path calling the original (FastPath::calling_original): keeps
    // the caller's return address (the stub replaces it) in the word whose
    // address is patched in, and counts. Single-threaded use only.
    ".p2align 4",
    ".globl lt_v_orig_start",
    "lt_v_orig_start:",
    "    cmp byte ptr fs:[0x5eed0000], 0",
    "    jne 8f",
    "    mov byte ptr fs:[0x5eed0000], 1",
    "    push rax",
    "    push rcx",
    "    movabs rax, 0x1234567812345678",
    "    lock inc qword ptr [rax]",
    // [rsp + 16]: the stub's return address; [rsp + 24]: the caller's.
    "    mov rcx, [rsp + 24]",
    "    mov [rax + 8], rcx",
    "    pop rcx",
    "    pop rax",
    "    mov byte ptr fs:[0x5eed0000], 0",
    "    ret",
    "8:  jmp qword ptr [rip + 9f]",
    ".p2align 3",
    "9: .quad 0",
    ".globl lt_v_orig_end",
    "lt_v_orig_end:",
    // Its exit routine: back to the saved return address, with a `ret`.
    ".p2align 4",
    ".globl lt_v_orig_exit",
    "lt_v_orig_exit:",
    "    push qword ptr [rip + LT_V_COUNTS + 8]",
    "    ret",
    // A fast path calling the original that always declines (the stub's
    // fallback, through the decline thunk, to the dedicated trampoline).
    ".p2align 4",
    ".globl lt_v_decline_start",
    "lt_v_decline_start:",
    "    cmp byte ptr fs:[0x5eed0000], 0",
    "    jmp qword ptr [rip + 9f]",
    ".p2align 3",
    "9: .quad 0",
    ".globl lt_v_decline_end",
    "lt_v_decline_end:",
    ".popsection",
    ".pushsection .bss.lt_v_seen,\"aw\",@nobits",
    ".p2align 6",
    ".globl lt_v_seen",
    "lt_v_seen: .zero 640",
    ".popsection",
);

unsafe extern "C" {
    fn lt_v_capture0();
    fn lt_v_capture1();
    fn lt_v_capture2();
    fn lt_v_call0(values: *const u8, misalign: u64);
    fn lt_v_call1(values: *const u8, misalign: u64);
    fn lt_v_call2(values: *const u8, misalign: u64);
    static lt_v_seen: [u8; SEEN];
    static lt_v_fast_start: u8;
    static lt_v_fast_end: u8;
    static lt_v_orig_start: u8;
    static lt_v_orig_end: u8;
    static lt_v_decline_start: u8;
    static lt_v_decline_end: u8;
    fn lt_v_orig_exit();
}

/// [0]: calls the test fast paths counted; [1]: the saved return address.
#[unsafe(no_mangle)]
static LT_V_COUNTS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn code(start: *const u8, end: *const u8) -> Vec<u8> {
    // SAFETY: start..end is one of the assembly blocks above.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }.to_vec()
}

/// A test fast path with the counter's address patched in.
fn counting(start: *const u8, end: *const u8) -> Vec<u8> {
    let mut c = code(start, end);
    let pat = 0x1234_5678_1234_5678u64.to_le_bytes();
    if let Some(i) = c.windows(8).position(|w| w == pat) {
        c[i..i + 8].copy_from_slice(&(LT_V_COUNTS.as_ptr() as u64).to_le_bytes());
    }
    c
}

fn capture_fn(v: VectorState) -> usize {
    match v {
        VectorState::Xmm => lt_v_capture0 as *const () as usize,
        VectorState::Ymm => lt_v_capture1 as *const () as usize,
        VectorState::Zmm => lt_v_capture2 as *const () as usize,
    }
}

/// Calls the capture function of width `v` with `values` in its registers;
/// returns what it saw.
fn run(v: VectorState, values: &[u8; SEEN], misalign: bool) -> [u8; SEEN] {
    // SAFETY: the call functions read SEEN bytes at `values` and follow the
    // C ABI; lt_v_seen is written only by the capture functions, on this
    // thread (the test is the file's only one).
    unsafe {
        match v {
            VectorState::Xmm => lt_v_call0(values.as_ptr(), misalign.into()),
            VectorState::Ymm => lt_v_call1(values.as_ptr(), misalign.into()),
            VectorState::Zmm => lt_v_call2(values.as_ptr(), misalign.into()),
        }
        std::ptr::read_volatile(&raw const lt_v_seen)
    }
}

/// Writes garbage into every register a callback may clobber, at the full
/// width the trampolines save, and leaves the upper halves dirty or zeroed
/// as AVX library code would.
fn clobber(v: VectorState) {
    // SAFETY: only caller-saved registers are written, all declared
    // clobbered through clobber_abi; the vector instructions used exist at
    // the vector state the trampolines were chosen for.
    unsafe {
        std::arch::asm!(
            "mov rax, -1",
            "mov rcx, -1",
            "mov rdx, -1",
            "mov rsi, -1",
            "mov rdi, -1",
            "mov r8, -1",
            "mov r9, -1",
            "mov r10, -1",
            "mov r11, -1",
            clobber_abi("C"),
        );
        match v {
            VectorState::Xmm => std::arch::asm!(
                ".irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15",
                "pcmpeqd xmm\\n, xmm\\n",
                ".endr",
                clobber_abi("C"),
            ),
            VectorState::Ymm => std::arch::asm!(
                ".irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15",
                "vpcmpeqd ymm\\n, ymm\\n, ymm\\n",
                ".endr",
                "vzeroupper",
                ".irp n, 0, 1, 2, 3, 4, 5, 6, 7",
                "vpcmpeqd ymm\\n, ymm\\n, ymm\\n",
                ".endr",
                clobber_abi("C"),
            ),
            VectorState::Zmm => std::arch::asm!(
                ".irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31",
                "vpternlogd zmm\\n, zmm\\n, zmm\\n, 0xff",
                ".endr",
                "vzeroupper",
                ".irp n, 0, 1, 2, 3, 4, 5, 6, 7",
                "vpternlogd zmm\\n, zmm\\n, zmm\\n, 0xff",
                ".endr",
                clobber_abi("C"),
            ),
        }
    }
}

/// What a real callback does: library code (memcpy of 4 KiB), then
/// anything to every register.
fn busy_callback(v: VectorState) {
    let src = std::hint::black_box([7u8; 4096]);
    let mut dst = [0u8; 4096];
    // SAFETY: two distinct 4 KiB buffers.
    unsafe { libc::memcpy(dst.as_mut_ptr().cast(), src.as_ptr().cast(), 4096) };
    std::hint::black_box(&dst);
    clobber(v);
}

fn setup(v: VectorState) -> usize {
    static ONCE: Once = Once::new();
    let site = capture_fn(v);
    ONCE.call_once(|| {
        let sites = [ExternalSite {
            addr: site,
            name: "v::capture",
            file: file!(),
            line: 0,
        }];
        let r = insert_external(&sites).unwrap();
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    });
    site
}

fn kind() -> Option<Trampoline> {
    enabled_functions()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "v::capture")
        .map(|e| e.trampoline)
}

fn check(v: VectorState, what: &str, values: &[u8; SEEN]) {
    let w = v.width();
    for misalign in [false, true] {
        let seen = run(v, values, misalign);
        assert_eq!(seen[..GPRS], values[..GPRS], "{what}: general registers");
        let rsp = u64::from_le_bytes(seen[72..80].try_into().unwrap());
        assert_eq!(
            rsp % 16,
            if misalign { 0 } else { 8 },
            "{what}: the entry rsp the function sees"
        );
        for n in 0..8 {
            let at = VECS + 64 * n;
            assert_eq!(
                seen[at..at + w],
                values[at..at + w],
                "{what}, {}: vector register {n} ({w} bytes)",
                if misalign { "entered 8 off" } else { "aligned" },
            );
        }
    }
}

#[test]
fn every_target_preserves_the_entry_state_at_any_alignment() {
    let v = vector_state();
    let site = setup(v);
    let values: [u8; SEEN] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    check(v, "untraced", &values);
    let hits = Arc::new(AtomicU64::new(0));
    let build = |label: &str, regs: bool, fast: Option<FastPath>| {
        let h = hits.clone();
        let mut b = Ops::builder(label).filter(Pattern::Addr(site));
        if regs {
            b = b.regs();
        }
        if let Some(f) = fast {
            b = b.fast_path(f);
        }
        b.build(move |_| {
            h.fetch_add(1, Relaxed);
            busy_callback(v);
        })
    };
    let calls = 2;

    let a = build("keep-a", false, None);
    register(&a).unwrap();
    assert!(matches!(kind(), Some(Trampoline::Dedicated { .. })));
    check(v, "dedicated trampoline", &values);
    let b = build("keep-b", false, None);
    register(&b).unwrap();
    assert!(matches!(kind(), Some(Trampoline::List(_))));
    check(v, "list caller", &values);
    let r = build("keep-r", true, None);
    register(&r).unwrap();
    assert!(matches!(kind(), Some(Trampoline::Regs(_))));
    check(v, "regs caller", &values);
    assert_eq!(hits.load(Relaxed), calls * (1 + 2 + 3));
    for o in [&a, &b, &r] {
        unregister(o).unwrap();
    }

    // Fast paths: counted by the assembly, the callback never runs.
    hits.store(0, Relaxed);
    LT_V_COUNTS[0].store(0, Relaxed);
    let fast = FastPath::new(counting(
        &raw const lt_v_fast_start,
        &raw const lt_v_fast_end,
    ))
    .unwrap();
    let f = build("fast", false, Some(fast));
    register(&f).unwrap();
    check(v, "fast path", &values);
    assert_eq!(
        (LT_V_COUNTS[0].load(Relaxed), hits.load(Relaxed)),
        (calls, 0)
    );
    unregister(&f).unwrap();

    let orig = FastPath::calling_original(
        counting(&raw const lt_v_orig_start, &raw const lt_v_orig_end),
        lt_v_orig_exit as *const () as usize,
    )
    .unwrap();
    let s = build("stub", false, Some(orig));
    register(&s).unwrap();
    check(v, "per-site stub calling a fast path", &values);
    assert_eq!(
        (LT_V_COUNTS[0].load(Relaxed), hits.load(Relaxed)),
        (2 * calls, 0)
    );
    unregister(&s).unwrap();

    let declining = FastPath::calling_original(
        code(&raw const lt_v_decline_start, &raw const lt_v_decline_end),
        lt_v_orig_exit as *const () as usize,
    )
    .unwrap();
    let d = build("decline", false, Some(declining));
    register(&d).unwrap();
    check(
        v,
        "stub's fast path declining to the dedicated trampoline",
        &values,
    );
    assert_eq!(hits.load(Relaxed), calls);
    unregister(&d).unwrap();
    assert!(kind().is_none());
    // Keep the placeholder the contract names in sight of this test.
    assert_eq!(INSIDE_PLACEHOLDER, 0x5eed_0000);
}

/// The narrower variants, each in a child process (the vector state is
/// chosen once per process).
#[test]
fn every_vector_state_variant_preserves_its_width() {
    if std::env::var_os("LIVETRACE_VECTOR_STATE").is_some() {
        return;
    }
    let hw = vector_state();
    for (name, state) in [("xmm", VectorState::Xmm), ("ymm", VectorState::Ymm)] {
        if state >= hw {
            continue;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "every_target_preserves_the_entry_state_at_any_alignment",
                "--test-threads=1",
            ])
            .env("LIVETRACE_VECTOR_STATE", name)
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{name} variant:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
