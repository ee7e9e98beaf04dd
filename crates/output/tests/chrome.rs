//! The Trace Event Format JSON parses, has every required field, and its
//! complete events nest per thread.

mod common;

use std::collections::BTreeMap;

use livetrace_output::chrome;
use serde_json::Value;

fn parse(trace: &livetrace_output::Trace) -> Value {
    let mut out = Vec::new();
    chrome::write(trace, &mut out).unwrap();
    let value: Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(value, chrome::to_value(trace));
    value
}

fn events(value: &Value) -> &Vec<Value> {
    value["traceEvents"].as_array().expect("traceEvents array")
}

/// µs float back to integer ns: exact, since every value came from ns.
fn ns(v: &Value) -> u64 {
    let us = v.as_f64().expect("a number");
    assert!(us >= 0.0, "negative time {us}");
    (us * 1000.0).round() as u64
}

#[test]
fn every_event_has_the_required_fields() {
    for trace in [common::graph_trace(), common::function_trace()] {
        let value = parse(&trace);
        assert_eq!(value["displayTimeUnit"], "ns");
        assert_eq!(value["otherData"]["start_ns"], common::T0.to_string());
        for e in events(&value) {
            for field in ["name", "ph", "ts", "pid", "tid"] {
                assert!(e.get(field).is_some(), "{field} missing in {e}");
            }
            assert!(e["name"].is_string() && e["ts"].is_number(), "{e}");
            assert_eq!(e["pid"], common::PID);
            match e["ph"].as_str().unwrap() {
                "X" => assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}"),
                "i" => assert_eq!(e["s"], "t"),
                "M" => assert!(e["args"]["name"].is_string() || e["args"]["labels"].is_string()),
                other => panic!("unexpected phase {other}"),
            }
        }
    }
}

#[test]
fn complete_events_nest_per_thread() {
    let value = parse(&common::graph_trace());
    let mut by_tid: BTreeMap<u64, Vec<(u64, u64, String)>> = BTreeMap::new();
    for e in events(&value).iter().filter(|e| e["ph"] == "X") {
        let start = ns(&e["ts"]);
        by_tid.entry(e["tid"].as_u64().unwrap()).or_default().push((
            start,
            start + ns(&e["dur"]),
            e["name"].as_str().unwrap().to_string(),
        ));
    }
    for (&tid, spans) in &by_tid {
        let mut spans = spans.clone();
        // Any two spans are disjoint or one contains the other.
        spans.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
        let mut open: Vec<(u64, u64, String)> = Vec::new();
        for span in spans {
            while open
                .last()
                .is_some_and(|top| top.1 <= span.0 && top.0 < span.0)
            {
                open.pop();
            }
            if let Some(top) = open.last() {
                assert!(span.1 <= top.1, "tid {tid}: {span:?} overlaps {top:?}");
            }
            open.push(span);
        }
    }

    // The spans themselves, in ns from the trace start (written as calls
    // return: a caller after its callees).
    for spans in by_tid.values_mut() {
        spans.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
    }
    let main = by_tid[&u64::from(common::PID)].clone();
    let s = |a: u64, b: u64, n: &str| (a, b, n.to_string());
    assert_eq!(
        main,
        [
            s(0, 227_100, "main"), // unfinished: cut at the thread's last event
            s(100, 26_000, "parse"),
            s(200, 700, "lex"),
            s(800, 1_000, "lex"),
            s(26_100, 26_700, "fib"),
            s(26_200, 26_600, "fib"),
            s(26_300, 26_400, "fib"),
            s(26_500, 26_550, "fib"),
            s(26_800, 226_800, "foo_init"),
            s(227_000, 227_100, "leaf"),
        ]
    );
    // Orphan exits have no start and are not drawn.
    let worker = by_tid[&u64::from(common::WORKER)].clone();
    assert_eq!(
        worker,
        [
            s(700, 1_000, "parse"),
            s(800, 900, "lex"),
            s(2_000, 3_000, "worker"),
            s(2_100, 2_150, "leaf"),
        ]
    );
    let unfinished: Vec<&Value> = events(&value)
        .iter()
        .filter(|e| e["args"]["unfinished"] == true)
        .collect();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0]["name"], "main");
}

