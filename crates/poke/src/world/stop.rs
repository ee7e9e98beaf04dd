//! Stopping the world: every other thread held in the world signal's
//! handler while the caller writes code no thread may be inside of.
//!
//! Rewriting several instructions at once (GCC's five one-byte NOPs into
//! one 5-byte NOP; a relocated prologue) is safe only if no thread is
//! between two of the old instructions: resumed there, it would execute
//! the middle of a new one. So every other thread is sent the world signal
//! and held in its handler, and each one's whole interrupted state is
//! checked before anything is written: neither the RIP its signal
//! interrupted nor any RIP saved in a signal frame on its stacks (a handler
//! that itself interrupted the code) may lie in the caller's ranges. Return
//! addresses do not matter for this: code that calls nothing in those
//! ranges cannot be returned into.
//!
//! A busy round releases everyone and tries again a little later; after
//! [`MAX_ATTEMPTS`] it refuses. A thread that does not reach the handler in
//! time (it blocks the signal, or is stopped by a debugger) makes the whole
//! stop refuse: nothing is written without every thread accounted for.
//!
//! While the world is stopped the controller allocates nothing and takes
//! no lock a stopped thread could hold (malloc's): buffers are reserved
//! beforehand and threads are listed with raw `getdents64`. The caller's
//! writer runs under the same rule, and every core is serialised with
//! `membarrier` before anyone is released. A held thread blocks every
//! signal, so no handler of the program runs on it meanwhile.

use std::ops::Range;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use super::frames::{self, Context, Region, MAX_CONTEXTS};
use super::proc;
use super::signal::{self as wsig, TOKEN_TAG};

/// Rounds tried before a stop is refused because some thread keeps being
/// inside the caller's ranges.
pub const MAX_ATTEMPTS: u32 = 25;
/// Threads that can be stopped at once.
pub const MAX_THREADS: usize = 4096;
/// How long every thread gets to reach the handler.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(2);

const FUTEX_WAIT_PRIVATE: libc::c_int = 128;
const FUTEX_WAKE_PRIVATE: libc::c_int = 129;

pub(crate) static STOPS: AtomicU64 = AtomicU64::new(0);

/// Odd while a stop is in progress; bumped to even to release everyone.
static GEN: AtomicU32 = AtomicU32::new(0);
/// Threads currently inside the handler, stale deliveries included.
static IN_HANDLER: AtomicU32 = AtomicU32::new(0);
/// Slots handed out this round.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// The current request (its regions and restorers), or null.
static ACTIVE: AtomicPtr<Request> = AtomicPtr::new(std::ptr::null_mut());

struct Slot {
    gen: AtomicU32,
    tid: AtomicI32,
    n: AtomicUsize,
    complete: AtomicU32,
    rips: [AtomicUsize; MAX_CONTEXTS],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    gen: AtomicU32::new(0),
    tid: AtomicI32::new(0),
    n: AtomicUsize::new(0),
    complete: AtomicU32::new(0),
    rips: [const { AtomicUsize::new(0) }; MAX_CONTEXTS],
};
static SLOTS: [Slot; MAX_THREADS] = [EMPTY_SLOT; MAX_THREADS];

/// In a fork child: nobody is held, no handler is in flight.
pub(crate) fn forget_in_flight() {
    IN_HANDLER.store(0, SeqCst);
    ACTIVE.store(std::ptr::null_mut(), SeqCst);
    if GEN.load(SeqCst) & 1 == 1 {
        GEN.fetch_add(1, SeqCst);
    }
}

#[repr(align(16))]
struct Request {
    regions: Vec<Region>,
    restorers: [usize; 8],
    nrestorers: usize,
}

fn token_of(req: &Request) -> usize {
    req as *const Request as usize | TOKEN_TAG
}

/// One thread found inside the caller's ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    /// The thread.
    pub tid: i32,
    /// The address found: its RIP, or a RIP saved in a signal frame.
    pub addr: usize,
    /// Whether `addr` was the thread's RIP (else a saved one).
    pub in_rip: bool,
}

/// Why stopping the world did not happen (nothing was written).
#[derive(Debug)]
#[non_exhaustive]
pub enum StopError {
    /// Some thread kept being inside the ranges for every attempt.
    Busy(Busy),
    /// A thread did not reach the handler in time.
    NotStopped {
        /// The thread.
        tid: i32,
        /// Why, as far as `/proc` tells.
        why: super::probe::Unresponsive,
    },
    /// More threads than the stop machinery can hold.
    TooManyThreads,
    /// A thread's state could not be fully read (too deeply nested signal
    /// frames, a stack in no mapping), every attempt.
    Unverifiable {
        /// The thread.
        tid: i32,
    },
    /// The machinery could not be set up.
    Setup(String),
}

