//! livetrace's tracers: what people run dynamic tracing for.
//!
//! - **function**: which functions ran, when, called from where — one event
//!   per call.
//! - **function-graph**: entry and exit of every call, with nesting depth
//!   and duration, by hooking each traced function's return
//!   ([`retstack`], the kernel's `ret_stack`/`return_to_handler`).
//! - **profile**: per function, calls, total and self time, min and max,
//!   aggregated on the traced threads without keeping events.
//!
//! A [`Session`] runs one tracer over the functions a filter names. Its
//! callback writes fixed-size records into per-thread lock-free ring
//! buffers ([`livetrace_ring`]) stamped with the calibrated TSC clock; a
//! reader turns them into a [`livetrace_output::Trace`] at any time, while
//! tracing runs or after it stopped, for the writers people already use
//! (ftrace text, Chrome/Perfetto JSON, flame graphs, `uftrace.data`).
//!
//! Where the session's ops is alone on a function, the function and graph
//! tracers record through assembly fast paths instead (see `fast.rs`):
//! the same records, about half the cost, with the callback as the
//! fallback for everything uncommon. [`Config::fast_path`] turns them off.
//!
//! # Invariants
//!
//! - Callbacks run with tracing suppressed on their thread (the core's
//!   recursion guard), and so do the return hook's exit path and the fast
//!   paths, which call nothing: nothing the tracers do is ever traced, and
//!   a signal handler's traced calls never interleave with a record being
//!   written.
//! - A return address is hooked only where its frame is on the shadow stack,
//!   and a frame is found by its return slot, so returns on other stacks
//!   (coroutines, the signal stack) leave each other's frames alone, and a
//!   frame is dropped only when proven dead ([`retstack`]).
//! - Unwinders see the real return addresses: the hooks' unwind information
//!   and its personality routine put each one back as an exception or a
//!   thread exit goes through, and backtraces are lent them (`unwind.rs`),
//!   so panics, C++ exceptions, `pthread_exit`, `pthread_cancel` and
//!   backtraces behave as without tracing. Only slots an unwinder reaches
//!   are written: never those of frames a `longjmp` skipped.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod fast;
mod layout;
pub mod retstack;
mod session;
mod symbols;
mod unwind;

pub use retstack::{no_shadow_stack, shadow_stats, ShadowStats, MAX_DEPTH, NEAR};
pub use session::{Config, Controls, Session, Tracer};
pub use symbols::process_identity;

/// The trace clock, calibrated once.
pub(crate) fn clock() -> &'static livetrace_ring::Clock {
    livetrace_ring::Clock::get()
}

/// Clock ticks now, for event timestamps: a plain `rdtsc` (see
/// [`livetrace_ring::Clock::now_unordered`]). In order on each thread;
/// across threads within a few nanoseconds.
#[inline]
pub(crate) fn clock_now() -> u64 {
    clock().now_unordered()
}

/// Ends the process when the traced program's control flow can no longer be
/// followed safely.
#[cold]
pub(crate) fn fatal(what: &str) -> ! {
    eprintln!("livetrace: fatal: {what}");
    std::process::abort()
}
