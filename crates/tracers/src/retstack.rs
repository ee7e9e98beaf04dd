//! Return hooking: how the function-graph tracer sees a function return.
//!
//! At entry the graph callback saves the traced function's return address
//! (the slot the trampoline hands it) on a per-thread *shadow stack*, with
//! the slot's address, the function and the entry time, and replaces it
//! with `return_to_handler`. When the function returns it lands there; the
//! handler saves the return-value registers, asks `graph_exit` for the
//! real return address (popping the frame and recording the exit), and
//! jumps to it. The kernel's `ret_stack` and `return_to_handler`.
//!
//! # Frames that never return normally
//!
//! - `longjmp` (and `siglongjmp` out of a signal handler) skips frames: the
//!   next frame that does return finds the skipped ones above it on the
//!   shadow stack (their slots are below its slot) and drops them, counted.
//! - Unwinding (a Rust panic, a C++ exception, `pthread_exit`'s forced
//!   unwind) must see the real return addresses, or the unwinder would find
//!   `return_to_handler` where it expects the caller. This crate defines
//!   `_Unwind_RaiseException`, `_Unwind_ForcedUnwind` and
//!   `_Unwind_Backtrace`: the program's references bind to them at link
//!   time (a preloaded library's, through symbol interposition), they put
//!   every hooked return address of the thread back, and call the real
//!   ones. The hooked frames' exits are then not recorded (the trace shows
//!   them without an exit); later calls are traced normally. A backtrace
//!   only lends the real addresses for its duration.
//! - A frame deeper than [`MAX_DEPTH`] is not hooked; the overflow is
//!   counted.
//!
//! The exit path runs with tracing suppressed on the thread, so nothing it
//! calls is traced, and the quiescence wait counts it as busy.

use std::cell::{Cell, UnsafeCell};

/// Frames the shadow stack holds per thread.
pub const MAX_DEPTH: usize = 256;

/// What a graph session does with entries and exits. Implemented by the
/// sessions in this crate; called on the traced thread.
pub(crate) trait Sink: Send + Sync {
    fn exit(&self, func: usize, entry_ticks: u64, exit_ticks: u64, child_ticks: u64, depth: u32);
}

// Both `repr(C)`: the graph tracer's fast paths (crate::fast) push and pop
// frames in assembly, by thread-pointer offset.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Frame {
    pub(crate) ret: usize,
    pub(crate) slot: usize,
    pub(crate) func: usize,
    pub(crate) entry_ticks: u64,
    pub(crate) child_ticks: u64,
    pub(crate) sink: u32,
}

// 16-byte aligned frames (after a padded `depth`): the fast paths store
// them as 16-byte pairs.
#[repr(C, align(16))]
pub(crate) struct Shadow {
    pub(crate) depth: Cell<usize>,
    _pad: usize,
    pub(crate) frames: UnsafeCell<[Frame; MAX_DEPTH]>,
    overflow: Cell<u64>,
    skipped: Cell<u64>,
    unwound: Cell<u64>,
}

const EMPTY: Frame = Frame {
    ret: 0,
    slot: 0,
    func: 0,
    entry_ticks: 0,
    child_ticks: 0,
    sink: 0,
};

thread_local! {
    static SHADOW: Shadow = const {
        Shadow {
            depth: Cell::new(0),
            _pad: 0,
            frames: UnsafeCell::new([EMPTY; MAX_DEPTH]),
            overflow: Cell::new(0),
            skipped: Cell::new(0),
            unwound: Cell::new(0),
        }
    };
}

/// Per-thread counts of frames the graph tracer could not follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Calls not hooked because the shadow stack was full.
    pub overflow: u64,
    /// Frames skipped by `longjmp` (dropped when a caller returned).
    pub skipped: u64,
    /// Frames unhooked because an unwind went through them.
    pub unwound: u64,
}

/// This thread's [`ShadowStats`].
pub fn shadow_stats() -> ShadowStats {
    SHADOW.with(|s| ShadowStats {
        overflow: s.overflow.get(),
        skipped: s.skipped.get(),
        unwound: s.unwound.get(),
    })
}

/// The shadow stack's offset from the thread pointer, measured on the
/// calling thread (the same in every thread when it is in static TLS).
pub(crate) fn shadow_tpoff() -> isize {
    livetrace_poke::tls_offset_of(SHADOW.with(|s| s as *const Shadow as usize))
}

