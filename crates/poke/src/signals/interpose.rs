//! The interposers of the functions that change the thread mask and the
//! dispositions (`pthread_sigmask`, `sigprocmask`, `sigaction`, `signal`
//! and its variants, `sigsuspend`), and what keeps every interposer linked
//! into a program that patches.

use super::waits::RESOLVE_AT_LOAD;
use super::*;

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
