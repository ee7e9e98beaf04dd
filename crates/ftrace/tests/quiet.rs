//! Tracing never disturbs threads that are waiting: neither registering
//! nor unregistering sends a signal to a thread blocked in `poll`,
//! `nanosleep` or `epoll_wait` (the quiescence wait observes it through
//! `/proc`), so none of them ever returns `EINTR` because of livetrace.
//! Its own process, so that no other test's activity reaches the sleepers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use livetrace_fixtures as fx;
use livetrace_ftrace::{insert_external, register, set_filter, unregister, Ops, Pattern};
use livetrace_poke::world::world_stats;
use livetrace_sites::ExternalSite;

fn setup() {
    let names: Vec<String> = (700..710).map(|i| format!("fx::f{i:05}")).collect();
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
    insert_external(&sites).unwrap();
}

fn name(i: usize) -> String {
    format!("fx::f{i:05}")
}

#[derive(Clone, Copy)]
enum Wait {
    Nanosleep,
    Poll,
    Epoll,
}

/// Waits in `how` until `stop` (woken at the end through `wake`, a pipe,
/// or for `nanosleep` a signal), counting the `EINTR`s seen before.
fn waiter(how: Wait, wake: i32, stop: Arc<AtomicBool>, eintr: Arc<AtomicU64>) {
    // SAFETY: a fresh epoll instance watching `wake`, closed below; the
    // calls get valid pointers to locals.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, wake, &mut ev), 0);
        while !stop.load(SeqCst) {
            let r = match how {
                Wait::Nanosleep => {
                    let ts = libc::timespec {
                        tv_sec: 30,
                        tv_nsec: 0,
                    };
                    libc::nanosleep(&ts, std::ptr::null_mut())
                }
                Wait::Poll => {
                    let mut p = libc::pollfd {
                        fd: wake,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    libc::poll(&mut p, 1, 30_000)
                }
                Wait::Epoll => {
                    let mut ev = libc::epoll_event { events: 0, u64: 0 };
                    libc::epoll_wait(ep, &mut ev, 1, 30_000)
                }
            };
            if r < 0 && *libc::__errno_location() == libc::EINTR && !stop.load(SeqCst) {
                eintr.fetch_add(1, SeqCst);
            }
        }
        libc::close(ep);
    }
}

extern "C" fn nothing(_: i32) {}

#[test]
fn tracing_never_interrupts_waiting_threads() {
    setup();
    let stop = Arc::new(AtomicBool::new(false));
    let eintr = Arc::new(AtomicU64::new(0));
    let mut pipe = [0; 2];
    // SAFETY: a pipe for waking the waiters, and a do-nothing SIGUSR2
    // handler for waking the sleeper at the end.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        libc::signal(libc::SIGUSR2, nothing as *const () as libc::sighandler_t);
    }
    let mut waiters = Vec::new();
    for how in [Wait::Nanosleep, Wait::Poll, Wait::Epoll] {
        let (s, e) = (stop.clone(), eintr.clone());
        let wake = pipe[0];
        waiters.push(std::thread::spawn(move || waiter(how, wake, s, e)));
    }
    let mut threads = Vec::new();
    // Two busy threads calling the traced functions.
    let calls = Arc::new(AtomicU64::new(0));
    for k in 0..2 {
        let (s, c) = (stop.clone(), calls.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(SeqCst) {
                for i in 700..710 {
                    assert_eq!(fx::call(i), fx::value_of(i), "busy thread {k}");
                }
                c.fetch_add(1, SeqCst);
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = world_stats();
    let hits = Arc::new(AtomicU64::new(0));
    for cycle in 0..100 {
        let h = hits.clone();
        let ops = Ops::builder(format!("quiet-{cycle}"))
            .filter(Pattern::Name(name(700 + cycle % 10)))
            .build(move |_| {
                h.fetch_add(1, SeqCst);
            });
        register(&ops).unwrap();
        set_filter(&ops, &[Pattern::Name(name(700 + (cycle + 1) % 10))], &[]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        unregister(&ops).unwrap();
    }
    let after = world_stats();
    stop.store(true, SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    // SAFETY: wakes the waiters: a byte in the pipe, a signal for the
    // sleeper (all still alive: they wait until woken).
    unsafe {
        assert_eq!(libc::write(pipe[1], b"x".as_ptr().cast(), 1), 1);
        use std::os::unix::thread::JoinHandleExt;
        for w in &waiters {
            libc::pthread_kill(w.as_pthread_t(), libc::SIGUSR2);
        }
    }
    for w in waiters {
        w.join().unwrap();
    }
    assert!(hits.load(SeqCst) > 0, "the busy threads were traced");
    assert_eq!(
        eintr.load(SeqCst),
        0,
        "a waiting thread saw EINTR: {} probes sent, {} threads seen blocked",
        after.probes_sent - before.probes_sent,
        after.passive - before.passive
    );
    assert!(
        after.passive > before.passive,
        "the waiting threads were observed without a signal"
    );
}
