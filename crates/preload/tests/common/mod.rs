//! Building the C examples and running them under `LD_PRELOAD`.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long one run of a C program may take before it is killed and the
/// test fails.
pub const TIMEOUT: Duration = Duration::from_secs(90);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether this test executable was built in the release profile.
fn release() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.file_name().map(|n| n == "release"))
        .unwrap_or(false)
}

/// `cargo build -p PACKAGE` in this profile: up to date, and a no-op when
/// `cargo test` already built it. Returns the profile's target directory.
fn cargo_build(package: &str) -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", package])
        .current_dir(workspace());
    if release() {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build -p {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// `target/<profile>/liblivetrace.so`.
pub fn lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let lib = cargo_build("livetrace-preload").join("liblivetrace.so");
        assert!(lib.exists(), "{} was not built", lib.display());
        lib
    })
}

/// The `livetrace` command, built.
pub fn cli() -> PathBuf {
    let bin = cargo_build("livetrace-cli").join("livetrace");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// Whether `cmd` runs.
pub fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the clang variants should be tested: always in CI (which
/// installs clang through .ci/setup-packages, so a missing clang there is a
/// failure), otherwise when clang is installed.
pub fn want_clang() -> bool {
    if have("clang") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "clang is missing in CI: .ci/setup-packages should have installed it"
    );
    eprintln!("SKIPPED: clang not installed (run .ci/setup-packages)");
    false
}

/// Removes what earlier test runs, now gone, left in the target's
/// temporary directory and in /tmp.
fn remove_stale() {
    let dirs = [
        (PathBuf::from(env!("CARGO_TARGET_TMPDIR")), "preload-"),
        (std::env::temp_dir(), "lt-preload-"),
    ];
    for (dir, prefix) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(prefix)
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A directory of this test run under the target's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    static CLEAN: std::sync::Once = std::sync::Once::new();
    CLEAN.call_once(remove_stale);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("preload-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The examples built by `examples/c/build.sh` (every variant; clang's
/// when wanted), once per test executable.
pub fn examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("examples");
        let mut variants = vec!["gcc", "mcount", "cxx", "plain"];
        if want_clang() {
            variants.push("clang");
        }
        let out = Command::new("bash")
            .arg(workspace().join("examples/c/build.sh"))
            .arg(&dir)
            .args(&variants)
            .output()
            .expect("running examples/c/build.sh");
        assert!(
            out.status.success(),
            "examples/c/build.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// What a run printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The value of the first `key=value` on stdout.
    pub fn field(&self, key: &str) -> &str {
        self.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in the output:\n{self}"))
    }

    pub fn num(&self, key: &str) -> i64 {
        self.field(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number:\n{self}"))
    }

    pub fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "the program failed:\n{self}");
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A command for `program` in the `variant` directory of the examples,
/// with liblivetrace.so preloaded and a private socket directory.
pub fn command(variant: &str, program: &str, args: &[&str]) -> Command {
    let dir = examples().join(variant);
    let mut cmd = Command::new(dir.join(program));
    cmd.args(args)
        .current_dir(&dir)
        .env("LD_PRELOAD", lib())
        .env("LIVETRACE_SOCKET_DIR", socket_dir())
        .env_remove("LIVETRACE")
        .env_remove("LIVETRACE_RECORD")
        .env_remove("LIVETRACE_VERBOSE")
        .env_remove("LIVETRACE_PRELOAD");
    cmd
}

/// The control sockets' directory for this test run: under /tmp, since a
/// socket path must fit in 108 bytes wherever the target directory is.
pub fn socket_dir() -> PathBuf {
    static CLEAN: std::sync::Once = std::sync::Once::new();
    CLEAN.call_once(remove_stale);
    let d = std::env::temp_dir().join(format!("lt-preload-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    // The server wants its directory private.
    let _ = std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    d
}

/// Runs `cmd` to completion within [`TIMEOUT`] (killed and failed past it).
pub fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, timed_out) = (done.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if t0.elapsed() > TIMEOUT {
                    timed_out.store(true, Ordering::SeqCst);
                    // SAFETY: kill has no memory-safety preconditions; the
                    // child is not reaped before `done` is set.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let status = child.wait().unwrap();
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    let out = Output {
        code: status.code(),
        stdout,
        stderr: err_reader.join().unwrap(),
    };
    assert!(
        !timed_out.load(Ordering::SeqCst),
        "{shown} took longer than {TIMEOUT:?}:\n{out}"
    );
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        panic!("{shown} was killed by signal {sig}:\n{out}");
    }
    out
}

/// `command` + `output`.
pub fn run(variant: &str, program: &str, args: &[&str]) -> Output {
    output(command(variant, program, args))
}

/// Reads a file the program wrote.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
