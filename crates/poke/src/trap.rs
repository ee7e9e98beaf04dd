//! The one SIGTRAP handler that serves every site of every batch.
//!
//! # What the handler decides
//!
//! A thread that executes a site while a batch has parked `int3` on its first
//! byte traps with RIP = site + 1. The handler looks `site` up in the active
//! batch (sorted, binary search) and, if found, *emulates the new instruction
//! of that entry*: exactly what is being written, nothing else (this is the
//! point Linus makes in the LKML thread: the five bytes being written have
//! exactly one meaning, so emulate that). For a call it pushes `site + 5` on
//! the interrupted stack and sets RIP to the target; for a jmp it sets RIP to
//! the target; for a NOP it sets RIP to `site + 5`.
//!
//! User space has one case the kernel does not: a thread can trap during a
//! batch and only reach its handler after that batch is over (the signal is
//! delivered when the thread next returns to user mode, which may be after
//! it was descheduled). Then the site is in no active batch and its first
//! byte is no longer `int3`; the handler sets RIP back to the site so the
//! final instruction runs. To be sure such a trap is ours and not, say, a
//! two-byte `int 3` of the program's, the site must be one the engine has
//! ever patched (the *known* set).
//!
//! A relocated function's site has a third state, between batches: the
//! *parked* `int3` of prologue relocation (see [`crate::relocation`]). Its
//! first byte holds `int3` over the function's original bytes, which are
//! several instructions, not one, so there is no instruction to emulate:
//! the handler finds the site in the [`PARKED`] set and sends the thread to
//! the site's detour, which runs the relocated copy of those instructions
//! and jumps back. The parked set is consulted after the active batch (a
//! relocation batch's entries emulate the same jump to the detour) and
//! before the byte is read, under the same `SEQ` check, so a trap is never
//! taken for a foreign breakpoint because the set changed under it: a site
//! is parked before the batch that writes its `int3` is published, and
//! unparked only after the batch that replaced its `int3` is unpublished.
//! A trap delivered after its site was unparked finds the jump (or the
//! original first byte) in place, and re-executes it like any late trap.
//!
//! Anything else is not ours: it is passed to the handler the program had
//! installed before us, honouring its flags, or gets the default action.
//!
//! # Publication and lifetime
//!
//! The batch being applied is published in [`ACTIVE`], and the parked
//! sites in [`PARKED`], with [`SEQ`] bumped on every publish and unpublish
//! of either. A handler counts itself in [`IN_FLIGHT`]
//! before it loads any pointer, and the patcher, after unpublishing, waits
//! for `IN_FLIGHT` to reach zero before it frees or reuses anything a handler
//! may read (the batch, an old known set, a chained-handler slot). Both sides
//! use sequentially consistent operations, so either the handler sees the
//! unpublished state or the patcher sees the handler in flight (the
//! store-buffering pattern). The kernel does the same with a refcount on its
//! `bp_desc` (`try_get_desc` / `atomic_cond_read_acquire`).
//!
//! The handler reads the site's byte between two loads of `SEQ` and retries
//! if a batch was published or unpublished in between; otherwise it could
//! read an `int3` written by a batch that began after it found no batch, and
//! take it for a foreign breakpoint.
//!
//! # Async-signal safety
//!
//! The handler allocates nothing, takes no lock, cannot panic (no indexing,
//! no arithmetic that can overflow in debug builds, no formatting), and
//! preserves `errno`.

use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

use crate::insn::INT3;
use crate::signals::real_sigaction;

/// How a handler emulates an entry's new instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Emulate {
    Nop = 0,
    Call = 1,
    Jmp = 2,
}

/// One site of the active batch, as the handler sees it.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Entry {
    pub site: usize,
    pub target: usize,
    pub emulate: Emulate,
    pub old: [u8; 5],
    pub new: [u8; 5],
}

/// A parked site: its first byte is the `int3` of a relocation under way,
/// over original bytes; a thread trapping there goes to `detour`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Parked {
    pub site: usize,
    pub detour: usize,
}

/// A sorted slice published to handlers: the active batch, the parked
/// sites or the known set.
#[repr(C)]
pub(crate) struct Published<T> {
    pub ptr: *const T,
    pub len: usize,
}

