//! `livetrace attach`/`detach` and attaching on demand, end to end: C
//! programs (gcc, clang) and a Rust `#[traced]` program started without
//! any livetrace setup get liblivetrace.so loaded, are traced with every
//! tracer, and are left as they were; refusals change nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{preload_lib, TempDir, CLI};

const PLAIN_TARGET: &str = env!("CARGO_BIN_EXE_livetrace-plain-target");

fn build(name: &str, cc: &str, flags: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("attach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/attach_target.c");
    let o = Command::new(cc)
        .args(["-O2", "-pthread", "-o"])
        .arg(&out)
        .args(flags)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(
        o.status.success(),
        "{cc} {flags:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Compiler flags for the test programs: gcc's sites (five one-byte
/// NOPs), and its default of calling local functions with the stack 8
/// bytes off the ABI's alignment.
const SITES: &[&str] = &["-fpatchable-function-entry=5"];

fn gcc_target() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build("gcc", "gcc", SITES))
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A program under test, started without livetrace; killed on drop.
struct Program {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    socket_dir: TempDir,
}

impl Program {
    fn start(exe: &Path) -> Program {
        Program::start_cmd(Command::new(exe))
    }

    fn start_cmd(mut cmd: Command) -> Program {
        let socket_dir = TempDir::new("attach");
        std::fs::create_dir_all(socket_dir.path()).unwrap();
        cmd.env_remove("LD_PRELOAD")
            .env_remove("LIVETRACE")
            .env("LIVETRACE_SOCKET_DIR", socket_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start the program");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .strip_prefix("ready pid=")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Program {
            child,
            stdin,
            stdout,
            pid,
            socket_dir,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn field(line: &str, key: &str) -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `livetrace ARGS` as this user, with this program's socket directory.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .args(args)
            .env("LIVETRACE_SOCKET_DIR", self.socket_dir.path())
            .env("LIVETRACE_PRELOAD_LIB", preload_lib())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "livetrace {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A thread's blocked signals, from `/proc`.
    fn blocked_signals(&self, tid: u64) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid)).unwrap();
        let v = s
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .expect("SigBlk");
        u64::from_str_radix(v.trim(), 16).unwrap()
    }

    fn pid_s(&self) -> String {
        self.pid.to_string()
    }

    /// Whether liblivetrace.so (or a copy made for a process that cannot
    /// open it) is mapped.
    fn maps_have_livetrace(&self) -> bool {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap();
        maps.contains("liblivetrace") || maps.contains(".livetrace-attach-")
    }

    /// The C program's own results: every traced call matched its
    /// untraced copy, registers intact, no poll interrupted or failed.
    fn assert_c_unharmed(&mut self) -> String {
        let s = self.ask("status");
        assert_eq!(Program::field(&s, "bad"), 0, "{s}");
        assert_eq!(Program::field(&s, "errors"), 0, "{s}");
        assert_eq!(Program::field(&s, "timeouts"), 0, "{s}");
        let w = self.ask("poke");
        assert_eq!(w, "woken0=1 woken1=1", "{w}");
        s
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Traces the program with every tracer, checking each output names the
/// traced functions. The busy threads make millions of calls a second:
/// files are written from small flight-recorder buffers (the newest 1,024
/// records of each thread), not every call (hundreds of megabytes).
fn trace_every_tracer(p: &Program, glob: &str, expect: &str) {
    let dir = TempDir::new("attach-out");
    std::fs::create_dir_all(dir.path()).unwrap();
    let pid = p.pid_s();
    let graph = dir.path().join("graph.txt");
    // From a flight recorder: each thread's newest 1,024 records.
    let flight = |tracer: &str, file: &Path| {
        let o = file.to_str().unwrap();
        p.ok(&[
            "trace", &pid, "-f", glob, "-t", tracer, "-d", "300ms", "--flight", "--buffer", "1024",
            "-o", o,
        ])
    };
    flight("graph", &graph);
    let g = text(&graph);
    assert!(g.starts_with("# tracer: function_graph"), "{g:.300}");
    assert!(g.contains(&format!("{expect}() {{")), "{g:.2000}");
    let func = dir.path().join("func.json");
    flight("function", &func);
    let f = text(&func);
    assert!(f.contains(expect), "{f:.500}");
    serde_json::from_str::<serde_json::Value>(&f).expect("chrome JSON");
    let report = p.ok(&["report", &pid, "-f", glob, "-d", "300ms"]);
    assert!(report.contains(expect), "{report}");
    // Streaming to the terminal.
    let stream = p.ok(&["trace", &pid, "-f", glob, "-d", "100ms"]);
    assert!(stream.contains(expect), "{stream:.500}");
}

#[test]
fn gcc_program_attached_traced_with_every_tracer_and_detached() {
    let mut p = Program::start(gcc_target());
    let pid = p.pid_s();
    let before = p.ask("status");
    assert!(!p.maps_have_livetrace());
    // A thread blocking every signal since before livetrace was loaded.
    let sigwaiter = Program::field(&before, "sigwaiter");
    let mask_before = p.blocked_signals(sigwaiter);
    assert_ne!(
        mask_before & (1 << (libc::SIGTRAP - 1)),
        0,
        "{mask_before:#x}"
    );

    // Attaching on demand: `ls` finds no socket and loads livetrace.
    let o = p.cli(&["ls", &pid, "work_*"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("loaded into process"), "{err}");
    let ls = String::from_utf8_lossy(&o.stdout);
    for f in ["work_item", "work_parse", "work_hash", "work_wait"] {
        let row = ls
            .lines()
            .find(|l| l.split_whitespace().next() == Some(f))
            .unwrap_or_else(|| panic!("{f} not listed:\n{ls}"));
        // gcc's sleds were converted while every thread was held.
        assert!(row.contains("nop5"), "{row}");
    }
    assert!(p.maps_have_livetrace());
    // Attaching interrupted no system call.
    let s = p.assert_c_unharmed();
    assert_eq!(Program::field(&s, "eintr"), 0, "{s}");
    // The injector gave the thread that blocks everything SIGTRAP back
    // (and livetrace's world signal): without, every batch is refused.
    assert_eq!(
        p.blocked_signals(sigwaiter) & (1 << (libc::SIGTRAP - 1)),
        0,
        "SIGTRAP still blocked"
    );

    trace_every_tracer(&p, "work_*", "work_item");
    let mid = p.ask("status");
    assert!(
        Program::field(&mid, "sigwaited") > Program::field(&before, "sigwaited"),
        "{before} / {mid}"
    );

    let d = p.ok(&["detach", &pid]);
    assert!(d.contains("unloaded"), "{d}");
    assert!(!p.maps_have_livetrace(), "still mapped after detach");
    // Its mask is the program's own again.
    assert_eq!(p.blocked_signals(sigwaiter), mask_before);
    let ps = p.ok(&["ps"]);
    let row = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
        .unwrap_or_else(|| panic!("{pid} not in ps:\n{ps}"));
    assert!(row.contains("attachable"), "{row}");
    let after = p.assert_c_unharmed();
    assert!(
        Program::field(&after, "calls") > Program::field(&before, "calls")
            && Program::field(&after, "churned") > Program::field(&before, "churned"),
        "{before} / {after}"
    );
    // Tracing stops wait for quiescence by probing every thread with a
    // signal, which interrupts a poll (the core's documented behaviour);
    // attaching and detaching never do.
    eprintln!("poll interruptions from the tracing sessions: {after}");
}

#[test]
fn attach_and_detach_interrupt_nothing() {
    let mut p = Program::start(gcc_target());
    let pid = p.pid_s();
    for _ in 0..3 {
        let a = p.ok(&["attach", &pid]);
        assert!(a.contains("loaded into process"), "{a}");
        let ls = p.ok(&["ls", &pid, "work_item"]);
        assert!(ls.contains("work_item"), "{ls}");
        p.ok(&["detach", &pid]);
        assert!(!p.maps_have_livetrace());
    }
    let s = p.assert_c_unharmed();
    assert_eq!(Program::field(&s, "eintr"), 0, "{s}");
}

#[test]
fn clang_program() {
    if !have("clang") {
        assert!(std::env::var_os("CI").is_none(), "clang missing in CI");
        eprintln!("SKIPPED: clang not installed");
        return;
    }
    let exe = build("clang", "clang", &["-fpatchable-function-entry=5"]);
    let mut p = Program::start(&exe);
    let pid = p.pid_s();
    p.ok(&["attach", &pid]);
    let ls = p.ok(&["ls", &pid, "work_*"]);
    assert!(
        ls.contains("work_item") && !ls.contains("unconverted"),
        "{ls}"
    );
    trace_every_tracer(&p, "work_*", "work_item");
    p.ok(&["detach", &pid]);
    assert!(!p.maps_have_livetrace());
    p.assert_c_unharmed();
}

#[test]
fn rust_traced_program_without_server() {
    let mut p = Program::start(Path::new(PLAIN_TARGET));
    let pid = p.pid_s();
    // Its own livetrace never ran: no socket, nothing patched.
    let o = p.cli(&["--no-attach", "ls", &pid]);
    assert!(!o.status.success());
    let ls = p.ok(&["ls", &pid, "livetrace_plain_target::*"]);
    for f in ["work::step", "work::leaf"] {
        assert!(
            ls.contains(&format!("livetrace_plain_target::{f}")),
            "{f}:\n{ls}"
        );
    }
    trace_every_tracer(&p, "livetrace_plain_target::work::*", "work::step");
    p.ok(&["detach", &pid]);
    assert!(!p.maps_have_livetrace());
    let s = p.ask("status");
    assert_eq!(Program::field(&s, "bad"), 0, "{s}");
}

#[test]
fn detach_waits_for_hooked_returns() {
    let mut p = Program::start(gcc_target());
    let pid = p.pid_s();
    p.ok(&["attach", &pid]);
    // work_wait is entered while the graph tracer hooks returns, and is
    // still inside when tracing stops.
    let tracing = Command::new(CLI)
        .args([
            "trace",
            &pid,
            "-f",
            "work_wait",
            "-t",
            "graph",
            "-d",
            "1500ms",
        ])
        .env("LIVETRACE_SOCKET_DIR", p.socket_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(p.ask("enter"), "in_wait=1");
    let out = tracing.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its return address points into the library: it must stay.
    let o = p.cli(&["detach", &pid]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has not returned yet"), "{err}");
    assert!(p.maps_have_livetrace());
    // Once it returned (through the hook), unloading goes ahead.
    let r = p.ask("release");
    assert!(r.ends_with("result_ok=1"), "{r}");
    p.ok(&["detach", &pid]);
    assert!(!p.maps_have_livetrace());
    p.assert_c_unharmed();
}

#[test]
fn another_mount_namespace() {
    if !have("unshare") {
        eprintln!("SKIPPED: no unshare");
        return;
    }
    // In its own mount namespace, tmpfs over the directory holding
    // liblivetrace.so and over its socket directory: neither path means
    // the same there, so the library is copied into its file system and
    // the socket is reached through /proc/PID/root.
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: unshare --mount is not allowed here");
        return;
    }
    let libdir = preload_lib().parent().unwrap().to_path_buf();
    let script = format!(
        "mount -t tmpfs tmpfs '{}' && mount -t tmpfs tmpfs \"$LIVETRACE_SOCKET_DIR\" && exec '{}'",
        libdir.display(),
        gcc_target().display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let mut p = Program::start_cmd(cmd);
    let pid = p.pid_s();
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid), ns("self"), "not in another mount namespace");
    let ls = p.ok(&["ls", &pid, "work_*"]);
    assert!(ls.contains("work_item"), "{ls}");
    trace_every_tracer(&p, "work_*", "work_item");
    p.ok(&["detach", &pid]);
    assert!(!p.maps_have_livetrace());
    p.assert_c_unharmed();
}

fn expect_refusal(p: &Program, args: &[&str], words: &[&str]) {
    let o = p.cli(args);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail");
    let err = String::from_utf8_lossy(&o.stderr);
    for w in words {
        assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
    }
    assert!(!p.maps_have_livetrace(), "a refusal loaded the library");
}

#[test]
fn refusals_change_nothing() {
    // No sites, and a command that will not relocate: listing (there is
    // nothing to list before a trace relocated something), or tracing with
    // --no-relocate.
    let plain = build("nosites", "gcc", &[]);
    let p = Program::start(&plain);
    let pid = p.pid_s();
    expect_refusal(
        &p,
        &["ls", &pid],
        &["no traceable functions yet", "--why-not"],
    );
    expect_refusal(
        &p,
        &[
            "trace",
            &pid,
            "--no-relocate",
            "-f",
            "work_*",
            "-d",
            "100ms",
        ],
        &["no traceable functions yet"],
    );
    drop(p);

    // Already traced (by this test, through the injector).
    let mut p = Program::start(gcc_target());
    let target = livetrace_inject::Target::inspect(p.pid as i32).unwrap();
    let held = livetrace_inject::Process::seize(target).unwrap();
    expect_refusal(&p, &["attach", &p.pid_s()], &["already traced by process"]);
    drop(held);
    p.assert_c_unharmed();
    drop(p);

    // Statically linked.
    let dir = TempDir::new("static");
    std::fs::create_dir_all(dir.path()).unwrap();
    let src = dir.path().join("s.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void){for(;;)pause();}\n",
    )
    .unwrap();
    let exe = dir.path().join("s");
    let o = Command::new("gcc")
        .args(["-static", "-fpatchable-function-entry=5", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    if o.status.success() {
        let mut child = Command::new(&exe).spawn().unwrap();
        let o = Command::new(CLI)
            .args(["attach", &child.id().to_string()])
            .env("LIVETRACE_PRELOAD_LIB", preload_lib())
            .output()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("statically linked"), "{err}");
    } else {
        eprintln!("SKIPPED static: no static libc");
    }
}

/// Runs `livetrace` as another user (setpriv), or None when impossible.
fn cli_as(uid: u32, args: &[&str]) -> Option<Output> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || !have("setpriv") {
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "--inh-caps=-all",
        CLI,
    ])
    .args(args)
    .env("LIVETRACE_PRELOAD_LIB", preload_lib());
    Some(cmd.output().unwrap())
}

#[test]
fn other_users() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || !have("setpriv") {
        eprintln!("SKIPPED: needs root and setpriv to run as other users");
        return;
    }
    // The program runs as uid 40001.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=40001",
        "--regid=40001",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(gcc_target());
    let mut p = Program::start_cmd(cmd);
    // Its socket directory must be its own.
    std::os::unix::fs::chown(p.socket_dir.path(), Some(40001), Some(40001)).unwrap();
    let pid = p.pid_s();
    // Another unprivileged user is refused, nothing changed.
    let o = cli_as(40002, &["attach", &pid]).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("belongs to uid 40001") && err.contains("same user, or root"),
        "{err}"
    );
    assert!(!p.maps_have_livetrace());
    // Its own user may attach (no privilege needed), when it can read the
    // library.
    let readable = preload_lib().ancestors().all(|d| {
        std::fs::metadata(d).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o005 == 0o005
        })
    });
    if readable {
        let o = cli_as(40001, &["attach", &pid]).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(p.maps_have_livetrace());
        let o = cli_as(40001, &["detach", &pid]).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!p.maps_have_livetrace());
    } else {
        eprintln!(
            "SKIPPED as the same user: {} is not readable by others",
            preload_lib().display()
        );
    }
    // Root may attach to anyone's process.
    let a = p.ok(&["attach", &pid]);
    assert!(a.contains("loaded into process"), "{a}");
    p.ok(&["detach", &pid]);
    assert!(!p.maps_have_livetrace());
    p.assert_c_unharmed();
}

