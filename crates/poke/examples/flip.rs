//! The engine at work: busy threads call 10,000 functions in a loop while
//! the main thread rewrites all their sites live, NOP -> call A -> call B ->
//! NOP, and reports what each batch cost and what the threads saw.
//!
//! `cargo run --release -p livetrace-poke --example flip`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use livetrace_fixtures as fx;
use livetrace_poke::{read_site, trap_stats, Batch, Insn};

const SITES: usize = 10_000;

fn counted(counts: &[AtomicU64]) -> u64 {
    counts[..SITES].iter().map(|c| c.load(Relaxed)).sum()
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let wrong = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    for i in 0..SITES {
                        if fx::call(i) != fx::value_of(i) {
                            wrong.fetch_add(1, Relaxed);
                        }
                    }
                    calls.fetch_add(SITES as u64, Relaxed);
                }
            });
        }
        println!("{threads} threads are calling {SITES} functions in a loop.");
        let site0 = fx::site(0);
        let steps = [
            (
                "enable: nop -> call A",
                Insn::Nop,
                Insn::Call(fx::counter_a()),
            ),
            (
                "switch: call A -> call B",
                Insn::Call(fx::counter_a()),
                Insn::Call(fx::counter_b()),
            ),
            (
                "disable: call B -> nop",
                Insn::Call(fx::counter_b()),
                Insn::Nop,
            ),
        ];
        for (what, old, new) in steps {
            let before = trap_stats();
            let mut batch = Batch::with_capacity(SITES);
            for i in 0..SITES {
                batch.queue(fx::site(i), old, new).unwrap();
            }
            let t = Instant::now();
            let applied = batch.apply().unwrap_or_else(|e| panic!("{e}"));
            let took = t.elapsed();
            let after = trap_stats();
            let (a0, b0, c0) = (
                counted(&fx::LT_FIX_COUNTS_A),
                counted(&fx::LT_FIX_COUNTS_B),
                calls.load(Relaxed),
            );
            std::thread::sleep(Duration::from_millis(200));
            let (a1, b1, c1) = (
                counted(&fx::LT_FIX_COUNTS_A),
                counted(&fx::LT_FIX_COUNTS_B),
                calls.load(Relaxed),
            );
            println!(
                "{what:<26} {} sites in {took:>10.3?} ({:.0} ns/site, {} mprotect runs, {} syncs); \
                 {} calls trapped mid-batch and were emulated, {} re-executed",
                applied.sites,
                took.as_nanos() as f64 / applied.sites as f64,
                applied.runs,
                applied.syncs,
                after.emulated - before.emulated,
                after.reexecuted - before.reexecuted,
            );
            println!(
                "{:<26} site 0 now {:02x?}; next 200 ms: {} calls, {} through A, {} through B",
                "",
                read_site(site0).unwrap(),
                c1 - c0,
                a1 - a0,
                b1 - b0
            );
        }
        stop.store(true, Relaxed);
    });
    println!(
        "every call returned its own function's value: {}",
        if wrong.load(Relaxed) == 0 {
            "yes"
        } else {
            "NO"
        }
    );
    assert_eq!(wrong.load(Relaxed), 0);
}