#[test]
fn metadata_names_threads_and_reports_losses() {
    let value = parse(&common::graph_trace());
    let meta: Vec<&Value> = events(&value).iter().filter(|e| e["ph"] == "M").collect();
    let process = meta.iter().find(|e| e["name"] == "process_name").unwrap();
    assert_eq!(process["args"]["name"], "demo");
    let labels = meta.iter().find(|e| e["name"] == "process_labels").unwrap();
    assert_eq!(labels["args"]["labels"], "lost 7 events");
    let worker = meta
        .iter()
        .find(|e| e["name"] == "thread_name" && e["tid"] == common::WORKER)
        .unwrap();
    assert_eq!(worker["args"]["name"], "worker-1");
    assert_eq!(worker["args"]["lost"], 7);
    assert_eq!(worker["args"]["depth_overflows"], 2);
    assert_eq!(worker["args"]["orphan_exits"], 3);
    assert_eq!(worker["args"]["events"], 11);
    assert_eq!(worker["args"]["lost_by_reason"]["overwritten"], 7);
    assert_eq!(worker["args"]["lost_by_reason"]["depth_limit"], 2);
    assert_eq!(value["otherData"]["events"]["4242"], 19);
    assert_eq!(value["otherData"]["lost_events"]["4243"], 7);
    assert_eq!(value["otherData"]["cmdline"], "demo --fast");
}

#[test]
fn function_tracer_calls_are_instants() {
    let value = parse(&common::function_trace());
    let instants: Vec<(u64, String, String)> = events(&value)
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| {
            (
                ns(&e["ts"]),
                e["name"].as_str().unwrap().to_string(),
                e["args"]["caller"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let i = |t: u64, n: &str, c: &str| (t, n.to_string(), c.to_string());
    assert_eq!(
        instants,
        [
            i(0, "parse", "main"),
            i(1_500, "lex", "parse"),
            i(2_000_123, "lex", "parse"),
            i(3_000_000, "foo_init", "main"),
            i(1_000, "leaf", "worker"),
            i(2_500_000, "leaf", "0xdead0000"),
        ]
    );
    assert!(!events(&value).iter().any(|e| e["ph"] == "X"));
}

/// A call whose exit was lost mid-trace ends where its caller returned,
/// marked unfinished; an orphan exit draws nothing.
#[test]
fn lost_exits_end_at_the_caller_and_orphans_draw_nothing() {
    use livetrace_output::{Event, ThreadTrace, Trace};
    let t0 = common::T0;
    let e = |ts, func, depth| Event::Entry { ts, func, depth };
    let x = |ts, func, depth| Event::Exit { ts, func, depth };
    let trace = Trace {
        pid: 1,
        start_ns: t0,
        threads: vec![ThreadTrace {
            tid: 1,
            events: vec![
                x(t0 + 5, common::FIB, 3), // orphan
                e(t0 + 10, common::MAIN, 0),
                e(t0 + 20, common::PARSE, 1),
                e(t0 + 30, common::LEX, 2), // its exit is lost
                x(t0 + 90, common::PARSE, 1),
                x(t0 + 100, common::MAIN, 0),
            ],
            ..Default::default()
        }],
        symbols: common::symbols(),
        ..Default::default()
    };
    let value = parse(&trace);
    let mut spans: Vec<(String, u64, u64, bool)> = events(&value)
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                ns(&e["ts"]),
                ns(&e["dur"]),
                e["args"]["unfinished"] == true,
            )
        })
        .collect();
    spans.sort_by_key(|s| s.1);
    let s = |n: &str, ts: u64, dur: u64, u: bool| (n.to_string(), ts, dur, u);
    assert_eq!(
        spans,
        [
            s("main", 10, 90, false),
            s("parse", 20, 70, false),
            s("lex", 30, 60, true),
        ]
    );
    let meta = events(&value)
        .iter()
        .find(|e| e["name"] == "thread_name")
        .unwrap();
    assert_eq!(meta["args"]["orphan_exits"], 1);
}
