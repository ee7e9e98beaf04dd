//! The program's own SIGTRAP handler keeps receiving the program's own
//! breakpoints while batches run, whether it was installed before the engine
//! or replaced the engine's handler afterwards.
//!
//! One test, because signal dispositions are per process.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};

use livetrace_fixtures as fx;
use livetrace_poke::{trap_stats, Batch, Insn};

static SIGINFO_HITS: AtomicU64 = AtomicU64::new(0);
static SIGINFO_BAD: AtomicU64 = AtomicU64::new(0);
static PLAIN_HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn siginfo_handler(sig: i32, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // SAFETY: the kernel (through the engine's chaining) passes a valid
    // siginfo.
    let code = unsafe { (*info).si_code };
    if sig != libc::SIGTRAP || code != libc::SI_KERNEL {
        SIGINFO_BAD.fetch_add(1, SeqCst);
    }
    SIGINFO_HITS.fetch_add(1, SeqCst);
}

extern "C" fn plain_handler(_sig: i32) {
    PLAIN_HITS.fetch_add(1, SeqCst);
}

fn install(handler: usize, flags: i32) {
    // SAFETY: a zeroed sigaction is valid; we set a handler of the kind
    // `flags` says and install it for SIGTRAP.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
}

fn breakpoint() {
    // SAFETY: int3 raises SIGTRAP, which the installed handlers return
    // from, resuming after the int3.
    unsafe { std::arch::asm!("int3") };
}

/// Flips a few hundred fixture sites back and forth `rounds` times while
/// another thread calls them and a third executes its own breakpoints.
fn batches_while_breaking(rounds: usize, breakpoints: u64) {
    let stop = AtomicBool::new(false);
    let started = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(SeqCst) {
                for i in 0..300 {
                    assert_eq!(fx::call(i), fx::value_of(i));
                }
            }
        });
        let breaker = s.spawn(|| {
            // Only once a batch has (re)installed the engine's handler.
            while !started.load(SeqCst) {
                std::hint::spin_loop();
            }
            for _ in 0..breakpoints {
                breakpoint();
            }
        });
        let mut on = false;
        let mut r = 0;
        while r < rounds || !breaker.is_finished() {
            let mut batch = Batch::new();
            for i in 0..300 {
                let (old, new) = if on {
                    (Insn::Call(fx::counter_a()), Insn::Nop)
                } else {
                    (Insn::Nop, Insn::Call(fx::counter_a()))
                };
                batch.queue(fx::site(i), old, new).unwrap();
            }
            batch.apply().unwrap();
            started.store(true, SeqCst);
            on = !on;
            r += 1;
        }
        if on {
            let mut batch = Batch::new();
            for i in 0..300 {
                batch
                    .queue(fx::site(i), Insn::Call(fx::counter_a()), Insn::Nop)
                    .unwrap();
            }
            batch.apply().unwrap();
        }
        stop.store(true, SeqCst);
    });
}

#[test]
fn program_breakpoints_reach_the_program_handler() {
    // 1. The program's handler was there first.
    install(siginfo_handler as *const () as usize, libc::SA_SIGINFO);
    let chained = trap_stats().chained;
    batches_while_breaking(200, 2_000);
    assert_eq!(SIGINFO_HITS.load(SeqCst), 2_000);
    assert_eq!(SIGINFO_BAD.load(SeqCst), 0);
    assert_eq!(trap_stats().chained - chained, 2_000);

    // 2. The program replaces the engine's handler: its breakpoints go
    // straight to it, and the next batch puts the engine's handler back in
    // front, chaining to the new one (a one-argument handler this time).
    install(plain_handler as *const () as usize, 0);
    breakpoint();
    assert_eq!(PLAIN_HITS.load(SeqCst), 1);
    let chained = trap_stats().chained;
    batches_while_breaking(200, 1_000);
    assert_eq!(PLAIN_HITS.load(SeqCst), 1_001);
    assert_eq!(trap_stats().chained - chained, 1_000);
    assert_eq!(SIGINFO_HITS.load(SeqCst), 2_000);

    // 3. A SIGTRAP sent by kill is never taken for a site.
    // SAFETY: sends SIGTRAP to this thread, which the handlers catch.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGTRAP,
        )
    };
    assert_eq!(PLAIN_HITS.load(SeqCst), 1_002);
}
