//! Thread probes never swallow a trap: neither the program's own `int3`s
//! nor a batch's. (Standard signals do not queue, so a probe sent as
//! SIGTRAP would make the kernel drop a trap that coincides with it.)

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use livetrace_fixtures as fx;
use livetrace_poke::{sample_threads, tls_offset_of, Batch, Insn};

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_trap(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    HITS.fetch_add(1, SeqCst);
}

thread_local! {
    static WORD: Cell<u64> = const { Cell::new(0) };
}

#[test]
fn probes_and_traps_do_not_merge() {
    // SAFETY: installs a SIGTRAP handler that only counts.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_trap as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
    let offset = WORD.with(|w| tls_offset_of(w.as_ptr() as usize));
    const TRAPS: u64 = 100_000;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The program's own breakpoints.
        s.spawn(|| {
            for _ in 0..TRAPS {
                // SAFETY: the counting handler resumes after the int3.
                unsafe { std::arch::asm!("int3") };
            }
            done.store(true, SeqCst);
        });
        // Callers of sites that batches keep rewriting (their traps are
        // emulated; a lost one would crash).
        s.spawn(|| {
            while !done.load(SeqCst) {
                for i in 0..64 {
                    assert_eq!(fx::call(i), fx::value_of(i));
                }
            }
        });
        s.spawn(|| {
            let mut on = false;
            while !done.load(SeqCst) {
                let (old, new) = if on {
                    (Insn::Call(fx::ret_stub()), Insn::Nop)
                } else {
                    (Insn::Nop, Insn::Call(fx::ret_stub()))
                };
                let mut b = Batch::new();
                for i in 0..64 {
                    b.queue(fx::site(i), old, new).unwrap();
                }
                b.apply().unwrap();
                on = !on;
            }
            if on {
                let mut b = Batch::new();
                for i in 0..64 {
                    b.queue(fx::site(i), Insn::Call(fx::ret_stub()), Insn::Nop)
                        .unwrap();
                }
                b.apply().unwrap();
            }
        });
        let mut probes = 0;
        while !done.load(SeqCst) {
            sample_threads(offset, Duration::from_secs(5)).unwrap();
            probes += 1;
        }
        assert!(probes >= 5, "probes ran while the traps did ({probes})");
    });
    assert_eq!(
        HITS.load(SeqCst),
        TRAPS,
        "every breakpoint reached the program's handler"
    );
}
