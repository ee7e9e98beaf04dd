//! Per-thread single-writer ring buffers. The model, memory ordering and
//! lifetime rules are in the crate documentation; this file keeps to how.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::{
    fence, AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::{sys, Record};

/// What a full buffer does with the next record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The new record replaces the oldest; the reader counts the records it
    /// never got to see as lost (ftrace's default "overwrite" mode).
    Overwrite,
    /// The new record is refused and counted as lost; the buffer keeps the
    /// oldest records until a [`Rings::drain`] makes room.
    DropNewest,
}

/// How stale a thread name [`Rings::drain`] may report.
const DRAIN_NAME_REFRESH: Duration = Duration::from_millis(100);

/// 64 Ki records: 2 MiB per thread.
pub const DEFAULT_RECORDS_PER_THREAD: usize = 64 * 1024;

/// How the buffers of a [`Rings`] are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Records each thread's buffer holds: a power of two, at least 2.
    pub records_per_thread: usize,
    /// What a full buffer does.
    pub mode: Mode,
    /// Commit the buffer's memory when it is created (`MAP_POPULATE`), so
    /// the hot path never takes a page fault; the thread's first write pays
    /// instead (~1 ms for 2 MiB on the development VM). Off, memory is
    /// committed as the buffer first fills, one fault per 128 records.
    pub prefault: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            records_per_thread: DEFAULT_RECORDS_PER_THREAD,
            mode: Mode::Overwrite,
            prefault: true,
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
struct Slot([AtomicU64; 4]);

const _: () = assert!(std::mem::size_of::<Slot>() == std::mem::size_of::<Record>());

/// The hot fields, on their own cache line. Only the owning thread stores
/// to `head`, `started`, `dropped` and `tail_seen`; the rest never changes.
#[repr(C, align(64))]
struct WriterLine {
    slots: NonNull<Slot>,
    mask: u64,
    overwrite: bool,
    /// Records ever pushed; the next one goes to slot `head & mask`.
    head: AtomicU64,
    /// Records whose storing has begun: `head + 1` while a push is storing
    /// record `head`, `head` otherwise (the seqlock's "write in progress").
    /// Without it a reader could not tell a writer about to overwrite the
    /// oldest record from an idle one, and would have to discard it.
    started: AtomicU64,
    /// Records refused because the buffer was full (DropNewest).
    dropped: AtomicU64,
    /// The last `tail` the writer loaded (DropNewest): it only reloads the
    /// shared line when the buffer looks full by this stale, conservative value.
    tail_seen: AtomicU64,
}

/// The reader's cursor, on its own line so draining does not bounce the
/// writer's line more than reading `head` does.
#[repr(C, align(64))]
struct ReaderLine {
    /// Records consumed by drains. Stored only by readers (under
    /// `Buffer::reader`); the DropNewest writer loads it to find room.
    tail: AtomicU64,
}

/// Reader-side bookkeeping, touched only under `Buffer::reader`.
struct ReaderState {
    name: String,
    /// When `name` was last read from /proc by a drain.
    name_read: Option<Instant>,
    /// Records found overwritten by drains, in total.
    overwritten: u64,
    /// `dropped` as of the last drain, to report only what is new.
    dropped_reported: u64,
}

#[repr(C)]
struct Buffer {
    /// First, at offset 0: [`raw`] writers find its fields at fixed offsets.
    w: WriterLine,
    r: ReaderLine,
    tid: i32,
    /// Set (Release) by the owning thread's exit hook after its last push:
    /// once seen, `head` and `dropped` are final and the thread can no longer
    /// reach this buffer.
    exited: AtomicBool,
    reader: Mutex<ReaderState>,
    bytes: usize,
}

// SAFETY: the only non-thread-safe field is the `slots` pointer, to a
// mapping this Buffer owns, unmaps in Drop and accesses only through atomics.
unsafe impl Send for Buffer {}
// SAFETY: as for Send; shared access to the slots is by atomic operations.
unsafe impl Sync for Buffer {}

impl Buffer {
    fn new(records: usize, mode: Mode, prefault: bool) -> Option<Buffer> {
        let bytes = records * std::mem::size_of::<Slot>();
        let slots = sys::map_zeroed(bytes, prefault)?.cast::<Slot>();
        Some(Buffer {
            w: WriterLine {
                slots,
                mask: records as u64 - 1,
                overwrite: mode == Mode::Overwrite,
                head: AtomicU64::new(0),
                started: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                tail_seen: AtomicU64::new(0),
            },
            r: ReaderLine {
                tail: AtomicU64::new(0),
            },
            tid: sys::gettid(),
            exited: AtomicBool::new(false),
            reader: Mutex::new(ReaderState {
                name: sys::current_thread_name(),
                name_read: None,
                overwritten: 0,
                dropped_reported: 0,
            }),
            bytes,
        })
    }

