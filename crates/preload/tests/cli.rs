//! The `livetrace` command on C programs: attaching to a running one
//! through the control socket liblivetrace.so starts, and recording one
//! from its start.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{cli, command, output, read, scratch, socket_dir};

/// Kills the traced program however the test ends.
struct Program(std::process::Child);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn livetrace(args: &[&str]) -> common::Output {
    let mut cmd = Command::new(cli());
    cmd.args(args)
        .env("LIVETRACE_SOCKET_DIR", socket_dir())
        .env("LIVETRACE_PRELOAD_LIB", common::lib())
        .env_remove("LD_PRELOAD");
    output(cmd)
}

/// The C worker of `variant`, running under the preload library for two
/// minutes, and its pid once it says it is ready.
fn start_worker(variant: &str) -> (Program, String) {
    let mut cmd = command(variant, "worker", &["run", "120"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut program = Program(cmd.spawn().expect("starting the worker"));
    let mut line = String::new();
    BufReader::new(program.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready pid=")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (program, pid)
}

#[test]
fn cli_traces_a_running_c_program() {
    let (mut program, pid) = start_worker("gcc");

    let ps = livetrace(&["ps"]);
    ps.assert_ok();
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(pid.as_str())),
        "{ps}"
    );

    let ls = livetrace(&["ls", &pid, "work_*"]);
    ls.assert_ok();
    for f in ["work_item", "work_parse", "work_hash"] {
        assert!(ls.stdout.contains(f), "{ls}");
    }
    assert!(!ls.stdout.contains("unconverted"), "{ls}");
    // C functions get their source line from the program's DWARF.
    let row = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("work_item "))
        .unwrap();
    assert!(row.contains("worker.c:"), "{row}");

    let dir = scratch("cli");
    let graph = dir.join("graph.txt");
    let out = livetrace(&[
        "trace",
        &pid,
        "-t",
        "graph",
        "-f",
        "work_*",
        "-f",
        "plugin_*",
        "-d",
        "400ms",
        "-o",
        graph.to_str().unwrap(),
    ]);
    out.assert_ok();
    let text = read(&graph);
    assert!(text.starts_with("# tracer: function_graph"), "{text:.400}");
    assert!(text.contains("work_item() {"), "{text:.2000}");
    assert!(text.contains("plugin_helper();"), "{text:.2000}");

    let json = dir.join("function.json");
    let out = livetrace(&[
        "trace",
        &pid,
        "-f",
        "work_item",
        "-d",
        "300ms",
        "-o",
        json.to_str().unwrap(),
    ]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&read(&json)).expect("valid JSON");
    assert!(v.to_string().contains("work_item"));

    // Each command's session ended with it: every site is a NOP again.
    let enabled = livetrace(&["ls", &pid, "--enabled"]);
    enabled.assert_ok();
    assert!(!enabled.stdout.contains("work_"), "{enabled}");
    assert!(program.0.try_wait().unwrap().is_none(), "the worker died");
}

/// `livetrace record` runs the program with `LIVETRACE=1` and the recording
/// spec; under `LD_PRELOAD=liblivetrace.so` the control-socket crate's
/// constructor inside the library records it from before `main` to exit.
#[test]
/// `livetrace record -- ./prog` preloads liblivetrace.so by itself into a
/// program that does not link livetrace.
fn cli_records_a_c_program_run_with_ld_preload() {
    let dir = scratch("record");
    let out_path = dir.join("record.txt");
    let worker = common::examples().join("gcc/worker");
    let out = livetrace(&[
        "record",
        "-t",
        "graph",
        "-f",
        "work_*",
        "-o",
        out_path.to_str().unwrap(),
        "--",
        worker.to_str().unwrap(),
        "run",
        "1",
    ]);
    out.assert_ok();
    let text = read(&out_path);
    assert!(text.contains("work_item() {"), "{text:.2000}");
    assert!(text.contains("work_hash();"), "{text:.2000}");
}

/// A C program compiled without any site: `ls` lists the functions a filter
/// could relocate as `relocatable`, `trace -f` gives the functions it names
/// a site by prologue relocation, `ls` then shows them `relocated` (at their
/// own entry, with their source line), and `ls --why-not` lists what cannot
/// be relocated.
#[test]
fn cli_traces_a_c_program_built_without_sites() {
    let (mut program, pid) = start_worker("plain");

    // Before: no site, but listed as what a trace would relocate (nothing
    // is touched by listing).
    let before = livetrace(&["ls", &pid, "work_item"]);
    before.assert_ok();
    let row = before
        .stdout
        .lines()
        .find(|l| l.starts_with("work_item "))
        .unwrap_or_else(|| panic!("{before}"));
    assert!(row.contains("relocatable"), "{row}");
    assert!(!before.stdout.contains("relocated"), "{before}");

    let why = livetrace(&["ls", &pid, "--why-not", "work_*"]);
    why.assert_ok();
    assert!(
        !why.stdout.lines().any(|l| l.starts_with("work_item ")),
        "work_item is relocatable: {why}"
    );

    let dir = scratch("plain");
    let txt = dir.join("function.txt");
    // With --no-relocate a function without a site is not traced (the
    // filter matches nothing)...
    let refused = livetrace(&[
        "trace",
        &pid,
        "--no-relocate",
        "-f",
        "work_item",
        "-d",
        "100ms",
    ]);
    assert_ne!(refused.code, Some(0), "{refused}");
    assert!(
        refused.stderr.contains("no traceable function") || refused.stderr.contains("matches no"),
        "{refused}"
    );
    // ...by default, it is relocated.
    let out = livetrace(&[
        "trace",
        &pid,
        "-t",
        "function",
        "-f",
        "work_item",
        "-d",
        "300ms",
        "-o",
        txt.to_str().unwrap(),
    ]);
    out.assert_ok();
    let text = read(&txt);
    assert!(text.contains("work_item"), "{text:.400}");

    let after = livetrace(&["ls", &pid, "work_item"]);
    after.assert_ok();
    let row = after
        .stdout
        .lines()
        .find(|l| l.starts_with("work_item "))
        .unwrap_or_else(|| panic!("{after}"));
    assert!(
        row.contains("relocated") && row.contains("worker.c:"),
        "{row}"
    );
    assert!(program.0.try_wait().unwrap().is_none(), "the worker died");
}
