//! The tracers end to end: what each records, on real functions.

mod common;
use common::traced;
use std::sync::Once;

use livetrace_fixtures as fx;
use livetrace_ftrace::insert_external;
use livetrace_output::Event;
use livetrace_sites::ExternalSite;
use livetrace_tracers::{shadow_stats, Config, Session, Tracer};

traced!(
    ".text.lt_sessions_test";
    t_outer => outer_body,
    t_middle => middle_body,
    t_leaf => leaf_body,
    t_boom => boom_body,
    t_deep => deep_body,
    t_bt_outer => bt_outer_body,
    t_bt => bt_body,
);

extern "C-unwind" fn bt_outer_body(n: u64) -> u64 {
    // SAFETY: plain call through the stub.
    std::hint::black_box(unsafe { t_bt(n) } + 1)
}
extern "C-unwind" fn bt_body(n: u64) -> u64 {
    let bt = format!("{}", std::backtrace::Backtrace::force_capture());
    assert!(
        bt.contains("bt_outer_body") && bt.contains("graph_backtrace"),
        "a backtrace sees through hooked frames:\n{bt}"
    );
    n * 2
}

extern "C-unwind" fn outer_body(n: u64) -> u64 {
    // SAFETY: plain calls through the stubs (same ABI as the bodies).
    unsafe { t_middle(n) + t_leaf(n) }
}
extern "C-unwind" fn middle_body(n: u64) -> u64 {
    let mut s = 0;
    for i in 0..n {
        // SAFETY: as above.
        s += unsafe { t_leaf(i) };
    }
    s
}
extern "C-unwind" fn leaf_body(n: u64) -> u64 {
    std::hint::black_box(n * 3)
}
extern "C-unwind" fn deep_body(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    // SAFETY: as above.
    1 + unsafe { t_deep(n - 1) }
}
extern "C-unwind" fn boom_body(n: u64) -> u64 {
    if n > 0 {
        // SAFETY: as above.
        return unsafe { t_boom(n - 1) };
    }
    panic!("boom at the bottom");
}

fn addr(f: unsafe extern "C-unwind" fn(u64) -> u64) -> u64 {
    f as *const () as u64
}

/// Sets up the table once, and serialises the tests: two sessions on the
/// same function share it through the list caller, which would take the
/// fast paths out of the tests that count them.
fn setup() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let names: Vec<String> = (0..64).map(|i| format!("fx::f{i:05}")).collect();
        let mut sites: Vec<ExternalSite<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| ExternalSite {
                addr: fx::site(i),
                name: n,
                file: "fixtures",
                line: i as u32,
            })
            .collect();
        for (f, n) in [
            (addr(t_outer), "t::outer"),
            (addr(t_middle), "t::middle"),
            (addr(t_leaf), "t::leaf"),
            (addr(t_boom), "t::boom"),
            (addr(t_deep), "t::deep"),
            (addr(t_bt_outer), "t::bt_outer"),
            (addr(t_bt), "t::bt"),
        ] {
            sites.push(ExternalSite {
                addr: f as usize,
                name: n,
                file: file!(),
                line: 1,
            });
        }
        insert_external(&sites).unwrap();
    });
    serial
}

/// This thread's events (other tests run in parallel threads).
fn mine(trace: &livetrace_output::Trace) -> &livetrace_output::ThreadTrace {
    let me = livetrace_ring::gettid() as u32;
    trace
        .threads
        .iter()
        .find(|t| t.tid == me)
        .expect("this thread recorded events")
}

fn names(trace: &livetrace_output::Trace, events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match *e {
            Event::Call { func, .. } => {
                format!("call {}", trace.symbols.name_of(func).unwrap_or("?"))
            }
            Event::Entry { func, depth, .. } => {
                format!("{depth}>{}", trace.symbols.name_of(func).unwrap_or("?"))
            }
            Event::Exit { func, depth, .. } => {
                format!("{depth}<{}", trace.symbols.name_of(func).unwrap_or("?"))
            }
        })
        .collect()
}

/// Whether the environment leaves the fast paths on.
fn fast_paths_allowed() -> bool {
    std::env::var_os("LIVETRACE_NO_FAST_PATH").is_none()
}

/// A configuration recording through the fast paths or only through the
/// Rust callbacks: every test below runs both ways, and must see the same.
fn config(tracer: Tracer, filter: &[&str], fast: bool) -> Config {
    let mut c = Config::new(tracer, filter);
    c.fast_path = fast;
    c
}

#[test]
fn function_tracer_records_every_call_with_its_caller() {
    let fast = function_tracer(true, &["fx::f0000?"]);
    let slow = function_tracer(false, &["fx::f0004?"]);
    // The same call instruction made every call, both ways.
    assert_eq!(fast.len(), 1);
    assert_eq!(fast, slow);
}

