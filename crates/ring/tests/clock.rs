//! The trace clock against CLOCK_MONOTONIC, across threads, and its choice
//! of source.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livetrace_ring::clock::ENV_VAR;
use livetrace_ring::{Clock, Source};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn converted_ticks_track_clock_monotonic_for_100ms() {
    // Each reading is bracketed by two clock_gettime calls, so preemption
    // only widens the bracket; the conversion must land inside it, give or
    // take the calibration's error.
    const SLACK_NS: u64 = 3_000;
    let clock = Clock::get();
    let end = Instant::now() + Duration::from_millis(100);
    let (mut n, mut worst) = (0u64, 0i64);
    while Instant::now() < end {
        let before = monotonic_ns();
        let t = clock.now();
        let after = monotonic_ns();
        let ns = clock.to_ns(t);
        assert!(
            ns + SLACK_NS >= before && ns <= after + SLACK_NS,
            "to_ns(now()) = {ns} outside [{before}, {after}] by more than {SLACK_NS} ns ({:?})",
            clock.source()
        );
        let off = if ns < before {
            before as i64 - ns as i64
        } else {
            (ns as i64 - after as i64).max(0)
        };
        worst = worst.max(off);
        n += 1;
        if n.is_multiple_of(1000) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    eprintln!(
        "{n} readings, worst outside the bracket: {worst} ns, source {:?}",
        clock.source()
    );
}

#[test]
fn monotonic_across_threads() {
    // Each thread takes the lock, reads the clock and checks it is not
    // before the last reading of any thread: a reading made after seeing
    // another thread's store is never earlier than that thread's.
    let last = Arc::new(Mutex::new(0u64));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let last = last.clone();
            std::thread::spawn(move || {
                let clock = Clock::get();
                let mut mine = 0;
                for i in 0..200_000u32 {
                    let mut l = last.lock().unwrap();
                    let t = clock.now();
                    assert!(t >= *l, "time went back across threads: {t} < {}", *l);
                    assert!(t >= mine, "time went back on one thread");
                    *l = t;
                    mine = t;
                    drop(l);
                    if i.is_multiple_of(1024) {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn a_reading_after_seeing_another_threads_is_not_earlier() {
    // One thread publishes its readings with Release stores; the other
    // loads one (Acquire) and reads the clock right after. A bare `rdtsc`
    // may execute before that load completes and come out earlier than the
    // value loaded (measured here: in 15-30% of iterations); the ordered
    // read never does.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (p2, s2) = (published.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let clock = Clock::get();
        while !s2.load(Relaxed) {
            p2.store(clock.now(), Release);
        }
    });
    let clock = Clock::get();
    let (mut inversions, mut worst, mut n) = (0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_millis(300);
    while !n.is_multiple_of(4096) || Instant::now() < end {
        let seen = published.load(Acquire);
        let t = clock.now();
        if t < seen {
            inversions += 1;
            worst = worst.max(seen - t);
        }
        n += 1;
    }
    stop.store(true, Relaxed);
    writer.join().unwrap();
    assert_eq!(
        inversions, 0,
        "{inversions} of {n} readings earlier than one already seen (worst by {worst} ticks)"
    );
}

#[test]
fn reports_its_source_and_frequency() {
    let c = Clock::get();
    match c.source() {
        Source::Tsc => {
            assert!(c.fallback_reason().is_none());
            assert!(
                (100_000_000..20_000_000_000).contains(&c.frequency_hz()),
                "{} Hz",
                c.frequency_hz()
            );
            // The rate matches what we observe over 20 ms (each end the
            // tightest of 16 brackets, so preemption cannot skew it).
            let pair = || {
                (0..16)
                    .map(|_| {
                        let (t0, ns, t1) = (c.now(), monotonic_ns(), c.now());
                        (t1 - t0, t0 + (t1 - t0) / 2, ns)
                    })
                    .min()
                    .map(|(_, t, ns)| (t, ns))
                    .unwrap()
            };
            let (t0, n0) = pair();
            std::thread::sleep(Duration::from_millis(20));
            let (t1, n1) = pair();
            let observed = (t1 - t0) as f64 * 1e9 / (n1 - n0) as f64;
            let err = (observed - c.frequency_hz() as f64).abs() / observed;
            assert!(
                err < 1e-3,
                "observed {observed} Hz vs calibrated {}",
                c.frequency_hz()
            );
        }
        Source::Monotonic => {
            assert!(c.fallback_reason().is_some());
            assert_eq!(c.frequency_hz(), 1_000_000_000);
            assert_eq!(c.to_ns(12345), 12345);
        }
    }
}

/// Runs in a child process (see below) and checks the source against the
/// system the test runs on; also passes by itself when run directly.
#[test]
fn child_source_matches_the_system() {
    let c = Clock::get();
    let forced = std::env::var(ENV_VAR).is_ok_and(|v| v == "monotonic");
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags_ok = cpu
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| {
            l.split_whitespace().any(|f| f == "constant_tsc")
                && l.split_whitespace().any(|f| f == "nonstop_tsc")
        });
    let cs =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    let expect = if !forced && flags_ok && cs.trim() == "tsc" {
        Source::Tsc
    } else {
        Source::Monotonic
    };
    assert_eq!(c.source(), expect, "reason: {:?}", c.fallback_reason());
    if forced {
        assert!(c.fallback_reason().unwrap().contains(ENV_VAR));
    }
    println!(
        "CHILD-OK source={:?} calibration={:?}",
        c.source(),
        c.calibration_time()
    );
}

fn run_child(env: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_source_matches_the_system",
        "--nocapture",
        "--test-threads=1",
    ]);
    match env {
        Some(v) => cmd.env(ENV_VAR, v),
        None => cmd.env_remove(ENV_VAR),
    };
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn env_var_forces_monotonic() {
    let out = run_child(Some("monotonic"));
    assert!(out.contains("CHILD-OK source=Monotonic"), "{out}");
    // And without it, the automatic choice (checked against the system in
    // the child) is made.
    run_child(None);
}
