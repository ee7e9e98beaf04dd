//! Per-thread state: the writer cache that maps a [`Rings`] id to the
//! thread's buffer, thread serials, and the thread-exit and fork hooks that
//! take a thread's buffers away from it. All of it usable from a signal
//! handler (no allocation, no lock).

use super::*;

/// One way of the per-thread cache; `repr(C)` because [`raw`] writers read
/// it by thread-pointer offset.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct CacheEntry {
    pub(super) id: u64,
    pub(super) buffer: *const Header,
}

impl CacheEntry {
    const EMPTY: CacheEntry = CacheEntry {
        id: 0,
        buffer: ptr::null(),
    };
}

/// Rings ids are never reused, so a thread's cached `(id, buffer)` pair can
/// only ever match the Rings that owns that buffer.
pub(super) static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Thread serials: never reused, unlike tids.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Entries in the per-thread cache, direct-mapped by Rings id: sessions
/// created one after the other (consecutive ids) never evict each other,
/// so a thread traced by up to this many at once always hits. Measured
/// against a single entry: +0.2 ns per back-to-back write, but 4 ns
/// instead of 9 when a thread alternates between two sessions.
pub(super) const CACHE_WAYS: usize = 4;

thread_local! {
    // (Rings id, buffer) pairs this thread wrote to, at index `id % WAYS`.
    // Const-initialised and without Drop, so access is a plain
    // thread-pointer-relative load (no lazy-init check, no destructor to
    // register: nothing a signal handler could not do). Id 0 matches no
    // Rings.
    pub(super) static CACHE: [Cell<CacheEntry>; CACHE_WAYS] =
        const { [const { Cell::new(CacheEntry::EMPTY) }; CACHE_WAYS] };
    // This thread's serial (0: none yet).
    static SERIAL: Cell<u64> = const { Cell::new(0) };
    // Set by the exit hook: from then on the thread's writes are counted,
    // not stored (its buffers may be given to other threads).
    pub(super) static EXITING: Cell<bool> = const { Cell::new(false) };
    // The exit hook is armed for this thread.
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

/// This thread's serial: a number no other thread of the process ever
/// had, assigned at its first use with one atomic add (no allocation, no
/// lock: usable in a signal handler). Buffers record their owner by it.
pub fn thread_serial() -> u64 {
    SERIAL.with(|s| {
        let mut v = s.get();
        if v == 0 {
            v = NEXT_SERIAL.fetch_add(1, Relaxed);
            s.set(v);
        }
        v
    })
}

/// Every live Rings, for the thread-exit hook.
pub(super) static REGISTRY: Mutex<Vec<Weak<Rings>>> = Mutex::new(Vec::new());

/// The pthread key whose destructor is the thread-exit hook, if usable
/// without allocating (see [`arm_exit_hook`]).
static EXIT_KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();

/// Keys below this are stored in the thread's own descriptor by glibc
/// (`PTHREAD_KEY_2NDLEVEL_SIZE`); setting a higher one may allocate.
const KEY_NO_ALLOC_LIMIT: libc::pthread_key_t = 32;

/// This process's pid, kept by the fork handler: `getpid` is a system
/// call, and the slow path would pay it on every cache miss.
static PID: AtomicI32 = AtomicI32::new(0);

pub(super) fn current_pid() -> i32 {
    match PID.load(Relaxed) {
        0 => sys::getpid(),
        p => p,
    }
}

/// Creates the exit key and the fork handler, once, from a normal context.
pub(super) fn process_setup() {
    PID.store(sys::getpid(), Relaxed);
    EXIT_KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: creates a key with our destructor; `key` receives it.
        let rc = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
        // SAFETY: registers a child-side fork handler, a plain function.
        unsafe { libc::pthread_atfork(None, None, Some(on_fork_child)) };
        (rc == 0 && key < KEY_NO_ALLOC_LIMIT).then_some(key)
    });
}

/// Before this code is unloaded (a library detached from a process): no
/// thread's exit calls into it any more (the exit hook's key is deleted;
/// fork handlers of a library go with it at `dlclose`). Every `Rings` must
/// be gone already. Threads' exits are then seen by their tids only.
pub fn forget_exit_hook() {
    if let Some(Some(key)) = EXIT_KEY.get() {
        // SAFETY: our key; deleting it runs no destructor, and no code of
        // ours sets it afterwards (no Rings is left to write to).
        unsafe { libc::pthread_key_delete(*key) };
    }
}

/// Makes this thread's exit run [`on_thread_exit`]: a store into the
/// thread's own key slot (glibc keeps the first 32 in the thread
/// descriptor), so no allocation and no lock, even in a signal handler.
/// Threads that cannot be hooked (no usable key) are seen exited by their
/// tid being gone instead.
pub(super) fn arm_exit_hook() {
    if HOOKED.get() {
        return;
    }
    HOOKED.set(true);
    if let Some(Some(key)) = EXIT_KEY.get() {
        // SAFETY: our key; a non-null marker value, never dereferenced.
        unsafe { libc::pthread_setspecific(*key, ptr::dangling::<u8>().cast()) };
    }
}

/// The thread-exit hook (a pthread key destructor, which glibc runs after
/// the thread's C++/Rust thread-local destructors: writes from those still
/// reach the buffer). From here on the thread cannot reach its buffers:
/// the cache is cleared and later writes are counted, not stored. Only
/// then are its buffers marked exited, which lets readers release them.
extern "C" fn on_thread_exit(_: *mut libc::c_void) {
    EXITING.set(true);
    CACHE.with(|c| c.iter().for_each(|e| e.set(CacheEntry::EMPTY)));
    let serial = SERIAL.get();
    if serial == 0 {
        return;
    }
    let pid = sys::getpid();
    let live: Vec<Arc<Rings>> = REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for rings in live {
        // A fork child's rings memory is its parent's: never touch it.
        if rings.pid != pid {
            continue;
        }
        for i in 0..rings.used() {
            let m = &rings.header(i).m;
            if m.state.load(Acquire) == LIVE && m.owner.load(Relaxed) == serial {
                m.state.store(EXITED, Release);
            }
        }
    }
}

/// In a fork child, the calling thread (the only one) forgets its buffers:
/// they are the parent's (the pool is shared memory), which the parent's
/// thread goes on writing. Its later writes to the parent's sets are
/// counted, not stored (see `Rings::pid`).
extern "C" fn on_fork_child() {
    PID.store(sys::getpid(), Relaxed);
    CACHE.with(|c| c.iter().for_each(|e| e.set(CacheEntry::EMPTY)));
}
