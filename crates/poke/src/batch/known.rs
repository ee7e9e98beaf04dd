//! The known set: every site any batch has ever contained, published to
//! the trap handler (`trap::KNOWN`) as a sorted array, replaced under the
//! batch lock and freed after a drain.

use super::*;

/// Adds the batch's sites to the known set, publishing a new sorted array if
/// any is new. Returns the array it replaced, to be freed after a drain.
pub(super) fn publish_known(entries: &[Entry]) -> Option<Box<KnownSet>> {
    let cur = trap::KNOWN.load(SeqCst);
    let known: &[usize] = if cur.is_null() {
        &[]
    } else {
        // SAFETY: the known set is replaced only here, under LOCK, so the
        // current one is alive while we hold the lock.
        unsafe { &(*(cur as *const KnownSet)).sites }
    };
    // Both sorted. The common case, every site already known, is one tight
    // merge pass that allocates nothing.
    let mut i = 0;
    let all_known = entries.iter().all(|e| {
        i += known[i..].iter().take_while(|&&k| k < e.site).count();
        known.get(i) == Some(&e.site)
    });
    if all_known {
        return None;
    }
    let mut merged = Vec::with_capacity(known.len() + entries.len());
    let mut k = known.iter().copied().peekable();
    for s in entries.iter().map(|e| e.site) {
        while let Some(x) = k.next_if(|&x| x < s) {
            merged.push(x);
        }
        k.next_if_eq(&s);
        merged.push(s);
    }
    merged.extend(k);
    let new = Box::new(KnownSet::new(merged));
    let old = trap::KNOWN.swap(Box::into_raw(new) as *mut _, SeqCst);
    // SAFETY: `old` came from Box::into_raw in an earlier call (or is null).
    (!old.is_null()).then(|| unsafe { Box::from_raw(old as *mut KnownSet) })
}

/// Frees a replaced known set once no handler can be reading it.
pub(super) fn retire_known(old: Option<Box<KnownSet>>) {
    if old.is_some() {
        trap::drain();
    }
    drop(old);
}

/// The known set: its `Published` header first, so a pointer to the whole is
/// a pointer to what the handler reads.
#[repr(C)]
pub(super) struct KnownSet {
    header: Published<usize>,
    sites: Vec<usize>,
}

impl KnownSet {
    pub(super) fn new(sites: Vec<usize>) -> KnownSet {
        KnownSet {
            header: Published {
                ptr: sites.as_ptr(),
                len: sites.len(),
            },
            sites,
        }
    }
}
