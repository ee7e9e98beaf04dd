//! Choosing an output format and writing a trace in it.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use livetrace_output::{ProfileRow, Trace};
use livetrace_proto::TracerKind;

/// The formats `-o`/`--format` offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// ftrace's text layouts (function / function_graph), or the profile
    /// table.
    Text,
    /// Chrome Trace Event JSON (Perfetto, chrome://tracing); profile rows
    /// as a JSON array for the profile tracer.
    Json,
    /// Folded stacks, one `a;b;c weight` line per stack.
    Folded,
    /// A flame graph SVG.
    Svg,
    /// A `uftrace.data` directory for the uftrace tool.
    Uftrace,
}

/// Where the output goes.
pub enum Dest {
    Stdout,
    File(PathBuf),
}

/// The format `--format` names, or else the one `-o`'s name implies.
pub fn choose(format: Option<Format>, out: Option<&Path>) -> Result<Format, String> {
    if let Some(f) = format {
        return Ok(f);
    }
    let Some(out) = out else {
        return Ok(Format::Text);
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with("uftrace.data") {
        return Ok(Format::Uftrace);
    }
    match out.extension().and_then(|e| e.to_str()) {
        Some("txt") | Some("trace") => Ok(Format::Text),
        Some("json") => Ok(Format::Json),
        Some("folded") => Ok(Format::Folded),
        Some("svg") => Ok(Format::Svg),
        _ => Err(format!(
            "cannot tell the format of '{}' from its name (.txt, .json, .folded, .svg, or a \
             directory named *uftrace.data); use --format",
            out.display()
        )),
    }
}

/// Checks up front that the format fits the tracer and the destination, so
/// nothing is traced for an output that cannot be written.
pub fn check(format: Format, tracer: TracerKind, dest: &Dest) -> Result<(), String> {
    if tracer == TracerKind::Profile
        && matches!(format, Format::Folded | Format::Svg | Format::Uftrace)
    {
        return Err(format!(
            "the profile tracer keeps no events, so it cannot write {format:?}; use the function \
             or graph tracer, or text/json"
        ));
    }
    if format == Format::Uftrace && matches!(dest, Dest::Stdout) {
        return Err("uftrace output is a directory: give it with -o NAME.uftrace.data".into());
    }
    Ok(())
}

fn to_dest(dest: &Dest, f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    match dest {
        Dest::Stdout => {
            let out = io::stdout();
            let mut out = io::BufWriter::new(out.lock());
            f(&mut out)?;
            out.flush()
        }
        Dest::File(p) => {
            let mut out = io::BufWriter::new(std::fs::File::create(p)?);
            f(&mut out)?;
            out.flush()
        }
    }
}

/// Writes the trace (or, for the profile tracer, the rows) in `format`.
pub fn write(
    trace: &Trace,
    tracer: TracerKind,
    profile: &[ProfileRow],
    format: Format,
    dest: &Dest,
) -> Result<(), String> {
    let what = |e: io::Error| match dest {
        Dest::Stdout => format!("cannot write the output: {e}"),
        Dest::File(p) => format!("cannot write {}: {e}", p.display()),
    };
    if tracer == TracerKind::Profile {
        return match format {
            Format::Text => to_dest(dest, |w| livetrace_output::profile::write_table(profile, w)),
            Format::Json => to_dest(dest, |w| {
                let rows: Vec<serde_json::Value> = profile
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "name": r.name, "calls": r.calls, "total_ns": r.total_ns,
                            "self_ns": r.self_ns, "min_ns": r.min_ns, "max_ns": r.max_ns,
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *w, &rows).map_err(io::Error::other)?;
                writeln!(w)
            }),
            _ => unreachable!("refused by check()"),
        }
        .map_err(what);
    }
    match format {
        Format::Text => to_dest(dest, |w| match tracer {
            TracerKind::Graph => livetrace_output::text::write_function_graph(trace, w),
            _ => livetrace_output::text::write_function(trace, w),
        }),
        Format::Json => to_dest(dest, |w| livetrace_output::chrome::write(trace, w)),
        Format::Folded => to_dest(dest, |w| {
            livetrace_output::folded::write(trace, w).map(|_| ())
        }),
        Format::Svg => to_dest(dest, |w| livetrace_output::folded::flamegraph(trace, w)),
        Format::Uftrace => match dest {
            Dest::File(p) => livetrace_output::uftrace::write_dir(trace, p),
            Dest::Stdout => unreachable!("refused by check()"),
        },
    }
    .map_err(what)
}

