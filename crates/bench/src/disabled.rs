//! Cost of a disabled `#[traced]` site: a call to a traced function whose
//! site is a NOP, against a call to the same body uninstrumented and
//! `#[inline(never)]`, measured in the same process in interleaved rounds.
//!
//! Both functions live in this crate, so both calls are direct `call`s; the
//! difference is the site stub's `nop5; jmp body`. Each round makes a chain
//! of calls whose arguments depend on the previous result (so neither the
//! calls nor their order can be optimised away) and reports ns per call; the
//! result is the median over rounds, alternating which side goes first.

use std::hint::black_box;
use std::time::Instant;

use livetrace::traced;

/// Calls per round: long enough to dwarf the clock's cost, short enough for
/// many rounds on a noisy machine.
const CALLS: u64 = 200_000;
const ROUNDS: usize = 301;

#[traced]
fn traced_mix(a: u64, b: u64) -> u64 {
    a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (b >> 7)
}

#[inline(never)]
fn baseline_mix(a: u64, b: u64) -> u64 {
    a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (b >> 7)
}

#[inline(never)]
fn chain_traced(n: u64, seed: u64) -> u64 {
    let mut acc = seed;
    for i in 0..n {
        acc = acc.wrapping_add(traced_mix(black_box(i), seed));
    }
    acc
}

#[inline(never)]
fn chain_baseline(n: u64, seed: u64) -> u64 {
    let mut acc = seed;
    for i in 0..n {
        acc = acc.wrapping_add(baseline_mix(black_box(i), seed));
    }
    acc
}

fn ns_per_call(f: fn(u64, u64) -> u64, seed: u64) -> (f64, u64) {
    let t = Instant::now();
    let r = black_box(f(CALLS, black_box(seed)));
    (t.elapsed().as_nanos() as f64 / CALLS as f64, r)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark and prints its `RESULT` line.
pub fn run() {
    let site = livetrace::macro_sites()
        .find(|s| s.path.ends_with("::disabled::traced_mix"))
        .expect("the site of traced_mix is recorded");
    let bytes = livetrace_poke::read_site(site.addr).expect("site is readable");
    assert_eq!(bytes, livetrace_poke::NOP5, "the site is disabled");
    assert_eq!(
        chain_traced(1000, 7),
        chain_baseline(1000, 7),
        "same body, same result"
    );

    // Warm up caches, predictors and the CPU's clock.
    for _ in 0..20 {
        black_box(ns_per_call(chain_traced, 1));
        black_box(ns_per_call(chain_baseline, 1));
    }
    let mut traced = Vec::with_capacity(ROUNDS);
    let mut baseline = Vec::with_capacity(ROUNDS);
    let mut diffs = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let seed = round as u64;
        let (t, b) = if round % 2 == 0 {
            let t = ns_per_call(chain_traced, seed);
            (t, ns_per_call(chain_baseline, seed))
        } else {
            let b = ns_per_call(chain_baseline, seed);
            (ns_per_call(chain_traced, seed), b)
        };
        assert_eq!(t.1, b.1);
        traced.push(t.0);
        baseline.push(b.0);
        diffs.push(t.0 - b.0);
    }
    let (t, b, d) = (
        median(&mut traced),
        median(&mut baseline),
        median(&mut diffs),
    );
    eprintln!(
        "disabled: {ROUNDS} interleaved rounds of {CALLS} dependent calls; \
         site {:#x} ({}) is a NOP",
        site.addr, site.path
    );
    println!(
        "RESULT bench=disabled traced_ns={t:.3} baseline_ns={b:.3} overhead_ns={d:.3} \
         calls_per_round={CALLS} rounds={ROUNDS}"
    );
}
