//! The tracers' fast paths: the function tracer's event and the graph
//! tracer's entry and exit, recorded in assembly without entering Rust.
//!
//! The callbacks in [`crate::session`] do the same work through the core's
//! dedicated trampoline, which must save every argument register (17
//! stores) and call Rust code that may clobber them. A fast path needs
//! only a few scratch registers, so a recorded call costs about what its
//! stores and `rdtsc` cost. The Rust path remains the reference and the
//! fallback: a fast path hands a call over to it (the core's fallback word)
//! whenever anything is not the common case — the thread has no buffer in
//! this session's rings yet (its way of the ring crate's writer cache
//! misses), the buffer looks full in DropNewest mode, the thread has no
//! shadow stack yet or it is full, the newest frame on it is not this
//! call's parent on the same stack (a hole, or another stack's frame after
//! a coroutine switch: the callback searches), or the thread is inside a
//! callback already.
//!
//! Each fast path holds the core's recursion guard (the thread's `inside`
//! byte) while it touches the shadow stack and the ring, and does nothing
//! inside a callback, so neither a callback nor a signal
//! handler's traced calls interleave with it (see
//! `livetrace_ftrace::FastPath`).
//!
//! The graph tracer's fast path is served through the core's per-site
//! stubs (`FastPath::calling_original`): the stub calls the function body
//! after the fast path pushed the shadow frame, so the body's `ret` is
//! predicted, and lands in `lt_return_to_stub` (in [`crate::retstack`]).
//! That exit, and `lt_return_to_handler` where the Rust callback hooked the
//! return slot, have a fast exit for the thread's newest frame when its
//! session registered here ([`crate::layout::FastSinks`]); everything else takes their
//! Rust exit. The entry writes the frame before it publishes the depth,
//! and the exits put the real return address back in the slot before they
//! pop it, so a signal handler's backtrace at any instruction sees a
//! consistent shadow stack. The stubs' unwind information names
//! `crate::unwind::personality`, so exceptions and thread exits unwind
//! through stub-served calls too.
//!
//! Templates use placeholder values, patched per session in [`patch`]:
//!
//! | placeholder | meaning |
//! |---|---|
//! | disp32 `0x7ace0000 + k` | `fs:` offset of the rings' cache way, + k |
//! | imm32 `0x7ace1d00` | the rings' id |
//! | disp32 `0x7ace2000` | `fs:` offset of the thread's shadow-stack pointer |
//! | imm32 `0x7ace3000` | the session (sink) id |
//!
//! plus the core's own (`fs:[SEQ]`), which the core patches when it copies
//! the code.

use std::mem::offset_of;
use std::sync::atomic::Ordering::*;
use std::sync::OnceLock;

use livetrace_ftrace::FastPath;
use livetrace_ring::ring::raw;

use crate::layout::{CALL, ENTRY, EXIT_CACHE, EXIT_INSIDE, EXIT_READY, EXIT_SHADOW};
use crate::retstack::{self, Block, Frame, MAX_DEPTH};

const WAY_PH: u32 = 0x7ace_0000;
const RID_PH: u32 = 0x7ace_1d00;
const SHADOW_PH: u32 = 0x7ace_2000;
const SINK_PH: u32 = 0x7ace_3000;

