//! Trampolines: the code a site calls.
//!
//! Three templates, written once in assembly below and copied at run time into
//! executable pages near the sites they serve (a `call rel32` reaches only
//! ±2 GiB, and shared libraries are usually mapped far from the program):
//!
//! - the *fast* template saves what the traced function can observe at
//!   entry (rdi, rsi, rdx, rcx, r8, r9, rax for varargs, r10, r11, vector
//!   registers 0-7), calls `func(data, slot)` (`slot`: where the return
//!   address into the function is, the caller's just above it) with the
//!   stack aligned, restores, and returns into the function. With `data`
//!   an ops and `func` the ops entry it is the ops' *dedicated* trampoline;
//!   with `func` the list walker it is the *list caller*;
//! - the *regs* template builds a full [`Regs`](crate::Regs) (every
//!   general register, flags, the resume address and the entry stack
//!   pointer, xmm0-7), passes it, writes back whatever the callback changed
//!   — including the resume address, which is how a function is redirected
//!   — and returns there. Inside a callback it runs no callback but still
//!   applies the redirections IPMODIFY ops declared as data
//!   ([`crate::OpsBuilder::redirect_to`]): a live patch holds for every
//!   caller;
//! - the *full* template is the regs template that also keeps every vector
//!   and mask register, for relocated functions (below).
//!
//! # What the templates assume of the machine state at a site
//!
//! Only what no compiler can skip. The entry `rsp` is 8-aligned, not
//! 16-aligned: gcc calls a local function it knows needs no alignment with
//! the stack 8 bytes off (`-fipa-stack-alignment`, on from -O1), so each
//! template realigns once and calls Rust only with the stack aligned. A
//! callback may clobber every caller-saved register at its full width (an
//! AVX `memcpy` ends with `vzeroupper`), so the templates save vector
//! registers 0-7, the only ones the ABI passes arguments in, at the width
//! the CPU and kernel enable ([`VectorState`]: xmm, ymm or zmm; the same
//! number of stores each), assembled once per width and chosen at run
//! time. xmm8-15 (and their upper halves) are never arguments: the
//! templates use them as scratch. gcc disables its interprocedural
//! register allocation (`-fipa-ra`, which would let a caller keep values
//! in registers a local callee does not touch) for functions with
//! patchable entries, so a caller relies on nothing caller-saved across a
//! site.
//!
//! A function *relocated* to get a site had no patchable entry when it was
//! compiled: a caller in its object may keep a value in r10, r11, rcx or
//! any vector register across a call to it (zstd's `HUF_decompress4X_*`
//! keeps r10 across `HUF_selectDecoder`). When its object calls it
//! directly ([`livetrace_sites::Record::preserves_all`]; a function reached
//! only through the PLT or a pointer has callers that assume the ABI), its
//! site calls the *full* template: the regs template that also saves every vector register at
//! full width (32 with AVX-512, and the mask registers) — about 13 ns of
//! stores and loads with AVX-512, a seventh of what `xsavec` costs.
//!
//! Each copy has two data words at its end, read RIP-relative so the code
//! is position independent: `data` and `func` (a copy within rel32 of
//! `func` calls it directly instead); a regs copy has the `guarded` entry's
//! word before them. The thread-pointer offset of the per-thread
//! [`ThreadState`](crate::thread::ThreadState) is the same in every thread,
//! so it is patched into each copy as the displacement of its
//! `fs:[disp32]` operands: no load on the traced path.
//!
//! Both templates test the thread's `inside` byte, non-zero while the
//! thread is in a callback (or an ops' fast path): a call from inside a
//! callback (a callback calling a traced function, or a signal handler
//! that interrupted one) runs no callback and is counted, never recursed
//! into. Entering and leaving store constants (1, then 0), so back-to-back
//! traced calls form no read-modify-write chain through memory; the
//! quiescence wait tells a callback it saw from a later one by marking
//! the byte (see `quiesce`). The byte is at once the recursion guard and
//! the marker the quiescence wait samples.
//!
//! Copies live in pools, one per 1 GiB window of sites, mapped within
//! 512 MiB of the window so every site in it reaches every trampoline of its
//! pool. Slots of a pool are reused only after the quiescence wait showed
//! that no thread can still be inside the previous occupant.

use std::collections::HashMap;
use std::io;

