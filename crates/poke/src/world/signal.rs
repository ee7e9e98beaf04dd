//! The world signal: the one real-time signal livetrace sends its own
//! threads, to probe them (the quiescence wait) or to hold them (stopping
//! the world). `SIGRTMAX - 2` unless chosen with [`set_signal`].
//!
//! A real-time signal, never SIGTRAP: standard signals do not queue, so a
//! probe pending when a thread executes an `int3` would make the kernel
//! drop that trap's SIGTRAP and the thread would run on from the byte after
//! the `int3`. Real-time signals queue; a trap is never merged with a probe.
//!
//! Every request travels with `rt_tgsigqueueinfo` as `SI_QUEUE` from our own
//! pid with a token; the handler hands the delivery to the request the
//! token names, ignores stale tokens of ours, and passes anything else —
//! the program's own use of the same signal number — to the program's
//! handler for it. So a program that uses this signal too keeps working:
//! its handler is kept as the program's (the `sigaction` interposer in
//! [`crate::signals`] records what the program installs instead of
//! replacing ours), and it receives exactly its own deliveries.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

use crate::signals::{real_sigaction, ProgramAction};
use crate::world::{probe, stop};

/// The signal chosen; 0 until first use.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Our handler is installed on [`SIGNAL`].
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Held while installing (a spin lock a fork child can reset: a `Mutex`
/// held by a parent thread at the fork would stay held in the child).
static INSTALLING: AtomicBool = AtomicBool::new(false);

struct Installing;

impl Installing {
    fn lock() -> Installing {
        while INSTALLING
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_err()
        {
            std::thread::yield_now();
        }
        Installing
    }
}

impl Drop for Installing {
    fn drop(&mut self) {
        INSTALLING.store(false, SeqCst);
    }
}

/// In a fork child: no install is under way.
pub(crate) fn forget_in_child() {
    INSTALLING.store(false, SeqCst);
}
/// The program's own disposition of the world signal.
pub(crate) static PROGRAM: ProgramAction = ProgramAction::new();

/// The world signal: `SIGRTMAX - 2` unless [`set_signal`] chose another.
pub fn signal() -> libc::c_int {
    match SIGNAL.load(SeqCst) {
        0 => libc::SIGRTMAX() - 2,
        s => s,
    }
}

/// Chooses the real-time signal livetrace probes and stops threads with.
/// Only before the first probe, stop or batch; a program that uses
/// `SIGRTMAX - 2` itself does not need this (its handler keeps receiving
/// its own deliveries), but may prefer to keep the numbers apart.
pub fn set_signal(sig: libc::c_int) -> Result<(), crate::Error> {
    if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return Err(crate::Error::Io(std::io::Error::other(format!(
            "signal {sig} is not a real-time signal ({}..={})",
            libc::SIGRTMIN(),
            libc::SIGRTMAX()
        ))));
    }
    let _g = Installing::lock();
    if INSTALLED.load(SeqCst) && sig != signal() {
        return Err(crate::Error::Io(std::io::Error::other(format!(
            "livetrace's world signal is already installed on signal {}",
            signal()
        ))));
    }
    SIGNAL.store(sig, SeqCst);
    Ok(())
}

/// Whether our handler is on the world signal (the interposer then keeps
/// the program's dispositions of it apart).
pub(crate) fn installed() -> bool {
    INSTALLED.load(SeqCst)
}

/// Installs the handler once; what was there becomes the program's.
pub(crate) fn install() -> Result<libc::c_int, crate::Error> {
    if INSTALLED.load(SeqCst) {
        return Ok(signal());
    }
    let _g = Installing::lock();
    let sig = signal();
    if INSTALLED.load(SeqCst) {
        return Ok(sig);
    }
    SIGNAL.store(sig, SeqCst);
    let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: queries the disposition only.
    if unsafe { real_sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
        return Err(crate::Error::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: filled by sigaction.
    PROGRAM.set(unsafe { cur.assume_init() });
    let mut sa = MaybeUninit::<libc::sigaction>::zeroed();
    let p = sa.as_mut_ptr();
    // SAFETY: fills a zeroed sigaction and installs a valid SA_SIGINFO
    // handler. The mask is empty: a probe is answered in a few hundred
    // instructions, and a stop blocks what it needs itself.
    unsafe {
        (*p).sa_sigaction = on_signal as *const () as usize;
        (*p).sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut (*p).sa_mask);
        if real_sigaction(sig, p, std::ptr::null_mut()) != 0 {
            return Err(crate::Error::Io(std::io::Error::last_os_error()));
        }
    }
    INSTALLED.store(true, SeqCst);
    Ok(sig)
}

/// Sends thread `tid` the world signal with `token`. False when the thread
/// is gone.
pub(crate) fn send(tid: i32, token: usize) -> bool {
    let sig = signal();
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: a zeroed siginfo is filled with the fields rt_tgsigqueueinfo
    // reads for SI_QUEUE: signo, code, pid, uid and the value (the value
    // sits after pid and uid in the kernel's layout:
    // struct { int signo, errno, code; int pad; pid_t pid; uid_t uid; sigval value; }).
    unsafe {
        let p = info.as_mut_ptr();
        (*p).si_signo = sig;
        (*p).si_code = libc::SI_QUEUE;
        let base = p as *mut u8;
        *(base.add(16) as *mut i32) = libc::getpid();
        *(base.add(20) as *mut u32) = libc::getuid();
        *(base.add(24) as *mut usize) = token;
        libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), tid, sig, p) == 0
    }
}

/// Tokens of ours carry this tag in their low bits (requests are 16-byte
/// aligned), so a late delivery of a finished request is recognised and
/// dropped rather than passed to the program.
pub(crate) const TOKEN_TAG: usize = 0xa;

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: errno is thread-local; a handler that makes system calls
    // saves and restores it.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // for SI_QUEUE the sigqueue fields are filled.
    let (code, pid, token) = unsafe {
        (
            (*info).si_code,
            (*info).si_pid(),
            (*info).si_value().sival_ptr as usize,
        )
    };
    // SAFETY: as above (getpid is async-signal-safe).
    let ours =
        code == libc::SI_QUEUE && pid == unsafe { libc::getpid() } && token & 0xf == TOKEN_TAG;
    if ours {
        let ctx = uc as *mut libc::ucontext_t;
        if !probe::answer(token, ctx) {
            stop::hold(token, ctx);
        }
        // A stale token of ours: dropped.
    } else {
        // SAFETY: the kernel's own arguments, passed on to the program's
        // handler for this signal.
        unsafe { PROGRAM.deliver(sig, info, uc) };
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}
