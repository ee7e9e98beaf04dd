//! The C and C++ examples (examples/c) built with gcc (and clang) at test
//! time and run under `LD_PRELOAD=liblivetrace.so`, tracing themselves
//! through the C API (livetrace.h).

mod common;

use common::{command, output, read, run, scratch, want_clang};

/// Per work item: work_item, work_parse, work_hash, plugin_transform and
/// two plugin_helper calls; 3 threads × 200 items; plus 3 worker_main.
const CALLS: i64 = 3 * 200 * 6 + 3;

fn tracers_through_c_api(variant: &str) {
    let dir = scratch(&format!("tracers-{variant}"));

    // Function tracer: one event per call.
    let prefix = dir.join("function");
    let out = run(
        variant,
        "worker",
        &["trace", "function", prefix.to_str().unwrap()],
    );
    out.assert_ok();
    assert_eq!(out.num("work"), 3, "{out}");
    assert_eq!(out.num("plugin"), 2, "{out}");
    assert_eq!(out.num("work_item_calls"), 600, "{out}");
    assert_eq!(out.num("events"), CALLS, "{out}");
    assert!(out.stdout.contains("errors ok"), "{out}");
    let text = read(&prefix.with_extension("txt"));
    assert!(text.starts_with("# tracer: function"), "{text:.400}");
    assert!(
        text.contains(&format!("entries: {CALLS} in 3 threads")),
        "{text:.400}"
    );
    for f in [
        "work_item",
        "work_parse",
        "work_hash",
        "plugin_transform",
        "plugin_helper",
    ] {
        let n = text
            .lines()
            .filter(|l| l.contains(&format!(": {f} <-")))
            .count();
        let want = if f == "plugin_helper" { 1200 } else { 600 };
        assert_eq!(n, want, "{f} events in the function trace");
    }
    assert!(
        text.contains("plugin_helper <-plugin_transform"),
        "{text:.2000}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&read(&prefix.with_extension("json"))).expect("valid JSON");
    assert!(json.to_string().contains("plugin_transform"));
    assert!(dir.join("function.uftrace.data").is_dir());

    // Graph tracer: entry and exit of every call, nested.
    let prefix = dir.join("graph");
    let out = run(
        variant,
        "worker",
        &["trace", "graph", prefix.to_str().unwrap()],
    );
    out.assert_ok();
    assert_eq!(out.num("events"), 2 * CALLS, "{out}");
    let text = read(&prefix.with_extension("txt"));
    assert!(text.starts_with("# tracer: function_graph"), "{text:.400}");
    assert!(text.contains("worker_main() {"), "{text:.2000}");
    assert!(text.contains("work_item() {"), "{text:.2000}");
    assert!(text.contains("plugin_helper();"), "{text:.2000}");
    let folded = read(&prefix.with_extension("folded"));
    assert!(
        folded.contains("worker_main;work_item;plugin_transform;plugin_helper "),
        "{folded}"
    );
    assert!(read(&prefix.with_extension("svg")).contains("<svg"));
    let profile = read(&dir.join("graph.profile.txt"));
    let helper = profile
        .lines()
        .find(|l| l.ends_with(" plugin_helper"))
        .unwrap_or_else(|| panic!("{profile}"));
    assert!(helper.split_whitespace().any(|w| w == "1200"), "{helper}");

    // Profile tracer: a table, no events.
    let prefix = dir.join("profile");
    let out = run(
        variant,
        "worker",
        &["trace", "profile", prefix.to_str().unwrap()],
    );
    out.assert_ok();
    let table = read(&prefix.with_extension("txt"));
    assert!(table.contains("work_hash"), "{table}");
}

#[test]
fn gcc_sleds_traced_with_function_and_graph_tracers() {
    tracers_through_c_api("gcc");
}

#[test]
fn clang_nops_traced_with_function_and_graph_tracers() {
    if want_clang() {
        tracers_through_c_api("clang");
    }
}

#[test]
fn mcount_sites_traced_with_function_and_graph_tracers() {
    tracers_through_c_api("mcount");
}

/// The constructor finds every compiler site of the executable and
/// converts gcc's sleds before `main`; the plugin's are converted when it
/// is loaded, through the dlopen interposer.
#[test]
fn constructor_converts_sleds_and_dlopen_adds_sites() {
    for (variant, converts) in [("gcc", true), ("mcount", false)] {
        let dir = scratch(&format!("ctor-{variant}"));
        let mut cmd = command(variant, "worker", &["trace", "function"]);
        cmd.arg(dir.join("t"))
            .env("LIVETRACE_VERBOSE", "1")
            .env("LIVETRACE_SERVE", "0");
        let out = output(cmd);
        out.assert_ok();
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains("compiler site(s)"))
            .unwrap_or_else(|| panic!("{out}"));
        let nums: Vec<i64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(nums[0] >= 20, "{line}");
        assert_eq!(nums[1], if converts { nums[0] } else { 0 }, "{line}");
        assert!(
            out.stderr
                .contains("dlopen: 1 new object(s), 2 site(s), 2 converted, 0 failed"),
            "{out}"
        );
    }
}

