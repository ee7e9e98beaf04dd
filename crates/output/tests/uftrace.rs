//! The real `uftrace` reads the directories we write. Skipped (with a
//! printed SKIPPED) only when uftrace is missing and `CI` is unset; under CI
//! a missing uftrace fails (`.ci/setup-uftrace` installs it).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use livetrace_output::{uftrace, Event, Mapping, ThreadTrace};

fn have_uftrace(test: &str) -> bool {
    match Command::new("uftrace").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ if std::env::var_os("CI").is_some() => {
            panic!("uftrace is not installed (CI runs .ci/setup-uftrace to install it)")
        }
        _ => {
            // Straight to the stream: the test harness captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: uftrace is not installed (and CI is unset)"
            );
            false
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("livetrace-output-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("uftrace")
        .args(args)
        .arg("--no-pager")
        .arg("-d")
        .arg(dir)
        .output()
        .expect("run uftrace");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "uftrace {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// `uftrace replay` lines per tid as (depth, text), leaf lines `f();`
/// expanded to `f() {` and `} /* f */` (uftrace merges them only when
/// nothing from another thread comes between) and events dropped.
fn replay_by_tid(text: &str) -> BTreeMap<u32, Vec<(usize, String)>> {
    let mut by_tid: BTreeMap<u32, Vec<(usize, String)>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("] | "))
    {
        let (head, body) = line.split_once("] | ").unwrap();
        let tid: u32 = head.rsplit('[').next().unwrap().trim().parse().unwrap();
        let depth = (body.len() - body.trim_start().len()) / 2;
        let body = body.trim();
        let lines = by_tid.entry(tid).or_default();
        if body.starts_with("/*") {
            continue;
        } else if let Some(name) = body.strip_suffix("();") {
            lines.push((depth, format!("{name}() {{")));
            lines.push((depth, format!("}} /* {name} */")));
        } else {
            lines.push((depth, body.to_string()));
        }
    }
    by_tid
}

fn tree(items: &[(usize, &str)]) -> Vec<(usize, String)> {
    items.iter().map(|&(d, s)| (d, s.to_string())).collect()
}

#[test]
fn replay_shows_our_calls_nested() {
    if !have_uftrace("replay_shows_our_calls_nested") {
        return;
    }
    let dir = TempDir::new("replay");
    uftrace::write_dir(&common::graph_trace(), &dir.0).unwrap();
    let text = run(&dir.0, &["replay"]);
    let by_tid = replay_by_tid(&text);
    assert_eq!(
        by_tid[&common::PID],
        tree(&[
            (0, "main() {"),
            (1, "parse() {"),
            (2, "lex() {"),
            (2, "} /* lex */"),
            (2, "lex() {"),
            (2, "} /* lex */"),
            (1, "} /* parse */"),
            (1, "fib() {"),
            (2, "fib() {"),
            (3, "fib() {"),
            (3, "} /* fib */"),
            (3, "fib() {"),
            (3, "} /* fib */"),
            (2, "} /* fib */"),
            (1, "} /* fib */"),
            (1, "foo_init() {"),
            (1, "} /* foo_init */"),
            (1, "leaf() {"),
            (1, "} /* leaf */"),
        ]),
        "{text}"
    );
    // The worker began mid-stack (its ring wrapped): the calls whose exits
    // it began with get entries made up at its first timestamp, so uftrace
    // sees the stack it was on.
    assert_eq!(
        by_tid[&common::WORKER],
        tree(&[
            (0, "worker() {"),
            (1, "parse() {"),
            (2, "lex() {"),
            (2, "} /* lex */"),
            (1, "} /* parse */"),
            (1, "parse() {"),
            (2, "lex() {"),
            (2, "} /* lex */"),
            (1, "} /* parse */"),
            (0, "} /* worker */"),
            (0, "worker() {"),
            (1, "leaf() {"),
            (1, "} /* leaf */"),
            (0, "} /* worker */"),
        ]),
        "{text}"
    );
    // Durations are ours, to the ns.
    for want in [
        " 25.900 us [  4242] |   } /* parse */",
        "200.000 us [  4242] |   foo_init();",
        "  1.000 us [  4243] | } /* worker */",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // Thread names come from the perf COMM records.
    assert!(text.contains("linux:task-name (comm=\"demo\")"), "{text}");
}

/// `uftrace report` rows: name -> (total, self, calls).
fn report_rows(text: &str) -> BTreeMap<String, (String, String, u64)> {
    let mut rows = BTreeMap::new();
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            [total, t_unit, self_time, s_unit, calls, name] => rows.insert(
                name.to_string(),
                (
                    format!("{total} {t_unit}"),
                    format!("{self_time} {s_unit}"),
                    calls.parse().unwrap(),
                ),
            ),
            // uftrace leaves zero times blank.
            [calls, name] => rows.insert(
                name.to_string(),
                (String::new(), String::new(), calls.parse().unwrap()),
            ),
            _ => panic!("unexpected report line {line:?}"),
        };
    }
    rows
}

