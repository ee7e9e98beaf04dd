//! Traces `*` in a program where every function has a site — its own,
//! livetrace's, and the instances of core/alloc/std generics compiled into
//! it — with every tracer, while threads pass work over channels and one
//! panics and is caught. livetrace must leave its own functions (and the
//! runtime's) out, or it would trace itself: its trap handler would trap.

use std::sync::mpsc;

use livetrace::{Config, Tracer};

#[inline(never)]
fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

#[inline(never)]
fn checksum(v: &[u64]) -> u64 {
    v.iter().fold(0u64, |a, &x| a.rotate_left(5) ^ x)
}

#[inline(never)]
fn may_panic(i: u64) -> u64 {
    if i % 7 == 3 {
        panic!("work item {i} panics, as planned");
    }
    fib(10 + i % 5)
}

/// Work through channels on three threads; returns (results, panics).
fn workload(rounds: u64) -> (u64, u64) {
    let (tx, rx) = mpsc::channel::<u64>();
    let (rtx, rrx) = mpsc::channel::<(u64, bool)>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (rx, rtx) = (rx.clone(), rtx.clone());
            std::thread::spawn(move || loop {
                let job = rx.lock().unwrap().recv();
                let Ok(i) = job else { break };
                let r = std::panic::catch_unwind(|| may_panic(i));
                let failed = r.is_err();
                rtx.send((r.unwrap_or(0), failed)).unwrap();
            })
        })
        .collect();
    drop(rtx);
    for i in 0..rounds {
        tx.send(i).unwrap();
    }
    drop(tx);
    let mut results = Vec::new();
    let mut panics = 0;
    for (r, p) in rrx {
        results.push(r);
        panics += u64::from(p);
    }
    for w in workers {
        w.join().unwrap();
    }
    results.sort_unstable();
    (checksum(&results), panics)
}

fn main() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("as planned") {
            default(info);
        }
    }));
    let report = livetrace::init().expect("init");
    assert!(report.compiler_sites > 100, "{report:?}");
    let expected = workload(200);
    for tracer in [Tracer::Function, Tracer::Graph, Tracer::Profile] {
        let session = livetrace::trace(Config::new(tracer, &["*"])).expect("trace *");
        let enabled = livetrace::enabled_functions().expect("enabled");
        for f in &enabled {
            let own = f.name.starts_with("livetrace")
                || f.name.starts_with("<livetrace")
                || f.name.starts_with("core::")
                || f.name.starts_with("alloc::")
                || f.name.starts_with("std::");
            assert!(!own, "{} is traced", f.name);
        }
        assert!(enabled.iter().any(|f| f.name.ends_with("::fib")), "fib is traced");
        let start = std::time::Instant::now();
        let mut runs = 0;
        while start.elapsed() < std::time::Duration::from_millis(400) {
            assert_eq!(workload(200), expected, "results under {tracer:?}");
            runs += 1;
        }
        let events: usize = if tracer == Tracer::Profile {
            session.profile().len()
        } else {
            session.snapshot().threads.iter().map(|t| t.events.len()).sum()
        };
        assert!(events > 0, "{tracer:?} recorded nothing");
        drop(session);
        println!(
            "ALLSITES tracer={tracer:?} functions={} runs={runs} events_or_rows={events}",
            enabled.len()
        );
    }
    println!("ALLSITES ok");
}