/// Streamed graph text, printed a call at a time: each poll brings the
/// events since the previous one, and a call that started in one poll may
/// end in a later one. Each thread's events are held back until its open
/// calls have all returned (or [`HOLD_MAX`] events are waiting, so that a
/// call that never returns, like `main`'s, cannot hold output back for
/// ever), so the printed text nests properly across polls.
#[derive(Default)]
pub struct GraphStream {
    pending: std::collections::BTreeMap<u32, livetrace_output::ThreadTrace>,
    symbols: livetrace_output::Symbols,
    header: Option<Trace>,
}

/// Events a thread may hold back waiting for its calls to return.
pub const HOLD_MAX: usize = 100_000;

impl GraphStream {
    /// Adds a polled piece; returns what can be printed now (everything,
    /// when `last`).
    pub fn push(&mut self, piece: Trace, last: bool) -> Trace {
        use livetrace_output::Event;
        for s in piece.symbols.iter() {
            self.symbols.insert(s.addr, s.size, s.name.clone());
        }
        let mut out = Trace {
            threads: Vec::new(),
            symbols: self.symbols.clone(),
            ..piece.clone()
        };
        out.start_ns = self.header.as_ref().map_or(piece.start_ns, |h| h.start_ns);
        if self.header.is_none() {
            self.header = Some(Trace {
                threads: Vec::new(),
                ..piece.clone()
            });
        }
        for t in piece.threads {
            let p = self
                .pending
                .entry(t.tid)
                .or_insert_with(|| livetrace_output::ThreadTrace {
                    tid: t.tid,
                    name: t.name.clone(),
                    events: Vec::new(),
                    lost: 0,
                    depth_overflows: 0,
                });
            p.name = t.name;
            p.events.extend(t.events);
            p.lost += t.lost;
            p.depth_overflows += t.depth_overflows;
        }
        for p in self.pending.values_mut() {
            // Print up to the last point where every call seen has returned.
            let mut open = 0usize;
            let mut cut = 0;
            for (i, e) in p.events.iter().enumerate() {
                match e {
                    Event::Entry { .. } => open += 1,
                    Event::Exit { .. } => open = open.saturating_sub(1),
                    Event::Call { .. } => {}
                }
                if open == 0 {
                    cut = i + 1;
                }
            }
            if last || p.events.len() > HOLD_MAX {
                cut = p.events.len();
            }
            if cut == 0 && p.lost == 0 {
                continue;
            }
            let rest = p.events.split_off(cut);
            let events = std::mem::replace(&mut p.events, rest);
            out.threads.push(livetrace_output::ThreadTrace {
                tid: p.tid,
                name: p.name.clone(),
                events,
                lost: std::mem::take(&mut p.lost),
                depth_overflows: std::mem::take(&mut p.depth_overflows),
            });
        }
        self.pending.retain(|_, p| !p.events.is_empty());
        out
    }
}

