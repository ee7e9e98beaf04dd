//! The tracing core end to end on real functions. Tests in this file share
//! one process (one core, one set of fixture functions), so each uses its
//! own fixture range.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Once};

use livetrace_fixtures as fx;
use livetrace_ftrace::{
    enabled_functions, insert_external, livepatch, recursion_dropped, register, set_filter,
    unregister, Error, Ops, Pattern, Trampoline,
};
use livetrace_sites::ExternalSite;

std::arch::global_asm!(
    ".pushsection .text.lt_core_test,\"ax\",@progbits",
    ".p2align 4",
    ".globl lt_t_add",
    "lt_t_add: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + rsi]",
    "    ret",
    ".p2align 4",
    ".globl lt_t_fmul",
    "lt_t_fmul: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    mulsd xmm0, xmm1",
    "    ret",
    ".p2align 4",
    ".globl lt_t_sum8",
    "lt_t_sum8: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    mov rax, rdi",
    "    add rax, rsi",
    "    add rax, rdx",
    "    add rax, rcx",
    "    add rax, r8",
    "    add rax, r9",
    "    add rax, [rsp + 8]",
    "    add rax, [rsp + 16]",
    "    ret",
    ".p2align 4",
    ".globl lt_t_old",
    "lt_t_old: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + 1]",
    "    ret",
    ".p2align 4",
    ".globl lt_t_new",
    "lt_t_new: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + 1000]",
    "    ret",
    // For the live patch inside a callback: its own pair, and a function
    // whose callback calls the patched one.
    ".p2align 4",
    ".globl lt_t_pold",
    "lt_t_pold: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + 1]",
    "    ret",
    ".p2align 4",
    ".globl lt_t_pnew",
    "lt_t_pnew: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + 1000]",
    "    ret",
    ".p2align 4",
    ".globl lt_t_hook",
    "lt_t_hook: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    mov rax, rdi",
    "    ret",
    // Stores what it finds in every register a function can observe at
    // entry into lt_t_seen (9 general registers, then xmm0-7).
    ".p2align 4",
    ".globl lt_t_capture",
    "lt_t_capture: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    mov [rip + lt_t_seen + 0], rdi",
    "    mov [rip + lt_t_seen + 8], rsi",
    "    mov [rip + lt_t_seen + 16], rdx",
    "    mov [rip + lt_t_seen + 24], rcx",
    "    mov [rip + lt_t_seen + 32], r8",
    "    mov [rip + lt_t_seen + 40], r9",
    "    mov [rip + lt_t_seen + 48], rax",
    "    mov [rip + lt_t_seen + 56], r10",
    "    mov [rip + lt_t_seen + 64], r11",
    "    .irp n, 0, 1, 2, 3, 4, 5, 6, 7",
    "    movups [rip + lt_t_seen + 72 + 16 * \\n], xmm\\n",
    "    .endr",
    "    ret",
    // Loads those registers from the 200 bytes at rdi and calls lt_t_capture.
    ".p2align 4",
    ".globl lt_t_call_capture",
    "lt_t_call_capture:",
    "    push rbx",
    "    mov rbx, rdi",
    "    .irp n, 0, 1, 2, 3, 4, 5, 6, 7",
    "    movups xmm\\n, [rbx + 72 + 16 * \\n]",
    "    .endr",
    "    mov rsi, [rbx + 8]",
    "    mov rdx, [rbx + 16]",
    "    mov rcx, [rbx + 24]",
    "    mov r8, [rbx + 32]",
    "    mov r9, [rbx + 40]",
    "    mov rax, [rbx + 48]",
    "    mov r10, [rbx + 56]",
    "    mov r11, [rbx + 64]",
    "    mov rdi, [rbx]",
    "    call lt_t_capture",
    "    pop rbx",
    "    ret",
    // Two functions the table will know by one name (`t::dup`).
    ".p2align 4",
    ".globl lt_t_dup_a",
    "lt_t_dup_a: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + 1]",
    "    ret",
    ".p2align 4",
    ".globl lt_t_dup_b",
    "lt_t_dup_b: .byte 0x0f,0x1f,0x44,0x00,0x00",
    "    lea rax, [rdi + 2]",
    "    ret",
    ".popsection",
    ".pushsection .bss.lt_t_seen,\"aw\",@nobits",
    ".p2align 4",
    ".globl lt_t_seen",
    "lt_t_seen: .zero 200",
    ".popsection",
);

