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
//!    program's ([`ProgramAction`]) and ours stays: the program's handler
//!    then receives exactly the deliveries that are not ours, and
//!    `sigaction` reports the program's own disposition back to it (so a
//!    handler that chains to its "previous" one never chains to ours).
//!    The definitions bind the program's own calls at link time (a Rust
//!    program linking livetrace) or every object's calls through the
//!    loader's search order (`liblivetrace.so` preloaded or injected).
//! 2. **Checking before every batch** ([`check_threads`]), for what
//!    interposition cannot see (raw system calls, C libraries in a Rust
//!    program, masks set before livetrace was loaded): every thread's
//!    blocked set is read from `/proc/self/task/TID/status`; a thread that
//!    blocks a protected signal is given it back through a probe whose
//!    handler edits the mask its signal frame will restore; a thread that
//!    blocks the world signal as well cannot be reached, and the batch is
//!    refused before anything is written, naming the thread. Dispositions
//!    installed before us are cleaned the same way once ([`sanitize`]).
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

/// Blocks every signal on the calling thread until the guard is dropped.
pub(crate) struct AllBlocked(libc::sigset_t);

impl AllBlocked {
    pub(crate) fn new() -> AllBlocked {
        // SAFETY: zeroed sigsets are valid; sigfillset fills one.
        let (mut all, mut old) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: a valid local set.
        unsafe { libc::sigfillset(&mut all) };
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
// The program's view of a protected signal's disposition.

/// Words of a `sigaction`, copied as atomics so that a reader racing a
/// writer is never undefined behaviour (a torn copy is detected by the
/// generation and retried).
const WORDS: usize = std::mem::size_of::<libc::sigaction>().div_ceil(8);

struct Slot {
    gen: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// A disposition the program set for a signal whose real disposition is
/// ours: read from signal handlers (to pass foreign deliveries on), written
/// by the interposed `sigaction` and by the check that notices a handler
/// installed behind our back.
///
/// Two slots and an index; a writer fills the slot not in use and flips
/// the index, with the slot's generation odd while it writes; a reader
/// copies the indexed slot and retries if the generation moved. Nobody
/// ever waits for a reader, so a handler interrupted mid-copy by a signal
/// whose handler calls `sigaction` cannot deadlock. Writers are serialised
/// by a spin lock taken with every signal blocked.
pub(crate) struct ProgramAction {
    slots: [Slot; 2],
    /// Index of the slot in use; `usize::MAX` when the program has none
    /// recorded (then the default action applies).
    index: AtomicUsize,
    writer: AtomicBool,
    /// The disposition before the current one, when the current one was
    /// found installed behind our back: it may chain to its own previous
    /// disposition, which was ours, and must then get this one.
    outer: UnsafeCell<Option<libc::sigaction>>,
    /// Set once an `SA_RESETHAND` disposition has been delivered to.
    reset: AtomicBool,
}

// SAFETY: every field is atomic except `outer`, which is only accessed by
// writers under `writer` and by readers through `outer_copy`, itself only
// called with the writer lock held (see `deliver`).
unsafe impl Sync for ProgramAction {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    gen: AtomicU64::new(0),
    words: [const { AtomicU64::new(0) }; WORDS],
};

impl ProgramAction {
    pub(crate) const fn new() -> ProgramAction {
        ProgramAction {
            slots: [EMPTY_SLOT, EMPTY_SLOT],
            index: AtomicUsize::new(usize::MAX),
            writer: AtomicBool::new(false),
            outer: UnsafeCell::new(None),
            reset: AtomicBool::new(false),
        }
    }

    /// In a fork child: a parent thread may have been writing.
    fn forget_writer(&self) {
        self.writer.store(false, SeqCst);
    }

    fn lock(&self) -> AllBlocked {
        let blocked = AllBlocked::new();
        while self
            .writer
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_err()
        {
            std::hint::spin_loop();
        }
        blocked
    }

    fn unlock(&self) {
        self.writer.store(false, SeqCst);
    }

    /// Records `act` as the program's disposition; returns the previous one.
    pub(crate) fn set(&self, act: libc::sigaction) -> Option<libc::sigaction> {
        let _blocked = self.lock();
        let old = self.get();
        self.store(act);
        self.unlock();
        old
    }

    /// [`Self::set`] for a handler found installed behind our back: the one
    /// it replaced is kept as its "outer" disposition.
    pub(crate) fn replace_found(&self, act: libc::sigaction) {
        let _blocked = self.lock();
        let old = self.get();
        // SAFETY: written under the writer lock.
        unsafe { *self.outer.get() = old };
        self.store(act);
        self.unlock();
    }

    fn store(&self, act: libc::sigaction) {
        let cur = self.index.load(SeqCst);
        let spare = if cur == 0 { 1 } else { 0 };
        let slot = &self.slots[spare];
        let mut words = [0u64; WORDS];
        // SAFETY: copies the sigaction's bytes into a buffer at least as
        // large.
        unsafe {
            ptr::copy_nonoverlapping(
                &act as *const libc::sigaction as *const u8,
                words.as_mut_ptr() as *mut u8,
                std::mem::size_of::<libc::sigaction>(),
            )
        };
        slot.gen.fetch_add(1, SeqCst);
        for (w, v) in slot.words.iter().zip(words) {
            w.store(v, SeqCst);
        }
        slot.gen.fetch_add(1, SeqCst);
        self.reset.store(false, SeqCst);
        self.index.store(spare, SeqCst);
    }

    /// The program's disposition, if it has one recorded.
    pub(crate) fn get(&self) -> Option<libc::sigaction> {
        loop {
            let i = self.index.load(SeqCst);
            let slot = self.slots.get(i)?;
            let g1 = slot.gen.load(SeqCst);
            if g1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut words = [0u64; WORDS];
            for (v, w) in words.iter_mut().zip(&slot.words) {
                *v = w.load(SeqCst);
            }
            if slot.gen.load(SeqCst) != g1 || self.index.load(SeqCst) != i {
                continue;
            }
            let mut act = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: the words were copied from a whole sigaction.
            unsafe {
                ptr::copy_nonoverlapping(
                    words.as_ptr() as *const u8,
                    act.as_mut_ptr() as *mut u8,
                    std::mem::size_of::<libc::sigaction>(),
                );
                return Some(act.assume_init());
            }
        }
    }

    fn outer_copy(&self) -> Option<libc::sigaction> {
        let _blocked = self.lock();
        // SAFETY: read under the writer lock.
        let o = unsafe { *self.outer.get() };
        self.unlock();
        o
    }

    /// Delivers a signal that is not ours the way it would have been
    /// delivered had we never been installed: to the program's handler,
    /// under the mask the kernel would have given it, or with the default
    /// action.
    ///
    /// # Safety
    /// `info` and `uc` are the kernel's arguments to the running handler.
    pub(crate) unsafe fn deliver(
        &self,
        sig: c_int,
        info: *mut libc::siginfo_t,
        uc: *mut libc::c_void,
    ) {
        // A program handler installed behind our back that chains to what
        // it replaced (us) re-enters here with the same context: give it
        // the disposition before it instead of itself again.
        let reentered = Delivering::contains(uc as usize);
        let act = if reentered {
            self.outer_copy()
        } else {
            self.get()
        };
        let _mark = Delivering::enter(uc as usize);
        // SAFETY: the caller's arguments.
        unsafe { deliver_to(sig, info, uc, act, &self.reset) };
    }
}

/// In a fork child, nothing is being written or delivered any more.
pub(crate) fn forget_in_child() {
    crate::trap::PROGRAM.forget_writer();
    world::signal::PROGRAM.forget_writer();
    for s in &DELIVERING {
        s.store(0, SeqCst);
    }
}

/// Contexts whose delivery to a program handler is under way (any thread):
/// a re-entry with one of them is that handler chaining back to us.
struct Delivering;

static DELIVERING: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

impl Delivering {
    fn contains(uc: usize) -> bool {
        DELIVERING.iter().any(|s| s.load(SeqCst) == uc)
    }

    fn enter(uc: usize) -> DeliveringGuard {
        for (i, s) in DELIVERING.iter().enumerate() {
            if s.compare_exchange(0, uc, SeqCst, SeqCst).is_ok() {
                return DeliveringGuard(Some(i));
            }
        }
        DeliveringGuard(None)
    }
}

struct DeliveringGuard(Option<usize>);

impl Drop for DeliveringGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            DELIVERING[i].store(0, SeqCst);
        }
    }
}

