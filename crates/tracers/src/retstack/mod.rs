//! Return hooking: how the function-graph tracer sees a function return.
//!
//! At entry the graph callback saves the traced function's return address
//! (the slot the trampoline hands it) in a *frame* on the thread's *shadow
//! stack*, with the slot's address, the function and the entry time, and
//! replaces it with `lt_return_to_handler`. When the function returns it
//! lands there; the hook finds the frame, puts the real return address back
//! in the slot, pops the frame, records the exit and jumps to the caller.
//! The kernel's `ret_stack` and `return_to_handler`. The graph tracer's
//! fast path (`crate::fast`) pushes the same frames in assembly, for
//! functions whose per-site stub calls the body, and those return into
//! `lt_return_to_stub`, which does the same.
//!
//! # The shadow stack
//!
//! A thread's shadow stack is a *block* of [`MAX_DEPTH`] frames in memory
//! mapped for it (no allocator, no lock: a thread's first hook may be in a
//! signal handler), reached through one thread-local pointer: livetrace's
//! static TLS stays small enough for libraries loaded with `dlopen`.
//! Blocks of threads that exited are found (their tid is gone) and reused.
//!
//! Every update is atomic with respect to signal handlers on the same
//! thread, which may take a backtrace or unwind at any instruction: a push
//! writes the frame, then publishes the depth, then hooks the slot; a
//! return writes the real return address back into the slot first, then
//! frees the frame. Frames are 64 bytes, stored as 16-byte pairs.
//!
//! # Real programs switch stacks
//!
//! A hooked frame is identified by its return slot's address. A return
//! finds its frame by that address, newest first, wherever it is in the
//! shadow stack: frames of other stacks hooked since (a coroutine switched
//! out by `swapcontext`, corosensei or boost.context; a handler on the
//! alternate signal stack) are left alone, and a frame freed below the top
//! is a hole until the top comes down to it. A coroutine resumed on another
//! thread returns through frames of the thread that hooked them: the return
//! finds them there (and says so in [`ShadowStats::migrated`]). The depth a
//! frame reports is one more than its parent's, the newest frame hooked
//! above it on what looks like the same stack (at most [`NEAR`] bytes up).
//!
//! Frames that never return are recognised as dead, and never written
//! again: unwinding (exceptions, panics, `pthread_exit`, `pthread_cancel`)
//! goes through the hook's unwind information, whose personality routine
//! puts each frame's real return address back as the unwinder reaches it
//! and drops the frame (`crate::unwind`); frames skipped by `longjmp` or
//! `siglongjmp` are found when a frame below them returns, or when the
//! shadow stack is full: a frame whose slot no longer holds the hook's
//! address, or whose slot a newer frame also hooked, is dead. The slot is
//! read with `process_vm_readv`, so a frame on a stack that was unmapped
//! meanwhile is read safely. A frame that cannot be proven dead stays: the
//! shadow stack never drops a live frame. A frame deeper than
//! [`MAX_DEPTH`] is not hooked; the overflow is counted.
//!
//! The exit path runs with tracing suppressed on the thread, so nothing it
//! calls is traced, and the quiescence wait counts it as busy.

mod block;
mod full_hook;
mod gc;
mod handler;
mod hook;
mod sinks;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering::*;

use block::{current, NO_BLOCK};

pub(crate) use block::{shadow_tpoff, Block, Frame};
pub use full_hook::return_to_handler_full_addr;
pub use handler::return_to_handler_addr;
pub(crate) use handler::{fast_exit_code, hook_code, return_to_stub_addr};
pub(crate) use hook::{count_unwound, find_frame, hook, take};
pub(crate) use sinks::{publish_sink, unpublish_sink};

/// Frames the shadow stack holds per thread.
pub const MAX_DEPTH: usize = 256;

/// How far above a new frame's slot its parent's may be, on one stack. A
/// frame farther up, or below, is taken to be on another stack (a
/// coroutine's, the signal stack): the new frame starts a new nesting at
/// depth 0. Only reported depths and self times depend on it.
pub const NEAR: usize = 256 << 10;

/// What a graph session does with entries and exits. Implemented by the
/// sessions in this crate; called on the traced thread.
pub(crate) trait Sink: Send + Sync {
    fn exit(&self, func: usize, entry_ticks: u64, exit_ticks: u64, child_ticks: u64, depth: u32);
}

/// Per-thread counts of frames the graph tracer could not follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Calls not hooked because the shadow stack was full (or, in
    /// [`no_shadow_stack`], the thread could get none).
    pub overflow: u64,
    /// Frames found dead without returning: skipped by `longjmp`, or left
    /// on a stack that was freed.
    pub skipped: u64,
    /// Frames an unwinder went through (exceptions, panics, thread exits).
    pub unwound: u64,
    /// Returns of frames this thread hooked that happened on another
    /// thread (a coroutine resumed elsewhere), counted by the thread that
    /// saw the return.
    pub migrated: u64,
}

/// This thread's [`ShadowStats`].
pub fn shadow_stats() -> ShadowStats {
    current().map_or_else(ShadowStats::default, |b| ShadowStats {
        overflow: b.overflow.load(Relaxed),
        skipped: b.skipped.load(Relaxed),
        unwound: b.unwound.load(Relaxed),
        migrated: b.migrated.load(Relaxed),
    })
}

/// Calls of any thread not hooked because the thread could get no shadow
/// stack (more than 8192 threads hooking at once, or no memory).
pub fn no_shadow_stack() -> u64 {
    NO_BLOCK.load(Relaxed)
}

/// This thread's hooked frames not yet returned (nor found dead).
pub fn depth() -> usize {
    current().map_or(0, |b| {
        let d = b.depth.load(Acquire).min(MAX_DEPTH);
        (0..d)
            .filter(|&k| b.frame(k).slot.load(Relaxed) != 0)
            .count()
    })
}
