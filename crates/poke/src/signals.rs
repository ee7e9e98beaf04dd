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

pub(crate) use action::*;
pub(crate) use check::check_threads;
pub use check::{masks_repaired, BlockedThread};

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
// The interposers.

/// Counts the mask changes our interposers cleaned, for tests.
static CLEANED: AtomicU64 = AtomicU64::new(0);

/// How many masks the interposers have taken a protected signal out of.
pub fn masks_cleaned() -> u64 {
    CLEANED.load(SeqCst)
}

fn note_if_protected(set: *const libc::sigset_t) {
    if set.is_null() {
        return;
    }
    // SAFETY: a caller's valid sigset.
    let hit = unsafe {
        libc::sigismember(set, libc::SIGTRAP) == 1 || libc::sigismember(set, world::signal()) == 1
    };
    if hit {
        CLEANED.fetch_add(1, SeqCst);
    }
}

/// `pthread_sigmask`, never blocking SIGTRAP or the world signal.
///
/// # Safety
/// As `pthread_sigmask(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    if how != libc::SIG_UNBLOCK {
        note_if_protected(set);
    }
    sigmask_syscall(how, set, old)
}

/// `sigprocmask`, never blocking SIGTRAP or the world signal.
///
/// # Safety
/// As `sigprocmask(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    if how != libc::SIG_UNBLOCK {
        note_if_protected(set);
    }
    match sigmask_syscall(how, set, old) {
        0 => 0,
        e => {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = e };
            -1
        }
    }
}

/// `sigaction`: the program's dispositions for SIGTRAP and the world signal
/// are recorded (ours stay installed); every handler's mask leaves them
/// deliverable.
///
/// # Safety
/// As `sigaction(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if let Some(prog) = program_action(sig) {
        let prev = if act.is_null() {
            prog.get()
        } else {
            // SAFETY: the caller's valid sigaction.
            let mut a = unsafe { *act };
            strip(&mut a.sa_mask);
            prog.set(a)
        };
        if !old.is_null() {
            let prev = prev.unwrap_or_else(|| {
                // SAFETY: a zeroed sigaction is SIG_DFL.
                unsafe { std::mem::zeroed() }
            });
            // SAFETY: the caller's valid out pointer.
            unsafe { *old = prev };
        }
        return 0;
    }
    if act.is_null() {
        // SAFETY: the caller's arguments.
        return unsafe { real_sigaction(sig, act, old) };
    }
    // SAFETY: the caller's valid sigaction, copied and cleaned.
    let mut a = unsafe { *act };
    note_if_protected(&a.sa_mask);
    strip(&mut a.sa_mask);
    // SAFETY: the caller's arguments, with the cleaned copy.
    unsafe { real_sigaction(sig, &a, old) }
}

fn signal_via_sigaction(
    sig: c_int,
    handler: libc::sighandler_t,
    flags: c_int,
    self_mask: bool,
) -> libc::sighandler_t {
    if handler == libc::SIG_ERR || !(1..=libc::SIGRTMAX()).contains(&sig) {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return libc::SIG_ERR;
    }
    let mut a = MaybeUninit::<libc::sigaction>::zeroed();
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: fills a zeroed sigaction; `sigaction` (ours) with valid
    // pointers.
    unsafe {
        let p = a.as_mut_ptr();
        (*p).sa_sigaction = handler;
        (*p).sa_flags = flags;
        libc::sigemptyset(&mut (*p).sa_mask);
        if self_mask {
            libc::sigaddset(&mut (*p).sa_mask, sig);
        }
        if sigaction(sig, p, old.as_mut_ptr()) != 0 {
            return libc::SIG_ERR;
        }
        (*old.as_ptr()).sa_sigaction
    }
}

/// `signal` (BSD semantics, as glibc's): through our `sigaction`.
#[unsafe(no_mangle)]
pub extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_via_sigaction(sig, handler, libc::SA_RESTART, true)
}

/// `bsd_signal`: as `signal`.
#[unsafe(no_mangle)]
pub extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_via_sigaction(sig, handler, libc::SA_RESTART, true)
}

/// `sysv_signal`: one-shot, not deferred, as glibc's.
#[unsafe(no_mangle)]
pub extern "C" fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_via_sigaction(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER, false)
}

/// `sigsuspend`, with the protected signals deliverable while suspended.
///
/// # Safety
/// As `sigsuspend(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigsuspend(set: *const libc::sigset_t) -> c_int {
    let mut local = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: copies the caller's valid set, cleans the copy, passes it on.
    unsafe {
        ptr::copy_nonoverlapping(set, local.as_mut_ptr(), 1);
        strip(&mut *local.as_mut_ptr());
        __sigsuspend(local.as_ptr())
    }
}