std::arch::global_asm!(
    ".pushsection .text.livetrace_fast,\"ax\",@progbits",
    // Scratch registers out to xmm8-12 and back.
    ".macro lt_stash",
    "    movq xmm8, rax",
    "    movq xmm9, rdx",
    "    movq xmm10, rcx",
    "    movq xmm11, rsi",
    "    movq xmm12, rdi",
    ".endm",
    ".macro lt_unstash",
    "    movq rax, xmm8",
    "    movq rdx, xmm9",
    "    movq rcx, xmm10",
    "    movq rsi, xmm11",
    "    movq rdi, xmm12",
    ".endm",
    // rcx: this thread's buffer; rsi: its head. In DropNewest mode, to
    // `full` if the buffer looks full (the callback reloads the reader's
    // tail and counts the refusal). Clobbers rax.
    ".macro lt_ring_room full",
    "    mov rcx, qword ptr fs:[0x7ace0008]",
    "    mov rsi, qword ptr [rcx + {head}]",
    "    cmp byte ptr [rcx + {overwrite}], 0",
    "    jne .Lroom\\@",
    "    mov rax, rsi",
    "    sub rax, qword ptr [rcx + {tail_seen}]",
    "    cmp rax, qword ptr [rcx + {mask}]",
    "    ja \\full",
    ".Lroom\\@:",
    ".endm",
    // Announces record `head` (rdi: head + 1, stored as `started`) and
    // points rsi at its slot.
    ".macro lt_ring_slot",
    "    lea rdi, [rsi + 1]",
    "    mov qword ptr [rcx + {started}], rdi",
    "    and rsi, qword ptr [rcx + {mask}]",
    "    shl rsi, 5",
    "    add rsi, qword ptr [rcx + {slots}]",
    ".endm",
    // ---- function tracer: one CALL record (ts, ip, parent, CALL) ----
    //
    // Both fast paths are bound by stores, like the trampolines: so they
    // keep their scratch registers in xmm8-15 (caller-saved and never
    // arguments, so dead at a function's entry) rather than on the stack,
    // and write records and frames as 16-byte pairs built there.
    ".p2align 4",
    ".globl lt_fast_function_start",
    "lt_fast_function_start:",
    "    cmp byte ptr fs:[0x5eed0000], 0",
    "    jne 8f",
    "    cmp qword ptr fs:[0x7ace0000], 0x7ace1d00",
    "    jne 8f",
    "    mov byte ptr fs:[0x5eed0000], 1",
    "    lt_stash",
    // [rsp]: the return address into the function (site + 5);
    // [rsp + 8]: the function's return address into its caller.
    "    lt_ring_room 6f",
    "    lt_ring_slot",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov rdx, qword ptr [rsp]",
    "    sub rdx, 5",
    "    movq xmm13, rax",
    "    movq xmm14, rdx",
    "    punpcklqdq xmm13, xmm14",
    "    movq xmm14, qword ptr [rsp + 8]",
    "    movhps xmm14, qword ptr [rip + 5f]",
    "    movups xmmword ptr [rsi], xmm13",
    "    movups xmmword ptr [rsi + 16], xmm14",
    "    mov qword ptr [rcx + {head}], rdi",
    "    lt_unstash",
    "    mov byte ptr fs:[0x5eed0000], 0",
    "    ret",
    "6:",
    "    lt_unstash",
    "    mov byte ptr fs:[0x5eed0000], 0",
    "8:",
    "    jmp qword ptr [rip + 9f]",
    "    .p2align 3",
    "5: .quad {call}",
    "9: .quad 0",
    ".globl lt_fast_function_end",
    "lt_fast_function_end:",
    // ---- graph tracer entry, served through per-site stubs: push a
    // shadow frame, one ENTRY record (ts, ip, depth, ENTRY) ----
    //
    // Called by the site's stub: [rsp] is the stub's return address,
    // [rsp + 8] the return slot. The stub hooks the return itself, by
    // calling the body: the slot will hold the stub's return address + 9
    // (past its `add rsp, 8` and `call rel32`), which the frame records as
    // its hook.
    ".p2align 4",
    ".globl lt_fast_graph_start",
    "lt_fast_graph_start:",
    "    cmp byte ptr fs:[0x5eed0000], 0",
    "    jne 8f",
    "    cmp qword ptr fs:[0x7ace0000], 0x7ace1d00",
    "    jne 8f",
    "    mov byte ptr fs:[0x5eed0000], 1",
    "    lt_stash",
    "    movq xmm13, r8",
    // rdi: the thread's shadow stack (none yet: the callback maps it);
    // r8: its depth d; rcx: 64 d (the top frame at rdi + rcx, the new one
    // at rdi + rcx + 64).
    "    mov rdi, qword ptr fs:[0x7ace2000]",
    "    test rdi, rdi",
    "    jz 6f",
    "    mov r8, qword ptr [rdi + {depth}]",
    "    cmp r8, {max_depth}",
    "    jae 6f",
    "    mov rcx, r8",
    "    shl rcx, 6",
    // The depth reported (edx): 0 with no frame; else one more than the
    // top frame's, if that is this frame's parent on this stack (its slot
    // above ours by less than NEAR). Anything else (a hole on top, another
    // stack's frame) goes to the callback, which searches.
    "    xor edx, edx",
    "    test r8, r8",
    "    jz 2f",
    "    mov rsi, qword ptr [rdi + rcx + {f_slot}]",
    "    sub rsi, rsp",
    "    sub rsi, 8",
    "    jbe 6f",
    "    cmp rsi, {near}",
    "    jae 6f",
    "    mov edx, dword ptr [rdi + rcx + {f_level}]",
    "    add edx, 1",
    "2:",
    // The frame as four pairs: (ret, slot), (child 0, sink | depth << 32),
    // (hook, parent = d: the top frame's index + 1, or 0), (func, entry).
    "    movq xmm14, qword ptr [rsp + 8]",
    "    lea rsi, [rsp + 8]",
    "    movq xmm15, rsi",
    "    punpcklqdq xmm14, xmm15",
    "    movups xmmword ptr [rdi + rcx + 64 + {f_ret}], xmm14",
    "    mov esi, edx",
    "    shl rsi, 32",
    "    or rsi, 0x7ace3000",
    "    movq xmm15, rsi",
    "    pslldq xmm15, 8",
    "    movups xmmword ptr [rdi + rcx + 64 + {f_child}], xmm15",
    "    mov rsi, qword ptr [rsp]",
    "    add rsi, {stub_body_return}",
    "    movq xmm14, rsi",
    "    movq xmm15, r8",
    "    punpcklqdq xmm14, xmm15",
    "    movups xmmword ptr [rdi + rcx + 64 + {f_hook}], xmm14",
    // The depth survives rdtsc in esi.
    "    mov esi, edx",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov rdx, qword ptr [rsp]",
    "    mov rdx, qword ptr [rdx + {stub_ip}]",
    "    movq xmm14, rdx",
    "    movq xmm15, rax",
    "    punpcklqdq xmm14, xmm15",
    "    movups xmmword ptr [rdi + rcx + 64 + {f_func}], xmm14",
    // The record's second pair: (depth, ENTRY).
    "    movq xmm15, rsi",
    "    movhps xmm15, qword ptr [rip + 5f]",
    // Room in the buffer, else the callback (the frame written above is
    // not published: harmless).
    "    lt_ring_room 6f",
    // Publish the frame: a signal handler sees it whole or not at all.
    "    lea rax, [r8 + 1]",
    "    mov qword ptr [rdi + {depth}], rax",
    // The record: (ts, ip), (depth, ENTRY).
    "    pshufd xmm14, xmm14, 0x4e",
    "    lt_ring_slot",
    "    movups xmmword ptr [rsi], xmm14",
    "    movups xmmword ptr [rsi + 16], xmm15",
    "    mov qword ptr [rcx + {head}], rdi",
    "    lt_unstash",
    "    movq r8, xmm13",
    "    mov byte ptr fs:[0x5eed0000], 0",
    "    ret",
    "6:",
    "    lt_unstash",
    "    movq r8, xmm13",
    "    mov byte ptr fs:[0x5eed0000], 0",
    "8:",
    "    jmp qword ptr [rip + 9f]",
    "    .p2align 3",
    "5: .quad {entry}",
    "9: .quad 0",
    ".globl lt_fast_graph_end",
    "lt_fast_graph_end:",
    ".popsection",
    head = const raw::HEAD_OFFSET,
    started = const raw::STARTED_OFFSET,
    overwrite = const raw::OVERWRITE_OFFSET,
    tail_seen = const raw::TAIL_SEEN_OFFSET,
    mask = const raw::MASK_OFFSET,
    slots = const raw::SLOTS_OFFSET,
    call = const CALL,
    entry = const ENTRY,
    depth = const offset_of!(Block, depth),
    stub_ip = const livetrace_ftrace::STUB_IP_FROM_RETURN,
    stub_body_return = const livetrace_ftrace::STUB_BODY_RETURN_FROM_RETURN,
    max_depth = const MAX_DEPTH,
    near = const retstack::NEAR,
    f_ret = const offset_of!(Frame, ret),
    f_slot = const offset_of!(Frame, slot),
    f_func = const offset_of!(Frame, func),
    f_child = const offset_of!(Frame, child_ticks),
    f_level = const offset_of!(Frame, level),
    f_hook = const offset_of!(Frame, hook),
);

