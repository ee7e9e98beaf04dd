//! End to end: the `livetrace` command against the demo target, a real
//! multithreaded process with `#[traced]` functions and the control socket.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn f(name: &str) -> String {
    format!("{CRATE}::{name}")
}

#[test]
fn usage_and_help() {
    let dir = TempDir::new("usage");
    let o = cli(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "no command is a usage error");
    let o = cli(dir.path(), &["trace"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(dir.path(), &["trace", "1", "--tracer", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(dir.path(), &["trace", "1", "-o", "x.bin"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    for cmd in [
        "ps", "ls", "trace", "report", "patch", "record", "attach", "detach",
    ] {
        let o = cli(dir.path(), &[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: livetrace"));
    }
    // No such process: a failure, not a usage error.
    let o = cli(dir.path(), &["ls", "999999999"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("runs no livetrace control socket")
            && stderr(&o).contains("no process 999999999"),
        "{}",
        stderr(&o)
    );
    // ps lists processes with livetrace or sites: at least its header.
    let o = cli(dir.path(), &["ps"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("     PID  LIVETRACE"));
}

#[test]
fn ps_and_ls() {
    let t = Target::start();
    let ps = t.ok(&["ps"]);
    let row = ps
        .lines()
        .find(|l| l.trim_start().starts_with(&t.pid_s()))
        .unwrap_or_else(|| panic!("pid {} not in ps:\n{ps}", t.pid));
    assert!(row.contains("livetrace-demo-target"), "{row}");

    // A dead process's socket is not listed (and is tidied away).
    let stale = t.dir.path().join("999999999.sock");
    std::fs::write(&stale, b"").unwrap();
    assert!(!t.ok(&["ps"]).contains("999999999"));
    assert!(!stale.exists());

    let ls = t.ok(&["ls", &t.pid_s(), "--signatures"]);
    for (name, sig) in [
        ("compute", "fn(u64) -> u64"),
        ("compute_v2", "fn(u64) -> u64"),
        ("compute_narrow", "fn(u32) -> u32"),
        ("work::step", "fn(u64) -> u64"),
        ("work::leaf", "fn(u64) -> u64"),
    ] {
        let line = ls
            .lines()
            .find(|l| l.split_whitespace().next() == Some(f(name).as_str()))
            .unwrap_or_else(|| panic!("{name} not listed:\n{ls}"));
        assert!(line.contains("nop"), "{line}");
        assert!(line.contains("demo_target.rs:"), "{line}");
        assert!(line.ends_with(sig), "{line}");
        assert!(line.contains("0x"), "{line}");
    }
    let generic = ls.lines().find(|l| l.contains("::identity")).unwrap();
    assert!(
        generic.ends_with(" -"),
        "generic fns have no signature: {generic}"
    );

    let work = t.ok(&["ls", &t.pid_s(), "*::work::*"]);
    assert_eq!(work.lines().count(), 3, "{work}");
    let o = t.cli(&["ls", &t.pid_s(), "*no_such_fn*"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(t.enabled().is_empty());
}

fn check_output(path: &Path, format: &str) {
    match format {
        "txt" => {
            let s = std::fs::read_to_string(path).unwrap();
            assert!(s.starts_with("# tracer: "), "{s}");
            assert!(s.contains("work::leaf"), "{s}");
        }
        "json" => {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let events = v["traceEvents"].as_array().expect("traceEvents");
            assert!(
                events.iter().any(|e| e["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("work::leaf"))),
                "no leaf events in {}",
                path.display()
            );
        }
        "folded" => {
            let s = std::fs::read_to_string(path).unwrap();
            assert!(!s.is_empty());
            for l in s.lines() {
                let (stack, n) = l.rsplit_once(' ').unwrap();
                assert!(!stack.is_empty());
                n.parse::<u64>().unwrap();
            }
            assert!(s.contains("work::leaf"), "{s}");
        }
        "svg" => {
            let s = std::fs::read_to_string(path).unwrap();
            assert!(
                s.starts_with("<?xml") || s.starts_with("<svg"),
                "{}",
                &s[..50]
            );
            assert!(s.contains("</svg>"));
        }
        "uftrace.data" => {
            for file in ["info", "task.txt"] {
                assert!(
                    path.join(file).exists(),
                    "{file} missing in {}",
                    path.display()
                );
            }
            let dat = std::fs::read_dir(path)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
                .count();
            assert!(dat >= 2, "per-thread .dat files");
            // The real proof, where the tool is installed (CI installs it
            // for livetrace-output's tests).
            if let Ok(o) = Command::new("uftrace")
                .args(["replay", "-d"])
                .arg(path)
                .output()
            {
                assert!(
                    o.status.success(),
                    "uftrace replay: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert!(String::from_utf8_lossy(&o.stdout).contains("work::leaf"));
            }
        }
        other => unreachable!("{other}"),
    }
}

#[test]
fn trace_every_tracer_and_format() {
    let t = Target::start();
    let out = TempDir::new("out");
    std::fs::create_dir_all(out.path()).unwrap();
    let pid = t.pid_s();
    for tracer in ["function", "graph"] {
        for format in ["txt", "json", "folded", "svg", "uftrace.data"] {
            let path = out.path().join(format!("{tracer}.{format}"));
            let o = t.cli(&[
                "trace",
                &pid,
                "-f",
                "*::work::*",
                "--tracer",
                tracer,
                "--duration",
                "300ms",
                "-o",
                path.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{tracer} {format}: {}", stderr(&o));
            assert!(stderr(&o).contains("events written to"), "{}", stderr(&o));
            check_output(&path, format);
        }
    }
    // --format overrides the name.
    let path = out.path().join("graph.out");
    t.ok(&[
        "trace",
        &pid,
        "-f",
        "*::work::*",
        "-t",
        "graph",
        "-d",
        "200ms",
        "--format",
        "json",
        "-o",
        path.to_str().unwrap(),
    ]);
    check_output(&path, "json");

    // The profile tracer writes a table, or rows as JSON.
    let path = out.path().join("profile.txt");
    t.ok(&[
        "trace",
        &pid,
        "-t",
        "profile",
        "-d",
        "300ms",
        "-o",
        path.to_str().unwrap(),
    ]);
    let table = std::fs::read_to_string(&path).unwrap();
    assert!(
        table.contains("Total time") && table.contains("work::step"),
        "{table}"
    );
    let path = out.path().join("profile.json");
    t.ok(&[
        "trace",
        &pid,
        "-t",
        "profile",
        "-d",
        "300ms",
        "-o",
        path.to_str().unwrap(),
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == f("work::leaf") && r["calls"].as_u64().unwrap() > 0));
    // A profile has no stacks to draw: refused before attaching.
    let o = t.cli(&[
        "trace",
        &pid,
        "-t",
        "profile",
        "-o",
        out.path().join("p.svg").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));

    // Streaming text to the terminal (a pipe here), then detached.
    let s = t.ok(&["trace", &pid, "-f", "*::work::*", "-d", "400ms"]);
    assert!(s.starts_with("# tracer: function"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.contains("work::leaf <-") && l.contains("work::step")),
        "{s}"
    );
    let s = t.ok(&[
        "trace",
        &pid,
        "-f",
        f("work::step").as_str(),
        "-t",
        "graph",
        "-d",
        "400ms",
    ]);
    assert!(
        s.contains("# tracer: function_graph") && s.contains("work::step"),
        "{s}"
    );
    t.wait_all_nop();

    // A pattern that matches nothing changes nothing.
    let o = t.cli(&["trace", &pid, "-f", "*nothing_here*", "-d", "100ms"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("matches no traceable function"),
        "{}",
        stderr(&o)
    );
    // Addresses are accepted only when they are sites.
    let o = t.cli(&["trace", &pid, "-f", "0x1000", "-d", "100ms"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not the address of a traceable function"),
        "{}",
        stderr(&o)
    );
    t.wait_all_nop();
}

#[test]
fn report_once_and_watch() {
    let t = Target::start();
    let pid = t.pid_s();
    let s = t.ok(&["report", &pid, "-d", "500ms"]);
    assert!(s.contains("Total time"), "{s}");
    for name in ["work::step", "work::leaf", "compute"] {
        assert!(s.contains(&f(name)), "{name} missing:\n{s}");
    }
    let s = t.ok(&["report", &pid, "-f", "*::work::leaf", "-d", "300ms"]);
    assert!(s.contains("work::leaf") && !s.contains("work::step"), "{s}");

    let child = t.spawn_cli(&["report", &pid, "--watch", "--interval", "200ms"]);
    std::thread::sleep(Duration::from_millis(1200));
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.matches("livetrace report: pid").count() >= 2,
        "watch refreshes:\n{s}"
    );
    assert!(!s.contains("\x1b["), "no ANSI codes into a pipe");
    t.wait_all_nop();
}

#[test]
fn patch_and_revert() {
    let t = Target::start();
    let pid = t.pid_s();
    let n = t.wait_line(0, |l| l == "compute(21) = 42");

    let o = t.cli(&["patch", &pid, &f("compute"), &f("compute_v2")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("patched"));
    // The patch outlives the command.
    let n = t.wait_line(n, |l| l == "compute(21) = 1042");
    let en = t.enabled();
    assert_eq!(en.len(), 1, "{en:?}");
    assert!(
        en[0].contains("livepatch:") && en[0].contains("regs caller"),
        "{en:?}"
    );

    // The same function cannot be patched twice.
    let o = t.cli(&["patch", &pid, &f("compute"), &f("compute_v2")]);
    assert_eq!(o.status.code(), Some(1));

    let o = t.cli(&["patch", &pid, &f("compute"), &f("compute_v2"), "--revert"]);
    assert!(o.status.success(), "{}", stderr(&o));
    t.wait_line(n, |l| l == "compute(21) = 42");
    t.wait_all_nop();

    // Refusals name both functions.
    let o = t.cli(&["patch", &pid, &f("compute"), &f("compute_narrow")]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("signatures differ")
            && e.contains(&f("compute"))
            && e.contains(&f("compute_narrow"))
            && e.contains("fn(u32) -> u32"),
        "{e}"
    );
    // The same types spelled another way are the same signature.
    let o = t.cli(&["patch", &pid, &f("compute"), &f("compute_spelled")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let n = t.wait_line(n, |l| l == "compute(21) = 2042");
    let o = t.cli(&[
        "patch",
        &pid,
        &f("compute"),
        &f("compute_spelled"),
        "--revert",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    t.wait_line(n, |l| l == "compute(21) = 42");
    let o = t.cli(&["patch", &pid, &f("compute"), &f("identity")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no known signature"), "{}", stderr(&o));
    let o = t.cli(&["patch", &pid, &f("compute"), "no::such::fn"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no #[traced] function named no::such::fn"));
    let o = t.cli(&["patch", &pid, &f("compute"), &f("compute_v2"), "--revert"]);
    assert_eq!(o.status.code(), Some(1), "nothing to revert");
    assert!(t.enabled().is_empty());
}

#[test]
fn ctrl_c_detaches() {
    let t = Target::start();
    let pid = t.pid_s();
    // Streaming to a pipe, and writing a file: both detach on SIGINT.
    let out = TempDir::new("sigint");
    std::fs::create_dir_all(out.path()).unwrap();
    let file = out.path().join("t.json");
    for args in [
        vec!["trace", &pid, "-f", "*", "-t", "graph"],
        vec!["trace", &pid, "-f", "*", "-o", file.to_str().unwrap()],
    ] {
        let child = t.spawn_cli(&args);
        wait_for(
            Duration::from_secs(15),
            || t.enabled().len() >= 5,
            || "tracing never started".into(),
        );
        // Let the target run through its functions while traced, so the
        // written file has events to check.
        std::thread::sleep(Duration::from_millis(300));
        signal(&child, libc::SIGINT);
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        t.wait_all_nop();
    }
    check_output(&file, "json");
}

#[test]
fn killed_client_detaches() {
    let t = Target::start();
    let pid = t.pid_s();
    let mut child = t.spawn_cli(&["trace", &pid, "-f", "*::work::*", "-t", "graph"]);
    wait_for(
        Duration::from_secs(15),
        || t.enabled().len() == 2,
        || "tracing never started".into(),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    t.wait_all_nop();
    // The process is unaffected: still running, still serving.
    let n = t.line_count();
    t.wait_line(n, |l| l == "compute(21) = 42");
    assert!(t.ok(&["ls", &pid]).contains("work::step"));
}

#[test]
fn record_from_start_to_exit() {
    let dir = TempDir::new("record");
    std::fs::create_dir_all(dir.path()).unwrap();
    let json = dir.path().join("rec.json");
    let o = cli(
        dir.path(),
        &[
            "record",
            "-f",
            "*::work::*",
            "-t",
            "graph",
            "-o",
            json.to_str().unwrap(),
            "--",
            TARGET,
            "--iterations",
            "40",
            "--threads",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    check_output(&json, "json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // 2 threads x 40 iterations x (step + 2 leaves), entry and exit each:
    // nothing lost between start-up and exit.
    let leaves = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("work::leaf"))
                && e["ph"] == "X"
        })
        .count();
    assert_eq!(leaves, 2 * 40 * 2, "every leaf call recorded");

    let txt = dir.path().join("rec.txt");
    let o = cli(
        dir.path(),
        &[
            "record",
            "-t",
            "profile",
            "-o",
            txt.to_str().unwrap(),
            "--",
            TARGET,
            "--iterations",
            "20",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = std::fs::read_to_string(&txt).unwrap();
    assert!(
        table.contains(&f("compute")) && table.contains("Total time"),
        "{table}"
    );

    // A bad filter: the program runs, untraced, and the command says why.
    let o = cli(
        dir.path(),
        &[
            "record",
            "-f",
            "*nothing*",
            "-o",
            json.to_str().unwrap(),
            "--",
            TARGET,
            "--iterations",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("matches no traceable function"),
        "{}",
        stderr(&o)
    );

    // A program without livetrace gets the preload library (when it is
    // built next to the command). One built without a single site has its
    // functions relocated (`true` and the libc it runs, from its first
    // call on)...
    let o = cli(
        dir.path(),
        &["record", "-o", json.to_str().unwrap(), "--", "true"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["traceEvents"].as_array().unwrap().len() > 100,
        "{text:.400}"
    );
    // ...but with --no-relocate it has no traceable function: a clear
    // error.
    let o = cli(
        dir.path(),
        &[
            "record",
            "--no-relocate",
            "-o",
            json.to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("matches no traceable function")
            || err.contains("preload library")
            || err.contains("left no recording"),
        "{err}"
    );
    assert_eq!(
        cli(dir.path(), &["record", "--", "true"]).status.code(),
        Some(2)
    );
}

#[test]
fn explicit_serve_and_socket_lifetime() {
    use std::os::unix::fs::PermissionsExt;
    let mut t = Target::start_with(&["--serve", "--iterations", "1500"], &[]);
    let sock = t.socket();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mode = std::fs::metadata(t.dir.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "directory mode {mode:o}");
    assert!(t.ok(&["ls", &t.pid_s()]).contains("compute"));
    // A normal exit removes the socket (atexit).
    let status = t.child.wait().unwrap();
    assert!(status.success());
    assert!(!sock.exists(), "socket left behind after exit");
    let _ = Command::new("true").status();
}

/// `livetrace trace PID … | head`: once the reader has what it wants and
/// closes the pipe, the command stops tracing and ends quietly with
/// success (as `rg … | head` does), and the session is gone.
#[test]
fn a_closed_pipe_ends_the_trace_quietly() {
    use std::io::{BufRead, BufReader};
    let t = Target::start();
    let pid = t.pid_s();
    let mut child = Command::new(CLI)
        .args(["trace", &pid, "-f", "*::work::*", "-t", "function"])
        .env("LIVETRACE_SOCKET_DIR", t.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Past the header, into the events.
        for _ in 0..20 {
            lines.next().expect("a line").unwrap();
        }
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.wait_all_nop();
}
