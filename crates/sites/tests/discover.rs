//! Compiler-emitted sites in real libraries built by gcc, g++ and clang,
//! loaded with dlopen: discovery, names, conversion, patching, rejection,
//! dlclose.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use common::*;
use livetrace_poke::{Insn, NOP1X5, NOP5};
use livetrace_sites::{
    ConvertPolicy, Error, ExternalSite, Origin, RejectReason, SiteState, StwError, Table,
};

/// Stop-the-world conversion stops every thread of the process, and one
/// test deliberately blocks the stop signal: the tests here run one at a
/// time.
fn serial() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn only(table: &Table, name: &str) -> usize {
    let v = table.lookup_name(name);
    assert_eq!(v.len(), 1, "{name}: {v:?}");
    v[0]
}

#[test]
fn gcc_sleds_found_refused_converted_stop_the_world_and_patched() {
    let _s = serial();
    let path = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltgcc_stw");
    let lib = Lib::open(&path);
    let (mut table, report) = Table::discover().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);

    let add = lib.sym("lt_add");
    let i = site_in(&table, "lt_add", &path);
    let info = table.info(i);
    assert_eq!(info.addr, add, "site is the symbol's first byte");
    assert_eq!(info.offset, 0);
    assert_eq!(info.object, path.to_str().unwrap());
    assert_eq!(info.record.origin(), Origin::Patchable);
    // gcc 12 emits five one-byte NOPs: accepted, not patchable yet.
    assert_eq!(bytes(add), NOP1X5);
    assert_eq!(info.record.state(), SiteState::Unconverted);
    let obj = info.record.object();
    // The static function is named from .symtab.
    site_in(&table, "lt_static_helper", &path);
    let mine = |v: Vec<usize>| {
        v.into_iter()
            .filter(|&i| table.record(i).object() == obj)
            .count()
    };
    assert_eq!(
        mine(table.glob("lt_*")),
        5,
        "lt_add lt_mul lt_static_helper lt_call_static lt_spin"
    );

    let tramp = lib.sym("lt_tramp");
    match table.apply(&[(add, Insn::Call(tramp))]) {
        Err(Error::NotConverted { addr, .. }) => assert_eq!(addr, add),
        other => panic!("patching a sled must be refused: {other:?}"),
    }
    assert_eq!(bytes(add), NOP1X5);
    // Other threads exist (the test harness): single-threaded is refused.
    assert!(matches!(
        table.convert(Some(&[obj]), ConvertPolicy::SingleThreaded),
        Err(Error::NotSingleThreaded { .. })
    ));

    // Threads run through lt_add's sled the whole time.
    let stop = Arc::new(AtomicI32::new(0));
    let iters: Arc<Vec<AtomicI64>> = Arc::new((0..2).map(|_| AtomicI64::new(0)).collect());
    let spin = lib.sym("lt_spin");
    let workers: Vec<_> = (0..2)
        .map(|k| {
            let (stop, iters) = (stop.clone(), iters.clone());
            std::thread::spawn(move || {
                // SAFETY: funcs.c defines `void lt_spin(volatile int *,
                // volatile long *)`; both point into Arcs this closure owns,
                // and the library stays open until the thread is joined.
                unsafe {
                    let f: unsafe extern "C" fn(*const AtomicI32, *const AtomicI64) = as_fn(spin);
                    f(&*stop, &iters[k])
                };
            })
        })
        .collect();
    while iters.iter().any(|c| c.load(SeqCst) == 0) {
        std::thread::yield_now();
    }
    let conv = table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap();
    assert_eq!(conv.converted, 5, "{conv}");
    assert!(conv.failed.is_empty(), "{conv}");
    assert!(conv.stw.as_ref().unwrap().stopped >= 2, "{conv}");
    assert_eq!(bytes(add), NOP5);
    assert_eq!(table.record(i).state(), SiteState::Live(Insn::Nop));
    // The workers survived the conversion and keep going.
    let seen: Vec<i64> = iters.iter().map(|c| c.load(SeqCst)).collect();
    while iters.iter().zip(&seen).any(|(c, &s)| c.load(SeqCst) <= s) {
        std::thread::yield_now();
    }

    // Patched live while the workers run through it.
    let f = Funcs::of(&lib);
    let c0 = f.hits();
    table.apply(&[(add, Insn::Call(tramp))]).unwrap();
    assert_eq!(bytes(add)[0], 0xe8);
    assert_eq!(f.add(2, 3), 5, "arguments survive the trampoline");
    assert!(f.hits() > c0);
    assert!(table.object(obj).unwrap().is_pinned());
    table.apply(&[(add, Insn::Nop)]).unwrap();
    assert!(!table.object(obj).unwrap().is_pinned());
    stop.store(1, SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let c1 = f.hits();
    assert_eq!(f.add(4, 5), 9);
    assert_eq!(f.hits(), c1, "disabled again");
    lib.close();
}