fn function_tracer(fast: bool, filter: &[&str]) -> std::collections::HashSet<u64> {
    let _serial = setup();
    let mut s = Session::start(config(Tracer::Function, filter, fast)).unwrap();
    let base = if fast { 0 } else { 40 };
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                for i in base..base + 20 {
                    assert_eq!(fx::call(i), fx::value_of(i));
                }
            });
        }
    });
    s.stop().unwrap();
    fx::call(base + 1); // not recorded any more
    let trace = s.snapshot();
    let threads: Vec<_> = trace
        .threads
        .iter()
        .filter(|t| !t.events.is_empty())
        .collect();
    assert_eq!(threads.len(), 2);
    let mut callers = std::collections::HashSet::new();
    for t in threads {
        assert_eq!(t.lost, 0);
        let got = names(&trace, &t.events);
        let want: Vec<String> = (base..base + 10)
            .map(|i| format!("call fx::f{i:05}"))
            .collect();
        assert_eq!(got, want);
        let mut last = 0;
        for e in &t.events {
            let Event::Call { ts, caller, .. } = *e else {
                panic!()
            };
            assert!(ts >= last && ts >= trace.start_ns);
            last = ts;
            // The caller is inside this test's closure, not the fixture.
            assert!(fx::index_of(caller as usize).is_none() && caller != 0);
            callers.insert(caller);
        }
    }
    // Each thread's first call goes through the callback (it creates the
    // thread's buffer); the fast path records the rest.
    assert_eq!(s.has_fast_path(), fast && fast_paths_allowed());
    if s.has_fast_path() {
        assert_eq!(s.slow_path_events(), 2);
    }
    callers
}

#[test]
fn graph_tracer_records_nesting_and_durations() {
    graph_tracer(true);
    graph_tracer(false);
}

fn graph_tracer(fast: bool) {
    let _serial = setup();
    let s = Session::start(config(
        Tracer::Graph,
        &["t::outer", "t::middle", "t::leaf"],
        fast,
    ))
    .unwrap();
    // The first call creates this thread's buffer (through the callback).
    // SAFETY: plain call through the stub.
    unsafe { t_leaf(0) };
    let _ = s.drain();
    // SAFETY: plain call through the stub.
    assert_eq!(unsafe { t_outer(2) }, 3 + 6);
    let trace = s.snapshot();
    let t = mine(&trace);
    assert_eq!(
        names(&trace, &t.events),
        [
            "0>t::outer",
            "1>t::middle",
            "2>t::leaf",
            "2<t::leaf",
            "2>t::leaf",
            "2<t::leaf",
            "1<t::middle",
            "1>t::leaf",
            "1<t::leaf",
            "0<t::outer"
        ]
    );
    // Entries and exits pair up, nest, and take time.
    let mut stack = Vec::new();
    for e in &t.events {
        match *e {
            Event::Entry { ts, func, depth } => stack.push((ts, func, depth)),
            Event::Exit { ts, func, depth } => {
                let (t0, f0, d0) = stack.pop().unwrap();
                assert_eq!((f0, d0), (func, depth));
                assert!(ts > t0, "duration is positive");
            }
            Event::Call { .. } => panic!(),
        }
    }
    assert!(stack.is_empty());
    assert_eq!(s.has_fast_path(), fast && fast_paths_allowed());
    if s.has_fast_path() {
        assert_eq!(
            s.slow_path_events(),
            1,
            "only the first call took the callback"
        );
    }
}

#[test]
fn graph_tracer_survives_a_panic_through_traced_frames() {
    graph_panic(true);
    graph_panic(false);
}

fn graph_panic(fast: bool) {
    let _serial = setup();
    let s = Session::start(config(Tracer::Graph, &["t::boom", "t::leaf"], fast)).unwrap();
    let before = shadow_stats();
    // SAFETY: plain call through the stub.
    let r = std::panic::catch_unwind(|| unsafe { t_boom(3) });
    assert!(r.is_err(), "the panic is caught as without tracing");
    assert_eq!(shadow_stats().unwound, before.unwound + 4);
    // Tracing goes on correctly after it.
    // SAFETY: as above.
    assert_eq!(unsafe { t_leaf(5) }, 15);
    let trace = s.snapshot();
    let t = mine(&trace);
    let got = names(&trace, &t.events);
    assert_eq!(
        got[..4],
        ["0>t::boom", "1>t::boom", "2>t::boom", "3>t::boom"]
    );
    assert_eq!(got[4..], ["0>t::leaf", "0<t::leaf"]);
}

