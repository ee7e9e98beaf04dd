use super::*;
use livetrace_ftrace::{insert_external, register, unregister, Ops, Pattern};
use livetrace_sites::ExternalSite;
use std::sync::Mutex;

// Two traced Rust functions: a NOP5 entry stub jumping to the body.
std::arch::global_asm!(
    ".pushsection .text.lt_graph_test,\"ax\",@progbits",
    ".p2align 4",
    ".globl lt_g_outer",
    "lt_g_outer: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    jmp {outer}",
    ".p2align 4",
    ".globl lt_g_inner",
    "lt_g_inner: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    jmp {inner}",
    ".popsection",
    outer = sym outer_body,
    inner = sym inner_body,
);
unsafe extern "C-unwind" {
    fn lt_g_outer(n: u64) -> u64;
    fn lt_g_inner(n: u64) -> u64;
}
extern "C-unwind" fn outer_body(n: u64) -> u64 {
    // SAFETY: the stub jumps to inner_body with the same ABI.
    let r = unsafe { lt_g_inner(n) };
    std::hint::black_box(r + 1)
}
extern "C-unwind" fn inner_body(n: u64) -> u64 {
    if n == 99 {
        panic!("inner panics");
    }
    if n == 98 {
        let bt = std::backtrace::Backtrace::force_capture();
        let frames = format!("{bt}");
        assert!(
            frames.contains("outer_body"),
            "backtrace sees through hooked frames:\n{frames}"
        );
    }
    std::hint::black_box(n * 2)
}

#[derive(Default)]
struct Log(Mutex<Vec<(char, usize, u32)>>);
impl Sink for Log {
    fn exit(&self, func: usize, _: u64, _: u64, _: u64, depth: u32) {
        self.0.lock().unwrap().push(('x', func, depth));
    }
}

fn site(f: unsafe extern "C-unwind" fn(u64) -> u64) -> usize {
    f as *const () as usize
}

#[test]
fn graph_exits_panics_and_backtraces() {
    let sites = [
        ExternalSite {
            addr: site(lt_g_outer),
            name: "g::outer",
            file: file!(),
            line: 0,
        },
        ExternalSite {
            addr: site(lt_g_inner),
            name: "g::inner",
            file: file!(),
            line: 0,
        },
    ];
    insert_external(&sites).unwrap();
    let log: &'static Log = Box::leak(Box::default());
    // SAFETY: the log is leaked, so it outlives its publication.
    unsafe { publish_sink(9999, log as *const dyn Sink) };
    let ops = Ops::builder("graph-test")
        .filter(Pattern::parse("g::*"))
        .build(move |call| {
            // SAFETY: the slot is this call's return slot.
            let hooked = unsafe {
                hook(
                    call.return_slot(),
                    call.ip(),
                    crate::clock_now(),
                    9999,
                    false,
                )
            };
            if let Some(d) = hooked {
                log.0.lock().unwrap().push(('e', call.ip(), d));
            }
        });
    register(&ops).unwrap();
    let (o, i) = (site(lt_g_outer), site(lt_g_inner));

    // SAFETY: plain calls of the traced functions.
    assert_eq!(unsafe { lt_g_outer(3) }, 7);
    assert_eq!(
        *log.0.lock().unwrap(),
        [('e', o, 0), ('e', i, 1), ('x', i, 1), ('x', o, 0)]
    );
    assert_eq!(depth(), 0);

    // A panic through both hooked frames is caught as without tracing.
    log.0.lock().unwrap().clear();
    let before = shadow_stats();
    // SAFETY: as above.
    let r = std::panic::catch_unwind(|| unsafe { lt_g_outer(99) });
    assert!(r.is_err());
    assert_eq!(depth(), 0);
    assert_eq!(shadow_stats().unwound, before.unwound + 2);
    assert_eq!(*log.0.lock().unwrap(), [('e', o, 0), ('e', i, 1)]);

    // Later traces are right.
    log.0.lock().unwrap().clear();
    // SAFETY: as above.
    assert_eq!(unsafe { lt_g_outer(5) }, 11);
    assert_eq!(
        *log.0.lock().unwrap(),
        [('e', o, 0), ('e', i, 1), ('x', i, 1), ('x', o, 0)]
    );

    // A backtrace taken under hooked frames sees the real callers, and
    // the frames still return through the hook.
    log.0.lock().unwrap().clear();
    // SAFETY: as above.
    assert_eq!(unsafe { lt_g_outer(98) }, 197);
    assert_eq!(log.0.lock().unwrap().len(), 4);
    unregister(&ops).unwrap();
    assert!(unpublish_sink(9999));
}

