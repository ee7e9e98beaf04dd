//! Under a debugger the engine refuses to patch (a debugger would stop on
//! its `int3`s and resume the thread one byte into the instruction), says
//! why and what to do, and the program runs on unharmed; under a tracer
//! that passes every signal on (`strace`), batches run when allowed with
//! `LIVETRACE_ALLOW_PTRACE=1`.
//!
//! The test runs this very binary under `gdb` and `strace`, as the child
//! test `traced_child` (which does nothing unless `LT_TRACED_CHILD` is set).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use livetrace_fixtures as fx;
use livetrace_poke::{Batch, Error, Insn};

/// Flips 100 fixture sites 50 times while a thread calls them, and prints
/// what happened: `CHILD ok batches=N` or `CHILD refused: <error>`.
#[test]
fn traced_child() {
    if std::env::var_os("LT_TRACED_CHILD").is_none() {
        return;
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(SeqCst) {
                for i in 6000..6100 {
                    assert_eq!(fx::call(i), fx::value_of(i));
                }
            }
        });
        let mut n = 0;
        for k in 0..50 {
            let mut b = Batch::new();
            for i in 6000..6100 {
                let (old, new) = if k % 2 == 0 {
                    (Insn::Nop, Insn::Call(fx::count_any_addr()))
                } else {
                    (Insn::Call(fx::count_any_addr()), Insn::Nop)
                };
                b.queue(fx::site(i), old, new).unwrap();
            }
            match b.apply() {
                Ok(_) => n += 1,
                Err(e @ Error::Traced { .. }) => {
                    println!("CHILD refused: {e}");
                    stop.store(true, SeqCst);
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, SeqCst);
        println!("CHILD ok batches={n}");
    });
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn child_args() -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    vec![
        exe.to_string_lossy().into_owned(),
        "traced_child".into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

#[test]
fn under_gdb_patching_is_refused_and_the_program_is_unharmed() {
    if !have("gdb") {
        eprintln!("SKIPPED: gdb is not installed");
        assert!(std::env::var_os("CI").is_none(), "CI installs gdb");
        return;
    }
    let out = Command::new("gdb")
        .args(["-q", "-batch", "-nx", "-ex", "run", "--args"])
        .args(child_args())
        .env("LT_TRACED_CHILD", "1")
        .env_remove("LIVETRACE_ALLOW_PTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CHILD refused: refusing to patch: the process is traced by pid"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(gdb)"), "the tracer is named: {stdout}");
    assert!(stdout.contains("Detach the debugger"), "{stdout}");
    assert!(stdout.contains("exited normally"), "{stdout}");
}

#[test]
fn under_strace_patching_runs_when_allowed() {
    if !have("strace") {
        eprintln!("SKIPPED: strace is not installed");
        assert!(std::env::var_os("CI").is_none(), "CI installs strace");
        return;
    }
    let run = |allow: bool| {
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-e", "trace=none", "-o", "/dev/null"])
            .args(child_args())
            .env("LT_TRACED_CHILD", "1");
        if allow {
            c.env("LIVETRACE_ALLOW_PTRACE", "1");
        } else {
            c.env_remove("LIVETRACE_ALLOW_PTRACE");
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stdout) = run(false);
    assert!(ok && stdout.contains("CHILD refused"), "{stdout}");
    let (ok, stdout) = run(true);
    assert!(ok && stdout.contains("CHILD ok batches=50"), "{stdout}");
}
