//! `ConvertPolicy::SingleThreaded`, in a process that really has one thread
//! (this test has no harness: `main` runs on the only thread).

mod common;

use common::*;
use livetrace_poke::{Insn, NOP1X5, NOP5};
use livetrace_sites::{thread_count, ConvertPolicy, Error, SiteState, Table};

fn converts_when_alone() {
    assert_eq!(thread_count().unwrap(), 1);
    let path = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltsingle");
    let lib = Lib::open(&path);
    let (mut table, _) = Table::discover().unwrap();
    let add = lib.sym("lt_add");
    let i = site_in(&table, "lt_add", &path);
    assert_eq!(bytes(add), NOP1X5);
    let conv = table.convert(None, ConvertPolicy::SingleThreaded).unwrap();
    assert_eq!(conv.converted, 5, "{conv}");
    assert_eq!(bytes(add), NOP5);
    assert_eq!(table.record(i).state(), SiteState::Live(Insn::Nop));
    let f = Funcs::of(&lib);
    table
        .apply(&[(add, Insn::Call(lib.sym("lt_tramp")))])
        .unwrap();
    assert_eq!(f.add(40, 2), 42);
    assert_eq!(f.hits(), 1);
    table.apply(&[(add, Insn::Nop)]).unwrap();
    assert_eq!(f.add(40, 2), 42);
    assert_eq!(f.hits(), 1);
}

fn refuses_with_a_second_thread() {
    let path = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltsingle2");
    let lib = Lib::open(&path);
    let (mut table, _) = Table::discover().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv().ok());
    match table.convert(None, ConvertPolicy::SingleThreaded) {
        Err(Error::NotSingleThreaded { threads }) => assert_eq!(threads, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(bytes(lib.sym("lt_add")), NOP1X5, "nothing written");
    drop(tx);
    t.join().unwrap();
}

fn main() {
    // nextest lists tests first; answer in libtest's terse format.
    if std::env::args().any(|a| a == "--list") {
        if !std::env::args().any(|a| a == "--ignored") {
            println!("single_threaded: test");
        }
        return;
    }
    converts_when_alone();
    refuses_with_a_second_thread();
    println!("single_threaded: 2 passed, 0 failed");
}
