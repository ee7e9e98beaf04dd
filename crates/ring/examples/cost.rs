//! What the hot paths cost: `cargo run --release -p livetrace-ring --example cost`.
//! Human-readable lines on stderr, `RESULT key=value` lines on stdout.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use livetrace_ring::{Clock, Config, Mode, Record, Rings};

/// Best of `rounds` runs of `f(n)`, in ns per iteration: the least
/// disturbed run is the one that shows the code's own cost.
fn ns_per(rounds: usize, n: u64, mut f: impl FnMut(u64)) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f(n);
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::MAX, f64::min)
}

fn rings(mode: Mode) -> Arc<Rings> {
    Rings::new(Config {
        mode,
        ..Config::default()
    })
}

/// Computed in registers: the atomic stores cannot be optimised away, and a
/// `black_box` here would add four stack stores to every write.
fn rec(i: u64) -> Record {
    Record {
        ts: i,
        a: i ^ 1,
        b: i ^ 2,
        c: i ^ 3,
    }
}

/// Whether `a` and `b` use the same entry of the thread's cache: writing to
/// `b` then `a` then `b` is slow only then. Decided by timing, as the ids
/// are private.
fn evicts(a: &Rings, b: &Rings) -> bool {
    let t = ns_per(3, 100_000, |n| {
        for i in 0..n {
            a.write(rec(i));
            b.write(rec(i));
        }
    });
    let alone = ns_per(3, 100_000, |n| {
        for i in 0..n {
            a.write(rec(i));
            a.write(rec(i));
        }
    });
    t > alone * 1.8
}

