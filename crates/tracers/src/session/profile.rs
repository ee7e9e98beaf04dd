//! The profiler's per-thread tables, and the profile read from them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::*};

use livetrace_output::ProfileRow;

use super::Session;

/// The profiler's per-thread table: open addressing on the function
/// address, owned (written) by one thread, read by anyone. Zeroed memory
/// is an empty table.
#[repr(C)]
pub(super) struct ProfileTable {
    slots: [ProfileSlot; PROFILE_SLOTS],
    full: AtomicU64,
}

#[repr(C)]
struct ProfileSlot {
    func: AtomicU64,
    calls: AtomicU64,
    total: AtomicU64,
    self_ticks: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

const PROFILE_SLOTS: usize = 4096;

impl ProfileTable {
    /// Only the owning thread calls this; readers see each field
    /// atomically (plain loads and stores, no read-modify-write needed).
    pub(super) fn add(&self, func: usize, total: u64, self_ticks: u64) {
        let mut i = (func.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) % PROFILE_SLOTS;
        for _ in 0..PROFILE_SLOTS {
            let s = &self.slots[i];
            let f = s.func.load(Relaxed);
            if f == func as u64 || f == 0 {
                if f == 0 {
                    s.min.store(u64::MAX, Relaxed);
                    s.func.store(func as u64, Release);
                }
                s.calls.store(s.calls.load(Relaxed) + 1, Relaxed);
                s.total
                    .store(s.total.load(Relaxed).wrapping_add(total), Relaxed);
                s.self_ticks
                    .store(s.self_ticks.load(Relaxed).wrapping_add(self_ticks), Relaxed);
                if total < s.min.load(Relaxed) {
                    s.min.store(total, Relaxed);
                }
                if total > s.max.load(Relaxed) {
                    s.max.store(total, Relaxed);
                }
                return;
            }
            i = (i + 1) % PROFILE_SLOTS;
        }
        self.full.store(self.full.load(Relaxed) + 1, Relaxed);
    }
}

impl Session {
    /// The profile so far: one row per function, merged over threads.
    pub fn profile(&self) -> Vec<ProfileRow> {
        let clock = crate::clock();
        let epoch = self.inner.epoch;
        let base = clock.to_ns(epoch);
        let ns = |d: u64| clock.to_ns(epoch.wrapping_add(d)).saturating_sub(base);
        let mut by_func: HashMap<u64, ProfileRow> = HashMap::new();
        self.inner.each_thread(|t| {
            if t.profile.is_null() {
                return;
            }
            // SAFETY: the table after the thread's state.
            let table = unsafe { &*t.profile };
            for s in table.slots.iter() {
                let f = s.func.load(Acquire);
                if f == 0 {
                    continue;
                }
                let row = by_func.entry(f).or_insert_with(|| ProfileRow {
                    name: String::new(),
                    calls: 0,
                    total_ns: 0,
                    self_ns: 0,
                    min_ns: u64::MAX,
                    max_ns: 0,
                });
                row.calls += s.calls.load(Relaxed);
                row.total_ns += ns(s.total.load(Relaxed));
                row.self_ns += ns(s.self_ticks.load(Relaxed));
                row.min_ns = row.min_ns.min(ns(s.min.load(Relaxed)));
                row.max_ns = row.max_ns.max(ns(s.max.load(Relaxed)));
            }
        });
        let mut rows: Vec<ProfileRow> = by_func
            .into_iter()
            .map(|(f, mut r)| {
                r.name = crate::symbols::name_of(f as usize);
                r
            })
            .collect();
        rows.sort_by(|a, b| {
            b.total_ns
                .cmp(&a.total_ns)
                .then_with(|| a.name.cmp(&b.name))
        });
        rows
    }
}
