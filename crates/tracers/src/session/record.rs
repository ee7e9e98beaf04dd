//! What a session's callbacks and its graph exits write: records,
//! entries held back for a minimum duration, profile rows.

use livetrace_ring::Record;

use crate::layout::{ENTRY, EXIT};
use crate::retstack::Sink;

use super::{Inner, Tracer};

/// A graph entry held back until its call is known to last long enough.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Pending {
    func: u64,
    ts: u64,
    /// The entry is held (set at entry, cleared at exit).
    live: bool,
    /// The entry was written (a callee lasted long enough).
    written: bool,
}

impl Inner {
    pub(super) fn write(&self, ts: u64, func: u64, b: u64, kind: u64) {
        self.rings.write(Record {
            ts,
            a: func,
            b,
            c: kind,
        });
    }

    /// A graph entry at `depth` passed the depth limit: record it, or hold
    /// it back (minimum duration).
    pub(super) fn entry(&self, func: usize, ts: u64, depth: u32) {
        if self.min_ticks == 0 {
            self.write(ts, func as u64, depth as u64, ENTRY);
            return;
        }
        if let Some(t) = self.per_thread() {
            // SAFETY: only this thread touches its pending stack, and never
            // reentrantly (tracing is suppressed while we run).
            let pending = unsafe { &mut *t.pending.get() };
            pending[depth as usize] = Pending {
                func: func as u64,
                ts,
                live: true,
                written: false,
            };
        }
    }

    /// A graph exit at `depth`, whose entry was at `entry_ticks`.
    fn exit_graph(&self, func: usize, entry_ticks: u64, now: u64, depth: u32) {
        if depth >= self.depth {
            return;
        }
        if self.min_ticks == 0 {
            self.write(now, func as u64, depth as u64, EXIT);
            return;
        }
        let Some(t) = self.per_thread() else { return };
        // SAFETY: as in `entry`.
        let pending = unsafe { &mut *t.pending.get() };
        let d = depth as usize;
        let p = pending[d];
        if !p.live || p.func != func as u64 {
            return; // entered before a start trigger, or not ours
        }
        pending[d].live = false;
        if p.written {
            self.write(now, func as u64, depth as u64, EXIT);
        } else if now.wrapping_sub(entry_ticks) >= self.min_ticks {
            // Long enough: its held-back callers first, then the call.
            for (k, q) in pending[..d].iter_mut().enumerate() {
                if q.live && !q.written {
                    self.write(q.ts, q.func, k as u64, ENTRY);
                    q.written = true;
                }
            }
            self.write(p.ts, p.func, depth as u64, ENTRY);
            self.write(now, func as u64, depth as u64, EXIT);
        }
    }
}

impl Sink for Inner {
    fn exit(&self, func: usize, entry_ticks: u64, now: u64, child_ticks: u64, depth: u32) {
        match self.tracer {
            Tracer::Graph => self.exit_graph(func, entry_ticks, now, depth),
            Tracer::Profile => {
                let total = now.wrapping_sub(entry_ticks);
                if let Some(t) = self.per_thread() {
                    if !t.profile.is_null() {
                        // SAFETY: the table after the thread's state, made
                        // with it for profile sessions.
                        let table = unsafe { &*t.profile };
                        table.add(func, total, total.saturating_sub(child_ticks));
                    }
                }
            }
            Tracer::Function => {}
        }
    }
}