/// How far `to_ns(now())` is from CLOCK_MONOTONIC, in ns: the midpoint of
/// the tightest of 64 brackets.
fn clock_offset(clock: &Clock) -> i64 {
    (0..64)
        .map(|_| {
            let before = monotonic_ns();
            let t = clock.now();
            let after = monotonic_ns();
            (
                after - before,
                clock.to_ns(t) as i64 - (before + (after - before) / 2) as i64,
            )
        })
        .min()
        .unwrap()
        .1
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    const N: u64 = 20_000_000;
    const ROUNDS: usize = 5;
    let clock = Clock::get();
    eprintln!(
        "clock: {:?} at {} Hz, calibrated in {:?}{}",
        clock.source(),
        clock.frequency_hz(),
        clock.calibration_time(),
        clock
            .fallback_reason()
            .map(|r| format!(" (fallback: {r})"))
            .unwrap_or_default()
    );

    let started = Instant::now();
    let offset_start = clock_offset(clock);
    let now = ns_per(ROUNDS, N, |n| {
        for _ in 0..n {
            black_box(clock.now());
        }
    });
    let get_now = ns_per(ROUNDS, N, |n| {
        for _ in 0..n {
            black_box(livetrace_ring::clock::now());
        }
    });
    let gettime = ns_per(ROUNDS, N / 4, |n| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        for _ in 0..n {
            // SAFETY: a valid timespec to write.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            black_box(&ts);
        }
    });

    let r = rings(Mode::Overwrite);
    r.write(rec(0)); // the thread's buffer exists before timing
    let write = ns_per(ROUNDS, N, |n| {
        for i in 0..n {
            r.write(rec(i));
        }
    });
    let write_clock = ns_per(ROUNDS, N, |n| {
        for i in 0..n {
            r.write(Record {
                ts: clock.now(),
                a: i,
                b: i,
                c: i,
            });
        }
    });
    // The same with a 32 KiB buffer that stays in L1: the instructions'
    // own cost, without the store bandwidth a 2 MiB buffer written back
    // to back needs.
    let small = Rings::new(Config {
        records_per_thread: 1024,
        ..Config::default()
    });
    small.write(rec(0));
    let write_l1 = ns_per(ROUNDS, N, |n| {
        for i in 0..n {
            small.write(rec(i));
        }
    });
    let writer8 = ns_per(ROUNDS, N / 8, |n| {
        for i in 0..n {
            r.with_writer(|w| {
                for k in 0..8 {
                    w.push(rec(i * 8 + k));
                }
            });
        }
    }) / 8.0;

    let d = rings(Mode::DropNewest);
    d.write(rec(0));
    d.drain(|_, _, _, _| {});
    let cap = d.config().records_per_thread as u64;
    // Accepting: fill to just under full, then drain outside the timing.
    let mut accept_ns = f64::MAX;
    for _ in 0..ROUNDS * 20 {
        let t = Instant::now();
        for i in 0..cap - 1 {
            d.write(rec(i));
        }
        accept_ns = accept_ns.min(t.elapsed().as_nanos() as f64 / (cap - 1) as f64);
        d.drain(|_, _, _, _| {});
    }
    for i in 0..cap {
        d.write(rec(i));
    }
    let refuse = ns_per(ROUNDS, N / 4, |n| {
        for i in 0..n {
            black_box(d.write(rec(i)));
        }
    });

    // Alternating between two sessions made one after the other: both
    // stay in the thread's cache.
    let r2 = rings(Mode::Overwrite);
    r2.write(rec(0));
    let alternate = ns_per(ROUNDS, N / 4, |n| {
        for i in 0..n {
            r.write(rec(i));
            r2.write(rec(i));
        }
    }) / 2.0;
    // Two sessions that share a cache entry: every write misses and finds
    // its buffer in the thread's own list (no lock).
    let mut spare = Vec::new();
    let r3 = loop {
        let x = Rings::new(Config {
            records_per_thread: 1024,
            ..Config::default()
        });
        x.write(rec(0));
        if x.write(rec(0)) && evicts(&r, &x) {
            break x;
        }
        spare.push(x);
    };
    let collide = ns_per(ROUNDS, N / 4, |n| {
        for i in 0..n {
            r.write(rec(i));
            r3.write(rec(i));
        }
    }) / 2.0;
    drop(spare);

    // The marginal cost inside other work, as in a trace callback: a
    // dependent chain of ~40 cycles per iteration, with and without a write.
    let work = |x: u64| {
        let mut x = x;
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x
    };
    let base = ns_per(ROUNDS, N / 2, |n| {
        let mut x = 1u64;
        for _ in 0..n {
            x = work(x);
        }
        black_box(x);
    });
    let with = ns_per(ROUNDS, N / 2, |n| {
        let mut x = 1u64;
        for i in 0..n {
            x = work(x);
            r.write(Record {
                ts: i,
                a: x,
                b: i,
                c: x,
            });
        }
        black_box(x);
    });
    let marginal = with - base;

    // A thread's first write: creates and prefaults its 2 MiB buffer.
    let mut first_us = Vec::new();
    for _ in 0..8 {
        let r = r.clone();
        first_us.push(
            std::thread::spawn(move || {
                let t = Instant::now();
                r.write(rec(0));
                t.elapsed().as_nanos() as f64 / 1e3
            })
            .join()
            .unwrap(),
        );
    }
    first_us.sort_by(f64::total_cmp);
    let first = first_us[first_us.len() / 2];

    // Reader: drain a full 64 Ki-record buffer.
    let mut drain_ns = f64::MAX;
    for _ in 0..ROUNDS * 4 {
        for i in 0..cap {
            r.write(rec(i));
        }
        let t = Instant::now();
        let got = r.drain(|_, _, records, _| {
            black_box(records);
        });
        drain_ns = drain_ns.min(t.elapsed().as_nanos() as f64 / got as f64);
    }

    let (offset_end, span) = (clock_offset(clock), started.elapsed());
    eprintln!(
        "to_ns(now()) - CLOCK_MONOTONIC: {offset_start} ns after calibration, {offset_end} ns {:.1} s later",
        span.as_secs_f64()
    );
    eprintln!("clock.now() (lfence; rdtsc)           {now:6.2} ns");
    eprintln!("clock::now() (incl. Clock::get)        {get_now:6.2} ns");
    eprintln!("clock_gettime(CLOCK_MONOTONIC)        {gettime:6.2} ns");
    eprintln!("write, Overwrite                      {write:6.2} ns/record");
    eprintln!("write, Overwrite, 32 KiB buffer (L1)  {write_l1:6.2} ns/record");
    eprintln!("write, Overwrite, ts = clock.now()    {write_clock:6.2} ns/record");
    eprintln!("with_writer, 8 pushes                 {writer8:6.2} ns/record");
    eprintln!("write, DropNewest, accepted           {accept_ns:6.2} ns/record");
    eprintln!("write, DropNewest, refused (full)     {refuse:6.2} ns/record");
    eprintln!("write, alternating two Rings          {alternate:6.2} ns/record");
    eprintln!("write, two Rings sharing a cache entry {collide:5.2} ns/record");
    eprintln!("write amid ~40 cycles of other work   {marginal:6.2} ns/record (marginal)");
    eprintln!("first write of a thread (median)      {first:6.1} µs");
    eprintln!("drain, full buffer                    {drain_ns:6.2} ns/record");
    println!(
        "RESULT bench=ring clock_offset_start_ns={offset_start} clock_offset_end_ns={offset_end} \
         clock_offset_span_s={:.1} clock_now_ns={now:.2} clock_get_now_ns={get_now:.2} clock_gettime_ns={gettime:.2} \
         write_ns={write:.2} write_l1_ns={write_l1:.2} write_with_clock_ns={write_clock:.2} with_writer8_ns={writer8:.2} \
         drop_newest_accept_ns={accept_ns:.2} drop_newest_refuse_ns={refuse:.2} alternate_rings_ns={alternate:.2} \
         cache_miss_ns={collide:.2} marginal_ns={marginal:.2} \
         first_write_us={first:.1} drain_ns={drain_ns:.2}",
        span.as_secs_f64()
    );
}
