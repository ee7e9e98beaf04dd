//! The hand-written forms in `livetrace_traced_tests::forms`: values,
//! records (paths, files, lines), function pointers, `dyn` calls, panics
//! unwinding through a site, and what the stack holds when a site runs.
//!
//! One test per binary: sites and the counting stub are process-wide.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use livetrace::{macro_sites, MacroSite};
use livetrace_fixtures::{count_any_addr, count_any_hits, reset_count_any};
use livetrace_poke::{read_site, Batch, Insn, NOP5};
use livetrace_traced_tests::forms::*;
use livetrace_traced_tests::Big;

const FORMS: &str = "livetrace_traced_tests::forms::";

/// `[rsp]` and `[rsp + 8]` as the recorder found them when a site called it.
static RECORDED: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

// A stub for sites to call that records the two words on top of the stack
// at the site: `[rsp]` is the site's own return address (site + 5) and
// `[rsp + 8]` must be the traced fn's caller's return address. It preserves
// every register and the flags (`mov` sets none).
std::arch::global_asm!(
    ".pushsection .text.lt_tests_recorder,\"ax\",@progbits",
    ".p2align 4",
    "lt_tests_recorder:",
    "push rax",
    "mov rax, [rsp + 8]",
    "mov [rip + {rec}], rax",
    "mov rax, [rsp + 16]",
    "mov [rip + {rec} + 8], rax",
    "pop rax",
    "ret",
    ".popsection",
    rec = sym RECORDED,
);

unsafe extern "C" {
    fn lt_tests_recorder();
}

fn recorder_addr() -> usize {
    lt_tests_recorder as *const () as usize
}

fn site(suffix: &str) -> Vec<MacroSite> {
    let path = format!("{FORMS}{suffix}");
    macro_sites().filter(|s| s.path == path).collect()
}

fn one_site(suffix: &str) -> MacroSite {
    let v = site(suffix);
    assert_eq!(v.len(), 1, "sites of {suffix}: {v:?}");
    v[0]
}

fn patch(sites: &[usize], old: Insn, new: Insn) {
    let mut b = Batch::new();
    for &s in sites {
        b.queue(s, old, new).unwrap();
    }
    b.apply().unwrap();
}

fn big_in() -> Big {
    Big {
        a: [1, 2, 3, 4, 5, 6, 7, 8],
        x: 0.5,
        t: (9, 10),
    }
}

/// Calls every form once, checking values; returns the number of traced
/// calls it made.
fn exercise() -> u64 {
    let mut n = 0;
    let mut hit = |k: u64| n += k;
    assert_eq!(add(2, 3), 5);
    hit(1);
    assert_eq!(many(1, 2, 3, 4, 5.0, 6.0, 7, 8, 9, 10, (11, 12)), 78.0);
    hit(1);
    let b = big(big_in(), 2);
    assert_eq!(
        b,
        Big {
            a: [3, 4, 5, 6, 7, 8, 9, 10],
            x: 2.5,
            t: (9, 10)
        }
    );
    hit(1);
    assert_eq!(longest("ab", "abc"), "abc");
    assert_eq!(*first(&[7, 8]), 7);
    hit(2);
    assert_eq!(gen_add(1u8, 2), 3);
    assert_eq!(gen_add(1.5f64, 2.0), 3.5);
    assert_eq!(arr([1u8; 9]), 9);
    hit(3);
    // SAFETY: a valid reference.
    assert_eq!(unsafe { deref(&5) }, 5);
    nothing();
    hit(2);
    let mut c = Counter::new();
    assert_eq!(c.bump(4), 4);
    assert_eq!(c.get(), 4);
    assert_eq!(*c.lookup(&[1, 2, 3]), 2);
    assert_eq!(*c.elided("k"), 4);
    assert_eq!(c.generic(3u8), 7);
    assert_eq!(std::pin::pin!(Counter { n: 5 }).as_mut().pinned(), 10);
    assert_eq!(c.take(), 5);
    assert_eq!(Counter::konst(), 3); // skipped: no site
    hit(8);
    let mut s = Sq(2.0);
    s.scale(2.0);
    let d: &dyn Shape<Out = f64> = &s;
    assert_eq!(d.area(), 16.0);
    assert_eq!(d.name(), "shape"); // default method: not in the impl
    hit(2);
    assert_eq!(Wrap(3u8).get(), 3.0);
    assert_eq!(Wrap(2u32).mix(5u8), 2005);
    assert_eq!(Wrap(2u32).mix(5u16), 2005);
    hit(3);
    let st: &dyn Shape<Out = usize> = &"hello";
    assert_eq!(st.area(), 5);
    assert_eq!(st.name(), "hello");
    hit(2);
    assert_eq!(inner::sub(5, 3), 2);
    assert_eq!(inner::P.one(), 1);
    assert_eq!(inner::deeper::two(), 2);
    hit(3);
    // Function pointers to traced fns, and to a traced method.
    let f: fn(u32, u32) -> u32 = std::hint::black_box(add as fn(u32, u32) -> u32);
    assert_eq!(f(1, 1), 2);
    let g: fn(&Counter) -> u64 = std::hint::black_box(Counter::get as fn(&Counter) -> u64);
    assert_eq!(g(&Counter { n: 9 }), 9);
    hit(2);
    // A panic unwinds through the site like through any call.
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // quiet the expected panic
    struct Guard<'a>(&'a std::cell::Cell<bool>);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let dropped = std::cell::Cell::new(false);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = Guard(&dropped);
        never("boom")
    }));
    std::panic::set_hook(prev_hook);
    assert!(r.is_err());
    assert!(dropped.get(), "the caller's cleanup ran during unwinding");
    hit(1);
    n
}

