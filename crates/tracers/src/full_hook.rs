//! The return hook for functions whose callers keep values in every
//! register ([`livetrace_ftrace::Call::preserves_all`]: relocated
//! functions).
//!
//! `lt_return_to_handler` (in `retstack.rs`) saves what a return can carry
//! — rax, rdx, xmm0/xmm1, st0/st1 — and treats the rest as dead, as the ABI
//! says it is. A caller compiled with gcc's `-fipa-ra` against a callee
//! that had no site may instead keep a value in r10, r11, rcx, xmm8 or
//! zmm17 across the call, because the callee it saw does not touch them.
//! This hook leaves every register as the function left it: the general
//! registers and flags are pushed, the whole extended state goes to a
//! 64-aligned area with the core's choice of `xsavec`/`xsave`/`fxsave`
//! (`livetrace_ftrace::xstate`), `graph_exit` runs, and everything comes
//! back before a jump through the slot to the real return address.
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
    "    mov eax, dword ptr [rip + {size}]",
    "    sub rsp, rax",
    "    and rsp, -64",
    // The XSAVE header's reserved bytes must be zero for the restore.
    "    xor eax, eax",
    "    mov qword ptr [rsp + 512], rax",
    "    mov qword ptr [rsp + 520], rax",
    "    mov qword ptr [rsp + 528], rax",
    "    mov qword ptr [rsp + 536], rax",
    "    mov qword ptr [rsp + 544], rax",
    "    mov qword ptr [rsp + 552], rax",
    "    mov qword ptr [rsp + 560], rax",
    "    mov qword ptr [rsp + 568], rax",
    "    mov eax, dword ptr [rip + {mask}]",
    "    xor edx, edx",
    "    cmp byte ptr [rip + {mode}], 1",
    "    jb 1f",
    "    je 2f",
    "    xsavec64 [rsp]",
    "    jmp 3f",
    "2:",
    "    xsave64 [rsp]",
    "    jmp 3f",
    "1:",
    "    fxsave64 [rsp]",
    "3:",
    // Rust code expects an empty x87 stack (a long double result sits
    // there) and clean upper halves.
    "    fninit",
    "    test dword ptr [rip + {mask}], 4",
    "    jz 4f",
    "    vzeroupper",
    "4:",
    "    lea rdi, [rbx + 88]",
    "    call {exit}",
    "    mov qword ptr [rbx + 88], rax",
    "    mov eax, dword ptr [rip + {mask}]",
    "    xor edx, edx",
    "    cmp byte ptr [rip + {mode}], 0",
    "    je 5f",
    "    xrstor64 [rsp]",
    "    jmp 6f",
    "5:",
    "    fxrstor64 [rsp]",
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
    exit = sym crate::retstack::graph_exit,
    size = sym livetrace_ftrace::XSTATE_SIZE,
    mask = sym livetrace_ftrace::XSTATE_MASK,
    mode = sym livetrace_ftrace::XSTATE_MODE,
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
