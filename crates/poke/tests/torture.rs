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
//! The program patterns the engine must survive are mixed in: half the
//! workers block every signal the way a `sigwait` server does; a SIGUSR1
//! handler (sent to the workers all along) calls sites at arbitrary points
//! of their loops, mid-batch included; and the main thread forks now and
//! then, each child checking that it holds no half-done batch.
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

/// Calls made from the SIGUSR1 handler, and wrong results seen there.
static HANDLER_CALLS: AtomicU64 = AtomicU64::new(0);
static HANDLER_WRONG: AtomicU64 = AtomicU64::new(0);

/// Runs on a worker interrupted anywhere: calls a function no worker's
/// loop checks (its counters would confuse the tally), whose site the
/// batches also change.
extern "C" fn on_usr1(_: i32) {
    let i = SITES + 7;
    if fx::call(i) != fx::value_of(i) {
        HANDLER_WRONG.fetch_add(1, SeqCst);
    }
    HANDLER_CALLS.fetch_add(1, SeqCst);
}

fn worker(w: usize, workers: usize) -> Tally {
    if w % 2 == 1 {
        // SAFETY: blocks every signal on this thread through the C library
        // (which keeps SIGTRAP and livetrace's world signal deliverable).
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
    }
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
    // SAFETY: installs a SIGUSR1 handler that only calls a fixture
    // function and bumps atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let handles: Vec<_> = (0..workers)
        .map(|w| std::thread::spawn(move || worker(w, workers)))
        .collect();
    use std::os::unix::thread::JoinHandleExt;
    let threads: Vec<libc::pthread_t> = handles.iter().map(|h| h.as_pthread_t()).collect();
    let handler_site = SITES + 7;
    let mut handler_on = false;
    let mut forks = 0u32;

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
        // The handler's function flips too, in the same batch.
        let (old, new) = if handler_on {
            (Insn::Call(fx::count_any_addr()), Insn::Nop)
        } else {
            (Insn::Nop, Insn::Call(fx::count_any_addr()))
        };
        batch.queue(fx::site(handler_site), old, new).unwrap();
        handler_on = !handler_on;
        // Signals to the workers (blocked ones included: SIGUSR1 waits
        // for those to unblock, which they never do, so only the others
        // run the handler).
        for &t in &threads {
            // SAFETY: the workers run until STOP.
            unsafe { libc::pthread_kill(t, libc::SIGUSR1) };
        }
        EPOCH.fetch_add(1, SeqCst); // odd: batch in progress
        let applied = batch.apply().expect("batch applies");
        for &i in &changed {
            CUR[i].store(state[i], SeqCst);
        }
        EPOCH.fetch_add(1, SeqCst); // even: settled
        assert_eq!(applied.sites, changed.len() + 1);
        batches += 1;
        if batches % 97 == 0 {
            forks += 1;
            fork_and_check();
        }
        sites_patched += changed.len();
        if FAILURES.load(SeqCst) > 0 {
            break;
        }
    }
    let elapsed = started.elapsed();

    // Settle everything back to NOP while the workers still run.
    let mut batch = Batch::new();
    if handler_on {
        batch
            .queue(
                fx::site(handler_site),
                Insn::Call(fx::count_any_addr()),
                Insn::Nop,
            )
            .unwrap();
    }
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
         traps: {} emulated, {} re-executed, {} chained; \
         {} calls from a signal handler; {forks} forks",
        stats.emulated - start_stats.emulated,
        stats.reexecuted - start_stats.reexecuted,
        stats.chained - start_stats.chained,
        HANDLER_CALLS.load(SeqCst),
    );
    assert_eq!(
        HANDLER_WRONG.load(SeqCst),
        0,
        "a handler's call returned wrong"
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

/// Forks; the child checks that no fixture site holds an `int3` and that a
/// batch goes through (no engine lock held by a thread it does not have).
fn fork_and_check() {
    // SAFETY: the child only reads its text, applies one batch and
    // `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut code = 0;
        for i in 0..SITES {
            // SAFETY: fixture text, mapped for the life of the process.
            let b = unsafe { std::ptr::read_volatile(fx::site(i) as *const u8) };
            if b == livetrace_poke::INT3 {
                code = 1;
            }
        }
        let i = SITES + 9;
        let mut b = Batch::new();
        b.queue(fx::site(i), Insn::Nop, Insn::Call(fx::count_any_addr()))
            .unwrap();
        if b.apply().is_err() {
            code = 2;
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            fail("a fork child hung".into());
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        fail(format!(
            "a fork child found a half-done batch (status {status:#x})"
        ));
    }
}
