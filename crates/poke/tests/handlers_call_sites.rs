//! A signal handler may call functions whose sites a batch is rewriting,
//! even when the signal interrupts the trap handler itself. (The trap
//! handler runs with SIGTRAP blocked; a nested int3 with SIGTRAP blocked
//! makes the kernel kill the process. So the trap handler must hold off
//! asynchronous signals while it runs.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::Duration;

use livetrace_fixtures as fx;
use livetrace_poke::{Batch, Insn};

static BAD: AtomicU64 = AtomicU64::new(0);
static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    for i in 0..16 {
        if fx::call(i) != fx::value_of(i) {
            BAD.fetch_add(1, Relaxed);
        }
    }
    HANDLED.fetch_add(1, Relaxed);
}

#[test]
fn signal_handlers_call_sites_being_patched() {
    let sig = libc::SIGRTMIN() + 5;
    // SAFETY: the handler only calls fixture functions and adds atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
    let done = AtomicBool::new(false);
    let ids = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                // SAFETY: pthread_self has no preconditions.
                ids.lock()
                    .unwrap()
                    .push(unsafe { libc::pthread_self() } as usize);
                while !done.load(Relaxed) {
                    for i in 0..16 {
                        if fx::call(i) != fx::value_of(i) {
                            BAD.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
        }
        while ids.lock().unwrap().len() < 2 {
            std::thread::yield_now();
        }
        s.spawn(|| {
            let ids = ids.lock().unwrap().clone();
            while !done.load(Relaxed) {
                for &t in &ids {
                    // SAFETY: the callers run until `done`, which this
                    // loop checks first.
                    unsafe { libc::pthread_kill(t as libc::pthread_t, sig) };
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        let mut on = false;
        for _ in 0..2000 {
            let (old, new) = if on {
                (Insn::Call(fx::ret_stub()), Insn::Nop)
            } else {
                (Insn::Nop, Insn::Call(fx::ret_stub()))
            };
            let mut b = Batch::new();
            for i in 0..16 {
                b.queue(fx::site(i), old, new).unwrap();
            }
            b.apply().unwrap();
            on = !on;
        }
        done.store(true, Relaxed);
    });
    assert_eq!(BAD.load(Relaxed), 0);
    assert!(HANDLED.load(Relaxed) > 100, "signals were handled");
}
