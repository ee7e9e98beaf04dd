//! End-to-end behaviour of single batches on real functions: what each
//! instruction does, what a thread that reaches a site mid-batch gets, and
//! that a refused batch changes nothing.
//!
//! Tests in this file share the fixture functions, so each uses its own
//! pages of them (see `page`).

use std::sync::atomic::Ordering::SeqCst;

use livetrace_fixtures as fx;
use livetrace_poke::{
    read_site, trap_stats, Batch, Error, Insn, Phase, RejectReason, NOP1X5, NOP5,
};

/// The first function of the `n`th 4 KiB page of fixtures (256 functions a
/// page): each test works in pages of its own, since tests run in parallel
/// and a batch makes its pages writable for a moment.
fn page(n: usize) -> usize {
    256 * n + 10
}

fn a(i: usize) -> u64 {
    fx::LT_FIX_COUNTS_A[i].load(SeqCst)
}
fn b(i: usize) -> u64 {
    fx::LT_FIX_COUNTS_B[i].load(SeqCst)
}

/// The protection string of the mapping holding `addr`, from /proc/self/maps.
fn perms_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let (range, rest) = line.split_once(' ').unwrap();
        let (s, e) = range.split_once('-').unwrap();
        let (s, e) = (
            usize::from_str_radix(s, 16).unwrap(),
            usize::from_str_radix(e, 16).unwrap(),
        );
        if (s..e).contains(&addr) {
            return rest[..4].to_string();
        }
    }
    panic!("{addr:#x} not mapped")
}

#[test]
fn nop_call_call_jmp_nop() {
    let i = page(1);
    let site = fx::site(i);
    assert_eq!(read_site(site).unwrap(), NOP5);
    assert_eq!(fx::call(i), fx::value_of(i));

    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Nop, Insn::Call(fx::counter_a()))
        .unwrap();
    let applied = batch.apply().unwrap();
    assert_eq!(applied.sites, 1);
    assert_eq!(applied.syncs, 3);
    assert_eq!(
        read_site(site).unwrap(),
        Insn::Call(fx::counter_a()).encode(site).unwrap()
    );
    assert_eq!(fx::call(i), fx::value_of(i));
    assert_eq!((a(i), b(i)), (1, 0));

    // call A -> call B.
    let mut batch = Batch::new();
    batch
        .queue(
            site,
            Insn::Call(fx::counter_a()),
            Insn::Call(fx::counter_b()),
        )
        .unwrap();
    batch.apply().unwrap();
    assert_eq!(fx::call(i), fx::value_of(i));
    assert_eq!((a(i), b(i)), (1, 1));

    // call B -> jmp to function i+1: the call now returns i+1's value.
    let mut batch = Batch::new();
    batch
        .queue(
            site,
            Insn::Call(fx::counter_b()),
            Insn::Jmp(fx::site(i + 1)),
        )
        .unwrap();
    batch.apply().unwrap();
    assert_eq!(fx::call(i), fx::value_of(i + 1));

    // and back to the NOP, through queue_bytes.
    let mut batch = Batch::new();
    let cur = read_site(site).unwrap();
    batch.queue_bytes(site, cur, NOP5).unwrap();
    batch.apply().unwrap();
    assert_eq!(read_site(site).unwrap(), NOP5);
    assert_eq!(fx::call(i), fx::value_of(i));
    assert_eq!((a(i), b(i)), (1, 1));
}

#[test]
fn text_is_not_left_writable() {
    let site = fx::site(page(2));
    let before = perms_of(site);
    assert!(
        !before.contains('w'),
        "fixture text starts read-only: {before}"
    );
    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Nop, Insn::Call(fx::counter_a()))
        .unwrap();
    batch.apply().unwrap();
    assert_eq!(perms_of(site), before);
    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Call(fx::counter_a()), Insn::Nop)
        .unwrap();
    batch
        .apply_with(|_| assert!(perms_of(site).contains('w')))
        .unwrap();
    assert_eq!(perms_of(site), before);
}

#[test]
fn a_thread_reaching_a_site_mid_batch_gets_the_new_instruction() {
    let i = page(3);
    let site = fx::site(i);
    let emulated = trap_stats().emulated;
    let mut seen = Vec::new();
    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Nop, Insn::Call(fx::counter_a()))
        .unwrap();
    batch
        .apply_with(|phase| {
            let first = read_site(site).unwrap()[0];
            let before = a(i);
            // This thread is the patcher; calling the site now traps.
            assert_eq!(fx::call(i), fx::value_of(i));
            seen.push((phase, first, a(i) - before));
        })
        .unwrap();
    assert_eq!(
        seen,
        [
            (Phase::Int3, 0xcc, 1),
            (Phase::Tail, 0xcc, 1),
            (Phase::Done, 0xe8, 1)
        ]
    );
    assert!(trap_stats().emulated >= emulated + 2);

    // The reverse: emulating a NOP skips the call.
    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Call(fx::counter_a()), Insn::Nop)
        .unwrap();
    let before = a(i);
    batch
        .apply_with(|_| assert_eq!(fx::call(i), fx::value_of(i)))
        .unwrap();
    assert_eq!(a(i), before);

    // And a jmp.
    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Nop, Insn::Jmp(fx::site(i + 1)))
        .unwrap();
    batch
        .apply_with(|_| assert_eq!(fx::call(i), fx::value_of(i + 1)))
        .unwrap();
    let mut batch = Batch::new();
    batch
        .queue(site, Insn::Jmp(fx::site(i + 1)), Insn::Nop)
        .unwrap();
    batch.apply().unwrap();
}