#[test]
fn report_graph_and_info_agree_with_the_trace() {
    if !have_uftrace("report_graph_and_info_agree_with_the_trace") {
        return;
    }
    let dir = TempDir::new("report");
    uftrace::write_dir(&common::graph_trace(), &dir.0).unwrap();

    let text = run(&dir.0, &["report"]);
    let rows = report_rows(&text);
    let row = |total: &str, self_time: &str, calls: u64| {
        (total.to_string(), self_time.to_string(), calls)
    };
    // The same numbers as profile::compute (tests/profile.rs) ...
    assert_eq!(
        rows["foo_init"],
        row("200.000 us", "200.000 us", 1),
        "{text}"
    );
    // ... plus, as uftrace counts them, the calls the worker was in when
    // its trace began, from its first timestamp: parse 500..600 ns, worker
    // 500..1500 ns, lex 500..500 ns.
    assert_eq!(rows["parse"], row("26.300 us", "25.500 us", 3), "{text}");
    assert_eq!(rows["worker"], row("2.000 us", "1.550 us", 2), "{text}");
    assert_eq!(rows["lex"], row("0.800 us", "0.800 us", 4), "{text}");
    assert!(!rows.contains_key("<0>"), "{text}");
    assert_eq!(rows["fib"], row("0.600 us", "0.600 us", 4), "{text}");
    assert_eq!(rows["leaf"], row("0.150 us", "0.150 us", 2), "{text}");
    // ... but uftrace counts the unfinished main up to its last timestamp.
    assert_eq!(rows["main"], row("227.100 us", "0.500 us", 1), "{text}");

    let text = run(&dir.0, &["graph"]);
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(" : "))
        .map(|(_, tree)| tree.trim_start_matches([' ', '|', '+', '-']).to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let want = [
        "(1) demo",
        "(1) main",
        "(1) parse",
        "(2) lex",
        "(1) fib",
        "(1) fib",
        "(2) fib",
        "(1) foo_init",
        "(1) leaf",
        "(2) worker",
        "(2) parse",
        "(2) lex",
        "(1) leaf",
    ];
    assert_eq!(names, want, "{text}");

    let text = run(&dir.0, &["info"]);
    for want in [
        "# cmdline             : demo --fast",
        "# number of tasks     : 2",
        "# task list           : 4242(demo), 4243(worker-1)",
        "# exe image           : /usr/local/bin/demo",
        "tid 4243: 7 events lost",
        "tid 4243: 2 calls deeper than the depth limit not recorded",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
}

#[test]
fn dump_chrome_gives_the_same_nesting() {
    if !have_uftrace("dump_chrome_gives_the_same_nesting") {
        return;
    }
    let dir = TempDir::new("chrome");
    uftrace::write_dir(&common::graph_trace(), &dir.0).unwrap();
    let text = run(&dir.0, &["dump", "--chrome"]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("uftrace wrote valid JSON");
    let mut by_tid: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for e in json["traceEvents"].as_array().unwrap() {
        let ph = e["ph"].as_str().unwrap();
        if ph != "B" && ph != "E" {
            continue;
        }
        // uftrace leaves tid out for the main thread.
        let tid = e
            .get("tid")
            .map_or(e["pid"].as_u64().unwrap(), |t| t.as_u64().unwrap());
        by_tid
            .entry(tid)
            .or_default()
            .push(format!("{ph} {}", e["name"].as_str().unwrap()));
    }
    let seq = |s: &str| -> Vec<String> { s.split(',').map(|x| x.trim().to_string()).collect() };
    assert_eq!(
        by_tid[&u64::from(common::PID)],
        seq("B main, B parse, B lex, E lex, B lex, E lex, E parse, \
             B fib, B fib, B fib, E fib, B fib, E fib, E fib, E fib, \
             B foo_init, E foo_init, B leaf, E leaf, E main"),
        "{text}"
    );
    assert_eq!(
        by_tid[&u64::from(common::WORKER)],
        seq(
            "B worker, B parse, B lex, E lex, E parse, B parse, B lex, E lex, E parse, E worker, \
             B worker, B leaf, E leaf, E worker"
        ),
        "{text}"
    );
}

#[test]
fn function_tracer_calls_become_zero_length_calls() {
    if !have_uftrace("function_tracer_calls_become_zero_length_calls") {
        return;
    }
    let dir = TempDir::new("function");
    uftrace::write_dir(&common::function_trace(), &dir.0).unwrap();
    let by_tid = replay_by_tid(&run(&dir.0, &["replay"]));
    let calls = |names: &[&str]| -> Vec<(usize, String)> {
        names
            .iter()
            .flat_map(|n| [(0, format!("{n}() {{")), (0, format!("}} /* {n} */"))])
            .collect()
    };
    assert_eq!(
        by_tid[&common::PID],
        calls(&["parse", "lex", "lex", "foo_init"])
    );
    assert_eq!(by_tid[&common::WORKER], calls(&["leaf", "leaf"]));
    let rows = report_rows(&run(&dir.0, &["report"]));
    let counts: BTreeMap<&str, u64> = rows.iter().map(|(k, v)| (k.as_str(), v.2)).collect();
    assert_eq!(
        counts,
        BTreeMap::from([("foo_init", 1), ("leaf", 2), ("lex", 2), ("parse", 1)])
    );
}

/// Objects with the same file name, symbols outside every mapping, a
/// sizeless symbol, a name with spaces, a path with a space, `[vdso]`, an
/// anonymous mapping, and an exit lost mid-trace.
#[test]
fn awkward_symbols_and_maps_resolve() {
    if !have_uftrace("awkward_symbols_and_maps_resolve") {
        return;
    }
    let a = 0x7f10_0000_0000u64;
    let b = 0x7f20_0000_0000u64;
    let jit = 0x4000_0000u64;
    let mut trace = common::graph_trace();
    trace.maps.extend([
        Mapping {
            start: a + 0x1000,
            end: a + 0x2000,
            offset: 0x1000,
            path: "/opt/a/libx.so".into(),
        },
        Mapping {
            start: b,
            end: b + 0x1000,
            offset: 0,
            path: "/opt/b/libx.so".into(),
        },
    ]);
    let (app, vdso, anon) = (0x7f30_0000_0000u64, 0x7fff_f7fc_1000u64, 0x3000_0000u64);
    trace.maps.extend([
        Mapping {
            start: app,
            end: app + 0x1000,
            offset: 0,
            path: "/opt/My App/libapp.so".into(),
        },
        Mapping {
            start: vdso,
            end: vdso + 0x2000,
            offset: 0,
            path: "[vdso]".into(),
        },
        Mapping {
            start: anon,
            end: anon + 0x1000,
            offset: 0,
            path: String::new(),
        },
    ]);
    trace.symbols.insert(app + 0x20, 0x10, "app_fn");
    trace
        .symbols
        .insert(vdso + 0x900, 0x10, "__vdso_clock_gettime");
    trace.symbols.insert(anon + 0x40, 0x10, "anon_fn");
    trace.symbols.insert(a + 0x1010, 0x10, "x_in_a");
    trace.symbols.insert(b + 0x10, 0, "x_in_b");
    trace.symbols.insert(jit, 0x100, "<jit code> for thing");
    trace.symbols.insert(jit + 0x100, 0x10, "jit_two");
    let t = common::T0 + 1_000_000;
    let ev = |kind: u8, dt: u64, func: u64, depth: u32| match kind {
        0 => Event::Entry {
            ts: t + dt,
            func,
            depth,
        },
        _ => Event::Exit {
            ts: t + dt,
            func,
            depth,
        },
    };
    trace.threads.push(ThreadTrace {
        tid: 5000,
        name: String::new(),
        events: vec![
            ev(0, 0, a + 0x1010, 0),
            ev(0, 10, b + 0x10, 1),
            ev(0, 20, jit, 2),
            ev(0, 30, jit + 0x100, 3), // its exit is lost
            ev(1, 50, jit, 2),
            ev(1, 60, b + 0x10, 1),
            ev(0, 62, app + 0x20, 1),
            ev(1, 63, app + 0x20, 1),
            ev(0, 64, vdso + 0x900, 1),
            ev(1, 65, vdso + 0x900, 1),
            ev(0, 66, anon + 0x40, 1),
            ev(1, 67, anon + 0x40, 1),
            ev(1, 70, a + 0x1010, 0),
        ],
        lost: 1,
        depth_overflows: 0,
    });
    let dir = TempDir::new("awkward");
    uftrace::write_dir(&trace, &dir.0).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".sym"))
        .collect();
    files.sort();
    let checksum: u16 = "/opt/b/libx.so"
        .bytes()
        .fold(0u16, |s, c| s.wrapping_add(c.into()));
    assert_eq!(
        files,
        [
            "[vdso].sym".to_string(),
            "demo.sym".into(),
            "libapp.so.sym".into(),
            "libfoo.so.sym".into(),
            format!("libx.so-{checksum:04x}.sym"),
            "libx.so.sym".into(),
            "unmapped-0.sym".into(), // the anonymous mapping
            "unmapped-1.sym".into(), // the JIT symbols outside every mapping
        ]
    );

    let by_tid = replay_by_tid(&run(&dir.0, &["replay"]));
    assert_eq!(
        by_tid[&5000],
        tree(&[
            (0, "x_in_a() {"),
            (1, "x_in_b() {"),
            (2, "<jit code> for thing() {"),
            (3, "jit_two() {"),
            (3, "} /* jit_two */"),
            (2, "} /* <jit code> for thing */"),
            (1, "} /* x_in_b */"),
            (1, "app_fn() {"),
            (1, "} /* app_fn */"),
            (1, "__vdso_clock_gettime() {"),
            (1, "} /* __vdso_clock_gettime */"),
            (1, "anon_fn() {"),
            (1, "} /* anon_fn */"),
            (0, "} /* x_in_a */"),
        ])
    );
}

