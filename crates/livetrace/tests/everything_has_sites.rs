//! `-f '*'` on a program in which every function has a site — livetrace's
//! own and the runtime's included — works with every tracer: livetrace
//! keeps itself out of the record table (notrace by construction).
//!
//! Builds `tests/allsites` with the nightly compiler's
//! `-Zpatchable-function-entry=5` (only this test needs nightly; it is
//! skipped, saying so, where no nightly toolchain is installed) and runs
//! it.

use std::path::Path;
use std::process::Command;

fn nightly() -> bool {
    Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn tracing_star_where_everything_has_a_site() {
    if !nightly() {
        eprintln!("SKIPPED: no nightly toolchain (rustup toolchain install nightly)");
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = here.join("tests/allsites");
    let target = here.join("../../target/allsites");
    let build = Command::new("cargo")
        .args(["+nightly", "build", "--release", "--quiet"])
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-Zpatchable-function-entry=5")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .expect("cargo +nightly");
    assert!(
        build.success(),
        "building tests/allsites with nightly failed"
    );
    let out = Command::new(target.join("release/allsites"))
        .env("LIVETRACE_ALLOW_PTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALLSITES ok"),
        "status {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for tracer in ["Function", "Graph", "Profile"] {
        assert!(stdout.contains(&format!("tracer={tracer}")), "{stdout}");
    }
}
