//! The reader's side: drains and snapshots copy what writers left,
//! concurrently with them, and release the buffers of exited threads.

use super::*;

/// How stale a thread name [`Rings::drain`] may report.
const DRAIN_NAME_REFRESH: Duration = Duration::from_millis(100);

/// Reader-side bookkeeping of one buffer, touched only under its lock.
#[derive(Default)]
pub(super) struct ReaderState {
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

impl Rings {
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
