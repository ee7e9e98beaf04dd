//! The return hooks' code: where a hooked slot sends a function
//! (`lt_return_to_handler`) and where a per-site stub's call of the body
//! lands (`lt_return_to_stub`), with their fast exits, their unwind
//! information, and the ranges of their code others must know.

use super::hook::graph_exit;
use super::{Block, Frame};

/// The vector state the return hooks save (`livetrace_ftrace::VectorState`
/// as 0, 1, 2), set before the first frame is hooked.
pub(crate) static VECTOR_STATE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

// The hooks' unwind information names the personality routine through
// this word, as compilers do (DW_EH_PE_indirect | pcrel | sdata4).
std::arch::global_asm!(
    ".pushsection .data.rel.local.DW.ref.lt_graph_personality,\"awG\",@progbits,DW.ref.lt_graph_personality,comdat",
    ".p2align 3",
    ".hidden DW.ref.lt_graph_personality",
    ".weak DW.ref.lt_graph_personality",
    ".type DW.ref.lt_graph_personality, @object",
    ".size DW.ref.lt_graph_personality, 8",
    "DW.ref.lt_graph_personality:",
    "    .quad {personality}",
    ".popsection",
    personality = sym crate::unwind::personality,
);

macro_rules! return_handler {
    ($name:literal, $fast_end:literal, $end:literal, $jump:literal) => {
std::arch::global_asm!(
    ".pushsection .text.livetrace_graph,\"ax\",@progbits",
    ".p2align 4",
    // Unwind information: the hook stands where the function's caller
    // would, with rsp as the caller has it after the return (CFA = rsp)
    // and the return address in the return slot (CFA - 8), which holds the
    // hook's address until the frame is taken and the real address after.
    // The personality routine puts the real address there first when an
    // unwinder passes (crate::unwind). The byte before the hook is covered
    // too: unwinders look a return address up minus one.
    ".cfi_startproc",
    ".cfi_personality 0x9b, DW.ref.lt_graph_personality",
    ".cfi_def_cfa rsp, 0",
    ".cfi_offset rip, -8",
    "    nop",
    concat!(".globl ", $name),
    concat!($name, ":"),
    // The function returned here: rsp is its slot + 8 (8-aligned only).
    // rax and rdx (and vector registers 0 and 1, st0 and st1, untouched
    // here) may hold its result; rcx, rsi, rdi, r8-r11 and xmm2-15 are
    // dead at a return, free to use.
    //
    // The fast exit, for this thread's newest frame whose session is in
    // EXIT_SINKS and whose thread has a buffer with room: the same work as
    // `graph_exit` and the session's record, holding the core's recursion
    // guard (never inside a callback or another fast path), so no signal
    // handler hooks a frame meanwhile.
    "    cmp byte ptr [rip + {ready}], 0",
    "    je 50f",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    cmp byte ptr fs:[rcx], 0",
    "    jne 50f",
    "    mov byte ptr fs:[rcx], 1",
    "    mov r8, rax",
    "    mov r9, rdx",
    // rdi: the block; r10: 64 * depth, the top frame's offset in it.
    "    mov rsi, qword ptr [rip + {shadow}]",
    "    mov rdi, qword ptr fs:[rsi]",
    "    test rdi, rdi",
    "    jz 49f",
    "    mov r10, qword ptr [rdi + {depth}]",
    "    test r10, r10",
    "    jz 49f",
    "    shl r10, 6",
    "    lea r11, [rsp - 8]",
    "    cmp qword ptr [rdi + r10 + {f_slot}], r11",
    "    jne 49f",
    "    mov eax, dword ptr [rdi + r10 + {f_sink}]",
    "    mov edx, eax",
    "    and edx, {sinks_mask}",
    "    shl edx, 4",
    "    lea r11, [rip + {sinks}]",
    "    cmp qword ptr [r11 + rdx], rax",
    "    jne 49f",
    "    mov rax, qword ptr [r11 + rdx + 8]",
    "    mov edx, eax",
    "    and edx, {ways_mask}",
    "    imul edx, edx, {way_bytes}",
    "    add rdx, qword ptr [rip + {cache}]",
    "    cmp qword ptr fs:[rdx], rax",
    "    jne 49f",
    "    mov r11, qword ptr fs:[rdx + {way_buffer}]",
    "    mov rcx, qword ptr [r11 + {head}]",
    "    cmp byte ptr [r11 + {overwrite}], 0",
    "    jne 2f",
    "    mov rax, rcx",
    "    sub rax, qword ptr [r11 + {tail_seen}]",
    "    cmp rax, qword ptr [r11 + {mask}]",
    "    ja 49f",
    "2:",
    // Committed. The real return address goes back into the slot, then
    // the frame is popped (the guard keeps it unused until we are done).
    "    mov rax, qword ptr [rdi + r10 + {f_ret}]",
    "    mov qword ptr [rsp - 8], rax",
    "    mov rax, r10",
    "    shr rax, 6",
    "    sub rax, 1",
    "    mov qword ptr [rdi + {depth}], rax",
    // Stamp, charge the parent, record.
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov rdx, qword ptr [rdi + r10 + {f_entry}]",
    "    cmp rax, rdx",
    "    cmovb rax, rdx",
    "    mov esi, dword ptr [rdi + r10 + {f_parent}]",
    "    test esi, esi",
    "    jz 3f",
    "    shl rsi, 6",
    "    sub rdx, rax",
    "    sub qword ptr [rdi + rsi + {f_child}], rdx",
    "3:",
    // The record as two 16-byte stores: (ts, func), (depth, EXIT).
    "    movq xmm14, rax",
    "    movq xmm15, qword ptr [rdi + r10 + {f_func}]",
    "    punpcklqdq xmm14, xmm15",
    "    mov eax, dword ptr [rdi + r10 + {f_level}]",
    "    movq xmm15, rax",
    "    mov eax, {exit_kind}",
    "    movq xmm13, rax",
    "    punpcklqdq xmm15, xmm13",
    "    lea rdx, [rcx + 1]",
    "    mov qword ptr [r11 + {started}], rdx",
    "    and rcx, qword ptr [r11 + {mask}]",
    "    shl rcx, 5",
    "    add rcx, qword ptr [r11 + {slots}]",
    "    movups xmmword ptr [rcx], xmm14",
    "    movups xmmword ptr [rcx + 16], xmm15",
    "    mov qword ptr [r11 + {head}], rdx",
    "    mov r11, qword ptr [rsp - 8]",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    mov byte ptr fs:[rcx], 0",
    "    mov rax, r8",
    "    mov rdx, r9",
    $jump,
    // Not for the fast exit: let go of the guard, take the Rust exit.
    "49:",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    mov byte ptr fs:[rcx], 0",
    "    mov rax, r8",
    "    mov rdx, r9",
    // The fast exit's end: its code, from the hook to here, is critical
    // code for the quiescence wait (it reads EXIT_SINKS and then a
    // session's buffer, and calls nothing).
    concat!(".globl ", $fast_end),
    concat!($fast_end, ":"),
    "50:",
    // Save the result registers: rax, rdx, vector register 0 at its full
    // width (a __m256 or __m512 result), xmm1, and st0/st1 when the x87
    // stack holds a long double result (the ABI wants it empty at a call).
    // rsp (the slot + 8) is only 8-aligned: gcc may have called the
    // function with the stack 8 off; realign for the call, below the slot.
    "    mov rcx, rsp",
    ".cfi_def_cfa rcx, 0",
    "    sub rsp, 8",
    "    and rsp, -64",
    "    sub rsp, 192",
    "    mov qword ptr [rsp + 128], rcx",
    // CFA = [rsp + 128] (DW_CFA_def_cfa_expression: breg7 128, deref).
    ".cfi_escape 0x0f, 0x04, 0x77, 0x80, 0x01, 0x06",
    "    mov qword ptr [rsp + 136], rax",
    "    mov qword ptr [rsp + 144], rdx",
    "    cmp byte ptr [rip + {vstate}], 1",
    "    jb 51f",
    "    je 52f",
    "    vmovdqa64 zmmword ptr [rsp], zmm0",
    "    vmovdqa xmmword ptr [rsp + 64], xmm1",
    "    vzeroupper",
    "    jmp 53f",
    "52:",
    "    vmovdqa ymmword ptr [rsp], ymm0",
    "    vmovdqa xmmword ptr [rsp + 64], xmm1",
    "    vzeroupper",
    "    jmp 53f",
    "51:",
    "    movaps xmmword ptr [rsp], xmm0",
    "    movaps xmmword ptr [rsp + 64], xmm1",
    "53:",
    // x87 TOP: 0 when empty; 7 with one value (long double), 6 with two
    // (complex long double). Anything else is left alone.
    "    fnstsw ax",
    "    shr eax, 11",
    "    and eax, 7",
    "    mov qword ptr [rsp + 152], rax",
    "    cmp eax, 6",
    "    jb 54f",
    "    fstp tbyte ptr [rsp + 160]",
    "    cmp eax, 7",
    "    je 54f",
    "    fstp tbyte ptr [rsp + 176]",
    "54:",
    "    lea rdi, [rcx - 8]",
    "    call {exit}",
    // Back to the real return address with a jump, not a `ret`: the
    // function's own `ret` already used up the return-stack-buffer entry
    // for this call (and was mispredicted into here); another `ret` would
    // mispredict too and leave the buffer out of step for the caller's
    // returns. r11 is scratch at a return (never a return register).
    "    mov r11, rax",
    "    mov rax, qword ptr [rsp + 152]",
    "    cmp eax, 6",
    "    jb 55f",
    "    jne 56f",
    "    fld tbyte ptr [rsp + 176]",
    "56:",
    "    fld tbyte ptr [rsp + 160]",
    "55:",
    "    cmp byte ptr [rip + {vstate}], 1",
    "    jb 57f",
    "    je 58f",
    "    vmovdqa64 zmm0, zmmword ptr [rsp]",
    "    vmovdqa xmm1, xmmword ptr [rsp + 64]",
    "    jmp 59f",
    "58:",
    "    vmovdqa ymm0, ymmword ptr [rsp]",
    "    vmovdqa xmm1, xmmword ptr [rsp + 64]",
    "    jmp 59f",
    "57:",
    "    movaps xmm0, xmmword ptr [rsp]",
    "    movaps xmm1, xmmword ptr [rsp + 64]",
    "59:",
    "    mov rax, qword ptr [rsp + 136]",
    "    mov rdx, qword ptr [rsp + 144]",
    "    mov rsp, qword ptr [rsp + 128]",
    ".cfi_def_cfa rsp, 0",
    $jump,
    concat!(".globl ", $end),
    concat!($end, ":"),
    ".cfi_endproc",
    ".popsection",
    exit = sym graph_exit,
    vstate = sym VECTOR_STATE,
    ready = sym crate::layout::EXIT_READY,
    inside = sym crate::layout::EXIT_INSIDE,
    shadow = sym crate::layout::EXIT_SHADOW,
    cache = sym crate::layout::EXIT_CACHE,
    sinks = sym crate::layout::EXIT_SINKS,
    sinks_mask = const crate::layout::SINKS - 1,
    ways_mask = const livetrace_ring::ring::raw::WAYS - 1,
    way_bytes = const livetrace_ring::ring::raw::WAY_BYTES,
    way_buffer = const livetrace_ring::ring::raw::WAY_BUFFER_OFFSET,
    head = const livetrace_ring::ring::raw::HEAD_OFFSET,
    started = const livetrace_ring::ring::raw::STARTED_OFFSET,
    overwrite = const livetrace_ring::ring::raw::OVERWRITE_OFFSET,
    tail_seen = const livetrace_ring::ring::raw::TAIL_SEEN_OFFSET,
    mask = const livetrace_ring::ring::raw::MASK_OFFSET,
    slots = const livetrace_ring::ring::raw::SLOTS_OFFSET,
    exit_kind = const crate::layout::EXIT,
    depth = const std::mem::offset_of!(Block, depth),
    f_ret = const std::mem::offset_of!(Frame, ret),
    f_slot = const std::mem::offset_of!(Frame, slot),
    f_func = const std::mem::offset_of!(Frame, func),
    f_entry = const std::mem::offset_of!(Frame, entry_ticks),
    f_child = const std::mem::offset_of!(Frame, child_ticks),
    f_sink = const std::mem::offset_of!(Frame, sink),
    f_level = const std::mem::offset_of!(Frame, level),
    f_parent = const std::mem::offset_of!(Frame, parent),
);
    };
}

