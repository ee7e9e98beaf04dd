//! Per-thread single-writer ring buffers in one shared-memory pool per
//! [`Rings`]. The model, memory ordering and lifetime rules are in the
//! crate documentation; this file keeps to how.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::{sys, Record};

/// What a full buffer does with the next record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The new record replaces the oldest; the reader counts the records it
    /// never got to see as lost (ftrace's default "overwrite" mode; the
    /// flight recorder).
    Overwrite,
    /// The new record is refused and counted as lost; the buffer keeps the
    /// oldest records until a reader makes room (streaming to a consumer).
    DropNewest,
}

/// How stale a thread name [`Rings::drain`] may report.
const DRAIN_NAME_REFRESH: Duration = Duration::from_millis(100);

/// 64 Ki records: 2 MiB per thread.
pub const DEFAULT_RECORDS_PER_THREAD: usize = 64 * 1024;

/// The default memory budget of one [`Rings`]: 512 MiB, room for 255
/// threads with the default buffer size.
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;

/// Buffers in one [`Rings`] at most, whatever the budget: threads with a
/// buffer at the same time.
pub const MAX_THREADS: usize = 4096;

/// How the buffers of a [`Rings`] are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Records each thread's buffer holds: a power of two, at least 2.
    pub records_per_thread: usize,
    /// What a full buffer does.
    pub mode: Mode,
    /// Commit a buffer's memory when a thread takes it, so the hot path
    /// never takes a page fault; the thread's first write pays instead
    /// (one `madvise`, ~0.5 ms for 2 MiB). Off, memory is committed as the
    /// buffer first fills, one fault per 128 records.
    pub prefault: bool,
    /// Bytes of buffers the set may use in all, reserved up front (as
    /// address space; memory is committed as threads take buffers). It
    /// decides how many threads can have a buffer at once: records of a
    /// thread that finds none free are counted lost
    /// ([`Rings::unattributed_lost`]). At least one buffer.
    pub memory_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            records_per_thread: DEFAULT_RECORDS_PER_THREAD,
            mode: Mode::Overwrite,
            prefault: true,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// One thread's buffer as [`Rings::snapshot`] saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadBuffer {
    /// Kernel thread id of the writer.
    pub tid: i32,
    /// The thread's name (`comm`): read again at each snapshot while the
    /// thread lives, the last one seen after it exited.
    pub name: String,
    /// The unread records, oldest first (what the next drain would get,
    /// minus any the writer overwrites meanwhile).
    pub records: Vec<Record>,
    /// Records this thread has lost since its buffer was created:
    /// overwritten before anyone read them, or refused when full.
    pub lost: u64,
    /// The thread has exited (its records remain readable).
    pub exited: bool,
}

// The storage of one record. Atomic words because readers copy records
// while the writer may be overwriting them (the race is detected and the
// copy discarded, but it must not be undefined behaviour): relaxed atomic
// loads and stores are plain `mov`s on x86-64, so this costs nothing.
// 32-byte aligned so a record never straddles two cache lines.
#[repr(C, align(32))]
pub(crate) struct Slot(pub(crate) [AtomicU64; 4]);

const _: () = assert!(std::mem::size_of::<Slot>() == std::mem::size_of::<Record>());

/// The hot fields, on their own cache line at the start of a buffer's
/// header (where [`raw`] writers find them). Only the owning thread stores
/// to `head`, `started` and `dropped`; `tail_seen` and `overwrite` also by
/// [`Rings::freeze`]; `slots`, `mask` and `tail` never change.
#[repr(C, align(64))]
pub(crate) struct WriterLine {
    pub(crate) slots: *mut Slot,
    pub(crate) mask: u64,
    /// Overwrite mode (cleared while the set is frozen).
    pub(crate) overwrite: AtomicBool,
    /// The set is frozen ([`Rings::freeze`]): refuse every record.
    pub(crate) frozen: AtomicBool,
    /// Records ever pushed; the next one goes to slot `head & mask`.
    pub(crate) head: AtomicU64,
    /// Records whose storing has begun: `head + 1` while a push is storing
    /// record `head`, `head` otherwise (the seqlock's "write in progress").
    /// Without it a reader could not tell a writer about to overwrite the
    /// oldest record from an idle one, and would have to discard it.
    pub(crate) started: AtomicU64,
    /// Records refused (DropNewest full, or the set frozen).
    pub(crate) dropped: AtomicU64,
    /// The last tail the writer loaded (DropNewest): it only reloads the
    /// consumer's tail when the buffer looks full by this stale,
    /// conservative value.
    pub(crate) tail_seen: AtomicU64,
    /// This buffer's consumer tail word (in the tails mapping).
    pub(crate) tail: *const AtomicU64,
}

// The writer's words fit one cache line, at fixed offsets the assembly
// writers were built against.
const _: () = {
    assert!(std::mem::size_of::<WriterLine>() == 64);
    assert!(std::mem::offset_of!(WriterLine, head) == 24);
};

/// Who owns a buffer, on the header's second line.
#[repr(C, align(64))]
pub(crate) struct Meta {
    /// FREE, TAKING, LIVE or EXITED.
    pub(crate) state: AtomicU32,
    pub(crate) tid: AtomicI32,
    /// Bumped each time a thread takes the buffer: readers tell one
    /// owner's records from the next one's by it.
    pub(crate) generation: AtomicU64,
    /// The owning thread's serial ([`thread_serial`]).
    pub(crate) owner: AtomicU64,
    /// The owner's name when it took the buffer, NUL-padded.
    pub(crate) name: [AtomicU64; 2],
}

