//! A program that uses the very real-time signal livetrace probes threads
//! with keeps it: its handler (installed through the C library, before or
//! after livetrace's) receives exactly its own deliveries, `sigaction`
//! reports it back, and livetrace's probes keep working beside it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use livetrace_poke::{sample_threads, tls_offset_of, world};

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_handler(_: i32) {
    HITS.fetch_add(1, SeqCst);
}

thread_local! {
    static WORD: std::cell::Cell<u64> = const { std::cell::Cell::new(7) };
}

#[test]
fn the_program_shares_the_world_signal() {
    let sig = world::signal();
    let offset = WORD.with(|w| tls_offset_of(w.as_ptr() as usize));
    // A probe installs livetrace's handler first.
    let t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
    sample_threads(offset, Duration::from_secs(5)).unwrap();
    // The program installs its own handler for the same signal.
    // SAFETY: installs a handler through the C library (livetrace's
    // interposer), then queries it back.
    let seen = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = program_handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut cur);
        cur.sa_sigaction
    };
    assert_eq!(
        seen, program_handler as *const () as usize,
        "sigaction reports the program's"
    );
    // Its own deliveries reach it...
    for _ in 0..10 {
        // SAFETY: sends the signal to this thread, whose handler returns.
        unsafe { libc::raise(sig) };
    }
    assert_eq!(HITS.load(SeqCst), 10);
    // ...and livetrace's probes are still livetrace's, never the program's.
    for _ in 0..20 {
        let s = sample_threads(offset, Duration::from_secs(5)).unwrap();
        assert!(s.len() >= 2);
    }
    assert_eq!(
        HITS.load(SeqCst),
        10,
        "a probe reached the program's handler"
    );
    t.join().unwrap();
}