/// # Safety
/// `info` and `uc` are the kernel's arguments to the running handler.
unsafe fn deliver_to(
    sig: c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
    act: Option<libc::sigaction>,
    reset: &AtomicBool,
) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    let handler = act.map_or(libc::SIG_DFL, |a| a.sa_sigaction);
    let oneshot = act.is_some_and(|a| a.sa_flags & libc::SA_RESETHAND != 0);
    let spent = oneshot && reset.swap(true, SeqCst);
    if handler == libc::SIG_IGN && !(sig == libc::SIGTRAP && code == libc::SI_KERNEL) {
        return;
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN || spent {
        default_action(sig);
        return;
    }
    let Some(act) = act else { return };
    // The mask the kernel would have given the handler: the interrupted
    // code's, its sa_mask added, the signal itself unless SA_NODEFER; the
    // protected signals stay deliverable (its code may run sites).
    let mut old = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `uc` is the kernel's ucontext; sigset operations on local
    // sets.
    unsafe {
        let mut mask = (*(uc as *const libc::ucontext_t)).uc_sigmask;
        for s in 1..=libc::SIGRTMAX() {
            if libc::sigismember(&act.sa_mask, s) == 1 {
                libc::sigaddset(&mut mask, s);
            }
        }
        if act.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
        strip(&mut mask);
        raw_setmask(&mask, &mut *old.as_mut_ptr());
    }
    if act.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO the program registered a three-argument
        // handler at this address.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, uc);
    } else {
        // SAFETY: without SA_SIGINFO the program registered a one-argument
        // handler at this address.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
    // SAFETY: restores the mask saved above.
    unsafe {
        let mut scratch = std::mem::zeroed();
        raw_setmask(&*old.as_ptr(), &mut scratch);
    }
}

