//! `convert`: GCC-style sleds made canonical 5-byte NOPs, all at once under
//! one stop of the world, while busy threads run elsewhere. The sleds are
//! generated (`90 90 90 90 90; mov eax, i; ret`, 16 bytes apart) in an
//! executable mapping of our own; the time is the whole `convert_sleds`
//! call, stop and validation included, per site.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Instant;

use livetrace_poke::{convert_sleds, Quiet, NOP5};

use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Sleds per conversion.
    #[arg(long, default_value_t = 50_000)]
    sites: usize,
    /// Busy threads running meanwhile (to be stopped).
    #[arg(long, default_value_t = 2)]
    busy_threads: usize,
    /// Conversions measured (each on fresh sleds).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

/// Maps `n` functions of 16 bytes, each starting with a sled, read+exec.
fn make_sleds(n: usize) -> (usize, usize) {
    let len = (n * 16).next_multiple_of(4096);
    // SAFETY: a fresh private anonymous mapping we own.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let base = p as usize;
    for i in 0..n {
        let mut f = [0xccu8; 16];
        f[..5].copy_from_slice(&[0x90; 5]);
        f[5] = 0xb8;
        f[6..10].copy_from_slice(&(i as u32).to_le_bytes());
        f[10] = 0xc3;
        // SAFETY: inside our writable mapping.
        unsafe { std::ptr::write((base + 16 * i) as *mut [u8; 16], f) };
    }
    // SAFETY: our mapping, made executable and read-only.
    let made = unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC) };
    assert_eq!(made, 0);
    (base, len)
}

pub fn run(a: Args) {
    let stop = AtomicBool::new(false);
    let mut ns = Vec::with_capacity(a.rounds);
    let mut stopped = 0;
    std::thread::scope(|s| {
        for _ in 0..a.busy_threads {
            s.spawn(|| {
                let mut x = 0u64;
                while !stop.load(SeqCst) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            });
        }
        for _ in 0..a.rounds {
            let (base, len) = make_sleds(a.sites);
            let sleds: Vec<(usize, [u8; 5])> =
                (0..a.sites).map(|i| (base + 16 * i, [0x90; 5])).collect();
            let t = Instant::now();
            let c = convert_sleds(&sleds, Quiet::StopTheWorld).unwrap_or_else(|e| panic!("{e}"));
            ns.push(t.elapsed().as_nanos() as f64 / a.sites as f64);
            assert_eq!(c.done.len(), a.sites);
            stopped = c.stop.map_or(0, |r| r.stopped);
            for i in (0..a.sites).step_by(997) {
                // SAFETY: inside our mapping, executable now.
                let b = unsafe { std::ptr::read_volatile((base + 16 * i) as *const [u8; 5]) };
                assert_eq!(b, NOP5);
                // SAFETY: function i of our mapping: `nop5; mov eax, i; ret`.
                let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(base + 16 * i) };
                assert_eq!(f(), i as u32);
            }
            // SAFETY: our mapping; nothing runs its code any more.
            unsafe { libc::munmap(base as *mut _, len) };
        }
        stop.store(true, SeqCst);
    });
    eprintln!(
        "convert: {} sleds x {} rounds, {} threads stopped each time",
        a.sites, a.rounds, stopped
    );
    println!(
        "RESULT bench=convert sites={} busy_threads={} ns_per_site={:.1} min_ns_per_site={:.1}",
        a.sites,
        a.busy_threads,
        median(&mut ns.clone()),
        ns.iter().copied().fold(f64::INFINITY, f64::min)
    );
}