unsafe extern "C" {
    fn lt_t_add(a: u64, b: u64) -> u64;
    fn lt_t_fmul(a: f64, b: f64) -> f64;
    fn lt_t_sum8(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64;
    fn lt_t_old(x: u64) -> u64;
    fn lt_t_new(x: u64) -> u64;
    fn lt_t_pold(x: u64) -> u64;
    fn lt_t_pnew(x: u64) -> u64;
    fn lt_t_hook(x: u64) -> u64;
    fn lt_t_capture();
    fn lt_t_call_capture(values: *const [u8; 200]);
    static lt_t_seen: [u8; 200];
    fn lt_t_dup_a(x: u64) -> u64;
    fn lt_t_dup_b(x: u64) -> u64;
}

fn addr(f: *const ()) -> usize {
    f as usize
}

/// Puts the fixture functions (`fx::f00000`…) and this file's functions in
/// the record table, once.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let names: Vec<String> = (0..4000).map(|i| format!("fx::f{i:05}")).collect();
        let mut sites: Vec<ExternalSite<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| ExternalSite {
                addr: fx::site(i),
                name: n,
                file: "fixtures",
                line: i as u32,
            })
            .collect();
        let own = [
            (addr(lt_t_add as *const ()), "t::add"),
            (addr(lt_t_fmul as *const ()), "t::fmul"),
            (addr(lt_t_sum8 as *const ()), "t::sum8"),
            (addr(lt_t_old as *const ()), "t::old"),
            (addr(lt_t_new as *const ()), "t::new"),
            (addr(lt_t_capture as *const ()), "t::capture"),
            (addr(lt_t_pold as *const ()), "t::pold"),
            (addr(lt_t_pnew as *const ()), "t::pnew"),
            (addr(lt_t_hook as *const ()), "t::hook"),
            (addr(lt_t_dup_a as *const ()), "t::dup"),
            (addr(lt_t_dup_b as *const ()), "t::dup"),
        ];
        sites.extend(own.iter().map(|&(a, n)| ExternalSite {
            addr: a,
            name: n,
            file: file!(),
            line: 0,
        }));
        let report = insert_external(&sites).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    });
}

fn name(i: usize) -> String {
    format!("fx::f{i:05}")
}

/// An ops counting calls per function (by index) into a shared map.
fn counting(label: &str, filter: &[Pattern]) -> (Ops, Arc<std::sync::Mutex<HashMap<usize, u64>>>) {
    let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let s = seen.clone();
    let mut b = Ops::builder(label);
    for p in filter {
        b = b.filter(p.clone());
    }
    let ops = b.build(move |call| {
        let i = fx::index_of(call.ip()).unwrap_or(usize::MAX);
        *s.lock().unwrap().entry(i).or_insert(0) += 1;
    });
    (ops, seen)
}

#[test]
fn one_ops_gets_a_dedicated_trampoline_and_exact_calls() {
    setup();
    let (ops, seen) = counting("one", &[Pattern::parse("fx::f0010?")]); // 100..=109
    register(&ops).unwrap();
    for i in 95..115 {
        assert_eq!(fx::call(i), fx::value_of(i));
    }
    let got = seen.lock().unwrap().clone();
    let want: HashMap<usize, u64> = (100..110).map(|i| (i, 1)).collect();
    assert_eq!(got, want);
    let en = enabled_functions().unwrap();
    let mine: Vec<_> = en.iter().filter(|e| e.ops == ["one"]).collect();
    assert_eq!(mine.len(), 10);
    assert!(mine
        .iter()
        .all(|e| matches!(&e.trampoline, Trampoline::Dedicated { ops, .. } if ops == "one")));
    unregister(&ops).unwrap();
    fx::call(100);
    assert_eq!(seen.lock().unwrap().get(&100), Some(&1));
    assert!(enabled_functions()
        .unwrap()
        .iter()
        .all(|e| e.ops != ["one"]));
}