/// The default action of `sig`, as if no handler had ever been installed:
/// put SIG_DFL back and send the signal to this thread again with it
/// unblocked (for SIGTRAP and real-time signals: the process terminates).
fn default_action(sig: c_int) {
    let mut dfl = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty
    // mask; sigaction, sigprocmask, gettid and tgkill are async-signal-safe.
    unsafe {
        (*dfl.as_mut_ptr()).sa_sigaction = libc::SIG_DFL;
        real_sigaction(sig, dfl.as_ptr(), ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigaddset(&mut set, sig);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_UNBLOCK,
            &set,
            ptr::null_mut::<libc::sigset_t>(),
            8usize,
        );
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            sig,
        );
    }
}

/// The program's disposition for a protected signal whose real
/// disposition is ours, if it is; `None` otherwise.
fn program_action(sig: c_int) -> Option<&'static ProgramAction> {
    if sig == libc::SIGTRAP && crate::trap::installed() {
        Some(&crate::trap::PROGRAM)
    } else if sig == world::signal() && world::signal::installed() {
        Some(&world::signal::PROGRAM)
    } else {
        None
    }
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

// ---------------------------------------------------------------------------
// The check before a batch.

/// A thread livetrace cannot safely patch under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedThread {
    /// The thread.
    pub tid: i32,
    /// Its name (`comm`).
    pub name: String,
    /// The protected signals it blocks.
    pub signals: Vec<c_int>,
    /// What `/proc` showed of it (scheduler state, system call).
    pub state: String,
}

impl std::fmt::Display for BlockedThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "thread {} ({}) blocks signal(s) {:?}",
            self.tid, self.name, self.signals
        )?;
        if self.signals.contains(&world::signal()) {
            write!(
                f,
                " including livetrace's world signal, so it cannot be given SIGTRAP back \
                 (it blocked them with a raw system call, or before livetrace was loaded)"
            )?;
        }
        if !self.state.is_empty() {
            write!(f, " [{}]", self.state)?;
        }
        Ok(())
    }
}

static REPAIRED: AtomicU32 = AtomicU32::new(0);

/// Threads given a protected signal back by [`check_threads`], for tests.
pub fn masks_repaired() -> u32 {
    REPAIRED.load(SeqCst)
}

/// glibc's mask for a thread whose start routine has returned: every
/// signal but SIGSETXID (33) blocked with a raw `rt_sigprocmask` in
/// `start_thread`, so that no program code (a handler) runs on a thread
/// that is about to exit (glibc bugs 12889 and 28361). Such a thread never
/// reaches a site again — its TLS destructors have run — but under load it
/// can take a while to be gone (it frees its stack with `madvise` first).
fn exiting_mask(m: u64) -> bool {
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    let setxid = 1u64 << (33 - 1);
    m & setxid == 0 && (m | unblockable | setxid) == u64::MAX
}

/// glibc's mask around the creation of a thread (`pthread_create` blocks
/// every signal, SIGCANCEL and SIGSETXID included, with a raw
/// `rt_sigprocmask`, and the new thread starts with it until
/// `start_thread` restores the creator's mask) and around `raise`. No
/// mask the program sets through glibc looks like it (glibc never lets
/// SIGCANCEL and SIGSETXID be blocked), and it is transient, but it can
/// last: a new thread waits for a CPU on a busy machine, and a debugger or
/// `livetrace attach` keeps a thread it reported stopped while it holds
/// the process. Such a thread is waited for longer ([`CREATION_WAIT`]).
fn creation_mask(m: u64) -> bool {
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    m | unblockable == u64::MAX
}