#[test]
fn cpp_names_are_demangled() {
    let _s = serial();
    let path = build_so("g++", PATCH, &["shapes.cc"], "ltcpp");
    let lib = Lib::open(&path);
    let (table, _) = Table::discover().unwrap();
    let i = site_in(&table, "shapes::area(int, int)", &path);
    assert_eq!(table.raw_name(i), "_ZN6shapes4areaEii");
    assert_eq!(table.record(i).ip(), lib.sym("_ZN6shapes4areaEii"));
    site_in(&table, "shapes::Circle::perimeter_x100() const", &path);
    let obj = table.record(i).object();
    let names: Vec<&str> = table
        .glob("shapes::*")
        .into_iter()
        .filter(|&i| table.record(i).object() == obj)
        .map(|i| table.name(i))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    site_in(&table, "shapes_area", &path);
    lib.close();
}

#[test]
fn clang_sites_are_found_converted_and_patched() {
    let _s = serial();
    if !want_clang() {
        return;
    }
    let path = build_so("clang", PATCH, &["funcs.c", "tramp.c"], "ltclang");
    let lib = Lib::open(&path);
    let (mut table, report) = Table::discover().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let add = lib.sym("lt_add");
    let i = site_in(&table, "lt_add", &path);
    assert_eq!(table.record(i).ip(), add);
    // clang emits one 5-byte NOP; clang 14 with displacement 8.
    let b = bytes(add);
    assert_eq!(b[..4], NOP5[..4], "{b:x?}");
    let obj = table.record(i).object();
    if b != NOP5 {
        assert_eq!(table.record(i).state(), SiteState::Unconverted);
        let conv = table
            .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
            .unwrap();
        assert!(conv.converted >= 1 && conv.failed.is_empty(), "{conv}");
    }
    assert_eq!(bytes(add), NOP5);
    assert_eq!(table.record(i).state(), SiteState::Live(Insn::Nop));
    let f = Funcs::of(&lib);
    table
        .apply(&[(add, Insn::Call(lib.sym("lt_tramp")))])
        .unwrap();
    let c0 = f.hits();
    assert_eq!(f.add(20, 22), 42);
    assert_eq!(f.hits(), c0 + 1);
    table.apply(&[(add, Insn::Nop)]).unwrap();
    lib.close();
}

#[test]
fn unexpected_bytes_are_reported_and_never_patched() {
    let _s = serial();
    let path = build_so("gcc", &["-O2", "-fPIC", "-shared"], &["bad.c"], "ltbad");
    let lib = Lib::open(&path);
    let (mut table, report) = Table::discover().unwrap();
    let bad = lib.sym("bad_entry");
    let good = lib.sym("good_entry");
    let mine: Vec<_> = report
        .rejected
        .iter()
        .filter(|r| r.object == path.to_str().unwrap())
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    let r = mine
        .iter()
        .find(|r| r.addr == bad)
        .expect("bad_entry refused");
    assert_eq!(r.reason, RejectReason::UnexpectedBytes);
    assert_eq!(r.symbol.as_deref(), Some("bad_entry"));
    assert_eq!(r.found, Some([0x55, 0x48, 0x89, 0xe5, 0x5d]));
    let text = r.to_string();
    assert!(
        text.contains(&format!("{bad:#x}")) && text.contains("55 48 89 e5 5d"),
        "{text}"
    );
    let call = mine.iter().find(|r| r.addr != bad).unwrap();
    assert_eq!(call.symbol.as_deref(), Some("call_entry"));
    assert_eq!(call.found.unwrap()[0], 0xe8);
    assert!(table.rejected().any(|r| r.addr == bad));

    // Not in the table: cannot be patched, bytes untouched.
    assert!(table.find(bad).is_none());
    assert!(matches!(
        table.apply(&[(bad, Insn::Nop)]),
        Err(Error::NoSuchSite { .. })
    ));
    assert_eq!(bytes(bad), [0x55, 0x48, 0x89, 0xe5, 0x5d]);
    // Its well-formed neighbour is accepted and live.
    let g = site_in(&table, "good_entry", &path);
    assert_eq!(table.record(g).ip(), good);
    assert_eq!(table.record(g).state(), SiteState::Live(Insn::Nop));
    drop(table);
    lib.close();
}