/// This thread's shadow-stack depth: hooked frames not yet returned.
pub fn depth() -> usize {
    SHADOW.with(|s| s.depth.get())
}

/// Hooks the return of the function being entered. `slot` is the
/// trampoline's return slot. Returns the frame's depth, or `None` when the
/// shadow stack is full (counted).
///
/// `sink` is the id of a sink published with [`publish_sink`]; if it is gone
/// when the function returns, the exit is not recorded.
///
/// # Safety
/// `slot` is the live return-address slot of a function being entered on
/// this thread.
pub(crate) unsafe fn hook(
    slot: *mut usize,
    func: usize,
    entry_ticks: u64,
    sink: u32,
) -> Option<u32> {
    SHADOW.with(|s| {
        let d = s.depth.get();
        if d >= MAX_DEPTH {
            s.overflow.set(s.overflow.get() + 1);
            return None;
        }
        // SAFETY: only this thread touches its shadow stack, and never
        // re-entrantly (tracing is suppressed while we run).
        let frames = unsafe { &mut *s.frames.get() };
        // SAFETY: the caller guarantees `slot` is the live return slot.
        let ret = unsafe { slot.read() };
        frames[d] = Frame {
            ret,
            slot: slot as usize,
            func,
            entry_ticks,
            child_ticks: 0,
            sink,
        };
        s.depth.set(d + 1);
        // SAFETY: as above; the function will `ret` through it.
        unsafe { slot.write(return_to_handler_addr()) };
        Some(d as u32)
    })
}

/// Called by `return_to_handler` with the address of the slot the function
/// returned through; returns where it should have returned.
extern "C" fn graph_exit(slot: usize) -> usize {
    let _quiet = livetrace_ftrace::suppress();
    let now = crate::clock_now();
    SHADOW.with(|s| {
        // SAFETY: as in `hook`.
        let frames = unsafe { &mut *s.frames.get() };
        let mut d = s.depth.get();
        // Frames above whose slots lie below this one were skipped by a
        // longjmp: they will never return.
        while d > 0 && frames[d - 1].slot < slot {
            d -= 1;
            s.skipped.set(s.skipped.get() + 1);
        }
        if d == 0 || frames[d - 1].slot != slot {
            // No frame for this slot: the stack was corrupted under us.
            crate::fatal("function-graph return without a hooked frame");
        }
        d -= 1;
        let f = frames[d];
        s.depth.set(d);
        // Never before the entry, even if an unordered clock read ran early.
        let now = now.max(f.entry_ticks);
        let total = now - f.entry_ticks;
        if d > 0 {
            frames[d - 1].child_ticks = frames[d - 1].child_ticks.wrapping_add(total);
        }
        if let Some(sink) = lookup_sink(f.sink) {
            sink.exit(f.func, f.entry_ticks, now, f.child_ticks, d as u32);
        }
        f.ret
    })
}

/// Puts the real return address back into every hooked slot of this thread,
/// newest first (a slot hooked twice ends up with its oldest saved value,
/// the real one). With `forget`, the frames are dropped (an unwind is about
/// to destroy them); otherwise they are kept for [`rehook`].
fn unhook_all(forget: bool) {
    SHADOW.with(|s| {
        // SAFETY: as in `hook`.
        let frames = unsafe { &*s.frames.get() };
        let d = s.depth.get();
        for f in frames[..d].iter().rev() {
            // SAFETY: each slot is a live return slot of a frame that has
            // not returned (it would have popped itself), on this thread's
            // stack.
            unsafe { (f.slot as *mut usize).write(f.ret) };
        }
        if forget {
            s.unwound.set(s.unwound.get() + d as u64);
            s.depth.set(0);
        }
    })
}

/// Hooks again every frame [`unhook_all`]`(false)` lent back.
fn rehook() {
    SHADOW.with(|s| {
        // SAFETY: as in `hook`.
        let frames = unsafe { &*s.frames.get() };
        for f in &frames[..s.depth.get()] {
            // SAFETY: as in `unhook_all`.
            unsafe { (f.slot as *mut usize).write(return_to_handler_addr()) };
        }
    })
}

// ---------------------------------------------------------------------------
// Sinks by id. Hooked frames may outlive what they report to (a traced
// `main` returns when the program ends), so a frame names its sink by id
// and the exit path looks the id up in a published registry. The registry
// is read with tracing suppressed, so the core's quiescence wait covers
// its readers: a sink is unpublished, waited for, and only then freed.

