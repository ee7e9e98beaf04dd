//! `sample_threads` reports every thread's RIP and TLS word, including a
//! thread spinning in known code and one blocked in a system call.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use livetrace_poke::{sample_threads, sample_threads_marking, tls_offset_of};

thread_local! {
    static WORD: Cell<u64> = const { Cell::new(0) };
}

std::arch::global_asm!(
    ".pushsection .text.lt_probe_spin,\"ax\",@progbits",
    ".globl lt_probe_spin_start",
    "lt_probe_spin_start:",
    "2: pause",
    "   cmp byte ptr [rdi], 0",
    "   je 2b",
    "   ret",
    ".globl lt_probe_spin_end",
    "lt_probe_spin_end:",
    ".popsection",
);

unsafe extern "C" {
    fn lt_probe_spin_start(flag: *const AtomicBool);
    static lt_probe_spin_end: u8;
}

#[test]
fn samples_every_thread() {
    let offset = WORD.with(|w| tls_offset_of(w.as_ptr() as usize));
    WORD.with(|w| w.set(1000));
    let release = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let spin = lt_probe_spin_start as *const () as usize;
    let spin_end = &raw const lt_probe_spin_end as usize;
    std::thread::scope(|s| {
        let mut tids = Vec::new();
        for k in 1..=3u64 {
            let (release, ready) = (&release, &ready);
            tids.push(s.spawn(move || {
                WORD.with(|w| w.set(1000 + k));
                ready.fetch_add(1, SeqCst);
                match k {
                    // Spins in the asm loop until released.
                    // SAFETY: the loop only reads the flag.
                    1 => unsafe { lt_probe_spin_start(release) },
                    // Blocked in a system call (nanosleep, restarted).
                    2 => {
                        while !release.load(SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    _ => {
                        while !release.load(SeqCst) {
                            std::hint::spin_loop();
                        }
                    }
                }
            }));
        }
        while ready.load(SeqCst) < 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        let samples = sample_threads(offset, Duration::from_secs(5)).unwrap();
        release.store(true, SeqCst);
        let words: Vec<u64> = samples.iter().map(|s| s.word).collect();
        for k in 0..=3 {
            assert!(
                words.contains(&(1000 + k)),
                "word {} in {words:?}",
                1000 + k
            );
        }
        assert_eq!(samples.iter().filter(|s| s.rip.is_none()).count(), 1);
        let spinner = samples.iter().find(|s| s.word == 1001).unwrap();
        let rip = spinner.rip.unwrap();
        assert!(
            (spin..spin_end).contains(&rip),
            "spinner at {rip:#x}, loop {spin:#x}..{spin_end:#x}"
        );
    });
    // Sampling again, alone, still works and the process is unharmed.
    let again = sample_threads(offset, Duration::from_secs(5)).unwrap();
    assert!(again.iter().any(|s| s.word == 1000));
}

thread_local! {
    static SPAN: Cell<u64> = const { Cell::new(0) };
}

#[test]
fn marking_turns_a_byte_on_the_sampled_threads_only() {
    let offset = SPAN.with(|w| tls_offset_of(w.as_ptr() as usize));
    SPAN.with(|w| w.set(1)); // the sampler's own byte is left alone
    let release = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let seen = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for k in [1u64, 3] {
            let (release, ready, seen) = (&release, &ready, &seen);
            s.spawn(move || {
                SPAN.with(|w| w.set(0x100 | k));
                ready.fetch_add(1, SeqCst);
                while !release.load(SeqCst) {
                    std::hint::spin_loop();
                }
                seen.lock().unwrap().push(SPAN.with(|w| w.get()));
            });
        }
        while ready.load(SeqCst) < 2 {
            std::thread::yield_now();
        }
        let samples = sample_threads_marking(offset, Duration::from_secs(5), 1, 2).unwrap();
        release.store(true, SeqCst);
        let words: Vec<u64> = samples.iter().map(|s| s.word).collect();
        // Reported before marking (other threads of the test harness have
        // their own words).
        for w in [1, 0x101, 0x103] {
            assert!(words.contains(&w), "{w:#x} in {words:x?}");
        }
    });
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    // Only the low byte, and only where it was 1.
    assert_eq!(seen, [0x102, 0x103]);
    assert_eq!(SPAN.with(|w| w.get()), 1);
}