std::arch::global_asm!(
    r#"
    .pushsection .text.livetrace_tramp,"ax",@progbits
    // The thread-pointer offsets of ThreadState's `inside` and `dropped`, as
    // disp32 placeholders each copy gets patched with (see `patch_tls`).
    .set LT_INSIDE, 0x5eed0000
    .set LT_DROPPED, 0x5eed0008
    // From the stub's first return address to its `ip` word.
    .set LT_STUB_IP_FROM_RETURN, 18

    // Vector state V: 0 = xmm (SSE only), 1 = ymm (AVX), 2 = zmm
    // (AVX-512). Each template is assembled once per state; the core copies
    // the one the CPU and kernel enable (see `VectorState`). The argument
    // and result registers are the first eight: V's full width of each is
    // saved, so a callback that runs AVX code (glibc's string functions end
    // with `vzeroupper`) cannot touch a __m256 or __m512 argument. Same
    // number of stores for every V; only their width changes.

    // Vector registers 0-7 to/from [rsp + base], each W = 16 << V bytes,
    // W-aligned.
    .macro lt_vsave V, base
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    .if \V == 0
    movaps xmmword ptr [rsp + \base + 16 * \n], xmm\n
    .elseif \V == 1
    vmovdqa ymmword ptr [rsp + \base + 32 * \n], ymm\n
    .else
    vmovdqa64 zmmword ptr [rsp + \base + 64 * \n], zmm\n
    .endif
    .endr
    .endm
    .macro lt_vrestore V, base
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    .if \V == 0
    movaps xmm\n, xmmword ptr [rsp + \base + 16 * \n]
    .elseif \V == 1
    vmovdqa ymm\n, ymmword ptr [rsp + \base + 32 * \n]
    .else
    vmovdqa64 zmm\n, zmmword ptr [rsp + \base + 64 * \n]
    .endif
    .endr
    .endm
    // Every vector register (16, or 32 with AVX-512) at width W to/from
    // [rsp], and with AVX-512 the mask registers after them. For the full
    // template: all a callback can change that a caller may keep live.
    .macro lt_vsave_all V
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .if \V == 0 && \n < 16
    movaps xmmword ptr [rsp + 16 * \n], xmm\n
    .elseif \V == 1 && \n < 16
    vmovdqa ymmword ptr [rsp + 32 * \n], ymm\n
    .elseif \V == 2
    vmovdqa64 zmmword ptr [rsp + 64 * \n], zmm\n
    .endif
    .endr
    .if \V == 2
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    kmovq qword ptr [rsp + 2048 + 8 * \n], k\n
    .endr
    .endif
    .endm
    .macro lt_vrestore_all V
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .if \V == 0 && \n < 16
    movaps xmm\n, xmmword ptr [rsp + 16 * \n]
    .elseif \V == 1 && \n < 16
    vmovdqa ymm\n, ymmword ptr [rsp + 32 * \n]
    .elseif \V == 2
    vmovdqa64 zmm\n, zmmword ptr [rsp + 64 * \n]
    .endif
    .endr
    .if \V == 2
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    kmovq k\n, qword ptr [rsp + 2048 + 8 * \n]
    .endr
    .endif
    .endm
    // Two general registers to 16 aligned bytes at rsp + off, with one
    // store (through xmm8/xmm9: never arguments, so dead at a function's
    // entry; their upper halves are not arguments either). VEX-encoded
    // when the CPU has AVX, so no SSE/AVX transition is paid.
    .macro lt_save_pair V, lo, hi, off
    .if \V == 0
    movq xmm8, \lo
    movq xmm9, \hi
    punpcklqdq xmm8, xmm9
    movaps xmmword ptr [rsp + \off], xmm8
    .else
    vmovq xmm8, \lo
    vmovq xmm9, \hi
    vpunpcklqdq xmm8, xmm8, xmm9
    vmovdqa xmmword ptr [rsp + \off], xmm8
    .endif
    .endm

    // The fast template.
    //
    // rsp at a site's entry is *not* always the ABI's: gcc lets a caller
    // skip the 16-byte alignment before calling a local function it knows
    // does not need it (-fipa-stack-alignment), so rsp here is 8-aligned,
    // nothing more. A frame record (push rbp; mov rbp, rsp: also what a
    // frame-pointer unwinder follows) keeps the entry rsp in a register the
    // callee preserves, so the frame below is realigned once, to the vector
    // width, and left with `mov rsp, rbp`, no load on rsp's path:
    //   [rsp + 0 .. 8W)            vector registers 0-7
    //   [rsp + 8W + 0 .. 64)       rdi rsi rdx rcx r8 r9 rax r10
    //   [rsp + 8W + 64]            r11
    //   [rbp]                      the function's rbp
    //   [rbp + 8]                  the return address into the function
    .macro lt_tramp_fast V
    .set W, 16 << \V
    .set VB, 8 * W
    .p2align 4
    .globl lt_tramp_fast\V\()_start
lt_tramp_fast\V\()_start:
    // Mark the thread inside a callback; if it was already, this call came
    // from inside one and goes straight back into the function. (A signal
    // between the test and the store runs its own traced calls to the end
    // before we go on.) Flags are not part of any calling convention at a
    // function's entry.
    cmp byte ptr fs:[LT_INSIDE], 0
    jne 9f
    mov byte ptr fs:[LT_INSIDE], 1
    push rbp
    mov rbp, rsp
    // This path is bound by stores (about one per cycle), not by
    // instructions: so eight of the nine general registers go out as four
    // 16-byte pairs built in xmm8/xmm9, not eight pushes.
    sub rsp, VB + 72
    and rsp, -W
    lt_vsave \V, 0
    lt_save_pair \V, rdi, rsi, VB
    lt_save_pair \V, rdx, rcx, VB + 16
    lt_save_pair \V, r8, r9, VB + 32
    lt_save_pair \V, rax, r10, VB + 48
    mov qword ptr [rsp + VB + 64], r11
    .if \V > 0
    // Rust code is SSE code: no dirty upper halves under it.
    vzeroupper
    .endif
    // func(data, slot): the slot holding the return address into the
    // function (the callee finds the site and the caller's return slot
    // from it, only if it needs them).
    movabs rdi, 0x5eed5eed5eed5eed
    lea rsi, [rbp + 8]
    .globl lt_tramp_fast\V\()_call
lt_tramp_fast\V\()_call:
    call qword ptr [rip + 8f]
    lt_vrestore \V, 0
    mov rdi, qword ptr [rsp + VB]
    mov rsi, qword ptr [rsp + VB + 8]
    mov rdx, qword ptr [rsp + VB + 16]
    mov rcx, qword ptr [rsp + VB + 24]
    mov r8, qword ptr [rsp + VB + 32]
    mov r9, qword ptr [rsp + VB + 40]
    mov rax, qword ptr [rsp + VB + 48]
    mov r10, qword ptr [rsp + VB + 56]
    mov r11, qword ptr [rsp + VB + 64]
    mov rsp, rbp
    pop rbp
    mov byte ptr fs:[LT_INSIDE], 0
    ret
9:
    add qword ptr fs:[LT_DROPPED], 1
    ret
    .p2align 3
    .quad 0
8:  .quad 0
    .globl lt_tramp_fast\V\()_end
lt_tramp_fast\V\()_end:
    .endm

    // The regs template: builds a Regs (see regs.rs) under the realigned
    // stack, the full vector registers below it (V > 0), and calls
    // func(data, ip, parent slot, regs); writes back what the callback
    // changed, and resumes at regs.ip.
    //
    // Inside a callback (the recursion guard set) callbacks are not run,
    // but a live patch must hold for every caller: the same frame is then
    // handed to the `guarded` entry, which applies the redirections
    // IPMODIFY ops declared as data (no callback code) and nothing else.
    //
    // FULL = 1 makes the *full* template, for sites whose callers may keep
    // values in any register across the call (relocated functions): every
    // vector register at full width (zmm16-31 and the mask registers too
    // with AVX-512) goes below the Regs and comes back, so nothing the
    // callback does to xmm8-15, the upper halves, zmm16-31 or k0-7 reaches
    // the function or its caller. (Not the x87 stack: empty at a function's
    // entry, and no callback code uses it; explicit stores, not `xsavec`,
    // which costs about seven times as much here.)
    .macro lt_tramp_regs V, FULL, NAME
    .set W, 16 << \V
    .if \V == 2
    .set NV, 32
    .else
    .set NV, 16
    .endif
    .p2align 4
    .globl \NAME\V\()_start
\NAME\V\()_start:
    push rbp
    mov rbp, rsp
    pushfq
    push r11
    // The entry rsp may be 8 off (see the fast template).
    and rsp, -16
    lea r11, [rbp + 16]
    push r11
    push qword ptr [rbp + 8]
    push qword ptr [rbp - 8]
    push qword ptr [rbp]
    push rdi
    push rsi
    push rdx
    push rcx
    push rax
    push r8
    push r9
    push r10
    push qword ptr [rbp - 16]
    push rbx
    push r12
    push r13
    push r14
    push r15
    sub rsp, 128
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    movaps xmmword ptr [rsp + 16 * \n], xmm\n
    .endr
    // rbx (saved in the Regs) holds the Regs across the call.
    mov rbx, rsp
    .if \FULL
    // Every vector register at the CPU's width, and the mask registers.
    sub rsp, NV * W + 64
    and rsp, -W
    lt_vsave_all \V
    .if \V > 0
    vzeroupper
    .endif
    .elseif \V > 0
    sub rsp, 8 * W
    and rsp, -W
    lt_vsave \V, 0
    vzeroupper
    .endif
    mov rdi, qword ptr [rip + 7f]
    mov rsi, qword ptr [rbp + 8]
    sub rsi, 5
    lea rdx, [rbp + 16]
    mov rcx, rbx
    // r12 (saved in the Regs): whether this call took the guard.
    xor r12d, r12d
    cmp byte ptr fs:[LT_INSIDE], 0
    jne 5f
    mov byte ptr fs:[LT_INSIDE], 1
    mov r12d, 1
    .globl \NAME\V\()_call
\NAME\V\()_call:
    call qword ptr [rip + 8f]
    jmp 4f
5:
    add qword ptr fs:[LT_DROPPED], 1
    call qword ptr [rip + 6f]
4:
    // The full registers, then the low 128 bits from the Regs, which the
    // callback may have changed.
    .if \FULL
    lt_vrestore_all \V
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    .if \V == 0
    movaps xmm\n, xmmword ptr [rbx + 16 * \n]
    .elseif \V == 1
    vinsertf128 ymm\n, ymm\n, xmmword ptr [rbx + 16 * \n], 0
    .else
    vinsertf32x4 zmm\n, zmm\n, xmmword ptr [rbx + 16 * \n], 0
    .endif
    .endr
    .elseif \V == 0
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    movaps xmm\n, xmmword ptr [rbx + 16 * \n]
    .endr
    .else
    lt_vrestore \V, 0
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    .if \V == 1
    vinsertf128 ymm\n, ymm\n, xmmword ptr [rbx + 16 * \n], 0
    .else
    vinsertf32x4 zmm\n, zmm\n, xmmword ptr [rbx + 16 * \n], 0
    .endif
    .endr
    .endif
    lea rsp, [rbx + 128]
    mov r11, qword ptr [rsp + 120]
    mov qword ptr [rbp - 8], r11
    mov r11, qword ptr [rsp + 128]
    mov qword ptr [rbp + 8], r11
    mov r11, qword ptr [rsp + 112]
    mov qword ptr [rbp], r11
    mov r11, qword ptr [rsp + 40]
    mov qword ptr [rbp - 16], r11
    test r12d, r12d
    jz 3f
    mov byte ptr fs:[LT_INSIDE], 0
3:
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    add rsp, 8
    pop r10
    pop r9
    pop r8
    pop rax
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    lea rsp, [rbp - 16]
    pop r11
    popfq
    pop rbp
    ret
    .p2align 3
6:  .quad 0
7:  .quad 0
8:  .quad 0
    .globl \NAME\V\()_end
\NAME\V\()_end:
    .endm

    lt_tramp_fast 0
    lt_tramp_fast 1
    lt_tramp_fast 2
    lt_tramp_regs 0, 0, lt_tramp_regs
    lt_tramp_regs 1, 0, lt_tramp_regs
    lt_tramp_regs 2, 0, lt_tramp_regs
    lt_tramp_regs 0, 1, lt_tramp_full
    lt_tramp_regs 1, 1, lt_tramp_full
    lt_tramp_regs 2, 1, lt_tramp_full

    // A per-site stub, for a fast path that calls the original (see
    // fast.rs). The site jumps here (no return address pushed: the return
    // stack buffer stays in step). It calls the fast path, then the
    // function's body, so that the body returns here, predicted; then it
    // jumps to the fast path's exit routine with rsp just past the return
    // slot. Nothing here depends on rsp's alignment. Its unwind
    // information is made with it (`stub_eh_frame`); the personality
    // routine it names is read from the last word.
    .p2align 4
    .globl lt_stub_start
lt_stub_start:
    call qword ptr [rip + lt_stub_entry]
    .globl lt_stub_add
lt_stub_add:
    add rsp, 8
    .globl lt_stub_call_body
lt_stub_call_body:
    .byte 0xe8
    .long 0
    .globl lt_stub_body_return
lt_stub_body_return:
    jmp qword ptr [rip + lt_stub_exit]
    .p2align 3
    .globl lt_stub_ip
lt_stub_ip: .quad 0
lt_stub_entry: .quad 0
lt_stub_exit: .quad 0
lt_stub_personality: .quad 0
    .globl lt_stub_end
lt_stub_end:

    // A fast path's fallback when it serves sites through stubs: makes the
    // stack what the site's `call` would have made (the return address
    // into the function, not into the stub) and goes to the ops' dedicated
    // trampoline. Flags are not part of a function's entry state.
    .p2align 4
    .globl lt_decline_start
lt_decline_start:
    push rax
    mov rax, qword ptr [rsp + 8]
    mov rax, qword ptr [rax + LT_STUB_IP_FROM_RETURN]
    add rax, 5
    mov qword ptr [rsp + 8], rax
    pop rax
    jmp qword ptr [rip + lt_decline_tramp]
    .p2align 3
lt_decline_tramp: .quad 0
    .globl lt_decline_end
lt_decline_end:
    .popsection
"#
);