#[test]
fn dlclose_with_an_enabled_site_is_deferred_by_the_pin() {
    let _s = serial();
    let path = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltclose");
    let lib = Lib::open(&path);
    let mut table = Table::new();
    table.rescan().unwrap();
    let add = lib.sym("lt_add");
    let obj = table.record(site_in(&table, "lt_add", &path)).object();
    table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap();
    let tramp = lib.sym("lt_tramp");
    table.apply(&[(add, Insn::Call(tramp))]).unwrap();
    assert!(table.object(obj).unwrap().is_pinned());
    let f = Funcs::of(&lib);

    // The program closes its handle: the pin keeps the code mapped and the
    // record valid.
    lib.close();
    assert!(is_loaded(&path) && is_mapped(&path));
    let scan = table.on_dlclose().unwrap();
    assert_eq!(scan.removed_objects, 0);
    assert!(table.find(add).is_some());
    let c0 = f.hits();
    assert_eq!(f.add(1, 2), 3, "still callable: the site calls mapped code");
    assert_eq!(f.hits(), c0 + 1);

    // Disabling the last site releases the pin: now it really unloads.
    table.apply(&[(add, Insn::Nop)]).unwrap();
    assert!(!is_loaded(&path) && !is_mapped(&path));
    let scan = table.on_dlclose().unwrap();
    assert_eq!(scan.removed_objects, 1);
    assert!(table.find(add).is_none());
    assert!(table.object(obj).is_none());
    assert!(table.objects().iter().all(|o| o.path() != path.to_str()));
    assert!(matches!(
        table.apply(&[(add, Insn::Nop)]),
        Err(Error::NoSuchSite { .. })
    ));
}

#[test]
fn enabling_a_site_of_an_unloaded_library_fails_cleanly() {
    let _s = serial();
    let path = build_so("g++", PATCH, &["shapes.cc"], "ltgone");
    let lib = Lib::open(&path);
    let (mut table, _) = Table::discover().unwrap();
    let i = site_in(&table, "shapes_area", &path);
    let ip = table.record(i).ip();
    let conv = table.convert(None, ConvertPolicy::StopTheWorld).unwrap();
    assert!(conv.failed.is_empty(), "{conv}");
    lib.close();
    assert!(!is_mapped(&path));
    // No rescan yet: the record is stale, and the pin refuses it.
    match table.apply(&[(ip, Insn::Jmp(ip + 100))]) {
        Err(Error::Pin { object, .. }) => assert!(object.ends_with("libltgone.so")),
        other => panic!("{other:?}"),
    }
    table.rescan().unwrap();
    assert!(table.find(ip).is_none());
}

#[test]
fn on_dlopen_converts_the_just_loaded_library_and_its_new_dependencies() {
    let _s = serial();
    let dep = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltdep");
    let top = build_so(
        "gcc",
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-fpatchable-function-entry=5",
            "-Wl,--no-as-needed",
            &format!("-L{}", dep.parent().unwrap().display()),
            "-lltdep",
            &format!("-Wl,-rpath,{}", dep.parent().unwrap().display()),
        ],
        &["bad.c"],
        "lttop",
    );
    let mut table = Table::new();
    table.rescan().unwrap();
    let before = table.len();
    let lib = Lib::open(&top);
    // SAFETY: this test serialises its dlopen calls and the libraries start
    // no threads: nothing else runs their code.
    let (scan, conv) = table.on_dlopen(lib.handle).unwrap();
    assert_eq!(
        scan.added_objects.len(),
        2,
        "lttop and its dependency ltdep"
    );
    assert!(table.len() > before);
    assert!(conv.converted >= 5 && conv.failed.is_empty(), "{conv}");
    let i = site_in(&table, "lt_add", &dep);
    assert_eq!(table.record(i).state(), SiteState::Live(Insn::Nop));
    assert_eq!(bytes(table.record(i).ip()), NOP5);
    let g = site_in(&table, "good_entry", &top);
    assert_eq!(table.record(g).state(), SiteState::Live(Insn::Nop));
    // Idempotent: nothing new.
    let again = table.rescan().unwrap();
    assert!(again.added_objects.is_empty() && again.added_sites == 0 && again.removed_objects == 0);
    let n = table.len();
    // SAFETY: as above.
    let (scan, conv) = table.on_dlopen(lib.handle).unwrap();
    assert!(scan.added_objects.is_empty() && conv.converted == 0);
    assert_eq!(table.len(), n);
    lib.close();
    let scan = table.on_dlclose().unwrap();
    assert_eq!(scan.removed_objects, 2);
    assert!(table.objects().iter().all(|o| o.path() != dep.to_str()));
}

