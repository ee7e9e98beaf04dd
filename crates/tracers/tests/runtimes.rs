//! The graph tracer in what real runtimes do to the stack: coroutines on
//! their own stacks switched inside traced functions (one panicking), and
//! a sampling profiler taking backtraces from a signal handler at any
//! instruction, while sessions start and stop. With and without the fast
//! paths.

mod common;
use common::{coro, traced};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use livetrace_ftrace::insert_external;
use livetrace_output::{Event, ThreadTrace};
use livetrace_sites::ExternalSite;
use livetrace_tracers::{shadow_stats, Config, Session, Tracer};

traced!(".text.lt_runtimes";
    r_outer => outer_body, r_yielding => yielding_body, r_leaf => leaf_body,
    p_outer => p_outer_body, p_middle => p_middle_body, p_leaf => p_leaf_body,
    m_yielding => m_yielding_body);

// ---- coroutines ----

/// Sum of r_yielding(arg * 10 + m) for m < arg % 1000.
extern "C-unwind" fn outer_body(arg: u64) -> u64 {
    let mut s = 0;
    for m in 0..arg % 1000 {
        // SAFETY: plain calls through the stubs (same ABI as the bodies).
        s += unsafe { r_yielding(arg * 10 + m) };
    }
    s
}
/// Yields before and after its call; coroutine 2's fourth call panics.
extern "C-unwind" fn yielding_body(x: u64) -> u64 {
    coro::yield_now();
    // SAFETY: as above.
    let v = unsafe { r_leaf(x) };
    coro::yield_now();
    if x / 10_000 == 2 && x % 10 == 3 {
        panic!("coroutine 2 panics inside traced frames");
    }
    v
}
extern "C-unwind" fn leaf_body(x: u64) -> u64 {
    std::hint::black_box(x * 3)
}

fn expected(arg: u64) -> u64 {
    (0..arg % 1000).map(|m| (arg * 10 + m) * 3).sum()
}

static SETUP: std::sync::Once = std::sync::Once::new();
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    SETUP.call_once(|| {
        let f = |s: unsafe extern "C-unwind" fn(u64) -> u64| s as *const () as usize;
        let sites = [
            (f(r_outer), "rt::outer"),
            (f(r_yielding), "rt::yielding"),
            (f(r_leaf), "rt::leaf"),
            (f(p_outer), "prof::outer"),
            (f(p_middle), "prof::middle"),
            (f(p_leaf), "prof::leaf"),
            (f(m_yielding), "migr::yielding"),
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
    });
    serial
}

/// Every exit closes an open entry of the same function and depth (calls
/// of different coroutines interleave on one thread, so not necessarily the
/// innermost). Returns the exits.
fn check_pairs(t: &ThreadTrace) -> usize {
    let mut open: Vec<(u64, u32)> = Vec::new();
    let mut exits = 0;
    for (i, e) in t.events.iter().enumerate() {
        match *e {
            Event::Entry { func, depth, .. } => open.push((func, depth)),
            Event::Exit { func, depth, .. } => {
                let k = open
                    .iter()
                    .rposition(|&o| o == (func, depth))
                    .unwrap_or_else(|| panic!("event {i}: an exit with no open entry"));
                open.remove(k);
                exits += 1;
            }
            Event::Call { .. } => panic!("a function event in a graph trace"),
        }
    }
    exits
}

fn coroutines(fast: bool) {
    let _serial = setup();
    let mut cfg = Config::new(Tracer::Graph, &["rt::*"]);
    cfg.fast_path = fast;
    let session = Session::start(cfg).unwrap();
    let before = shadow_stats();
    let results: &'static Mutex<Vec<(u64, u64)>> = Box::leak(Box::new(Mutex::new(Vec::new())));
    let bodies: Vec<Box<dyn FnOnce()>> = (0..5u64)
        .map(|i| {
            Box::new(move || {
                for reps in 1..=6 {
                    let arg = i * 1000 + reps;
                    // SAFETY: as above.
                    let got = unsafe { r_outer(arg) };
                    results.lock().unwrap().push((arg, got));
                }
            }) as Box<dyn FnOnce()>
        })
        .collect();
    let panicked = coro::run(bodies);
    assert_eq!(panicked, [false, false, true, false, false]);
    for &(arg, got) in results.lock().unwrap().iter() {
        assert_eq!(got, expected(arg), "r_outer({arg})");
    }
    assert_eq!(
        livetrace_tracers::retstack::depth(),
        0,
        "frames left hooked"
    );
    let after = shadow_stats();
    // The panic went through r_yielding and r_outer.
    assert_eq!(after.unwound, before.unwound + 2, "{after:?}");
    let trace = session.snapshot();
    let me = livetrace_ring::gettid() as u32;
    let mine = trace.threads.iter().find(|t| t.tid == me).unwrap();
    assert!(check_pairs(mine) > 100, "too few exits recorded");
    drop(session);
}

