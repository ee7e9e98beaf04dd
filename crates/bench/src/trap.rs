//! `trap`: what a thread pays when it reaches a site mid-batch (an int3,
//! the engine's handler, and the emulated instruction) against a bare int3
//! round trip into a handler that does nothing, in interleaved rounds.

use std::time::Instant;

use livetrace_fixtures as fx;
use livetrace_poke::{Batch, Insn, Phase};

use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Traps per round.
    #[arg(long, default_value_t = 2_000)]
    traps: usize,
    /// Rounds of each kind, interleaved.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
}

extern "C" fn empty_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_empty_handler() {
    // SAFETY: installs a handler that returns at once; int3 resumes after
    // itself, so a bare int3 is a complete round trip.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = empty_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
}

fn bare(n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: the empty handler is installed; execution resumes after.
        unsafe { std::arch::asm!("int3") };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Calls function 0 `n` times while its site is an int3 in a live batch.
fn emulated(n: usize, on: bool) -> f64 {
    let (old, new) = if on {
        (Insn::Call(fx::ret_stub()), Insn::Nop)
    } else {
        (Insn::Nop, Insn::Call(fx::ret_stub()))
    };
    let mut b = Batch::new();
    b.queue(fx::site(0), old, new).unwrap();
    let mut ns = 0.0;
    b.apply_with(|phase| {
        if phase == Phase::Int3 {
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(fx::call(0));
            }
            ns = t.elapsed().as_nanos() as f64 / n as f64;
        }
    })
    .unwrap();
    ns
}

pub fn run(a: Args) {
    let (mut bares, mut emus) = (Vec::new(), Vec::new());
    let mut on = false;
    for _ in 0..a.rounds {
        // The program's handler replaces ours; the next batch reinstalls
        // ours in front of it (and the trap we then measure never chains).
        install_empty_handler();
        bares.push(bare(a.traps));
        emus.push(emulated(a.traps, on));
        on = !on;
    }
    let (b, e) = (median(&mut bares), median(&mut emus));
    eprintln!("trap: {} rounds of {} traps each", a.rounds, a.traps);
    println!(
        "RESULT bench=trap bare_int3_ns={b:.0} emulated_hit_ns={e:.0} ratio={:.3}",
        e / b
    );
}
