//! The quiescence wait: the user-space stand-in for the kernel's
//! `synchronize_rcu_tasks`. It returns once no thread can still be using
//! state unpublished before it began — or fails, bounded, saying which
//! threads it could not clear and why, and the caller then frees nothing.
//!
//! # When a thread is clear
//!
//! A thread that existed when the wait began is clear once it has been
//! seen, after the change, in a state from which it cannot reach old state:
//!
//! - *not inside a callback it entered before the change*. Each thread's
//!   `inside` byte is [`INSIDE`] while it runs a callback, a fast path or a
//!   [`crate::Suppress`]. The first probe of a thread marks that byte
//!   [`MARKED`] from the thread's own probe handler (no race: only the
//!   thread writes it); the thread stores [`OUTSIDE`] when that span ends
//!   and [`INSIDE`] when another begins, so a later probe that finds
//!   anything but `MARKED` proves the span seen first has ended. (Another
//!   wait may mark the thread's next span: this one then waits for that
//!   too, which is only longer, never wrong.)
//! - *not about to execute retired code*: neither its RIP nor any RIP saved
//!   in a signal frame on its stacks lies in the `rip` ranges (dying
//!   trampolines, critical code of fast paths, stub entries). A handler
//!   that interrupted a trampoline before its guard store and then ran for
//!   a while is found this way: its RIP is elsewhere, the trampoline's
//!   address is in the saved context.
//!
//! # Quiet
//!
//! A thread the kernel shows blocked — in a system call, or stopped — is
//! not signalled at all: it is observed through `/proc` (see
//! `livetrace_poke::world`), with its stacks read from here, and counts as
//! clear when it stayed blocked throughout, no saved RIP is in the `rip`
//! ranges, and no word of its stacks points into the `frames` ranges —
//! code that calls into callbacks or runs them under a guard (every
//! trampoline page, the return hooks' slow paths): such a return address
//! is what a thread blocked *inside* a callback has on its stack. A word
//! there that is only stale (a dead slot of a live frame) merely makes the
//! thread probed instead. So a thread waiting in `poll`, `nanosleep` or
//! `epoll_wait` never sees `EINTR` because of a trace starting or stopping.
//! Only threads not yet clear are looked at again, with a growing pause
//! between rounds.
//!
//! # Bounded
//!
//! The wait gives up after [`timeout`] (5 s, `LIVETRACE_QUIESCE_TIMEOUT_MS`,
//! [`set_quiescence_timeout`]): a thread stuck in a callback (blocked on a
//! lock the waiter holds), or one that cannot be probed (it blocks the
//! world signal with a raw system call, a debugger stopped it) makes it
//! fail with [`crate::Error::NotQuiescent`] naming the threads, and the
//! caller keeps everything it meant to free until a later wait succeeds.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use livetrace_poke::world::{self, Observe, Seen, Target};

use crate::thread::{inside_of, INSIDE, MARKED, OUTSIDE};

/// 0 means the default.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a quiescence wait tries before it fails.
pub fn timeout() -> Duration {
    match TIMEOUT_MS.load(SeqCst) {
        0 => std::env::var("LIVETRACE_QUIESCE_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis),
        ms => Duration::from_millis(ms),
    }
}

/// Sets how long quiescence waits try before they fail (at least 1 ms).
pub fn set_quiescence_timeout(t: Duration) {
    TIMEOUT_MS.store((t.as_millis() as u64).max(1), SeqCst);
}

/// A thread a quiescence wait could not clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Straggler {
    /// The thread.
    pub tid: i32,
    /// Why, in words.
    pub why: String,
}

impl std::fmt::Display for Straggler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread {}: {}", self.tid, self.why)
    }
}

/// What a wait looks for. Both sorted by start, non-overlapping.
pub(crate) struct Watch {
    /// No thread's RIP, or RIP saved in a signal frame, may be in these.
    pub rip: Vec<Range<usize>>,
    /// No word on a blocked thread's stacks may point into these.
    pub frames: Vec<Range<usize>>,
}

/// Sorted, merged ranges and the search in them: the engine's.
pub(crate) use livetrace_poke::world::{in_ranges, normalize_ranges as normalize};

/// Counts of what the waits did, since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuiesceStats {
    /// Waits completed.
    pub waits: u64,
    /// Waits that failed (timed out).
    pub failed: u64,
}

static WAITS: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// What the quiescence waits have done so far.
pub fn quiesce_stats() -> QuiesceStats {
    QuiesceStats {
        waits: WAITS.load(SeqCst),
        failed: FAILED.load(SeqCst),
    }
}

