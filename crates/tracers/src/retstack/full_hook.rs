//! The return hook for functions whose callers keep values in every
//! register ([`livetrace_ftrace::Call::preserves_all`]: relocated
//! functions).
//!
//! `lt_return_to_handler` (in `handler.rs`) saves what a return can carry
//! — rax, rdx, xmm0/xmm1, st0/st1 — and treats the rest as dead, as the ABI
//! says it is. A caller compiled with gcc's `-fipa-ra` against a callee
//! that had no site may instead keep a value in r10, r11, rcx, xmm8 or
//! zmm17 across the call, because the callee it saw does not touch them.
//! This hook leaves every register as the function left it: the general
//! registers and flags are pushed, every vector register goes to a
//! 64-aligned area at the width the CPU has (16 xmm or ymm; 32 zmm and
//! the mask registers with AVX-512, as the core's full trampoline does:
//! `livetrace_ftrace::VectorState`), `graph_exit` runs, and everything
//! comes back before a jump through the slot to the real return address.
//! The x87 stack is not touched (it may hold a `long double` result):
//! nothing `graph_exit` runs uses it.
//!
//! It has no fast exit: a relocated function is already served by the
//! core's full caller at entry, which costs far more than the exit's
//! shortcut would save.
//!
//! The return slot is left as the function left it (holding this hook)
//! until `graph_exit` has found the frame by it: everything is pushed
//! below it. Its unwind information and personality are those of the other
//! hooks, so an unwinder passing a hooked frame finds the real return
//! address.

std::arch::global_asm!(
    ".pushsection .text.livetrace_graph,\"ax\",@progbits",
    ".p2align 4",
    ".cfi_startproc",
    ".cfi_personality 0x9b, DW.ref.lt_graph_personality",
    ".cfi_def_cfa rsp, 0",
    ".cfi_offset rip, -8",
    "    nop",
    ".globl lt_return_to_handler_full",
    "lt_return_to_handler_full:",
    // rsp is the slot + 8. Keep the slot: push below it.
    "    lea rsp, [rsp - 8]",
    ".cfi_adjust_cfa_offset 8",
    "    pushfq",
    ".cfi_adjust_cfa_offset 8",
    "    push rax",
    ".cfi_adjust_cfa_offset 8",
    "    push rcx",
    ".cfi_adjust_cfa_offset 8",
    "    push rdx",
    ".cfi_adjust_cfa_offset 8",
    "    push rsi",
    ".cfi_adjust_cfa_offset 8",
    "    push rdi",
    ".cfi_adjust_cfa_offset 8",
    "    push r8",
    ".cfi_adjust_cfa_offset 8",
    "    push r9",
    ".cfi_adjust_cfa_offset 8",
    "    push r10",
    ".cfi_adjust_cfa_offset 8",
    "    push r11",
    ".cfi_adjust_cfa_offset 8",
    "    push rbx",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_offset rbx, -96",
    // rbx (callee-saved) keeps the frame across the call: the slot is at
    // rbx + 88.
    "    mov rbx, rsp",
    ".cfi_def_cfa_register rbx",
    "    sub rsp, 2048 + 64",
    "    and rsp, -64",
    "    cmp byte ptr [rip + {vstate}], 1",
    "    jb 1f",
    "    je 2f",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    vmovdqa64 zmmword ptr [rsp + 64 * \\n], zmm\\n",
    ".endr",
    ".irp n, 0,1,2,3,4,5,6,7",
    "    kmovq qword ptr [rsp + 2048 + 8 * \\n], k\\n",
    ".endr",
    "    vzeroupper",
    "    jmp 3f",
    "2:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    vmovdqa ymmword ptr [rsp + 32 * \\n], ymm\\n",
    ".endr",
    "    vzeroupper",
    "    jmp 3f",
    "1:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    movaps xmmword ptr [rsp + 16 * \\n], xmm\\n",
    ".endr",
    "3:",
    "    lea rdi, [rbx + 88]",
    "    call {exit}",
    "    mov qword ptr [rbx + 88], rax",
    "    cmp byte ptr [rip + {vstate}], 1",
    "    jb 4f",
    "    je 5f",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    vmovdqa64 zmm\\n, zmmword ptr [rsp + 64 * \\n]",
    ".endr",
    ".irp n, 0,1,2,3,4,5,6,7",
    "    kmovq k\\n, qword ptr [rsp + 2048 + 8 * \\n]",
    ".endr",
    "    jmp 6f",
    "5:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    vmovdqa ymm\\n, ymmword ptr [rsp + 32 * \\n]",
    ".endr",
    "    jmp 6f",
    "4:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    movaps xmm\\n, xmmword ptr [rsp + 16 * \\n]",
    ".endr",
    "6:",
    "    mov rsp, rbx",
    ".cfi_def_cfa_register rsp",
    "    pop rbx",
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbx",
    "    pop r11",
    ".cfi_adjust_cfa_offset -8",
    "    pop r10",
    ".cfi_adjust_cfa_offset -8",
    "    pop r9",
    ".cfi_adjust_cfa_offset -8",
    "    pop r8",
    ".cfi_adjust_cfa_offset -8",
    "    pop rdi",
    ".cfi_adjust_cfa_offset -8",
    "    pop rsi",
    ".cfi_adjust_cfa_offset -8",
    "    pop rdx",
    ".cfi_adjust_cfa_offset -8",
    "    pop rcx",
    ".cfi_adjust_cfa_offset -8",
    "    pop rax",
    ".cfi_adjust_cfa_offset -8",
    "    popfq",
    ".cfi_adjust_cfa_offset -8",
    // lea, not add: the flags are the function's again.
    "    lea rsp, [rsp + 8]",
    ".cfi_adjust_cfa_offset -8",
    // The slot now holds the real return address; a signal arriving here
    // leaves it alone (the kernel skips the red zone below rsp).
    "    jmp qword ptr [rsp - 8]",
    ".globl lt_return_to_handler_full_end",
    "lt_return_to_handler_full_end:",
    ".cfi_endproc",
    ".popsection",
    exit = sym super::hook::graph_exit,
    vstate = sym super::handler::VECTOR_STATE,
);

unsafe extern "C" {
    fn lt_return_to_handler_full();
    static lt_return_to_handler_full_end: u8;
}

/// The address a preserving function's hooked slot holds.
pub fn return_to_handler_full_addr() -> usize {
    lt_return_to_handler_full as *const () as usize
}

/// The hook's code, the byte before it included (unwinders look a return
/// address up minus one). All of it is the slow path: a thread in here
/// may be inside `graph_exit`.
pub(crate) fn code() -> std::ops::Range<usize> {
    return_to_handler_full_addr() - 1..&raw const lt_return_to_handler_full_end as usize
}
