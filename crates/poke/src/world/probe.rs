//! Observing threads: where each one is executing, what it will return
//! into, and a word of its thread-local storage — without signalling the
//! ones the kernel already shows asleep.
//!
//! [`observe`] takes the threads to look at. A thread blocked in the kernel
//! (in a system call, or stopped) is observed *passively* when the caller
//! allows it: its resume address and stack pointer come from `/proc`, its
//! stacks are read from here (every word is offered to the caller's
//! ranges, and the contexts saved in signal frames are decoded), and the
//! observation counts only if the thread provably did not run meanwhile
//! ([`proc::Blocked::still`]). It is not interrupted, so a `poll`,
//! `nanosleep` or `epoll_wait` it is in never returns `EINTR` because of
//! us. Every other thread is *probed*: sent the world signal, whose handler
//! records the interrupted context, walks its own stacks for contexts saved
//! in signal frames, reads the word at the caller's thread-pointer offset
//! and, when asked, marks a byte there (see [`Observe::mark`]).
//!
//! Threads are re-observed only when the caller asks again, and only those
//! it names; a thread that does not answer within the timeout is reported
//! as such with the reason `/proc` gives (it blocks the world signal, it is
//! stopped), never silently taken as quiescent.
//!
//! One request is in flight at a time (a lock). The request lives on the
//! caller's heap and is published in [`ACTIVE`]; a handler answers only if
//! the token it carries is the published one, counts itself in flight
//! while it writes, and the caller unpublishes and drains before the
//! request goes away.
//!
//! This module holds the request and [`observe`]; its children hold the
//! probed thread's side (`handler`, `tls`), passive observation
//! (`passive`), and [`sample_threads`] on top (`sample`).

mod handler;
mod passive;
mod sample;
mod tls;

pub(crate) use handler::answer;
use passive::{passive, InRanges};
pub(crate) use passive::{reason, regions};
pub use sample::{sample_threads, sample_threads_marking, ThreadSample};
pub use tls::tls_offset_of;
use tls::{mark_tls_byte, tls_word};

use std::ops::Range;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use super::frames::{self, Context, Region, WordVisitor, MAX_CONTEXTS};
use super::proc;
use super::signal::{self as wsig, TOKEN_TAG};

/// Handlers between their first and last access to a published request.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// The request being answered, or null.
static ACTIVE: AtomicPtr<Request> = AtomicPtr::new(std::ptr::null_mut());

/// In a fork child: handlers of other threads of the parent were copied
/// counted in flight.
pub(crate) fn forget_in_flight() {
    IN_FLIGHT.store(0, SeqCst);
    ACTIVE.store(std::ptr::null_mut(), SeqCst);
}

static PROBES_SENT: AtomicU64 = AtomicU64::new(0);
static PASSIVE_SEEN: AtomicU64 = AtomicU64::new(0);

/// What the world module has done since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorldStats {
    /// Probes (world signals) sent to threads.
    pub probes_sent: u64,
    /// Threads observed without a signal, blocked in the kernel.
    pub passive: u64,
    /// Stop-the-world rounds completed (everyone released).
    pub stops: u64,
}

/// The world module's counts so far.
pub fn world_stats() -> WorldStats {
    WorldStats {
        probes_sent: PROBES_SENT.load(Relaxed),
        passive: PASSIVE_SEEN.load(Relaxed),
        stops: super::stop::STOPS.load(Relaxed),
    }
}

/// How to observe.
#[derive(Clone, Debug)]
pub struct Observe<'a> {
    /// Thread-pointer offset of a static-TLS word of at least 8 bytes (from
    /// [`crate::tls_offset_of`]); probed threads report it.
    pub tls_offset: isize,
    /// `(from, to)`: a probed thread whose target asks for it turns the byte
    /// at `tls_offset` from `from` into `to` in its own handler, after
    /// reading the word (no race: only the thread itself writes it). See
    /// [`crate::sample_threads_marking`].
    pub mark: (u8, u8),
    /// Observe blocked threads passively, without a signal.
    pub passive: bool,
    /// For passive observations: code no word of the thread's live stacks
    /// may point into (return addresses into code it is still running);
    /// sorted. The first such word is reported in
    /// [`Observation::stack_hit`].
    pub stack_code: &'a [Range<usize>],
    /// Probed threads, too, check every word of their stacks against
    /// `stack_code` (a return address into code matters for it even while
    /// the thread runs elsewhere).
    pub probe_scan: bool,
    /// How long threads get to answer a probe.
    pub timeout: Duration,
}

