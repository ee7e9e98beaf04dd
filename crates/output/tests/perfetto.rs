//! Our `.perfetto-trace` files decode against Perfetto's published
//! `perfetto_trace.proto` (a copy in `tests/data`) with `protoc`, and say
//! what the trace says: the same slices as the JSON writer, per thread
//! track, each name interned once. Skipped (with a printed SKIPPED) only
//! when protoc is missing and `CI` is unset; under CI a missing protoc fails
//! (`.ci/setup-protoc` installs it).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use livetrace_output::{perfetto, Trace};

fn have_protoc(test: &str) -> bool {
    match Command::new("protoc").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ if std::env::var_os("CI").is_some() => {
            panic!("protoc is not installed (CI runs .ci/setup-protoc to install it)")
        }
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: protoc is not installed (and CI is unset)"
            );
            false
        }
    }
}

/// A node of protoc's text format.
#[derive(Debug, Clone)]
enum Node {
    Value(String),
    Msg(Vec<(String, Node)>),
}

impl Node {
    fn fields(&self) -> &[(String, Node)] {
        match self {
            Node::Msg(f) => f,
            Node::Value(v) => panic!("{v} is not a message"),
        }
    }
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.fields()
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v)
    }
    fn get(&self, key: &str) -> Option<&Node> {
        self.fields().iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn value(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Node::Value(v) => Some(v),
            Node::Msg(_) => None,
        }
    }
    fn num(&self, key: &str) -> Option<u64> {
        self.value(key).map(|v| v.parse().expect("a number"))
    }
    /// A quoted string value, unescaped (protoc escapes non-ASCII bytes
    /// as octal).
    fn string(&self, key: &str) -> Option<String> {
        let v = self.value(key)?;
        let inner = v.strip_prefix('"')?.strip_suffix('"')?;
        let mut bytes = Vec::new();
        let mut chars = inner.bytes().peekable();
        while let Some(c) = chars.next() {
            if c != b'\\' {
                bytes.push(c);
                continue;
            }
            match chars.next() {
                Some(d @ b'0'..=b'7') => {
                    let mut n = u32::from(d - b'0');
                    for _ in 0..2 {
                        if let Some(&e @ b'0'..=b'7') = chars.peek() {
                            n = n * 8 + u32::from(e - b'0');
                            chars.next();
                        }
                    }
                    bytes.push(n as u8);
                }
                Some(b'n') => bytes.push(b'\n'),
                Some(b't') => bytes.push(b'\t'),
                Some(other) => bytes.push(other),
                None => {}
            }
        }
        Some(String::from_utf8(bytes).expect("UTF-8"))
    }
}

