//! The quiescence wait is correct (a thread whose signal handler
//! interrupted a trampoline is waited for, though its RIP is elsewhere),
//! bounded (a thread stuck inside a callback, or one that cannot be
//! probed, makes `unregister` fail after the timeout instead of hanging),
//! and a failed wait frees nothing: retired trampolines are not reused and
//! the callback's data stays alive until a later wait succeeds.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livetrace_fixtures as fx;
use livetrace_ftrace::{
    enabled_functions, in_callback, insert_external, register, set_quiescence_timeout, unregister,
    Error, Ops, Pattern, Trampoline,
};
use livetrace_sites::ExternalSite;

/// The tests share process-wide settings (the timeout, a signal handler).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn name(i: usize) -> String {
    format!("fx::f{i:05}")
}

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let names: Vec<String> = (800..820).map(name).collect();
        let sites: Vec<ExternalSite<'_>> = names
            .iter()
            .zip(800..)
            .map(|(n, i)| ExternalSite {
                addr: fx::site(i),
                name: n,
                file: "fixtures",
                line: 0,
            })
            .collect();
        insert_external(&sites).unwrap();
    });
}

fn dedicated_trampoline_of(ip: usize) -> usize {
    let f = enabled_functions()
        .unwrap()
        .into_iter()
        .find(|f| f.ip == ip)
        .expect("enabled");
    match f.trampoline {
        Trampoline::Dedicated { addr, .. } => addr,
        other => panic!("{other:?}"),
    }
}

// The SIGUSR1 handler of the first test: when it interrupted the thread
// inside the watched trampoline before the trampoline entered its callback,
// it stays (the thread is then neither executing the trampoline nor inside
// a callback) until released.
static WATCH: AtomicUsize = AtomicUsize::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);

extern "C" fn park_in_trampoline(_: i32, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel's ucontext for this SA_SIGINFO delivery.
    let rip =
        unsafe { (*(uc as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] }
            as usize;
    let t = WATCH.load(SeqCst);
    if PARKED.load(SeqCst) || rip < t || rip >= t + 512 || in_callback() {
        return;
    }
    PARKED.store(true, SeqCst);
    while !RELEASE.load(SeqCst) {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: nanosleep with a valid timespec.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}

#[test]
fn a_handler_that_interrupted_a_trampoline_is_waited_for() {
    let _s = serial();
    setup();
    let (f, g) = (800, 801);
    // SAFETY: installs a test-only SIGUSR1 handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = park_in_trampoline as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let a_calls = Arc::new(AtomicU64::new(0));
    let ac = a_calls.clone();
    let a = Ops::builder("a")
        .filter(Pattern::Name(name(f)))
        .build(move |_| {
            ac.fetch_add(1, SeqCst);
        });
    register(&a).unwrap();
    WATCH.store(dedicated_trampoline_of(fx::site(f)), SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: pthread_self of this thread.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            while !stop.load(SeqCst) {
                assert_eq!(fx::call(f), fx::value_of(f));
            }
        })
    };
    let thread = rx.recv().unwrap() as libc::pthread_t;
    let start = Instant::now();
    while !PARKED.load(SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never caught it there"
        );
        // SAFETY: the worker runs until told to stop.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_micros(200));
    }
    // The worker is parked in the handler, its saved RIP in A's trampoline,
    // before A's callback: the wait must not take it for clear.
    set_quiescence_timeout(Duration::from_millis(300));
    match unregister(&a) {
        Err(Error::NotQuiescent { threads }) => {
            assert!(
                threads.iter().any(|t| t.why.contains("retired code")),
                "{threads:?}"
            );
        }
        other => {
            panic!("unregister returned {other:?} with a thread about to resume in its trampoline")
        }
    }
    // A's trampoline was not freed, so a new ops cannot get its slot: B's
    // callback never sees a call of f.
    let wrong = Arc::new(AtomicU64::new(0));
    let w = wrong.clone();
    let fip = fx::site(f);
    let b = Ops::builder("b")
        .filter(Pattern::Name(name(g)))
        .build(move |call| {
            if call.ip() == fip {
                w.fetch_add(1, SeqCst);
            }
        });
    register(&b).unwrap();
    RELEASE.store(true, SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    // The retired state goes once the worker has left it.
    set_quiescence_timeout(Duration::from_secs(10));
    unregister(&a).unwrap();
    stop.store(true, SeqCst);
    worker.join().unwrap();
    unregister(&b).unwrap();
    assert_eq!(
        wrong.load(SeqCst),
        0,
        "B was called for f through A's old slot"
    );
}

