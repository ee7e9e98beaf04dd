//! The arguments `trace`, `record` and `snapshot` share: what to trace, how
//! much of it, where to.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use livetrace_format::{Format, Tracer};
use livetrace_proto::Controls;

use crate::ui;

/// What to trace, with what buffers.
#[derive(Args, Clone, Debug)]
pub struct Selection {
    /// Functions to trace (name, glob or 0x site address; repeatable)
    /// [default: all]
    #[arg(short = 'f', long = "filter", value_name = "GLOB")]
    pub filter: Vec<String>,
    /// Functions never to trace (repeatable)
    #[arg(short = 'n', long = "notrace", value_name = "GLOB")]
    pub notrace: Vec<String>,
    /// The tracer: function (one event per call), graph (entries and exits,
    /// durations) or profile (a table, no events)
    #[arg(short = 't', long, default_value = "function", value_parser = parse_tracer)]
    pub tracer: Tracer,
    /// Each thread's buffer: records (a power of two; 32 bytes each), or a
    /// size (8M: 262144 records). Stream default 8M, flight recorder 2M
    #[arg(long, value_name = "RECORDS|SIZE", value_parser = parse_buffer)]
    pub buffer: Option<u64>,
    /// Memory the session's buffers may use in all (e.g. 256M): how many
    /// threads can have a buffer at once; records of threads beyond it are
    /// counted lost
    #[arg(long, value_name = "SIZE", value_parser = ui::parse_size)]
    pub memory: Option<u64>,
    /// Do not give the functions a filter names that were compiled without
    /// a site one by prologue relocation (by default they are)
    #[arg(long)]
    pub no_relocate: bool,
    /// (The default; kept for scripts written when relocation was opt-in.)
    #[arg(long, hide = true, conflicts_with = "no_relocate")]
    pub relocate: bool,
    #[command(flatten)]
    pub volume: Volume,
}

/// What is recorded at all, decided in the traced process.
#[derive(Args, Clone, Debug, Default)]
pub struct Volume {
    /// Graph tracer: record only calls nested less than N deep (1: the
    /// outermost traced calls only), as uftrace -D
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,
    /// Graph tracer: record only calls that last at least this long (e.g.
    /// 1us), with their callers, as uftrace -t
    #[arg(long, value_name = "TIME", value_parser = ui::parse_duration)]
    pub min_duration: Option<Duration>,
    /// Record nothing until FUNC is called (its call is the first recorded;
    /// repeatable), as ftrace's traceon trigger
    #[arg(long, value_name = "FUNC")]
    pub start_at: Vec<String>,
    /// Stop recording when FUNC is called (repeatable), as ftrace's
    /// traceoff trigger
    #[arg(long, value_name = "FUNC")]
    pub stop_at: Vec<String>,
}

/// A record count, or a size in bytes with a K, M or G suffix.
fn parse_buffer(s: &str) -> Result<u64, String> {
    if s.trim().ends_with(|c: char| c.is_ascii_alphabetic()) {
        Ok(ui::parse_size(s)? / 32)
    } else {
        s.trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a record count or a size (like 65536 or 8M)"))
    }
}

fn parse_tracer(s: &str) -> Result<Tracer, String> {
    s.parse()
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

impl Selection {
    /// The filter, `*` when none was given.
    pub fn filter(&self) -> Vec<String> {
        if self.filter.is_empty() {
            vec!["*".to_string()]
        } else {
            self.filter.clone()
        }
    }

    /// The volume controls, with flight-recorder snapshot triggers.
    pub fn controls(&self, snapshot_at: &[String]) -> Controls {
        Controls {
            depth: self.volume.depth,
            min_duration_ns: self
                .volume
                .min_duration
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64),
            start_at: self.volume.start_at.clone(),
            stop_at: self.volume.stop_at.clone(),
            snapshot_at: snapshot_at.to_vec(),
        }
    }
}

/// Where the output goes.
#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Write to this file (or uftrace.data directory) instead of the terminal
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The output format [default: from -o's name, else text]: lttrace,
    /// text, json, perfetto, folded, svg, uftrace, profile
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,
}

impl OutputArgs {
    /// The format, checked against the tracer and the destination up front,
    /// so nothing is traced for an output that cannot be written.
    pub fn format(&self, tracer: Tracer) -> Result<Format, String> {
        let f = Format::choose(self.format, self.output.as_deref())?;
        f.suits(tracer)?;
        if self.output.is_none() && matches!(f, Format::Uftrace | Format::Lttrace) {
            return Err(format!(
                "{} output is not for a terminal: give a file with -o",
                f.name()
            ));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_buffer;

    #[test]
    fn buffers_in_records_or_bytes() {
        assert_eq!(parse_buffer("65536"), Ok(65536));
        assert_eq!(parse_buffer("8M"), Ok(262_144));
        assert_eq!(parse_buffer("64K"), Ok(2048));
        assert!(parse_buffer("lots").is_err());
    }
}