    #[inline(always)]
    fn slot(&self, index: u64) -> &Slot {
        // SAFETY: `index & mask` < records, the number of slots mapped at
        // `slots`, which stay mapped as long as `self` lives; zeroed memory
        // is a valid `Slot`.
        unsafe { &*self.w.slots.as_ptr().add((index & self.w.mask) as usize) }
    }

    /// Appends a record. Must only be called by the owning thread (the
    /// single-writer rule), never reentrantly.
    #[inline(always)]
    fn push(&self, rec: &Record) -> bool {
        let w = &self.w;
        // Our own last store: no other thread writes `head`.
        let h = w.head.load(Relaxed);
        // Mode first: in Overwrite mode (the default) the fullness test is
        // skipped entirely, which measured cheaper than folding both modes
        // into one always-executed comparison.
        if !w.overwrite
            && h.wrapping_sub(w.tail_seen.load(Relaxed)) > w.mask
            && !self.room_after_reload(h)
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

    /// DropNewest, buffer apparently full: reload the reader's tail. The
    /// Acquire pairs with the drain's Release store of `tail`, so the slots
    /// it consumed are read before we overwrite them.
    #[cold]
    #[inline(never)]
    fn room_after_reload(&self, h: u64) -> bool {
        let tail = self.r.tail.load(Acquire);
        self.w.tail_seen.store(tail, Relaxed);
        if h.wrapping_sub(tail) > self.w.mask {
            // Single writer: a load and a store, no read-modify-write.
            self.w
                .dropped
                .store(self.w.dropped.load(Relaxed) + 1, Relaxed);
            false
        } else {
            true
        }
    }

    /// Copies the records from `tail` on that are intact into `out` and
    /// returns `(first, end)`: `out` holds records `first..end`, records
    /// `tail..first` were overwritten before they could be read. Called
    /// under `reader`, so `tail` does not move meanwhile.
    fn copy_unread(&self, tail: u64, out: &mut Vec<Record>) -> (u64, u64) {
        out.clear();
        let capacity = self.w.mask + 1;
        let end = self.w.head.load(Acquire);
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
        if !self.w.overwrite {
            // The writer never goes `capacity` past `tail`, so nothing
            // from `tail` on was overwritten (and `start == tail`).
            return (start, end);
        }
        // The seqlock's read side: the copies above are done before
        // `started` is loaded (pairs with the fence in `push`). Records
        // below `started - capacity` have been, or are being, overwritten.
        fence(Acquire);
        let started = self.w.started.load(Relaxed);
        let intact_from = start.max(started.saturating_sub(capacity));
        if intact_from >= end {
            out.clear();
            return (intact_from, intact_from);
        }
        out.drain(..(intact_from - start) as usize);
        (intact_from, end)
    }

    fn lock_reader(&self) -> MutexGuard<'_, ReaderState> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the name again while the thread lives (threads rename
    /// themselves). `at_most_every` spares a streaming reader three system
    /// calls per thread per drain for a name that almost never changes.
    fn refresh_name(&self, st: &mut ReaderState, at_most_every: Duration) {
        if self.exited.load(Relaxed) || st.name_read.is_some_and(|t| t.elapsed() < at_most_every) {
            return;
        }
        if let Some(name) = sys::thread_name(self.tid) {
            st.name = name;
        }
        st.name_read = Some(Instant::now());
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `slots` and `bytes` are the mapping made in `new`; the
        // Buffer is being dropped, so no writer or reader holds a reference
        // (writers reach it only through a live Rings that owns an Arc of it).
        unsafe { sys::unmap(self.w.slots.cast(), self.bytes) };
    }
}

/// One way of the per-thread cache; `repr(C)` because [`raw`] writers read
/// it by thread-pointer offset.
#[derive(Clone, Copy)]
#[repr(C)]
struct CacheEntry {
    id: u64,
    buffer: *const Buffer,
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

/// Entries in the per-thread cache, direct-mapped by Rings id: sessions
/// created one after the other (consecutive ids) never evict each other,
/// so a thread traced by up to this many at once always hits. Measured
/// against a single entry: +0.2 ns per back-to-back write, but 4 ns
/// instead of 9 when a thread alternates between two sessions.
const CACHE_WAYS: usize = 4;

thread_local! {
    // (Rings id, buffer) pairs this thread wrote to, at index `id % WAYS`.
    // Const-initialised and without Drop, so access is a plain
    // thread-pointer-relative load (no lazy-init check) and it stays usable
    // while the thread's other thread-locals are being destroyed. Id 0
    // matches no Rings.
    static CACHE: [Cell<CacheEntry>; CACHE_WAYS] =
        const { [const { Cell::new(CacheEntry::EMPTY) }; CACHE_WAYS] };

    // Every buffer this thread owns. Consulted only when CACHE misses; its
    // destructor is the thread-exit hook.
    static OWNED: Owned = const { Owned(RefCell::new(Vec::new())) };
}

struct OwnedEntry {
    rings: u64,
    buffer: *const Buffer,
    /// To reach the buffer at thread exit without keeping it alive (the
    /// Rings may be dropped first).
    weak: Weak<Buffer>,
}

struct Owned(RefCell<Vec<OwnedEntry>>);

impl Drop for Owned {
    fn drop(&mut self) {
        // From here on the thread cannot reach its buffers: the cache is
        // cleared and OWNED is gone (a later write finds neither, and is
        // counted in `unattributed_lost`). Only then is `exited` published,
        // which lets a reader free the buffer once drained.
        CACHE.with(|c| c.iter().for_each(|e| e.set(CacheEntry::EMPTY)));
        for entry in self.0.get_mut().drain(..) {
            if let Some(buffer) = entry.weak.upgrade() {
                buffer.exited.store(true, Release);
            }
        }
    }
}

/// One tracing session's per-thread buffers. Share it as the `Arc` that
/// [`Rings::new`] returns; see the crate documentation for the rules.
pub struct Rings {
    id: u64,
    config: Config,
    /// Every live buffer, in creation order. Locked by a thread's first
    /// write, by readers to list the buffers, and to free exited ones.
    buffers: Mutex<Vec<Arc<Buffer>>>,
    unattributed: AtomicU64,
    /// The process that made it. In a fork child, another thread of the
    /// parent may have held `buffers` at the fork, forever as far as the
    /// child is concerned: the child never takes that lock to create a
    /// buffer, and its new writers' records count as unattributed (the
    /// thread that forked keeps the buffer it had).
    pid: i32,
}

/// A handle for several pushes from one thread at the price of one lookup;
/// see [`Rings::with_writer`].
pub struct Writer<'a> {
    rings: &'a Rings,
    buffer: Option<&'a Buffer>,
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
            Some(buffer) => buffer.push(&rec),
            None => self.rings.unattributed(),
        }
    }
}