#[test]
fn profile_counts_calls_and_separates_self_time() {
    let _serial = setup();
    let s = Session::start(Config::new(
        Tracer::Profile,
        &["t::outer", "t::middle", "t::leaf"],
    ))
    .unwrap();
    for _ in 0..10 {
        // SAFETY: plain call through the stub.
        unsafe { t_outer(50) };
    }
    let rows = s.profile();
    let row = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("{n} in {rows:?}"))
    };
    assert_eq!(row("t::outer").calls, 10);
    assert_eq!(row("t::middle").calls, 10);
    assert_eq!(row("t::leaf").calls, 10 * 51);
    for r in &rows {
        assert!(
            r.self_ns <= r.total_ns && r.min_ns <= r.max_ns && r.min_ns > 0,
            "{r:?}"
        );
    }
    let (o, m) = (row("t::outer"), row("t::middle"));
    assert!(o.total_ns >= m.total_ns, "outer includes middle");
    assert!(
        o.self_ns < o.total_ns,
        "outer's self time excludes its children"
    );
}

#[test]
fn a_full_buffer_counts_what_it_loses() {
    full_buffer(true, 20);
    full_buffer(false, 30);
}

fn full_buffer(fast: bool, from: usize) {
    let _serial = setup();
    let mut cfg = config(
        Tracer::Function,
        &[&format!("fx::f000{}?", from / 10)],
        fast,
    );
    cfg.ring.records_per_thread = 64;
    cfg.ring.mode = livetrace_ring::Mode::DropNewest;
    let s = Session::start(cfg).unwrap();
    for _ in 0..30 {
        for i in from..from + 10 {
            fx::call(i);
        }
    }
    let trace = s.snapshot();
    let t = mine(&trace);
    assert_eq!(t.events.len() as u64 + t.lost, 300);
    assert_eq!(t.events.len(), 64);
}

#[test]
fn graph_tracer_counts_calls_too_deep_to_follow() {
    too_deep(true);
    too_deep(false);
}

fn too_deep(fast: bool) {
    let _serial = setup();
    let s = Session::start(config(Tracer::Graph, &["t::deep"], fast)).unwrap();
    let max = livetrace_tracers::MAX_DEPTH as u64;
    // SAFETY: plain call through the stub.
    assert_eq!(unsafe { t_deep(max + 43) }, max + 43);
    let trace = s.snapshot();
    let t = mine(&trace);
    // max + 44 calls (n = max+43 down to 0): max followed, 44 counted.
    assert_eq!(t.depth_overflows, 44);
    let entries = t
        .events
        .iter()
        .filter(|e| matches!(e, Event::Entry { .. }))
        .count() as u64;
    let exits = t
        .events
        .iter()
        .filter(|e| matches!(e, Event::Exit { .. }))
        .count() as u64;
    assert_eq!((entries, exits), (max, max));
}

#[test]
fn graph_tracer_lends_backtraces_the_real_callers() {
    graph_backtrace(true);
    graph_backtrace(false);
}

#[inline(never)]
fn graph_backtrace(fast: bool) {
    let _serial = setup();
    let s = Session::start(config(Tracer::Graph, &["t::bt_outer", "t::bt"], fast)).unwrap();
    for _ in 0..3 {
        // SAFETY: plain call through the stub.
        assert_eq!(unsafe { t_bt_outer(4) }, 9);
    }
    let trace = s.snapshot();
    let t = mine(&trace);
    let got = names(&trace, &t.events);
    assert_eq!(got.len(), 12, "{got:?}");
    for call in got.chunks(4) {
        assert_eq!(
            call,
            ["0>t::bt_outer", "1>t::bt", "1<t::bt", "0<t::bt_outer"]
        );
    }
}

/// A trigger and the filter name the same function through a
/// disambiguator (`NAME@0xADDR`): the function is traced, and its own call
/// starts the recording and is recorded. (Judged by comparing the pattern
/// with the function's name as text, it was taken for a trigger the filter
/// leaves out, and its calls were never recorded.)
#[test]
fn a_trigger_named_with_a_disambiguator_is_traced_by_the_same_filter() {
    let _serial = setup();
    let i = 50;
    let name = format!("fx::f{i:05}@{:#x}", fx::site(i));
    let mut cfg = config(Tracer::Function, &[&name], false);
    cfg.controls.start_at = vec![livetrace_ftrace::Pattern::parse(&name)];
    let mut s = Session::start(cfg).unwrap();
    for _ in 0..3 {
        assert_eq!(fx::call(i), fx::value_of(i));
    }
    s.stop().unwrap();
    let trace = s.snapshot();
    let got = names(&trace, &mine(&trace).events);
    assert_eq!(got, vec![format!("call fx::f{i:05}"); 3]);
}
