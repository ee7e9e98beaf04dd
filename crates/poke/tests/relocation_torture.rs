//! Torture: 200 live relocation cycles (park, wait, jump; ten times enable
//! and disable a random subset of the detours' sites; remove; free the
//! detours), so 2,000 enabling and 2,000 disabling batches, over a stock
//! library while two threads call its functions in loops and a third
//! interrupts them with a signal whose handler calls relocated functions
//! too, at arbitrary points: inside prologues, mid-batch, while parked.
//! (A relocation cycle waits twice for every thread to be observed clear,
//! which on two busy cores takes tens of milliseconds: 200 of them fit the
//! suite's minute.)
//!
//! Every call's result is compared with an untouched copy of the library;
//! a function's counter (bumped by its detour's site while enabled) never
//! exceeds its calls; at the end, with everything relocated and enabled,
//! every call is counted exactly, and every byte of text is the file's
//! again after the last removal.
//!
//! `LIVETRACE_SOAK_SECS=N` runs cycles for N seconds instead.

mod stocklib;

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use livetrace_fixtures::stock::StockFn;
use livetrace_poke::relocation::{install_with, reclaim, remove, Stage};
use livetrace_poke::{read_text, trap_stats, Batch, Insn};

const CYCLES: usize = 200;
/// Enable/disable batch pairs per relocation cycle.
const TOGGLES: usize = 10;

static STOP: AtomicBool = AtomicBool::new(false);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static FIRST_FAILURE: Mutex<Option<String>> = Mutex::new(None);
static HANDLER_CALLS: AtomicU64 = AtomicU64::new(0);
static HANDLER_WRONG: AtomicU64 = AtomicU64::new(0);

fn fail(msg: String) {
    if FAILURES.fetch_add(1, SeqCst) == 0 {
        *FIRST_FAILURE.lock().unwrap() = Some(msg);
    }
}

