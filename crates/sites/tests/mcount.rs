//! `__mcount_loc` sites (gcc `-pg -mfentry -mnop-mcount -mrecord-mcount`) in
//! the non-PIE test executable itself (see build.rs).

#![cfg(lt_mcount_fixture)]

use livetrace_poke::Insn;
use livetrace_sites::{Origin, SiteState, Table};

#[link(name = "ltmcount", kind = "static")]
extern "C" {
    fn mc_square(x: i32) -> i32;
    fn mc_twice(x: i32) -> i32;
    fn mc_tramp();
    fn mc_table_len() -> u64;
    static mc_tramp_hits: std::sync::atomic::AtomicI64;
}

fn square(x: i32) -> i32 {
    // SAFETY: a plain C function (mcount.c); the trampoline patched in
    // preserves every register.
    unsafe { mc_square(x) }
}

fn hits() -> i64 {
    // SAFETY: an atomic counter defined in mcount.c.
    unsafe { mc_tramp_hits.load(std::sync::atomic::Ordering::SeqCst) }
}

#[test]
fn mcount_sites_in_the_executable_are_found_and_patchable() {
    let exe = std::fs::read("/proc/self/exe").unwrap();
    assert_eq!(
        u16::from_le_bytes([exe[16], exe[17]]),
        2,
        "test executable must be ET_EXEC (non-PIE)"
    );
    assert_eq!(square(7), 49);
    // mc_square, mc_twice, mc_table_len.
    // SAFETY: a plain C function (mcount.c).
    assert_eq!(unsafe { mc_table_len() }, 3);
    let (mut table, report) = Table::discover().unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let i = *table
        .lookup_name("mc_square")
        .first()
        .expect("mc_square found");
    let sq = table.info(i);
    assert_eq!(sq.addr, mc_square as *const () as usize);
    assert_eq!(sq.record.origin(), Origin::Mcount);
    assert_eq!(sq.record.state(), SiteState::Live(Insn::Nop));
    assert!(table.object(sq.record.object()).unwrap().is_main());
    let tw = table.lookup_name("mc_twice");
    assert_eq!(tw.len(), 1);
    assert_eq!(table.record(tw[0]).ip(), mc_twice as *const () as usize);
    assert_eq!(table.glob("mc_*").len(), 3);

    let site = sq.addr;
    table
        .apply(&[(site, Insn::Call(mc_tramp as *const () as usize))])
        .unwrap();
    let before = hits();
    assert_eq!(square(9), 81);
    assert_eq!(hits(), before + 1);
    table.apply(&[(site, Insn::Nop)]).unwrap();
    assert_eq!(square(3), 9);
    assert_eq!(hits(), before + 1);
}
