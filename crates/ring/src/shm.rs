//! A consumer of a [`Rings`](crate::Rings) in another process: it maps the
//! set's two memory files (passed over a Unix socket) and moves records out
//! of the buffers without the traced process doing anything per record.
//!
//! # Protocol
//!
//! The traced process shares, for each set, a *data* file (the pool: a
//! header page, then one buffer per thread slot: a header with the writer's
//! words, then the records) sealed so that no mapping but the process's own
//! can ever write it, and a *tails* file the consumer maps writable: per
//! buffer, the `tail` (records consumed) and `released` words. Like perf's
//! mmap ring (`data_head` / `data_tail`):
//!
//! - A buffer is readable while its `state` is LIVE or EXITED. Its
//!   `generation` names the owner: load it before and after reading the
//!   header; a change means another thread took the buffer meanwhile.
//! - `head` (loaded with Acquire) counts the records ever pushed; records
//!   below it are complete. In stream (DropNewest) mode the writer never
//!   writes records from `tail` on until the consumer stores a larger
//!   `tail`, so `[tail, head)` can be copied straight from the file (e.g.
//!   with `sendfile`) and then `tail = head` stored (Release): that is the
//!   "consumed" message, and a full buffer is simply `head - tail ==
//!   capacity` (its writer refuses records and counts them in `dropped`).
//! - In flight-recorder (Overwrite) mode the writer overwrites; copy, then
//!   load `started` (after an Acquire fence): records below `started -
//!   capacity` may be torn and are discarded ([`Consumer::copy_intact`]).
//! - Once a buffer's state is EXITED and everything up to its final `head`
//!   was consumed, the consumer stores `released = generation`: the buffer
//!   may then be taken by another thread (a new generation).
//!
//! Nothing the consumer stores can make the traced process write anywhere
//! but into its own buffers: the worst a wrong `tail` or `released` does is
//! lose records.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering::*};

use crate::ring::{Header, Layout, PoolHeader, TailLine, EXITED, LIVE, POOL_MAGIC, POOL_VERSION};
use crate::{sys, Record};

/// A set's memory, mapped by a consumer.
pub struct Consumer {
    data: NonNull<u8>,
    tails: NonNull<u8>,
    layout: Layout,
    data_fd: OwnedFd,
    _tails_fd: OwnedFd,
}

// SAFETY: the mappings are plain shared memory read through atomics (and
// the tails written through atomics); the descriptors are owned.
unsafe impl Send for Consumer {}

