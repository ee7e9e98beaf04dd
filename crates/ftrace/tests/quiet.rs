//! Starting to trace never interrupts the program's threads: only
//! `unregister`, which must wait for quiescence, probes them. Its own
//! process, so that no other test's unregister probes the sleeper.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use livetrace_fixtures as fx;
use livetrace_ftrace::{register, set_filter, unregister, with_table, Ops, Pattern};
use livetrace_sites::ExternalSite;

fn setup() {
    let names: Vec<String> = (700..702).map(|i| format!("fx::f{i:05}")).collect();
    let sites: Vec<ExternalSite<'_>> = names
        .iter()
        .zip(700..)
        .map(|(n, i)| ExternalSite {
            addr: fx::site(i),
            name: n,
            file: "fixtures",
            line: 0,
        })
        .collect();
    with_table(|t| t.insert_external(&sites)).unwrap().unwrap();
}

fn name(i: usize) -> String {
    format!("fx::f{i:05}")
}

fn counting(label: &str, filter: &[Pattern]) -> (Ops, ()) {
    let mut b = Ops::builder(label);
    for p in filter {
        b = b.filter(p.clone());
    }
    (b.build(|_| {}), ())
}

#[test]
fn registering_never_interrupts_the_programs_threads() {
    setup();
    // A thread sleeping in nanosleep, which a signal interrupts with EINTR
    // whatever SA_RESTART says.
    let stop = Arc::new(AtomicBool::new(false));
    let eintr = Arc::new(AtomicU64::new(0));
    let (s2, e2) = (stop.clone(), eintr.clone());
    let sleeper = std::thread::spawn(move || {
        while !s2.load(SeqCst) {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            // SAFETY: nanosleep with a valid timespec and no remainder.
            if unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) } != 0 {
                e2.fetch_add(1, SeqCst);
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (ops, _) = counting("quiet", &[Pattern::Name(name(700))]);
    register(&ops).unwrap();
    set_filter(&ops, &[Pattern::Name(name(701))], &[]).unwrap();
    fx::call(701);
    assert_eq!(
        eintr.load(SeqCst),
        0,
        "register and set_filter sent no signal"
    );
    unregister(&ops).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    stop.store(true, SeqCst);
    sleeper.join().unwrap();
    assert!(
        eintr.load(SeqCst) >= 1,
        "unregister's quiescence wait probes every thread"
    );
}