/// What the signal handler calls: (relocated function, its twin).
static IN_HANDLER: OnceLock<Vec<(StockFn, StockFn)>> = OnceLock::new();
static HANDLER_NEXT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr2(_: libc::c_int) {
    // Async-signal-safe: atomics and calls of pure generated functions.
    let Some(fs) = IN_HANDLER.get() else { return };
    let i = HANDLER_NEXT.fetch_add(1, Relaxed);
    let (f, twin) = fs[i % fs.len()];
    let (a, b) = (i as i64, (i as i64) ^ 0x5a5a);
    HANDLER_CALLS.fetch_add(1, Relaxed);
    if f(a, b) != twin(a, b) {
        HANDLER_WRONG.fetch_add(1, Relaxed);
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn relocations_cycle_under_callers_and_signals() {
    let lib = stocklib::load("torture");
    // Every relocatable function but the `rep` one (its caller would read
    // memory): the callers and the signal handler use them all.
    let funcs: Vec<&stocklib::Func> = lib
        .funcs
        .iter()
        .filter(|f| f.verdict.is_ok() && f.name != "lt_hand_rep")
        .collect();
    let mut list: Vec<_> = funcs.iter().map(|f| f.verdict.clone().unwrap()).collect();
    let originals: Vec<Vec<u8>> = list
        .iter()
        .map(|r| read_text(r.site, r.original.len()).unwrap())
        .collect();
    let fns: Vec<(StockFn, StockFn, usize)> = funcs
        .iter()
        .map(|f| (lib.stock.func(&f.name), lib.twin.func(&f.name), f.counter))
        .collect();
    IN_HANDLER
        .set(fns.iter().map(|&(f, t, _)| (f, t)).collect())
        .ok()
        .unwrap();
    let calls: Vec<AtomicU64> = (0..fns.len()).map(|_| AtomicU64::new(0)).collect();

    // SAFETY: a handler that only calls pure functions and touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr2 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }

    let soak = std::env::var("LIVETRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let tids: Vec<AtomicI32> = (0..2).map(|_| AtomicI32::new(0)).collect();
    let cycles_done = std::thread::scope(|s| {
        for w in 0..2usize {
            let (fns, calls, tids) = (&fns, &calls, &tids);
            s.spawn(move || {
                // SAFETY: gettid has no preconditions.
                tids[w].store(unsafe { libc::gettid() }, SeqCst);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
                while !STOP.load(Relaxed) {
                    // Each worker owns every other function, so each
                    // counter is bumped by one thread's calls (and the
                    // handler's, counted apart).
                    let i = 2 * (rng.next() as usize % fns.len().div_ceil(2)) + w;
                    let Some(&(f, twin, _)) = fns.get(i) else {
                        continue;
                    };
                    let (a, b) = (rng.next() as i64 >> 20, rng.next() as i64 >> 40);
                    let (x, y) = (f(a, b), twin(a, b));
                    calls[i].fetch_add(1, Relaxed);
                    if x != y {
                        fail(format!("function {i}({a}, {b}) = {x}, expected {y}"));
                    }
                }
            });
        }
        // The interrupter.
        let tids = &tids;
        s.spawn(move || {
            while tids.iter().any(|t| t.load(SeqCst) == 0) {
                std::thread::yield_now();
            }
            let mut k = 0usize;
            while !STOP.load(Relaxed) {
                let tid = tids[k % 2].load(Relaxed);
                k += 1;
                // SAFETY: the workers live until STOP, and this thread
                // stops with them.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR2) };
                std::thread::sleep(Duration::from_micros(50));
            }
        });

        let start = Instant::now();
        let mut rng = Rng(42);
        let mut cycle = 0usize;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            let more = match soak {
                Some(d) => start.elapsed() < d,
                None => cycle < CYCLES,
            };
            if !more || FAILURES.load(SeqCst) > 0 {
                break;
            }
            cycle += 1;
            // Sometimes linger parked, so callers take the redirecting trap.
            let linger = rng.next().is_multiple_of(4);
            install_with(&list, Duration::from_secs(10), |st| {
                if st == Stage::Parked && linger {
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
            .unwrap_or_else(|e| panic!("cycle {cycle}: install: {e}"));
            // Enable a random subset, then disable it.
            for _ in 0..TOGGLES {
                let mask = rng.next();
                let on: Vec<usize> = (0..list.len())
                    .filter(|&i| mask >> (i % 64) & 1 == 1)
                    .collect();
                let mut b = Batch::with_capacity(on.len());
                for &i in &on {
                    b.queue(
                        list[i].detour,
                        Insn::Nop,
                        Insn::Call(lib.stock.counter(fns[i].2)),
                    )
                    .unwrap();
                }
                b.apply().unwrap();
                let mut b = Batch::with_capacity(on.len());
                for &i in &on {
                    b.queue(
                        list[i].detour,
                        Insn::Call(lib.stock.counter(fns[i].2)),
                        Insn::Nop,
                    )
                    .unwrap();
                }
                b.apply().unwrap();
            }
            let sites: Vec<usize> = list.iter().map(|r| r.site).collect();
            remove(&sites).unwrap_or_else(|e| panic!("cycle {cycle}: remove: {e}"));
            for (r, o) in list.iter().zip(&originals) {
                assert_eq!(&read_text(r.site, o.len()).unwrap(), o, "cycle {cycle}");
            }
            reclaim(Duration::from_secs(10)).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
            // The detours were freed: new ones for the next cycle (the
            // engine hands the same memory out again).
            list = funcs.iter().map(|f| f.fresh()).collect();
        }));
        STOP.store(true, SeqCst);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        cycle
    });
    let _ = cycles_done;
    if let Some(m) = FIRST_FAILURE.lock().unwrap().take() {
        panic!("{} failures; first: {m}", FAILURES.load(SeqCst));
    }
    assert_eq!(
        HANDLER_WRONG.load(SeqCst),
        0,
        "wrong results in the handler"
    );
    assert!(HANDLER_CALLS.load(SeqCst) > 0);
    for (i, &(_, _, counter)) in fns.iter().enumerate() {
        let c = lib.stock.count(counter);
        assert!(
            c <= calls[i].load(SeqCst) + HANDLER_CALLS.load(SeqCst),
            "function {i}: {c} counted, more than its calls"
        );
    }
    eprintln!("{cycles_done} cycles; traps: {:?}", trap_stats());
    assert!(trap_stats().redirected > 0, "no caller took a parked trap");
}
