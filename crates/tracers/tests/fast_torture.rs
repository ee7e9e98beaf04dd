//! The fast paths under fire: cores+1 threads call nested traced functions
//! while graph and function sessions start and stop around them, the
//! functions move between the fast paths and the list caller, and a signal
//! handler calls a traced function and takes a backtrace at arbitrary
//! points of the threads — inside the fast paths' critical sections and
//! the return hooks too. One more thread runs coroutines that switch
//! stacks inside traced functions. Every call must return its value, no
//! backtrace may show the hook, and every thread's trace must nest: each
//! exit closes the innermost open entry, at the depth that entry had (on
//! the coroutines' thread, an open entry of the same function and depth:
//! their calls interleave).
//!
//! `LIVETRACE_SOAK_SECS=n` runs it for n seconds instead of ~40 rounds.

mod common;
use common::{coro, traced};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

use livetrace_ftrace::insert_external;
use livetrace_output::Event;
use livetrace_sites::ExternalSite;
use livetrace_tracers::{Config, Session, Tracer};

traced!(".text.lt_fast_torture"; ft_outer => outer_body, ft_middle => middle_body, ft_leaf => leaf_body,
    ft_yield => yield_body);

/// In a coroutine: yields around a call of ft_middle.
extern "C-unwind" fn yield_body(n: u64) -> u64 {
    coro::yield_now();
    // SAFETY: plain call through the stub.
    let v = unsafe { ft_middle(n) };
    coro::yield_now();
    v
}

extern "C-unwind" fn outer_body(n: u64) -> u64 {
    // SAFETY: plain calls through the stubs (same ABI as the bodies).
    unsafe { ft_middle(n) + ft_leaf(n) }
}
extern "C-unwind" fn middle_body(n: u64) -> u64 {
    let mut s = 0;
    for i in 0..n {
        // SAFETY: as above.
        s += unsafe { ft_leaf(i) };
    }
    s
}
extern "C-unwind" fn leaf_body(n: u64) -> u64 {
    std::hint::black_box(n * 3)
}

/// outer(n) = 3 * (0 + 1 + ... + n - 1) + 3n.
fn expected(n: u64) -> u64 {
    3 * (n * (n - 1) / 2) + 3 * n
}

static BAD: AtomicU64 = AtomicU64::new(0);
static IN_HANDLER: AtomicU64 = AtomicU64::new(0);
static HOOK_SEEN: AtomicU64 = AtomicU64::new(0);

struct Walk {
    ips: [usize; 64],
    n: usize,
}
unsafe extern "C" fn collect(ctx: *mut std::ffi::c_void, arg: *mut std::ffi::c_void) -> i32 {
    unsafe extern "C" {
        fn _Unwind_GetIP(ctx: *mut std::ffi::c_void) -> usize;
    }
    // SAFETY: `arg` is the Walk below; the context is the unwinder's.
    let w = unsafe { &mut *(arg as *mut Walk) };
    if w.n == w.ips.len() {
        return 5;
    }
    // SAFETY: as above.
    w.ips[w.n] = unsafe { _Unwind_GetIP(ctx) };
    w.n += 1;
    0
}

extern "C" fn on_signal(_: libc::c_int) {
    unsafe extern "C" {
        fn _Unwind_Backtrace(
            trace: unsafe extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_void) -> i32,
            arg: *mut std::ffi::c_void,
        ) -> i32;
    }
    // Async-signal-safe: a traced call, a backtrace (a sampling profiler's)
    // and atomic adds.
    // SAFETY: plain call through the stub.
    if unsafe { ft_leaf(7) } != 21 {
        BAD.fetch_add(1, Relaxed);
    }
    let mut w = Walk { ips: [0; 64], n: 0 };
    // SAFETY: `collect` is a trace function; `w` outlives the walk.
    unsafe { _Unwind_Backtrace(collect, (&raw mut w).cast()) };
    let hook = livetrace_tracers::retstack::return_to_handler_addr();
    if w.ips[..w.n].contains(&hook) {
        HOOK_SEEN.fetch_add(1, Relaxed);
    }
    IN_HANDLER.fetch_add(1, Relaxed);
}

