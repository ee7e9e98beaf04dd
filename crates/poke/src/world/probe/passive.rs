//! Observing a thread without signalling it, from `/proc` and its stacks,
//! while the kernel shows it blocked throughout; and why a thread that did
//! not answer did not.

use super::*;

/// The readable mappings of the process, sorted. Not merged: a thread's
/// stack is one mapping (its guard page below is another, unreadable), and
/// a scan that ran on into whatever is mapped above it would read
/// unrelated memory for return addresses.
pub(crate) fn regions() -> std::io::Result<Vec<Region>> {
    Ok(crate::maps::Maps::read()?
        .regions()
        .iter()
        .filter(|r| r.prot & libc::PROT_READ != 0)
        .map(|r| Region {
            start: r.start,
            end: r.end,
        })
        .collect())
}

/// A caller's code ranges, checked against every stack word.
pub(super) struct InRanges<'a> {
    pub(super) ranges: &'a [Range<usize>],
    pub(super) hit: Option<usize>,
}

impl WordVisitor for InRanges<'_> {
    fn word(&mut self, _: usize, v: usize) -> bool {
        if self.ranges.is_empty() {
            return true;
        }
        let i = self.ranges.partition_point(|r| r.end <= v);
        if self.ranges.get(i).is_some_and(|r| r.start <= v) {
            self.hit = Some(v);
            return false;
        }
        true
    }
}

/// Observes `tid` without signalling it, if it is blocked in the kernel
/// throughout.
pub(super) fn passive(
    tid: i32,
    regions: &[Region],
    restorers: &[usize],
    stack_code: &[Range<usize>],
) -> Option<Observation> {
    let b = proc::blocked(tid)?;
    let mut out = [Context::default(); MAX_CONTEXTS];
    let mut v = InRanges {
        ranges: stack_code,
        hit: None,
    };
    let w = frames::walk(
        Context {
            rip: b.pc,
            rsp: b.sp,
        },
        regions,
        None,
        restorers,
        &mut v,
        &mut out,
    );
    if !b.still() {
        return None;
    }
    PASSIVE_SEEN.fetch_add(1, Relaxed);
    Some(Observation {
        tid,
        seen: Seen::Passive,
        word: 0,
        contexts: out[..w.n].to_vec(),
        complete: w.complete || v.hit.is_some(),
        stack_hit: v.hit,
    })
}

/// Why thread `tid` does not answer, as far as `/proc` tells.
pub(crate) fn reason(tid: i32) -> Unresponsive {
    let sig = wsig::signal();
    if proc::blocked_signals(tid).is_some_and(|m| m & (1u64 << (sig - 1)) != 0) {
        return Unresponsive::BlocksSignal;
    }
    match proc::state(tid) {
        Some(b'T' | b't') => Unresponsive::Stopped,
        Some(b'D') => Unresponsive::DiskSleep,
        _ => Unresponsive::Unknown,
    }
}
