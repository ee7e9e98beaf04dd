//! Prologue relocation, live, on a stock library (gcc -O2, no sites) and
//! hand-written functions: every function is either relocated and then
//! traced exactly (results unchanged, every call counted) or refused with
//! the right reason; a thread inside the moved instructions, or interrupted
//! there by a signal handler, is waited for, and one that stays makes the
//! installation fail changing nothing.

mod stocklib;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use livetrace_poke::relocation::{self, install, install_with, reclaim, remove, Stage};
use livetrace_poke::{read_text, Batch, Error, Insn};

use stocklib::{load, Func, Lib};

/// Relocation changes process-wide state: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn enable(lib: &Lib, funcs: &[&Func], on: bool) {
    let mut b = Batch::new();
    for f in funcs {
        let r = f.verdict.as_ref().unwrap();
        let call = Insn::Call(lib.stock.counter(f.counter));
        let (old, new) = if on {
            (Insn::Nop, call)
        } else {
            (call, Insn::Nop)
        };
        b.queue(r.detour, old, new).unwrap();
    }
    b.apply().unwrap();
}

#[test]
fn every_shape_is_traced_or_refused_with_its_reason() {
    let _s = serial();
    let lib = load("shapes");
    // The hand-written shapes get exactly the verdict they were written
    // for.
    for f in lib.funcs.iter().filter(|f| f.expect.is_some()) {
        let got = f.verdict.as_ref().err().map(|r| r.kind());
        assert_eq!(
            got,
            f.expect.unwrap(),
            "{}: {:?}",
            f.name,
            f.verdict.as_ref().err()
        );
    }
    let relocated: Vec<&Func> = lib.funcs.iter().filter(|f| f.verdict.is_ok()).collect();
    for f in lib.funcs.iter().filter(|f| f.verdict.is_err()) {
        eprintln!("refused: {}: {}", f.name, f.verdict.as_ref().unwrap_err());
    }
    // Compiled shapes: most get a site (every shape but the jump table's
    // at least once).
    let compiled = relocated.iter().filter(|f| f.expect.is_none()).count();
    assert!(
        compiled >= stocklib::STOCK / 2,
        "{compiled} compiled functions relocated"
    );
    let list = lib.relocations();
    let before: Vec<Vec<u8>> = list
        .iter()
        .map(|r| read_text(r.site, r.original.len()).unwrap())
        .collect();
    for (r, b) in list.iter().zip(&before) {
        assert_eq!(&r.original, b, "the text is the file's");
    }

    let done = install(&list, Duration::from_secs(10)).unwrap();
    assert_eq!(done.relocated, list.len());
    for r in &list {
        let now = read_text(r.site, r.original.len()).unwrap();
        assert_eq!(now[0], 0xe9, "{:#x} jumps", r.site);
        let rel = i32::from_le_bytes(now[1..5].try_into().unwrap());
        assert_eq!(r.site as i64 + 5 + rel as i64, r.detour as i64);
        assert_eq!(&now[5..], &r.original[5..], "bytes past the jump untouched");
        assert_eq!(relocation::detour_of(r.site), Some(r.detour));
    }
    // Relocated, not traced: same results.
    for f in &lib.funcs {
        lib.check(f).unwrap();
    }
    // A second install of the same function is refused, changing nothing.
    let again = install(&list[..1], Duration::from_secs(1));
    assert!(again.is_err(), "relocated twice");

    // Traced: every call counted, exactly.
    enable(&lib, &relocated, true);
    for f in &relocated {
        let before = lib.stock.count(f.counter);
        let calls = lib.check(f).unwrap();
        assert_eq!(lib.stock.count(f.counter) - before, calls, "{}", f.name);
    }
    enable(&lib, &relocated, false);
    for f in &relocated {
        let before = lib.stock.count(f.counter);
        lib.check(f).unwrap();
        assert_eq!(lib.stock.count(f.counter), before, "{}", f.name);
    }

    let sites: Vec<usize> = list.iter().map(|r| r.site).collect();
    let removed = remove(&sites).unwrap();
    assert_eq!(removed.removed, list.len());
    for (r, b) in list.iter().zip(&before) {
        assert_eq!(&read_text(r.site, r.original.len()).unwrap(), b);
        assert_eq!(relocation::detour_of(r.site), None);
    }
    for f in &lib.funcs {
        lib.check(f).unwrap();
    }
    let freed = reclaim(Duration::from_secs(10)).unwrap();
    assert_eq!(freed.freed, list.len());
    assert!(remove(&sites[..1]).is_err(), "removed twice");
}