// A traced function returning in every result register at once (rax,
// rdx, vector register 0 at width 16 << V, xmm1, st0 and st1), and a
// caller entering it with rsp aligned or 8 off that stores what came
// back.
std::arch::global_asm!(
    ".pushsection .text.lt_graph_test,\"ax\",@progbits",
    ".macro ret_values V",
    ".p2align 4",
    ".globl lt_g_ret\\V",
    "lt_g_ret\\V: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    mov rax, [rdi]",
    "    mov rdx, [rdi + 8]",
    "    .if \\V == 0",
    "    movups xmm0, [rdi + 64]",
    "    .elseif \\V == 1",
    "    vmovdqu ymm0, [rdi + 64]",
    "    .else",
    "    vmovdqu64 zmm0, [rdi + 64]",
    "    .endif",
    "    movups xmm1, [rdi + 128]",
    "    fld tbyte ptr [rdi + 176]",
    "    fld tbyte ptr [rdi + 160]",
    "    ret",
    ".p2align 4",
    ".globl lt_g_call_ret\\V",
    "lt_g_call_ret\\V:",
    "    push rbx",
    "    push rbp",
    "    mov rbx, rsi",
    "    mov rbp, rsp",
    "    and rsp, -16",
    "    test rdx, rdx",
    "    jz 1f",
    "    sub rsp, 8",
    "1:",
    "    call lt_g_ret\\V",
    "    mov [rbx], rax",
    "    mov [rbx + 8], rdx",
    "    .if \\V == 0",
    "    movups [rbx + 64], xmm0",
    "    .elseif \\V == 1",
    "    vmovdqu [rbx + 64], ymm0",
    "    .else",
    "    vmovdqu64 [rbx + 64], zmm0",
    "    .endif",
    "    movups [rbx + 128], xmm1",
    "    fstp tbyte ptr [rbx + 160]",
    "    fstp tbyte ptr [rbx + 176]",
    "    mov rsp, rbp",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    ".endm",
    "ret_values 0",
    "ret_values 1",
    "ret_values 2",
    ".popsection",
);
unsafe extern "C" {
    fn lt_g_ret0();
    fn lt_g_ret1();
    fn lt_g_ret2();
    fn lt_g_call_ret0(values: *const u8, out: *mut u8, misalign: u64);
    fn lt_g_call_ret1(values: *const u8, out: *mut u8, misalign: u64);
    fn lt_g_call_ret2(values: *const u8, out: *mut u8, misalign: u64);
}