#[test]
fn coroutines_switching_inside_traced_frames_with_a_panic_in_one() {
    coroutines(std::env::var_os("LIVETRACE_NO_FAST_PATH").is_none());
    coroutines(false);
}

// ---- a coroutine resumed on another thread ----

struct Contexts {
    coro: libc::ucontext_t,
    back: libc::ucontext_t,
    stack: Vec<u8>,
    result: u64,
}
static MIGR: AtomicPtr<Contexts> = AtomicPtr::new(std::ptr::null_mut());

/// Yields in the middle (to whichever thread resumed the coroutine).
extern "C-unwind" fn m_yielding_body(x: u64) -> u64 {
    let c = MIGR.load(Acquire);
    // SAFETY: the contexts outlive the coroutine; switching back to the
    // thread that resumed it.
    unsafe { libc::swapcontext(&mut (*c).coro, &(*c).back) };
    x * 2
}

extern "C" fn migr_start() {
    // SAFETY: plain call through the stub.
    let v = unsafe { m_yielding(21) };
    let c = MIGR.load(Acquire);
    // SAFETY: as above.
    unsafe {
        (*c).result = v;
        libc::swapcontext(&mut (*c).coro, &(*c).back);
    }
}

#[test]
fn a_coroutine_resumed_on_another_thread_returns_through_its_frames() {
    let _serial = setup();
    for fast in [true, false] {
        let mut cfg = Config::new(Tracer::Graph, &["migr::*"]);
        cfg.fast_path = fast && std::env::var_os("LIVETRACE_NO_FAST_PATH").is_none();
        let session = Session::start(cfg).unwrap();
        let c = Box::into_raw(Box::new(Contexts {
            // SAFETY: all-zero is a valid ucontext_t to overwrite.
            coro: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            back: unsafe { std::mem::zeroed() },
            stack: vec![0; coro::STACK],
            result: 0,
        }));
        MIGR.store(c, Release);
        // SAFETY: the contexts are boxed (never move) and outlive both
        // threads' use of them; each thread resumes the coroutine once and
        // is switched back to.
        unsafe {
            libc::getcontext(&mut (*c).coro);
            (*c).coro.uc_stack.ss_sp = (*c).stack.as_mut_ptr().cast();
            (*c).coro.uc_stack.ss_size = coro::STACK;
            libc::makecontext(&mut (*c).coro, migr_start, 0);
        }
        let first = std::thread::spawn(|| {
            let c = MIGR.load(Acquire);
            // SAFETY: as above: runs the coroutine to its yield.
            unsafe { libc::swapcontext(&mut (*c).back, &(*c).coro) };
            livetrace_tracers::retstack::depth()
        });
        assert_eq!(first.join().unwrap(), 1, "the first thread hooked the call");
        let second = std::thread::spawn(|| {
            let c = MIGR.load(Acquire);
            // SAFETY: as above: the coroutine returns on this thread.
            unsafe { libc::swapcontext(&mut (*c).back, &(*c).coro) };
            shadow_stats().migrated
        });
        assert_eq!(second.join().unwrap(), 1, "fast path {fast}");
        // SAFETY: both threads are done with the contexts.
        let c = unsafe { Box::from_raw(c) };
        assert_eq!(c.result, 42);
        let exits: usize = session
            .snapshot()
            .threads
            .iter()
            .map(|t| {
                t.events
                    .iter()
                    .filter(|e| matches!(e, Event::Exit { .. }))
                    .count()
            })
            .sum();
        assert_eq!(exits, 1, "the exit is recorded, on the second thread");
    }
}

// ---- a sampling profiler ----

