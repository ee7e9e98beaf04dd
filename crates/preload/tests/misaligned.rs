//! A gcc-built C program whose static function is entered with the stack
//! 8 bytes off the ABI's alignment (`-fipa-stack-alignment`, gcc's default
//! from -O1), traced with every tracer and through every trampoline the C
//! API and the command reach: the dedicated trampoline, the list caller,
//! the function tracer's fast path, the graph tracer's per-site stub and
//! its return hooks, and the Rust callbacks with the fast paths off.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{cli, lib, output, scratch, socket_dir};

/// tests/c/misaligned.c, built once with gcc -O2 and compiler sites.
fn program() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = scratch("misaligned").join("misaligned");
        let out = Command::new("gcc")
            .args(["-O2", "-g", "-fpatchable-function-entry=5", "-I"])
            .arg(here.join("include"))
            .arg(here.join("tests/c/misaligned.c"))
            .arg("-o")
            .arg(&bin)
            .output()
            .expect("running gcc");
        assert!(
            out.status.success(),
            "gcc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

fn command(args: &[&str], fast: bool) -> Command {
    let mut cmd = Command::new(program());
    cmd.args(args)
        .env("LD_PRELOAD", lib())
        .env("LIVETRACE_SOCKET_DIR", socket_dir())
        .env_remove("LIVETRACE")
        .env_remove("LIVETRACE_RECORD")
        .env_remove("LIVETRACE_VECTOR_STATE");
    if fast {
        cmd.env_remove("LIVETRACE_NO_FAST_PATH");
    } else {
        cmd.env("LIVETRACE_NO_FAST_PATH", "1");
    }
    cmd
}

#[test]
fn a_misaligned_static_function_traced_through_the_c_api() {
    for fast in [true, false] {
        let out = output(command(&["api"], fast));
        out.assert_ok();
        assert!(out.num("misaligned") > 0, "not entered misaligned:\n{out}");
        assert_eq!(out.num("dedicated"), 13500, "{out}");
        assert_eq!(out.num("list"), 13500 + 2 * 13500, "{out}");
        assert_eq!(out.num("function"), 13500, "{out}");
        assert_eq!(out.num("graph"), 2 * 13500, "{out}");
        assert_eq!(out.num("profile"), 1, "{out}");
    }
}

fn livetrace(args: &[&str]) -> common::Output {
    let mut cmd = Command::new(cli());
    cmd.args(args)
        .env("LIVETRACE_SOCKET_DIR", socket_dir())
        .env_remove("LD_PRELOAD");
    output(cmd)
}

#[test]
fn a_misaligned_static_function_traced_by_the_command() {
    for fast in [true, false] {
        let mut cmd = command(&["run", "80"], fast);
        // The program runs until its standard input ends.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the program");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .strip_prefix("ready pid=")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        // The control socket comes up in the background: wait for it.
        let sock = socket_dir().join(format!("{pid}.sock"));
        let t0 = std::time::Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "no control socket at {}",
                sock.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let dir = scratch(&format!("misaligned-cli-{fast}"));
        let report = livetrace(&["report", &pid, "-d", "1s"]);
        report.assert_ok();
        assert!(report.stdout.contains("leaf"), "{report}");
        for tracer in ["function", "graph", "profile"] {
            let path = dir.join(format!("{tracer}.txt"));
            let t = livetrace(&[
                "trace",
                &pid,
                "-t",
                tracer,
                "-f",
                "*",
                "-d",
                "300ms",
                "-o",
                path.to_str().unwrap(),
            ]);
            t.assert_ok();
            assert!(
                std::fs::read_to_string(&path).unwrap().contains("leaf"),
                "{tracer}: {t}"
            );
        }
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert!(status.success(), "the program failed ({status}):\n{rest}");
        let n: i64 = rest
            .trim()
            .strip_prefix("misaligned=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{rest}"));
        assert!(n > 0, "not entered misaligned");
    }
}