/// Resolves `name` in the objects after ours (the C library).
fn next(name: &std::ffi::CStr, slot: &AtomicUsize) -> usize {
    let p = slot.load(SeqCst);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if p == 0 {
        let msg = b"livetrace: cannot find the C library's signal functions\n";
        // SAFETY: writes a static message, then aborts: there is no
        // implementation to forward the program's call to.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    slot.store(p, SeqCst);
    p
}

static REAL_PPOLL: AtomicUsize = AtomicUsize::new(0);
static REAL_PSELECT: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_PWAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_PWAIT2: AtomicUsize = AtomicUsize::new(0);
static REAL_SWAPCONTEXT: AtomicUsize = AtomicUsize::new(0);
static REAL_SETCONTEXT: AtomicUsize = AtomicUsize::new(0);

/// Resolves the functions forwarded through `dlsym` ahead of time, from a
/// constructor: `dlsym` is not async-signal-safe, and `ppoll` and friends
/// may be called from a signal handler.
extern "C" fn resolve_at_load() {
    next(c"ppoll", &REAL_PPOLL);
    next(c"pselect", &REAL_PSELECT);
    next(c"epoll_pwait", &REAL_EPOLL_PWAIT);
    next(c"epoll_pwait2", &REAL_EPOLL_PWAIT2);
    next(c"swapcontext", &REAL_SWAPCONTEXT);
    next(c"setcontext", &REAL_SETCONTEXT);
}

#[used]
#[unsafe(link_section = ".init_array")]
static RESOLVE_AT_LOAD: extern "C" fn() = resolve_at_load;

/// A cleaned copy of a caller's optional temporary mask.
fn cleaned(
    set: *const libc::sigset_t,
    local: &mut MaybeUninit<libc::sigset_t>,
) -> *const libc::sigset_t {
    if set.is_null() {
        return set;
    }
    // SAFETY: copies the caller's valid set into `local` and cleans it.
    unsafe {
        ptr::copy_nonoverlapping(set, local.as_mut_ptr(), 1);
        strip(&mut *local.as_mut_ptr());
    }
    local.as_ptr()
}

/// `ppoll`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `ppoll(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const libc::timespec,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's ppoll has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"ppoll", &REAL_PPOLL)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(fds, n, timeout, set) }
}

/// `pselect`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `pselect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's pselect has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"pselect", &REAL_PSELECT)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(n, r, w, e, timeout, set) }
}

/// `epoll_pwait`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `epoll_pwait(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        c_int,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's epoll_pwait has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"epoll_pwait", &REAL_EPOLL_PWAIT)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(epfd, events, max, timeout, set) }
}

/// `epoll_pwait2`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `epoll_pwait2(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's epoll_pwait2 has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"epoll_pwait2", &REAL_EPOLL_PWAIT2)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(epfd, events, max, timeout, set) }
}

/// Cleans the mask a context will install when resumed. The context is
/// the caller's, writable memory (as `makecontext`/`getcontext` made it).
fn clean_context(ucp: *const libc::ucontext_t) {
    if ucp.is_null() {
        return;
    }
    // SAFETY: a caller's valid ucontext; its sigmask is plain memory.
    unsafe { strip(&mut (*(ucp as *mut libc::ucontext_t)).uc_sigmask) };
}

/// `swapcontext`, never resuming a context with the protected signals
/// blocked.
///
/// # Safety
/// As `swapcontext(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn swapcontext(
    oucp: *mut libc::ucontext_t,
    ucp: *const libc::ucontext_t,
) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::ucontext_t, *const libc::ucontext_t) -> c_int;
    clean_context(ucp);
    // SAFETY: the C library's swapcontext has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"swapcontext", &REAL_SWAPCONTEXT)) };
    // SAFETY: the caller's arguments.
    unsafe { f(oucp, ucp) }
}

/// `setcontext`, never resuming a context with the protected signals
/// blocked.
///
/// # Safety
/// As `setcontext(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setcontext(ucp: *const libc::ucontext_t) -> c_int {
    type F = unsafe extern "C" fn(*const libc::ucontext_t) -> c_int;
    clean_context(ucp);
    // SAFETY: the C library's setcontext has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"setcontext", &REAL_SETCONTEXT)) };
    // SAFETY: the caller's argument.
    unsafe { f(ucp) }
}

/// Ensures the interposers are linked into every program that patches:
/// a reference from code that is certainly linked pulls in the object
/// defining them.
pub(crate) fn keep_interposers() {
    let fns: [usize; 14] = [
        pthread_sigmask as *const () as usize,
        sigprocmask as *const () as usize,
        sigaction as *const () as usize,
        signal as *const () as usize,
        bsd_signal as *const () as usize,
        sysv_signal as *const () as usize,
        sigsuspend as *const () as usize,
        ppoll as *const () as usize,
        pselect as *const () as usize,
        epoll_pwait as *const () as usize,
        epoll_pwait2 as *const () as usize,
        swapcontext as *const () as usize,
        setcontext as *const () as usize,
        &raw const RESOLVE_AT_LOAD as usize,
    ];
    std::hint::black_box(fns);
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
mod tests {
    use super::*;

    #[test]
    fn the_interposed_mask_functions_never_block_sigtrap() {
        // SAFETY: sigset operations on locals; pthread_sigmask (ours) with
        // valid pointers, restored at the end.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            let mut now: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            assert_eq!(pthread_sigmask(libc::SIG_BLOCK, &all, &mut old), 0);
            assert_eq!(pthread_sigmask(libc::SIG_SETMASK, ptr::null(), &mut now), 0);
            assert_eq!(libc::sigismember(&now, libc::SIGTRAP), 0);
            assert_eq!(libc::sigismember(&now, world::signal()), 0);
            assert_eq!(libc::sigismember(&now, libc::SIGUSR1), 1);
            assert_eq!(sigprocmask(libc::SIG_SETMASK, &all, ptr::null_mut()), 0);
            let bits = world::proc::blocked_signals(world::proc::gettid()).unwrap();
            assert_eq!(bits & (1 << (libc::SIGTRAP - 1)), 0);
            assert_eq!(bits & (1 << (world::signal() - 1)), 0);
            assert_ne!(bits & (1 << (libc::SIGUSR1 - 1)), 0);
            assert_eq!(pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()), 0);
        }
    }
}
