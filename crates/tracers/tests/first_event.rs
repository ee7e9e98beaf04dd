//! A thread's first traced call may be in a signal handler that
//! interrupted it inside `malloc`: making the thread's buffer and state
//! then must neither allocate nor lock (a `malloc` in the handler would
//! wait for the arena lock the interrupted `malloc` holds, for ever).
//!
//! Many threads each hammer `malloc` with sizes that take the arena lock;
//! a signaller interrupts each once, at a random point; the handler's
//! traced call is the thread's first event, for both tracers that keep
//! per-thread state, through the fast paths and without. A watchdog fails
//! the test if any thread hangs.

mod common;
use common::traced;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livetrace_ftrace::insert_external;
use livetrace_output::Event;
use livetrace_sites::ExternalSite;
use livetrace_tracers::{Config, Session, Tracer};

traced!(".text.lt_first_event"; fe_handler_call => handler_call_body);

extern "C-unwind" fn handler_call_body(n: u64) -> u64 {
    std::hint::black_box(n + 1)
}

static HANDLED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static DONE: AtomicBool = const { AtomicBool::new(false) };
}

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe here: a traced call, atomic stores.
    // SAFETY: plain call through the stub.
    let v = unsafe { fe_handler_call(1) };
    assert_eq!(v, 2);
    HANDLED.fetch_add(1, Relaxed);
    DONE.with(|d| d.store(true, Relaxed));
}

fn setup() {
    let sites = [ExternalSite {
        addr: fe_handler_call as *const () as usize,
        name: "fe::handler_call",
        file: file!(),
        line: 1,
    }];
    insert_external(&sites).unwrap();
    // SAFETY: installs a handler that is async-signal-safe (see above).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
}

/// Allocations the arena serves under its lock: above the per-thread
/// cache's sizes, below the mmap threshold.
fn hammer(seed: u64) {
    let mut x = seed | 1;
    let mut keep: Vec<Vec<u8>> = Vec::with_capacity(8);
    while !DONE.with(|d| d.load(Relaxed)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 2048 + (x % 60_000) as usize;
        let v = std::hint::black_box(Vec::<u8>::with_capacity(size));
        if keep.len() == 8 {
            keep.swap_remove((x % 8) as usize);
        }
        keep.push(v);
    }
}

fn run(tracer: Tracer, fast: bool, threads: usize) {
    let mut cfg = Config::new(tracer, &["fe::handler_call"]);
    cfg.fast_path = fast;
    cfg.ring.records_per_thread = 1024;
    let s = Session::start(cfg).unwrap();
    let before = HANDLED.load(Relaxed);
    let tids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut x = 0x9e37_79b9u64 ^ threads as u64;
    // A few threads at a time, each interrupted once mid-hammering.
    for batch in 0..threads / 4 {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let tids = tids.clone();
                std::thread::spawn(move || {
                    // SAFETY: pthread_self has no preconditions.
                    let me = unsafe { libc::pthread_self() };
                    tids.lock()
                        .unwrap()
                        .push((me, livetrace_ring::gettid(), false));
                    hammer((batch * 4 + i) as u64);
                })
            })
            .collect();
        // Wait until each runs, then signal it after a random delay.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tids.lock().unwrap().iter().filter(|t| !t.2).count() < 4 {
            assert!(Instant::now() < deadline, "threads did not start");
            std::thread::yield_now();
        }
        for t in tids.lock().unwrap().iter_mut().filter(|t| !t.2) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::thread::sleep(Duration::from_micros(x % 300));
            // SAFETY: signals a live thread of ours (it runs until handled).
            unsafe { libc::pthread_kill(t.0, libc::SIGUSR2) };
            t.2 = true;
        }
        for h in handles {
            h.join().unwrap();
        }
    }
    assert_eq!(HANDLED.load(Relaxed) - before, (threads / 4 * 4) as u64);
    if tracer == Tracer::Profile {
        let rows = s.profile();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].calls, (threads / 4 * 4) as u64, "{rows:?}");
        return;
    }
    // Every handler call is its thread's first and only event(s).
    let trace = s.snapshot();
    let want = match tracer {
        Tracer::Function => 1,
        _ => 2,
    };
    let ours: Vec<i32> = tids.lock().unwrap().iter().map(|t| t.1).collect();
    let mut seen = 0;
    for t in &trace.threads {
        if !ours.contains(&(t.tid as i32)) {
            continue;
        }
        seen += 1;
        assert_eq!(t.events.len(), want, "thread {}: {:?}", t.tid, t.events);
        assert!(
            matches!(t.events[0], Event::Call { .. } | Event::Entry { .. }),
            "{:?}",
            t.events
        );
    }
    assert_eq!(seen, ours.len(), "each thread recorded its handler's call");
}

#[test]
fn a_threads_first_event_in_a_signal_handler_interrupting_malloc() {
    setup();
    // The watchdog: a hang here is the bug.
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(120);
        while !d2.load(Relaxed) {
            if Instant::now() > end {
                eprintln!("a thread hung: its first event allocated or locked in a signal handler");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let threads = 128;
    for fast in [true, false] {
        run(Tracer::Graph, fast, threads);
        run(Tracer::Function, fast, threads);
    }
    run(Tracer::Profile, false, threads);
    done.store(true, Relaxed);
}