#[test]
fn a_thread_that_cannot_be_probed_fails_the_wait_and_keeps_the_data() {
    let _s = serial();
    setup();
    let f = 802;
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Flag(dropped.clone());
    let ops = Ops::builder("data")
        .filter(Pattern::Name(name(f)))
        .build(move |_| {
            let _ = &flag;
        });
    register(&ops).unwrap();
    fx::call(f);
    let blocked = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let stubborn = {
        let (blocked, go) = (blocked.clone(), go.clone());
        std::thread::spawn(move || {
            // SAFETY: blocks the world signal on this thread only, with the
            // raw system call (the C library's function would keep it
            // deliverable), and puts the old mask back afterwards.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigaddset(&mut set, livetrace_poke::world::signal());
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_BLOCK,
                    &set,
                    &mut old,
                    8usize,
                );
                blocked.store(true, SeqCst);
                while !go.load(SeqCst) {
                    std::hint::spin_loop();
                }
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &old,
                    std::ptr::null_mut::<libc::sigset_t>(),
                    8usize,
                );
            }
        })
    };
    while !blocked.load(SeqCst) {
        std::thread::yield_now();
    }
    set_quiescence_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = unregister(&ops).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    match &err {
        Error::NotQuiescent { threads } => assert!(
            threads
                .iter()
                .any(|t| t.why.contains("blocks livetrace's world signal")),
            "{threads:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nothing was freed"), "{err}");
    drop(ops);
    assert!(
        !dropped.load(SeqCst),
        "the callback's data was freed after a failed wait"
    );
    go.store(true, SeqCst);
    stubborn.join().unwrap();
    set_quiescence_timeout(Duration::from_secs(10));
    livetrace_ftrace::synchronize().unwrap();
    // The next successful wait frees what the failed one kept.
    let other = Ops::builder("other")
        .filter(Pattern::Name(name(803)))
        .build(|_| {});
    register(&other).unwrap();
    unregister(&other).unwrap();
    assert!(dropped.load(SeqCst), "freed once a wait succeeded");
}

#[test]
fn a_callback_blocked_on_the_unregistering_thread_does_not_hang_it() {
    let _s = serial();
    setup();
    let f = 804;
    let lock = Arc::new(Mutex::new(()));
    let entered = Arc::new(AtomicBool::new(false));
    let (l, e) = (lock.clone(), entered.clone());
    let ops = Ops::builder("blocked")
        .filter(Pattern::Name(name(f)))
        .build(move |_| {
            e.store(true, SeqCst);
            drop(l.lock().unwrap());
        });
    register(&ops).unwrap();
    let held = lock.lock().unwrap();
    let worker = std::thread::spawn(move || fx::call(f));
    while !entered.load(SeqCst) {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(20));
    set_quiescence_timeout(Duration::from_millis(300));
    let started = Instant::now();
    match unregister(&ops) {
        Err(Error::NotQuiescent { threads }) => {
            assert!(
                threads.iter().any(|t| t.why.contains("callback")),
                "{threads:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    drop(held);
    assert_eq!(worker.join().unwrap(), fx::value_of(f));
    set_quiescence_timeout(Duration::from_secs(10));
    unregister(&ops).unwrap();
}