/// The worker loads its plugins by bare name, found through its RUNPATH
/// `$ORIGIN`: the interposed dlopen must present the program, not
/// liblivetrace.so, as the caller, whether livetrace is on or off.
#[test]
fn dlopen_keeps_the_callers_runpath() {
    for preload in ["1", "0"] {
        let mut cmd = command("gcc", "worker", &["run", "1"]);
        cmd.env("LIVETRACE_PRELOAD", preload)
            .env("LIVETRACE_SERVE", "0");
        let out = output(cmd);
        out.assert_ok();
        assert!(out.num("plugin_calls") > 0, "{out}");
    }
}

/// An lt_ops callback receives every call while registered and none after
/// lt_ops_unregister returns; calls into livetrace from inside it are
/// refused at once (LT_ESTATE), also while another thread's unregister
/// waits for the callbacks to finish (waiting there would deadlock).
#[test]
fn ops_callback_sees_every_call_and_none_after_unregister() {
    let out = run("gcc", "worker", &["ops"]);
    out.assert_ok();
    assert_eq!(out.num("count"), 1500, "{out}");
    assert_eq!(out.num("refused"), 1500, "{out}");
    assert!(out.num("calls") > 0, "{out}");
    assert_eq!(out.field("name"), "work_hash", "{out}");
    assert_eq!(out.num("later"), 0, "{out}");
}

/// dlopen and dlclose of a traced library while tracing is on: pinned while
/// its sites are enabled, unloaded when tracing stops, its records dropped,
/// nothing ever called in its old range; loaded again, traceable again;
/// and a load/unload loop racing tracing on and off.
#[test]
fn dlclose_of_a_traced_library() {
    let out = run("gcc", "worker", &["dlclose"]);
    out.assert_ok();
    assert_eq!(out.num("pinned"), 1, "{out}");
    assert_eq!(out.num("traced_events"), 1800, "{out}");
    assert_eq!(out.num("unloaded"), 1, "{out}");
    assert_eq!(out.num("records_after_close"), 0, "{out}");
    assert_eq!(out.num("calls_into_closed"), 0, "{out}");
    assert_eq!(out.num("events"), 900, "{out}");
    assert_eq!(out.num("gone"), 1, "{out}");
    assert_eq!(out.num("records"), 0, "{out}");
}