fn parse_text(text: &str) -> Node {
    let mut stack: Vec<Vec<(String, Node)>> = vec![Vec::new()];
    let mut keys: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "}" {
            let fields = stack.pop().expect("balanced");
            let key = keys.pop().expect("balanced");
            stack.last_mut().unwrap().push((key, Node::Msg(fields)));
        } else if let Some(key) = line.strip_suffix(" {") {
            keys.push(key.to_string());
            stack.push(Vec::new());
        } else {
            let (k, v) = line.split_once(": ").expect("key: value");
            stack
                .last_mut()
                .unwrap()
                .push((k.to_string(), Node::Value(v.to_string())));
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced braces");
    Node::Msg(stack.pop().unwrap())
}

/// `protoc --decode=perfetto.protos.Trace`: fails the test on any error.
fn decode(bytes: &[u8]) -> Node {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut child = Command::new("protoc")
        .arg("--decode=perfetto.protos.Trace")
        .arg("-I")
        .arg(&data)
        .arg("perfetto_trace.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoc");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("protoc output");
    writer.join().unwrap().expect("feed protoc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "protoc failed ({}): {stderr}",
        out.status
    );
    parse_text(&String::from_utf8(out.stdout).expect("UTF-8 text"))
}

fn write(trace: &Trace) -> Node {
    let mut out = Vec::new();
    perfetto::write(trace, &mut out).unwrap();
    decode(&out)
}

/// What a reader rebuilds from the packets.
#[derive(Default, Debug)]
struct Seen {
    /// Track uuid -> (tid, thread name).
    threads: BTreeMap<u64, (u64, String)>,
    process: Option<(u64, String)>,
    labels: Vec<String>,
    /// Per tid: (begin, end, name, unfinished) from the trace start.
    slices: BTreeMap<u64, Vec<(u64, u64, String, bool)>>,
    /// Per tid: (ts, name, annotations as "k=v").
    instants: BTreeMap<u64, Vec<(u64, String, Vec<String>)>>,
    /// How many times each event name was interned.
    interned: BTreeMap<String, usize>,
    /// Event name -> the source locations its events carried, as
    /// `file:line function`.
    sources: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// How many times each source location was interned.
    interned_sources: BTreeMap<String, usize>,
    primary_clock: Option<String>,
}

fn read(trace: &Node, t0: u64) -> Seen {
    let mut seen = Seen::default();
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let mut strings: BTreeMap<u64, String> = BTreeMap::new();
    let mut annotation_names: BTreeMap<u64, String> = BTreeMap::new();
    let mut locations: BTreeMap<u64, String> = BTreeMap::new();
    let mut open: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for packet in trace.all("packet") {
        assert_eq!(packet.num("trusted_packet_sequence_id"), Some(1));
        if let Some(snapshot) = packet.get("clock_snapshot") {
            seen.primary_clock = snapshot.value("primary_trace_clock").map(str::to_string);
        }
        if let Some(interned) = packet.get("interned_data") {
            for n in interned.all("event_names") {
                let name = n.string("name").unwrap();
                *seen.interned.entry(name.clone()).or_default() += 1;
                names.insert(n.num("iid").unwrap(), name);
            }
            for n in interned.all("debug_annotation_string_values") {
                strings.insert(n.num("iid").unwrap(), n.string("str").unwrap());
            }
            for n in interned.all("debug_annotation_names") {
                annotation_names.insert(n.num("iid").unwrap(), n.string("name").unwrap());
            }
            for n in interned.all("source_locations") {
                let loc = format!(
                    "{}:{} {}",
                    n.string("file_name").unwrap(),
                    n.num("line_number").unwrap(),
                    n.string("function_name").unwrap()
                );
                *seen.interned_sources.entry(loc.clone()).or_default() += 1;
                assert!(locations.insert(n.num("iid").unwrap(), loc).is_none());
            }
        }
        if let Some(d) = packet.get("track_descriptor") {
            let uuid = d.num("uuid").unwrap();
            if let Some(t) = d.get("thread") {
                let name = t.string("thread_name").unwrap_or_default();
                seen.threads.insert(uuid, (t.num("tid").unwrap(), name));
            }
            if let Some(p) = d.get("process") {
                seen.process = Some((p.num("pid").unwrap(), p.string("process_name").unwrap()));
                seen.labels = p
                    .all("process_labels")
                    .map(|l| match l {
                        Node::Value(v) => v.trim_matches('"').to_string(),
                        Node::Msg(_) => panic!(),
                    })
                    .collect();
            }
        }
        if let Some(e) = packet.get("track_event") {
            let ts = packet.num("timestamp").unwrap() - t0;
            let uuid = e.num("track_uuid").unwrap();
            let tid = seen.threads[&uuid].0;
            let name = e
                .num("name_iid")
                .map(|i| names[&i].clone())
                .or_else(|| e.string("name"))
                .unwrap_or_default();
            if let Some(iid) = e.num("source_location_iid") {
                seen.sources
                    .entry(name.clone())
                    .or_default()
                    .insert(locations[&iid].clone());
            }
            let notes: Vec<String> = e
                .all("debug_annotations")
                .map(|a| {
                    let key = a
                        .string("name")
                        .or_else(|| a.num("name_iid").map(|i| annotation_names[&i].clone()))
                        .unwrap();
                    let value = a
                        .num("string_value_iid")
                        .map(|i| strings[&i].clone())
                        .or_else(|| a.string("string_value"))
                        .or_else(|| a.value("uint_value").map(str::to_string))
                        .or_else(|| a.value("bool_value").map(str::to_string))
                        .unwrap();
                    format!("{key}={value}")
                })
                .collect();
            match e.value("type").unwrap() {
                "TYPE_SLICE_BEGIN" => open.entry(tid).or_default().push((ts, name)),
                "TYPE_SLICE_END" => {
                    let (begin, name) = open.get_mut(&tid).unwrap().pop().expect("an open slice");
                    let unfinished = notes.iter().any(|n| n == "unfinished=true");
                    seen.slices
                        .entry(tid)
                        .or_default()
                        .push((begin, ts, name, unfinished));
                }
                "TYPE_INSTANT" => seen
                    .instants
                    .entry(tid)
                    .or_default()
                    .push((ts, name, notes)),
                other => panic!("unexpected type {other}"),
            }
        }
    }
    assert!(
        open.values().all(Vec::is_empty),
        "slices left open: {open:?}"
    );
    for s in seen.slices.values_mut() {
        s.sort_by_key(|&(b, e, _, _)| (b, std::cmp::Reverse(e)));
    }
    seen
}

#[test]
fn graph_trace_decodes_as_nested_slices_per_thread() {
    if !have_protoc("graph_trace_decodes_as_nested_slices_per_thread") {
        return;
    }
    let seen = read(&write(&common::graph_trace()), common::T0);
    assert_eq!(
        seen.primary_clock.as_deref(),
        Some("BUILTIN_CLOCK_MONOTONIC")
    );
    assert_eq!(
        seen.process,
        Some((u64::from(common::PID), "demo".to_string()))
    );
    let threads: Vec<&(u64, String)> = seen.threads.values().collect();
    assert_eq!(
        threads,
        [&(4242, "demo".to_string()), &(4243, "worker-1".to_string())]
    );
    let s = |a: u64, b: u64, n: &str, u: bool| (a, b, n.to_string(), u);
    assert_eq!(
        seen.slices[&4242],
        [
            s(0, 227_100, "main", true), // unfinished: cut at the thread's last event
            s(100, 26_000, "parse", false),
            s(200, 700, "lex", false),
            s(800, 1_000, "lex", false),
            s(26_100, 26_700, "fib", false),
            s(26_200, 26_600, "fib", false),
            s(26_300, 26_400, "fib", false),
            s(26_500, 26_550, "fib", false),
            s(26_800, 226_800, "foo_init", false),
            s(227_000, 227_100, "leaf", false),
        ]
    );
    assert_eq!(
        seen.slices[&4243],
        [
            s(700, 1_000, "parse", false),
            s(800, 900, "lex", false),
            s(2_000, 3_000, "worker", false),
            s(2_100, 2_150, "leaf", false),
        ]
    );
    // Each name once, however often it is used.
    assert!(
        seen.interned.values().all(|&n| n == 1),
        "{:?}",
        seen.interned
    );
    assert_eq!(seen.interned.len(), 7);

    // The worker's losses: where they happened, and in its summary.
    let worker = &seen.instants[&4243];
    assert_eq!(worker[0].1, "lost 7 events");
    assert!(worker[0].2.contains(&"count=7".to_string()), "{worker:?}");
    assert_eq!(worker[1].1, "2 calls over the depth limit");
    let summary = worker.last().unwrap();
    assert_eq!(summary.1, "livetrace: thread summary");
    for want in [
        "events=11",
        "lost=7",
        "overwritten=7",
        "depth_limit=2",
        "orphan_exits=3",
    ] {
        assert!(
            summary.2.contains(&want.to_string()),
            "{want} in {summary:?}"
        );
    }
    assert_eq!(seen.labels, ["lost 7 events"]);
}

#[test]
fn function_trace_decodes_as_instants_with_callers() {
    if !have_protoc("function_trace_decodes_as_instants_with_callers") {
        return;
    }
    let seen = read(&write(&common::function_trace()), common::T0);
    let calls = |tid: u64| -> Vec<(u64, String, String)> {
        seen.instants[&tid]
            .iter()
            .filter(|i| !i.1.starts_with("livetrace") && !i.1.starts_with("lost"))
            .map(|(ts, n, notes)| (*ts, n.clone(), notes.join(",")))
            .collect()
    };
    let i = |t: u64, n: &str, c: &str| (t, n.to_string(), format!("caller={c}"));
    assert_eq!(
        calls(4242),
        [
            i(0, "parse", "main"),
            i(1_500, "lex", "parse"),
            i(2_000_123, "lex", "parse"),
            i(3_000_000, "foo_init", "main"),
        ]
    );
    assert_eq!(
        calls(4243),
        [
            i(1_000, "leaf", "worker"),
            i(2_500_000, "leaf", "0xdead0000")
        ]
    );
    assert!(seen.slices.is_empty());
}

#[test]
fn names_needing_escapes_and_renamed_threads_decode() {
    if !have_protoc("names_needing_escapes_and_renamed_threads_decode") {
        return;
    }
    use livetrace_output::{Event, Sink, Symbols};
    let mut names = Symbols::new();
    names.insert(0x1000, 0x10, "ns::f<\"q\"\\é>(int)");
    let mut out = Vec::new();
    {
        let mut w = perfetto::PerfettoTrace::new(&mut out);
        w.begin(&common::graph_trace().process()).unwrap();
        w.thread(7, "before").unwrap();
        let e = |ts| Event::Entry {
            ts,
            func: 0x1000,
            depth: 0,
        };
        let x = |ts| Event::Exit {
            ts,
            func: 0x1000,
            depth: 0,
        };
        w.event(7, e(common::T0 + 10), &names).unwrap();
        w.thread(7, "after").unwrap();
        w.event(7, x(common::T0 + 20), &names).unwrap();
        w.finish(&names).unwrap();
    }
    let seen = read(&decode(&out), common::T0);
    assert_eq!(
        seen.slices[&7],
        [(10, 20, "ns::f<\"q\"\\é>(int)".to_string(), false)]
    );
    assert_eq!(seen.threads.values().next().unwrap().1, "after");
}

/// Functions with a known source location carry it: interned once per
/// location, referenced by every slice and instant of the function, and
/// by nothing else.
#[test]
fn source_locations_are_interned_once_per_function() {
    if !have_protoc("source_locations_are_interned_once_per_function") {
        return;
    }
    let mut graph = common::graph_trace();
    graph
        .symbols
        .set_location(common::PARSE, "/src/demo/parse.c", 42);
    graph
        .symbols
        .set_location(common::FOO, "/src/foo/foo.c", 1234);
    let seen = read(&write(&graph), common::T0);
    let sources: Vec<(&str, Vec<&str>)> = seen
        .sources
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        sources,
        [
            ("foo_init", vec!["/src/foo/foo.c:1234 foo_init"]),
            ("parse", vec!["/src/demo/parse.c:42 parse"]),
        ]
    );
    assert_eq!(
        seen.interned_sources.values().copied().collect::<Vec<_>>(),
        [1, 1],
        "{:?}",
        seen.interned_sources
    );
    // The slices are the same as without locations.
    let plain = read(&write(&common::graph_trace()), common::T0);
    assert_eq!(seen.slices, plain.slices);
    assert!(plain.sources.is_empty() && plain.interned_sources.is_empty());

    // Function-tracer instants carry them too.
    let mut calls = common::function_trace();
    calls
        .symbols
        .set_location(common::LEX, "/src/demo/lex.c", 7);
    let seen = read(&write(&calls), common::T0);
    assert_eq!(seen.sources.len(), 1, "{:?}", seen.sources);
    assert!(seen.sources["lex"].contains("/src/demo/lex.c:7 lex"));
}