// A Rust function with a 5-byte NOP at its entry, as `#[traced]` makes them.
std::arch::global_asm!(
    ".pushsection .text.lt_rust_site,\"ax\",@progbits",
    ".globl lt_rust_site",
    ".type lt_rust_site,@function",
    "lt_rust_site:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov eax, 7",
    "ret",
    ".size lt_rust_site, .-lt_rust_site",
    ".globl lt_rust_nosite",
    ".type lt_rust_nosite,@function",
    "lt_rust_nosite:",
    "mov eax, 8",
    "ret",
    ".size lt_rust_nosite, .-lt_rust_nosite",
    ".popsection",
);
extern "C" {
    fn lt_rust_site() -> i32;
    fn lt_rust_nosite() -> i32;
}

#[test]
fn macro_sites_are_inserted_listed_and_checked() {
    let _s = serial();
    let (mut table, _) = Table::discover().unwrap();
    let site = lt_rust_site as *const () as usize;
    let nosite = lt_rust_nosite as *const () as usize;
    let rep = table
        .insert_external(&[
            ExternalSite {
                addr: site,
                name: "mycrate::parser::parse_expr",
                file: "src/parser.rs",
                line: 42,
            },
            ExternalSite {
                addr: nosite,
                name: "mycrate::nosite",
                file: "src/x.rs",
                line: 1,
            },
        ])
        .unwrap();
    assert_eq!(rep.inserted, 1);
    assert_eq!(rep.rejected.len(), 1);
    assert_eq!(rep.rejected[0].addr, nosite);
    assert_eq!(rep.rejected[0].reason, RejectReason::UnexpectedBytes);
    let i = only(&table, "mycrate::parser::parse_expr");
    assert_eq!(table.glob("mycrate::parser::*"), vec![i]);
    let info = table.info(i);
    assert_eq!(
        (info.addr, info.file, info.line),
        (site, Some("src/parser.rs"), Some(42))
    );
    assert_eq!(info.record.origin(), Origin::Macro);
    assert!(table.object(info.record.object()).unwrap().is_main());
    let mut listing = Vec::new();
    table.write_available(&mut listing).unwrap();
    let listing = String::from_utf8(listing).unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains("mycrate::parser::parse_expr"))
        .unwrap();
    assert!(
        line.contains(&format!("{site:#x}"))
            && line.contains(" nop")
            && line.ends_with("src/parser.rs:42"),
        "{line}"
    );
    // Inserting again is idempotent.
    let rep = table
        .insert_external(&[ExternalSite {
            addr: site,
            name: "mycrate::parser::parse_expr",
            file: "src/parser.rs",
            line: 42,
        }])
        .unwrap();
    assert_eq!((rep.inserted, rep.already_known), (0, 1));
    // SAFETY: the asm function above returns 7 and clobbers only eax.
    let rust_site = || unsafe { lt_rust_site() };
    // And the site is patchable (a jmp to the function's second instruction
    // behaves like the NOP).
    table.apply(&[(site, Insn::Jmp(site + 5))]).unwrap();
    assert_eq!(rust_site(), 7);
    let line = table.info(i).to_string();
    assert!(line.contains(&format!("jmp {:#x}", site + 5)), "{line}");
    table.apply(&[(site, Insn::Nop)]).unwrap();
    assert_eq!(rust_site(), 7);
}