/// A thread to observe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The thread.
    pub tid: i32,
    /// Mark its byte if it is probed (see [`Observe::mark`]).
    pub mark: bool,
}

/// How a thread was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// It has exited.
    Gone,
    /// Blocked in the kernel throughout the observation, not signalled.
    Passive,
    /// It answered a probe.
    Probed,
    /// It did not answer within the timeout.
    Unresponsive(Unresponsive),
}

/// Why a thread did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresponsive {
    /// It blocks the world signal.
    BlocksSignal,
    /// It is stopped (job control or a debugger).
    Stopped,
    /// It is in uninterruptible sleep.
    DiskSleep,
    /// Nothing `/proc` shows explains it.
    Unknown,
}

impl std::fmt::Display for Unresponsive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unresponsive::BlocksSignal => "it blocks livetrace's world signal",
            Unresponsive::Stopped => "it is stopped (job control or a debugger)",
            Unresponsive::DiskSleep => "it is in uninterruptible sleep",
            Unresponsive::Unknown => "it did not answer",
        })
    }
}

/// One thread's observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The thread.
    pub tid: i32,
    /// How it was seen.
    pub seen: Seen,
    /// Probed: the word at the TLS offset, before any marking.
    pub word: u64,
    /// Where it is and what it will resume: the current (or, passively,
    /// the system call's return) context first, then every context saved
    /// in a signal frame on its stacks.
    pub contexts: Vec<Context>,
    /// Every stack involved was walked to its end (an incomplete walk
    /// proves nothing about what was not read).
    pub complete: bool,
    /// The first word of its stacks found inside `stack_code` (passive
    /// observations, and probes with [`Observe::probe_scan`]).
    pub stack_hit: Option<usize>,
}

struct Slot {
    tid: AtomicI32,
    mark: AtomicU8,
    done: AtomicU8,
    word: AtomicU64,
    n: AtomicUsize,
    complete: AtomicU8,
    hit: AtomicUsize,
    rips: [AtomicUsize; MAX_CONTEXTS],
    rsps: [AtomicUsize; MAX_CONTEXTS],
}

#[repr(align(16))]
struct Request {
    slots: Vec<Slot>,
    tls_offset: isize,
    mark: (u8, u8),
    /// Give the protected signals back to the thread's mask.
    unblock: bool,
    regions: Vec<Region>,
    restorers: [usize; 8],
    nrestorers: usize,
    /// Code no stack word may point into (empty: no scan).
    scan: Vec<Range<usize>>,
}

fn token_of(req: &Request) -> usize {
    req as *const Request as usize | TOKEN_TAG
}

/// Observes `targets` (threads of this process other than the caller; the
/// caller, if named, is reported probed at the call with no context).
pub fn observe(targets: &[Target], o: &Observe<'_>) -> Result<Vec<Observation>, crate::Error> {
    let _guard = crate::lock::WORLD.lock();
    wsig::install()?;
    let me = proc::gettid();
    let regions = regions().map_err(crate::Error::Io)?;
    let mut restorers = [0usize; 8];
    let nrestorers = frames::restorers(&mut restorers);
    let mut result: Vec<Option<Observation>> = vec![None; targets.len()];
    let mut to_probe = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if t.tid == me {
            result[i] = Some(Observation {
                tid: me,
                seen: Seen::Probed,
                word: tls_word(o.tls_offset),
                contexts: Vec::new(),
                complete: true,
                stack_hit: None,
            });
            continue;
        }
        if o.passive {
            // A thread that woke and blocked again while it was being read
            // is read again: a probe is for threads seen running, since a
            // signal that lands as a thread enters a blocking call makes
            // that call fail with EINTR.
            let mut seen = None;
            for _ in 0..4 {
                seen = passive(t.tid, &regions, &restorers[..nrestorers], o.stack_code);
                if seen.is_some() || proc::blocked(t.tid).is_none() {
                    break;
                }
            }
            if let Some(obs) = seen {
                result[i] = Some(obs);
                continue;
            }
        }
        to_probe.push(i);
    }
    if !to_probe.is_empty() {
        let req = Box::new(Request {
            slots: to_probe
                .iter()
                .map(|&i| Slot {
                    tid: AtomicI32::new(targets[i].tid),
                    mark: AtomicU8::new(u8::from(targets[i].mark)),
                    done: AtomicU8::new(0),
                    word: AtomicU64::new(0),
                    n: AtomicUsize::new(0),
                    complete: AtomicU8::new(0),
                    hit: AtomicUsize::new(0),
                    rips: [const { AtomicUsize::new(0) }; MAX_CONTEXTS],
                    rsps: [const { AtomicUsize::new(0) }; MAX_CONTEXTS],
                })
                .collect(),
            tls_offset: o.tls_offset,
            mark: o.mark,
            unblock: false,
            regions,
            restorers,
            nrestorers,
            scan: if o.probe_scan {
                o.stack_code.to_vec()
            } else {
                Vec::new()
            },
        });
        let answers = run(&req, o.timeout);
        for (k, &i) in to_probe.iter().enumerate() {
            let s = &req.slots[k];
            result[i] = Some(match answers[k] {
                Answer::Done => {
                    let n = s.n.load(SeqCst);
                    Observation {
                        tid: targets[i].tid,
                        seen: Seen::Probed,
                        word: s.word.load(SeqCst),
                        contexts: (0..n)
                            .map(|j| Context {
                                rip: s.rips[j].load(SeqCst),
                                rsp: s.rsps[j].load(SeqCst),
                            })
                            .collect(),
                        complete: s.complete.load(SeqCst) != 0,
                        stack_hit: match s.hit.load(SeqCst) {
                            0 => None,
                            h => Some(h),
                        },
                    }
                }
                Answer::Gone => Observation {
                    tid: targets[i].tid,
                    seen: Seen::Gone,
                    word: 0,
                    contexts: Vec::new(),
                    complete: true,
                    stack_hit: None,
                },
                Answer::Silent => Observation {
                    tid: targets[i].tid,
                    seen: Seen::Unresponsive(reason(targets[i].tid)),
                    word: 0,
                    contexts: Vec::new(),
                    complete: false,
                    stack_hit: None,
                },
            });
        }
    }
    Ok(result
        .into_iter()
        .map(|r| r.expect("every target observed"))
        .collect())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Done,
    Gone,
    Silent,
}

