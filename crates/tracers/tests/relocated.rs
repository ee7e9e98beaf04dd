//! Functions compiled without sites, traced: a stock library (gcc -O2, no
//! patchable entries) loaded with `dlopen`, its functions named by a
//! session's filter, relocated on demand and then traced by every tracer
//! like compiler sites: results unchanged, every call recorded under the
//! function's name; those that cannot be relocated are listed with their
//! reason and never touched.

use livetrace_fixtures::stock::{self, Stock, HAND};
use livetrace_ftrace::{inspect, why_not, Pattern};
use livetrace_output::Event;
use livetrace_tracers::{Config, Session, Tracer};

const N: usize = 24;

fn lib() -> &'static (Stock, Stock) {
    static LIB: std::sync::OnceLock<(Stock, Stock)> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lt-tracers-reloc-{}", std::process::id()));
        let n = N + HAND.len();
        let p = stock::build(&dir, "libstock_tr.so", n);
        let twin = dir.join("libstock_tr_twin.so");
        std::fs::copy(&p, &twin).unwrap();
        let libs = (Stock::open(&p, n), Stock::open(&twin, n));
        livetrace_ftrace::discover().unwrap();
        libs
    })
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static S: std::sync::Mutex<()> = std::sync::Mutex::new(());
    S.lock().unwrap_or_else(|e| e.into_inner())
}

/// The functions relocation must trace: every compiled one and the hand
/// ones it accepts (but the `rep` one, which reads memory).
fn traced_names() -> Vec<String> {
    let mut v: Vec<String> = (0..N).map(stock::name).collect();
    v.extend(
        HAND.iter()
            .filter(|h| h.1.is_none() && h.0 != "lt_hand_rep")
            .map(|h| h.0.to_string()),
    );
    v
}

/// The inputs of call `k`.
fn inputs(k: i64) -> (i64, i64) {
    (k * 7 - 3, k ^ 0x55)
}

/// What the untouched twin returns for every function of `names`, `rounds`
/// times (computed before a session starts: the twin's functions have the
/// same names, so a session traces them too).
fn expected(names: &[String], rounds: i64) -> Vec<i64> {
    let (_, twin) = lib();
    (0..rounds)
        .flat_map(|k| {
            names.iter().map(move |n| {
                let (a, b) = inputs(k);
                twin.func(n)(a, b)
            })
        })
        .collect()
}

/// Calls every function of `names` with the inputs `expected` was computed
/// for, checking each result.
fn call_all(names: &[String], want: &[i64]) -> usize {
    let (mine, _) = lib();
    let mut got = want.iter();
    let mut calls = 0;
    for k in 0.. {
        for n in names {
            let Some(&w) = got.next() else { return calls };
            let (a, b) = inputs(k);
            assert_eq!(mine.func(n)(a, b), w, "{n}({a}, {b})");
            calls += 1;
        }
    }
    calls
}

fn name_of(trace: &livetrace_output::Trace, func: u64) -> String {
    trace.symbols.name_of(func).unwrap_or("?").to_string()
}

#[test]
fn every_tracer_traces_relocated_functions() {
    let _s = serial();
    lib();
    let names = traced_names();
    // Before: no site for any of them.
    inspect(|t| assert!(t.glob("lt_stock_*").is_empty() && t.glob("lt_hand_*").is_empty()))
        .unwrap();

    // The function tracer: the filter names no site, so the functions are
    // relocated on demand (asked for: it is off by default).
    livetrace_ftrace::set_relocate_on_demand(true);
    // (The globs name refused functions too: they are left alone.)
    let want = expected(&names, 3);
    let mut s =
        Session::start(Config::new(Tracer::Function, &["lt_stock_*", "lt_hand_*"])).unwrap();
    let calls = call_all(&names, &want);
    s.stop().unwrap();
    let trace = s.snapshot();
    let me = livetrace_ring::gettid() as u32;
    let t = trace.threads.iter().find(|t| t.tid == me).unwrap();
    let got: Vec<String> = t
        .events
        .iter()
        .map(|e| match *e {
            Event::Call { func, .. } => name_of(&trace, func),
            _ => panic!("{e:?}"),
        })
        .collect();
    // `lt_hand_call` calls the static `lt_hand_twice`, which the glob names
    // too (from `.symtab`): it is relocated and traced as well.
    let want: Vec<String> = (0..3)
        .flat_map(|_| names.iter().cloned())
        .flat_map(|n| {
            let twice = n == "lt_hand_call";
            std::iter::once(n).chain(twice.then(|| "lt_hand_twice".to_string()))
        })
        .collect();
    assert_eq!(got.len(), calls + 3);
    assert_eq!(got, want);

    // `ls`: each is a relocated site, named by its function.
    inspect(|t| {
        let (mine, _) = lib();
        for n in &names {
            // One record per copy of the library (the twin's were
            // relocated too: same names).
            let entry = mine.sym(n).unwrap();
            let i = t
                .find_relocated_entry(entry)
                .unwrap_or_else(|| panic!("{n}"));
            assert_eq!(t.lookup_name(n).len(), 2, "{n}");
            assert!(t.lookup_name(n).contains(&i));
            let info = t.info(i).to_string();
            assert!(info.contains(" relocated"), "{info}");
            assert_eq!(t.relocated(i).unwrap().entry, entry);
        }
        assert!(t.lookup_name("lt_hand_loop").is_empty());
    })
    .unwrap();

    // Why not: the refused hand-written ones, with their reasons.
    let wn = why_not(&Pattern::Glob("lt_hand_*".into())).unwrap();
    for h in HAND.iter().filter(|h| h.1.is_some()) {
        let w = wn
            .iter()
            .find(|w| w.name == h.0)
            .unwrap_or_else(|| panic!("{} in {wn:?}", h.0));
        assert_eq!(Some(w.kind), h.1, "{w}");
    }

    // The graph tracer: entries and exits, nested properly.
    let want = expected(&["lt_hand_call".into(), "lt_stock_4".into()], 5);
    let mut s =
        Session::start(Config::new(Tracer::Graph, &["lt_hand_call", "lt_stock_4"])).unwrap();
    call_all(&["lt_hand_call".into(), "lt_stock_4".into()], &want);
    s.stop().unwrap();
    let trace = s.snapshot();
    let t = trace.threads.iter().find(|t| t.tid == me).unwrap();
    let got: Vec<String> = t
        .events
        .iter()
        .map(|e| match *e {
            Event::Entry { func, depth, .. } => format!("{depth}>{}", name_of(&trace, func)),
            Event::Exit { func, depth, .. } => format!("{depth}<{}", name_of(&trace, func)),
            _ => panic!("{e:?}"),
        })
        .collect();
    let want: Vec<String> = (0..5)
        .flat_map(|_| {
            [
                "0>lt_hand_call",
                "0<lt_hand_call",
                "0>lt_stock_4",
                "0<lt_stock_4",
            ]
            .map(String::from)
        })
        .collect();
    assert_eq!(got, want);

    // The profiler: every call counted.
    let tens: Vec<String> = (10..20).filter(|i| *i < N).map(stock::name).collect();
    let want = expected(&tens, 7);
    let s = Session::start(Config::new(Tracer::Profile, &["lt_stock_1?"])).unwrap();
    call_all(&tens, &want);
    let rows = s.profile();
    for n in &tens {
        // The twin's function of the same name was never called.
        let calls: u64 = rows.iter().filter(|r| &r.name == n).map(|r| r.calls).sum();
        assert_eq!(calls, 7, "{n}");
    }
}