// Where a hooked slot sends a function: its `ret` was predicted to go to
// the caller (the return-stack buffer holds the caller's return address,
// which that `ret` used up), so it leaves with a jump, not another `ret`.
return_handler!(
    "lt_return_to_handler",
    "lt_return_to_handler_fast_end",
    "lt_return_to_handler_end",
    "    jmp r11"
);
// Where a per-site stub's call of the body lands (see the core's
// `FastPath::calling_original`): the stub's call pushed its own return-
// stack entry, which the body's `ret` used, so the caller's entry is still
// there and a `ret` to it is predicted.
return_handler!(
    "lt_return_to_stub",
    "lt_return_to_stub_fast_end",
    "lt_return_to_stub_end",
    "    push r11\n.cfi_adjust_cfa_offset 8\n    ret\n.cfi_adjust_cfa_offset -8"
);

unsafe extern "C" {
    fn lt_return_to_handler();
    static lt_return_to_handler_fast_end: u8;
    static lt_return_to_handler_end: u8;
    fn lt_return_to_stub();
    static lt_return_to_stub_fast_end: u8;
    static lt_return_to_stub_end: u8;
}

/// The return hooks' slow paths, which call `graph_exit` under the
/// recursion guard: a return address into them means a thread is inside
/// (the quiescence wait must not take a thread blocked there for one that
/// is clear).
pub(super) fn slow_exit_code() -> [std::ops::Range<usize>; 3] {
    [
        &raw const lt_return_to_handler_fast_end as usize
            ..&raw const lt_return_to_handler_end as usize,
        &raw const lt_return_to_stub_fast_end as usize..&raw const lt_return_to_stub_end as usize,
        super::full_hook::code(),
    ]
}

/// The hooks' whole code, the byte before each included: a frame whose
/// address is in here is the hook's, not the program's.
pub(crate) fn hook_code() -> [std::ops::Range<usize>; 3] {
    [
        return_to_handler_addr() - 1..&raw const lt_return_to_handler_end as usize,
        return_to_stub_addr() - 1..&raw const lt_return_to_stub_end as usize,
        super::full_hook::code(),
    ]
}

/// The code of the return hooks' fast exits (critical code).
pub(crate) fn fast_exit_code() -> [std::ops::Range<usize>; 2] {
    [
        return_to_handler_addr()..&raw const lt_return_to_handler_fast_end as usize,
        return_to_stub_addr()..&raw const lt_return_to_stub_fast_end as usize,
    ]
}

/// The exit routine of the graph tracer's stub-served fast path.
pub(crate) fn return_to_stub_addr() -> usize {
    lt_return_to_stub as *const () as usize
}

/// The address hooked slots hold (but those of functions that preserve
/// every register: [`return_to_handler_full_addr`](super::return_to_handler_full_addr)).
pub fn return_to_handler_addr() -> usize {
    lt_return_to_handler as *const () as usize
}