unsafe extern "C" {
    static lt_tramp_fast0_start: u8;
    static lt_tramp_fast0_call: u8;
    static lt_tramp_fast0_end: u8;
    static lt_tramp_fast1_start: u8;
    static lt_tramp_fast1_call: u8;
    static lt_tramp_fast1_end: u8;
    static lt_tramp_fast2_start: u8;
    static lt_tramp_fast2_call: u8;
    static lt_tramp_fast2_end: u8;
    static lt_tramp_regs0_start: u8;
    static lt_tramp_regs0_call: u8;
    static lt_tramp_regs0_end: u8;
    static lt_tramp_regs1_start: u8;
    static lt_tramp_regs1_call: u8;
    static lt_tramp_regs1_end: u8;
    static lt_tramp_regs2_start: u8;
    static lt_tramp_regs2_call: u8;
    static lt_tramp_regs2_end: u8;
    static lt_tramp_full0_start: u8;
    static lt_tramp_full0_call: u8;
    static lt_tramp_full0_end: u8;
    static lt_tramp_full1_start: u8;
    static lt_tramp_full1_call: u8;
    static lt_tramp_full1_end: u8;
    static lt_tramp_full2_start: u8;
    static lt_tramp_full2_call: u8;
    static lt_tramp_full2_end: u8;
    static lt_stub_start: u8;
    static lt_stub_add: u8;
    static lt_stub_call_body: u8;
    static lt_stub_body_return: u8;
    static lt_stub_ip: u8;
    static lt_stub_personality: u8;
    static lt_stub_end: u8;
    static lt_decline_start: u8;
    static lt_decline_end: u8;
}

