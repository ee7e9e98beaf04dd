//! Chrome Trace Event Format JSON, which Perfetto UI (ui.perfetto.dev) and
//! `chrome://tracing` open. Follows Google's "Trace Event Format" document,
//! in its JSON object form:
//!
//! ```json
//! {"traceEvents": [
//!   {"name":"process_name","ph":"M","ts":0,"pid":4242,"tid":4242,"args":{"name":"demo"}},
//!   {"name":"lex","cat":"function","ph":"X","ts":0.200,"dur":0.500,"pid":4242,"tid":4242},
//!   {"name":"parse","cat":"function","ph":"X","ts":0.100,"dur":25.900,"pid":4242,"tid":4242},
//!   {"name":"lex","cat":"function","ph":"i","s":"t","ts":1.500,"pid":4242,"tid":4242,
//!    "args":{"caller":"parse"}},
//!   {"name":"thread_name","ph":"M","ts":0,"pid":4242,"tid":4243,
//!    "args":{"name":"worker-1","events":11,"lost":7,"depth_overflows":2,"orphan_exits":3,
//!            "lost_by_reason":{"overwritten":7,"depth_limit":2}}}
//!  ],
//!  "displayTimeUnit": "ns",
//!  "otherData": {"program": "...", "pid": 4242, "start_ns": "1000000000000", ...}}
//! ```
//!
//! Written as the events are read: nothing is kept but each thread's open
//! calls (bounded by the nesting depth) and the names already escaped.
//!
//! * Each Entry/Exit pair is one `X` (complete) event, written when the
//!   call returns, so a caller follows its callees in the file; viewers
//!   order events by time (Perfetto puts the longer of two `X` events with
//!   the same start first, so they nest right even then). `ts` and `dur`
//!   are microseconds with three decimals (the format's unit, exact to the
//!   ns), `ts` counted from the trace's `start_ns`, which `otherData`
//!   gives as absolute `CLOCK_MONOTONIC` ns (a string: it can exceed what a
//!   JavaScript number holds exactly).
//! * A call with no exit is still an `X` event, cut off where it is known to
//!   have ended (the exit that abandoned it) or else at its thread's last
//!   event, with `"args":{"unfinished":true}`: viewers draw it, nested as
//!   it was.
//! * An orphan exit (its entry was overwritten) has no start, so it is not
//!   drawn; its thread's `thread_name` metadata counts them.
//! * Each function-tracer Call event is an `i` (instant) event of thread
//!   scope, with its caller in `args`.
//! * `M` metadata, at the end (the format does not care where), names the
//!   process (the program's file name, with the full command line in
//!   `otherData`) and each thread; `thread_name` args also carry the
//!   thread's kept events and its losses by reason, and a `process_labels`
//!   entry summarises losses where viewers show it. Every event, metadata
//!   included, has `name`, `ph`, `ts`, `pid`, `tid`.

use std::io::{self, BufWriter, Write};

use serde_json::{json, Map, Value};

use crate::model::{Event, LossReason, Process, Summary, Symbols, Trace};
use crate::sink::{feed, land, Landing, NameCache, Open, Order, Sink, Threads, MAX_OPEN};

#[derive(Default)]
struct ThreadState {
    stack: Vec<Open>,
    orphans: u64,
    /// `,"pid":P,"tid":T` for this thread.
    ids: Vec<u8>,
}

/// The Chrome JSON writer, streamed.
pub struct ChromeJson<W: Write> {
    out: BufWriter<W>,
    process: Process,
    threads: Threads<ThreadState>,
    /// Function and caller names, JSON-escaped with their quotes.
    names: NameCache<Box<str>>,
    line: Vec<u8>,
}

impl<W: Write> ChromeJson<W> {
    pub fn new(out: W) -> Self {
        ChromeJson {
            out: BufWriter::with_capacity(1 << 16, out),
            process: Process::default(),
            threads: Threads::default(),
            names: NameCache::default(),
            line: Vec::with_capacity(256),
        }
    }

