//! The graph tracer in what real C and C++ programs do to their stacks
//! (tests/c/runtimes.cc, built with g++ and compiler sites, tracing itself
//! through the C API), with and without the fast paths:
//!
//! - `pthread_exit` and `pthread_cancel` in a thread whose traced frames
//!   hold C++ objects: glibc unwinds with the libgcc_s it loads itself, and
//!   every destructor must run;
//! - `longjmp` out of traced frames, then a backtrace (glibc's) and a C++
//!   exception through traced frames;
//! - coroutines switched with `swapcontext` inside traced functions, on
//!   adjacent stacks, one of them throwing through its traced frames.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{lib, output, scratch, socket_dir};

fn program() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = scratch("runtimes").join("runtimes");
        let out = Command::new("g++")
            .args([
                "-O2",
                "-g",
                "-fpatchable-function-entry=5",
                "-pthread",
                "-I",
            ])
            .arg(here.join("include"))
            .arg(here.join("tests/c/runtimes.cc"))
            .arg("-o")
            .arg(&bin)
            .output()
            .expect("running g++");
        assert!(
            out.status.success(),
            "g++ failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

fn run(mode: &str, rounds: u32) {
    for fast in [true, false] {
        let mut cmd = Command::new(program());
        cmd.args([mode, &rounds.to_string()])
            .env("LD_PRELOAD", lib())
            .env("LIVETRACE_SOCKET_DIR", socket_dir())
            .env("LIVETRACE_SERVE", "0")
            .env_remove("LIVETRACE")
            .env_remove("LIVETRACE_RECORD");
        if fast {
            cmd.env_remove("LIVETRACE_NO_FAST_PATH");
        } else {
            cmd.env("LIVETRACE_NO_FAST_PATH", "1");
        }
        let out = output(cmd);
        out.assert_ok();
        assert!(out.num("events") > 0, "{mode}, fast path {fast}: {out}");
    }
}

#[test]
fn pthread_exit_runs_every_destructor_above_traced_frames() {
    run("exit", 20);
}

#[test]
fn pthread_cancel_runs_every_destructor_above_traced_frames() {
    run("cancel", 20);
}

#[test]
fn longjmp_out_of_traced_frames_then_a_backtrace_and_an_exception() {
    run("longjmp", 2000);
}

#[test]
fn swapcontext_coroutines_with_an_exception_in_one() {
    run("coro", 200);
}