/// From the return address a stub's first call pushes to the stub's word
/// holding the site's address (`LT_STUB_IP_FROM_RETURN` above).
pub(crate) const STUB_IP_FROM_RETURN: usize = 18;
/// From the return address a stub's first call pushes to the return
/// address its call of the body pushes (what the return slot holds while
/// the body runs).
pub(crate) const STUB_BODY_RETURN_FROM_RETURN: usize = 9;
/// Bytes per stub (a multiple of 16).
const STUB: usize = 64;

fn stub_offset(label: *const u8) -> usize {
    label as usize - &raw const lt_stub_start as usize
}

fn bytes_of(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: start..end is a template's code and data in our text.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Per-site stubs, never freed: a function may be running, its return
/// address pointing into its stub, long after its tracer is gone.
#[derive(Default)]
pub(crate) struct Stubs {
    /// site -> stub.
    by_site: HashMap<usize, usize>,
    /// window -> (page, next free offset).
    open: HashMap<usize, (usize, usize)>,
    /// Every stub page: critical code for the quiescence wait (a thread
    /// about to call through a stub's entry word may use what it named).
    pub pages: Vec<std::ops::Range<usize>>,
}

impl Stubs {
    /// The stub of `site`, made if needed, now calling `entry`, jumping to
    /// `exit`, and naming `personality` (0: none) in its unwind
    /// information. Only called before a batch points the site at it, or
    /// while it already serves the same fast path.
    pub fn point(
        &mut self,
        site: usize,
        entry: usize,
        exit: usize,
        personality: usize,
    ) -> io::Result<usize> {
        let stub = match self.by_site.get(&site) {
            Some(&s) => s,
            None => self.make(site)?,
        };
        // The entry, exit and personality words follow the ip word.
        let ip_at = stub_offset(&raw const lt_stub_ip);
        let mut words = [0u8; 24];
        words[..8].copy_from_slice(&(entry as u64).to_le_bytes());
        words[8..16].copy_from_slice(&(exit as u64).to_le_bytes());
        words[16..].copy_from_slice(&(personality as u64).to_le_bytes());
        write_text(stub + ip_at + 8, &words)?;
        Ok(stub)
    }

    /// The stub of `site`, if it has one.
    pub fn of(&self, site: usize) -> Option<usize> {
        self.by_site.get(&site).copied()
    }

    fn make(&mut self, site: usize) -> io::Result<usize> {
        let window = window_of(site);
        let (page, used) = match self.open.get(&window) {
            Some(&(p, u)) if u + STUB <= PAGE => (p, u),
            _ => {
                let p = map_near(window)?;
                register_stub_page(p);
                self.pages.push(p..p + PAGE);
                (p, 0)
            }
        };
        let stub = page + used;
        self.open.insert(window, (page, used + STUB));
        let mut code = bytes_of(&raw const lt_stub_start, &raw const lt_stub_end).to_vec();
        code.resize(code.len().next_multiple_of(8), 0xcc);
        assert!(code.len() <= STUB);
        let call = stub_offset(&raw const lt_stub_call_body);
        let ip_at = stub_offset(&raw const lt_stub_ip);
        debug_assert_eq!(ip_at - 6, STUB_IP_FROM_RETURN);
        debug_assert_eq!(
            stub_offset(&raw const lt_stub_body_return) - 6,
            STUB_BODY_RETURN_FROM_RETURN
        );
        let rel = livetrace_poke::rel32(stub + call, site + 5)
            .ok_or_else(|| io::Error::other("site out of reach of its stub"))?;
        code[call + 1..call + 5].copy_from_slice(&rel.to_le_bytes());
        code[ip_at..ip_at + 8].copy_from_slice(&(site as u64).to_le_bytes());
        write_text(stub, &code)?;
        self.by_site.insert(site, stub);
        Ok(stub)
    }
}

/// libgcc's `struct dwarf_eh_bases`.
#[repr(C)]
struct EhBases {
    tbase: *mut libc::c_void,
    dbase: *mut libc::c_void,
    func: *mut libc::c_void,
}

unsafe extern "C" {
    // libgcc's (the unwinder every Rust and C++ program here uses).
    fn __register_frame(begin: *const u8);
    fn _Unwind_Find_FDE(pc: *const libc::c_void, bases: *mut EhBases) -> *const libc::c_void;
}

/// Unwind information (`.eh_frame`: a CIE and an FDE per stub) for the
/// stubs of a new page, registered with the unwinder and never freed.
///
/// In a stub, until its `add rsp, 8` the caller's frame is as at a
/// function's entry (CFA = rsp + 8); from there on, CFA = rsp. The return
/// address is always in the return slot (CFA - 8). After the body's call,
/// the slot holds the stub's own return address until a personality
/// routine or a backtrace puts the real one back (the fast path's owner
/// knows it): an unwinder that finds the stub's address there stops
/// (return address 0) rather than walk the same frame forever. Each stub
/// has its own CIE, naming the personality routine through the stub's
/// last word (DW_EH_PE_indirect), so the fast path serving it decides.
fn stub_eh_frame(page: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |v: &mut Vec<u8>, start: usize| {
        while !(v.len() - start).is_multiple_of(8) {
            v.push(0); // DW_CFA_nop
        }
    };
    let personality_at = stub_offset(&raw const lt_stub_personality);
    let add_at = stub_offset(&raw const lt_stub_add);
    let after_add = stub_offset(&raw const lt_stub_call_body);
    let body_return = stub_offset(&raw const lt_stub_body_return);
    assert!(after_add - add_at == 4 && after_add < 64);
    for stub in (page..page + PAGE).step_by(STUB) {
        // CIE.
        let cie = out.len();
        out.extend([0u8; 4]); // length, below
        out.extend(0u32.to_le_bytes()); // CIE id
        out.push(1); // version
        out.extend(b"zPR\0");
        out.push(1); // code alignment
        out.push(0x78); // data alignment: -8
        out.push(16); // return address column
        out.push(1 + 8 + 1); // augmentation data length
        out.push(0x80); // personality: DW_EH_PE_indirect | absptr
        out.extend(((stub + personality_at) as u64).to_le_bytes());
        out.push(0x00); // FDE addresses: absptr
        out.extend([0x0c, 0x07, 0x08]); // DW_CFA_def_cfa rsp, 8
                                        // DW_CFA_val_expression rip: x = [CFA - 8]; x != stub's body
                                        // return ? x : 0.
        out.extend([0x16, 16, 16]);
        out.extend([0x10, 0x08, 0x1c, 0x06, 0x12, 0x0e]);
        out.extend(((stub + body_return) as u64).to_le_bytes());
        out.extend([0x2e, 0x1e]);
        pad(&mut out, cie + 4);
        let len = (out.len() - cie - 4) as u32;
        out[cie..cie + 4].copy_from_slice(&len.to_le_bytes());
        // FDE.
        let fde = out.len();
        out.extend([0u8; 4]);
        out.extend(((fde + 4 - cie) as u32).to_le_bytes()); // CIE pointer
        out.extend((stub as u64).to_le_bytes());
        out.extend((STUB as u64).to_le_bytes());
        out.push(0); // augmentation data length
        out.push(0x40 | after_add as u8); // DW_CFA_advance_loc
        out.extend([0x0e, 0x00]); // DW_CFA_def_cfa_offset 0
        pad(&mut out, fde + 4);
        let len = (out.len() - fde - 4) as u32;
        out[fde..fde + 4].copy_from_slice(&len.to_le_bytes());
    }
    out.extend(0u32.to_le_bytes());
    out
}

fn register_stub_page(page: usize) {
    let eh = Box::leak(stub_eh_frame(page).into_boxed_slice());
    // SAFETY: a complete .eh_frame section (terminated by a zero length)
    // that stays alive for the process's life, describing code that does.
    unsafe { __register_frame(eh.as_ptr()) };
    // libgcc sorts a registered object's FDEs, with malloc, at the first
    // lookup that reaches it: do that lookup here, so that none made later
    // by a signal handler (a profiler's backtrace) allocates.
    let mut bases = EhBases {
        tbase: std::ptr::null_mut(),
        dbase: std::ptr::null_mut(),
        func: std::ptr::null_mut(),
    };
    // SAFETY: a lookup only; `bases` is written.
    let fde = unsafe { _Unwind_Find_FDE((page + 1) as *const libc::c_void, &mut bases) };
    debug_assert!(
        !fde.is_null(),
        "the stub page's unwind information is found"
    );
}

/// Writes whole 8-byte words into one of our executable pages, each with
/// one atomic store. PROT_EXEC stays on: other code on the page may be
/// running; what is written is either not in use yet, or a data word that
/// threads read atomically.
fn write_text(at: usize, bytes: &[u8]) -> io::Result<()> {
    let page = at & !(PAGE - 1);
    assert!(at.is_multiple_of(8) && bytes.len().is_multiple_of(8));
    assert!(at + bytes.len() <= page + PAGE);
    // SAFETY: the page is one we mapped (map_near); the words are aligned
    // and inside it; see above for why writing them is safe.
    unsafe {
        if libc::mprotect(
            page as *mut _,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let word = &*((at + 8 * i) as *const std::sync::atomic::AtomicU64);
            word.store(
                u64::from_le_bytes(w.try_into().expect("8 bytes")),
                std::sync::atomic::Ordering::Release,
            );
        }
        if libc::mprotect(page as *mut _, PAGE, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            crate::fatal("cannot make a trampoline page read-only again");
        }
    }
    Ok(())
}

/// Which vector registers the trampolines save: the full width of the
/// argument and result registers (0-7) the CPU and the kernel enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VectorState {
    /// xmm0-7: SSE only.
    Xmm,
    /// ymm0-7: AVX (the kernel saves the AVX state: XCR0 bit 2).
    Ymm,
    /// zmm0-7: AVX-512 (XCR0 bits 5-7).
    Zmm,
}