/// A thread whose trace begins mid-stack, as a ring in overwrite mode
/// leaves it: its first events are at depth 2 (the entries of the calls it
/// was in were overwritten), some of those calls return during the trace
/// and the outermost never does. uftrace would take the frames below the
/// first record for unknown calls and report them as `<0>`.
#[test]
fn a_trace_that_starts_mid_stack_has_no_unknown_root() {
    if !have_uftrace("a_trace_that_starts_mid_stack_has_no_unknown_root") {
        return;
    }
    let t = common::T0;
    let e = |dt: u64, func: u64, depth: u32| Event::Entry {
        ts: t + dt,
        func,
        depth,
    };
    let x = |dt: u64, func: u64, depth: u32| Event::Exit {
        ts: t + dt,
        func,
        depth,
    };
    let mut trace = common::graph_trace();
    trace.threads = vec![
        // main (depth 0, never returns) > parse (depth 1, returns at 400)
        // were entered before the trace.
        ThreadTrace {
            tid: 100,
            name: "a".into(),
            events: vec![
                e(100, common::LEX, 2),
                x(200, common::LEX, 2),
                x(400, common::PARSE, 1),
                e(500, common::FIB, 1),
                x(600, common::FIB, 1),
            ],
            ..Default::default()
        },
        // Only deeper calls: nothing known below them.
        ThreadTrace {
            tid: 101,
            name: "b".into(),
            events: vec![
                e(100, common::LEX, 3),
                x(200, common::LEX, 3),
                e(300, common::LEAF, 3),
                x(350, common::LEAF, 3),
            ],
            ..Default::default()
        },
    ];
    let dir = TempDir::new("midstack");
    uftrace::write_dir(&trace, &dir.0).unwrap();

    let text = run(&dir.0, &["report"]);
    assert!(!text.contains("<0>"), "{text}");
    let rows = report_rows(&text);
    let calls: BTreeMap<&str, u64> = rows.iter().map(|(k, v)| (k.as_str(), v.2)).collect();
    assert_eq!(
        calls,
        BTreeMap::from([("fib", 1), ("leaf", 1), ("lex", 2), ("parse", 1)]),
        "{text}"
    );
    // parse ran from (at least) the thread's first event to its exit.
    assert_eq!(rows["parse"].0, "0.300 us", "{text}");

    let text = run(&dir.0, &["replay"]);
    let by_tid = replay_by_tid(&text);
    assert_eq!(
        by_tid[&100],
        tree(&[
            (0, "parse() {"),
            (1, "lex() {"),
            (1, "} /* lex */"),
            (0, "} /* parse */"),
            (0, "fib() {"),
            (0, "} /* fib */"),
        ]),
        "{text}"
    );
    assert_eq!(
        by_tid[&101],
        tree(&[
            (0, "lex() {"),
            (0, "} /* lex */"),
            (0, "leaf() {"),
            (0, "} /* leaf */"),
        ]),
        "{text}"
    );
    let text = run(&dir.0, &["graph"]);
    assert!(!text.contains("<0>"), "{text}");
}