struct Registry {
    sinks: Vec<(u32, *const dyn Sink)>,
}

static REGISTRY: std::sync::atomic::AtomicPtr<Registry> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static REGISTRY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lookup_sink(id: u32) -> Option<&'static dyn Sink> {
    let r = REGISTRY.load(std::sync::atomic::Ordering::Acquire);
    if r.is_null() {
        return None;
    }
    // SAFETY: a published registry, and every sink in it, is freed only
    // after a quiescence wait, which waits for this (suppressed) thread.
    let r = unsafe { &*r };
    r.sinks.iter().find(|(i, _)| *i == id).map(|&(_, p)| {
        // SAFETY: as above.
        unsafe { &*p }
    })
}

/// Registries replaced since the last wait, and whether a sink left.
struct Graveyard(Vec<*mut Registry>);
// SAFETY: the pointers are owned boxes only touched under REGISTRY_LOCK.
unsafe impl Send for Graveyard {}
static GRAVEYARD: std::sync::Mutex<Graveyard> = std::sync::Mutex::new(Graveyard(Vec::new()));

/// Replaces the registry. Old registries are freed only when a sink is
/// removed (which must wait for quiescence anyway, before its owner frees
/// it): publishing a sink never probes the program's threads.
fn change_registry(change: impl FnOnce(&mut Vec<(u32, *const dyn Sink)>), removing: bool) {
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    let _g = REGISTRY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old = REGISTRY.load(Acquire);
    let mut sinks = if old.is_null() {
        Vec::new()
    } else {
        // SAFETY: replaced only under the lock we hold.
        unsafe { &*old }.sinks.clone()
    };
    change(&mut sinks);
    let old = REGISTRY.swap(Box::into_raw(Box::new(Registry { sinks })), AcqRel);
    let mut grave = GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner());
    if !old.is_null() {
        grave.0.push(old);
    }
    if removing {
        // Exit paths may still hold an old registry, or the sink removed.
        let _ = livetrace_ftrace::synchronize();
        for r in grave.0.drain(..) {
            // SAFETY: from Box::into_raw above; no reader is left.
            drop(unsafe { Box::from_raw(r) });
        }
    }
}

/// The vector state the return hooks save (`livetrace_ftrace::VectorState`
/// as 0, 1, 2), set before the first frame is hooked.
static VECTOR_STATE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Publishes `sink` under `id` for hooked frames to report to.
///
/// # Safety
/// `sink` stays valid until [`unpublish_sink`]`(id)` has returned.
pub(crate) unsafe fn publish_sink(id: u32, sink: *const dyn Sink) {
    VECTOR_STATE.store(
        livetrace_ftrace::vector_state() as u8,
        std::sync::atomic::Ordering::Relaxed,
    );
    change_registry(|v| v.push((id, sink)), false);
}

/// Removes sink `id`; when this returns no exit path can still be using it.
pub(crate) fn unpublish_sink(id: u32) {
    // The fast exit first: the wait below covers it too.
    crate::fast::remove_sink(id);
    change_registry(|v| v.retain(|(i, _)| *i != id), true);
}

