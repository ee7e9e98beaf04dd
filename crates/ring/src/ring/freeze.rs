//! Freezing: holding every buffer still for a snapshot, and the snapshot
//! triggers a trace callback may fire (atomic stores only).

use super::*;

impl Rings {
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
}

/// A tail that makes head `h` and every later one look full.
pub(super) fn frozen_tail(h: u64, mask: u64) -> u64 {
    h.wrapping_sub(mask + 1)
}