/// Attach and detach over and over while the program runs and creates
/// threads without pause (sized to about a minute on 2 cores;
/// `LIVETRACE_SOAK_SECS` runs longer). Each stop of the process finds a
/// thread inside `clone3` (where ptrace reports the new thread), new
/// threads with glibc's all-blocking creation mask, threads exiting as
/// they are seized.
#[test]
fn attach_detach_torture() {
    let soak = std::env::var("LIVETRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let mut cmd = Command::new(gcc_target());
    cmd.arg("fast");
    let mut p = Program::start_cmd(cmd);
    let pid = p.pid_s();
    let out = TempDir::new("torture-out");
    std::fs::create_dir_all(out.path()).unwrap();
    let trace_out = out.path().join("t.txt");
    let trace_out = trace_out.to_str().unwrap();
    let t0 = Instant::now();
    let mut rounds = 0;
    loop {
        let done = match soak {
            Some(s) => t0.elapsed() >= Duration::from_secs(s),
            None => rounds >= 100,
        };
        if done {
            break;
        }
        p.ok(&["attach", &pid]);
        if rounds % 10 == 0 {
            let tracer = ["graph", "function", "profile"][(rounds / 10) % 3];
            let mut args = vec![
                "trace", &pid, "-f", "work_*", "-t", tracer, "-d", "100ms", "-o", trace_out,
            ];
            // Small files: the newest records only (the profile keeps a
            // table, not records).
            if tracer != "profile" {
                args.extend(["--flight", "--buffer", "1024"]);
            }
            p.ok(&args);
        }
        p.ok(&["detach", &pid]);
        assert!(!p.maps_have_livetrace(), "round {rounds}");
        rounds += 1;
        if rounds % 20 == 0 {
            p.assert_c_unharmed();
        }
    }
    let s = p.assert_c_unharmed();
    eprintln!("{rounds} attach/detach rounds in {:?}: {s}", t0.elapsed());
}

/// A session still tracing when `detach` comes, whose stop is refused for
/// a while (a thread blocks SIGTRAP and every real-time signal behind the
/// C library's back, as a thread being created does for a moment):
/// detaching retries until it can take the tracer off, and unloads.
#[test]
fn detach_outlasts_a_transient_refusal() {
    let mut p = Program::start(gcc_target());
    let pid = p.pid_s();
    p.ok(&["attach", &pid]);
    let out = TempDir::new("refusal-out");
    std::fs::create_dir_all(out.path()).unwrap();
    let file = out.path().join("t.json");
    let mut trace = Command::new(CLI)
        .args(["trace", &pid, "-f", "work_*", "-t", "function", "-d", "60s"])
        .args(["--flight", "--buffer", "1024", "-o"])
        .arg(&file)
        .env("LIVETRACE_SOCKET_DIR", p.socket_dir.path())
        .env("LIVETRACE_PRELOAD_LIB", preload_lib())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Tracing: work_item is enabled.
    let t0 = Instant::now();
    loop {
        let ls = p.ok(&["ls", &pid, "work_item", "--enabled", "--no-attach"]);
        if ls.lines().any(|l| l.starts_with("work_item")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never traced:\n{ls}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = p.ask("block 1500");
    assert!(b.starts_with("blocking tid="), "{b}");
    let d = p.ok(&["detach", &pid]);
    assert!(d.contains("unloaded"), "{d}");
    assert!(!p.maps_have_livetrace());
    let _ = trace.kill();
    let _ = trace.wait();
    p.assert_c_unharmed();
}

/// A program built without any site: `trace` attaches, gives the functions
/// a site by prologue relocation and traces them (with `--no-relocate` it
/// does not even attach); `detach` gives the functions their bytes back
/// before unloading, and the program runs on with its results right.
#[test]
fn a_program_without_sites_is_traced_by_relocation_and_left_as_it_was() {
    let plain = build("norelocsites", "gcc", &[]);
    let mut p = Program::start(&plain);
    let pid = p.pid_s();
    let refused = p.cli(&[
        "trace",
        &pid,
        "--no-relocate",
        "-f",
        "work_item",
        "-d",
        "100ms",
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("no traceable functions yet"), "{err}");
    assert!(!p.maps_have_livetrace());
    let out = p.ok(&[
        "trace",
        &pid,
        "-t",
        "function",
        "-f",
        "work_item",
        "-d",
        "300ms",
    ]);
    assert!(out.contains("work_item"), "{out}");
    // Every tracer: the graph tracer hooks the returns of functions
    // relocated from a gcc -O2 build.
    let graph = p.ok(&["trace", &pid, "-t", "graph", "-f", "work_*", "-d", "300ms"]);
    assert!(
        graph.contains("work_item() {") || graph.contains("work_item();"),
        "{graph:.2000}"
    );
    let profile = p.ok(&[
        "trace", &pid, "-t", "profile", "-f", "work_*", "-d", "300ms",
    ]);
    assert!(profile.contains("work_item"), "{profile}");
    p.ok(&["detach", &pid]);
    assert!(!p.maps_have_livetrace());
    // The program keeps calling the function whose entry was patched.
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.assert_c_unharmed();
}