/// A gigabyte of zero pages for `rep lodsb` to read: a call of
/// `lt_hand_rep(COUNT, buf)` stays at its region's third byte for a good
/// fraction of a second.
fn zero_gigabyte() -> usize {
    // SAFETY: a fresh private anonymous read-only mapping, never unmapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 30,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

struct Rep {
    tid: AtomicI32,
    inside: AtomicBool,
    returned: AtomicU64,
}

static REP: Rep = Rep {
    tid: AtomicI32::new(0),
    inside: AtomicBool::new(false),
    returned: AtomicU64::new(u64::MAX),
};

/// Starts a thread inside `lt_hand_rep`'s region; returns when it is.
fn thread_inside(lib: &Lib) -> std::thread::JoinHandle<()> {
    let f = lib.stock.func("lt_hand_rep");
    let buf = zero_gigabyte();
    REP.inside.store(false, SeqCst);
    REP.returned.store(u64::MAX, SeqCst);
    let h = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        REP.tid.store(unsafe { libc::gettid() }, SeqCst);
        REP.inside.store(true, SeqCst);
        let r = f(1 << 30, buf as i64);
        REP.returned.store(r as u64, SeqCst);
    });
    while !REP.inside.load(SeqCst) {
        std::thread::yield_now();
    }
    // Past the three-byte mov into the rep (it lasts far longer).
    std::thread::sleep(Duration::from_millis(5));
    h
}

fn rep_relocation(lib: &Lib) -> relocation::Relocation {
    lib.funcs
        .iter()
        .find(|f| f.name == "lt_hand_rep")
        .unwrap()
        .verdict
        .clone()
        .unwrap()
}

#[test]
fn a_thread_inside_the_region_is_waited_for() {
    let _s = serial();
    let lib = load("inside");
    let r = rep_relocation(&lib);
    let h = thread_inside(&lib);
    let mut parked_while_inside = false;
    let done = install_with(std::slice::from_ref(&r), Duration::from_secs(30), |st| {
        if st == Stage::Parked {
            parked_while_inside = REP.returned.load(SeqCst) == u64::MAX;
        }
    })
    .unwrap();
    assert!(parked_while_inside, "the thread was inside when parked");
    // The jump was only written once the thread had left the region.
    assert!(done.rounds > 1, "{done:?}");
    assert!(done.waited >= Duration::from_millis(5), "{done:?}");
    h.join().unwrap();
    assert_eq!(REP.returned.load(SeqCst), 0);
    assert_eq!(lib.stock.func("lt_hand_rep")(0, 0), 0);
    remove(&[r.site]).unwrap();
    reclaim(Duration::from_secs(10)).unwrap();
}

static HOLD: AtomicBool = AtomicBool::new(false);
static IN_HANDLER: AtomicBool = AtomicBool::new(false);

extern "C" fn hold(_: libc::c_int) {
    IN_HANDLER.store(true, SeqCst);
    while HOLD.load(SeqCst) {
        std::hint::spin_loop();
    }
}

#[test]
fn a_thread_that_stays_inside_makes_the_install_fail_changing_nothing() {
    let _s = serial();
    let lib = load("stays");
    let r = rep_relocation(&lib);
    let original = read_text(r.site, r.original.len()).unwrap();

    // Executing inside the region.
    let h = thread_inside(&lib);
    let err = install(std::slice::from_ref(&r), Duration::from_millis(20)).unwrap_err();
    let tid = REP.tid.load(SeqCst);
    match &err {
        Error::NotClear { threads } => {
            assert!(threads.iter().any(|t| t.tid == tid), "{err}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(read_text(r.site, r.original.len()).unwrap(), original);
    assert_eq!(relocation::detour_of(r.site), None);
    h.join().unwrap();
    assert_eq!(REP.returned.load(SeqCst), 0);

    // Interrupted inside the region by a handler that does not return: the
    // RIP in its signal frame is in the region.
    // SAFETY: a plain handler that only touches atomics.
    unsafe { libc::signal(libc::SIGUSR1, hold as *const () as libc::sighandler_t) };
    HOLD.store(true, SeqCst);
    IN_HANDLER.store(false, SeqCst);
    let h = thread_inside(&lib);
    let tid = REP.tid.load(SeqCst);
    // SAFETY: the thread is alive (it is inside the rep).
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
    let t0 = Instant::now();
    while !IN_HANDLER.load(SeqCst) {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::yield_now();
    }
    // Long enough for a loaded machine to let the thread answer the probe
    // (it stays in the handler, so the install fails whatever the wait).
    let err = install(std::slice::from_ref(&r), Duration::from_secs(3)).unwrap_err();
    match &err {
        Error::NotClear { threads } => {
            let t = threads.iter().find(|t| t.tid == tid).expect("the thread");
            assert!(
                t.why.contains(&format!("{:#x}", r.site + 3)),
                "resuming at the rep: {t}"
            );
        }
        e => panic!("{e}"),
    }
    assert_eq!(read_text(r.site, r.original.len()).unwrap(), original);
    HOLD.store(false, SeqCst);
    h.join().unwrap();
    assert_eq!(REP.returned.load(SeqCst), 0);

    // Nobody inside any more: it goes through.
    install(std::slice::from_ref(&r), Duration::from_secs(10)).unwrap();
    assert_eq!(lib.stock.func("lt_hand_rep")(0, 0), 0);
    remove(&[r.site]).unwrap();
    reclaim(Duration::from_secs(10)).unwrap();
}