/// Writes one streamed piece as text, leaving out the `#` header after
/// the first piece.
pub fn stream_text(trace: &Trace, tracer: TracerKind, first: bool) -> io::Result<()> {
    let mut buf = Vec::new();
    match tracer {
        TracerKind::Graph => livetrace_output::text::write_function_graph(trace, &mut buf)?,
        _ => livetrace_output::text::write_function(trace, &mut buf)?,
    }
    let text = String::from_utf8_lossy(&buf);
    let out = io::stdout();
    let mut out = out.lock();
    for line in text.lines() {
        // "still running at the end" describes this piece, not the trace.
        if line.contains("still running at the end of the trace") {
            continue;
        }
        // The header's entry count would describe this piece only.
        if (!first && line.starts_with('#')) || line.starts_with("# entries:") {
            continue;
        }
        writeln!(out, "{line}")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(events: Vec<livetrace_output::Event>) -> Trace {
        let mut t = Trace::default();
        t.symbols.insert(0xa, 0, "a");
        t.threads.push(livetrace_output::ThreadTrace {
            tid: 7,
            name: "w".into(),
            events,
            lost: 0,
            depth_overflows: 0,
        });
        t
    }

    #[test]
    fn streamed_calls_print_whole_across_polls() {
        use livetrace_output::Event::{Entry, Exit};
        let mut s = GraphStream::default();
        // Poll 1: a() entered, b() entered and returned; a() still open.
        let out = s.push(
            piece(vec![
                Entry {
                    ts: 1,
                    func: 0xa,
                    depth: 0,
                },
                Entry {
                    ts: 2,
                    func: 0xb,
                    depth: 1,
                },
                Exit {
                    ts: 3,
                    func: 0xb,
                    depth: 1,
                },
            ]),
            false,
        );
        assert!(out.threads.iter().all(|t| t.events.is_empty()));
        // Poll 2: a() returns, c() is called and returns, d() starts.
        let out = s.push(
            piece(vec![
                Exit {
                    ts: 4,
                    func: 0xa,
                    depth: 0,
                },
                Entry {
                    ts: 5,
                    func: 0xc,
                    depth: 0,
                },
                Exit {
                    ts: 6,
                    func: 0xc,
                    depth: 0,
                },
                Entry {
                    ts: 7,
                    func: 0xd,
                    depth: 0,
                },
            ]),
            false,
        );
        assert_eq!(out.threads[0].events.len(), 6, "a, b and c, whole");
        assert_eq!(out.symbols.name_of(0xa), Some("a"));
        // The last poll prints what is left, d() unfinished.
        let out = s.push(piece(vec![]), true);
        assert_eq!(out.threads[0].events.len(), 1);
    }

    #[test]
    fn a_call_that_never_returns_does_not_hold_output_for_ever() {
        use livetrace_output::Event::{Entry, Exit};
        let mut s = GraphStream::default();
        let mut events = vec![Entry {
            ts: 0,
            func: 0xa,
            depth: 0,
        }];
        for i in 0..HOLD_MAX as u64 {
            events.push(Entry {
                ts: 2 * i + 1,
                func: 0xb,
                depth: 1,
            });
            events.push(Exit {
                ts: 2 * i + 2,
                func: 0xb,
                depth: 1,
            });
        }
        let out = s.push(piece(events), false);
        assert_eq!(out.threads[0].events.len(), 2 * HOLD_MAX + 1);
    }

    #[test]
    fn formats_from_names() {
        let c = |p: &str| choose(None, Some(Path::new(p)));
        assert_eq!(c("a.txt"), Ok(Format::Text));
        assert_eq!(c("a.json"), Ok(Format::Json));
        assert_eq!(c("a.folded"), Ok(Format::Folded));
        assert_eq!(c("x/a.svg"), Ok(Format::Svg));
        assert_eq!(c("uftrace.data"), Ok(Format::Uftrace));
        assert_eq!(c("run1.uftrace.data"), Ok(Format::Uftrace));
        assert!(c("a.bin").is_err());
        assert_eq!(
            choose(Some(Format::Json), Some(Path::new("a.bin"))),
            Ok(Format::Json)
        );
        assert_eq!(choose(None, None), Ok(Format::Text));
    }
}