/// Many threads fed interleaved, a chunk at a time, as a recording holds
/// them: more threads than the writer keeps files open, so files are
/// closed and reopened to append, and every thread's calls still replay
/// whole and in order.
#[test]
fn interleaved_threads_beyond_the_open_file_limit_replay_whole() {
    if !have_uftrace("interleaved_threads_beyond_the_open_file_limit_replay_whole") {
        return;
    }
    use livetrace_output::Sink;
    let dir = TempDir::new("many");
    let names = common::symbols();
    let mut w = uftrace::UftraceDir::new(&dir.0);
    w.begin(&common::graph_trace().process()).unwrap();
    let threads = uftrace::OPEN_FILES as u32 + 36;
    let t0 = common::T0;
    for round in 0..3u64 {
        for i in 0..threads {
            let tid = 20_000 + i;
            if round == 0 {
                w.thread(tid, &format!("w{i}")).unwrap();
            }
            let ts = t0 + round * 1_000 + u64::from(i);
            for e in [
                Event::Entry {
                    ts,
                    func: common::PARSE,
                    depth: 0,
                },
                Event::Entry {
                    ts: ts + 100,
                    func: common::LEX,
                    depth: 1,
                },
                Event::Exit {
                    ts: ts + 200,
                    func: common::LEX,
                    depth: 1,
                },
                Event::Exit {
                    ts: ts + 300,
                    func: common::PARSE,
                    depth: 0,
                },
            ] {
                w.event(tid, e, &names).unwrap();
            }
        }
    }
    let summary = w.finish(&names).unwrap();
    assert_eq!(summary.events(), u64::from(threads) * 12);
    let by_tid = replay_by_tid(&run(&dir.0, &["replay"]));
    assert_eq!(by_tid.len(), threads as usize);
    let one = [
        (0, "parse() {"),
        (1, "lex() {"),
        (1, "} /* lex */"),
        (0, "} /* parse */"),
    ];
    let want: Vec<(usize, &str)> = one.iter().cycle().take(12).copied().collect();
    for (tid, lines) in &by_tid {
        assert_eq!(lines, &tree(&want), "tid {tid}");
    }
}