/// A buffer's header, in shared memory; its records follow at
/// [`SLOT_HEADER_BYTES`].
#[repr(C)]
pub(crate) struct Header {
    /// First, at offset 0: [`raw`] writers find its fields at fixed offsets.
    pub(crate) w: WriterLine,
    pub(crate) m: Meta,
}

/// Bytes from a buffer's header to its first record.
pub(crate) const SLOT_HEADER_BYTES: usize = 256;
const _: () = assert!(std::mem::size_of::<Header>() <= SLOT_HEADER_BYTES);

pub(crate) const FREE: u32 = 0;
pub(crate) const TAKING: u32 = 1;
pub(crate) const LIVE: u32 = 2;
pub(crate) const EXITED: u32 = 3;

/// A buffer's consumer words, in the tails mapping (which a consumer in
/// another process maps writable): whatever it stores there can only make
/// the writer keep or drop records, never make it write elsewhere.
#[repr(C, align(64))]
pub(crate) struct TailLine {
    /// Records consumed. Stored only by readers; the DropNewest writer
    /// loads it to find room.
    pub(crate) tail: AtomicU64,
    /// The generation whose records the reader is done with (all read and
    /// the owner exited): the buffer may then be taken by another thread.
    pub(crate) released: AtomicU64,
}

/// The pool's first page, in shared memory.
#[repr(C)]
pub(crate) struct PoolHeader {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u32,
    pub(crate) slots: u32,
    pub(crate) stride: u64,
    pub(crate) records: u64,
    pub(crate) slot_header: u64,
    pub(crate) overwrite: u32,
    pub(crate) pid: i32,
    /// Records lost because their thread had no buffer.
    pub(crate) unattributed: AtomicU64,
    /// Non-zero while [`Rings::freeze`] holds the buffers still.
    pub(crate) frozen: AtomicU32,
    _pad: u32,
    /// Times a snapshot trigger fired ([`Rings::trigger`]).
    pub(crate) triggers: AtomicU64,
}

pub(crate) const POOL_MAGIC: [u8; 8] = *b"LTRINGS\0";
pub(crate) const POOL_VERSION: u32 = 1;

/// Reader-side bookkeeping of one buffer, touched only under its lock.
#[derive(Default)]
struct ReaderState {
    /// The generation these fields describe.
    generation: u64,
    name: String,
    /// When `name` was last read from /proc by a drain.
    name_read: Option<Instant>,
    /// Records found overwritten by drains, in total.
    overwritten: u64,
    /// `dropped` as of the last drain, to report only what is new.
    dropped_reported: u64,
}

impl Header {
    #[inline(always)]
    fn slot(&self, index: u64) -> &Slot {
        // SAFETY: `index & mask` < records, the number of slots at `slots`,
        // which stay mapped as long as the Rings owning this header lives;
        // zeroed memory is a valid `Slot`.
        unsafe { &*self.w.slots.add((index & self.w.mask) as usize) }
    }

    /// Appends a record. Must only be called by the owning thread (the
    /// single-writer rule), never reentrantly.
    #[inline(always)]
    fn push(&self, rec: &Record, pool: &PoolHeader) -> bool {
        let w = &self.w;
        // Our own last store: no other thread writes `head`.
        let h = w.head.load(Relaxed);
        // Mode first: in Overwrite mode (the default) the fullness test is
        // skipped entirely, which measured cheaper than folding both modes
        // into one always-executed comparison.
        if !w.overwrite.load(Relaxed)
            && h.wrapping_sub(w.tail_seen.load(Relaxed)) > w.mask
            && !self.room_after_reload(h, pool)
        {
            return false;
        }
        // The seqlock's write side: announce record `h`, whose stores
        // overwrite record `h - capacity`, before making them. The fence
        // orders the announcement before the stores, so a reader whose copy
        // picked up any of them sees `started > h` when it re-checks, and
        // discards that record. A compiler barrier only, on x86-64.
        w.started.store(h + 1, Relaxed);
        fence(Release);
        let s = self.slot(h);
        s.0[0].store(rec.ts, Relaxed);
        s.0[1].store(rec.a, Relaxed);
        s.0[2].store(rec.b, Relaxed);
        s.0[3].store(rec.c, Relaxed);
        // Publishes the record: a reader that loads `head > h` with Acquire
        // sees all four words.
        w.head.store(h + 1, Release);
        true
    }

    /// The buffer looks full (DropNewest, or frozen): reload the consumer's
    /// tail. The Acquire pairs with the reader's Release store of it, so
    /// the records it consumed were read before we overwrite them.
    #[cold]
    #[inline(never)]
    fn room_after_reload(&self, h: u64, pool: &PoolHeader) -> bool {
        let w = &self.w;
        let room = if w.frozen.load(Acquire) || pool.frozen.load(Acquire) != 0 {
            // Frozen: `tail_seen` was set to keep every push here; leave it.
            false
        } else {
            // SAFETY: `tail` points into the tails mapping, owned by the
            // same Rings as this header.
            let tail = unsafe { &*w.tail }.load(Acquire);
            w.tail_seen.store(tail, Relaxed);
            h.wrapping_sub(tail) <= w.mask
        };
        if !room {
            // Single writer: a load and a store, no read-modify-write.
            w.dropped.store(w.dropped.load(Relaxed) + 1, Relaxed);
        }
        room
    }

