//! What the tracers' layers share, at the bottom of the crate so that
//! each layer only looks down: the record kinds every writer stamps
//! (the Rust callbacks in `session`, the assembly fast paths in `fast`, the
//! return hook's fast exit in `retstack`), and what the fast exit reads to
//! record a return without Rust: the `fs:` offsets the fast paths publish
//! and the table of graph sessions it may record into.
//!
//! `session` (top) builds sessions on `fast` and `retstack`; `fast` builds
//! on `retstack`'s frames; `retstack` and `fast` both read this module.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::*};

use livetrace_format::Kind;

/// A function-tracer call: (ts, function, caller).
pub(crate) const CALL: u64 = Kind::Call.code();
/// A graph entry: (ts, function, depth).
pub(crate) const ENTRY: u64 = Kind::Entry.code();
/// A graph exit: (ts, function, depth).
pub(crate) const EXIT: u64 = Kind::Exit.code();
/// A call not followed because the shadow stack was full.
pub(crate) const OVERFLOW: u64 = Kind::Overflow.code();

/// Set once the offsets below are valid.
pub(crate) static EXIT_READY: AtomicU8 = AtomicU8::new(0);
/// `fs:` offset of the core's `inside` byte.
pub(crate) static EXIT_INSIDE: AtomicI64 = AtomicI64::new(0);
/// `fs:` offset of the thread's shadow-stack pointer.
pub(crate) static EXIT_SHADOW: AtomicI64 = AtomicI64::new(0);
/// `fs:` offset of the ring crate's writer cache.
pub(crate) static EXIT_CACHE: AtomicI64 = AtomicI64::new(0);

/// Graph sessions whose frames the fast exit may record: pairs (session
/// id, rings id) at index `session id % SINKS`; session id 0 is free. A
/// session is entered here only while its rings are alive: it is cleared
/// before the quiescence wait that precedes freeing them, and that wait
/// waits for threads inside the fast exit's code (critical code, see
/// `livetrace_ftrace::add_critical_code`), which reads an entry and then
/// uses the buffer without leaving it.
pub(crate) struct FastSinks(pub(crate) [AtomicU64; 2 * SINKS]);
pub(crate) const SINKS: usize = 64;
pub(crate) static EXIT_SINKS: FastSinks = FastSinks([const { AtomicU64::new(0) }; 2 * SINKS]);

/// Enters graph session `sink` with rings `rings`; false if its slot is
/// taken (its frames then take the Rust exit).
pub(crate) fn add_sink(sink: u32, rings: u64) -> bool {
    let i = sink as usize % SINKS;
    let s = &EXIT_SINKS.0;
    if s[2 * i].load(Acquire) != 0 {
        return false;
    }
    s[2 * i + 1].store(rings, Relaxed);
    s[2 * i].store(u64::from(sink), Release);
    true
}

/// Removes graph session `sink`; the caller then waits for quiescence
/// before freeing its rings.
pub(crate) fn remove_sink(sink: u32) {
    let i = sink as usize % SINKS;
    let _ = EXIT_SINKS.0[2 * i].compare_exchange(u64::from(sink), 0, SeqCst, SeqCst);
}