#[test]
fn a_refused_batch_writes_nothing() {
    let (good, bad) = (fx::site(page(4)), fx::site(page(4) + 1));
    let perms_before = (perms_of(good), perms_of(bad));
    let mut batch = Batch::new();
    batch
        .queue(good, Insn::Nop, Insn::Call(fx::counter_a()))
        .unwrap();
    // Claims function 41 holds a call; it holds a NOP.
    batch
        .queue(bad, Insn::Call(fx::counter_b()), Insn::Nop)
        .unwrap();
    let err = batch.apply().unwrap_err();
    let Error::Rejected(list) = &err else {
        panic!("{err}")
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].site, bad);
    assert_eq!(list[0].reason, RejectReason::Mismatch);
    assert_eq!(list[0].found, Some(NOP5));
    let msg = err.to_string();
    assert!(msg.contains(&format!("{bad:#x}")), "{msg}");
    assert!(msg.contains("found 0f 1f 44 00 00"), "{msg}");
    assert!(msg.contains("expected e8 "), "{msg}");
    assert_eq!(read_site(good).unwrap(), NOP5);
    assert_eq!(read_site(bad).unwrap(), NOP5);
    assert_eq!((perms_of(good), perms_of(bad)), perms_before);
}

#[test]
fn duplicates_overlaps_and_non_text_are_all_reported() {
    let s = fx::site(page(5));
    let mut batch = Batch::new();
    batch
        .queue(s, Insn::Nop, Insn::Call(fx::counter_a()))
        .unwrap();
    batch
        .queue(s, Insn::Nop, Insn::Call(fx::counter_b()))
        .unwrap();
    batch.queue_bytes(s + 2, NOP5, NOP5).unwrap();
    let data = Box::new([0u8; 16]);
    let heap = data.as_ptr() as usize;
    batch.queue(heap, Insn::Nop, Insn::Nop).unwrap();
    let Error::Rejected(list) = batch.apply().unwrap_err() else {
        panic!()
    };
    let mut reasons: Vec<_> = list.iter().map(|r| (r.site, r.reason)).collect();
    reasons.sort_by_key(|r| r.0);
    assert!(reasons.contains(&(s, RejectReason::Duplicate)));
    assert!(reasons.contains(&(s + 2, RejectReason::Overlap { other: s })));
    assert!(reasons.contains(&(heap, RejectReason::NotText)));
    assert!(list.iter().any(|r| r.site == heap && r.found.is_none()));
    assert_eq!(read_site(s).unwrap(), NOP5);
    // Unmapped memory is an error, not a crash.
    assert!(matches!(read_site(8), Err(Error::NotText { site: 8 })));
}

#[test]
fn forms_and_ranges_are_checked_when_queued() {
    let s = fx::site(page(6));
    let mut batch = Batch::new();
    assert!(matches!(
        batch.queue_bytes(s, NOP1X5, NOP5),
        Err(Error::Form { .. })
    ));
    assert!(matches!(
        batch.queue_bytes(s, NOP5, [0xcc; 5]),
        Err(Error::Form { .. })
    ));
    let far = s.wrapping_add(1 << 40);
    assert!(matches!(
        batch.queue(s, Insn::Nop, Insn::Call(far)),
        Err(Error::Encode(_))
    ));
    assert!(batch.is_empty());
}

#[test]
fn many_sites_in_one_batch_across_pages() {
    let range = page(10)..page(10) + 2000; // 2000 functions, 32 KiB, several pages
    let mut batch = Batch::with_capacity(range.len());
    for i in range.clone() {
        batch
            .queue(fx::site(i), Insn::Nop, Insn::Call(fx::counter_b()))
            .unwrap();
    }
    let applied = batch.apply().unwrap();
    assert_eq!(applied.sites, 2000);
    assert_eq!(applied.runs, 1, "contiguous pages make one mprotect run");
    for i in range.clone() {
        assert_eq!(fx::call(i), fx::value_of(i));
        assert_eq!(b(i), 1);
    }
    let mut batch = Batch::new();
    for i in range.clone().rev() {
        batch
            .queue(fx::site(i), Insn::Call(fx::counter_b()), Insn::Nop)
            .unwrap();
    }
    batch.apply().unwrap();
    for i in range {
        assert_eq!(fx::call(i), fx::value_of(i));
        assert_eq!(b(i), 1);
    }
}

#[test]
fn a_panicking_hook_still_completes_the_batch() {
    let i = page(7);
    let site = fx::site(i);
    let r = std::panic::catch_unwind(|| {
        let mut batch = Batch::new();
        batch
            .queue(site, Insn::Nop, Insn::Call(fx::counter_a()))
            .unwrap();
        batch
            .apply_with(|phase| {
                if phase == Phase::Int3 {
                    panic!("hook failed");
                }
            })
            .unwrap();
    });
    assert!(r.is_err());
    // The batch completed, text is read-only again, and the site works.
    assert_eq!(
        read_site(site).unwrap(),
        Insn::Call(fx::counter_a()).encode(site).unwrap()
    );
    assert!(!perms_of(site).contains('w'));
    let before = a(i);
    assert_eq!(fx::call(i), fx::value_of(i));
    assert_eq!(a(i), before + 1);
}