#[test]
fn overlapping_ops_each_see_exactly_their_functions() {
    setup();
    let globs = |r: std::ops::Range<usize>| -> Vec<Pattern> {
        r.map(|d| Pattern::parse(&format!("fx::f002{d}?")))
            .collect()
    };
    let (a, seen_a) = counting("a", &globs(0..5)); // 200..=249
    let (b, seen_b) = counting("b", &globs(3..8)); // 230..=279
    let (c, seen_c) = counting(
        "c",
        &[Pattern::Name(name(240)), Pattern::Addr(fx::site(290))],
    );
    register(&a).unwrap();
    register(&b).unwrap();
    register(&c).unwrap();
    for i in 190..300 {
        assert_eq!(fx::call(i), fx::value_of(i));
    }
    let ones = |r: std::ops::Range<usize>| -> HashMap<usize, u64> { r.map(|i| (i, 1)).collect() };
    assert_eq!(*seen_a.lock().unwrap(), ones(200..250));
    assert_eq!(*seen_b.lock().unwrap(), ones(230..280));
    assert_eq!(
        *seen_c.lock().unwrap(),
        [(240, 1), (290, 1)].into_iter().collect()
    );
    let en = enabled_functions().unwrap();
    let of = |i: usize| en.iter().find(|e| e.ip == fx::site(i)).unwrap().clone();
    assert!(matches!(of(210).trampoline, Trampoline::Dedicated { .. }));
    assert!(matches!(of(235).trampoline, Trampoline::List(_)));
    assert_eq!(of(240).ops, ["a", "b", "c"]);
    // Taking b away moves 230..249 back to a's dedicated trampoline.
    unregister(&b).unwrap();
    let en = enabled_functions().unwrap();
    let t = &en
        .iter()
        .find(|e| e.ip == fx::site(235))
        .unwrap()
        .trampoline;
    assert!(matches!(t, Trampoline::Dedicated { ops, .. } if ops == "a"));
    assert!(en.iter().all(|e| e.ip != fx::site(260)));
    unregister(&a).unwrap();
    unregister(&c).unwrap();
}

#[test]
fn an_address_picks_one_of_two_same_named_functions() {
    setup();
    let (a, b) = (addr(lt_t_dup_a as *const ()), addr(lt_t_dup_b as *const ()));
    let calls = |filter: &str| -> Result<Vec<usize>, Error> {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let ops = Ops::builder("dup")
            .filter(Pattern::parse(filter))
            .build(move |call| s.lock().unwrap().push(call.ip()));
        register(&ops)?;
        // SAFETY: the asm functions follow the C ABI declared above.
        let got = unsafe { (lt_t_dup_a(10), lt_t_dup_b(10)) };
        unregister(&ops).unwrap();
        assert_eq!(got, (11, 12));
        let mut v = seen.lock().unwrap().clone();
        v.sort_unstable();
        Ok(v)
    };
    // The plain name keeps naming both.
    assert_eq!(calls("t::dup").unwrap(), [a, b]);
    assert_eq!(calls(&format!("t::dup@{b:#x}")).unwrap(), [b]);
    assert_eq!(calls(&format!("t::dup@{a:#x}")).unwrap(), [a]);
    // Another function's address, or a hash these C-named functions do
    // not have, names nothing: refused like any pattern that matches
    // nothing.
    let add = addr(lt_t_add as *const ());
    for bad in [
        format!("t::dup@{add:#x}"),
        "t::dup[h0123456789abcdef]".to_string(),
    ] {
        let e = calls(&bad).unwrap_err();
        assert!(
            matches!(&e, Error::NoMatch { pattern, .. } if *pattern == bad),
            "{bad}: {e}"
        );
    }
    assert!(enabled_functions()
        .unwrap()
        .iter()
        .all(|e| !e.ops.iter().any(|o| o == "dup")));
}

#[test]
fn bad_filters_are_refused_and_change_nothing() {
    setup();
    let (ops, _) = counting(
        "bad",
        &[Pattern::parse("fx::f0030*"), Pattern::parse("no::such::*")],
    );
    let e = register(&ops).unwrap_err();
    assert!(
        matches!(&e, Error::NoMatch { pattern, .. } if pattern == "no::such::*"),
        "{e}"
    );
    assert!(e.to_string().contains("matches no traceable function"));
    assert!(enabled_functions()
        .unwrap()
        .iter()
        .all(|e| e.ops != ["bad"]));
    let (ops, seen) = counting("nt", &[Pattern::parse("fx::f0031?")]);
    set_filter(
        &ops,
        &[Pattern::parse("fx::f0031?")],
        &[Pattern::Name(name(315))],
    )
    .unwrap();
    register(&ops).unwrap();
    for i in 310..320 {
        fx::call(i);
    }
    assert_eq!(seen.lock().unwrap().len(), 9);
    assert!(!seen.lock().unwrap().contains_key(&315));
    unregister(&ops).unwrap();
    assert!(matches!(unregister(&ops), Err(Error::NotRegistered(_))));
}