extern "C-unwind" fn p_outer_body(n: u64) -> u64 {
    // SAFETY: as above.
    unsafe { p_middle(n) + p_leaf(n) }
}
extern "C-unwind" fn p_middle_body(n: u64) -> u64 {
    let mut s = 0;
    for i in 0..n {
        // SAFETY: as above.
        s += unsafe { p_leaf(i) };
    }
    s
}
extern "C-unwind" fn p_leaf_body(n: u64) -> u64 {
    std::hint::black_box(n * 3)
}

/// An allocator that tells the signal handler when its thread is inside it
/// (a handler must not allocate then).
struct Guarded;
thread_local! {
    static IN_ALLOC: Cell<u32> = const { Cell::new(0) };
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}
// SAFETY: forwards to the system allocator.
unsafe impl std::alloc::GlobalAlloc for Guarded {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        IN_ALLOC.with(|c| c.set(c.get() + 1));
        // SAFETY: as the caller's contract.
        let p = unsafe { std::alloc::System.alloc(l) };
        IN_ALLOC.with(|c| c.set(c.get() - 1));
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        IN_ALLOC.with(|c| c.set(c.get() + 1));
        // SAFETY: as the caller's contract.
        unsafe { std::alloc::System.dealloc(p, l) };
        IN_ALLOC.with(|c| c.set(c.get() - 1));
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        IN_ALLOC.with(|c| c.set(c.get() + 1));
        // SAFETY: as the caller's contract.
        let q = unsafe { std::alloc::System.realloc(p, l, n) };
        IN_ALLOC.with(|c| c.set(c.get() - 1));
        q
    }
}
#[global_allocator]
static ALLOC: Guarded = Guarded;

static WORKERS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static SAMPLES: AtomicU64 = AtomicU64::new(0);
static IN_LOOP_SAMPLES: AtomicU64 = AtomicU64::new(0);
static LOST_LOOP: AtomicU64 = AtomicU64::new(0);
static HOOK_SEEN: AtomicU64 = AtomicU64::new(0);
static CAPTURED: AtomicU64 = AtomicU64::new(0);
/// One captured std backtrace, handed to the test thread to read.
/// The last address each walk that stopped early reached.
static LOST_AT: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static KEPT: AtomicPtr<std::backtrace::Backtrace> = AtomicPtr::new(std::ptr::null_mut());

const WALK: usize = 128;
struct Walk {
    ips: [usize; WALK],
    n: usize,
}
unsafe extern "C" fn collect(ctx: *mut std::ffi::c_void, arg: *mut std::ffi::c_void) -> i32 {
    unsafe extern "C" {
        fn _Unwind_GetIP(ctx: *mut std::ffi::c_void) -> usize;
    }
    // SAFETY: `arg` is the Walk below; the context is the unwinder's.
    let w = unsafe { &mut *(arg as *mut Walk) };
    if w.n == WALK {
        return 5;
    }
    // SAFETY: the context is the unwinder's, valid during this callback.
    w.ips[w.n] = unsafe { _Unwind_GetIP(ctx) };
    w.n += 1;
    0
}

extern "C" fn on_prof(_: libc::c_int) {
    unsafe extern "C" {
        fn _Unwind_Backtrace(
            trace: unsafe extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_void) -> i32,
            arg: *mut std::ffi::c_void,
        ) -> i32;
    }
    let n = SAMPLES.fetch_add(1, Relaxed);
    let mut w = Walk {
        ips: [0; WALK],
        n: 0,
    };
    // SAFETY: `collect` is a trace function; `w` outlives the walk.
    unsafe { _Unwind_Backtrace(collect, (&raw mut w).cast()) };
    let hook = livetrace_tracers::retstack::return_to_handler_addr();
    if w.ips[..w.n].contains(&hook) {
        HOOK_SEEN.fetch_add(1, Relaxed);
    }
    if IN_LOOP.with(|c| c.get()) {
        IN_LOOP_SAMPLES.fetch_add(1, Relaxed);
        let lo = worker_loop as *const () as usize;
        if !w.ips[..w.n].iter().any(|&ip| ip > lo && ip < lo + 4096) {
            let i = LOST_LOOP.fetch_add(1, Relaxed) as usize;
            if i < LOST_AT.len() && w.n > 0 {
                LOST_AT[i].store(w.ips[w.n - 1] as u64, Relaxed);
            }
        }
        // Now and then the std backtrace too, when not inside malloc.
        if n.is_multiple_of(8) && IN_ALLOC.with(|c| c.get()) == 0 {
            let bt = Box::new(std::backtrace::Backtrace::force_capture());
            CAPTURED.fetch_add(1, Relaxed);
            let old = KEPT.swap(Box::into_raw(bt), AcqRel);
            if !old.is_null() {
                // SAFETY: from Box::into_raw, taken out of KEPT by the swap.
                drop(unsafe { Box::from_raw(old) });
            }
        }
    }
}

