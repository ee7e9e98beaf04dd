//! The engine's two locks, and what `fork` does with them.
//!
//! - [`BATCH`]: one change of text at a time — a batch, a sled conversion,
//!   a stop of the world. Also guards the known set.
//! - [`WORLD`]: one observation of the threads at a time (a probe request
//!   in flight).
//!
//! Order: `BATCH` before `WORLD` (the check before a batch may probe a
//! thread). A caller above the engine that holds a lock of its own while
//! calling in (the tracing core) takes it before both.
//!
//! # fork
//!
//! A `fork` while another thread is half-way through a batch would give the
//! child `int3`s in its text, writable text pages and a lock held by a
//! thread that does not exist in it. So the engine registers `pthread_atfork`
//! handlers (once, at its first use): *prepare* takes both locks — a fork
//! waits for the batch under way to finish — and the parent and the child
//! release them; the child also forgets handlers that were in flight in
//! other threads of the parent. A layer above registers its own handlers
//! after calling [`register_atfork`], so that its lock, taken by its
//! prepare handler (the last registered runs first), comes before ours. A
//! `fork` from the thread that holds `BATCH` (a batch's phase hook) is not
//! waited for: the lock is already its own.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering::SeqCst};
use std::sync::Once;

use crate::world::proc::gettid;

/// A process-wide lock that `fork` handlers can take and release across
/// the callbacks (a `pthread_mutex_t`), remembering its owner so a thread
/// can tell it already holds it.
pub(crate) struct EngineLock {
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    owner: AtomicI32,
    /// Recursion depth of the owner (nested acquisitions by the same
    /// thread, e.g. a batch applied from a phase hook's `fork` path).
    depth: AtomicUsize,
}

// SAFETY: the mutex is only used through pthread calls, which are
// thread-safe; `owner` and `depth` are atomics.
unsafe impl Sync for EngineLock {}

impl EngineLock {
    pub(crate) const fn new() -> EngineLock {
        EngineLock {
            mutex: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER),
            owner: AtomicI32::new(0),
            depth: AtomicUsize::new(0),
        }
    }

    /// Takes the lock (re-entrantly for its owner) until the guard drops.
    pub(crate) fn lock(&'static self) -> EngineGuard {
        let me = gettid();
        if self.owner.load(SeqCst) == me {
            self.depth.fetch_add(1, SeqCst);
            return EngineGuard(self);
        }
        // SAFETY: a statically initialised mutex, locked by this thread.
        unsafe { libc::pthread_mutex_lock(self.mutex.get()) };
        self.owner.store(me, SeqCst);
        self.depth.store(1, SeqCst);
        EngineGuard(self)
    }

    fn unlock(&self) {
        if self.depth.fetch_sub(1, SeqCst) == 1 {
            self.owner.store(0, SeqCst);
            // SAFETY: locked by this thread (the owner).
            unsafe { libc::pthread_mutex_unlock(self.mutex.get()) };
        }
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.owner.load(SeqCst) == gettid()
    }

    /// In a fork child: the forking thread held the lock before the fork
    /// (under its parent tid); it is this thread's now.
    fn rebind_in_child(&self, parent_tid: i32) {
        if self.owner.load(SeqCst) == parent_tid {
            self.owner.store(gettid(), SeqCst);
        }
    }

    /// In a fork child: the lock as the parent's forking thread left it is
    /// this thread's (it took it in prepare) or free; make it free.
    fn reset_in_child(&self) {
        self.owner.store(0, SeqCst);
        self.depth.store(0, SeqCst);
        // SAFETY: re-initialises the mutex in a child that has one thread,
        // which holds no reference to it.
        unsafe { *self.mutex.get() = libc::PTHREAD_MUTEX_INITIALIZER };
    }
}

/// Holds an [`EngineLock`].
pub(crate) struct EngineGuard(&'static EngineLock);

impl Drop for EngineGuard {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

pub(crate) static BATCH: EngineLock = EngineLock::new();

/// The fork handlers go in when the engine is loaded, before the program
/// can fork with a batch or a set-up under way in another thread.
#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER_AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        register_atfork();
    }
    at_load
};
pub(crate) static WORLD: EngineLock = EngineLock::new();

/// Whether the forking thread took the locks in prepare (it did not if it
/// already held `BATCH`).
static TOOK: AtomicUsize = AtomicUsize::new(0);
/// The forking thread's tid in the parent.
static FORKER: AtomicI32 = AtomicI32::new(0);
/// Guards held between prepare and parent.
struct Held(UnsafeCell<Option<(EngineGuard, EngineGuard)>>);
// SAFETY: only touched by the forking thread between its own prepare and
// parent/child handlers (fork serialises them).
unsafe impl Sync for Held {}
static HELD: Held = Held(UnsafeCell::new(None));

extern "C" fn prepare() {
    FORKER.store(gettid(), SeqCst);
    if BATCH.held_by_me() {
        TOOK.store(0, SeqCst);
        return;
    }
    let g = (BATCH.lock(), WORLD.lock());
    // SAFETY: see `Held`.
    unsafe { *HELD.0.get() = Some(g) };
    TOOK.store(1, SeqCst);
}

extern "C" fn parent() {
    if TOOK.load(SeqCst) == 1 {
        // SAFETY: see `Held`; dropping releases both locks.
        drop(unsafe { (*HELD.0.get()).take() });
    }
}

extern "C" fn child() {
    if TOOK.load(SeqCst) == 1 {
        // SAFETY: see `Held`. The guards must not run their unlock (the
        // owner tid is the parent's thread's): forget them and reset.
        std::mem::forget(unsafe { (*HELD.0.get()).take() });
        BATCH.reset_in_child();
        WORLD.reset_in_child();
    } else {
        // Forked from inside a batch: the batch goes on in the child, on
        // this thread, which owns the lock now.
        let forker = FORKER.load(SeqCst);
        BATCH.rebind_in_child(forker);
        WORLD.rebind_in_child(forker);
    }
    crate::trap::forget_in_flight();
    crate::world::forget_in_flight();
    crate::world::signal::forget_in_child();
    crate::signals::forget_in_child();
    crate::sync::forget_in_child();
}

/// Registers the engine's fork handlers, once. Called at the engine's first
/// use, and by a layer above before it registers its own.
pub fn register_atfork() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers handlers that only take and release our own
        // locks and reset counters.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}
