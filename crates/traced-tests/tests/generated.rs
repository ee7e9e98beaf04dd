//! The generated traced functions (see `build.rs`): every site is a NOP5
//! with a correct record; every function returns the right value with its
//! site as a NOP, then after one batch turns every site in the program into
//! a call to a counting stub (which must be hit once per traced call), then
//! after one batch turns them back.
//!
//! One test per binary: the counting stub's counter and the sites are
//! process-wide.

use std::collections::HashMap;

use livetrace::{macro_sites, MacroSite};
use livetrace_fixtures::{count_any_addr, count_any_hits, reset_count_any};
use livetrace_poke::{read_site, Batch, Insn, NOP5};
use livetrace_traced_tests::gen::{CHECKS, FILE, SITES, TRACED_FNS};

const CRATE: &str = "livetrace_traced_tests::";

fn run_checks() -> Vec<(&'static str, u64)> {
    CHECKS
        .iter()
        .map(|(name, check)| match check() {
            Ok(hits) => (*name, hits),
            Err(e) => panic!("{name}: {e}"),
        })
        .collect()
}

fn batch(sites: &[MacroSite], old: Insn, new: Insn) {
    let mut b = Batch::with_capacity(sites.len());
    for s in sites {
        b.queue(s.addr, old, new).unwrap();
    }
    b.apply().unwrap();
}

#[test]
fn generated_sites_values_and_counts() {
    const { assert!(TRACED_FNS >= 2000, "fewer than 2000 traced fns generated") };

    // Values with every site a NOP. Running the checks first also
    // instantiates nothing new: generic instances exist from compile time.
    let expected_hits = run_checks();

    // Records: each generated fn has exactly its instantiation count of
    // sites, at the line of its name, and each site is a NOP5.
    let all: Vec<MacroSite> = macro_sites().collect();
    let mut found: HashMap<&str, Vec<&MacroSite>> = HashMap::new();
    for s in all.iter().filter(|s| s.file == FILE) {
        let path = s
            .path
            .strip_prefix(CRATE)
            .unwrap_or_else(|| panic!("path {}", s.path));
        found.entry(path).or_default().push(s);
    }
    assert_eq!(
        found.len(),
        SITES.len(),
        "distinct traced paths in generated.rs"
    );
    for (path, line, instances) in SITES {
        let got = found
            .get(path)
            .unwrap_or_else(|| panic!("no site recorded for {path}"));
        assert_eq!(got.len(), *instances, "sites of {path}");
        for s in got {
            assert_eq!(s.line, *line, "line of {path}");
            assert_eq!(
                read_site(s.addr).unwrap(),
                NOP5,
                "site of {path} at {:#x}",
                s.addr
            );
        }
    }
    let mut addrs: Vec<usize> = all.iter().map(|s| s.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), all.len(), "two records share a site address");

    // One batch: every site in the program calls the counting stub.
    batch(&all, Insn::Nop, Insn::Call(count_any_addr()));
    let call = Insn::Call(count_any_addr()).encode(all[0].addr).unwrap();
    assert_eq!(read_site(all[0].addr).unwrap(), call);
    let mut total = 0;
    for ((name, check), (_, want)) in CHECKS.iter().zip(&expected_hits) {
        reset_count_any();
        let hits = check().unwrap_or_else(|e| panic!("{name} (patched): {e}"));
        let counted = count_any_hits();
        assert_eq!(hits, *want);
        assert_eq!(counted, hits, "{name}: counting stub hits");
        total += counted;
    }
    assert!(
        total as usize >= TRACED_FNS,
        "{total} hits for {TRACED_FNS} fns"
    );

    // And back: NOPs again, same values, no more hits.
    batch(&all, Insn::Call(count_any_addr()), Insn::Nop);
    for s in &all {
        assert_eq!(read_site(s.addr).unwrap(), NOP5);
    }
    reset_count_any();
    assert_eq!(run_checks(), expected_hits);
    assert_eq!(count_any_hits(), 0);
}