/// How long [`check_threads`] waits for a thread with glibc's creation
/// mask ([`creation_mask`]) to be done with it.
const CREATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Before a batch: every thread must take SIGTRAP. A thread found blocking
/// a protected signal is re-read for a short while (glibc blocks every
/// signal for a few instructions in `pthread_create`, `raise` and thread
/// exit; longer while the mask is glibc's creation mask, see
/// [`creation_mask`]), then given it back through a probe if the world
/// signal reaches it; otherwise the batch is refused naming it, unless its
/// mask is glibc's for a thread on its way out ([`exiting_mask`]).
pub(crate) fn check_threads() -> Result<(), crate::Error> {
    let me = world::proc::gettid();
    let trap = 1u64 << (libc::SIGTRAP - 1);
    let wsig = 1u64 << (world::signal() - 1);
    let tids = world::threads().map_err(crate::Error::Io)?;
    let mut stuck = Vec::new();
    for tid in tids {
        if tid == me {
            continue;
        }
        let mut ok = false;
        let start = std::time::Instant::now();
        let mut creating = false;
        for attempt in 0u32.. {
            if attempt >= 20 && !(creating && start.elapsed() < CREATION_WAIT) {
                break;
            }
            let blocked = world::proc::blocked_signals(tid);
            creating = blocked.is_some_and(creation_mask);
            match blocked {
                // Gone, or SIGTRAP deliverable (a thread that blocks only
                // the world signal can be patched under; the quiescence
                // wait reports it if it ever needs to probe it).
                None => {
                    ok = true;
                    break;
                }
                Some(m) if m & trap == 0 => {
                    ok = true;
                    break;
                }
                Some(m) if m & wsig == 0 && attempt >= 2 => {
                    // The world signal reaches it: give SIGTRAP back.
                    if world::probe::unblock(tid) {
                        REPAIRED.fetch_add(1, SeqCst);
                    }
                }
                Some(_) => {}
            }
            std::thread::sleep(std::time::Duration::from_micros(50 << attempt.min(6)));
        }
        if !ok {
            let still = world::proc::blocked_signals(tid).filter(|m| m & trap != 0);
            if let Some(m) = still.filter(|&m| !exiting_mask(m)) {
                let mut name = [0u8; 32];
                let n = world::proc::read_task_file(tid, b"comm", &mut name);
                let name =
                    String::from_utf8_lossy(name[..n].strip_suffix(b"\n").unwrap_or(&name[..n]))
                        .into_owned();
                let signals = [libc::SIGTRAP, world::signal()]
                    .into_iter()
                    .filter(|&s| m & (1 << (s - 1)) != 0)
                    .collect();
                let mut sys = [0u8; 128];
                let n = world::proc::read_task_file(tid, b"syscall", &mut sys);
                let state = format!(
                    "state {}, syscall {}",
                    world::proc::state(tid).map_or('?', char::from),
                    String::from_utf8_lossy(sys[..n].strip_suffix(b"\n").unwrap_or(&sys[..n]))
                );
                stuck.push(BlockedThread {
                    tid,
                    name,
                    signals,
                    state,
                });
            }
        }
    }
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::SignalsBlocked(stuck))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_glibcs_creation_mask_is_waited_for_longer() {
        let kernel_all: u64 = !((1 << 8) | (1 << 18));
        assert!(creation_mask(kernel_all));
        assert!(creation_mask(u64::MAX));
        // What a program blocking "everything" through glibc gets.
        assert!(!creation_mask(kernel_all & !(1 << 31) & !(1 << 32)));
        // glibc's exit mask.
        assert!(!creation_mask(kernel_all & !(1 << 32)));
    }

    #[test]
    fn only_glibcs_exit_mask_counts_as_exiting() {
        let all: u64 = !((1 << 8) | (1 << 18));
        assert!(exiting_mask(all & !(1 << 32)));
        // Every signal, SIGSETXID included: not glibc's exit.
        assert!(!exiting_mask(all));
        // A program's mask that leaves some signal deliverable.
        assert!(!exiting_mask(all & !(1 << 32) & !(1 << 1)));
        assert!(!exiting_mask(1 << 4));
    }

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
