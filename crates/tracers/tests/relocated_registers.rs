//! A relocated function's callers may keep values in registers the ABI
//! says a call clobbers: gcc's `-fipa-ra` lets a caller keep r10, r11,
//! rcx, or any vector register live across a call to a function in the
//! same object that does not touch them (zstd's `HUF_decompress4X_*`
//! keeps r10 across `HUF_selectDecoder`). Compiler sites never see this —
//! gcc turns IPA-RA off for functions with a patchable entry — but a
//! function relocated to get a site does. Its entry and its hooked return
//! must leave *every* register as they found it.
//!
//! The library here does what IPA-RA allows, by hand: `lt_ipa_caller`
//! fills every general register it may and every vector register (at
//! their full width: xmm0-15, the upper halves of ymm8-15, zmm16-31 and
//! the mask registers where the CPU has them) with known values, calls the
//! leaf `lt_ipa_leaf` (which only reads rdi and rsi and writes rax) with a
//! direct call, and reports which of them changed. Traced by every tracer,
//! relocated on demand, nothing may change.

use std::ffi::{c_void, CString};
use std::path::PathBuf;
use std::process::Command;

use livetrace_ftrace::VectorState;
use livetrace_tracers::{Config, Session, Tracer};

const SOURCE: &str = r#"
__asm__(
".intel_syntax noprefix\n"
".text\n"
/* The leaf: reads rdi and rsi, writes rax and the flags, nothing else. */
".globl lt_ipa_leaf\n"
".type lt_ipa_leaf, @function\n"
".p2align 4\n"
"lt_ipa_leaf:\n"
"    lea rax, [rdi + rsi]\n"
"    add rax, 1\n"
"    ret\n"
".size lt_ipa_leaf, .-lt_ipa_leaf\n"
/* The same, exported and never called from here: reached only through a
   pointer, its callers assume the ABI. */
".globl lt_ipa_api\n"
".type lt_ipa_api, @function\n"
".p2align 4\n"
"lt_ipa_api:\n"
"    lea rax, [rdi + rsi]\n"
"    add rax, 1\n"
"    ret\n"
".size lt_ipa_api, .-lt_ipa_api\n"
/* Called directly too, but it calls through the PLT: its callers' compiler
   counted every call-clobbered register as clobbered by it. */
".globl lt_ipa_outer\n"
".type lt_ipa_outer, @function\n"
".p2align 4\n"
"lt_ipa_outer:\n"
"    push rbx\n"
"    call getpid@PLT\n"
"    pop rbx\n"
"    ret\n"
".size lt_ipa_outer, .-lt_ipa_outer\n"
".set lt_ipa_outer_local, lt_ipa_outer\n"
".globl lt_ipa_user\n"
".type lt_ipa_user, @function\n"
".p2align 4\n"
"lt_ipa_user:\n"
"    sub rsp, 8\n"
"    call lt_ipa_outer_local\n"
"    add rsp, 8\n"
"    ret\n"
".size lt_ipa_user, .-lt_ipa_user\n"
/* A local alias: a direct call that no interposition can redirect, as
   gcc makes to a function it knows. */
".set lt_ipa_leaf_local, lt_ipa_leaf\n"
/* long lt_ipa_caller(long seed, long wide): a mask of the registers the
   call changed (bit 63: the result was wrong). wide: 1 checks the upper
   halves of ymm8-15, 2 also zmm16-31 and k1-k7. */
".globl lt_ipa_caller\n"
".type lt_ipa_caller, @function\n"
".p2align 4\n"
"lt_ipa_caller:\n"
"    push rbx\n"
"    push r12\n"
"    push r13\n"
"    mov rbx, rdi\n"
"    mov r12, rsi\n"
"    xor r13d, r13d\n"
/* Vector registers n = 0..15 (and 16..31): the low quadword seed + 100 + n,
   the high seed + 200 + n; wide: every 64-bit lane seed + 300 + n. */
".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
"    lea rax, [rbx + 100 + \\n]\n"
"    movq xmm\\n, rax\n"
"    lea rax, [rbx + 200 + \\n]\n"
"    pinsrq xmm\\n, rax, 1\n"
".endr\n"
"    cmp r12, 1\n"
"    jb 1f\n"
".irp n, 8,9,10,11,12,13,14,15\n"
"    lea rax, [rbx + 300 + \\n]\n"
"    movq xmm7, rax\n"
"    vpbroadcastq ymm7, xmm7\n"
"    vinserti128 ymm\\n, ymm7, xmm\\n, 0\n"
".endr\n"
"    lea rax, [rbx + 107]\n"
"    movq xmm7, rax\n"
"    lea rax, [rbx + 207]\n"
"    pinsrq xmm7, rax, 1\n"
"    cmp r12, 2\n"
"    jb 1f\n"
".irp n, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
"    lea rax, [rbx + 300 + \\n]\n"
"    vpbroadcastq zmm\\n, rax\n"
".endr\n"
".irp n, 1,2,3,4,5,6,7\n"
"    lea rax, [rbx + 400 + \\n]\n"
"    kmovq k\\n, rax\n"
".endr\n"
"1:\n"
"    lea rcx, [rbx + 3]\n"
"    lea rdx, [rbx + 4]\n"
"    lea r8, [rbx + 8]\n"
"    lea r9, [rbx + 9]\n"
"    lea r10, [rbx + 10]\n"
"    lea r11, [rbx + 11]\n"
"    lea rsi, [rbx + 6]\n"
"    mov rdi, rbx\n"
"    call lt_ipa_leaf_local\n"
/* The result. */
"    lea r13, [rbx + rbx + 7]\n"
"    xor r13, rax\n"
"    setnz al\n"
"    movzx r13, al\n"
"    shl r13, 63\n"
/* General registers: bits 0-7. */
"    cmp rdi, rbx\n"
"    setne al\n"
"    movzx rax, al\n"
"    or r13, rax\n"
"    lea rax, [rbx + 6]\n"
"    cmp rsi, rax\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 1\n"
"    or r13, rax\n"
".irp r, rcx,rdx,r8,r9,r10,r11\n"
"    mov rax, \\r\n"
"    sub rax, rbx\n"
"    push rax\n"
".endr\n"
"    pop rax\n"
"    cmp rax, 11\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 2\n"
"    or r13, rax\n"
"    pop rax\n"
"    cmp rax, 10\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 3\n"
"    or r13, rax\n"
"    pop rax\n"
"    cmp rax, 9\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 4\n"
"    or r13, rax\n"
"    pop rax\n"
"    cmp rax, 8\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 5\n"
"    or r13, rax\n"
"    pop rax\n"
"    cmp rax, 4\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 6\n"
"    or r13, rax\n"
"    pop rax\n"
"    cmp rax, 3\n"
"    setne al\n"
"    movzx rax, al\n"
"    shl rax, 7\n"
"    or r13, rax\n"
/* xmm n: bits 8 + n. */
".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
"    movq rax, xmm\\n\n"
"    sub rax, rbx\n"
"    cmp rax, 100 + \\n\n"
"    jne 2f\n"
"    pextrq rax, xmm\\n, 1\n"
"    sub rax, rbx\n"
"    cmp rax, 200 + \\n\n"
"    je 3f\n"
"2:\n"
"    bts r13, 8 + \\n\n"
"3:\n"
".endr\n"
"    cmp r12, 1\n"
"    jb 9f\n"
/* Upper halves of ymm8-15: bits 24 + n - 8. */
".irp n, 8,9,10,11,12,13,14,15\n"
"    vextracti128 xmm7, ymm\\n, 1\n"
"    movq rax, xmm7\n"
"    sub rax, rbx\n"
"    cmp rax, 300 + \\n\n"
"    jne 4f\n"
"    pextrq rax, xmm7, 1\n"
"    sub rax, rbx\n"
"    cmp rax, 300 + \\n\n"
"    je 5f\n"
"4:\n"
"    bts r13, 24 + \\n - 8\n"
"5:\n"
".endr\n"
"    cmp r12, 2\n"
"    jb 9f\n"
/* zmm16-31, top lane: bits 32 + n - 16; k1-7: bits 48 + n. */
".irp n, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
"    vextracti64x2 xmm7, zmm\\n, 3\n"
"    pextrq rax, xmm7, 1\n"
"    sub rax, rbx\n"
"    cmp rax, 300 + \\n\n"
"    je 6f\n"
"    bts r13, 32 + \\n - 16\n"
"6:\n"
".endr\n"
".irp n, 1,2,3,4,5,6,7\n"
"    kmovq rax, k\\n\n"
"    sub rax, rbx\n"
"    cmp rax, 400 + \\n\n"
"    je 7f\n"
"    bts r13, 48 + \\n\n"
"7:\n"
".endr\n"
"9:\n"
"    vzeroupper\n"
"    mov rax, r13\n"
"    pop r13\n"
"    pop r12\n"
"    pop rbx\n"
"    ret\n"
".size lt_ipa_caller, .-lt_ipa_caller\n"
".att_syntax\n"
);
"#;

