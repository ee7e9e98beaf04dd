//! "Is any thread inside these ranges?" — asked until the answer is no.
//!
//! What prologue relocation needs between its park and jump steps, and
//! before it frees a detour: no thread may be executing inside the ranges,
//! about to resume inside them from a signal frame (a handler interrupted
//! it there), or hold a return address into them (it called something from
//! there, and will come back). [`wait_outside`] observes every other thread
//! with [`observe`](super::observe): blocked ones passively (their stacks
//! read from here, no signal, so their system calls never see `EINTR`),
//! running ones with a probe whose handler scans its own stacks. A thread
//! is clear when its whole state was read and nothing of it points into a
//! range; only threads not yet clear are looked at again, with a growing
//! pause, until the timeout.
//!
//! A word on a stack that merely *looks* like a return address into a
//! range (a stale slot) keeps its thread pending: the answer errs on the
//! side of waiting, and the caller's timeout bounds it.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::probe::{observe, Observe, Seen, Target};

/// A thread a wait could not clear, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inside {
    /// The thread (0: the threads could not be listed or observed).
    pub tid: i32,
    /// Why, in words.
    pub why: String,
}

impl std::fmt::Display for Inside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread {}: {}", self.tid, self.why)
    }
}

/// Whether `a` lies in one of `ranges`, sorted and merged as
/// [`normalize_ranges`] leaves them (a binary search).
pub fn in_ranges(ranges: &[Range<usize>], a: usize) -> bool {
    let i = ranges.partition_point(|r| r.end <= a);
    ranges.get(i).is_some_and(|r| r.start <= a)
}

/// Address ranges sorted by start and merged where they touch or overlap,
/// empty ones dropped: what [`in_ranges`] searches (the engine's waits and
/// the tracing core's quiescence share it).
pub fn normalize_ranges(ranges: impl IntoIterator<Item = Range<usize>>) -> Vec<Range<usize>> {
    let mut v: Vec<Range<usize>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
    v.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Waits until no other thread of the process has its RIP, a RIP saved in
/// a signal frame, or a word of its stacks inside `ranges`; returns the
/// rounds of observation it took. Fails after `timeout` naming the threads
/// still inside (or that could not be read whole). The calling thread is
/// not looked at.
pub fn wait_outside(ranges: &[Range<usize>], timeout: Duration) -> Result<u32, Vec<Inside>> {
    let ranges = normalize_ranges(ranges.iter().cloned());
    // Stack words are looked for one byte in: a return address is never
    // the first byte of a range these waits are given (the byte after a
    // function's entry, where no call can end; a detour's first byte, its
    // site, which nothing returns to), while the start of a page of
    // detours is just where other memory ends — a thread stack's upper
    // bound, held in many of its words.
    let words = normalize_ranges(
        ranges
            .iter()
            .filter(|r| r.end > r.start + 1)
            .map(|r| r.start + 1..r.end),
    );
    let me = super::gettid();
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<i32> = match super::threads() {
        Ok(t) => t.into_iter().filter(|&t| t != me).collect(),
        Err(e) => {
            return Err(vec![Inside {
                tid: 0,
                why: format!("cannot list the threads: {e}"),
            }])
        }
    };
    let mut round = 0u32;
    loop {
        round += 1;
        if pending.is_empty() {
            return Ok(round);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let targets: Vec<Target> = pending
            .iter()
            .map(|&tid| Target { tid, mark: false })
            .collect();
        let obs = observe(
            &targets,
            &Observe {
                // fs:0 is the thread pointer itself: a word every thread has.
                tls_offset: 0,
                mark: (0, 0),
                passive: true,
                stack_code: &words,
                probe_scan: true,
                timeout: remaining.clamp(Duration::from_millis(1), Duration::from_secs(1)),
            },
        )
        .map_err(|e| {
            vec![Inside {
                tid: 0,
                why: format!("cannot observe the threads: {e}"),
            }]
        })?;
        let mut still = Vec::new();
        for o in obs {
            let why = match o.seen {
                Seen::Gone => None,
                Seen::Passive | Seen::Probed => {
                    if let Some(c) = o.contexts.iter().find(|c| in_ranges(&ranges, c.rip)) {
                        Some(format!("executing (or resuming) at {:#x}", c.rip))
                    } else if let Some(h) = o.stack_hit {
                        Some(format!("its stack holds the address {h:#x}"))
                    } else if !o.complete {
                        Some("its stacks could not be read whole".to_string())
                    } else {
                        None
                    }
                }
                Seen::Unresponsive(u) => Some(u.to_string()),
            };
            if let Some(why) = why {
                still.push(Inside { tid: o.tid, why });
            }
        }
        if still.is_empty() {
            return Ok(round);
        }
        if Instant::now() >= deadline {
            return Err(still);
        }
        pending = still.iter().map(|s| s.tid).collect();
        let pause = match round {
            0..=3 => Duration::ZERO,
            r => Duration::from_micros(50 << (r - 4).min(7)),
        };
        if pause.is_zero() {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_match() {
        let r = normalize_ranges([30..40, 10..20, 15..25, 50..50]);
        assert_eq!(r, vec![10..25, 30..40]);
        assert!(in_ranges(&r, 10) && in_ranges(&r, 24) && in_ranges(&r, 39));
        assert!(!in_ranges(&r, 25) && !in_ranges(&r, 9) && !in_ranges(&r, 40));
    }

    #[test]
    fn a_thread_parked_in_a_range_is_waited_for() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        static GO: AtomicBool = AtomicBool::new(false);
        #[inline(never)]
        fn spin_here() {
            while !GO.load(SeqCst) {
                std::hint::spin_loop();
            }
        }
        let f = spin_here as *const () as usize;
        let h = std::thread::spawn(spin_here);
        std::thread::sleep(Duration::from_millis(20));
        // The spinning thread's RIP is in its function (a few hundred
        // bytes is plenty for a loop this small).
        let err = wait_outside(
            std::slice::from_ref(&(f..f + 256)),
            Duration::from_millis(50),
        )
        .unwrap_err();
        // Seen executing there, or (when the probe found it between two
        // samples) through an address of the range on its stack.
        assert!(
            err.iter()
                .any(|i| i.why.contains("executing") || i.why.contains("stack holds")),
            "{err:?}"
        );
        GO.store(true, SeqCst);
        h.join().unwrap();
        assert!(wait_outside(std::slice::from_ref(&(f..f + 256)), Duration::from_secs(5)).is_ok());
    }
}
