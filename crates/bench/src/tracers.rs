//! `function` and `graph`: what a traced call costs when the tracer records
//! it, against the same kind of function with its site disabled, in
//! interleaved rounds. The ring buffers run in overwrite mode, so every
//! call really writes its records.

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

pub fn run(tracer: Tracer, a: Args) {
    register_fixtures(2);
    let mut cfg = Config::new(tracer, &["bench::f1"]);
    cfg.ring.mode = livetrace_ring::Mode::Overwrite;
    cfg.ring.records_per_thread = a.ring_records;
    let session = Session::start(cfg).unwrap_or_else(|e| panic!("{e}"));
    let (mut base, mut traced) = (Vec::new(), Vec::new());
    per_call(1, a.calls / 10);
    for _ in 0..a.rounds {
        base.push(per_call_plain(0, a.calls));
        traced.push(per_call(1, a.calls));
    }
    let snap = session.snapshot();
    let recorded: usize = snap.threads.iter().map(|t| t.events.len()).sum();
    let lost: u64 = snap.threads.iter().map(|t| t.lost).sum();
    drop(session);
    let (b, t) = (median(&mut base), median(&mut traced));
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
        "RESULT bench={name} baseline_ns={b:.2} traced_ns={t:.2} overhead_ns={:.2} ring_records={} clock={:?}",
        t - b,
        a.ring_records,
        livetrace_ring::Clock::get().source()
    );
}