/// A library whose constructor loads another: the outer dlopen's
/// interposer converts both before the program gets its handle (the inner
/// one was passed through and remembered), and both unload on dlclose.
#[test]
fn dlopen_nested_in_a_constructor() {
    let mut cmd = command("gcc", "worker", &["nested"]);
    cmd.env("LIVETRACE_VERBOSE", "1")
        .env("LIVETRACE_SERVE", "0");
    let out = output(cmd);
    out.assert_ok();
    assert_eq!(out.num("functions"), 4, "{out}");
    assert_eq!(out.num("events"), 60, "{out}");
    assert_eq!(out.num("gone"), 1, "{out}");
    assert!(
        out.stderr
            .contains("dlopen: 2 new object(s), 6 site(s), 4 converted, 0 failed"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("dlopen: nested or missed objects: 2 converted, 0 failed"),
        "{out}"
    );
}

/// A library whose constructor starts a thread that runs the library's own
/// functions: the dlopen interposer converts its sleds with that thread
/// stopped outside them (never while it may be between two of the five
/// NOPs), and the thread's results stay right through 20 loads, each then
/// traced.
#[test]
fn dlopen_of_a_library_whose_constructor_runs_its_code_on_a_thread() {
    let out = run("gcc", "worker", &["ctorthread", "20"]);
    out.assert_ok();
    assert_eq!(out.num("rounds"), 20, "{out}");
    assert_eq!(out.num("errors"), 0, "{out}");
    assert!(out.num("calls") > 0 && out.num("events") > 0, "{out}");
}

/// A program with its own SIGTRAP handler: a thread traps with int3 while
/// every work_* site is patched on and off; the program's handler keeps
/// receiving its traps through every round, and nothing crashes.
#[test]
fn program_sigtrap_handler_keeps_receiving_traps_while_patching() {
    let out = run("gcc", "worker", &["sigtrap", "12", "200"]);
    assert!(matches!(out.code, Some(0 | 1)), "{out}");
    assert_eq!(out.num("rounds_with_traps"), 12, "{out}");
    let (traps, raised) = (out.num("traps"), out.num("raised"));
    assert!(raised > 0 && traps <= raised, "{out}");
}

/// The strict form: not one of the program's traps may be lost. (The
/// engine's thread probes use a real-time signal: probes sent as SIGTRAP
/// made the kernel drop an int3's SIGTRAP that coincided with one, since
/// standard signals do not queue.)
#[test]
fn no_program_trap_is_lost_while_patching() {
    let out = run("gcc", "worker", &["sigtrap", "40", "0"]);
    out.assert_ok();
    assert_eq!(out.num("traps"), out.num("raised"), "{out}");
}

/// fork while tracing, ten times, while another thread keeps patching:
/// each child (one thread, the parent's sites still enabled) works, loads
/// a library and traces itself (a lock left held by the fork would hang
/// it: the child's alarm kills it then), and exits normally without
/// removing its parent's control socket.
#[test]
fn fork_child_keeps_working_and_can_trace_itself() {
    let dir = scratch("fork");
    let prefix = dir.join("fork");
    let out = run("gcc", "worker", &["fork", prefix.to_str().unwrap()]);
    out.assert_ok();
    assert_eq!(out.num("code"), 42, "{out}");
    assert!(out.num("parent_events") > 0, "{out}");
    assert_eq!(out.num("socket_kept"), 1, "{out}");
    let child = read(&dir.join("fork.child.txt"));
    assert!(child.contains("entries: 60 in 1 threads"), "{child:.600}");
    assert!(child.contains("plugin_transform() {"), "{child:.600}");
}

#[test]
fn cxx_names_are_demangled() {
    let dir = scratch("cxx");
    let path = dir.join("shapes.txt");
    let out = run("cxx", "shapes", &[path.to_str().unwrap()]);
    out.assert_ok();
    assert_eq!(out.num("events"), 10, "{out}");
    let text = read(&path);
    for name in [
        "geo::Circle::scale(int)",
        "geo::Circle::area() const",
        "geo::total_area(std::vector<geo::Circle, std::allocator<geo::Circle> > const&)",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

/// Turned off, the library passes dlopen through and the C API refuses
/// with a message instead of crashing.
#[test]
fn turned_off_the_c_api_reports_errors() {
    let dir = scratch("off");
    let mut cmd = command("gcc", "worker", &["trace", "function"]);
    cmd.arg(dir.join("t")).env("LIVETRACE_PRELOAD", "0");
    let out = output(cmd);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("livetrace is not active: turned off by LIVETRACE_PRELOAD=0"),
        "{out}"
    );
}
