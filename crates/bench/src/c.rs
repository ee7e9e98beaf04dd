//! The C example's per-call cost: a call to a C function compiled with
//! `-fpatchable-function-entry=5`, its site disabled (a NOP5) and enabled
//! (the function tracer recording every call), against the same source
//! compiled without the option.
//!
//! Method: the variants are built from `examples/c/` with gcc at run time
//! (`examples/c/build.sh`, into a temporary directory) and run as child
//! processes, `worker bench ITERS`: the C program times a chain of ITERS
//! calls of `bench_leaf` itself (each call's argument depends on the last
//! result) and prints ns per call. The uninstrumented build runs without
//! livetrace (baseline); the instrumented one under
//! `LD_PRELOAD=liblivetrace.so`, which measures the disabled site, starts
//! the function tracer on `bench_leaf` through the C API, and measures
//! again (enabled). Rounds alternate the two processes; each figure is the
//! median over rounds. Measuring in child processes keeps the preload
//! library's interposers and constructor out of this process, and measures
//! exactly what a C program sees.
//!
//! `liblivetrace.so` is taken from this executable's target directory,
//! built first with `cargo build -p livetrace-preload` in the same profile
//! (or from `LIVETRACE_PRELOAD_LIB`).

use std::path::{Path, PathBuf};
use std::process::Command;

const ITERS: u64 = 10_000_000;
const ROUNDS: usize = 7;

/// Runs the benchmark and prints its RESULT line.
pub fn run() {
    let lib = preload_lib();
    let tmp = std::env::temp_dir().join(format!("livetrace-bench-c-{}", std::process::id()));
    let built = Command::new("bash")
        .arg(workspace().join("examples/c/build.sh"))
        .arg(&tmp)
        .args(["gcc", "plain"])
        .stdout(std::io::stderr())
        .status()
        .expect("running examples/c/build.sh");
    assert!(built.success(), "examples/c/build.sh failed");
    eprintln!(
        "c: {ROUNDS} rounds of {ITERS} calls, liblivetrace.so: {}",
        lib.display()
    );

    let (mut base, mut disabled, mut enabled) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut plain = || {
            base.push(field(&bench(&tmp.join("plain"), None), "disabled_ns"));
        };
        let mut traced = || {
            let out = bench(&tmp.join("gcc"), Some(&lib));
            disabled.push(field(&out, "disabled_ns"));
            enabled.push(field(&out, "enabled_ns"));
        };
        if round % 2 == 0 {
            plain();
            traced();
        } else {
            traced();
            plain();
        }
        eprintln!(
            "c: round {round}: baseline {:.3} ns, disabled {:.3} ns, enabled {:.3} ns",
            base[round], disabled[round], enabled[round]
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let (b, d, e) = (
        crate::stats::median(&mut base),
        crate::stats::median(&mut disabled),
        crate::stats::median(&mut enabled),
    );
    println!(
        "RESULT bench=c baseline_ns={b:.3} disabled_ns={d:.3} enabled_ns={e:.3} \
         disabled_overhead_ns={:.3} enabled_overhead_ns={:.3} iters={ITERS} rounds={ROUNDS}",
        d - b,
        e - b
    );
}

/// `worker bench` in `dir`, with `lib` preloaded when given; its stdout.
fn bench(dir: &Path, lib: Option<&Path>) -> String {
    let mut cmd = Command::new(dir.join("worker"));
    cmd.args(["bench", &ITERS.to_string()])
        .current_dir(dir)
        .env("LIVETRACE_SERVE", "0")
        .env_remove("LD_PRELOAD");
    if let Some(lib) = lib {
        cmd.env("LD_PRELOAD", lib);
    }
    let out = cmd.output().expect("running the C example");
    assert!(
        out.status.success(),
        "worker bench failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in the C example's output:\n{out}"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `liblivetrace.so` of this build's profile, brought up to date.
fn preload_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("LIVETRACE_PRELOAD_LIB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target directory").to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "livetrace-preload"])
        .current_dir(workspace());
    if release {
        cmd.arg("--release");
    }
    let built = cmd.status().is_ok_and(|s| s.success());
    let lib = dir.join("liblivetrace.so");
    assert!(
        built && lib.exists(),
        "cannot build {} (cargo build -p livetrace-preload{})",
        lib.display(),
        if release { " --release" } else { "" }
    );
    lib
}
