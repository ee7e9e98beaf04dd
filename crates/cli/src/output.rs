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