impl VectorState {
    fn index(self) -> usize {
        self as usize
    }

    /// Bytes per register.
    pub fn width(self) -> usize {
        16 << self.index()
    }
}

/// The vector state every trampoline of this process saves: the widest the
/// CPU has and the kernel enables (CPUID and XCR0, as `std` detects them),
/// or narrower when `LIVETRACE_VECTOR_STATE` (`xmm`, `ymm`, `zmm`) asks
/// for it (to exercise each variant in tests; never wider than the
/// hardware's). Fixed at the first call.
pub fn vector_state() -> VectorState {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    static STATE: AtomicU8 = AtomicU8::new(u8::MAX);
    let v = STATE.load(Relaxed);
    if v != u8::MAX {
        return [VectorState::Xmm, VectorState::Ymm, VectorState::Zmm][v as usize];
    }
    // The full template saves the mask registers 64 bits wide (`kmovq`:
    // AVX512BW, which every AVX-512 CPU but Xeon Phi has).
    let hw = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        VectorState::Zmm
    } else if std::arch::is_x86_feature_detected!("avx") {
        VectorState::Ymm
    } else {
        VectorState::Xmm
    };
    let asked = match std::env::var("LIVETRACE_VECTOR_STATE").as_deref() {
        Ok("xmm") => VectorState::Xmm,
        Ok("ymm") => VectorState::Ymm,
        _ => VectorState::Zmm,
    };
    let chosen = hw.min(asked);
    // Racing first calls compute the same value.
    STATE.store(chosen as u8, Relaxed);
    chosen
}

