//! The engine's SIGTRAP handler stays SIGTRAP's disposition whatever the
//! program installs after it, and the program's handlers still get exactly
//! the traps that are theirs:
//!
//! - through the C library's `sigaction`, the program's handler is recorded
//!   as the program's (it is what `sigaction` reports back), and ours stays;
//!   installed mid-batch, it never receives the batch's traps;
//! - installed behind our back (a raw `rt_sigaction`) by a handler that
//!   chains to what it replaced — ours — the next batch puts ours back in
//!   front, and the chain ends in the program's earlier handler instead of
//!   recursing forever.
//!
//! One test function: dispositions are per process.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use livetrace_fixtures as fx;
use livetrace_poke::{trap_stats, Batch, Insn, Phase};

static H_HITS: AtomicU64 = AtomicU64::new(0);
static MID_HITS: AtomicU64 = AtomicU64::new(0);
static P_HITS: AtomicU64 = AtomicU64::new(0);
static P_DEPTH: AtomicU64 = AtomicU64::new(0);
static P_MAX_DEPTH: AtomicU64 = AtomicU64::new(0);

/// The kernel's `struct sigaction` for `rt_sigaction`.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

const SA_RESTORER: u64 = 0x0400_0000;

fn raw_sigaction(sig: i32, new: Option<&KernelSigaction>) -> KernelSigaction {
    let mut old = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: the kernel's rt_sigaction with valid pointers to structs of
    // the kernel's layout and its 8-byte sigset.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            new.map_or(std::ptr::null(), |n| n as *const KernelSigaction),
            &mut old,
            8usize,
        )
    };
    assert_eq!(rc, 0);
    old
}

extern "C" fn h(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    H_HITS.fetch_add(1, SeqCst);
}

extern "C" fn mid(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    MID_HITS.fetch_add(1, SeqCst);
}

/// What `p` chains to: the disposition its raw `rt_sigaction` replaced.
static P_OLD: AtomicU64 = AtomicU64::new(0);

extern "C" fn p(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    P_HITS.fetch_add(1, SeqCst);
    let d = P_DEPTH.fetch_add(1, SeqCst) + 1;
    P_MAX_DEPTH.fetch_max(d, SeqCst);
    let old = P_OLD.load(SeqCst) as usize;
    if old > 1 {
        // SAFETY: `old` is the SA_SIGINFO handler that was installed.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(old) };
        f(sig, info, uc);
    }
    P_DEPTH.fetch_sub(1, SeqCst);
}

fn install_siginfo(handler: usize) -> libc::sigaction {
    // SAFETY: a zeroed sigaction filled in and installed through the C
    // library (livetrace's interposer).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, &mut old), 0);
        old
    }
}

fn breakpoint() {
    // SAFETY: int3 raises SIGTRAP, which the handlers return from, resuming
    // after the int3.
    unsafe { std::arch::asm!("int3") };
}

fn flip(i: usize, on: bool) {
    let mut b = Batch::new();
    let (old, new) = if on {
        (Insn::Nop, Insn::Call(fx::count_any_addr()))
    } else {
        (Insn::Call(fx::count_any_addr()), Insn::Nop)
    };
    b.queue(fx::site(i), old, new).unwrap();
    b.apply().unwrap();
}

#[test]
fn our_handler_stays_in_front_and_programs_get_their_own_traps() {
    // Our handler goes in with the first batch.
    flip(3000, true);
    flip(3000, false);
    let ours = raw_sigaction(libc::SIGTRAP, None);

    // 1. Through the C library: recorded, reported back, ours stays.
    let old = install_siginfo(h as *const () as usize);
    assert_ne!(
        old.sa_sigaction, ours.handler,
        "sigaction never reports ours"
    );
    assert_eq!(raw_sigaction(libc::SIGTRAP, None).handler, ours.handler);
    // SAFETY: queries through the C library into a local.
    let seen = unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut cur);
        cur.sa_sigaction
    };
    assert_eq!(seen, h as *const () as usize);
    for _ in 0..100 {
        breakpoint();
    }
    assert_eq!(H_HITS.load(SeqCst), 100);

    // 2. Installed mid-batch: the batch's traps stay ours.
    let emulated = trap_stats().emulated;
    let mut b = Batch::new();
    b.queue(fx::site(3001), Insn::Nop, Insn::Call(fx::count_any_addr()))
        .unwrap();
    let before = fx::count_any_hits();
    b.apply_with(|phase| {
        if phase == Phase::Int3 {
            install_siginfo(mid as *const () as usize);
            // The site holds int3 now: the call is emulated.
            assert_eq!(fx::call(3001), fx::value_of(3001));
        }
    })
    .unwrap();
    assert_eq!(
        MID_HITS.load(SeqCst),
        0,
        "the program's handler got our trap"
    );
    assert_eq!(trap_stats().emulated, emulated + 1);
    assert_eq!(fx::count_any_hits(), before + 1, "the emulated call ran");
    flip(3001, false);
    // The program's own breakpoints reach its newest handler.
    breakpoint();
    assert_eq!(MID_HITS.load(SeqCst), 1);
    install_siginfo(h as *const () as usize);

    // 3. Behind our back: a raw rt_sigaction whose handler chains to what
    // it replaced (ours). The next batch puts ours back in front; a trap
    // of the program's goes to `p`, which calls ours, which must hand it to
    // the handler before `p` (h), not to `p` again.
    let p_act = KernelSigaction {
        handler: p as *const () as usize,
        flags: (libc::SA_SIGINFO as u64) | SA_RESTORER,
        restorer: ours.restorer,
        mask: 0,
    };
    let replaced = raw_sigaction(libc::SIGTRAP, Some(&p_act));
    assert_eq!(replaced.handler, ours.handler);
    P_OLD.store(replaced.handler as u64, SeqCst);
    flip(3002, true);
    flip(3002, false);
    assert_eq!(
        raw_sigaction(libc::SIGTRAP, None).handler,
        ours.handler,
        "ours is back"
    );
    let (h0, p0) = (H_HITS.load(SeqCst), P_HITS.load(SeqCst));
    for _ in 0..50 {
        breakpoint();
    }
    assert_eq!(
        P_HITS.load(SeqCst) - p0,
        50,
        "the program's newest handler runs once per trap"
    );
    assert_eq!(
        H_HITS.load(SeqCst) - h0,
        50,
        "and its chain ends in the one before"
    );
    assert_eq!(P_MAX_DEPTH.load(SeqCst), 1, "no recursion");
}