impl<T> Published<T> {
    /// # Safety
    /// `self.ptr` must point to `self.len` initialised `T`s that stay alive
    /// for the returned lifetime.
    unsafe fn as_slice<'a>(&self) -> &'a [T] {
        if self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// The batch being applied, or null.
pub(crate) static ACTIVE: AtomicPtr<Published<Entry>> = AtomicPtr::new(ptr::null_mut());
/// Bumped on every change of `ACTIVE`.
pub(crate) static SEQ: AtomicU64 = AtomicU64::new(0);
/// Handlers between their first and last load of published state.
pub(crate) static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Every site any batch has ever contained, sorted; or null.
pub(crate) static KNOWN: AtomicPtr<Published<usize>> = AtomicPtr::new(ptr::null_mut());
/// The parked sites, sorted; or null. Replaced only under the batch lock,
/// with `SEQ` bumped; a replaced array is freed after a [`drain`].
pub(crate) static PARKED: AtomicPtr<Published<Parked>> = AtomicPtr::new(ptr::null_mut());

static EMULATED: AtomicU64 = AtomicU64::new(0);
static REEXECUTED: AtomicU64 = AtomicU64::new(0);
static CHAINED: AtomicU64 = AtomicU64::new(0);
static REDIRECTED: AtomicU64 = AtomicU64::new(0);

/// Counts of what the SIGTRAP handler did, since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapStats {
    /// Traps on a site of the active batch, answered by emulating the
    /// instruction being written.
    pub emulated: u64,
    /// Traps whose batch had ended before the handler ran; the site's final
    /// instruction was re-executed.
    pub reexecuted: u64,
    /// Traps that were not ours, passed to the program's handler or the
    /// default action.
    pub chained: u64,
    /// Traps on a parked site of a prologue relocation between its batches,
    /// sent to the detour.
    pub redirected: u64,
}

/// What the SIGTRAP handler has done so far in this process.
pub fn trap_stats() -> TrapStats {
    TrapStats {
        emulated: EMULATED.load(Relaxed),
        reexecuted: REEXECUTED.load(Relaxed),
        chained: CHAINED.load(Relaxed),
        redirected: REDIRECTED.load(Relaxed),
    }
}

/// Waits until no handler can still be reading state unpublished before the
/// call. Spins briefly, then yields: a handler in flight is a few hundred
/// instructions, but its thread may have been preempted.
pub(crate) fn drain() {
    let mut spins = 0u32;
    while IN_FLIGHT.load(SeqCst) != 0 {
        if spins < 100 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

// ---------------------------------------------------------------------------
// The program's own SIGTRAP disposition.

/// What the program set for SIGTRAP: where traps that are not ours go.
/// Recorded when we install our handler (whatever was there), by the
/// interposed `sigaction`/`signal` afterwards, and by the check before
/// every batch when a handler was installed behind our back (a raw system
/// call). See [`crate::signals`].
pub(crate) static PROGRAM: crate::signals::ProgramAction = crate::signals::ProgramAction::new();
/// Our handler has been installed at least once.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether our handler is (meant to be) SIGTRAP's disposition.
pub(crate) fn installed() -> bool {
    INSTALLED.load(SeqCst)
}

/// A fork child has one thread, the one that called fork, and it is not in
/// a handler; but other threads of the parent may have been (a trap
/// delivered after its batch), and their counts were copied. Left as they
/// are, the child's first batch would wait for them forever.
pub(crate) fn forget_in_flight() {
    IN_FLIGHT.store(0, SeqCst);
}

fn our_handler() -> usize {
    on_sigtrap as *const () as usize
}

/// Installs our handler if it is not the current SIGTRAP disposition. What
/// was there becomes the program's disposition, to chain to: the first
/// time, whatever the program had; later, a handler installed behind our
/// back (the interposed `sigaction` never replaces ours), which may chain
/// to its own previous disposition — ours — and then gets the one before
/// it. Called under the batch lock, before every batch.
pub(crate) fn ensure_installed() -> std::io::Result<bool> {
    crate::lock::register_atfork();
    let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: querying the disposition with a null new action changes
    // nothing; `cur` is valid for writes.
    let rc = unsafe { real_sigaction(libc::SIGTRAP, ptr::null(), cur.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sigaction succeeded and filled `cur`.
    let cur = unsafe { cur.assume_init() };
    if cur.sa_sigaction == our_handler() {
        return Ok(false);
    }
    if INSTALLED.load(SeqCst) {
        PROGRAM.replace_found(cur);
    } else {
        PROGRAM.set(cur);
    }

    let mut ours = MaybeUninit::<libc::sigaction>::zeroed();
    let p = ours.as_mut_ptr();
    // SAFETY: `ours` is a zeroed sigaction being filled in field by field;
    // all-zero is a valid value for every field.
    let ours = unsafe {
        (*p).sa_sigaction = our_handler();
        // SA_ONSTACK follows the program's choice, so a handler it expects
        // on its alternate stack still runs there when we chain.
        // SA_NODEFER: SIGTRAP stays deliverable inside the handler, so no
        // thread ever has it blocked because of us (see `signals`).
        (*p).sa_flags = libc::SA_SIGINFO
            | libc::SA_RESTART
            | libc::SA_NODEFER
            | (cur.sa_flags & libc::SA_ONSTACK);
        // Every other asynchronous signal waits until we are done: a
        // handler that ran on top of ours for long would hold up the
        // batch, which drains the handlers in flight. Faults stay
        // deliverable, to the program's own handlers, and the world signal
        // (its probe is answered in a moment).
        libc::sigfillset(&mut (*p).sa_mask);
        for keep in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            crate::world::signal(),
        ] {
            libc::sigdelset(&mut (*p).sa_mask, keep);
        }
        ours.assume_init()
    };
    // SAFETY: installs a valid handler for SIGTRAP.
    let rc = unsafe { real_sigaction(libc::SIGTRAP, &ours, ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    INSTALLED.store(true, SeqCst);
    Ok(true)
}

/// The interrupted instruction pointer and stack pointer.
struct Regs {
    gregs: *mut libc::greg_t,
}

impl Regs {
    fn rip(&self) -> usize {
        // SAFETY: `gregs` points at the ucontext's NGREG registers, and
        // REG_RIP < NGREG.
        unsafe { *self.gregs.add(libc::REG_RIP as usize) as usize }
    }
    fn set_rip(&self, v: usize) {
        // SAFETY: as in `rip`; the kernel restores RIP from here on return.
        unsafe { *self.gregs.add(libc::REG_RIP as usize) = v as libc::greg_t }
    }
    fn rsp(&self) -> usize {
        // SAFETY: as in `rip`.
        unsafe { *self.gregs.add(libc::REG_RSP as usize) as usize }
    }
    fn set_rsp(&self, v: usize) {
        // SAFETY: as in `rip`.
        unsafe { *self.gregs.add(libc::REG_RSP as usize) = v as libc::greg_t }
    }
}

fn find_entry(entries: &[Entry], site: usize) -> Option<&Entry> {
    entries
        .binary_search_by(|e| e.site.cmp(&site))
        .ok()
        .and_then(|i| entries.get(i))
}

/// Emulates `e`'s new instruction for a thread stopped at `e.site + 1`.
fn emulate(regs: &Regs, e: &Entry) {
    let next = e.site.wrapping_add(5);
    match e.emulate {
        Emulate::Nop => regs.set_rip(next),
        Emulate::Jmp => regs.set_rip(e.target),
        Emulate::Call => {
            let sp = regs.rsp().wrapping_sub(8);
            // The kernel built our signal frame below the 128-byte red zone
            // (or on the alternate stack).
            // SAFETY: at a site's first instruction, rsp-8 is free, mapped
            // stack: exactly where the call being emulated would push.
            unsafe { ptr::write(sp as *mut usize, next) };
            regs.set_rsp(sp);
            regs.set_rip(e.target);
        }
    }
}

/// What a handler found, decided while counted in flight.
enum Verdict {
    Emulated,
    Redirected,
    Reexecute,
    Foreign,
}

fn find_parked(parked: &[Parked], site: usize) -> Option<&Parked> {
    parked
        .binary_search_by(|p| p.site.cmp(&site))
        .ok()
        .and_then(|i| parked.get(i))
}

fn decide(regs: &Regs, site: usize) -> Verdict {
    IN_FLIGHT.fetch_add(1, SeqCst);
    let byte = loop {
        let seq = SEQ.load(SeqCst);
        let active = ACTIVE.load(SeqCst);
        if !active.is_null() {
            // SAFETY: a published batch stays alive until the patcher has
            // unpublished it and seen IN_FLIGHT at zero; we are counted.
            let entries = unsafe { (*active).as_slice() };
            if let Some(e) = find_entry(entries, site) {
                emulate(regs, e);
                IN_FLIGHT.fetch_sub(1, SeqCst);
                return Verdict::Emulated;
            }
        }
        let parked = PARKED.load(SeqCst);
        if !parked.is_null() {
            // SAFETY: as for ACTIVE: a replaced parked set is freed only
            // after a drain, and we are counted.
            let list = unsafe { (*parked).as_slice() };
            if let Some(p) = find_parked(list, site) {
                // The detour runs the relocated copy of the instructions
                // the int3 sits on, then jumps back past them. RIP is set
                // before we stop being counted: whoever frees the detour
                // drains first, then finds the thread's saved RIP in it.
                regs.set_rip(p.detour);
                IN_FLIGHT.fetch_sub(1, SeqCst);
                return Verdict::Redirected;
            }
        }
        fence(SeqCst);
        // SAFETY: the thread just executed an int3 at `site`, so the byte is
        // mapped text (a library cannot be unmapped under a thread that is
        // executing it); text is only ever written a byte at a time with
        // plain stores, and a volatile byte read cannot tear.
        let byte = unsafe { ptr::read_volatile(site as *const u8) };
        fence(SeqCst);
        if SEQ.load(SeqCst) == seq {
            break byte;
        }
    };
    let known = KNOWN.load(SeqCst);
    // SAFETY: as for ACTIVE, an old known set is freed only after a drain.
    let is_known = !known.is_null() && unsafe { (*known).as_slice() }.binary_search(&site).is_ok();
    let verdict = if byte != INT3 && is_known {
        Verdict::Reexecute
    } else {
        Verdict::Foreign
    };
    IN_FLIGHT.fetch_sub(1, SeqCst);
    verdict
}

extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // Nothing here calls into libc before the trap is decided: the
    // function called could be one a batch is rewriting (libc's own
    // `__errno_location`, relocated by `-f '*'`), and its int3 would bring
    // the thread straight back here, forever. Our own traps are decided
    // and handled with loads, stores and atomics only; errno is saved
    // where a system call may follow.
    //
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler.
    let (code, gregs) = unsafe {
        let ctx = uc as *mut libc::ucontext_t;
        ((*info).si_code, (*ctx).uc_mcontext.gregs.as_mut_ptr())
    };
    let regs = Regs { gregs };
    // `int3` reports SI_KERNEL; a kill(), tgkill() or a single-step trap
    // reports something else and is never ours.
    let verdict = if code == libc::SI_KERNEL {
        decide(&regs, regs.rip().wrapping_sub(1))
    } else {
        Verdict::Foreign
    };
    match verdict {
        Verdict::Emulated => {
            EMULATED.fetch_add(1, Relaxed);
        }
        Verdict::Redirected => {
            REDIRECTED.fetch_add(1, Relaxed);
        }
        Verdict::Reexecute => {
            regs.set_rip(regs.rip().wrapping_sub(1));
            REEXECUTED.fetch_add(1, Relaxed);
        }
        Verdict::Foreign => {
            CHAINED.fetch_add(1, Relaxed);
            // SAFETY: errno is thread-local; reading and restoring it is
            // what a signal handler that may make system calls must do.
            let errno = unsafe { *libc::__errno_location() };
            // SAFETY: passes the kernel's own arguments on to the program's
            // handler, which expects exactly these.
            unsafe { PROGRAM.deliver(sig, info, uc) };
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = errno };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_child_forgets_handlers_in_flight() {
        ensure_installed().unwrap();
        // As if another thread were inside the handler when we fork.
        IN_FLIGHT.fetch_add(1, SeqCst);
        // SAFETY: the child only loads an atomic and calls _exit, both
        // async-signal-safe, as a child of a multi-threaded parent must.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = if IN_FLIGHT.load(SeqCst) == 0 { 0 } else { 1 };
            // SAFETY: ends the child without running the parent's atexit.
            unsafe { libc::_exit(code) };
        }
        IN_FLIGHT.fetch_sub(1, SeqCst);
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child still counted a handler in flight"
        );
    }
}