thread_local! {
    static CHECKING: RefCell<Option<HashMap<usize, u64>>> = const { RefCell::new(None) };
}

#[test]
fn changes_in_loops_under_load_settle_exactly() {
    setup();
    let range = 1000..1400;
    // The callback counts only calls made by the checking thread, so the
    // check is exact while workers hammer the same functions.
    let make = |label: &str| {
        Ops::builder(label)
            .filter(Pattern::Addr(fx::site(1000)))
            .build(|call| {
                CHECKING.with(|c| {
                    if let Some(m) = c.borrow_mut().as_mut() {
                        *m.entry(fx::index_of(call.ip()).unwrap()).or_insert(0) += 1;
                    }
                })
            })
    };
    let (x, y) = (make("x"), make("y"));
    let stop = AtomicBool::new(false);
    let wrong = AtomicU64::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    for i in range.clone() {
                        if fx::call(i) != fx::value_of(i) {
                            wrong.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
        }
        // Each ops' current range of functions, or None when unregistered.
        type Span = Option<(usize, usize)>;
        let mut state: (Span, Span) = (None, None);
        let mut rng = 12345u64;
        for round in 0..150 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let lo = 1000 + (rng % 300) as usize;
            let hi = lo + 1 + (rng >> 20) as usize % 100;
            let filt: Vec<Pattern> = (lo..hi).map(|i| Pattern::Addr(fx::site(i))).collect();
            let (ops, slot) = if round % 2 == 0 {
                (&x, &mut state.0)
            } else {
                (&y, &mut state.1)
            };
            match (round / 2) % 3 {
                0 if slot.is_none() => {
                    set_filter(ops, &filt, &[]).unwrap();
                    register(ops).unwrap();
                    *slot = Some((lo, hi));
                }
                1 if slot.is_some() => {
                    set_filter(ops, &filt, &[]).unwrap();
                    *slot = Some((lo, hi));
                }
                _ if slot.is_some() => {
                    unregister(ops).unwrap();
                    *slot = None;
                }
                _ => {}
            }
            // Settled: one call per function from this thread must reach
            // exactly the ops attached to it.
            CHECKING.with(|c| *c.borrow_mut() = Some(HashMap::new()));
            for i in range.clone() {
                assert_eq!(fx::call(i), fx::value_of(i));
            }
            let got = CHECKING.with(|c| c.borrow_mut().take().unwrap());
            for i in range.clone() {
                let want = [state.0, state.1]
                    .iter()
                    .flatten()
                    .filter(|(lo, hi)| (*lo..*hi).contains(&i))
                    .count();
                assert_eq!(
                    got.get(&i).copied().unwrap_or(0),
                    want as u64,
                    "round {round}, function {i}"
                );
            }
        }
        stop.store(true, Relaxed);
    });
    let _ = unregister(&x);
    let _ = unregister(&y);
    assert_eq!(wrong.load(Relaxed), 0);
}

#[test]
fn a_regs_callback_reads_and_changes_arguments() {
    setup();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let ops = Ops::builder("args")
        .filter(Pattern::parse("t::add"))
        .filter(Pattern::parse("t::fmul"))
        .filter(Pattern::parse("t::sum8"))
        .regs()
        .build(move |call| {
            let ip = call.ip();
            let r = call.regs().expect("regs were asked for");
            s.lock().unwrap().push((ip, r.rdi, r.rsi, r.xmm_f64(0)));
            if ip == lt_t_add as *const () as usize {
                r.rsi += 100; // add(a, b) becomes add(a, b + 100)
            } else if ip == lt_t_fmul as *const () as usize {
                r.set_xmm_f64(1, 10.0);
            } else {
                r.r9 = 0;
            }
        });
    register(&ops).unwrap();
    let en = enabled_functions().unwrap();
    assert!(en
        .iter()
        .filter(|e| e.ops == ["args"])
        .all(|e| matches!(e.trampoline, Trampoline::Regs(_))));
    // SAFETY: the asm functions follow the C ABI declared above.
    unsafe {
        assert_eq!(lt_t_add(1, 2), 103);
        assert_eq!(lt_t_fmul(1.5, 2.0), 15.0);
        assert_eq!(lt_t_sum8(1, 2, 3, 4, 5, 6, 7, 8), 36 - 6);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        (seen[0].0, seen[0].1, seen[0].2),
        (lt_t_add as *const () as usize, 1, 2)
    );
    assert_eq!(seen[1].3, 1.5);
    unregister(&ops).unwrap();
    // SAFETY: as above.
    unsafe { assert_eq!(lt_t_add(1, 2), 3) };
}