    /// Copies the records from `tail` on that are intact into `out` and
    /// returns `(first, end)`: `out` holds records `first..end`, records
    /// `tail..first` were overwritten before they could be read. The
    /// caller holds the buffer's reader lock.
    fn copy_unread(&self, tail: u64, out: &mut Vec<Record>) -> (u64, u64) {
        out.clear();
        let capacity = self.w.mask + 1;
        let end = self.w.head.load(Acquire);
        // The tail word is a consumer's: never trust it past what exists.
        let tail = tail.min(end);
        let start = tail.max(end.saturating_sub(capacity));
        out.reserve((end - start) as usize);
        for i in start..end {
            let s = self.slot(i);
            out.push(Record {
                ts: s.0[0].load(Relaxed),
                a: s.0[1].load(Relaxed),
                b: s.0[2].load(Relaxed),
                c: s.0[3].load(Relaxed),
            });
        }
        // The seqlock's read side: the copies above are done before
        // `started` is loaded (pairs with the fence in `push`). Records
        // below `started - capacity` have been, or are being, overwritten.
        // (A DropNewest writer never overwrites unread records, so this
        // discards nothing there.)
        fence(Acquire);
        let started = self.w.started.load(Relaxed);
        let intact_from = start.max(started.saturating_sub(capacity));
        if intact_from >= end {
            out.clear();
            return (intact_from.min(end).max(tail), end);
        }
        out.drain(..(intact_from - start) as usize);
        (intact_from, end)
    }

    fn name(&self) -> String {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.m.name[0].load(Relaxed).to_ne_bytes());
        b[8..].copy_from_slice(&self.m.name[1].load(Relaxed).to_ne_bytes());
        let len = b.iter().position(|&c| c == 0).unwrap_or(16);
        String::from_utf8_lossy(&b[..len]).into_owned()
    }
}

/// One way of the per-thread cache; `repr(C)` because [`raw`] writers read
/// it by thread-pointer offset.
#[derive(Clone, Copy)]
#[repr(C)]
struct CacheEntry {
    id: u64,
    buffer: *const Header,
}

impl CacheEntry {
    const EMPTY: CacheEntry = CacheEntry {
        id: 0,
        buffer: ptr::null(),
    };
}

/// Rings ids are never reused, so a thread's cached `(id, buffer)` pair can
/// only ever match the Rings that owns that buffer.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Thread serials: never reused, unlike tids.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Entries in the per-thread cache, direct-mapped by Rings id: sessions
/// created one after the other (consecutive ids) never evict each other,
/// so a thread traced by up to this many at once always hits. Measured
/// against a single entry: +0.2 ns per back-to-back write, but 4 ns
/// instead of 9 when a thread alternates between two sessions.
const CACHE_WAYS: usize = 4;

thread_local! {
    // (Rings id, buffer) pairs this thread wrote to, at index `id % WAYS`.
    // Const-initialised and without Drop, so access is a plain
    // thread-pointer-relative load (no lazy-init check, no destructor to
    // register: nothing a signal handler could not do). Id 0 matches no
    // Rings.
    static CACHE: [Cell<CacheEntry>; CACHE_WAYS] =
        const { [const { Cell::new(CacheEntry::EMPTY) }; CACHE_WAYS] };
    // This thread's serial (0: none yet).
    static SERIAL: Cell<u64> = const { Cell::new(0) };
    // Set by the exit hook: from then on the thread's writes are counted,
    // not stored (its buffers may be given to other threads).
    static EXITING: Cell<bool> = const { Cell::new(false) };
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
static REGISTRY: Mutex<Vec<Weak<Rings>>> = Mutex::new(Vec::new());

/// The pthread key whose destructor is the thread-exit hook, if usable
/// without allocating (see [`arm_exit_hook`]).
static EXIT_KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();

/// Keys below this are stored in the thread's own descriptor by glibc
/// (`PTHREAD_KEY_2NDLEVEL_SIZE`); setting a higher one may allocate.
const KEY_NO_ALLOC_LIMIT: libc::pthread_key_t = 32;

/// This process's pid, kept by the fork handler: `getpid` is a system
/// call, and the slow path would pay it on every cache miss.
static PID: AtomicI32 = AtomicI32::new(0);

fn current_pid() -> i32 {
    match PID.load(Relaxed) {
        0 => sys::getpid(),
        p => p,
    }
}

/// Creates the exit key and the fork handler, once, from a normal context.
fn process_setup() {
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
fn arm_exit_hook() {
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

/// One tracing session's per-thread buffers. Share it as the `Arc` that
/// [`Rings::new`] returns; see the crate documentation for the rules.
pub struct Rings {
    id: u64,
    config: Config,
    /// The pool: its header page, then `slots` buffers of `stride` bytes.
    data: sys::SharedMap,
    /// One [`TailLine`] per buffer.
    tails: sys::SharedMap,
    slots: u32,
    stride: usize,
    readers: Box<[Mutex<ReaderState>]>,
    /// Buffers ever taken are all below this: readers look no further.
    used: AtomicU32,
    /// The process that made it. In a fork child, the pool is the parent's
    /// shared memory: the child never takes a buffer in it (nor touches
    /// any state in it), and its writers' records count as unattributed.
    pid: i32,
}

/// A handle for several pushes from one thread at the price of one lookup;
/// see [`Rings::with_writer`].
pub struct Writer<'a> {
    rings: &'a Rings,
    buffer: Option<&'a Header>,
    /// Bound to the calling thread: another thread pushing through it would
    /// break the single-writer rule.
    _not_send: PhantomData<*const ()>,
}

impl Writer<'_> {
    /// Appends a record to this thread's buffer; false when it was lost
    /// (DropNewest and full, or the thread has no buffer).
    #[inline]
    pub fn push(&mut self, rec: Record) -> bool {
        match self.buffer {
            Some(buffer) => buffer.push(&rec, self.rings.pool()),
            None => self.rings.unattributed(),
        }
    }
}

/// Where a set's buffers are, for a consumer in another process: see
/// [`crate::shm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Buffers in the pool.
    pub slots: u32,
    /// Bytes from one buffer's header to the next.
    pub stride: u64,
    /// Records per buffer (a power of two).
    pub records: u64,
    /// Bytes from the pool's start to the first buffer's header.
    pub pool_header: u64,
    /// Bytes from a buffer's header to its first record.
    pub slot_header: u64,
    /// Bytes of the data memory file.
    pub data_bytes: u64,
    /// Bytes of the tails memory file.
    pub tails_bytes: u64,
    /// The buffers overwrite their oldest records (flight recorder).
    pub overwrite: bool,
}

