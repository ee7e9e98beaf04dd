use super::library::sites_in;
use super::load::{glibc_transient, inside_sled};
use std::path::Path;

#[test]
fn glibcs_transient_masks() {
    let kernel_all: u64 = !((1 << 8) | (1 << 18));
    assert!(glibc_transient(kernel_all));
    assert!(glibc_transient(kernel_all & !(1 << 32)));
    // A program's sigwait thread (glibc never blocks 32 and 33 for it).
    assert!(!glibc_transient(kernel_all & !(3 << 31)));
    assert!(!glibc_transient(1 << 4));
}

#[test]
fn inside_sled_is_strict() {
    let sleds = [0x1000, 0x2000];
    assert!(!inside_sled(&sleds, 0x1000));
    assert!(inside_sled(&sleds, 0x1001));
    assert!(inside_sled(&sleds, 0x1004));
    assert!(!inside_sled(&sleds, 0x1005));
    assert!(!inside_sled(&sleds, 0xfff));
    assert!(inside_sled(&sleds, 0x2003));
    assert!(!inside_sled(&[], 0x1001));
}

#[test]
fn counts_no_sites_in_a_plain_binary() {
    // This test binary has none of the site sections.
    assert_eq!(sites_in(Path::new("/proc/self/exe")), Some(0));
    assert_eq!(sites_in(Path::new("/nonexistent")), None);
}
