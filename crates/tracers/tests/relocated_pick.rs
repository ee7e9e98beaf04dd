//! `NAME@0xENTRY` names one of two same-named functions without a site
//! (two copies of a stock library): only that one is relocated and traced;
//! a glob afterwards still relocates everything it names.

use livetrace_fixtures::stock::{self, Stock, HAND};
use livetrace_ftrace::inspect;
use livetrace_output::Event;
use livetrace_tracers::{Config, Session, Tracer};

#[test]
fn a_disambiguated_name_relocates_one_copy() {
    let dir = std::env::temp_dir().join(format!("lt-tracers-pick-{}", std::process::id()));
    let n = 8 + HAND.len();
    let a = stock::build(&dir, "libstock_pick_a.so", n);
    let b = dir.join("libstock_pick_b.so");
    std::fs::copy(&a, &b).unwrap();
    let (a, b) = (Stock::open(&a, n), Stock::open(&b, n));
    livetrace_ftrace::discover().unwrap();
    livetrace_ftrace::set_relocate_on_demand(true);
    let name = stock::name(5);
    let entry = a.sym(&name).unwrap();
    let mut s = Session::start(Config::new(
        Tracer::Function,
        &[format!("{name}@{entry:#x}").as_str()],
    ))
    .unwrap();
    for k in 0..5i64 {
        assert_eq!(a.func(&name)(k, 3), b.func(&name)(k, 3));
    }
    s.stop().unwrap();
    let trace = s.snapshot();
    let me = livetrace_ring::gettid() as u32;
    let calls = trace
        .threads
        .iter()
        .filter(|t| t.tid == me)
        .flat_map(|t| t.events.iter())
        .filter(|e| matches!(e, Event::Call { .. }))
        .count();
    assert_eq!(calls, 5);
    inspect(|t| {
        assert!(t.find_relocated_entry(entry).is_some());
        assert!(t.find_relocated_entry(b.sym(&name).unwrap()).is_none());
    })
    .unwrap();
    // A glob that names only functions relocation gave a site still means
    // every function it names: the rest are relocated now.
    let s = Session::start(Config::new(Tracer::Function, &["lt_stock_*"])).unwrap();
    drop(s);
    inspect(|t| {
        for i in 0..8 {
            for lib in [&a, &b] {
                let e = lib.sym(&stock::name(i)).unwrap();
                assert!(t.find_relocated_entry(e).is_some(), "{}", stock::name(i));
            }
        }
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