/// Which template a trampoline is a copy of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Fast,
    Regs,
    /// The regs template saving every vector and mask register too: for
    /// sites whose callers may keep values in any register.
    Full,
}

type Template = (*const u8, *const u8, *const u8);

impl Kind {
    /// (start, call, end) of the template for the process's vector state.
    fn parts(self) -> Template {
        let v = vector_state().index();
        match self {
            Kind::Fast => [
                (
                    &raw const lt_tramp_fast0_start,
                    &raw const lt_tramp_fast0_call,
                    &raw const lt_tramp_fast0_end,
                ),
                (
                    &raw const lt_tramp_fast1_start,
                    &raw const lt_tramp_fast1_call,
                    &raw const lt_tramp_fast1_end,
                ),
                (
                    &raw const lt_tramp_fast2_start,
                    &raw const lt_tramp_fast2_call,
                    &raw const lt_tramp_fast2_end,
                ),
            ][v],
            Kind::Regs => [
                (
                    &raw const lt_tramp_regs0_start,
                    &raw const lt_tramp_regs0_call,
                    &raw const lt_tramp_regs0_end,
                ),
                (
                    &raw const lt_tramp_regs1_start,
                    &raw const lt_tramp_regs1_call,
                    &raw const lt_tramp_regs1_end,
                ),
                (
                    &raw const lt_tramp_regs2_start,
                    &raw const lt_tramp_regs2_call,
                    &raw const lt_tramp_regs2_end,
                ),
            ][v],
            Kind::Full => [
                (
                    &raw const lt_tramp_full0_start,
                    &raw const lt_tramp_full0_call,
                    &raw const lt_tramp_full0_end,
                ),
                (
                    &raw const lt_tramp_full1_start,
                    &raw const lt_tramp_full1_call,
                    &raw const lt_tramp_full1_end,
                ),
                (
                    &raw const lt_tramp_full2_start,
                    &raw const lt_tramp_full2_call,
                    &raw const lt_tramp_full2_end,
                ),
            ][v],
        }
    }