/// One buffer as the consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// The owner's generation.
    pub generation: u64,
    /// The owner's tid.
    pub tid: i32,
    /// The owner's name when it took the buffer.
    pub name: String,
    /// Records ever pushed.
    pub head: u64,
    /// The seqlock's write-in-progress count.
    pub started: u64,
    /// Records refused (buffer full or frozen).
    pub dropped: u64,
    /// The owner exited (its exit hook ran, or the process marked it):
    /// `head` is final.
    pub exited: bool,
    /// The consumer tail word now.
    pub tail: u64,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Consumer {
    /// Maps `data` (read-only) and `tails` (writable), checking that they
    /// are what `layout` says and sealed against shrinking (so no access
    /// can ever fault).
    pub fn new(data: OwnedFd, tails: OwnedFd, layout: Layout) -> io::Result<Consumer> {
        for (fd, want, what) in [
            (&data, layout.data_bytes, "data"),
            (&tails, layout.tails_bytes, "tails"),
        ] {
            // SAFETY: F_GET_SEALS on a descriptor we own.
            let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
            if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
                return Err(bad(format!(
                    "the {what} memory file is not sealed against shrinking"
                )));
            }
            let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
            // SAFETY: fstat fills `st` for a descriptor we own.
            if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fstat succeeded.
            let size = unsafe { st.assume_init() }.st_size as u64;
            if size != want || want == 0 {
                return Err(bad(format!(
                    "the {what} memory file has {size} bytes, not {want}"
                )));
            }
        }
        let l = layout;
        let need = l
            .stride
            .checked_mul(u64::from(l.slots))
            .and_then(|b| b.checked_add(l.pool_header));
        if l.slots == 0
            || !l.records.is_power_of_two()
            || l.slot_header < std::mem::size_of::<Header>() as u64
            || l.slot_header.checked_add(l.records.saturating_mul(32)) > Some(l.stride)
            || need != Some(l.data_bytes)
            || (u64::from(l.slots) * std::mem::size_of::<TailLine>() as u64) > l.tails_bytes
            || l.pool_header < std::mem::size_of::<PoolHeader>() as u64
        {
            return Err(bad(format!("inconsistent buffer layout {l:?}")));
        }
        let map = |fd: &OwnedFd, bytes: u64, write: bool| {
            sys::map_file(fd.as_raw_fd(), bytes as usize, write)
                .ok_or_else(io::Error::last_os_error)
        };
        let dp = map(&data, l.data_bytes, false)?;
        let tp = match map(&tails, l.tails_bytes, true) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the mapping just made.
                unsafe { libc::munmap(dp.as_ptr().cast(), l.data_bytes as usize) };
                return Err(e);
            }
        };
        let c = Consumer {
            data: dp,
            tails: tp,
            layout,
            data_fd: data,
            _tails_fd: tails,
        };
        let p = c.pool();
        if p.magic != POOL_MAGIC
            || p.version != POOL_VERSION
            || p.slots != l.slots
            || p.stride != l.stride
            || p.records != l.records
            || p.slot_header != l.slot_header
        {
            return Err(bad("the buffers' header does not match their layout"));
        }
        Ok(c)
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The data memory file (to `sendfile` records from).
    pub fn data_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.data_fd.as_fd()
    }

    fn pool(&self) -> &PoolHeader {
        // SAFETY: the first page of the data mapping, checked to be large
        // enough; only atomics in it change.
        unsafe { &*self.data.as_ptr().cast::<PoolHeader>() }
    }

    fn header(&self, i: u32) -> &Header {
        assert!(i < self.layout.slots);
        // SAFETY: inside the mapping (checked layout); the header's fields
        // read here are atomics or plain words the consumer only copies
        // (the raw pointers are the writer's and never dereferenced here).
        unsafe {
            &*self
                .data
                .as_ptr()
                .add((self.layout.pool_header + u64::from(i) * self.layout.stride) as usize)
                .cast::<Header>()
        }
    }

    fn tail_line(&self, i: u32) -> &TailLine {
        assert!(i < self.layout.slots);
        // SAFETY: entry `i` of the tails mapping (checked large enough).
        unsafe { &*self.tails.as_ptr().cast::<TailLine>().add(i as usize) }
    }

    /// Buffer `i`, if it holds a thread's records (LIVE or EXITED) and its
    /// header was read consistently.
    pub fn slot(&self, i: u32) -> Option<SlotView> {
        let h = self.header(i);
        let st = h.m.state.load(Acquire);
        if st != LIVE && st != EXITED {
            return None;
        }
        let generation = h.m.generation.load(Acquire);
        let head = h.w.head.load(Acquire);
        let started = h.w.started.load(Relaxed);
        let dropped = h.w.dropped.load(Relaxed);
        let tid = h.m.tid.load(Relaxed);
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(&h.m.name[0].load(Relaxed).to_ne_bytes());
        name[8..].copy_from_slice(&h.m.name[1].load(Relaxed).to_ne_bytes());
        // From the state loaded first: if it said EXITED, the `head` loaded
        // after it is the thread's final one.
        let exited = st == EXITED;
        if h.m.generation.load(Acquire) != generation {
            return None;
        }
        let len = name.iter().position(|&c| c == 0).unwrap_or(16);
        Some(SlotView {
            generation,
            tid,
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
            head,
            started,
            dropped,
            exited,
            tail: self.tail_line(i).tail.load(Relaxed),
        })
    }

    /// Whether buffer `i` still belongs to `generation`.
    pub fn same_generation(&self, i: u32, generation: u64) -> bool {
        self.header(i).m.generation.load(Acquire) == generation
    }

    /// The pieces of the data file holding records `from..to` of buffer `i`
    /// (at most a capacity's worth): `(file offset, records)`, one or two
    /// (the ring wraps).
    pub fn pieces(&self, i: u32, from: u64, to: u64) -> Vec<(u64, u64)> {
        let cap = self.layout.records;
        let to = to.min(from.saturating_add(cap));
        let base =
            self.layout.pool_header + u64::from(i) * self.layout.stride + self.layout.slot_header;
        let mut out = Vec::with_capacity(2);
        let mut at = from;
        while at < to {
            let idx = at & (cap - 1);
            let n = (cap - idx).min(to - at);
            out.push((base + idx * 32, n));
            at += n;
        }
        out
    }

    /// Copies records `from..to` of buffer `i` (as [`Consumer::pieces`])
    /// into `out`, then applies the seqlock check: returns the index of the
    /// first intact record copied (`out` holds `first..to`). For
    /// flight-recorder buffers, whose writer may overwrite while we copy.
    pub fn copy_intact(&self, i: u32, from: u64, to: u64, out: &mut Vec<Record>) -> u64 {
        out.clear();
        for (off, n) in self.pieces(i, from, to) {
            for k in 0..n {
                // SAFETY: inside buffer `i`'s records (pieces stay within
                // its capacity), 32-byte aligned; read as atomics because
                // the writer may be storing them.
                let s = unsafe {
                    &*self
                        .data
                        .as_ptr()
                        .add((off + 32 * k) as usize)
                        .cast::<[AtomicU64; 4]>()
                };
                out.push(Record {
                    ts: s[0].load(Relaxed),
                    a: s[1].load(Relaxed),
                    b: s[2].load(Relaxed),
                    c: s[3].load(Relaxed),
                });
            }
        }
        let to = from + out.len() as u64;
        fence(Acquire);
        let started = self.header(i).w.started.load(Relaxed);
        let intact = from
            .max(started.saturating_sub(self.layout.records))
            .min(to);
        out.drain(..(intact - from) as usize);
        intact
    }

    /// Stores buffer `i`'s tail: records below it are consumed (Release:
    /// after our reads of them).
    pub fn set_tail(&self, i: u32, tail: u64) {
        self.tail_line(i).tail.store(tail, Release);
    }

    /// Gives buffer `i` back once its exited owner's records (generation
    /// `generation`) are all consumed.
    pub fn release(&self, i: u32, generation: u64) {
        self.tail_line(i).released.store(generation, Release);
    }

    /// Lets the kernel take back this process's page-table entries for
    /// records `from..to` of buffer `i` (what a read through the mapping
    /// faulted in), so the consumer's resident memory stays small.
    pub fn forget(&self, i: u32, from: u64, to: u64) {
        let page = sys::page_size() as u64;
        for (off, n) in self.pieces(i, from, to) {
            let start = off.next_multiple_of(page);
            let end = (off + 32 * n) / page * page;
            if end > start {
                // SAFETY: whole pages inside our read-only shared mapping;
                // MADV_DONTNEED only drops our mapping of them (the file
                // keeps its contents).
                unsafe {
                    libc::madvise(
                        self.data.as_ptr().add(start as usize).cast(),
                        (end - start) as usize,
                        libc::MADV_DONTNEED,
                    )
                };
            }
        }
    }

    /// Records lost because their thread had no buffer.
    pub fn unattributed(&self) -> u64 {
        self.pool().unattributed.load(Relaxed)
    }

    /// Whether the process froze the buffers (a snapshot trigger).
    pub fn frozen(&self) -> bool {
        self.pool().frozen.load(Acquire) != 0
    }

    /// Snapshot triggers fired so far.
    pub fn triggers(&self) -> u64 {
        self.pool().triggers.load(Acquire)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // SAFETY: the two mappings made in `new`, no longer used.
        unsafe {
            libc::munmap(self.data.as_ptr().cast(), self.layout.data_bytes as usize);
            libc::munmap(self.tails.as_ptr().cast(), self.layout.tails_bytes as usize);
        }
    }
}