macro_rules! return_handler {
    ($name:literal, $fast_end:literal, $jump:literal) => {
std::arch::global_asm!(
    ".pushsection .text.livetrace_graph,\"ax\",@progbits",
    ".p2align 4",
    concat!(".globl ", $name),
    concat!($name, ":"),
    // The function returned here: rsp is its slot + 8, 16-byte aligned.
    // rax and rdx (and xmm0, xmm1, st0, st1, untouched here) may hold its
    // result; rcx, rsi, rdi, r8-r11 and xmm2-15 are dead at a return, free
    // to use.
    //
    // The fast exit, for a graph frame on top whose session is in
    // EXIT_SINKS and whose thread has a buffer with room: the same work as
    // `graph_exit` and the session's record, holding the core's recursion
    // guard (never inside a callback or another fast path).
    "    cmp byte ptr [rip + {ready}], 0",
    "    je 50f",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    cmp byte ptr fs:[rcx], 0",
    "    jne 50f",
    "    mov byte ptr fs:[rcx], 1",
    "    mov r8, rax",
    "    mov r9, rdx",
    "    mov rsi, qword ptr [rip + {shadow}]",
    "    mov rdi, qword ptr fs:[rsi + {depth}]",
    "    sub rdi, 1",
    "    jb 49f",
    // r10: the shadow stack's fs offset plus the top frame's.
    "    imul r10, rdi, {frame}",
    "    add r10, rsi",
    "    lea r11, [rsp - 8]",
    "    cmp qword ptr fs:[r10 + {frames} + {f_slot}], r11",
    "    jne 49f",
    "    mov eax, dword ptr fs:[r10 + {frames} + {f_sink}]",
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
    // Committed: pop the frame, stamp, charge the parent, record.
    "    mov qword ptr fs:[rsi + {depth}], rdi",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov rdx, qword ptr fs:[r10 + {frames} + {f_entry}]",
    "    cmp rax, rdx",
    "    cmovb rax, rdx",
    "    test rdi, rdi",
    "    jz 3f",
    "    mov rsi, rax",
    "    sub rsi, rdx",
    "    add qword ptr fs:[r10 + {frames} + {f_child} - {frame}], rsi",
    "3:",
    // The record as two 16-byte stores: (ts, func), (depth, EXIT).
    "    movq xmm14, rax",
    "    movq xmm15, qword ptr fs:[r10 + {frames} + {f_func}]",
    "    punpcklqdq xmm14, xmm15",
    "    movq xmm15, rdi",
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
    "    mov r11, qword ptr fs:[r10 + {frames} + {f_ret}]",
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
    // The fast exit's end: its code, from lt_return_to_handler to here, is
    // critical code for the quiescence wait (it reads EXIT_SINKS and then
    // a session's buffer, and calls nothing).
    concat!(".globl ", $fast_end),
    concat!($fast_end, ":"),
    "50:",
    // Save the result registers: rax, rdx, vector register 0 at its full
    // width (a __m256 or __m512 result), xmm1, and st0/st1 when the x87
    // stack holds a long double result (the ABI wants it empty at a call).
    // rsp (the slot + 8) is only 8-aligned: gcc may have called the
    // function with the stack 8 off; realign for the call.
    "    mov rcx, rsp",
    "    and rsp, -64",
    "    sub rsp, 192",
    "    mov qword ptr [rsp + 128], rcx",
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
    $jump,
    ".popsection",
    exit = sym graph_exit,
    vstate = sym VECTOR_STATE,
    ready = sym crate::fast::EXIT_READY,
    inside = sym crate::fast::EXIT_INSIDE,
    shadow = sym crate::fast::EXIT_SHADOW,
    cache = sym crate::fast::EXIT_CACHE,
    sinks = sym crate::fast::EXIT_SINKS,
    sinks_mask = const crate::fast::SINKS - 1,
    ways_mask = const livetrace_ring::ring::raw::WAYS - 1,
    way_bytes = const livetrace_ring::ring::raw::WAY_BYTES,
    way_buffer = const livetrace_ring::ring::raw::WAY_BUFFER_OFFSET,
    head = const livetrace_ring::ring::raw::HEAD_OFFSET,
    started = const livetrace_ring::ring::raw::STARTED_OFFSET,
    overwrite = const livetrace_ring::ring::raw::OVERWRITE_OFFSET,
    tail_seen = const livetrace_ring::ring::raw::TAIL_SEEN_OFFSET,
    mask = const livetrace_ring::ring::raw::MASK_OFFSET,
    slots = const livetrace_ring::ring::raw::SLOTS_OFFSET,
    exit_kind = const crate::session::EXIT,
    depth = const std::mem::offset_of!(Shadow, depth),
    frames = const std::mem::offset_of!(Shadow, frames),
    frame = const std::mem::size_of::<Frame>(),
    f_ret = const std::mem::offset_of!(Frame, ret),
    f_slot = const std::mem::offset_of!(Frame, slot),
    f_func = const std::mem::offset_of!(Frame, func),
    f_entry = const std::mem::offset_of!(Frame, entry_ticks),
    f_child = const std::mem::offset_of!(Frame, child_ticks),
    f_sink = const std::mem::offset_of!(Frame, sink),
);
    };
}

// Where a hooked slot sends a function: its `ret` was predicted to go to
// the caller (the return-stack buffer holds the caller's return address,
// which that `ret` used up), so it leaves with a jump, not another `ret`.
return_handler!(
    "lt_return_to_handler",
    "lt_return_to_handler_fast_end",
    "    jmp r11"
);
// Where a per-site stub's call of the body lands (see the core's
// `FastPath::calling_original`): the stub's call pushed its own return-
// stack entry, which the body's `ret` used, so the caller's entry is still
// there and a `ret` to it is predicted.
return_handler!(
    "lt_return_to_stub",
    "lt_return_to_stub_fast_end",
    "    push r11\n    ret"
);