impl std::fmt::Display for StopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopError::Busy(b) => write!(
                f,
                "thread {} stays inside the code being rewritten ({} {:#x}) after {MAX_ATTEMPTS} attempts",
                b.tid,
                if b.in_rip { "rip" } else { "a context saved in a signal frame at" },
                b.addr
            ),
            StopError::NotStopped { tid, why } => write!(
                f,
                "thread {tid} did not stop within {ARRIVAL_TIMEOUT:?}: {why} (signal {})",
                wsig::signal()
            ),
            StopError::TooManyThreads => write!(f, "more than {MAX_THREADS} threads"),
            StopError::Unverifiable { tid } => {
                write!(f, "the state of thread {tid} could not be read completely")
            }
            StopError::Setup(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for StopError {}

/// What a successful stop took.
#[derive(Clone, Debug, Default)]
pub struct StopReport {
    /// Rounds tried (1 when nobody was in the way).
    pub attempts: u32,
    /// Threads held in the successful round.
    pub stopped: usize,
    /// Threads found in the way in the failed rounds.
    pub busy: Vec<Busy>,
}

/// Called by the world signal's handler: holds the thread if `token` is
/// the current stop's.
pub(crate) fn hold(token: usize, uc: *mut libc::ucontext_t) {
    IN_HANDLER.fetch_add(1, SeqCst);
    let req = ACTIVE.load(SeqCst);
    let g = GEN.load(SeqCst);
    // SAFETY: the request is unpublished only after IN_HANDLER drained to
    // zero, and we are counted.
    if g & 1 == 1 && !req.is_null() && token_of(unsafe { &*req }) == token {
        // Nothing of the program may run on this thread while it is held.
        let _blocked = crate::signals::AllBlocked::new();
        // SAFETY: as above.
        let req = unsafe { &*req };
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO
        // handler; it lives on this handler's frame.
        let start = unsafe {
            let gr = &(*uc).uc_mcontext.gregs;
            Context {
                rip: gr[libc::REG_RIP as usize] as usize,
                rsp: gr[libc::REG_RSP as usize] as usize,
            }
        };
        let mut out = [Context::default(); MAX_CONTEXTS];
        let w = frames::walk(
            start,
            &req.regions,
            None,
            &req.restorers[..req.nrestorers],
            &mut frames::NoWords,
            &mut out,
        );
        let idx = CLAIMED.fetch_add(1, SeqCst);
        if let Some(slot) = SLOTS.get(idx) {
            slot.tid.store(proc::gettid(), SeqCst);
            for (i, c) in out[..w.n].iter().enumerate() {
                slot.rips[i].store(c.rip, SeqCst);
            }
            slot.n.store(w.n, SeqCst);
            slot.complete.store(u32::from(w.complete), SeqCst);
            slot.gen.store(g, SeqCst);
        }
        while GEN.load(SeqCst) == g {
            // SAFETY: futex wait on a static word; returns at once if the
            // value has already changed, spuriously on signals.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    GEN.as_ptr(),
                    FUTEX_WAIT_PRIVATE,
                    g,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
    }
    IN_HANDLER.fetch_sub(1, SeqCst);
}

/// Everything reserved before the world stops.
struct Scratch {
    dirents: Vec<u8>,
    tids: Vec<i32>,
    signaled: Vec<(i32, bool)>,
}

enum Round<R> {
    Done(R, usize),
    Busy(Busy),
    Unverifiable(i32),
    Failed(StopError),
}

/// Stops every other thread, checks that none is (or will resume) inside
/// any of `ranges` (sorted, half-open), runs `write` — which must not
/// allocate or take a lock another thread could hold — serialises every
/// core, and releases them. See the module docs. Takes the engine's batch
/// lock: no batch is half-way meanwhile.
pub(crate) fn stop_world<R>(
    ranges: &[Range<usize>],
    mut write: impl FnMut() -> R,
) -> Result<(R, StopReport), StopError> {
    let _guard = crate::lock::BATCH.lock();
    wsig::install().map_err(|e| StopError::Setup(e.to_string()))?;
    crate::sync::register().map_err(StopError::Setup)?;
    let mut scratch = Scratch {
        dirents: vec![0u8; 64 * 1024],
        tids: Vec::with_capacity(MAX_THREADS),
        signaled: Vec::with_capacity(MAX_THREADS),
    };
    let me = proc::gettid();
    let mut report = StopReport::default();
    for attempt in 1..=MAX_ATTEMPTS {
        report.attempts = attempt;
        let mut req = Box::new(Request {
            regions: super::probe::regions().map_err(|e| StopError::Setup(e.to_string()))?,
            restorers: [0; 8],
            nrestorers: 0,
        });
        req.nrestorers = frames::restorers(&mut req.restorers);
        let round = {
            // No handler of the program runs here while others are held.
            let _blocked = crate::signals::AllBlocked::new();
            stop_round(&mut scratch, &req, ranges, me, &mut write)
        };
        STOPS.fetch_add(1, Relaxed);
        match round {
            Round::Done(r, n) => {
                report.stopped = n;
                return Ok((r, report));
            }
            Round::Busy(b) => {
                report.busy.push(b);
                if attempt == MAX_ATTEMPTS {
                    return Err(StopError::Busy(b));
                }
            }
            Round::Unverifiable(tid) => {
                if attempt == MAX_ATTEMPTS {
                    return Err(StopError::Unverifiable { tid });
                }
            }
            Round::Failed(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_micros(200 * u64::from(attempt)));
    }
    unreachable!("the last attempt returns")
}

fn wait_handlers_drained() {
    let deadline = Instant::now() + Duration::from_secs(1);
    while IN_HANDLER.load(SeqCst) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn stop_round<R>(
    scratch: &mut Scratch,
    req: &Request,
    ranges: &[Range<usize>],
    me: i32,
    write: &mut impl FnMut() -> R,
) -> Round<R> {
    // Stale deliveries from an earlier round leave before slots are reset.
    wait_handlers_drained();
    let claimed = CLAIMED.load(SeqCst).min(MAX_THREADS);
    for s in &SLOTS[..claimed] {
        s.gen.store(0, SeqCst);
    }
    CLAIMED.store(0, SeqCst);
    ACTIVE.store(req as *const Request as *mut Request, SeqCst);
    let g = GEN.fetch_add(1, SeqCst) + 1;
    debug_assert!(g & 1 == 1);

    let outcome = stop_all(scratch, token_of(req), me, g).and_then(|stopped| {
        // Everyone is held: check positions, then write.
        let claimed = CLAIMED.load(SeqCst);
        if claimed > MAX_THREADS {
            return Err(Round::Failed(StopError::TooManyThreads));
        }
        for s in &SLOTS[..claimed] {
            if s.gen.load(SeqCst) != g {
                continue;
            }
            let tid = s.tid.load(SeqCst);
            let n = s.n.load(SeqCst).min(MAX_CONTEXTS);
            for (i, r) in s.rips[..n].iter().enumerate() {
                let rip = r.load(SeqCst);
                let k = ranges.partition_point(|x| x.end <= rip);
                if ranges.get(k).is_some_and(|x| x.start <= rip) {
                    return Err(Round::Busy(Busy {
                        tid,
                        addr: rip,
                        in_rip: i == 0,
                    }));
                }
            }
            if s.complete.load(SeqCst) == 0 {
                return Err(Round::Unverifiable(tid));
            }
        }
        let r = write();
        crate::sync::sync_cores();
        Ok((r, stopped))
    });

    // Release.
    GEN.fetch_add(1, SeqCst);
    // SAFETY: futex wake on the static word the handlers wait on.
    unsafe { libc::syscall(libc::SYS_futex, GEN.as_ptr(), FUTEX_WAKE_PRIVATE, i32::MAX) };
    wait_handlers_drained();
    ACTIVE.store(std::ptr::null_mut(), SeqCst);
    match outcome {
        Ok((r, n)) => Round::Done(r, n),
        Err(r) => r,
    }
}

/// Signals every thread but `me` until all are held in the handler or
/// gone. Returns how many are held.
fn stop_all<R>(scratch: &mut Scratch, token: usize, me: i32, g: u32) -> Result<usize, Round<R>> {
    scratch.signaled.clear();
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        if !proc::list_tids(&mut scratch.dirents, &mut scratch.tids) {
            return Err(Round::Failed(StopError::TooManyThreads));
        }
        let mut new = 0;
        for &t in &scratch.tids {
            if t == me || scratch.signaled.iter().any(|&(s, _)| s == t) {
                continue;
            }
            if scratch.signaled.len() == scratch.signaled.capacity() {
                return Err(Round::Failed(StopError::TooManyThreads));
            }
            let sent = wsig::send(t, token);
            scratch.signaled.push((t, !sent));
            new += 1;
        }
        // Threads that were running when listed may have created more
        // before they stopped: once all are held, list again until a
        // listing brings nobody new (held threads create nothing).
        if new == 0 && all_accounted(scratch, g) {
            let held = scratch.signaled.iter().filter(|&&(_, gone)| !gone).count();
            return Ok(held);
        }
        let mut waited = 0u32;
        while !all_accounted(scratch, g) {
            if Instant::now() > deadline {
                let tid = scratch
                    .signaled
                    .iter()
                    .find(|&&(t, gone)| !gone && !arrived(t, g))
                    .map_or(0, |&(t, _)| t);
                // Reading /proc allocates nothing (fixed buffers).
                let why = super::probe::reason(tid);
                return Err(Round::Failed(StopError::NotStopped { tid, why }));
            }
            std::thread::sleep(Duration::from_micros(50));
            waited += 1;
            if waited.is_multiple_of(100) {
                for e in scratch.signaled.iter_mut() {
                    if !e.1 && !arrived(e.0, g) && proc::thread_gone(e.0) {
                        e.1 = true;
                    }
                }
            }
        }
    }
}

fn arrived(tid: i32, g: u32) -> bool {
    let claimed = CLAIMED.load(SeqCst).min(MAX_THREADS);
    SLOTS[..claimed]
        .iter()
        .any(|s| s.gen.load(SeqCst) == g && s.tid.load(SeqCst) == tid)
}

fn all_accounted(scratch: &Scratch, g: u32) -> bool {
    scratch
        .signaled
        .iter()
        .all(|&(t, gone)| gone || arrived(t, g))
}
