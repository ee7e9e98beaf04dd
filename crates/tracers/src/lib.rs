//! livetrace's tracers (work in progress): return hooking for the
//! function-graph tracer.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod retstack;

/// The trace clock (placeholder until the ring crate's calibrated TSC clock).
pub(crate) fn clock_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Ends the process when the traced program's control flow can no longer be
/// followed safely.
#[cold]
pub(crate) fn fatal(what: &str) -> ! {
    eprintln!("livetrace: fatal: {what}");
    std::process::abort()
}