unsafe extern "C" {
    static lt_fast_function_start: u8;
    static lt_fast_function_end: u8;
    static lt_fast_graph_start: u8;
    static lt_fast_graph_end: u8;
}

/// Which fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Function,
    Graph,
}

fn template(kind: Kind) -> &'static [u8] {
    let (start, end) = match kind {
        Kind::Function => (
            &raw const lt_fast_function_start,
            &raw const lt_fast_function_end,
        ),
        Kind::Graph => (&raw const lt_fast_graph_start, &raw const lt_fast_graph_end),
    };
    // SAFETY: start..end is the template's code in our text.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Thread-pointer offsets the fast paths use, the same in every thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Offsets {
    cache: isize,
    shadow: isize,
    inside: isize,
}

fn measure() -> (isize, isize) {
    (raw::cache_tpoff(), retstack::shadow_tpoff())
}

/// The offsets, if this build can use fast paths: the ring cache and the
/// shadow stack in static TLS (same offsets in a new thread), the clock
/// on the TSC, and the core set up.
pub(crate) fn offsets() -> Option<Offsets> {
    static OFFSETS: OnceLock<Option<Offsets>> = OnceLock::new();
    *OFFSETS.get_or_init(|| {
        if std::env::var_os("LIVETRACE_NO_FAST_PATH").is_some() {
            return None;
        }
        if crate::clock().source() != livetrace_ring::Source::Tsc {
            return None;
        }
        let here = measure();
        let there = std::thread::spawn(measure).join().ok()?;
        if here != there {
            return None;
        }
        let inside = livetrace_ftrace::inside_tpoff()?;
        for code in retstack::fast_exit_code() {
            livetrace_ftrace::add_critical_code(code).ok()?;
        }
        let o = Offsets {
            cache: here.0,
            shadow: here.1,
            inside,
        };
        // The return hook's fast exit reads these from memory.
        EXIT_INSIDE.store(o.inside as i64, Relaxed);
        EXIT_SHADOW.store(o.shadow as i64, Relaxed);
        EXIT_CACHE.store(o.cache as i64, Relaxed);
        EXIT_READY.store(1, Release);
        Some(o)
    })
}

