//! The parked sets a relocation batch publishes to the trap handler, built
//! before it writes anything and retired after a drain.

use super::*;

/// The parked sets a relocation batch publishes: the current one plus the
/// sites it parks (before its first int3), and that minus the sites whose
/// int3 it replaces (after it). Built before the batch writes anything.
pub(super) struct ParkedSets {
    /// The two new sets (null when the batch parks, or unparks, nothing),
    /// owned here until published, then by `trap::PARKED`.
    sets: [*mut ParkedSet; 2],
    /// What each publication replaced (null: not published yet), freed in
    /// `retire`, after the batch's drain.
    replaced: std::cell::Cell<[Option<*mut Published<Parked>>; 2]>,
}

/// A published parked set: its header first, so a pointer to the whole is
/// a pointer to what the handler reads.
#[repr(C)]
struct ParkedSet {
    header: Published<Parked>,
    list: Vec<Parked>,
}

impl ParkedSet {
    fn raw(mut list: Vec<Parked>) -> *mut ParkedSet {
        list.sort_unstable_by_key(|p| p.site);
        Box::into_raw(Box::new(ParkedSet {
            header: Published {
                ptr: list.as_ptr(),
                len: list.len(),
            },
            list,
        }))
    }
}

impl ParkedSets {
    pub(super) fn new(registry: &Registry, relocs: &[RelocStep]) -> ParkedSets {
        // `relocs` is sorted by site (and holds each site once).
        let unparks = |site: usize| {
            relocs
                .binary_search_by_key(&site, |r| r.site)
                .is_ok_and(|i| matches!(relocs[i].step, Step::Jump | Step::Abort))
        };
        let parks = relocs.iter().any(|r| r.step == Step::Park);
        let mut before = registry.parked();
        before.extend(
            relocs
                .iter()
                .filter(|r| r.step == Step::Park)
                .map(|r| Parked {
                    site: r.site,
                    detour: r.detour,
                }),
        );
        let any_unpark = before.iter().any(|p| unparks(p.site));
        let after: Vec<Parked> = before
            .iter()
            .filter(|p| !unparks(p.site))
            .copied()
            .collect();
        ParkedSets {
            sets: [
                if parks {
                    ParkedSet::raw(before)
                } else {
                    std::ptr::null_mut()
                },
                if any_unpark {
                    ParkedSet::raw(after)
                } else {
                    std::ptr::null_mut()
                },
            ],
            replaced: std::cell::Cell::new([None; 2]),
        }
    }

    fn publish(&self, which: usize) {
        let set = self.sets[which];
        if set.is_null() {
            return;
        }
        let old = trap::PARKED.swap(set as *mut Published<Parked>, SeqCst);
        trap::SEQ.fetch_add(1, SeqCst);
        let mut r = self.replaced.get();
        r[which] = Some(old);
        self.replaced.set(r);
    }

    pub(super) fn publish_before(&self) {
        self.publish(0);
    }

    pub(super) fn publish_after(&self) {
        self.publish(1);
    }

    /// After the batch's drain: frees what the publications replaced (no
    /// handler can read it any more) and any set never published.
    pub(super) fn retire(self) {
        let replaced = self.replaced.get();
        for (which, set) in self.sets.into_iter().enumerate() {
            if !set.is_null() && replaced[which].is_none() {
                // SAFETY: from ParkedSet::raw, never published.
                drop(unsafe { Box::from_raw(set) });
            }
        }
        for old in replaced.into_iter().flatten() {
            if !old.is_null() {
                // SAFETY: every parked set ever published came from
                // `ParkedSet::raw` (its header first); this one was
                // replaced by this batch, which drained afterwards.
                drop(unsafe { Box::from_raw(old as *mut ParkedSet) });
            }
        }
    }
}
