//! What the engine never does to a traced program, whatever the program
//! does with its signals: threads that block every signal survive batches;
//! a thread that blocks SIGTRAP behind the C library's back is given it
//! back, or the batch is refused naming it before anything is written;
//! text mapped `MAP_SHARED` is never written.
//!
//! Signal masks and dispositions are per thread and per process, so the
//! tests run one at a time (a lock) on fixture functions of their own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use livetrace_fixtures as fx;
use livetrace_poke::signals::masks_repaired;
use livetrace_poke::{Batch, Error, Insn, RejectReason, NOP5};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks `sigs` on the calling thread with the raw system call, which no
/// interposer sees.
fn raw_block(sigs: &[i32]) {
    // SAFETY: sigset operations on a local; rt_sigprocmask with valid
    // pointers changes this thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        );
    }
}

fn blocks(sig: i32) -> bool {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: queries this thread's mask into a local.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<libc::sigset_t>(),
            set.as_mut_ptr(),
            8usize,
        );
        libc::sigismember(set.as_ptr(), sig) == 1
    }
}

fn flip(range: std::ops::Range<usize>, on: bool) -> Result<(), Error> {
    let mut b = Batch::new();
    for i in range {
        let (old, new) = if on {
            (Insn::Nop, Insn::Call(fx::count_any_addr()))
        } else {
            (Insn::Call(fx::count_any_addr()), Insn::Nop)
        };
        b.queue(fx::site(i), old, new)?;
    }
    b.apply().map(|_| ())
}

fn site_bytes(i: usize) -> [u8; 5] {
    livetrace_poke::read_site(fx::site(i)).unwrap()
}

/// Worker threads that block every signal the way a `sigwait` server does
/// (through the C library) call sites through 20,000 batches, and none is
/// killed by an `int3`.
#[test]
fn threads_that_block_every_signal_survive_twenty_thousand_batches() {
    let _s = serial();
    let range = 2000..2100;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (stop, calls, range) = (stop.clone(), calls.clone(), range.clone());
        workers.push(std::thread::spawn(move || {
            // SAFETY: blocks every signal on this thread, through libc.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                assert_eq!(
                    libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()),
                    0
                );
            }
            assert!(blocks(libc::SIGUSR1), "the rest stays blocked");
            assert!(!blocks(libc::SIGTRAP), "SIGTRAP is never blocked");
            while !stop.load(SeqCst) {
                for i in range.clone() {
                    assert_eq!(fx::call(i), fx::value_of(i));
                }
                calls.fetch_add(1, SeqCst);
            }
        }));
    }
    let batches = std::env::var("LIVETRACE_BLOCKED_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let traps = livetrace_poke::trap_stats();
    for k in 0..batches {
        flip(range.clone(), k % 2 == 0).unwrap();
    }
    if batches % 2 == 1 {
        flip(range.clone(), false).unwrap();
    }
    stop.store(true, SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let t = livetrace_poke::trap_stats();
    assert!(calls.load(SeqCst) > 0);
    eprintln!(
        "{batches} batches, {} rounds of calls, {} traps emulated, {} re-executed",
        calls.load(SeqCst),
        t.emulated - traps.emulated,
        t.reexecuted - traps.reexecuted
    );
}

/// A thread that blocked SIGTRAP with a raw system call is given it back
/// before the batch (through a probe whose handler edits the mask its
/// signal frame restores), and then survives calling sites mid-batch.
#[test]
fn a_thread_blocking_sigtrap_behind_the_c_library_is_given_it_back() {
    let _s = serial();
    let range = 2200..2250;
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let unblocked = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, ready, unblocked, range) = (
            stop.clone(),
            ready.clone(),
            unblocked.clone(),
            range.clone(),
        );
        std::thread::spawn(move || {
            raw_block(&[libc::SIGTRAP]);
            assert!(blocks(libc::SIGTRAP));
            ready.store(true, SeqCst);
            while !stop.load(SeqCst) {
                if !blocks(libc::SIGTRAP) {
                    unblocked.store(true, SeqCst);
                    for i in range.clone() {
                        assert_eq!(fx::call(i), fx::value_of(i));
                    }
                }
                std::hint::spin_loop();
            }
        })
    };
    while !ready.load(SeqCst) {
        std::thread::yield_now();
    }
    let repaired = masks_repaired();
    for k in 0..200 {
        flip(range.clone(), k % 2 == 0).unwrap();
    }
    stop.store(true, SeqCst);
    worker.join().unwrap();
    assert!(masks_repaired() > repaired, "the engine repaired the mask");
    assert!(unblocked.load(SeqCst), "the thread saw SIGTRAP unblocked");
}

