//! Builds the `__mcount_loc` fixture for the integration tests: gcc only
//! records 5-byte-NOP mcount sites (`-mnop-mcount`) in non-PIC code, so the
//! fixture is a static archive linked into the (non-PIE) test executables.
//! Nothing here is used by the library itself.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=tests/c/mcount.c");
    println!("cargo::rustc-check-cfg=cfg(lt_mcount_fixture)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("mcount.o");
    let lib = out.join("libltmcount.a");
    let cc = std::env::var("LT_GCC").unwrap_or_else(|_| "gcc".into());
    let built = Command::new(&cc)
        .args([
            "-O2",
            "-fno-pic",
            "-pg",
            "-mfentry",
            "-mnop-mcount",
            "-mrecord-mcount",
            "-c",
        ])
        .arg("tests/c/mcount.c")
        .arg("-o")
        .arg(&obj)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("ar")
            .arg("crs")
            .arg(&lib)
            .arg(&obj)
            .status()
            .is_ok_and(|s| s.success());
    if built {
        println!("cargo::rustc-link-search=native={}", out.display());
        println!("cargo::rustc-cfg=lt_mcount_fixture");
        // Absolute __mcount_loc entries need a fixed-address executable.
        println!("cargo::rustc-link-arg-tests=-no-pie");
        // Nothing refers to __mcount_loc but the fixture's __start_/__stop_
        // symbols; let those keep it through --gc-sections.
        println!("cargo::rustc-link-arg-tests=-Wl,-z,nostart-stop-gc");
    } else {
        println!("cargo::warning=gcc could not build the __mcount_loc test fixture");
    }
}
