//! The writer's side: a thread finds (or takes) its buffer and pushes to
//! it, wait-free; [`Writer`] keeps the lookup for several pushes.

use super::*;

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

impl Rings {
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
    pub(super) fn used(&self) -> u32 {
        self.used.load(Acquire)
    }

    /// Buffer `i`'s generation if it holds a thread's records that a reader
    /// has not released.
    pub(super) fn listed(&self, i: u32) -> Option<u64> {
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
}