/// Publishes `req`, signals its threads, waits for their answers (or their
/// exit, or the timeout), unpublishes and drains.
fn run(req: &Request, timeout: Duration) -> Vec<Answer> {
    let token = token_of(req);
    ACTIVE.store(req as *const Request as *mut Request, SeqCst);
    let mut answers = vec![Answer::Silent; req.slots.len()];
    for (i, s) in req.slots.iter().enumerate() {
        PROBES_SENT.fetch_add(1, Relaxed);
        if !wsig::send(s.tid.load(SeqCst), token) {
            answers[i] = Answer::Gone; // exited since it was listed
        }
    }
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let mut pending = false;
        for (i, s) in req.slots.iter().enumerate() {
            if answers[i] == Answer::Silent {
                if s.done.load(SeqCst) != 0 {
                    answers[i] = Answer::Done;
                } else {
                    pending = true;
                }
            }
        }
        if !pending {
            break;
        }
        if start.elapsed() > timeout {
            for (i, s) in req.slots.iter().enumerate() {
                if answers[i] == Answer::Silent && proc::thread_gone(s.tid.load(SeqCst)) {
                    answers[i] = Answer::Gone;
                }
            }
            break;
        }
        spins += 1;
        if spins < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    ACTIVE.store(std::ptr::null_mut(), SeqCst);
    while IN_FLIGHT.load(SeqCst) != 0 {
        std::thread::yield_now();
    }
    // A thread that answered after the timeout check still counts.
    for (i, s) in req.slots.iter().enumerate() {
        if answers[i] == Answer::Silent && s.done.load(SeqCst) != 0 {
            answers[i] = Answer::Done;
        }
    }
    answers
}

/// Gives thread `tid` SIGTRAP and the world signal back (its handler edits
/// the mask its signal frame restores). Returns whether it answered.
pub(crate) fn unblock(tid: i32) -> bool {
    let _guard = crate::lock::WORLD.lock();
    if wsig::install().is_err() {
        return false;
    }
    let req = Box::new(Request {
        slots: vec![Slot {
            tid: AtomicI32::new(tid),
            mark: AtomicU8::new(0),
            done: AtomicU8::new(0),
            word: AtomicU64::new(0),
            n: AtomicUsize::new(0),
            complete: AtomicU8::new(0),
            hit: AtomicUsize::new(0),
            rips: [const { AtomicUsize::new(0) }; MAX_CONTEXTS],
            rsps: [const { AtomicUsize::new(0) }; MAX_CONTEXTS],
        }],
        tls_offset: 0,
        mark: (0, 0),
        unblock: true,
        regions: Vec::new(),
        restorers: [0; 8],
        nrestorers: 0,
        scan: Vec::new(),
    });
    run(&req, Duration::from_millis(200))[0] == Answer::Done
}