/// A thread that blocked SIGTRAP *and* the world signal with raw system
/// calls cannot be given SIGTRAP back: the batch is refused naming it, and
/// not a byte is written.
#[test]
fn a_thread_that_cannot_take_sigtrap_makes_the_batch_refuse() {
    let _s = serial();
    let range = 2300..2310;
    let go = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let (go, ready) = (go.clone(), ready.clone());
        std::thread::spawn(move || {
            tx.send(livetrace_poke::world::gettid()).unwrap();
            raw_block(&[libc::SIGTRAP, livetrace_poke::world::signal()]);
            ready.store(true, SeqCst);
            while !go.load(SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // SAFETY: unblocks everything on this thread before it exits.
            unsafe {
                let set: libc::sigset_t = std::mem::zeroed();
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &set,
                    std::ptr::null_mut::<libc::sigset_t>(),
                    8usize,
                );
            }
        })
    };
    let tid = rx.recv().unwrap();
    while !ready.load(SeqCst) {
        std::thread::yield_now();
    }
    let before: Vec<[u8; 5]> = range.clone().map(site_bytes).collect();
    let err = flip(range.clone(), true).unwrap_err();
    match &err {
        Error::SignalsBlocked(list) => {
            assert!(list.iter().any(|t| t.tid == tid), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&format!("thread {tid}")), "{err}");
    let after: Vec<[u8; 5]> = range.clone().map(site_bytes).collect();
    assert_eq!(before, after, "nothing written");
    assert!(after.iter().all(|b| *b == NOP5));
    go.store(true, SeqCst);
    worker.join().unwrap();
    flip(range.clone(), true).unwrap();
    flip(range, false).unwrap();
}

/// Sets the calling thread's mask with the raw system call, as glibc's
/// `pthread_create` does (every signal, SIGCANCEL and SIGSETXID included).
fn raw_setmask(mask: u64) {
    // SAFETY: rt_sigprocmask with a valid 8-byte kernel sigset changes
    // this thread's mask only.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
}

/// A thread with glibc's mask for a thread being created (every signal
/// blocked) is waited for: a new thread keeps it until it first runs,
/// which on a busy machine, or while a debugger (`livetrace attach`) holds
/// it, takes longer than the short re-reads other masks get. Only a thread
/// that keeps it for seconds makes the batch refuse.
#[test]
fn a_thread_being_created_is_waited_for() {
    let _s = serial();
    let range = 2320..2330;
    let hold_for = |ms: u64| {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            raw_setmask(u64::MAX);
            tx.send(livetrace_poke::world::gettid()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(ms));
            raw_setmask(0);
        });
        (t, rx.recv().unwrap())
    };
    // Longer than the 48 ms other masks are re-read for.
    let (t, _) = hold_for(300);
    flip(range.clone(), true).unwrap();
    t.join().unwrap();
    flip(range.clone(), false).unwrap();
    // For good (a program's own raw all-blocking mask): refused, named.
    let (t, tid) = hold_for(4000);
    let err = flip(range.clone(), true).unwrap_err();
    assert!(
        matches!(&err, Error::SignalsBlocked(l) if l.iter().any(|b| b.tid == tid)),
        "{err}"
    );
    assert!(range.clone().map(site_bytes).all(|b| b == NOP5));
    t.join().unwrap();
}

/// Text mapped `MAP_SHARED` is refused: writing it would write the file.
#[test]
fn shared_text_is_never_written() {
    let _s = serial();
    let path = std::env::temp_dir().join(format!("lt-shared-text-{}", std::process::id()));
    // nop5; mov eax, 42; ret; padding.
    let mut code = vec![0x0f, 0x1f, 0x44, 0x00, 0x00, 0xb8, 42, 0, 0, 0, 0xc3];
    code.resize(4096, 0xcc);
    std::fs::write(&path, &code).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: maps the file we just wrote, shared and executable.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let site = p as usize;
    // Any target will do for a batch that must be refused before it is
    // written: a jump to the next instruction is always in reach.
    let mut b = Batch::new();
    b.queue(site, Insn::Nop, Insn::Jmp(site + 5)).unwrap();
    match b.apply() {
        Err(Error::Rejected(r)) => {
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].reason, RejectReason::Shared);
            assert!(r[0].to_string().contains("MAP_SHARED"), "{}", r[0]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), code, "the file is unchanged");
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, 4096) };
    let _ = std::fs::remove_file(&path);
}