fn setup() {
    let sites = [
        (ft_outer as *const () as usize, "ft::outer"),
        (ft_middle as *const () as usize, "ft::middle"),
        (ft_leaf as *const () as usize, "ft::leaf"),
        (ft_yield as *const () as usize, "ft::yield"),
    ];
    let sites: Vec<ExternalSite<'_>> = sites
        .iter()
        .map(|&(addr, name)| ExternalSite {
            addr,
            name,
            file: file!(),
            line: 1,
        })
        .collect();
    insert_external(&sites).unwrap();
}

/// Checks that each exit of a thread whose calls interleave (coroutines)
/// closes an open entry of the same function and depth; returns how many.
fn check_pairs(tid: u32, events: &[Event]) -> usize {
    let mut open: Vec<(u64, u32)> = Vec::new();
    let mut complete = 0;
    for (i, e) in events.iter().enumerate() {
        match *e {
            Event::Entry { func, depth, .. } => open.push((func, depth)),
            Event::Exit { func, depth, .. } => {
                let k = open.iter().rposition(|&o| o == (func, depth));
                let k =
                    k.unwrap_or_else(|| panic!("thread {tid}, event {i}: an exit with no entry"));
                open.remove(k);
                complete += 1;
            }
            Event::Call { .. } => panic!("thread {tid}: a function event in a graph trace"),
        }
    }
    complete
}

/// Checks that a thread's graph events nest; returns how many calls were
/// recorded complete.
fn check_nesting(tid: u32, events: &[Event]) -> usize {
    let mut stack: Vec<(u64, u32)> = Vec::new();
    let mut complete = 0;
    for (i, e) in events.iter().enumerate() {
        match *e {
            Event::Entry { func, depth, .. } => {
                if let Some(&(_, top)) = stack.last() {
                    assert_eq!(depth, top + 1, "thread {tid}, event {i}: entry depth");
                }
                stack.push((func, depth));
            }
            Event::Exit { func, depth, .. } => {
                let open = stack.pop();
                assert_eq!(
                    open,
                    Some((func, depth)),
                    "thread {tid}, event {i}: exit does not close the innermost entry"
                );
                complete += 1;
            }
            Event::Call { .. } => panic!("thread {tid}: a function event in a graph trace"),
        }
    }
    // Calls in flight when the snapshot was taken: at most one chain.
    assert!(
        stack.len() <= 4,
        "thread {tid}: {} entries never closed",
        stack.len()
    );
    complete
}