/// Waits until every other thread that exists now is clear (see the module
/// docs), or fails after [`timeout`] naming the threads that are not.
pub(crate) fn quiesce(tpoff: isize, watch: &Watch) -> Result<(), Vec<Straggler>> {
    let me = world::gettid();
    let limit = timeout();
    let deadline = Instant::now() + limit;
    // (tid, whether its inside byte has been marked by a probe of ours,
    // rounds it was seen blocked with what looks like a return address
    // into a callback caller).
    let mut pending: Vec<(i32, bool, u32)> = match world::threads() {
        Ok(t) => t
            .into_iter()
            .filter(|&t| t != me)
            .map(|t| (t, false, 0))
            .collect(),
        Err(e) => {
            FAILED.fetch_add(1, SeqCst);
            return Err(vec![Straggler {
                tid: 0,
                why: format!("cannot list the threads: {e}"),
            }]);
        }
    };
    let mut reasons: Vec<(i32, String)> = Vec::new();
    let mut round = 0u32;
    while !pending.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.clamp(Duration::from_millis(1), Duration::from_secs(1));
        // A thread seen blocked with what looks like a return address into
        // a callback caller several times running is probed instead: its
        // inside byte tells a real callback from a stale word.
        let (look, probe): (Vec<_>, Vec<_>) =
            pending.iter().copied().partition(|&(_, _, hits)| hits < 3);
        let mut obs = Vec::with_capacity(pending.len());
        for (group, passive) in [(&look, true), (&probe, false)] {
            if group.is_empty() {
                continue;
            }
            let targets: Vec<Target> = group
                .iter()
                .map(|&(tid, marked, _)| Target { tid, mark: !marked })
                .collect();
            let o = world::observe(
                &targets,
                &Observe {
                    tls_offset: tpoff,
                    mark: (INSIDE, MARKED),
                    passive,
                    stack_code: &watch.frames,
                    probe_scan: false,
                    timeout,
                },
            );
            match o {
                Ok(o) => obs.extend(o.into_iter().zip(group.iter().copied())),
                Err(e) => {
                    FAILED.fetch_add(1, SeqCst);
                    return Err(vec![Straggler {
                        tid: 0,
                        why: format!("cannot observe the threads: {e}"),
                    }]);
                }
            }
        }
        reasons.clear();
        let mut still = Vec::new();
        for (o, (tid, marked, hits)) in &obs {
            let (tid, marked, mut hits) = (*tid, *marked, *hits);
            let rip_hit = o.contexts.iter().find(|c| in_ranges(&watch.rip, c.rip));
            let why: Option<String> = match o.seen {
                Seen::Gone => None,
                Seen::Passive => {
                    if let Some(c) = rip_hit {
                        Some(format!(
                            "blocked, and will resume in retired code at {:#x}",
                            c.rip
                        ))
                    } else if let Some(h) = o.stack_hit {
                        hits += 1;
                        Some(format!("blocked inside a callback (return address {h:#x})"))
                    } else if !o.complete {
                        Some("blocked, and its stacks could not be read whole".into())
                    } else {
                        None
                    }
                }
                Seen::Probed => {
                    let inside = inside_of(o.word);
                    if marked && inside == MARKED || !marked && inside != OUTSIDE {
                        Some("inside a callback that began before the change".into())
                    } else if let Some(c) = rip_hit {
                        Some(format!("executing retired code at {:#x}", c.rip))
                    } else if !o.complete {
                        Some("its signal frames could not be read whole".into())
                    } else {
                        None
                    }
                }
                Seen::Unresponsive(why) => Some(why.to_string()),
            };
            if let Some(why) = why {
                // A probe marked it (or it was seen outside any callback,
                // so nothing of it needs marking any more).
                let marked = marked || o.seen == Seen::Probed;
                still.push((tid, marked, hits));
                reasons.push((tid, why));
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            FAILED.fetch_add(1, SeqCst);
            return Err(reasons
                .drain(..)
                .map(|(tid, why)| Straggler { tid, why })
                .collect());
        }
        round += 1;
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
    WAITS.fetch_add(1, SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sorted_and_merged() {
        assert_eq!(
            normalize(vec![10..20, 0..5, 15..30, 40..40, 30..35]),
            vec![0..5, 10..35]
        );
        let r = normalize(vec![10..20, 30..40]);
        assert!(in_ranges(&r, 10) && in_ranges(&r, 39));
        assert!(!in_ranges(&r, 20) && !in_ranges(&r, 9) && !in_ranges(&r, 40));
    }
}