/// Source locations travel in `.dbg` files: uftrace's `replay --srcline`
/// comments each located function with its `file:line`, in the
/// executable and in a library, and `report --srcline` adds the column.
#[test]
fn source_lines_reach_replay_and_report() {
    if !have_uftrace("source_lines_reach_replay_and_report") {
        return;
    }
    let mut trace = common::graph_trace();
    trace
        .symbols
        .set_location(common::PARSE, "/src/demo/parse.c", 42);
    trace
        .symbols
        .set_location(common::LEX, "/src/demo/lex.c", 7);
    trace
        .symbols
        .set_location(common::FOO, "/src/foo/foo with space.c", 1234);
    let dir = TempDir::new("srcline");
    uftrace::write_dir(&trace, &dir.0).unwrap();
    let replay = run(&dir.0, &["replay", "--srcline"]);
    for want in [
        "  lex(); /* /src/demo/lex.c:7 */",
        "  parse() { /* /src/demo/parse.c:42 */",
        "  foo_init(); /* /src/foo/foo with space.c:1234 */",
    ] {
        assert!(replay.contains(want), "no {want:?} in\n{replay}");
    }
    // Functions without a location get none, and none of another's.
    assert!(
        replay
            .lines()
            .filter(|l| l.contains("fib()") || l.contains("leaf()"))
            .all(|l| !l.contains(".c:")),
        "{replay}"
    );
    let report = run(&dir.0, &["report", "--srcline"]);
    for want in [
        "parse [/src/demo/parse.c:42]",
        "lex [/src/demo/lex.c:7]",
        "foo_init [/src/foo/foo with space.c:1234]",
    ] {
        assert!(report.contains(want), "no {want:?} in\n{report}");
    }
    // Written again without locations: no stale file says otherwise.
    uftrace::write_dir(&common::graph_trace(), &dir.0).unwrap();
    assert!(!dir.0.join("demo.dbg").exists());
    assert!(!run(&dir.0, &["replay", "--srcline"]).contains(".c:"));
}
