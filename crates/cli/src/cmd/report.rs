//! `livetrace report PID|FILE`: a profile table, of a running process or
//! of a recorded trace.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use livetrace_output::ProfileRow;
use livetrace_proto::{Request, Response, TracerKind};

use crate::convert::Target;
use crate::ui::{self, Progress};
use crate::{connect, Error};

#[derive(clap::Args)]
pub struct Args {
    /// The process, or a recorded trace (.lttrace) to report on offline
    #[arg(value_parser = crate::convert::parse_target, value_name = "PID|FILE")]
    target: Target,
    /// Functions to profile (name, glob or 0x site address; repeatable)
    /// [default: all]
    #[arg(short = 'f', long = "filter", value_name = "GLOB")]
    filter: Vec<String>,
    /// Functions never to profile (repeatable)
    #[arg(short = 'n', long = "notrace", value_name = "GLOB")]
    notrace: Vec<String>,
    /// Refresh the table until Ctrl-C
    #[arg(long, short = 'w')]
    watch: bool,
    /// How long to profile without --watch
    #[arg(long, short = 'd', value_parser = ui::parse_duration, default_value = "2s")]
    duration: Duration,
    /// How often --watch refreshes
    #[arg(long, value_parser = ui::parse_duration, default_value = "1s")]
    interval: Duration,
}

pub fn run(dir: &Path, a: Args) -> Result<(), Error> {
    match a.target.clone() {
        Target::File(path) => crate::convert::report_file(&path),
        Target::Pid(pid) => live(dir, pid, a),
    }
}

/// Runs the live report on process `pid`.
fn live(dir: &Path, pid: u32, a: Args) -> Result<(), Error> {
    let Args {
        filter,
        notrace,
        watch,
        duration,
        interval,
        ..
    } = a;
    use std::io::IsTerminal;
    ui::catch_interrupts();
    let mut c = connect(dir, pid)?;
    let filter = if filter.is_empty() {
        vec!["*".to_string()]
    } else {
        filter
    };
    let Response::Started { session } = c.call(&Request::StartTrace {
        tracer: TracerKind::Profile,
        filter,
        notrace,
        buffer_records: None,
        mode: None,
        memory_budget: None,
        controls: Default::default(),
        no_relocate: false,
    })?
    else {
        return Err(Error::UnexpectedReply);
    };
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let every = (c.server().lease / 4).max(Duration::from_millis(100));
    let mut last_show = Instant::now();
    let mut progress = Progress::new();
    while !ui::interrupted() && (watch || started.elapsed() < duration) {
        ui::nap(Duration::from_millis(100));
        if watch && last_show.elapsed() >= interval {
            let Response::Profile { rows, .. } = c.call(&Request::Profile { session })? else {
                return Err(Error::UnexpectedReply);
            };
            last_ping = Instant::now();
            last_show = Instant::now();
            let mut out = std::io::stdout().lock();
            if tty {
                let _ = write!(out, "\x1b[H\x1b[2J");
            }
            let _ = writeln!(
                out,
                "livetrace report: pid {pid}, {:.1}s (Ctrl-C to stop)\n",
                started.elapsed().as_secs_f64()
            );
            let _ = livetrace_output::profile::write_table(&rows, &mut out);
            if !tty {
                let _ = writeln!(out);
            }
            let _ = out.flush();
        } else if !watch {
            progress.update(|| {
                format!(
                    "profiling pid {pid}: {:.1}s of {:.1}s",
                    started.elapsed().as_secs_f64(),
                    duration.as_secs_f64()
                )
            });
        }
        if last_ping.elapsed() >= every {
            c.call(&Request::Ping)?;
            last_ping = Instant::now();
        }
    }
    progress.finish();
    let Response::Events { profile, .. } = c.call(&Request::StopTrace { session })? else {
        return Err(Error::UnexpectedReply);
    };
    let rows: Vec<ProfileRow> = profile;
    if watch && tty {
        let _ = write!(std::io::stdout(), "\x1b[H\x1b[2J");
    }
    livetrace_output::profile::write_table(&rows, std::io::stdout().lock())
        .map_err(|source| Error::Write { dest: None, source })?;
    Ok(())
}
