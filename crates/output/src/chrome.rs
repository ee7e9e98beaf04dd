//! Chrome Trace Event Format JSON, which Perfetto UI (ui.perfetto.dev) and
//! `chrome://tracing` open. Follows Google's "Trace Event Format" document,
//! in its JSON object form:
//!
//! ```json
//! {"traceEvents": [
//!   {"name":"process_name","ph":"M","ts":0,"pid":4242,"tid":4242,"args":{"name":"demo"}},
//!   {"name":"thread_name","ph":"M","ts":0,"pid":4242,"tid":4243,
//!    "args":{"name":"worker-1","lost":7,"depth_overflows":2,"orphan_exits":3}},
//!   {"name":"parse","cat":"function","ph":"X","ts":0.1,"dur":25.9,"pid":4242,"tid":4242},
//!   {"name":"lex","cat":"function","ph":"i","s":"t","ts":1.5,"pid":4242,"tid":4242,
//!    "args":{"caller":"parse"}}
//!  ],
//!  "displayTimeUnit": "ns",
//!  "otherData": {"program": "...", "pid": 4242, "start_ns": "1000000000000", ...}}
//! ```
//!
//! * Each Entry/Exit pair is one `X` (complete) event. `ts` and `dur` are
//!   microseconds as floats (the format's unit), `ts` counted from the
//!   trace's `start_ns`, which `otherData` gives as absolute
//!   `CLOCK_MONOTONIC` ns (a string: it can exceed what a JavaScript number
//!   holds exactly). Relative times keep the floats exact to the ns.
//! * A call with no exit is still an `X` event, cut off where it is known to
//!   have ended (the exit that abandoned it) or else at its thread's last
//!   event, with `"args":{"unfinished":true}`: viewers draw it, nested as
//!   it was.
//! * An orphan exit (its entry was overwritten) has no start, so it is not
//!   drawn; its thread's `thread_name` metadata counts them.
//! * Each function-tracer Call event is an `i` (instant) event of thread
//!   scope, with its caller in `args`.
//! * `M` metadata names the process (the program's file name, with the full
//!   command line in `otherData`) and each thread; `thread_name` args also
//!   carry the thread's lost events and depth overflows, and a
//!   `process_labels` entry summarises losses where viewers show it.
//!   Every event, metadata included, has `name`, `ph`, `ts`, `pid`, `tid`.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use crate::calls::CallTree;
use crate::model::Trace;

fn micros(ns: u64, start: u64) -> f64 {
    (i128::from(ns) - i128::from(start)) as f64 / 1000.0
}

/// The whole trace as a JSON value.
pub fn to_value(trace: &Trace) -> Value {
    let pid = trace.pid;
    let syms = &trace.symbols;
    let program = trace.program.rsplit('/').next().unwrap_or(&trace.program);
    let mut events = vec![json!({
        "name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": pid,
        "args": {"name": program},
    })];
    let lost: u64 = trace.threads.iter().map(|t| t.lost).sum();
    if lost > 0 {
        events.push(json!({
            "name": "process_labels", "ph": "M", "ts": 0, "pid": pid, "tid": pid,
            "args": {"labels": format!("lost {lost} events")},
        }));
    }
    let mut lost_by_tid = Map::new();

    for thread in &trace.threads {
        let tid = thread.tid;
        let tree = CallTree::build(thread);
        let name = if thread.name.is_empty() {
            format!("tid {tid}")
        } else {
            thread.name.clone()
        };
        events.push(json!({
            "name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": tid,
            "args": {
                "name": name,
                "lost": thread.lost,
                "depth_overflows": thread.depth_overflows,
                "orphan_exits": tree.orphans(),
            },
        }));
        lost_by_tid.insert(tid.to_string(), json!(thread.lost));

        // Parents before children, so equal timestamps nest the right way
        // in viewers that keep input order for ties.
        for id in tree.preorder() {
            let call = &tree.calls[id];
            let Some(entry) = call.entry else { continue };
            // Never negative, even for out-of-order timestamps.
            let end = tree.end_of(id).max(entry);
            let mut event = json!({
                "name": syms.display(call.func),
                "cat": "function",
                "ph": "X",
                "ts": micros(entry, trace.start_ns),
                "dur": micros(end, entry),
                "pid": pid,
                "tid": tid,
            });
            if call.exit.is_none() {
                event["args"] = json!({"unfinished": true});
            }
            events.push(event);
        }
        for instant in &tree.instants {
            events.push(json!({
                "name": syms.display(instant.func),
                "cat": "function",
                "ph": "i",
                "s": "t",
                "ts": micros(instant.ts, trace.start_ns),
                "pid": pid,
                "tid": tid,
                "args": {"caller": syms.display(instant.caller)},
            }));
        }
    }

    json!({
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "producer": concat!("livetrace-output ", env!("CARGO_PKG_VERSION")),
            "program": trace.program,
            "cmdline": trace.cmdline.join(" "),
            "pid": pid,
            "start_ns": trace.start_ns.to_string(),
            "clock": "CLOCK_MONOTONIC",
            "lost_events": lost_by_tid,
        },
    })
}

/// Writes the trace as a Trace Event Format JSON object.
pub fn write<W: Write>(trace: &Trace, mut out: W) -> io::Result<()> {
    serde_json::to_writer(&mut out, &to_value(trace))?;
    writeln!(out)?;
    out.flush()
}
