//! Keeping SIGTRAP and the world signal deliverable in every thread, and
//! both dispositions ours.
//!
//! # Why
//!
//! A thread that executes an `int3` with SIGTRAP blocked is killed by the
//! kernel (`force_sig` resets a blocked synchronous signal to its default
//! action): a worker thread that blocks every signal — the classic "one
//! `sigwait` thread" server — would take the whole process down the first
//! time it reached a site mid-batch. A thread that blocks the world signal
//! can be neither probed nor stopped. And a program that installs a SIGTRAP
//! handler after us would silently lose the engine's traps to it.
//!
//! # How
//!
//! 1. **Interposition.** Where livetrace is loaded, the functions a program
//!    changes its signal masks and dispositions with are ours
//!    (`pthread_sigmask`, `sigprocmask`, `sigaction`, `signal`,
//!    `sigsuspend`, `ppoll`, `pselect`, `epoll_pwait`, `swapcontext`, …):
//!    they pass everything through except that the *protected* signals
//!    (SIGTRAP and the world signal) are taken out of every set that would
//!    block them — the thread mask, a handler's `sa_mask`, the temporary
//!    mask of `sigsuspend`/`ppoll`/`pselect`/`epoll_pwait`, a context's
//!    `uc_sigmask`. Threads inherit their creator's mask, so threads created
//!    later are covered too. Once our handler is on SIGTRAP (or the world
//!    signal), a disposition the program sets for it is recorded as the
//!    program's (`ProgramAction`) and ours stays: the program's handler
//!    then receives exactly the deliveries that are not ours, and
//!    `sigaction` reports the program's own disposition back to it (so a
//!    handler that chains to its "previous" one never chains to ours).
//!    The definitions bind the program's own calls at link time (a Rust
//!    program linking livetrace) or every object's calls through the
//!    loader's search order (`liblivetrace.so` preloaded or injected).
//! 2. **Checking before every batch** (`check_threads`), for what
//!    interposition cannot see (raw system calls, C libraries in a Rust
//!    program, masks set before livetrace was loaded): every thread's
//!    blocked set is read from `/proc/self/task/TID/status`; a thread that
//!    blocks a protected signal is given it back through a probe whose
//!    handler edits the mask its signal frame will restore; a thread that
//!    blocks the world signal as well cannot be reached, and the batch is
//!    refused before anything is written, naming the thread. Dispositions
//!    installed before us are cleaned the same way once (`sanitize`).
//!
//! What a program gives up: it cannot block SIGTRAP (a SIGTRAP it sends
//! itself with `kill` is delivered to its handler at once instead of being
//! held for `sigwait`), nor the world signal.
//!
//! Everything on the signal paths here is async-signal-safe.

use std::cell::UnsafeCell;
use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use crate::world;

mod action;
mod check;
mod interpose;
mod waits;

pub(crate) use action::*;
pub(crate) use check::check_threads;
pub use check::{masks_repaired, BlockedThread};
pub(crate) use interpose::keep_interposers;
pub use interpose::{
    bsd_signal, masks_cleaned, pthread_sigmask, sigaction, signal, sigprocmask, sigsuspend,
    sysv_signal,
};
pub use waits::{epoll_pwait, epoll_pwait2, ppoll, pselect, setcontext, swapcontext};

// ---------------------------------------------------------------------------
// The real functions.

unsafe extern "C" {
    /// glibc's exported alias of `sigaction`, which our `sigaction` does not
    /// shadow.
    fn __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    fn __sigsuspend(set: *const libc::sigset_t) -> c_int;
}

/// The C library's `sigaction`, bypassing ours.
///
/// # Safety
/// As `sigaction(2)`.
pub(crate) unsafe fn real_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: the caller's contract is sigaction's.
    unsafe { __sigaction(sig, act, old) }
}

/// glibc keeps these two for itself (thread cancellation and `setxid`);
/// its `pthread_sigmask` never blocks them, nor does ours.
const SIGCANCEL: c_int = 32;
const SIGSETXID: c_int = 33;