#[test]
fn fast_paths_under_signals_and_session_churn() {
    setup();
    let sig = libc::SIGRTMIN() + 4;
    // SAFETY: installs a handler that only makes async-signal-safe calls;
    // SA_RESTART keeps the test's own blocking calls going.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
    let soak = std::env::var("LIVETRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let (mut complete, mut rounds, mut fast_rounds) = (0usize, 0u32, 0u32);
    let ids = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..workers {
            let (stop, calls, ids) = (&stop, &calls, &ids);
            s.spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                ids.lock()
                    .unwrap()
                    .push(unsafe { libc::pthread_self() } as usize);
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let k = 1 + (n + w as u64) % 4;
                    // SAFETY: plain call through the stub.
                    if unsafe { ft_outer(k) } != expected(k) {
                        BAD.fetch_add(1, Relaxed);
                    }
                    n += 1;
                }
                calls.fetch_add(n, Relaxed);
            });
        }
        // The coroutines' thread: four coroutines on adjacent stacks, each
        // switching inside ft::yield, round after round.
        let coro_tid = &*Box::leak(Box::new(AtomicU64::new(0)));
        {
            let (stop, calls, ids) = (&stop, &calls, &ids);
            s.spawn(move || {
                coro_tid.store(livetrace_ring::gettid() as u64, Relaxed);
                // SAFETY: pthread_self has no preconditions.
                ids.lock()
                    .unwrap()
                    .push(unsafe { libc::pthread_self() } as usize);
                // The signal handler's traced call may be this thread's
                // first in a session, which allocates: it must not
                // interrupt malloc. So making and dropping the coroutines
                // (which allocate) happens with the signal blocked; running
                // them does not allocate.
                let block = |how| {
                    // SAFETY: plain signal mask changes of this thread.
                    unsafe {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, sig);
                        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
                    }
                };
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    block(libc::SIG_BLOCK);
                    let bodies: Vec<Box<dyn FnOnce()>> = (0..4u64)
                        .map(|c| {
                            Box::new(move || {
                                for k in 1..=8u64 {
                                    let m = 1 + (k + c) % 4;
                                    // SAFETY: plain call through the stub.
                                    if unsafe { ft_yield(m) } != 3 * (m * (m - 1) / 2) {
                                        BAD.fetch_add(1, Relaxed);
                                    }
                                }
                            }) as Box<dyn FnOnce()>
                        })
                        .collect();
                    let mut coros = coro::Coros::new(bodies);
                    block(libc::SIG_UNBLOCK);
                    coros.run();
                    block(libc::SIG_BLOCK);
                    if (0..4).any(|i| coros.panicked(i)) {
                        BAD.fetch_add(1, Relaxed);
                    }
                    drop(coros);
                    block(libc::SIG_UNBLOCK);
                    n += 32;
                }
                calls.fetch_add(n, Relaxed);
            });
        }
        while ids.lock().unwrap().len() < workers + 1 {
            std::thread::yield_now();
        }
        let pthreads: Vec<libc::pthread_t> = ids
            .lock()
            .unwrap()
            .iter()
            .map(|&t| t as libc::pthread_t)
            .collect();
        let stop_kill = &*Box::leak(Box::new(AtomicBool::new(false)));
        s.spawn(move || {
            while !stop_kill.load(Relaxed) {
                for &t in &pthreads {
                    // SAFETY: the workers run until `stop` is set, which
                    // happens only after this loop ends.
                    unsafe { libc::pthread_kill(t, sig) };
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        // A failed assertion below must stop every thread (and fail the
        // test) rather than leave the scope waiting for them forever.
        struct StopOnDrop<'a>(&'a AtomicBool, &'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
                self.1.store(true, Relaxed);
            }
        }
        let _stop_all = StopOnDrop(stop_kill, &stop);
        let start = Instant::now();
        loop {
            let done = match soak {
                Some(secs) => start.elapsed() >= Duration::from_secs(secs),
                None => rounds >= 40,
            };
            if done {
                break;
            }
            // Odd rounds: a function session shares ft::leaf, which then
            // goes through the list caller while the others stay fast.
            let mut cfg = Config::new(Tracer::Graph, &["ft::*"]);
            cfg.ring.mode = livetrace_ring::Mode::DropNewest;
            cfg.ring.prefault = false;
            let mut graph = Session::start(cfg).unwrap();
            let mut func = (rounds % 2 == 1)
                .then(|| Session::start(Config::new(Tracer::Function, &["ft::leaf"])).unwrap());
            std::thread::sleep(Duration::from_millis(5));
            if let Some(f) = func.as_mut() {
                f.stop().unwrap();
                let trace = f.snapshot();
                for t in &trace.threads {
                    for e in &t.events {
                        let Event::Call { func, caller, .. } = *e else {
                            panic!("a graph event in a function trace")
                        };
                        assert_eq!(func, ft_leaf as *const () as u64);
                        assert_ne!(caller, 0);
                    }
                }
            }
            graph.stop().unwrap();
            // Let frames hooked before the stop return into the session.
            std::thread::sleep(Duration::from_millis(1));
            let trace = graph.snapshot();
            for t in &trace.threads {
                complete += if u64::from(t.tid) == coro_tid.load(Relaxed) {
                    check_pairs(t.tid, &t.events)
                } else {
                    check_nesting(t.tid, &t.events)
                };
            }
            fast_rounds += u32::from(graph.has_fast_path());
            drop(func);
            // Frames still hooked now return into no session.
            drop(graph);
            rounds += 1;
        }
        stop_kill.store(true, Relaxed);
        stop.store(true, Relaxed);
    });
    let calls = calls.load(Relaxed);
    eprintln!(
        "{rounds} rounds ({fast_rounds} with fast paths), {calls} calls, {complete} recorded \
         complete, {} signals handled",
        IN_HANDLER.load(Relaxed)
    );
    assert_eq!(BAD.load(Relaxed), 0, "a call returned a wrong value");
    assert_eq!(HOOK_SEEN.load(Relaxed), 0, "a backtrace showed the hook");
    assert!(complete > 1000, "too few calls recorded to mean anything");
    assert!(
        IN_HANDLER.load(Relaxed) > 100,
        "the signals did not get through"
    );
    if std::env::var_os("LIVETRACE_NO_FAST_PATH").is_none() {
        assert_eq!(fast_rounds, rounds, "the fast paths were not used");
    }
}
