//! `patch`: enable and disable N sites as one batch while busy threads call
//! every one of them in a loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use livetrace_fixtures as fx;
use livetrace_poke::{trap_stats, Batch, Insn};

use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Sites per batch.
    #[arg(long, default_value_t = 40_000)]
    sites: usize,
    /// Threads calling the sites' functions throughout.
    #[arg(long, default_value_t = 2)]
    busy_threads: usize,
    /// Steady-state enable/disable rounds.
    #[arg(long, default_value_t = 21)]
    rounds: usize,
}

fn batch(sites: usize, old: Insn, new: Insn) -> Batch {
    let mut b = Batch::with_capacity(sites);
    for i in 0..sites {
        b.queue(fx::site(i), old, new).expect("in range");
    }
    b
}

/// Applies a batch, returning ns per site.
fn timed(b: Batch) -> f64 {
    let n = b.len();
    let t = Instant::now();
    b.apply().unwrap_or_else(|e| panic!("batch failed: {e}"));
    t.elapsed().as_nanos() as f64 / n as f64
}

pub fn run(a: Args) {
    assert!(a.sites <= fx::FUNCTIONS, "at most {} sites", fx::FUNCTIONS);
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let on = Insn::Call(fx::ret_stub());
    let (first, enable, disable, hits) = std::thread::scope(|s| {
        for t in 0..a.busy_threads {
            let (stop, calls) = (&stop, &calls);
            let sites = a.sites;
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    // Different threads sweep in different orders.
                    for j in 0..sites {
                        let i = if t % 2 == 0 { j } else { sites - 1 - j };
                        std::hint::black_box(fx::call(i));
                    }
                    n += sites as u64;
                }
                calls.fetch_add(n, Relaxed);
            });
        }
        let before = trap_stats();
        // The first enable takes the copy-on-write faults of the text pages.
        let first = timed(batch(a.sites, Insn::Nop, on));
        let mut disable = vec![timed(batch(a.sites, on, Insn::Nop))];
        let mut enable = Vec::new();
        for _ in 0..a.rounds {
            enable.push(timed(batch(a.sites, Insn::Nop, on)));
            disable.push(timed(batch(a.sites, on, Insn::Nop)));
        }
        let after = trap_stats();
        stop.store(true, Relaxed);
        let hits = (after.emulated - before.emulated) + (after.reexecuted - before.reexecuted);
        (first, median(&mut enable), median(&mut disable), hits)
    });
    let batches = 2 + 2 * a.rounds;
    eprintln!(
        "patch: {} sites x {batches} batches, {} busy threads made {} calls",
        a.sites,
        a.busy_threads,
        calls.load(Relaxed)
    );
    println!(
        "RESULT bench=patch sites={} busy_threads={} batches={batches} \
         first_enable_ns_per_site={first:.1} enable_ns_per_site={enable:.1} \
         disable_ns_per_site={disable:.1} int3_hits={hits} hits_per_batch={:.1}",
        a.sites,
        a.busy_threads,
        hits as f64 / batches as f64
    );
}
