//! `function` and `graph`: what a traced call costs when the tracer records
//! it, against the same kind of function with its site disabled, in
//! interleaved rounds. The ring buffers run in overwrite mode, so every
//! call really writes its records.
//!
//! Also reported, measured in the same rounds: what one read of the trace
//! clock costs by itself (`clock_read_ns`, back-to-back reads), the floor
//! under any tracer that timestamps each event, and the overhead with the
//! fast paths off (`callback_overhead_ns`: every event through the Rust
//! callback and the dedicated trampoline), and with a volume control that
//! lets every call through (`controls_overhead_ns`: a depth limit no call
//! reaches, which makes the fast paths decline and the callback check it).

use livetrace_tracers::{Config, Session, Tracer};

use crate::stats::{median, per_call, per_call_plain, register_fixtures};

#[derive(clap::Args)]
pub struct Args {
    /// Calls per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    calls: usize,
    /// Rounds of each kind, interleaved.
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    /// Ring buffer records per thread (a power of two).
    #[arg(long, default_value_t = livetrace_ring::Config::default().records_per_thread)]
    ring_records: usize,
}

/// ns per back-to-back read of the trace clock.
#[inline(never)]
fn clock_read(n: usize) -> f64 {
    let clock = livetrace_ring::Clock::get();
    let t = std::time::Instant::now();
    let mut acc = 0u64;
    for _ in 0..n {
        acc = acc.wrapping_add(clock.now_unordered());
    }
    std::hint::black_box(acc);
    t.elapsed().as_nanos() as f64 / n as f64
}

pub fn run(tracer: Tracer, a: Args) {
    register_fixtures(4);
    let start = |f: &str, fast: bool, controlled: bool| {
        let mut cfg = Config::new(tracer, &[f]);
        cfg.ring.mode = livetrace_ring::Mode::Overwrite;
        cfg.ring.records_per_thread = a.ring_records;
        cfg.fast_path = fast;
        if controlled {
            match tracer {
                Tracer::Graph => cfg.controls.depth = Some(u32::MAX),
                _ => cfg.controls.stop_at = vec![livetrace_ftrace::Pattern::parse("bench::f0")],
            }
        }
        Session::start(cfg).unwrap_or_else(|e| panic!("{e}"))
    };
    let session = start("bench::f1", true, false);
    let slow = start("bench::f2", false, false);
    let controlled = (tracer != Tracer::Profile).then(|| start("bench::f3", true, true));
    let (mut base, mut traced, mut callback, mut clock, mut ctl) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    per_call(1, a.calls / 10);
    per_call(2, a.calls / 10);
    per_call(3, a.calls / 10);
    for _ in 0..a.rounds {
        base.push(per_call_plain(0, a.calls));
        traced.push(per_call(1, a.calls));
        callback.push(per_call(2, a.calls));
        clock.push(clock_read(a.calls));
        if controlled.is_some() {
            ctl.push(per_call(3, a.calls));
        }
    }
    let snap = session.snapshot();
    let recorded: usize = snap.threads.iter().map(|t| t.events.len()).sum();
    let lost: u64 = snap.threads.iter().map(|t| t.lost).sum();
    let fast = session.has_fast_path();
    drop(session);
    drop(slow);
    drop(controlled);
    let ctl = if ctl.is_empty() {
        f64::NAN
    } else {
        median(&mut ctl)
    };
    let (b, t) = (median(&mut base), median(&mut traced));
    let (cb, ck) = (median(&mut callback), median(&mut clock));
    let name = match tracer {
        Tracer::Function => "function",
        Tracer::Graph => "graph",
        Tracer::Profile => "profile",
    };
    eprintln!(
        "{name}: {} rounds of {} calls; {recorded} records in the buffer at the end, {lost} overwritten",
        a.rounds, a.calls
    );
    println!(
        "RESULT bench={name} baseline_ns={b:.2} traced_ns={t:.2} overhead_ns={:.2} fast_path={fast} \
         callback_overhead_ns={:.2} controls_overhead_ns={:.2} clock_read_ns={ck:.2} \
         ring_records={} clock={:?}",
        t - b,
        cb - b,
        ctl - b,
        a.ring_records,
        livetrace_ring::Clock::get().source()
    );
}