#[test]
fn stop_the_world_refuses_when_a_thread_does_not_stop() {
    let _s = serial();
    let path = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltblock");
    let lib = Lib::open(&path);
    let (mut table, _) = Table::discover().unwrap();
    let obj = table.record(site_in(&table, "lt_add", &path)).object();
    let ready = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let t = {
        let (ready, done) = (ready.clone(), done.clone());
        std::thread::spawn(move || {
            // SAFETY: blocks every signal on this thread only, with the
            // raw system call: the C library's functions (livetrace's
            // interposers) would keep the world signal deliverable.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_BLOCK,
                    &all,
                    std::ptr::null_mut::<libc::sigset_t>(),
                    8usize,
                );
            }
            ready.store(true, SeqCst);
            while !done.load(SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Leaves with the stop signal pending: the handler stays
            // installed, so it is a harmless stale delivery once unblocked.
        })
    };
    while !ready.load(SeqCst) {
        std::thread::yield_now();
    }
    let err = table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap_err();
    match &err {
        Error::StopTheWorld(StwError::NotStopped { tid, .. }) => assert!(*tid > 0),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("did not stop"), "{err}");
    assert_eq!(bytes(lib.sym("lt_add")), NOP1X5, "nothing written");
    assert_eq!(
        table.record(site_in(&table, "lt_add", &path)).state(),
        SiteState::Unconverted
    );
    done.store(true, SeqCst);
    t.join().unwrap();
    // Everyone answers now.
    table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap();
    assert_eq!(bytes(lib.sym("lt_add")), NOP5);
    lib.close();
}

#[test]
fn stop_the_world_is_not_fooled_by_stray_stack_words() {
    // Words that happen to point inside a sled are not contexts: only a
    // signal frame's saved RIP (or the RIP itself) makes a thread busy.
    let _s = serial();
    let path = build_so("gcc", PATCH, &["funcs.c", "tramp.c"], "ltstack");
    let lib = Lib::open(&path);
    let (mut table, _) = Table::discover().unwrap();
    let mul = lib.sym("lt_mul");
    let obj = table.record(site_in(&table, "lt_mul", &path)).object();
    let ready = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let t = {
        let (ready, done) = (ready.clone(), done.clone());
        std::thread::spawn(move || {
            let stray = [mul + 2; 4];
            std::hint::black_box(&stray);
            ready.store(true, SeqCst);
            while !done.load(SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::hint::black_box(&stray);
        })
    };
    while !ready.load(SeqCst) {
        std::thread::yield_now();
    }
    let conv = table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap();
    assert_eq!(conv.stw.as_ref().unwrap().attempts, 1, "{conv}");
    assert_eq!(bytes(mul), NOP5);
    done.store(true, SeqCst);
    t.join().unwrap();
    lib.close();
}

// A sled followed by a spin loop: a thread can be parked *inside* the sled
// by redirecting its saved RIP, and resumes sanely from there (the rest of
// the sled, then back into the loop).
static LT_RIP_STOP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
std::arch::global_asm!(
    ".pushsection .text.lt_rip_sled,\"ax\",@progbits",
    ".globl lt_rip_sled",
    ".type lt_rip_sled,@function",
    "lt_rip_sled:",
    ".byte 0x90, 0x90, 0x90, 0x90, 0x90",
    "jmp 2f",
    ".globl lt_rip_spin",
    "lt_rip_spin:",
    "2:",
    "cmp byte ptr [rip + {stop}], 0",
    "je 2b",
    "ret",
    ".size lt_rip_sled, .-lt_rip_sled",
    ".popsection",
    stop = sym LT_RIP_STOP,
);
extern "C" {
    fn lt_rip_sled();
    fn lt_rip_spin();
}

static ARMED: AtomicBool = AtomicBool::new(false);

/// SIGUSR2 handler for the parked thread: points the interrupted context
/// two bytes into the sled (as if the signal had arrived there), then
/// stays in the handler until a stop of the world has come and gone, so
/// that round finds the sled address in the signal frame's saved context,
/// not in the thread's RIP.
extern "C" fn park_in_sled(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler context.
    unsafe {
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] =
            (lt_rip_sled as *const () as usize + 2) as i64;
    }
    let stops = livetrace_poke::world::world_stats().stops;
    ARMED.store(true, SeqCst);
    while livetrace_poke::world::world_stats().stops == stops {
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
}

#[test]
fn stop_the_world_waits_while_a_signal_frame_holds_a_rip_inside_a_sled() {
    let _s = serial();
    let sled = lt_rip_sled as *const () as usize;
    let (mut table, _) = Table::discover().unwrap();
    let rep = table
        .insert_external(&[ExternalSite {
            addr: sled,
            name: "lt_rip_sled",
            file: "",
            line: 0,
        }])
        .unwrap();
    assert_eq!(rep.inserted, 1);
    let i = only(&table, "lt_rip_sled");
    assert_eq!(table.record(i).state(), SiteState::Unconverted);
    let obj = table.record(i).object();

    // SAFETY: installing a test-only SIGUSR2 handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = park_in_sled as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // SAFETY: pthread_self of this thread.
        tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
        // SAFETY: asm loop until LT_RIP_STOP, then returns.
        unsafe { lt_rip_spin() };
    });
    let thread = rx.recv().unwrap() as libc::pthread_t;
    // SAFETY: the thread is alive (it spins until told to stop).
    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
    while !ARMED.load(SeqCst) {
        std::thread::yield_now();
    }
    let conv = table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap();
    let stw = conv.stw.as_ref().unwrap();
    assert!(stw.attempts >= 2, "{conv}");
    let b = stw.busy[0];
    assert_eq!((b.addr, b.in_rip), (sled + 2, false), "{b:?}");
    assert_eq!(bytes(sled), NOP5);
    assert_eq!(table.record(i).state(), SiteState::Live(Insn::Nop));
    LT_RIP_STOP.store(1, SeqCst);
    t.join().unwrap();
}