type Caller = extern "C" fn(i64, i64) -> u64;

struct Lib {
    caller: Caller,
    wide: i64,
    /// Where it was built: its symbols are read from the file.
    dir: PathBuf,
}

fn lib() -> &'static Lib {
    static LIB: std::sync::OnceLock<Lib> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let dir: PathBuf = std::env::temp_dir().join(format!("lt-ipa-ra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("ipa.c");
        std::fs::write(&src, SOURCE).unwrap();
        let so = dir.join("libipa.so");
        let r = Command::new("gcc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .output()
            .expect("running gcc");
        assert!(
            r.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let c = CString::new(so.to_str().unwrap()).unwrap();
        // SAFETY: a library built above; no constructors of its own.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null());
        // SAFETY: dlsym on a live handle with a NUL-terminated name.
        let f = unsafe { libc::dlsym(h, c"lt_ipa_caller".as_ptr()) };
        assert!(!f.is_null());
        livetrace_ftrace::discover().unwrap();
        // What the CPU has, as far as livetrace was told to use it
        // (LIVETRACE_VECTOR_STATE narrows it, and then only that much is
        // kept).
        let wide = match livetrace_ftrace::vector_state() {
            VectorState::Zmm if std::arch::is_x86_feature_detected!("avx512dq") => 2,
            VectorState::Zmm | VectorState::Ymm if std::arch::is_x86_feature_detected!("avx2") => 1,
            _ => 0,
        };
        Lib {
            // SAFETY: `lt_ipa_caller` has this signature (see SOURCE).
            caller: unsafe { std::mem::transmute::<*mut c_void, Caller>(f) },
            wide,
            dir,
        }
    })
}

fn check(rounds: i64) {
    let l = lib();
    for k in 0..rounds {
        let seed = 1_000 + k * 1_000;
        let changed = (l.caller)(seed, l.wide);
        assert_eq!(
            changed, 0,
            "registers changed across the call: {changed:#x}"
        );
    }
}

#[test]
fn relocated_functions_keep_every_register_for_their_callers() {
    lib();
    // Untraced: the check itself holds.
    check(10);
    livetrace_ftrace::set_relocate_on_demand(true);
    for tracer in [Tracer::Function, Tracer::Graph, Tracer::Profile] {
        let mut s = Session::start(Config::new(tracer, &["lt_ipa_leaf"])).unwrap();
        check(200);
        s.stop().unwrap();
        match tracer {
            Tracer::Profile => {
                let calls: u64 = s.profile().iter().map(|r| r.calls).sum();
                assert_eq!(calls, 200, "{tracer:?}");
            }
            _ => {
                let n: usize = s.snapshot().threads.iter().map(|t| t.events.len()).sum();
                let per_call = if tracer == Tracer::Graph { 2 } else { 1 };
                assert_eq!(n, 200 * per_call, "{tracer:?}");
            }
        }
    }
    // The leaf was relocated (no site of its own), and is served by the
    // full caller because its object calls it directly; the function only
    // reached through a pointer is not, nor the one called directly that
    // calls through the PLT.
    for f in ["lt_ipa_api", "lt_ipa_outer"] {
        let s = Session::start(Config::new(Tracer::Function, &[f])).unwrap();
        drop(s);
    }
    livetrace_ftrace::inspect(|t| {
        let i = t.lookup_name("lt_ipa_leaf");
        assert_eq!(i.len(), 1);
        assert!(t.relocated(i[0]).is_some());
        assert!(t.record(i[0]).preserves_all());
        let a = t.lookup_name("lt_ipa_api");
        assert_eq!(a.len(), 1);
        assert!(t.relocated(a[0]).is_some());
        assert!(!t.record(a[0]).preserves_all());
        let o = t.lookup_name("lt_ipa_outer");
        assert_eq!(o.len(), 1);
        assert!(t.relocated(o[0]).is_some());
        assert!(!t.record(o[0]).preserves_all());
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&lib().dir);
}
