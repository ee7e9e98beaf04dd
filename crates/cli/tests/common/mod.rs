//! A demo target process with its own socket directory, and the command
//! run against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLI: &str = env!("CARGO_BIN_EXE_livetrace");
pub const TARGET: &str = env!("CARGO_BIN_EXE_livetrace-demo-target");
pub const CRATE: &str = "livetrace_demo_target";

static N: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = PathBuf::from(format!(
            "/tmp/lt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Target {
    pub child: Child,
    pub pid: u32,
    pub dir: TempDir,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Target {
    /// Starts the demo target with `LIVETRACE=1` (the constructor starts
    /// the server) and waits for its socket.
    pub fn start() -> Target {
        Target::start_with(&[], &[("LIVETRACE", "1")])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Target {
        let dir = TempDir::new("sock");
        let mut cmd = Command::new(TARGET);
        cmd.args(args)
            .env_remove("LIVETRACE")
            .env_remove("LIVETRACE_RECORD")
            .env("LIVETRACE_SOCKET_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the demo target");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                l2.lock().unwrap().push(line);
            }
        });
        let t = Target {
            child,
            pid,
            dir,
            lines,
        };
        let sock = t.socket();
        wait_for(
            Duration::from_secs(20),
            || sock.exists(),
            || format!("socket {} never appeared", sock.display()),
        );
        t
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(format!("{}.sock", self.pid))
    }

    /// Runs `livetrace ARGS` against this target's socket directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(self.dir.path(), args)
    }

    /// Runs the command and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "livetrace {args:?} failed: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// A `livetrace` child process, for signalling.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(CLI)
            .args(args)
            .env("LIVETRACE_SOCKET_DIR", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn pid_s(&self) -> String {
        self.pid.to_string()
    }

    /// Waits until the target prints a line satisfying `f`, after `from`
    /// lines already seen; returns the line count then.
    pub fn wait_line(&self, from: usize, f: impl Fn(&str) -> bool) -> usize {
        let mut found = 0;
        wait_for(
            Duration::from_secs(20),
            || {
                let l = self.lines.lock().unwrap();
                match l.iter().skip(from).position(|x| f(x)) {
                    Some(i) => {
                        found = from + i + 1;
                        true
                    }
                    None => false,
                }
            },
            || {
                format!(
                    "target never printed the expected line; last: {:?}",
                    self.lines.lock().unwrap().last()
                )
            },
        );
        found
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// `ls --enabled` output's function rows.
    pub fn enabled(&self) -> Vec<String> {
        let out = self.ok(&["ls", &self.pid_s(), "--enabled"]);
        out.lines()
            .filter(|l| !l.starts_with("NAME") && !l.contains("no enabled functions"))
            .map(str::to_string)
            .collect()
    }

    /// Waits until no site is enabled (sessions torn down).
    pub fn wait_all_nop(&self) {
        wait_for(
            Duration::from_secs(15),
            || self.enabled().is_empty(),
            || format!("sites still enabled: {:?}", self.enabled()),
        );
        // Every site's bytes are a NOP again: `ls` shows no live call.
        let ls = self.ok(&["ls", &self.pid_s()]);
        assert!(
            !ls.lines().skip(1).any(|l| l.contains("call")),
            "a site is still a call:\n{ls}"
        );
    }

    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(self.socket()).unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `liblivetrace.so` of this profile (next to the `livetrace` command),
/// built if needed (a no-op when up to date).
pub fn preload_lib() -> &'static Path {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let dir = Path::new(CLI).parent().unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-q", "-p", "livetrace-preload"])
            .current_dir(workspace());
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cargo");
        assert!(
            out.status.success(),
            "cargo build -p livetrace-preload:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lib = dir.join("liblivetrace.so");
        assert!(lib.exists(), "{}", lib.display());
        lib
    })
}

pub fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env("LIVETRACE_SOCKET_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool, what: impl Fn() -> String) {
    let end = Instant::now() + limit;
    while !f() {
        if Instant::now() > end {
            panic!("timed out: {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our
    // child's, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
