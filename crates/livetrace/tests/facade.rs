//! The facade end to end on `#[traced]` Rust functions: listing, ops,
//! tracing sessions, and live patching by function pointer.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;

use livetrace::{traced, Config, Ops, Pattern, Tracer};

#[traced]
fn price(qty: u64) -> u64 {
    qty * 10
}

#[traced]
fn rate(qty: u64) -> u64 {
    qty * 100
}

#[traced]
fn rate_v2(qty: u64) -> u64 {
    qty * 101
}

#[traced]
fn bill(items: &[u64]) -> u64 {
    items.iter().map(|&q| rate(q)).sum()
}

#[traced]
fn total(items: &[u64]) -> u64 {
    items.iter().map(|&q| price(q)).sum()
}

#[test]
fn traced_functions_are_listed_and_traceable() {
    let report = livetrace::init().unwrap();
    assert!(report.macro_sites >= 3, "{report:?}");
    let fns = livetrace::functions(Some("facade::*")).unwrap();
    let names: Vec<&str> = fns.iter().map(|f| f.name.as_str()).collect();
    for want in [
        "facade::price",
        "facade::total",
        "facade::rate",
        "facade::rate_v2",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let f = fns.iter().find(|f| f.name == "facade::total").unwrap();
    assert!(f.source.contains("facade.rs"), "{f:?}");

    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let ops = Ops::builder("count-price")
        .filter("facade::price")
        .build(move |c| {
            assert_eq!(c.ops_name(), "count-price");
            h.fetch_add(1, Relaxed);
        });
    livetrace::register(&ops).unwrap();
    assert_eq!(total(&[1, 2, 3]), 60);
    assert_eq!(hits.load(Relaxed), 3);
    let en = livetrace::enabled_functions().unwrap();
    assert!(en
        .iter()
        .any(|e| e.name == "facade::price" && e.ops == ["count-price"]));
    livetrace::unregister(&ops).unwrap();

    let session = livetrace::trace(Config::new(
        Tracer::Graph,
        &["facade::total", "facade::price"],
    ))
    .unwrap();
    assert_eq!(total(&[4]), 40);
    let trace = session.snapshot();
    let me = livetrace_ring_tid();
    let t = trace.threads.iter().find(|t| t.tid == me).unwrap();
    assert_eq!(t.events.len(), 4);
    let err = livetrace::trace(Config::new(Tracer::Function, &["facade::no_such_fn"]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("facade::no_such_fn"), "{err}");
    let _ = Pattern::parse("x");
}

fn livetrace_ring_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    (unsafe { libc::syscall(libc::SYS_gettid) }) as u32
}

/// Uses its own functions: a live patch is process-wide, and the tests run
/// in parallel.
#[test]
fn live_patch_a_traced_function_by_pointer() {
    assert_eq!(rate(2), 200);
    let patch = livetrace::livepatch::<fn(u64) -> u64>(rate, rate_v2).unwrap();
    assert_eq!(rate(2), 202);
    assert_eq!(
        bill(&[1, 1]),
        202,
        "callers that inlined the wrapper are redirected too"
    );
    let second = livetrace::livepatch::<fn(u64) -> u64>(rate, rate_v2)
        .err()
        .expect("one ipmodify per function");
    assert!(second.to_string().contains("facade::rate"), "{second}");
    patch.revert().unwrap();
    assert_eq!(rate(2), 200);
    assert_eq!(bill(&[1, 1]), 200);
}

#[test]
fn every_site_stub_is_16_byte_aligned() {
    // `nop5; jmp body` in one fetch block keeps a disabled site cheap.
    let sites: Vec<_> = livetrace::macro_sites().collect();
    assert!(sites.len() >= 5);
    for s in sites {
        assert_eq!(s.addr % 16, 0, "{} at {:#x}", s.path, s.addr);
    }
}
