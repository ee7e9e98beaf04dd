//! `livetrace trace PID`: attach a tracer to a running process and move its
//! records out while it runs, to the terminal or a file.

use std::path::Path;
use std::time::{Duration, Instant};

use livetrace_format::{EndReason, Tracer};
use livetrace_proto::{Mode, Request, Response};

use crate::args::{OutputArgs, Selection};
use crate::recorder::{end, write_profile, Attached, Output, Stop};
use crate::ui;
use crate::{connect, usage, Error};

/// Records per thread of a stream's buffers unless --buffer says (8 MiB:
/// several milliseconds of a thread's records at full speed, while the
/// consumer is away).
pub const STREAM_RECORDS: u64 = 256 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// The process
    pid: u32,
    #[command(flatten)]
    sel: Selection,
    /// Stop after this long (10s, 500ms, 2m)
    #[arg(long, short = 'd', value_parser = ui::parse_duration)]
    duration: Option<Duration>,
    /// Flight recorder: the buffers keep each thread's newest records
    /// (--buffer of them), overwriting the oldest; they are written at the
    /// end, or when a --snapshot-at function is called. `livetrace snapshot
    /// PID` writes them meanwhile.
    #[arg(long)]
    flight: bool,
    /// With --flight: take the snapshot (and end) when FUNC is called
    #[arg(long, value_name = "FUNC", requires = "flight")]
    snapshot_at: Vec<String>,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(dir: &Path, a: Args) -> Result<(), Error> {
    let tracer = a.sel.tracer;
    let format = a.out.format(tracer).map_err(usage)?;
    if a.flight && tracer == Tracer::Profile {
        return Err(usage(
            "the profile tracer keeps a table, not records: no flight recorder",
        ));
    }
    let mode = if a.flight { Mode::Flight } else { Mode::Stream };
    let start = Request::StartTrace {
        tracer,
        filter: a.sel.filter(),
        notrace: a.sel.notrace.clone(),
        buffer_records: a
            .sel
            .buffer
            .or((!a.flight && tracer != Tracer::Profile).then_some(STREAM_RECORDS)),
        mode: Some(mode),
        memory_budget: a.sel.memory,
        controls: a.sel.controls(&a.snapshot_at),
        no_relocate: a.sel.no_relocate,
    };
    start.validate().map_err(usage)?;
    if a.sel.no_relocate {
        crate::attach::will_not_relocate();
    }
    ui::catch_interrupts();
    let mut c = connect(dir, a.pid)?;
    let Response::Started { session } = c.call(&start)? else {
        return Err(Error::UnexpectedReply);
    };
    let mut at = Attached::new(c, Some(session), tracer, a.flight, false)?;
    let started = Instant::now();
    let duration = a.duration;
    let mut stop = |_: &Attached| {
        (ui::interrupted() || duration.is_some_and(|d| started.elapsed() >= d))
            .then_some(Stop::Asked)
    };
    let dest = a.out.output.as_deref();
    if tracer == Tracer::Profile {
        let how = at.idle(&mut stop)?;
        let Some(rows) = at.stop_profile()? else {
            return Err(Error::ProcessEnded { pid: a.pid });
        };
        let e = end(EndReason::Stopped, 0, "");
        write_profile(&rows, format, dest, &at.info(), &e)?;
        if how == Stop::ProgramEnded {
            eprintln!("livetrace: the program ended");
        }
        if let Some(p) = dest {
            eprintln!(
                "livetrace: {} profile rows written to {}",
                rows.len(),
                p.display()
            );
        }
        return Ok(());
    }
    let mut output = Output::open(format, dest, &at)?;
    let how = match at.run(output.out(), &mut stop).and_then(|h| {
        at.finish(output.out())?;
        Ok(h)
    }) {
        Ok(h) => h,
        // Written to a pipe whose reader has all it wanted: stop tracing
        // (the session ends with `at`) and say nothing.
        Err(Error::ReaderGone) if dest.is_none() => {
            output.abandon();
            return Ok(());
        }
        Err(e) => {
            output.abandon();
            return Err(Error::Stopped {
                source: Box::new(e),
                note: "tracing stopped there, the output holds what came before (the process \
                       goes on, untraced)"
                    .into(),
            });
        }
    };
    let (reason, said) = match how {
        Stop::Asked => (EndReason::Stopped, None),
        Stop::ProgramEnded => (
            EndReason::Ended,
            Some(format!("the program ended (pid {})", a.pid)),
        ),
        Stop::Triggered => (
            EndReason::Snapshot,
            Some("the snapshot trigger fired".to_string()),
        ),
    };
    let stats = at.stats();
    drop(at);
    let place = output.close(&end(reason, 0, said.clone().unwrap_or_default()))?;
    if let Some(s) = said {
        eprintln!("livetrace: {s}");
    }
    for line in stats.report(&place) {
        eprintln!("livetrace: {line}");
    }
    Ok(())
}
