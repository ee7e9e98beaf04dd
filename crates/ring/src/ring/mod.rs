//! Per-thread single-writer ring buffers in one shared-memory pool per
//! [`Rings`]. The model, memory ordering and lifetime rules are in the
//! crate documentation; this module keeps to how: the configuration and
//! the [`Rings`] that owns a pool here, the pool's layout, one buffer's
//! seqlock, per-thread state, and the writer's, reader's and freezer's
//! sides in the children.

mod buffer;
mod freeze;
mod layout;
pub mod raw;
mod read;
mod thread;
mod write;

use freeze::frozen_tail;
pub use layout::Layout;
pub(crate) use layout::{
    Header, PoolHeader, Slot, TailLine, WriterLine, EXITED, FREE, LIVE, POOL_MAGIC, POOL_VERSION,
    SLOT_HEADER_BYTES, TAKING,
};
use read::ReaderState;
use thread::{
    arm_exit_hook, current_pid, process_setup, CacheEntry, CACHE, CACHE_WAYS, EXITING, NEXT_ID,
    REGISTRY,
};
pub use thread::{forget_exit_hook, thread_serial};
pub use write::Writer;

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

#[cfg(test)]
mod tests;