#[test]
fn live_patch_under_load_and_a_second_ipmodify_is_refused() {
    setup();
    let old = lt_t_old as unsafe extern "C" fn(u64) -> u64;
    let new = lt_t_new as unsafe extern "C" fn(u64) -> u64;
    let stop = AtomicBool::new(false);
    let phase = AtomicU64::new(0); // 0 before, 1 switching, 2 patched, 3 reverting, 4 reverted
    let bad = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    let p0 = phase.load(SeqCst);
                    // SAFETY: C ABI asm function.
                    let r = unsafe { lt_t_old(5) };
                    let p1 = phase.load(SeqCst);
                    let ok = match (p0, p1) {
                        (0, 0) | (4, 4) => r == 6,
                        (2, 2) => r == 1005,
                        _ => r == 6 || r == 1005,
                    };
                    if !ok {
                        bad.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        phase.store(1, SeqCst);
        let patch = livepatch(old, new).unwrap();
        phase.store(2, SeqCst);
        // SAFETY: C ABI asm function.
        assert_eq!(unsafe { lt_t_old(5) }, 1005);
        // A second IPMODIFY ops on the same function names the owner.
        let e = livepatch(old, new).err().expect("second ipmodify refused");
        let msg = e.to_string();
        assert!(
            msg.contains("t::old") && msg.contains("livepatch:t::old"),
            "{msg}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        phase.store(3, SeqCst);
        patch.revert().unwrap();
        phase.store(4, SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.store(true, Relaxed);
    });
    assert_eq!(bad.load(Relaxed), 0);
    // SAFETY: C ABI asm function.
    assert_eq!(unsafe { lt_t_old(5) }, 6);
}

#[test]
fn a_recursive_callback_terminates_and_counts_the_drop() {
    setup();
    let depth = Arc::new(AtomicU64::new(0));
    let d = depth.clone();
    let ops = Ops::builder("recursive")
        .filter(Pattern::parse("fx::f0050?"))
        .build(move |call| {
            d.fetch_add(1, Relaxed);
            // Calls a traced function of the same ops from the callback.
            let i = fx::index_of(call.ip()).unwrap();
            assert_eq!(
                fx::call(500 + (i + 1) % 10),
                fx::value_of(500 + (i + 1) % 10)
            );
        });
    register(&ops).unwrap();
    let before = recursion_dropped();
    assert_eq!(fx::call(503), fx::value_of(503));
    assert_eq!(
        depth.load(Relaxed),
        1,
        "the nested call did not reach the callback"
    );
    assert_eq!(recursion_dropped(), before + 1);
    unregister(&ops).unwrap();
}

#[test]
fn unregister_waits_for_a_thread_inside_the_callback() {
    setup();
    let inside = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let (i2, d2, guard) = (inside.clone(), done.clone(), OnDrop(dropped.clone()));
    let ops = Ops::builder("slow")
        .filter(Pattern::Name(name(600)))
        .build(move |_| {
            let _keep = &guard;
            i2.store(true, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(300));
            d2.store(true, SeqCst);
        });
    register(&ops).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| fx::call(600));
        while !inside.load(SeqCst) {
            std::thread::yield_now();
        }
        unregister(&ops).unwrap();
        assert!(
            done.load(SeqCst),
            "unregister returned while a thread was still in the callback"
        );
    });
    assert!(!dropped.load(SeqCst));
    drop(ops);
    assert!(
        dropped.load(SeqCst),
        "the last handle drops the callback and what it owns"
    );
}