    /// Offset of the template's `call qword ptr [rip + func]` (`ff 15
    /// disp32`), which a copy within reach of `func` turns into a direct
    /// `call rel32; nop`: one load and one indirect-branch prediction fewer
    /// on every traced call.
    fn call_offset(self) -> usize {
        let (start, call, _) = self.parts();
        call as usize - start as usize
    }

    /// The template's bytes; its last 16 bytes are the data words `data`
    /// and `func` (a regs template has the `guarded` entry's word before
    /// them).
    fn template(self) -> &'static [u8] {
        let (start, _, end) = self.parts();
        bytes_of(start, end)
    }
}

/// The signature of the regs template's `guarded` entry: called instead of
/// `func` inside a callback, it only applies redirections (see the
/// template).
pub(crate) type GuardedFn = EntryFn;

/// The signature of what a regs trampoline calls.
pub(crate) type EntryFn =
    extern "C" fn(data: usize, ip: usize, parent_slot: *mut usize, regs: *mut crate::Regs);

/// The signature of what a fast trampoline calls: `slot` holds the return
/// address into the function (the site + 5), the caller's return address
/// is in the next word.
pub(crate) type FastEntryFn = extern "C" fn(data: usize, slot: *mut usize);

pub(crate) const SLOT: usize = 2048;
const PAGE: usize = 4096;
const WINDOW_SHIFT: u32 = 30;
const REACH: usize = 512 << 20;

/// A pool key: which 1 GiB window of the address space a site is in.
pub(crate) fn window_of(site: usize) -> usize {
    site >> WINDOW_SHIFT
}

struct Pool {
    pages: Vec<usize>,
    free: Vec<usize>,
}

/// Every pool of trampolines. Kept under the core's lock.
#[derive(Default)]
pub(crate) struct Pools {
    pools: HashMap<usize, Pool>,
}

impl Pools {
    /// Copies a `kind` trampoline calling `func(data, ..)` (a [`FastEntryFn`]
    /// for `Kind::Fast`, an [`EntryFn`] for `Kind::Regs`) into the pool for
    /// `window`, returning its address. The copy is complete and made
    /// executable before any site can be pointed at it.
    pub fn create(
        &mut self,
        window: usize,
        kind: Kind,
        tpoff: isize,
        data: usize,
        func: usize,
    ) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled above");
        let code = kind.template();
        assert!(code.len() <= SLOT);
        let mut bytes = code.to_vec();
        let n = bytes.len();
        patch_tls(&mut bytes[..n - 16], tpoff);
        patch_data(&mut bytes[..n - 16], data);
        bytes[n - 16..n - 8].copy_from_slice(&(data as u64).to_le_bytes());
        bytes[n - 8..].copy_from_slice(&(func as u64).to_le_bytes());
        if kind != Kind::Fast {
            let guarded = crate::guarded_entry as GuardedFn as usize;
            bytes[n - 24..n - 16].copy_from_slice(&(guarded as u64).to_le_bytes());
        }
        let at = kind.call_offset();
        debug_assert_eq!(bytes[at..at + 2], [0xff, 0x15]);
        if let Some(rel) = livetrace_poke::rel32(slot + at, func) {
            bytes[at] = 0xe8;
            bytes[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
            bytes[at + 5] = 0x90;
        }
        install(pool, slot, &bytes)
    }