/// `rt_sigprocmask` exactly as glibc's `pthread_sigmask` makes it, but with
/// the protected signals left unblocked. Returns 0 or an errno value.
fn sigmask_syscall(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let mut local = MaybeUninit::<libc::sigset_t>::zeroed();
    let set = if set.is_null() || how == libc::SIG_UNBLOCK {
        set
    } else {
        // SAFETY: `set` is the caller's valid sigset; we copy it and edit
        // the copy.
        unsafe {
            ptr::copy_nonoverlapping(set, local.as_mut_ptr(), 1);
            let l = local.as_mut_ptr();
            libc::sigdelset(l, SIGCANCEL);
            libc::sigdelset(l, SIGSETXID);
            strip(&mut *l);
        }
        local.as_ptr()
    };
    // SAFETY: the kernel's rt_sigprocmask with valid (or null) pointers and
    // the kernel's sigset size.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, how, set, old, 8usize) };
    if r < 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

/// Sets the calling thread's mask without going through any interposer
/// (for our own handlers and locks).
pub(crate) fn raw_setmask(set: &libc::sigset_t, old: &mut libc::sigset_t) {
    // SAFETY: valid pointers to sigsets; the kernel's sigset size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            set,
            old,
            8usize,
        )
    };
}

/// Blocks every signal on the calling thread but SIGTRAP until the guard is
/// dropped. SIGTRAP stays deliverable because what runs meanwhile may call
/// into libc (a system call wrapper, the clock) while a batch or a
/// relocation has an `int3` on that very function (`-f '*'` relocates
/// libc's `syscall`): blocked, the trap would kill the process; delivered,
/// the trap handler sends the thread on as for any other thread.
pub(crate) struct AllBlocked(libc::sigset_t);

impl AllBlocked {
    pub(crate) fn new() -> AllBlocked {
        // SAFETY: zeroed sigsets are valid; sigfillset fills one.
        let (mut all, mut old) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: a valid local set.
        unsafe {
            libc::sigfillset(&mut all);
            libc::sigdelset(&mut all, libc::SIGTRAP);
        }
        raw_setmask(&all, &mut old);
        AllBlocked(old)
    }
}

impl Drop for AllBlocked {
    fn drop(&mut self) {
        // SAFETY: an all-zero sigset is valid scratch.
        let mut scratch = unsafe { std::mem::zeroed() };
        raw_setmask(&self.0, &mut scratch);
    }
}

// ---------------------------------------------------------------------------
// The protected set.

/// Takes SIGTRAP and the world signal out of `set`.
pub(crate) fn strip(set: &mut libc::sigset_t) {
    // SAFETY: `set` is a valid sigset.
    unsafe {
        libc::sigdelset(set, libc::SIGTRAP);
        libc::sigdelset(set, world::signal());
    }
}

fn protected(sig: c_int) -> bool {
    sig == libc::SIGTRAP || sig == world::signal()
}

// ---------------------------------------------------------------------------
// Dispositions installed before us.

/// Takes the protected signals out of the `sa_mask` of every handler the
/// program installed before livetrace was loaded (or behind its back).
/// Once per process; cheap to call again.
pub(crate) fn sanitize() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, SeqCst) {
        return;
    }
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || protected(sig) {
            continue;
        }
        let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries the disposition only.
        if unsafe { real_sigaction(sig, ptr::null(), cur.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: filled by sigaction.
        let mut cur = unsafe { cur.assume_init() };
        if cur.sa_sigaction == libc::SIG_DFL || cur.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: a valid set.
        let blocks = unsafe {
            libc::sigismember(&cur.sa_mask, libc::SIGTRAP) == 1
                || libc::sigismember(&cur.sa_mask, world::signal()) == 1
        };
        if blocks {
            strip(&mut cur.sa_mask);
            // SAFETY: re-installs the same handler and flags with the
            // cleaned mask.
            unsafe { real_sigaction(sig, &cur, ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests;