impl Rings {
    /// A new, empty set of buffers. Also calibrates the [`Clock`] if that
    /// has not happened yet (~10 ms), so that no traced event pays for it.
    ///
    /// # Panics
    ///
    /// If `records_per_thread` is not a power of two of at least 2, or its
    /// buffer size overflows.
    pub fn new(config: Config) -> Arc<Rings> {
        let n = config.records_per_thread;
        assert!(
            n >= 2 && n.is_power_of_two() && n.checked_mul(std::mem::size_of::<Slot>()).is_some(),
            "records_per_thread must be a power of two >= 2, not {n}"
        );
        Clock::get();
        Arc::new(Rings {
            id: NEXT_ID.fetch_add(1, Relaxed),
            config,
            buffers: Mutex::new(Vec::new()),
            unattributed: AtomicU64::new(0),
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
        })
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

    /// Appends a record to the calling thread's buffer. Returns false when
    /// the record was lost (DropNewest and full, or no buffer; counted).
    ///
    /// Wait-free: five plain stores (a "writing" marker, the record) and a
    /// Release store of the buffer's head, after a thread-local lookup. The first write of a thread to
    /// this Rings creates its buffer (a lock, an `mmap`, a little heap):
    /// not async-signal-safe, which is why [`Rings::register_current_thread`]
    /// exists. Not reentrant on one thread: a signal handler must not write
    /// while the thread it interrupted is inside `write` (the tracing core's
    /// per-thread recursion guard ensures that).
    #[inline]
    pub fn write(&self, rec: Record) -> bool {
        match self.local() {
            Some(buffer) => buffer.push(&rec),
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

    /// Creates the calling thread's buffer now rather than at its first
    /// write (e.g. from a thread-start hook, so that a first event in a
    /// signal handler allocates nothing). Returns whether the thread has one.
    pub fn register_current_thread(&self) -> bool {
        self.local().is_some()
    }

    /// Records lost because the writing thread had no buffer: its creation
    /// failed (out of memory), or the thread wrote from a thread-local
    /// destructor after its exit hook ran.
    pub fn unattributed_lost(&self) -> u64 {
        self.unattributed.load(Relaxed)
    }

    /// Threads with a buffer (including exited ones not yet drained empty).
    pub fn thread_count(&self) -> usize {
        self.lock_buffers().len()
    }

    #[cold]
    fn unattributed(&self) -> bool {
        self.unattributed.fetch_add(1, Relaxed);
        false
    }

    /// This thread's buffer in this Rings, or None if it has none and
    /// cannot get one. Only the owning thread may push to what it returns.
    #[inline(always)]
    fn local(&self) -> Option<&Buffer> {
        let CacheEntry { id, buffer } = CACHE.with(|c| c[self.id as usize % CACHE_WAYS].get());
        if id == self.id {
            // Entries are cached under the owning Rings' id (never reused,
            // and `self` is alive); a buffer is freed early only after the
            // thread's exit hook cleared this cache.
            // SAFETY: so `buffer` is alive, held by `self.buffers`.
            Some(unsafe { &*buffer })
        } else {
            self.local_slow()
        }
    }

    #[cold]
    #[inline(never)]
    fn local_slow(&self) -> Option<&Buffer> {
        let found = OWNED.try_with(|owned| {
            // Reentry would need a write nested in this one: excluded by the
            // no-reentrancy rule, but fail rather than panic in a callback.
            let mut owned = owned.0.try_borrow_mut().ok()?;
            if let Some(e) = owned.iter().find(|e| e.rings == self.id) {
                return Some(e.buffer);
            }
            // SAFETY: getpid has no preconditions.
            if unsafe { libc::getpid() } != self.pid {
                return None; // a fork child: see `pid`
            }
            // Forget buffers of dropped Rings while we are here.
            owned.retain(|e| e.weak.strong_count() > 0);
            let c = &self.config;
            let buffer = Arc::new(Buffer::new(c.records_per_thread, c.mode, c.prefault)?);
            let raw = Arc::as_ptr(&buffer);
            owned.push(OwnedEntry {
                rings: self.id,
                buffer: raw,
                weak: Arc::downgrade(&buffer),
            });
            self.lock_buffers().push(buffer);
            Some(raw)
        });
        let buffer = found.ok().flatten()?;
        CACHE.with(|c| {
            c[self.id as usize % CACHE_WAYS].set(CacheEntry {
                id: self.id,
                buffer,
            })
        });
        // SAFETY: as in `local`: the buffer belongs to `self` (found under
        // its id in this thread's list, or just added to `self.buffers`).
        Some(unsafe { &*buffer })
    }

    fn lock_buffers(&self) -> MutexGuard<'_, Vec<Arc<Buffer>>> {
        self.buffers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The buffers, without holding the lock while reading them (so new
    /// threads can register meanwhile).
    fn list(&self) -> Vec<Arc<Buffer>> {
        self.lock_buffers().clone()
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
    /// empty has its buffer freed and is not listed again.
    pub fn drain<F: FnMut(i32, &str, &[Record], u64)>(&self, mut f: F) -> usize {
        let mut records = Vec::new();
        let mut name = String::new();
        let mut total = 0;
        let mut finished = Vec::new();
        for buffer in self.list() {
            let lost = {
                let mut st = buffer.lock_reader();
                // Loaded before copying: if set, the copy below sees the
                // thread's final head, and the buffer is done once drained.
                let exited = buffer.exited.load(Acquire);
                let tail = buffer.r.tail.load(Relaxed);
                let (first, end) = buffer.copy_unread(tail, &mut records);
                // Release: our copies of the slots happen before a
                // DropNewest writer that sees the new tail reuses them.
                buffer.r.tail.store(end, Release);
                let dropped = buffer.w.dropped.load(Relaxed);
                let lost = (first - tail) + (dropped - st.dropped_reported);
                st.overwritten += first - tail;
                st.dropped_reported = dropped;
                if !records.is_empty() || lost > 0 {
                    buffer.refresh_name(&mut st, DRAIN_NAME_REFRESH);
                    name.clone_from(&st.name);
                }
                if exited && end == buffer.w.head.load(Relaxed) {
                    finished.push(Arc::as_ptr(&buffer));
                }
                lost
            };
            if !records.is_empty() || lost > 0 {
                f(buffer.tid, &name, &records, lost);
                total += records.len();
            }
        }
        if !finished.is_empty() {
            self.lock_buffers()
                .retain(|b| !finished.contains(&Arc::as_ptr(b)));
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
        for buffer in self.list() {
            let mut st = buffer.lock_reader();
            let tail = buffer.r.tail.load(Relaxed);
            let (first, _) = buffer.copy_unread(tail, &mut records);
            let lost = st.overwritten + (first - tail) + buffer.w.dropped.load(Relaxed);
            // The exit hook is the sure sign; a thread that skipped it
            // (raw exit syscall) is noticed by its tid being gone.
            let exited = buffer.exited.load(Acquire) || sys::thread_gone(buffer.tid);
            if !exited {
                buffer.refresh_name(&mut st, Duration::ZERO);
            }
            out.push(ThreadBuffer {
                tid: buffer.tid,
                name: st.name.clone(),
                records: std::mem::take(&mut records),
                lost,
                exited,
            });
        }
        out
    }
}

/// The writer's side as machine code sees it, for trampolines that push
/// records without calling into Rust (the tracers' assembly fast paths).
///
/// A thread finds its buffer of a [`Rings`] with id `id` in its writer
/// cache: the way (`id` word, then buffer pointer) at thread-pointer offset
/// [`raw::cache_tpoff`]`() + (id % WAYS) * WAY_BYTES`, if that way's `id`
/// matches (on
/// a miss, the Rust [`Rings::write`] creates or finds the buffer and fills
/// the way). The way's `buffer` points at the buffer's writer fields, at
/// the `*_OFFSET`s below. A push of record `h = head` is exactly what
/// [`Rings::write`] does: in DropNewest mode (`overwrite` byte 0), give up
/// unless `h - tail_seen <= mask` (the Rust path reloads the reader's tail
/// and counts refusals); store `started = h + 1`; store the four words at
/// `slots + (h & mask) * 32`; store `head = h + 1`. Plain `mov`s in that
/// order (x86-64 keeps stores in order).
///
/// The rules of the crate documentation hold unchanged: only the owning
/// thread pushes, never reentrantly (a signal handler must not push while
/// it interrupted a push), and the `Rings` must outlive every push: a
/// cached way is only valid while the `Rings` whose id it carries is alive,
/// which the caller must guarantee some other way than by borrowing it.
pub mod raw {
    use super::{Buffer, CacheEntry, WriterLine, CACHE, CACHE_WAYS};
    use std::mem::offset_of;

    /// Ways in the per-thread cache.
    pub const WAYS: usize = CACHE_WAYS;
    /// Bytes per way: the `id` word, then the `buffer` pointer.
    pub const WAY_BYTES: usize = std::mem::size_of::<CacheEntry>();
    /// Offset of a way's buffer pointer.
    pub const WAY_BUFFER_OFFSET: usize = offset_of!(CacheEntry, buffer);
    /// Offset of the pointer to the slots (32-byte records).
    pub const SLOTS_OFFSET: usize = offset_of!(Buffer, w) + offset_of!(WriterLine, slots);
    /// Offset of the index mask (records - 1).
    pub const MASK_OFFSET: usize = offset_of!(Buffer, w) + offset_of!(WriterLine, mask);
    /// Offset of the overwrite byte (1: Overwrite, 0: DropNewest).
    pub const OVERWRITE_OFFSET: usize = offset_of!(Buffer, w) + offset_of!(WriterLine, overwrite);
    /// Offset of `head`, the count of records ever pushed.
    pub const HEAD_OFFSET: usize = offset_of!(Buffer, w) + offset_of!(WriterLine, head);
    /// Offset of `started`, the seqlock's write-in-progress count.
    pub const STARTED_OFFSET: usize = offset_of!(Buffer, w) + offset_of!(WriterLine, started);
    /// Offset of `tail_seen`, the writer's stale copy of the reader's tail.
    pub const TAIL_SEEN_OFFSET: usize = offset_of!(Buffer, w) + offset_of!(WriterLine, tail_seen);

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
    fn a_fork_child_never_waits_for_the_parents_buffer_lock() {
        let rings = Rings::new(Config {
            records_per_thread: 64,
            ..Config::default()
        });
        // As if another thread were registering a buffer when we fork.
        let held = rings.lock_buffers();
        // SAFETY: the child only writes a record (no lock taken, as this
        // test checks; an alarm ends it if it blocks) and calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: alarm and _exit are async-signal-safe.
            unsafe { libc::alarm(5) };
            let written = rings.write(Record::default());
            let code = if !written && rings.unattributed_lost() == 1 {
                0
            } else {
                1
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        drop(held);
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child blocked or wrote into its parent's buffers (status {status:#x})"
        );
        // The parent still writes normally.
        assert!(rings.write(Record::default()));
    }
}