    /// Copies an ops' fast path into the pool for `window`, with the
    /// thread-pointer offsets patched in and `fallback` in its last word.
    pub fn create_fast(
        &mut self,
        window: usize,
        tpoff: isize,
        code: &[u8],
        fallback: usize,
    ) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled by pool()");
        let mut bytes = code.to_vec();
        let n = bytes.len();
        assert!((8..=SLOT).contains(&n));
        patch_tls_any(&mut bytes[..n - 8], tpoff);
        bytes[n - 8..].copy_from_slice(&(fallback as u64).to_le_bytes());
        install(pool, slot, &bytes)
    }

    /// A decline thunk (see the template) going to `tramp`, in the pool for
    /// `window`.
    pub fn create_decline(&mut self, window: usize, tramp: usize) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled by pool()");
        let mut bytes = bytes_of(&raw const lt_decline_start, &raw const lt_decline_end).to_vec();
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&(tramp as u64).to_le_bytes());
        install(pool, slot, &bytes)
    }

    /// The pool for `window`, with at least one free slot.
    fn pool(&mut self, window: usize) -> io::Result<&mut Pool> {
        let pool = self.pools.entry(window).or_insert_with(|| Pool {
            pages: Vec::new(),
            free: Vec::new(),
        });
        if pool.free.is_empty() {
            let page = map_near(window)?;
            pool.pages.push(page);
            pool.free
                .extend((0..PAGE / SLOT).rev().map(|i| page + i * SLOT));
        }
        Ok(pool)
    }

    /// Where a thread inside a callback called from a trampoline returns
    /// to: for every slot of every pool, the byte after each template's
    /// call (direct `call rel32; nop` or indirect `call [rip + func]`), as
    /// two-byte ranges. A word on a blocked thread's stack that equals one
    /// of them means it is inside a callback (for the quiescence wait);
    /// anything narrower than the whole page keeps stale pointers to a
    /// trampoline (its start, kept in some local) from looking like one.
    pub fn return_addresses(&self) -> Vec<std::ops::Range<usize>> {
        let offsets = [Kind::Fast, Kind::Regs, Kind::Full].map(|k| k.call_offset() + 5);
        self.pools
            .values()
            .flat_map(|p| p.pages.iter())
            .flat_map(|&page| (0..PAGE / SLOT).map(move |i| page + i * SLOT))
            .flat_map(|slot| offsets.map(|o| slot + o..slot + o + 2))
            .collect()
    }

    /// Returns a slot to its pool. Only after the quiescence wait has shown
    /// that no thread can be executing it.
    pub fn release(&mut self, addr: usize) {
        if let Some(pool) = self.pools.get_mut(&window_of_tramp(addr, &self.pools)) {
            pool.free.push(addr);
        }
    }
}

/// Writes a slot's code: the slot is the caller's, no site calls it yet.
fn install(pool: &mut Pool, slot: usize, bytes: &[u8]) -> io::Result<usize> {
    let mut words = bytes.to_vec();
    words.resize(words.len().next_multiple_of(8), 0xcc);
    if let Err(e) = write_text(slot, &words) {
        pool.free.push(slot);
        return Err(e);
    }
    Ok(slot)
}

fn window_of_tramp(addr: usize, pools: &HashMap<usize, Pool>) -> usize {
    let page = addr & !(PAGE - 1);
    pools
        .iter()
        .find(|(_, p)| p.pages.contains(&page))
        .map_or(usize::MAX, |(w, _)| *w)
}

/// Maps one page within reach of every address in `window`.
fn map_near(window: usize) -> io::Result<usize> {
    let lo = (window << WINDOW_SHIFT)
        .saturating_sub(REACH)
        .max(PAGE * 16);
    let hi = ((window + 1) << WINDOW_SHIFT)
        .saturating_add(REACH)
        .min(0x7fff_ffff_f000);
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut used: Vec<(usize, usize)> = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    used.sort_unstable();
    // Candidate addresses: just below and just above each mapping in range,
    // nearest to the window's middle first.
    let mid = (window << WINDOW_SHIFT) + (1 << (WINDOW_SHIFT - 1));
    let mut candidates: Vec<usize> = Vec::new();
    for &(s, e) in &used {
        if s >= PAGE && s - PAGE >= lo && s - PAGE < hi {
            candidates.push(s - PAGE);
        }
        if e >= lo && e + PAGE <= hi {
            candidates.push(e);
        }
    }
    candidates.sort_by_key(|&c| c.abs_diff(mid));
    for c in candidates {
        if used.iter().any(|&(s, e)| c < e && c + PAGE > s) {
            continue;
        }
        // SAFETY: MAP_FIXED_NOREPLACE maps at `c` only if nothing is there,
        // so no existing mapping is touched.
        let p = unsafe {
            libc::mmap(
                c as *mut _,
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED && p as usize == c {
            return Ok(c);
        }
        if p != libc::MAP_FAILED {
            // SAFETY: an old kernel ignored the flag and mapped elsewhere;
            // undo that mapping, which is ours.
            unsafe { libc::munmap(p, PAGE) };
        }
    }
    Err(io::Error::other(format!(
        "no free page within reach of sites at {:#x}..{:#x}",
        window << WINDOW_SHIFT,
        (window + 1) << WINDOW_SHIFT
    )))
}

/// Replaces the `LT_INSIDE`/`LT_DROPPED` placeholders in a template's code with
/// the real thread-pointer offsets.
fn patch_tls(code: &mut [u8], tpoff: isize) {
    // Each template enters, leaves, and counts a dropped call.
    assert!(
        patch_tls_any(code, tpoff) >= 3,
        "trampoline template placeholders"
    );
}

/// Replaces every `LT_INSIDE`/`LT_DROPPED` placeholder; returns how many.
fn patch_tls_any(code: &mut [u8], tpoff: isize) -> usize {
    let tpoff = i32::try_from(tpoff).expect("static TLS offsets fit in 32 bits");
    let mut patched = 0;
    for (placeholder, value) in [(0x5eed_0000u32, tpoff), (0x5eed_0008, tpoff + 8)] {
        let pat = placeholder.to_le_bytes();
        let mut i = 0;
        while i + 4 <= code.len() {
            if code[i..i + 4] == pat {
                code[i..i + 4].copy_from_slice(&value.to_le_bytes());
                patched += 1;
                i += 4;
            } else {
                i += 1;
            }
        }
    }
    patched
}

/// Puts `data` into a template's `movabs rdi, imm64` placeholder, where it
/// has one (the fast template: one load fewer per call).
fn patch_data(code: &mut [u8], data: usize) {
    let pat = 0x5eed_5eed_5eed_5eedu64.to_le_bytes();
    if let Some(i) = code.windows(8).position(|w| w == pat) {
        code[i..i + 8].copy_from_slice(&(data as u64).to_le_bytes());
    }
}