// `black_box` on the result keeps each call from becoming a tail jump, so
// the return address the site sees is inside these functions.
#[inline(never)]
fn call_add_directly() -> u32 {
    std::hint::black_box(add(std::hint::black_box(20), 22))
}

#[inline(never)]
fn call_area_through_dyn(d: &dyn Shape<Out = f64>) -> f64 {
    std::hint::black_box(d.area())
}

/// Whether `ret` is a return address inside `f`'s first 256 bytes: `f`
/// made the call whose return address it is.
fn returns_into(ret: usize, f: usize) -> bool {
    ret > f && ret < f + 256
}

#[test]
fn forms_records_values_patching_and_stack() {
    let calls = exercise();

    // Records: paths, files, lines; one site per instantiation.
    let add_site = one_site("add");
    assert!(add_site.file.ends_with("forms.rs"), "{}", add_site.file);
    assert!(add_site.file.contains("traced-tests"), "{}", add_site.file);
    assert_eq!(add_site.line, ADD_LINE);
    let gen = site("gen_add");
    assert_eq!(gen.len(), 2, "gen_add::<u8> and gen_add::<f64>");
    assert!(gen.iter().all(|s| s.line == GEN_ADD_LINE));
    assert_eq!(one_site("Counter::new").line, COUNTER_LINE);
    assert_eq!(one_site("Counter::get").line, COUNTER_LINE + 8);
    assert_eq!(one_site("<Sq as Shape>::area").line, SQ_AREA_LINE);
    for p in [
        "many",
        "big",
        "longest",
        "first",
        "arr",
        "deref",
        "never",
        "nothing",
        "Counter::bump",
        "Counter::take",
        "Counter::lookup",
        "Counter::elided",
        "Counter::generic",
        "Counter::pinned",
        "<Sq as Shape>::scale",
        "Wrap<T>::get",
        "<&'a str as Shape>::area",
        "<&'a str as Shape>::scale",
        "<&'a str as Shape>::name",
        "inner::sub",
        "inner::P::one",
        "inner::deeper::two",
    ] {
        one_site(p);
    }
    assert_eq!(site("<Wrap<T> as Mix<R>>::mix").len(), 2);
    assert!(
        site("Counter::konst").is_empty(),
        "#[traced(skip)] has no site"
    );
    let ours: Vec<MacroSite> = macro_sites()
        .filter(|s| s.path.starts_with(FORMS))
        .collect();
    assert_eq!(ours.len(), 30);
    for s in &ours {
        assert_eq!(read_site(s.addr).unwrap(), NOP5, "{}", s.path);
    }

    // Every site in the program calls the counting stub, in one batch.
    let all: Vec<usize> = macro_sites().map(|s| s.addr).collect();
    patch(&all, Insn::Nop, Insn::Call(count_any_addr()));
    reset_count_any();
    assert_eq!(exercise(), calls);
    assert_eq!(count_any_hits(), calls);

    // What the stack holds when the site runs: the site's return address,
    // then the caller's. A direct call lands on the site (the wrapper is
    // inlined); a `dyn` call goes through the wrapper's out-of-line copy,
    // which optimised builds compile to a bare `jmp` and unoptimised builds
    // to a frame of its own, so that case is checked in release only.
    patch(
        &[add_site.addr],
        Insn::Call(count_any_addr()),
        Insn::Call(recorder_addr()),
    );
    assert_eq!(call_add_directly(), 42);
    assert_eq!(RECORDED[0].load(SeqCst), add_site.addr + 5);
    let direct_ret = RECORDED[1].load(SeqCst);
    let area = one_site("<Sq as Shape>::area");
    patch(
        &[area.addr],
        Insn::Call(count_any_addr()),
        Insn::Call(recorder_addr()),
    );
    assert_eq!(call_area_through_dyn(&Sq(3.0)), 9.0);
    assert_eq!(RECORDED[0].load(SeqCst), area.addr + 5);
    let dyn_ret = RECORDED[1].load(SeqCst);
    // The inlined wrapper's `call` lands on the site, in every build.
    assert!(
        returns_into(direct_ret, call_add_directly as *const () as usize),
        "{direct_ret:#x}"
    );
    if !cfg!(debug_assertions) {
        assert!(
            returns_into(dyn_ret, call_area_through_dyn as *const () as usize),
            "{dyn_ret:#x}"
        );
    }
    patch(
        &[add_site.addr, area.addr],
        Insn::Call(recorder_addr()),
        Insn::Call(count_any_addr()),
    );

    // And back to NOPs.
    patch(&all, Insn::Call(count_any_addr()), Insn::Nop);
    reset_count_any();
    assert_eq!(exercise(), calls);
    assert_eq!(count_any_hits(), 0);
    for s in &ours {
        assert_eq!(read_site(s.addr).unwrap(), NOP5, "{}", s.path);
    }
}