unsafe extern "C" {
    fn lt_return_to_handler();
    static lt_return_to_handler_fast_end: u8;
    fn lt_return_to_stub();
    static lt_return_to_stub_fast_end: u8;
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

/// The address hooked slots hold.
pub fn return_to_handler_addr() -> usize {
    lt_return_to_handler as *const () as usize
}

// ---------------------------------------------------------------------------
// Unwinder interposition.

type RaiseFn = unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int;
type ForcedFn =
    unsafe extern "C" fn(*mut libc::c_void, *mut libc::c_void, *mut libc::c_void) -> libc::c_int;
type BacktraceFn = unsafe extern "C" fn(*mut libc::c_void, *mut libc::c_void) -> libc::c_int;

fn next_symbol(name: &std::ffi::CStr) -> usize {
    // SAFETY: dlsym with RTLD_NEXT finds the definition after ours (libgcc's)
    // and has no other effect.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        crate::fatal("the unwinder's real entry point is not loaded");
    }
    p as usize
}

/// Starts unwinding an exception: the real return addresses go back first.
///
/// # Safety
/// As libgcc's `_Unwind_RaiseException`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_RaiseException(exception: *mut libc::c_void) -> libc::c_int {
    unhook_all(true);
    let real: RaiseFn = {
        let a = next_symbol(c"_Unwind_RaiseException");
        // SAFETY: the loader's definition has this signature.
        unsafe { std::mem::transmute::<usize, RaiseFn>(a) }
    };
    // SAFETY: passes the caller's exception on unchanged.
    unsafe { real(exception) }
}

/// Forced unwinding (`pthread_exit`, `pthread_cancel`): as above.
///
/// # Safety
/// As libgcc's `_Unwind_ForcedUnwind`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_ForcedUnwind(
    exception: *mut libc::c_void,
    stop: *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    unhook_all(true);
    let a = next_symbol(c"_Unwind_ForcedUnwind");
    // SAFETY: the loader's definition has this signature.
    let real: ForcedFn = unsafe { std::mem::transmute::<usize, ForcedFn>(a) };
    // SAFETY: passes the caller's arguments on unchanged.
    unsafe { real(exception, stop, arg) }
}

/// A backtrace walks the stack without changing it: lend it the real
/// return addresses, then hook again.
///
/// # Safety
/// As libgcc's `_Unwind_Backtrace`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_Backtrace(
    trace: *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    unhook_all(false);
    let a = next_symbol(c"_Unwind_Backtrace");
    // SAFETY: the loader's definition has this signature.
    let real: BacktraceFn = unsafe { std::mem::transmute::<usize, BacktraceFn>(a) };
    // SAFETY: passes the caller's arguments on unchanged.
    let r = unsafe { real(trace, arg) };
    rehook();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use livetrace_ftrace::{register, unregister, with_table, Ops, Pattern};
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
        with_table(|t| t.insert_external(&sites)).unwrap().unwrap();
        let log: &'static Log = Box::leak(Box::default());
        // SAFETY: the log is leaked, so it outlives its publication.
        unsafe { publish_sink(9999, log as *const dyn Sink) };
        let ops = Ops::builder("graph-test")
            .filter(Pattern::parse("g::*"))
            .build(move |call| {
                // SAFETY: the slot is this call's return slot.
                if let Some(d) =
                    unsafe { hook(call.return_slot(), call.ip(), crate::clock_now(), 9999) }
                {
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
        unpublish_sink(9999);
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
            name: "g::ret_values",
            file: file!(),
            line: 0,
        }];
        with_table(|t| t.insert_external(&sites)).unwrap().unwrap();
        let sink: &'static Clobber = Box::leak(Box::new(Clobber(Default::default())));
        // SAFETY: leaked, so it outlives its publication.
        unsafe { publish_sink(9998, sink as *const dyn Sink) };
        let ops = Ops::builder("graph-ret-test")
            .filter(Pattern::Addr(site))
            .build(move |call| {
                // SAFETY: the slot is this call's return slot.
                unsafe { hook(call.return_slot(), call.ip(), crate::clock_now(), 9998) };
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
        unpublish_sink(9998);
    }
}
