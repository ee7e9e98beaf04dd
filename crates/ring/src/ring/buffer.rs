//! One buffer's seqlock: the push its single writer makes and the copy a
//! reader takes while the writer may be overwriting the records it copies.

use super::*;

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
    pub(super) fn push(&self, rec: &Record, pool: &PoolHeader) -> bool {
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
    pub(super) fn copy_unread(&self, tail: u64, out: &mut Vec<Record>) -> (u64, u64) {
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

    pub(super) fn name(&self) -> String {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.m.name[0].load(Relaxed).to_ne_bytes());
        b[8..].copy_from_slice(&self.m.name[1].load(Relaxed).to_ne_bytes());
        let len = b.iter().position(|&c| c == 0).unwrap_or(16);
        String::from_utf8_lossy(&b[..len]).into_owned()
    }
}