    /// The writer, once finished.
    pub fn into_inner(self) -> io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// `ns - start` in microseconds with three decimals.
fn push_micros(line: &mut Vec<u8>, ns: u64, start: u64) {
    let (neg, abs) = if ns >= start {
        (false, ns - start)
    } else {
        (true, start - ns)
    };
    if neg {
        line.push(b'-');
    }
    let mut buf = itoa::Buffer::new();
    line.extend_from_slice(buf.format(abs / 1000).as_bytes());
    let frac = abs % 1000;
    line.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn escaped(name: &str) -> Box<str> {
    serde_json::to_string(name)
        .expect("a string serializes")
        .into_boxed_str()
}

/// One `X` event, into `line`.
#[allow(clippy::too_many_arguments)]
fn complete(
    line: &mut Vec<u8>,
    cache: &mut NameCache<Box<str>>,
    names: &Symbols,
    start: u64,
    ids: &[u8],
    open: Open,
    end: u64,
    unfinished: bool,
) {
    line.extend_from_slice(b",\n{\"name\":");
    line.extend_from_slice(cache.get(open.func, names, escaped).as_bytes());
    line.extend_from_slice(b",\"cat\":\"function\",\"ph\":\"X\",\"ts\":");
    push_micros(line, open.entry, start);
    line.extend_from_slice(b",\"dur\":");
    push_micros(line, end.max(open.entry), open.entry);
    line.extend_from_slice(ids);
    if unfinished {
        line.extend_from_slice(b",\"args\":{\"unfinished\":true}");
    }
    line.push(b'}');
}

impl<W: Write> Sink for ChromeJson<W> {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.process = process.clone();
        let meta = json!({
            "name": "process_name", "ph": "M", "ts": 0, "pid": process.pid, "tid": process.pid,
            "args": {"name": process.program_name()},
        });
        self.out.write_all(b"{\"traceEvents\":[\n")?;
        serde_json::to_writer(&mut self.out, &meta)?;
        Ok(())
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name);
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        let pid = self.process.pid;
        let start = self.process.start_ns;
        let thread = self.threads.event(tid, event.ts());
        let state = &mut thread.state;
        if state.ids.is_empty() {
            state.ids = format!(",\"pid\":{pid},\"tid\":{tid}").into_bytes();
        }
        let line = &mut self.line;
        line.clear();
        match event {
            Event::Entry { ts, func, depth } => {
                if state.stack.len() < MAX_OPEN {
                    state.stack.push(Open {
                        func,
                        depth,
                        entry: ts,
                    });
                }
                return Ok(());
            }
            Event::Exit { ts, func, depth } => {
                let stack = &mut state.stack;
                let (keep, closed) = match land(stack, func, depth, |o| (o.func, o.depth)) {
                    Landing::Closes(i) => (i, Some(stack[i])),
                    Landing::Orphan(i) => {
                        state.orphans += 1;
                        (i, None)
                    }
                };
                // Abandoned calls end here, innermost first.
                let skip = usize::from(closed.is_some());
                for &open in stack[keep + skip..].iter().rev() {
                    complete(
                        line,
                        &mut self.names,
                        names,
                        start,
                        &state.ids,
                        open,
                        ts,
                        true,
                    );
                }
                if let Some(open) = closed {
                    complete(
                        line,
                        &mut self.names,
                        names,
                        start,
                        &state.ids,
                        open,
                        ts,
                        false,
                    );
                }
                stack.truncate(keep);
            }
            Event::Call { ts, func, caller } => {
                line.extend_from_slice(b",\n{\"name\":");
                line.extend_from_slice(self.names.get(func, names, escaped).as_bytes());
                line.extend_from_slice(b",\"cat\":\"function\",\"ph\":\"i\",\"s\":\"t\",\"ts\":");
                push_micros(line, ts, start);
                line.extend_from_slice(&state.ids);
                line.extend_from_slice(b",\"args\":{\"caller\":");
                line.extend_from_slice(self.names.get(caller, names, escaped).as_bytes());
                line.extend_from_slice(b"}}");
            }
        }
        self.out.write_all(line)
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.threads.lost(tid, count, reason);
        Ok(())
    }

    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        let pid = self.process.pid;
        // Calls still open, innermost first, cut at their thread's last event.
        let start = self.process.start_ns;
        for t in self.threads.iter_mut() {
            let last = t.summary.last_ts.unwrap_or(0);
            for open in t.state.stack.drain(..).rev() {
                self.line.clear();
                complete(
                    &mut self.line,
                    &mut self.names,
                    names,
                    start,
                    &t.state.ids,
                    open,
                    last,
                    true,
                );
                self.out.write_all(&self.line)?;
            }
        }

        let summary = self.threads.summary();
        let lost = summary.lost();
        if lost > 0 {
            self.out.write_all(b",\n")?;
            serde_json::to_writer(
                &mut self.out,
                &json!({
                    "name": "process_labels", "ph": "M", "ts": 0, "pid": pid, "tid": pid,
                    "args": {"labels": format!("lost {lost} events")},
                }),
            )?;
        }
        let mut lost_by_tid = Map::new();
        let mut kept_by_tid = Map::new();
        for t in self.threads.iter() {
            let s = &t.summary;
            let name = if s.name.is_empty() {
                format!("tid {}", s.tid)
            } else {
                s.name.clone()
            };
            let by_reason: Map<String, Value> = s
                .losses
                .iter()
                .map(|(r, n)| (r.key().to_string(), json!(n)))
                .collect();
            self.out.write_all(b",\n")?;
            serde_json::to_writer(
                &mut self.out,
                &json!({
                    "name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": s.tid,
                    "args": {
                        "name": name,
                        "events": s.events,
                        "lost": s.losses.events(),
                        "depth_overflows": s.losses.get(LossReason::DepthLimit),
                        "orphan_exits": t.state.orphans,
                        "lost_by_reason": by_reason,
                    },
                }),
            )?;
            lost_by_tid.insert(s.tid.to_string(), json!(s.losses.events()));
            kept_by_tid.insert(s.tid.to_string(), json!(s.events));
        }
        let p = &self.process;
        let other = json!({
            "producer": concat!("livetrace-output ", env!("CARGO_PKG_VERSION")),
            "program": p.program,
            "cmdline": p.cmdline.join(" "),
            "pid": pid,
            "start_ns": p.start_ns.to_string(),
            "clock": "CLOCK_MONOTONIC",
            "events": kept_by_tid,
            "lost_events": lost_by_tid,
        });
        self.out
            .write_all(b"\n],\n\"displayTimeUnit\":\"ns\",\n\"otherData\":")?;
        serde_json::to_writer(&mut self.out, &other)?;
        self.out.write_all(b"}\n")?;
        self.out.flush()?;
        Ok(summary)
    }
}

/// Writes the trace as a Trace Event Format JSON object.
pub fn write<W: Write>(trace: &Trace, out: W) -> io::Result<()> {
    feed(trace, Order::ByThread, &mut ChromeJson::new(out)).map(|_| ())
}

/// The whole trace as a JSON value (parsed back from [`write()`]'s output:
/// for tests and small traces only).
pub fn to_value(trace: &Trace) -> Value {
    let mut out = Vec::new();
    write(trace, &mut out).expect("writing to memory");
    serde_json::from_slice(&out).expect("the writer writes valid JSON")
}