/// Replaces every 4-byte `value` in `code` for which `matches(value)` by
/// `with(value)`; returns how many.
fn patch32(code: &mut [u8], matches: impl Fn(u32) -> bool, with: impl Fn(u32) -> i64) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + 4 <= code.len() {
        let v = u32::from_le_bytes(code[i..i + 4].try_into().expect("4 bytes"));
        if matches(v) {
            let w = i32::try_from(with(v)).expect("thread-pointer offsets fit in 32 bits");
            code[i..i + 4].copy_from_slice(&w.to_le_bytes());
            n += 1;
            i += 4;
        } else {
            i += 1;
        }
    }
    n
}

/// The fast path of `kind` for a session `sink` writing to the rings with
/// id `rings`, or `None` when ids do not fit its immediates.
pub(crate) fn patch(kind: Kind, o: Offsets, rings: u64, sink: u32) -> Option<FastPath> {
    let rid = i32::try_from(rings).ok()?;
    let sid = i32::try_from(sink).ok()?;
    let mut code = template(kind).to_vec();
    let way = o.cache + (rings as usize % raw::WAYS * raw::WAY_BYTES) as isize;
    let near = |base: u32, span: u32| move |v: u32| v.wrapping_sub(base) < span;
    let ways = patch32(&mut code, near(WAY_PH, 16), |v| {
        way as i64 + i64::from(v - WAY_PH)
    });
    let rids = patch32(&mut code, |v| v == RID_PH, |_| i64::from(rid));
    let shadow = patch32(&mut code, near(SHADOW_PH, 0x1000), |v| {
        o.shadow as i64 + i64::from(v - SHADOW_PH)
    });
    let sinks = patch32(&mut code, |v| v == SINK_PH, |_| i64::from(sid));
    let want = match kind {
        Kind::Function => (2, 1, 0, 0),
        Kind::Graph => (2, 1, 1, 1),
    };
    assert_eq!(
        (ways, rids, shadow, sinks),
        want,
        "fast path template placeholders"
    );
    let fast = match kind {
        Kind::Function => FastPath::new(code),
        Kind::Graph => FastPath::calling_original(code, retstack::return_to_stub_addr())
            .map(|f| f.with_personality(crate::unwind::personality as *const () as usize)),
    };
    Some(fast.expect("the templates keep the fast-path contract"))
}
