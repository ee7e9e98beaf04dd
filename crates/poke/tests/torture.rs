//! Torture: thousands of live batches over 10,000 real functions while
//! cores+1 threads call them in loops.
//!
//! Every function belongs to exactly one worker, so the per-function
//! counters the stubs bump are touched by that worker alone and it can tell,
//! for every single call, which stub the call went through (or none). The
//! main thread publishes, per function, the state it has (`CUR`) and the
//! state the batch in progress gives it (`NEXT`), and an epoch that is odd
//! while a batch is being applied. A call that starts and ends in the same
//! even epoch must have gone through exactly the current state's stub; one
//! inside a single batch through the old or the new one; any call returns
//! its own function's value and bumps at most one counter.
//!
//! `LIVETRACE_SOAK_SECS=N` runs batches for N seconds instead of the
//! default count.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use livetrace_fixtures as fx;
use livetrace_poke::{read_site, trap_stats, Batch, Insn, NOP5};

const SITES: usize = 10_000;
const BATCHES: usize = 2_000;

const NOP: u8 = 0;
const A: u8 = 1;
const B: u8 = 2;

static CUR: [AtomicU8; SITES] = [const { AtomicU8::new(NOP) }; SITES];
static NEXT: [AtomicU8; SITES] = [const { AtomicU8::new(NOP) }; SITES];
static EPOCH: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static FIRST_FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn insn(state: u8) -> Insn {
    match state {
        NOP => Insn::Nop,
        A => Insn::Call(fx::counter_a()),
        _ => Insn::Call(fx::counter_b()),
    }
}

fn fail(msg: String) {
    if FAILURES.fetch_add(1, SeqCst) == 0 {
        *FIRST_FAILURE.lock().unwrap() = Some(msg);
    }
}

/// Small deterministic generator; the test needs variety, not quality.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    calls: u64,
    settled: u64,
    in_batch: u64,
}

fn worker(w: usize, workers: usize) -> Tally {
    let mut t = Tally::default();
    while !STOP.load(SeqCst) {
        for i in (w..SITES).step_by(workers) {
            let e1 = EPOCH.load(SeqCst);
            let cur = CUR[i].load(SeqCst);
            let next = NEXT[i].load(SeqCst);
            let (a0, b0) = (
                fx::LT_FIX_COUNTS_A[i].load(SeqCst),
                fx::LT_FIX_COUNTS_B[i].load(SeqCst),
            );
            let r = fx::call(i);
            let (a1, b1) = (
                fx::LT_FIX_COUNTS_A[i].load(SeqCst),
                fx::LT_FIX_COUNTS_B[i].load(SeqCst),
            );
            let e2 = EPOCH.load(SeqCst);
            t.calls += 1;
            if r != fx::value_of(i) {
                fail(format!(
                    "function {i} returned {r:#x}, expected {:#x}",
                    fx::value_of(i)
                ));
            }
            let went = match (a1 - a0, b1 - b0) {
                (0, 0) => NOP,
                (1, 0) => A,
                (0, 1) => B,
                d => {
                    fail(format!(
                        "function {i}: one call bumped the counters by {d:?}"
                    ));
                    continue;
                }
            };
            if e1 == e2 && e1.is_multiple_of(2) {
                t.settled += 1;
                if went != cur {
                    fail(format!(
                        "function {i} in settled epoch {e1}: went through {went}, site is {cur}"
                    ));
                }
            } else if e1 == e2 {
                t.in_batch += 1;
                if went != cur && went != next {
                    fail(format!(
                        "function {i} during batch {e1}: went through {went}, old {cur} new {next}"
                    ));
                }
            }
        }
    }
    t
}

#[test]
fn batches_under_fire() {
    const { assert!(SITES <= fx::FUNCTIONS) };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    let soak = std::env::var("LIVETRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let deadline = soak.map(|s| Instant::now() + Duration::from_secs(s));
    let handles: Vec<_> = (0..workers)
        .map(|w| std::thread::spawn(move || worker(w, workers)))
        .collect();

    let start_stats = trap_stats();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut state = vec![NOP; SITES];
    let (mut batches, mut sites_patched) = (0usize, 0usize);
    let started = Instant::now();
    loop {
        match deadline {
            Some(d) if Instant::now() >= d => break,
            None if batches >= BATCHES => break,
            _ => {}
        }
        // Mix of batch shapes: every site, a tenth, a handful, one.
        let k = batches;
        let changed: Vec<usize> = match k % 10 {
            0 => (0..SITES).collect(),
            1..=3 => (0..SITES).filter(|_| rng.below(10) == 0).collect(),
            4..=8 => (0..1 + rng.below(64))
                .map(|_| rng.below(SITES as u64) as usize)
                .collect(),
            _ => vec![rng.below(SITES as u64) as usize],
        };
        let mut changed = changed;
        changed.sort_unstable();
        changed.dedup();
        let mut batch = Batch::with_capacity(changed.len());
        for &i in &changed {
            let new = (state[i] + 1 + rng.below(2) as u8) % 3;
            batch.queue(fx::site(i), insn(state[i]), insn(new)).unwrap();
            NEXT[i].store(new, SeqCst);
            state[i] = new;
        }
        EPOCH.fetch_add(1, SeqCst); // odd: batch in progress
        let applied = batch.apply().expect("batch applies");
        for &i in &changed {
            CUR[i].store(state[i], SeqCst);
        }
        EPOCH.fetch_add(1, SeqCst); // even: settled
        assert_eq!(applied.sites, changed.len());
        batches += 1;
        sites_patched += changed.len();
        if FAILURES.load(SeqCst) > 0 {
            break;
        }
    }
    let elapsed = started.elapsed();

    // Settle everything back to NOP while the workers still run.
    let mut batch = Batch::new();
    for (i, s) in state.iter().enumerate() {
        if *s != NOP {
            NEXT[i].store(NOP, SeqCst);
            batch.queue(fx::site(i), insn(*s), Insn::Nop).unwrap();
        }
    }
    EPOCH.fetch_add(1, SeqCst);
    batch.apply().unwrap();
    for c in &CUR {
        c.store(NOP, SeqCst);
    }
    EPOCH.fetch_add(1, SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    STOP.store(true, SeqCst);
    let tallies: Vec<Tally> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let stats = trap_stats();
    let calls: u64 = tallies.iter().map(|t| t.calls).sum();
    let settled: u64 = tallies.iter().map(|t| t.settled).sum();
    let in_batch: u64 = tallies.iter().map(|t| t.in_batch).sum();
    eprintln!(
        "torture: {batches} batches, {sites_patched} site rewrites in {elapsed:?}; \
         {workers} workers made {calls} calls ({settled} settled, {in_batch} during a batch); \
         traps: {} emulated, {} re-executed, {} chained",
        stats.emulated - start_stats.emulated,
        stats.reexecuted - start_stats.reexecuted,
        stats.chained - start_stats.chained,
    );
    if let Some(msg) = FIRST_FAILURE.lock().unwrap().take() {
        panic!("{} failure(s); first: {msg}", FAILURES.load(SeqCst));
    }
    for i in 0..SITES {
        assert_eq!(
            read_site(fx::site(i)).unwrap(),
            NOP5,
            "function {i} back to NOP"
        );
    }
    assert!(in_batch > 0, "the workers ran during batches");
    assert!(
        stats.emulated > start_stats.emulated,
        "threads hit int3 and were emulated"
    );
    assert_eq!(
        stats.chained, start_stats.chained,
        "no trap was taken for foreign"
    );
}
