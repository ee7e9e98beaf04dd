//! The templates, in assembly, and where their parts are: each is
//! copied, never run where it is (see the `tramp` module documentation).

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
    // Global, as every label Rust names: the code naming it (stubs.rs)
    // may be assembled in another codegen unit than this block.
    .globl lt_stub_personality
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
    pub(super) static lt_tramp_fast0_start: u8;
    pub(super) static lt_tramp_fast0_call: u8;
    pub(super) static lt_tramp_fast0_end: u8;
    pub(super) static lt_tramp_fast1_start: u8;
    pub(super) static lt_tramp_fast1_call: u8;
    pub(super) static lt_tramp_fast1_end: u8;
    pub(super) static lt_tramp_fast2_start: u8;
    pub(super) static lt_tramp_fast2_call: u8;
    pub(super) static lt_tramp_fast2_end: u8;
    pub(super) static lt_tramp_regs0_start: u8;
    pub(super) static lt_tramp_regs0_call: u8;
    pub(super) static lt_tramp_regs0_end: u8;
    pub(super) static lt_tramp_regs1_start: u8;
    pub(super) static lt_tramp_regs1_call: u8;
    pub(super) static lt_tramp_regs1_end: u8;
    pub(super) static lt_tramp_regs2_start: u8;
    pub(super) static lt_tramp_regs2_call: u8;
    pub(super) static lt_tramp_regs2_end: u8;
    pub(super) static lt_tramp_full0_start: u8;
    pub(super) static lt_tramp_full0_call: u8;
    pub(super) static lt_tramp_full0_end: u8;
    pub(super) static lt_tramp_full1_start: u8;
    pub(super) static lt_tramp_full1_call: u8;
    pub(super) static lt_tramp_full1_end: u8;
    pub(super) static lt_tramp_full2_start: u8;
    pub(super) static lt_tramp_full2_call: u8;
    pub(super) static lt_tramp_full2_end: u8;
    pub(super) static lt_stub_start: u8;
    pub(super) static lt_stub_add: u8;
    pub(super) static lt_stub_call_body: u8;
    pub(super) static lt_stub_body_return: u8;
    pub(super) static lt_stub_ip: u8;
    pub(super) static lt_stub_personality: u8;
    pub(super) static lt_stub_end: u8;
    pub(super) static lt_decline_start: u8;
    pub(super) static lt_decline_end: u8;
}

pub(super) fn bytes_of(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: start..end is a template's code and data in our text.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}