/// Writes garbage into every register a C function may clobber, as a
/// callback that does real work would.
fn clobber_everything() {
    // SAFETY: only caller-saved registers are written, and all are declared
    // clobbered (clobber_abi), so the compiler keeps nothing in them.
    unsafe {
        std::arch::asm!(
            "mov rax, -1",
            "mov rcx, -1",
            "mov rdx, -1",
            "mov rsi, -1",
            "mov rdi, -1",
            "mov r8, -1",
            "mov r9, -1",
            "mov r10, -1",
            "mov r11, -1",
            "pcmpeqd xmm0, xmm0",
            "pcmpeqd xmm1, xmm1",
            "pcmpeqd xmm2, xmm2",
            "pcmpeqd xmm3, xmm3",
            "pcmpeqd xmm4, xmm4",
            "pcmpeqd xmm5, xmm5",
            "pcmpeqd xmm6, xmm6",
            "pcmpeqd xmm7, xmm7",
            clobber_abi("C"),
        );
    }
}

#[test]
fn every_trampoline_preserves_what_the_function_sees_at_entry() {
    setup();
    let values: [u8; 200] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let run = || {
        // SAFETY: lt_t_call_capture reads 200 bytes from the pointer, and
        // lt_t_seen is written only by lt_t_capture, on this thread.
        unsafe {
            lt_t_call_capture(&values);
            std::ptr::read_volatile(&raw const lt_t_seen)
        }
    };
    assert_eq!(run(), values, "untraced");
    let hits = Arc::new(AtomicU64::new(0));
    let build = |label: &str, regs: bool| {
        let h = hits.clone();
        let mut b = Ops::builder(label).filter(Pattern::parse("t::capture"));
        if regs {
            b = b.regs();
        }
        b.build(move |_| {
            h.fetch_add(1, Relaxed);
            clobber_everything();
        })
    };
    let (a, b, r) = (
        build("keep-a", false),
        build("keep-b", false),
        build("keep-r", true),
    );
    let kind = || {
        enabled_functions()
            .unwrap()
            .into_iter()
            .find(|e| e.name == "t::capture")
            .map(|e| e.trampoline)
    };
    register(&a).unwrap();
    assert!(matches!(kind(), Some(Trampoline::Dedicated { .. })));
    assert_eq!(run(), values, "through the dedicated trampoline");
    register(&b).unwrap();
    assert!(matches!(kind(), Some(Trampoline::List(_))));
    assert_eq!(run(), values, "through the list caller");
    register(&r).unwrap();
    assert!(matches!(kind(), Some(Trampoline::Regs(_))));
    assert_eq!(run(), values, "through the regs caller");
    assert_eq!(hits.load(Relaxed), 1 + 2 + 3);
    for o in [&a, &b, &r] {
        unregister(o).unwrap();
    }
}

/// A live patch holds for every caller: also for calls made from another
/// ops' callback, where the recursion guard suppresses callbacks (but not
/// redirection) — whether the patched function has the patch alone, or
/// shares it with a regs ops (the regs caller either way).
#[test]
fn a_live_patch_holds_inside_another_ops_callback() {
    setup();
    let old = lt_t_pold as unsafe extern "C" fn(u64) -> u64;
    let new = lt_t_pnew as unsafe extern "C" fn(u64) -> u64;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    // A plain ops on t::hook whose callback calls the patched function.
    let caller = Ops::builder("calls-old")
        .filter(Pattern::parse("t::hook"))
        .build(move |_| {
            // SAFETY: C ABI asm function.
            s.lock().unwrap().push(unsafe { lt_t_pold(1) });
        });
    register(&caller).unwrap();
    let patch = livepatch(old, new).unwrap();
    // SAFETY: C ABI asm functions.
    unsafe {
        assert_eq!(lt_t_pold(1), 1001, "a direct call is patched");
        assert_eq!(lt_t_hook(3), 3);
    }
    let tracer = Ops::builder("shares-old")
        .filter(Pattern::parse("t::pold"))
        .regs()
        .build(|_| {});
    register(&tracer).unwrap();
    // SAFETY: as above.
    unsafe {
        assert_eq!(lt_t_pold(1), 1001, "shared with a regs ops");
        assert_eq!(lt_t_hook(3), 3);
    }
    unregister(&tracer).unwrap();
    let dropped = recursion_dropped();
    // SAFETY: as above.
    unsafe { assert_eq!(lt_t_hook(3), 3) };
    assert_eq!(
        recursion_dropped(),
        dropped + 1,
        "the patched call from the callback ran no callback"
    );
    patch.revert().unwrap();
    // SAFETY: as above.
    unsafe { assert_eq!(lt_t_hook(3), 3) };
    unregister(&caller).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [1001, 1001, 1001, 2],
        "what the callback's calls of t::pold returned"
    );
}
