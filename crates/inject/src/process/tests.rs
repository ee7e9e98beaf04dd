//! Unit tests of the pure helpers: restarting interrupted system calls, the return page.

use super::attach::unmapped_page;
use super::*;

fn regs() -> Regs {
    // SAFETY: all-zero registers are a valid value.
    unsafe { std::mem::zeroed() }
}

#[test]
fn restart_of_interrupted_calls() {
    let mut r = regs();
    r.orig_rax = 7; // poll
    r.rip = 0x1002;
    r.rax = (-516i64) as u64;
    assert_eq!(restart_of(&r), Some((219, 0x1000)));
    r.rax = (-512i64) as u64;
    assert_eq!(restart_of(&r), Some((7, 0x1000)));
    r.rax = (-4i64) as u64; // EINTR: completed, nothing to restart
    assert_eq!(restart_of(&r), None);
    r.rax = (-512i64) as u64;
    r.orig_rax = u64::MAX; // not in a system call
    assert_eq!(restart_of(&r), None);
}

#[test]
fn return_page_is_unmapped() {
    let maps = procfs::maps(std::process::id() as i32).unwrap();
    let a = unmapped_page(&maps).unwrap();
    assert!(a < 1 << 16 && a > 0);
}
