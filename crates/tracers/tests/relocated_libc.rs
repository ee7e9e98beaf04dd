//! libc's own functions relocated and traced, among them the ones
//! livetrace itself calls while it patches: `syscall` (its signal-mask and
//! futex calls) and `__errno_location` (the trap handler saves errno).
//! `-f '*'` on a program without sites relocates them. A thread of
//! livetrace that calls one while an `int3` sits on it must be sent on by
//! the trap handler like any other thread — not killed because it had
//! SIGTRAP blocked, and not trapping again from inside the trap handler.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use livetrace_tracers::{Config, Session, Tracer};

#[test]
fn libc_functions_livetrace_calls_itself_can_be_relocated_and_traced() {
    livetrace_ftrace::discover().unwrap();
    livetrace_ftrace::set_relocate_on_demand(true);
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    // SAFETY: getpid through the generic wrapper, and
                    // errno's address: both harmless.
                    unsafe {
                        std::hint::black_box(libc::syscall(libc::SYS_getpid));
                        std::hint::black_box(libc::__errno_location());
                    }
                    calls.fetch_add(1, Relaxed);
                }
            });
        }
        // A panic below must still let the workers go (the scope joins them
        // before it unwinds).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for tracer in [Tracer::Function, Tracer::Graph, Tracer::Profile]
            .into_iter()
            .cycle()
            .take(12)
        {
            let mut s = Session::start(Config::new(tracer, &["syscall", "__errno_location"]))
                .unwrap_or_else(|e| panic!("{tracer:?}: {e}"));
            std::thread::sleep(std::time::Duration::from_millis(20));
            s.stop().unwrap();
            if tracer == Tracer::Profile {
                let rows = s.profile();
                assert!(
                    rows.iter().any(|r| r.name == "syscall" && r.calls > 0),
                    "{rows:?}"
                );
            }
        }
    });
    assert!(calls.load(Relaxed) > 0);
    livetrace_ftrace::inspect(|t| {
        for name in ["syscall", "__errno_location"] {
            let i = t.lookup_name(name);
            assert!(
                i.iter().any(|&i| t.relocated(i).is_some()),
                "{name} not relocated"
            );
        }
    })
    .unwrap();
}
