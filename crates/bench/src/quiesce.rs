//! `quiesce`: register/unregister cycles of one ops while N threads wait in
//! `poll` and two busy threads call the traced function. The waiting
//! threads are observed through `/proc`, never signalled: the goal is no
//! probe sent to them and no `EINTR` seen by them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use livetrace_fixtures as fx;
use livetrace_ftrace::{insert_external, register, unregister, Ops, Pattern};
use livetrace_poke::world::world_stats;
use livetrace_sites::ExternalSite;

use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Threads blocked in `poll` throughout.
    #[arg(long, default_value_t = 8)]
    blocked: usize,
    /// Busy threads calling the traced function.
    #[arg(long, default_value_t = 2)]
    busy: usize,
    /// register/unregister cycles.
    #[arg(long, default_value_t = 200)]
    cycles: usize,
}

pub fn run(a: Args) {
    let f = 5000;
    let name = format!("fx::f{f:05}");
    insert_external(&[ExternalSite {
        addr: fx::site(f),
        name: &name,
        file: "fixtures",
        line: 0,
    }])
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let eintr = Arc::new(AtomicU64::new(0));
    let mut pipe = [0; 2];
    // SAFETY: a pipe whose write end wakes the waiters at the end.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let mut waiters = Vec::new();
    for _ in 0..a.blocked {
        let (stop, eintr) = (stop.clone(), eintr.clone());
        let fd = pipe[0];
        waiters.push(std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd.
                let r = unsafe { libc::poll(&mut p, 1, -1) };
                // SAFETY: errno is thread-local.
                if r < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                    eintr.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    let mut busy = Vec::new();
    for _ in 0..a.busy {
        let stop = stop.clone();
        busy.push(std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                std::hint::black_box(fx::call(f));
            }
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let hits = Arc::new(AtomicU64::new(0));
    let mut times = Vec::with_capacity(a.cycles);
    let before = world_stats();
    for k in 0..a.cycles {
        let h = hits.clone();
        let ops = Ops::builder(format!("q{k}"))
            .filter(Pattern::Name(name.clone()))
            .build(move |_| {
                h.fetch_add(1, SeqCst);
            });
        register(&ops).unwrap();
        std::thread::sleep(std::time::Duration::from_micros(200));
        let t = Instant::now();
        unregister(&ops).unwrap();
        times.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let after = world_stats();
    stop.store(true, SeqCst);
    for b in busy {
        b.join().unwrap();
    }
    // SAFETY: wakes the waiters (the byte stays readable for all).
    assert_eq!(unsafe { libc::write(pipe[1], b"x".as_ptr().cast(), 1) }, 1);
    for w in waiters {
        w.join().unwrap();
    }
    let probes = after.probes_sent - before.probes_sent;
    eprintln!(
        "quiesce: {} cycles, {} blocked + {} busy threads; {} probes sent, {} threads seen \
         blocked without a signal, {} traced calls",
        a.cycles,
        a.blocked,
        a.busy,
        probes,
        after.passive - before.passive,
        hits.load(SeqCst)
    );
    // A thread blocked in poll that takes a signal returns EINTR (poll is
    // never restarted after a handler), so the EINTRs count exactly the
    // signals the blocked threads got.
    let e = eintr.load(SeqCst);
    println!(
        "RESULT bench=quiesce blocked_threads={} busy_threads={} cycles={} unregister_us={:.1} \
         signals_sent_per_cycle={:.2} signals_to_blocked_per_cycle={:.3} eintr_seen={e}",
        a.blocked,
        a.busy,
        a.cycles,
        median(&mut times),
        probes as f64 / a.cycles as f64,
        e as f64 / a.cycles as f64,
    );
}