/// A sink whose exit clobbers every register a function may: general,
/// vector at full width, and the x87 stack (`fninit` empties it).
struct Clobber(std::sync::atomic::AtomicU64);
impl Sink for Clobber {
    fn exit(&self, _: usize, _: u64, _: u64, _: u64, _: u32) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let v = livetrace_ftrace::vector_state();
        // SAFETY: only caller-saved state is written, declared through
        // clobber_abi; the x87 stack is empty at a call (the ABI), so
        // `fninit` loses nothing of a correct caller's; the vector
        // instructions exist at the state the hooks were chosen for.
        unsafe {
            std::arch::asm!(
                "fninit",
                "mov rax, -1",
                "mov rdx, -1",
                "mov rcx, -1",
                "mov rsi, -1",
                "mov rdi, -1",
                "mov r8, -1",
                "mov r9, -1",
                "mov r10, -1",
                "mov r11, -1",
                "pcmpeqd xmm0, xmm0",
                "pcmpeqd xmm1, xmm1",
                clobber_abi("C"),
            );
            match v {
                livetrace_ftrace::VectorState::Xmm => {}
                livetrace_ftrace::VectorState::Ymm => {
                    std::arch::asm!("vpcmpeqd ymm0, ymm0, ymm0", "vzeroupper", clobber_abi("C"),)
                }
                livetrace_ftrace::VectorState::Zmm => std::arch::asm!(
                    "vpternlogd zmm0, zmm0, zmm0, 0xff",
                    "vzeroupper",
                    clobber_abi("C"),
                ),
            }
        }
    }
}

#[test]
fn the_return_hook_keeps_every_result_register_at_any_alignment() {
    let v = livetrace_ftrace::vector_state();
    let (f, call): (
        unsafe extern "C" fn(),
        unsafe extern "C" fn(*const u8, *mut u8, u64),
    ) = match v {
        livetrace_ftrace::VectorState::Xmm => (lt_g_ret0, lt_g_call_ret0),
        livetrace_ftrace::VectorState::Ymm => (lt_g_ret1, lt_g_call_ret1),
        livetrace_ftrace::VectorState::Zmm => (lt_g_ret2, lt_g_call_ret2),
    };
    let site = f as *const () as usize;
    let sites = [ExternalSite {
        addr: site,
        name: "ret::values",
        file: file!(),
        line: 0,
    }];
    insert_external(&sites).unwrap();
    let sink: &'static Clobber = Box::leak(Box::new(Clobber(Default::default())));
    // SAFETY: leaked, so it outlives its publication.
    unsafe { publish_sink(9998, sink as *const dyn Sink) };
    let ops = Ops::builder("graph-ret-test")
        .filter(Pattern::Addr(site))
        .build(move |call| {
            // SAFETY: the slot is this call's return slot.
            unsafe {
                hook(
                    call.return_slot(),
                    call.ip(),
                    crate::clock_now(),
                    9998,
                    false,
                )
            };
        });
    register(&ops).unwrap();
    let mut values = [0u8; 192];
    for (i, b) in values.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(29).wrapping_add(3);
    }
    // Two valid x87 extended values (1.5 and -2.25): 64-bit mantissa
    // with the integer bit, 15-bit exponent and sign.
    let ext = |m: u64, e: u16| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&m.to_le_bytes());
        b[8..10].copy_from_slice(&e.to_le_bytes());
        b
    };
    values[160..176].copy_from_slice(&ext(0xc000_0000_0000_0000, 0x3fff));
    values[176..192].copy_from_slice(&ext(0x9000_0000_0000_0000, 0xc000));
    let w = v.width();
    for misalign in [false, true] {
        let before = sink.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = [0u8; 192];
        // SAFETY: the caller reads and writes 192 bytes at each pointer.
        unsafe { call(values.as_ptr(), out.as_mut_ptr(), misalign.into()) };
        assert_eq!(
            sink.0.load(std::sync::atomic::Ordering::Relaxed),
            before + 1,
            "the return went through the hook's exit"
        );
        let what = if misalign { "entered 8 off" } else { "aligned" };
        assert_eq!(out[..16], values[..16], "{what}: rax, rdx");
        assert_eq!(
            out[64..64 + w],
            values[64..64 + w],
            "{what}: vector register 0"
        );
        assert_eq!(out[128..144], values[128..144], "{what}: xmm1");
        assert_eq!(out[160..170], values[160..170], "{what}: st0");
        assert_eq!(out[176..186], values[176..186], "{what}: st1");
    }
    assert_eq!(depth(), 0);
    unregister(&ops).unwrap();
    assert!(unpublish_sink(9998));
}