impl Rings {
    /// A new, empty set of buffers, its whole memory budget reserved as a
    /// shared memory file (committed as threads take buffers). Also
    /// calibrates the [`Clock`] if that has not happened yet (~10 ms), so
    /// that no traced event pays for it.
    ///
    /// # Panics
    ///
    /// If `records_per_thread` is not a power of two of at least 2, its
    /// buffer size overflows, or the memory cannot be reserved.
    pub fn new(config: Config) -> Arc<Rings> {
        let n = config.records_per_thread;
        assert!(
            n >= 2 && n.is_power_of_two() && n.checked_mul(std::mem::size_of::<Slot>()).is_some(),
            "records_per_thread must be a power of two >= 2, not {n}"
        );
        Clock::get();
        process_setup();
        let page = sys::page_size();
        let stride = (SLOT_HEADER_BYTES + n * std::mem::size_of::<Slot>()).next_multiple_of(page);
        let slots = (config.memory_budget / stride).clamp(1, MAX_THREADS) as u32;
        let pool_header = page;
        let data = sys::SharedMap::new(
            c"livetrace-rings",
            pool_header + slots as usize * stride,
            true,
        )
        .expect("cannot reserve the ring buffers' memory");
        let tails = sys::SharedMap::new(
            c"livetrace-tails",
            (slots as usize * std::mem::size_of::<TailLine>()).next_multiple_of(page),
            false,
        )
        .expect("cannot reserve the ring buffers' memory");
        let pid = sys::getpid();
        let rings = Rings {
            id: NEXT_ID.fetch_add(1, Relaxed),
            readers: (0..slots).map(|_| Mutex::default()).collect(),
            config,
            data,
            tails,
            slots,
            stride,
            used: AtomicU32::new(0),
            pid,
        };
        // SAFETY: the pool's first page is ours to initialise: nothing else
        // knows the mapping yet.
        unsafe {
            rings
                .data
                .ptr
                .cast::<PoolHeader>()
                .as_ptr()
                .write(PoolHeader {
                    magic: POOL_MAGIC,
                    version: POOL_VERSION,
                    slots,
                    stride: stride as u64,
                    records: n as u64,
                    slot_header: SLOT_HEADER_BYTES as u64,
                    overwrite: u32::from(rings.config.mode == Mode::Overwrite),
                    pid,
                    unattributed: AtomicU64::new(0),
                    frozen: AtomicU32::new(0),
                    _pad: 0,
                    triggers: AtomicU64::new(0),
                });
        }
        let rings = Arc::new(rings);
        let mut reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&rings));
        drop(reg);
        rings
    }

    /// The set's id, unique in the process (never reused): the key of its
    /// way in each thread's writer cache (see [`raw`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn pool(&self) -> &PoolHeader {
        // SAFETY: the pool's first page, initialised in `new`, mapped as
        // long as `self` lives.
        unsafe { &*self.data.ptr.cast::<PoolHeader>().as_ptr() }
    }

    fn header_ptr(&self, i: u32) -> *mut Header {
        debug_assert!(i < self.slots);
        // SAFETY: inside the pool mapping: `i < slots`, and the mapping is
        // one page plus `slots` strides.
        unsafe {
            self.data
                .ptr
                .as_ptr()
                .add(sys::page_size() + i as usize * self.stride)
                .cast()
        }
    }

    pub(crate) fn header(&self, i: u32) -> &Header {
        // SAFETY: a header inside our mapping (see `header_ptr`), alive as
        // long as `self`; its fields are atomics or constant.
        unsafe { &*self.header_ptr(i) }
    }

    fn tail_line(&self, i: u32) -> &TailLine {
        assert!(i < self.slots);
        // SAFETY: entry `i` of the tails mapping, which holds `slots`
        // entries (zeroed memory is a valid TailLine).
        unsafe { &*self.tails.ptr.cast::<TailLine>().as_ptr().add(i as usize) }
    }

    /// Appends a record to the calling thread's buffer. Returns false when
    /// the record was lost (DropNewest and full, or no buffer; counted).
    ///
    /// Wait-free: five plain stores (a "writing" marker, the record) and a
    /// Release store of the buffer's head, after a thread-local lookup.
    /// A thread's first write to this Rings takes a free buffer from the
    /// pool: a scan with compare-and-swaps, a `prctl` for the thread's
    /// name, an `madvise` to commit the memory; no allocation and no lock,
    /// so it is async-signal-safe. Not reentrant on one thread: a signal
    /// handler must not write while the thread it interrupted is inside
    /// `write` (the tracing core's per-thread recursion guard ensures that).
    #[inline]
    pub fn write(&self, rec: Record) -> bool {
        match self.local() {
            Some(buffer) => buffer.push(&rec, self.pool()),
            None => self.unattributed(),
        }
    }

    /// Runs `f` with a [`Writer`] for the calling thread's buffer: one
    /// lookup for any number of pushes. Same rules as [`Rings::write`].
    #[inline]
    pub fn with_writer<R>(&self, f: impl FnOnce(&mut Writer<'_>) -> R) -> R {
        f(&mut Writer {
            rings: self,
            buffer: self.local(),
            _not_send: PhantomData,
        })
    }

    /// Takes the calling thread's buffer now rather than at its first
    /// write (e.g. to commit its memory outside a latency-critical path).
    /// Returns whether the thread has one.
    pub fn register_current_thread(&self) -> bool {
        self.local().is_some()
    }

    /// Records lost because the writing thread had no buffer: none was
    /// free (the memory budget), or the thread wrote while exiting, or in a
    /// fork child.
    pub fn unattributed_lost(&self) -> u64 {
        self.pool().unattributed.load(Relaxed)
    }

    /// Threads with a buffer (including exited ones not yet drained empty).
    pub fn thread_count(&self) -> usize {
        (0..self.used())
            .filter(|&i| self.listed(i).is_some())
            .count()
    }

    /// Buffers the memory budget allows: at most this many threads have one
    /// at a time.
    pub fn capacity_threads(&self) -> usize {
        self.slots as usize
    }

    /// Buffers ever taken are below this.
    fn used(&self) -> u32 {
        self.used.load(Acquire)
    }

    /// Buffer `i`'s generation if it holds a thread's records that a reader
    /// has not released.
    fn listed(&self, i: u32) -> Option<u64> {
        let m = &self.header(i).m;
        let st = m.state.load(Acquire);
        let g = m.generation.load(Acquire);
        match st {
            LIVE => Some(g),
            EXITED if self.tail_line(i).released.load(Acquire) != g => Some(g),
            _ => None,
        }
    }

    #[cold]
    fn unattributed(&self) -> bool {
        // In a fork child the counter is the parent's (shared memory).
        if sys::getpid() == self.pid {
            self.pool().unattributed.fetch_add(1, Relaxed);
        }
        false
    }

    /// This thread's buffer in this Rings, or None if it has none and
    /// cannot get one. Only the owning thread may push to what it returns.
    #[inline(always)]
    fn local(&self) -> Option<&Header> {
        let CacheEntry { id, buffer } = CACHE.with(|c| c[self.id as usize % CACHE_WAYS].get());
        if id == self.id {
            // Entries are cached under the owning Rings' id (never reused,
            // and `self` is alive); a thread's buffer is released to others
            // only after its exit hook cleared this cache.
            // SAFETY: so `buffer` is one of `self`'s headers.
            Some(unsafe { &*buffer })
        } else {
            self.local_slow()
        }
    }

    /// Finds or takes this thread's buffer. Async-signal-safe: atomics,
    /// `getpid`, `gettid`, `prctl`, `madvise`, `pthread_setspecific` of a
    /// key kept in the thread descriptor.
    #[cold]
    #[inline(never)]
    fn local_slow(&self) -> Option<&Header> {
        if EXITING.get() || current_pid() != self.pid {
            return None;
        }
        let serial = thread_serial();
        let found = (0..self.used()).find(|&i| {
            let m = &self.header(i).m;
            m.state.load(Acquire) == LIVE && m.owner.load(Relaxed) == serial
        });
        let i = match found {
            Some(i) => i,
            None => self.take(serial)?,
        };
        arm_exit_hook();
        let buffer = self.header_ptr(i) as *const Header;
        CACHE.with(|c| {
            c[self.id as usize % CACHE_WAYS].set(CacheEntry {
                id: self.id,
                buffer,
            })
        });
        Some(self.header(i))
    }

    /// Takes a free buffer (never used, or released by its reader after
    /// its owner exited) for the thread `serial`.
    fn take(&self, serial: u64) -> Option<u32> {
        // Lowest first, so buffers in use stay below `used`.
        for i in 0..self.slots {
            let h = self.header(i);
            let st = h.m.state.load(Acquire);
            let free = match st {
                FREE => true,
                EXITED => self.tail_line(i).released.load(Acquire) == h.m.generation.load(Acquire),
                _ => false,
            };
            if !free
                || h.m
                    .state
                    .compare_exchange(st, TAKING, AcqRel, Relaxed)
                    .is_err()
            {
                continue;
            }
            // TAKING: ours alone. No writer uses it (its owner exited, or
            // there never was one) and no reader looks at it (they read
            // LIVE and EXITED buffers only, and check the generation).
            let first_use = h.m.generation.load(Relaxed) == 0;
            if first_use {
                let p = self.header_ptr(i);
                // Constant from here on: readers read these only in LIVE or
                // EXITED buffers, after an Acquire load of the state that
                // follows these stores.
                // SAFETY: buffer `i`'s header, ours while TAKING: its records
                // follow it in the same stride, its tail line is entry `i`.
                unsafe {
                    (&raw mut (*p).w.slots).write(p.cast::<u8>().add(SLOT_HEADER_BYTES).cast());
                    (&raw mut (*p).w.mask).write(self.config.records_per_thread as u64 - 1);
                    (&raw mut (*p).w.tail).write(&self.tail_line(i).tail);
                }
                self.used.fetch_max(i + 1, Release);
            }
            let pool = self.pool();
            let frozen = pool.frozen.load(Acquire) != 0;
            let w = &h.w;
            w.head.store(0, Relaxed);
            w.started.store(0, Relaxed);
            w.dropped.store(0, Relaxed);
            w.tail_seen
                .store(if frozen { frozen_tail(0, w.mask) } else { 0 }, Relaxed);
            w.overwrite
                .store(self.config.mode == Mode::Overwrite && !frozen, Relaxed);
            self.tail_line(i).tail.store(0, Relaxed);
            h.m.tid.store(sys::gettid(), Relaxed);
            h.m.owner.store(serial, Relaxed);
            let mut name = [0u8; 16];
            sys::current_thread_name_raw(&mut name);
            h.m.name[0].store(
                u64::from_ne_bytes(name[..8].try_into().expect("8")),
                Relaxed,
            );
            h.m.name[1].store(
                u64::from_ne_bytes(name[8..].try_into().expect("8")),
                Relaxed,
            );
            if self.config.prefault && first_use {
                sys::populate(self.header_ptr(i).cast(), self.stride);
            }
            h.m.generation.fetch_add(1, Release);
            h.m.state.store(LIVE, SeqCst);
            // A freeze that began after we loaded `frozen` may have missed
            // this buffer (not yet counted in `used`, or overwritten by the
            // stores above): freeze it ourselves (the same stores).
            if !frozen && pool.frozen.load(SeqCst) != 0 {
                w.frozen.store(true, SeqCst);
                w.tail_seen.store(frozen_tail(0, w.mask), SeqCst);
                w.overwrite.store(false, SeqCst);
            }
            return Some(i);
        }
        None
    }

    fn lock_reader(&self, i: u32) -> MutexGuard<'_, ReaderState> {
        self.readers[i as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffer `i`'s reader state, reset if a new owner took it since; with
    /// the generation it describes. `None` if it holds nothing to read.
    fn reader_for(&self, i: u32) -> Option<(MutexGuard<'_, ReaderState>, u64)> {
        let g = self.listed(i)?;
        let mut st = self.lock_reader(i);
        if st.generation != g {
            *st = ReaderState {
                generation: g,
                name: self.header(i).name(),
                ..ReaderState::default()
            };
        }
        Some((st, g))
    }

    /// Whether buffer `i`'s owner has exited: its exit hook said so, or its
    /// tid is gone (a thread that skipped the hook).
    fn owner_exited(&self, i: u32) -> (bool, bool) {
        let m = &self.header(i).m;
        let hooked = m.state.load(Acquire) == EXITED;
        (hooked || sys::thread_gone(m.tid.load(Relaxed)), hooked)
    }

    /// Consumes what is new in every buffer, calling
    /// `f(tid, thread_name, records, lost)` once per thread that has new
    /// records or new losses (oldest records first). The name is re-read
    /// from /proc at most every 100 ms per thread. `lost` counts the
    /// records lost since the previous drain of that thread: in Overwrite
    /// mode they are the ones just before `records`; in DropNewest mode
    /// they were refused at some point after the oldest record still
    /// buffered then. Returns the number of records passed to `f`.
    ///
    /// Runs concurrently with writers (at most one reader works on a given
    /// buffer at a time; concurrent drains and snapshots take turns). `f`
    /// runs with no lock held. A thread that has exited and is drained
    /// empty has its buffer released (other threads may take it) and is
    /// not listed again. In a fork child, drains nothing (the buffers are
    /// the parent's).
    pub fn drain<F: FnMut(i32, &str, &[Record], u64)>(&self, mut f: F) -> usize {
        if sys::getpid() != self.pid {
            return 0;
        }
        let mut records = Vec::new();
        let mut name = String::new();
        let mut total = 0;
        for i in 0..self.used() {
            let Some((mut st, g)) = self.reader_for(i) else {
                continue;
            };
            let h = self.header(i);
            let tl = self.tail_line(i);
            // Loaded before copying: if set, the copy below sees the
            // thread's final head, and the buffer is done once drained.
            let hooked_exit = h.m.state.load(Acquire) == EXITED;
            let tail = tl.tail.load(Relaxed);
            let (first, end) = h.copy_unread(tail, &mut records);
            if h.m.generation.load(Acquire) != g {
                continue; // released and taken meanwhile (not by a drain)
            }
            // Release: our copies of the slots happen before a DropNewest
            // writer that sees the new tail reuses them.
            tl.tail.store(end, Release);
            let dropped = h.w.dropped.load(Relaxed);
            let lost = (first - tail.min(first)) + dropped.saturating_sub(st.dropped_reported);
            st.overwritten += first - tail.min(first);
            st.dropped_reported = dropped;
            let tid = h.m.tid.load(Relaxed);
            if !records.is_empty() || lost > 0 {
                refresh_name(h, &mut st, DRAIN_NAME_REFRESH);
                name.clone_from(&st.name);
            }
            if hooked_exit && end == h.w.head.load(Relaxed) {
                // The last reader action on this generation.
                tl.released.store(g, Release);
            }
            drop(st);
            if !records.is_empty() || lost > 0 {
                f(tid, &name, &records, lost);
                total += records.len();
            }
        }
        total
    }

    /// Copies every thread's unread records without consuming them, with
    /// its name, total losses and whether it exited. Runs concurrently with
    /// writers; a record overwritten while being copied is left out (and
    /// counted in `lost`), never returned torn.
    pub fn snapshot(&self) -> Vec<ThreadBuffer> {
        let mut out = Vec::new();
        let mut records = Vec::new();
        for i in 0..self.used() {
            let Some((mut st, g)) = self.reader_for(i) else {
                continue;
            };
            let h = self.header(i);
            let tail = self.tail_line(i).tail.load(Relaxed);
            let (first, _) = h.copy_unread(tail, &mut records);
            if h.m.generation.load(Acquire) != g {
                continue;
            }
            let lost = st.overwritten + (first - tail.min(first)) + h.w.dropped.load(Relaxed);
            let (exited, _) = self.owner_exited(i);
            if !exited {
                refresh_name(h, &mut st, Duration::ZERO);
            }
            out.push(ThreadBuffer {
                tid: h.m.tid.load(Relaxed),
                name: st.name.clone(),
                records: std::mem::take(&mut records),
                lost,
                exited,
            });
        }
        out
    }

    /// The memory files and layout a consumer in another process maps (see
    /// [`crate::shm`]); `None` when the pool is not in memory files.
    pub fn shared(
        &self,
    ) -> Option<(
        std::os::fd::BorrowedFd<'_>,
        std::os::fd::BorrowedFd<'_>,
        Layout,
    )> {
        use std::os::fd::AsFd;
        let data = self.data.fd.as_ref()?.as_fd();
        let tails = self.tails.fd.as_ref()?.as_fd();
        Some((data, tails, self.layout()))
    }

    /// Where the buffers are in the pool.
    pub fn layout(&self) -> Layout {
        Layout {
            slots: self.slots,
            stride: self.stride as u64,
            records: self.config.records_per_thread as u64,
            pool_header: sys::page_size() as u64,
            slot_header: SLOT_HEADER_BYTES as u64,
            data_bytes: self.data.bytes as u64,
            tails_bytes: self.tails.bytes as u64,
            overwrite: self.config.mode == Mode::Overwrite,
        }
    }

    /// Holds every buffer still, for a snapshot: from now on each writer
    /// refuses its records (counted as dropped) until [`Rings::unfreeze`].
    /// A push already under way completes. Any thread may call it, a trace
    /// callback too (atomic stores only).
    pub fn freeze(&self) {
        let pool = self.pool();
        pool.frozen.store(1, SeqCst);
        for i in 0..self.used() {
            let w = &self.header(i).w;
            // Every head from the current one on looks full against this
            // tail, which sends the writer to `room_after_reload`, which
            // sees `frozen` and refuses. `tail_seen` is the writer's only
            // in DropNewest mode, and its own store there happens only when
            // not frozen.
            w.frozen.store(true, SeqCst);
            w.tail_seen
                .store(frozen_tail(w.head.load(Acquire), w.mask), SeqCst);
            w.overwrite.store(false, SeqCst);
        }
    }

    /// Lets the writers go on after [`Rings::freeze`].
    pub fn unfreeze(&self) {
        let pool = self.pool();
        let overwrite = self.config.mode == Mode::Overwrite;
        for i in 0..self.used() {
            let w = &self.header(i).w;
            if !overwrite {
                w.tail_seen.store(0, SeqCst);
            }
            w.overwrite.store(overwrite, SeqCst);
            w.frozen.store(false, SeqCst);
        }
        pool.frozen.store(0, SeqCst);
    }

    /// Whether the buffers are frozen.
    pub fn is_frozen(&self) -> bool {
        self.pool().frozen.load(Acquire) != 0
    }

    /// Counts a snapshot trigger (a consumer watching the pool takes the
    /// snapshot): freezes the buffers and bumps the trigger count. Atomic
    /// stores only: a trace callback may call it.
    pub fn trigger(&self) {
        if self.pool().frozen.load(Relaxed) == 0 {
            self.freeze();
        }
        self.pool().triggers.fetch_add(1, SeqCst);
    }

    /// Times [`Rings::trigger`] was called.
    pub fn triggers(&self) -> u64 {
        self.pool().triggers.load(Acquire)
    }

    /// Upkeep a reader of an external consumer's set does now and then:
    /// buffers of threads that exited without their exit hook (their tid
    /// is gone) are marked exited, so the consumer can release them. For a
    /// flight recorder (nobody releases buffers), with `recycle` it also
    /// releases exited threads' buffers, dropping their records (counted by
    /// whoever reads next as overwritten), when no buffer is free.
    pub fn maintain(&self, recycle: bool) {
        if sys::getpid() != self.pid {
            return;
        }
        let mut free = 0;
        let mut exited = Vec::new();
        for i in 0..self.used() {
            let h = self.header(i);
            match h.m.state.load(Acquire) {
                FREE => free += 1,
                LIVE if sys::thread_gone(h.m.tid.load(Relaxed)) => {
                    let _ = h.m.state.compare_exchange(LIVE, EXITED, AcqRel, Relaxed);
                    exited.push(i);
                }
                EXITED => {
                    if self.tail_line(i).released.load(Acquire) == h.m.generation.load(Acquire) {
                        free += 1;
                    } else {
                        exited.push(i);
                    }
                }
                _ => {}
            }
        }
        if recycle && free == 0 && self.used() == self.slots {
            for i in exited {
                let _guard = self.lock_reader(i);
                let h = self.header(i);
                self.tail_line(i)
                    .released
                    .store(h.m.generation.load(Acquire), Release);
            }
        }
    }
}

/// A tail that makes head `h` and every later one look full.
fn frozen_tail(h: u64, mask: u64) -> u64 {
    h.wrapping_sub(mask + 1)
}

/// Reads the name again while the thread lives (threads rename
/// themselves). `at_most_every` spares a streaming reader three system
/// calls per thread per drain for a name that almost never changes.
fn refresh_name(h: &Header, st: &mut ReaderState, at_most_every: Duration) {
    if h.m.state.load(Relaxed) == EXITED
        || st.name_read.is_some_and(|t| t.elapsed() < at_most_every)
    {
        return;
    }
    if let Some(name) = sys::thread_name(h.m.tid.load(Relaxed)) {
        st.name = name;
    }
    st.name_read = Some(Instant::now());
}

impl Drop for Rings {
    fn drop(&mut self) {
        // The mappings go with `data` and `tails`. Threads' caches may
        // still name our headers under our id, which no Rings will ever
        // have again, so those entries can never be used.
        let mut reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        reg.retain(|w| w.strong_count() > 0);
    }
}

/// The writer's side as machine code sees it, for trampolines that push
/// records without calling into Rust (the tracers' assembly fast paths).
///
/// A thread finds its buffer of a [`Rings`] with id `id` in its writer
/// cache: the way (`id` word, then buffer pointer) at thread-pointer offset
/// [`raw::cache_tpoff`]`() + (id % WAYS) * WAY_BYTES`, if that way's `id`
/// matches (on a miss, the Rust [`Rings::write`] finds or takes the buffer
/// and fills the way). The way's `buffer` points at the buffer's writer
/// fields, at the `*_OFFSET`s below. A push of record `h = head` is exactly
/// what [`Rings::write`] does: if the `overwrite` byte is 0 (DropNewest, or
/// frozen), give up unless `h - tail_seen <= mask` (the Rust path reloads
/// the consumer's tail and counts refusals); store `started = h + 1`; store
/// the four words at `slots + (h & mask) * 32`; store `head = h + 1`. Plain
/// `mov`s in that order (x86-64 keeps stores in order).
///
/// The rules of the crate documentation hold unchanged: only the owning
/// thread pushes, never reentrantly (a signal handler must not push while
/// it interrupted a push), and the `Rings` must outlive every push: a
/// cached way is only valid while the `Rings` whose id it carries is alive,
/// which the caller must guarantee some other way than by borrowing it.
pub mod raw {
    use super::{CacheEntry, Header, WriterLine, CACHE, CACHE_WAYS};
    use std::mem::offset_of;

    /// Ways in the per-thread cache.
    pub const WAYS: usize = CACHE_WAYS;
    /// Bytes per way: the `id` word, then the `buffer` pointer.
    pub const WAY_BYTES: usize = std::mem::size_of::<CacheEntry>();
    /// Offset of a way's buffer pointer.
    pub const WAY_BUFFER_OFFSET: usize = offset_of!(CacheEntry, buffer);
    /// Offset of the pointer to the slots (32-byte records).
    pub const SLOTS_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, slots);
    /// Offset of the index mask (records - 1).
    pub const MASK_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, mask);
    /// Offset of the overwrite byte (1: Overwrite, 0: DropNewest or frozen).
    pub const OVERWRITE_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, overwrite);
    /// Offset of `head`, the count of records ever pushed.
    pub const HEAD_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, head);
    /// Offset of `started`, the seqlock's write-in-progress count.
    pub const STARTED_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, started);
    /// Offset of `tail_seen`, the writer's stale copy of the consumer's tail.
    pub const TAIL_SEEN_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, tail_seen);
    /// Offset of `dropped`, the count of records the writer refused. Only
    /// the owning thread stores to it (a plain add is enough).
    pub const DROPPED_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, dropped);
    /// Offset of the pointer to the consumer's tail word (a `u64` another
    /// process may store to: its value may be anything, never an address).
    /// A writer that finds the buffer full by `tail_seen` may reload the
    /// tail through it, store it as `tail_seen`, and, still full, count the
    /// refusal in `dropped` and skip the record, as the Rust path does:
    /// only while the `frozen` byte is 0 (a frozen buffer refuses every
    /// record whatever the tail).
    pub const TAIL_PTR_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, tail);
    /// Offset of the `frozen` byte (1 while [`super::Rings::freeze`] holds
    /// the buffer still).
    pub const FROZEN_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, frozen);

    /// The writer cache's offset from the thread pointer, measured on the
    /// calling thread. It is the same in every thread when this crate's
    /// thread-locals live in static TLS (the executable and libraries
    /// loaded at start-up); a caller must check that before relying on it.
    pub fn cache_tpoff() -> isize {
        let at = CACHE.with(|c| c.as_ptr() as usize);
        let tp: usize;
        // SAFETY: on x86-64 Linux, fs:0 holds the thread pointer itself
        // (the TCB's self pointer); reading it has no side effect.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:0", out(reg) tp,
                options(nostack, readonly, preserves_flags));
        }
        at.wrapping_sub(tp) as isize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_child_never_writes_into_its_parents_buffers() {
        let rings = Rings::new(Config {
            records_per_thread: 64,
            ..Config::default()
        });
        assert!(rings.write(Record::default()));
        // SAFETY: the child only writes records (atomics, no lock; an alarm
        // ends it if it blocks) and calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: alarm and _exit are async-signal-safe.
            unsafe { libc::alarm(5) };
            let written = (0..10).any(|_| {
                rings.write(Record {
                    ts: 9,
                    a: 9,
                    b: 9,
                    c: 9,
                })
            });
            // SAFETY: as above.
            unsafe { libc::_exit(i32::from(written)) };
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child blocked or wrote (status {status:#x})"
        );
        // The parent's buffer holds its own record only, and its count of
        // records without a buffer is the parent's alone.
        let snap = rings.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].records, vec![Record::default()]);
        assert_eq!(rings.unattributed_lost(), 0);
        assert!(rings.write(Record::default()));
    }
}