#[inline(never)]
fn worker_loop(stop: &AtomicBool, bad: &AtomicU64) {
    // SAFETY: pthread_self has no preconditions.
    WORKERS
        .lock()
        .unwrap()
        .push(unsafe { libc::pthread_self() } as usize);
    IN_LOOP.with(|c| c.set(true));
    let mut k = 0u64;
    while !stop.load(Relaxed) {
        let n = 1 + k % 5;
        // SAFETY: plain call through the stub.
        let got = unsafe { p_outer(n) };
        if got != 3 * (n * (n - 1) / 2) + 3 * n {
            bad.fetch_add(1, Relaxed);
        }
        k += 1;
    }
    IN_LOOP.with(|c| c.set(false));
}

#[test]
fn a_sampling_profiler_backtraces_through_hooked_frames_at_10_khz() {
    let _serial = setup();
    // SAFETY: installs a handler that allocates only when its thread is
    // not inside the allocator, and makes no other unsafe call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_prof as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
    let stop = AtomicBool::new(false);
    let stop_prof = AtomicBool::new(false);
    let bad = AtomicU64::new(0);
    let soak = std::env::var("LIVETRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| worker_loop(&stop, &bad));
        }
        // 10 kHz per worker, sent to each (ITIMER_PROF ticks at the
        // kernel's HZ, far slower).
        let stop_profr = &stop_prof;
        s.spawn(move || {
            while !stop_profr.load(Relaxed) {
                for &t in WORKERS.lock().unwrap().iter() {
                    // SAFETY: the workers run until after this loop ends.
                    unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGPROF) };
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        let start = Instant::now();
        let mut rounds = 0;
        let fast = std::env::var_os("LIVETRACE_NO_FAST_PATH").is_none();
        while match soak {
            Some(secs) => start.elapsed() < Duration::from_secs(secs),
            None => rounds < 30,
        } {
            let mut cfg = Config::new(Tracer::Graph, &["prof::*"]);
            cfg.fast_path = fast && rounds % 3 != 2;
            cfg.ring.prefault = false;
            let mut session = Session::start(cfg).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            session.stop().unwrap();
            drop(session);
            rounds += 1;
        }
        stop_prof.store(true, Relaxed);
        stop.store(true, Relaxed);
    });
    let samples = IN_LOOP_SAMPLES.load(Relaxed);
    eprintln!(
        "{} samples ({samples} in the workers' loop, {} std backtraces)",
        SAMPLES.load(Relaxed),
        CAPTURED.load(Relaxed)
    );
    assert_eq!(bad.load(Relaxed), 0, "a traced call returned a wrong value");
    assert!(samples > 100, "the profiler did not run");
    assert_eq!(HOOK_SEEN.load(Relaxed), 0, "a backtrace showed the hook");
    // A walk may stop early only where it interrupted code livetrace
    // generated (trampolines and fast paths in anonymous pages have no
    // unwind information), never at a hooked frame.
    let lost: Vec<String> = LOST_AT
        .iter()
        .map(|a| a.load(Relaxed))
        .filter(|&a| a != 0)
        .filter_map(|a| {
            // SAFETY: dladdr only reads the loader's tables.
            let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let in_object = unsafe { libc::dladdr(a as *const _, &mut info) } != 0;
            in_object.then(|| format!("{a:#x}"))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} backtraces stopped before the worker's loop, in code of a loaded object: {lost:?}",
        LOST_LOOP.load(Relaxed)
    );
    let kept = KEPT.swap(std::ptr::null_mut(), AcqRel);
    assert!(!kept.is_null(), "no std backtrace was captured");
    // SAFETY: from Box::into_raw in the handler; the timer is off.
    let bt = format!("{}", unsafe { Box::from_raw(kept) });
    assert!(
        bt.contains("worker_loop") && !bt.contains("lt_return_to"),
        "a std backtrace from the handler:\n{bt}"
    );
}
