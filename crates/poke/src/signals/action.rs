//! The program's view of a protected signal's disposition: what it
//! installed for SIGTRAP or the world signal is kept here and reported
//! back by `sigaction`, and foreign deliveries are chained to it.

use super::*;

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
pub(super) fn default_action(sig: c_int) {
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
pub(super) fn program_action(sig: c_int) -> Option<&'static ProgramAction> {
    if sig == libc::SIGTRAP && crate::trap::installed() {
        Some(&crate::trap::PROGRAM)
    } else if sig == world::signal() && world::signal::installed() {
        Some(&world::signal::PROGRAM)
    } else {
        None
    }
}
