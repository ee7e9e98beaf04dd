//! One way to stop and inspect the world: every operation that needs to
//! know where the process's other threads are, or to hold them still.
//!
//! - [`threads`] lists them;
//! - [`observe`] reads each one's *whole* interrupted state — its RIP, the
//!   RIPs saved in signal frames on its stacks (and on its alternate signal
//!   stack), optionally every return address on them, and a word of its
//!   thread-local storage — without signalling the threads the kernel
//!   shows blocked (`/proc/self/task/TID/syscall`), probing only the
//!   others (the quiescence wait of the tracing core is built on it);
//! - [`wait_outside`] asks, until the answer is no, whether any thread's
//!   RIP, signal-frame RIP or stack word lies in given ranges (prologue
//!   relocation's step between `int3` and jump, and freeing detours);
//! - stopping the world (crate-internal: only the engine writes code) holds
//!   every other thread in a signal handler while several instructions are
//!   rewritten at once (sled conversion).
//!
//! All of it uses one real-time signal, the *world signal* ([`signal`],
//! [`set_signal`]), which a program may use too: deliveries that are not
//! ours reach the program's own handler.
//!
//! The pieces: `frames` walks a thread's stacks for signal frames,
//! `proc` reads what `/proc` shows without disturbing a thread,
//! `signal` owns the world signal's handler, `probe` observes, `stop`
//! holds.

pub(crate) mod clear;
pub(crate) mod frames;
pub(crate) mod probe;
pub(crate) mod proc;
pub(crate) mod signal;
pub(crate) mod stop;

pub use clear::{in_ranges, normalize_ranges, wait_outside, Inside};
pub use frames::Context;
pub use probe::{
    observe, world_stats, Observation, Observe, Seen, Target, Unresponsive, WorldStats,
};
pub use proc::tracer_pid;
pub use signal::{set_signal, signal};
pub use stop::{Busy, StopError, StopReport};

/// The threads of this process, by id (the caller included).
pub fn threads() -> std::io::Result<Vec<i32>> {
    let mut dirents = vec![0u8; 16 * 1024];
    let mut cap = 256;
    loop {
        let mut tids = Vec::with_capacity(cap);
        if proc::list_tids(&mut dirents, &mut tids) {
            return Ok(tids);
        }
        if tids.len() < tids.capacity() {
            return Err(std::io::Error::last_os_error());
        }
        cap *= 4;
    }
}

/// The calling thread's kernel id.
pub fn gettid() -> i32 {
    proc::gettid()
}

/// In a fork child: no handler of another thread is in flight.
pub(crate) fn forget_in_flight() {
    probe::forget_in_flight();
    stop::forget_in_flight();
}