static ARMED_RIP: AtomicBool = AtomicBool::new(false);
static LT_RIP_STOP2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
std::arch::global_asm!(
    ".pushsection .text.lt_rip_sled2,\"ax\",@progbits",
    ".globl lt_rip_sled2",
    ".type lt_rip_sled2,@function",
    "lt_rip_sled2:",
    ".byte 0x90, 0x90, 0x90, 0x90, 0x90",
    "jmp 2f",
    ".globl lt_rip_spin2",
    "lt_rip_spin2:",
    "2:",
    "cmp byte ptr [rip + {stop}], 0",
    "je 2b",
    "ret",
    ".size lt_rip_sled2, .-lt_rip_sled2",
    ".popsection",
    stop = sym LT_RIP_STOP2,
);
extern "C" {
    fn lt_rip_sled2();
    fn lt_rip_spin2();
}

/// SIGUSR1 handler for the parked thread: points the interrupted context
/// two bytes into the sled, blocks the world signal for the rest of the
/// handler (with the raw system call: the C library's function would keep
/// it deliverable) and returns once a stop is pending, so that the stop
/// handler runs with the thread's RIP exactly there.
extern "C" fn park_rip_in_sled(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler context; sigset operations on locals; the
    // raw rt_sigprocmask changes this handler's mask only (sigreturn puts
    // back the interrupted one).
    unsafe {
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] =
            (lt_rip_sled2 as *const () as usize + 2) as i64;
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigaddset(&mut set, livetrace_sites::stop_signal());
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        );
    }
    ARMED_RIP.store(true, SeqCst);
    loop {
        // SAFETY: sigpending into a local set.
        let pending = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut set);
            libc::sigismember(&set, livetrace_sites::stop_signal()) == 1
        };
        if pending {
            break;
        }
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
}

#[test]
fn stop_the_world_waits_while_a_thread_is_inside_a_sled() {
    let _s = serial();
    let sled = lt_rip_sled2 as *const () as usize;
    let (mut table, _) = Table::discover().unwrap();
    let _ = table.insert_external(&[ExternalSite {
        addr: sled,
        name: "lt_rip_sled2",
        file: "",
        line: 0,
    }]);
    let i = only(&table, "lt_rip_sled2");
    assert_eq!(table.record(i).state(), SiteState::Unconverted);
    let obj = table.record(i).object();
    // SAFETY: installing a test-only SIGUSR1 handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = park_rip_in_sled as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // SAFETY: pthread_self of this thread.
        tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
        // SAFETY: asm loop until LT_RIP_STOP, then returns.
        unsafe { lt_rip_spin2() };
    });
    let thread = rx.recv().unwrap() as libc::pthread_t;
    // SAFETY: the thread is alive (it spins until told to stop).
    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
    while !ARMED_RIP.load(SeqCst) {
        std::thread::yield_now();
    }
    let conv = table
        .convert(Some(&[obj]), ConvertPolicy::StopTheWorld)
        .unwrap();
    let stw = conv.stw.as_ref().unwrap();
    assert!(stw.attempts >= 2, "{conv}");
    let b = stw.busy[0];
    assert_eq!((b.addr, b.in_rip), (sled + 2, true), "{b:?}");
    assert_eq!(bytes(sled), NOP5);
    LT_RIP_STOP2.store(1, SeqCst);
    t.join().unwrap();
}
