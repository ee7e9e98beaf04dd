//! `livetrace convert IN [-o OUT] [--format F]` and the offline report:
//! a recorded trace (`.lttrace`) written in any output format, with the
//! bounded-memory converters of `livetrace_output::convert`. The last lines
//! say, per thread, what was kept and lost and why.
//!
//! A format that does not fit the recording or the destination is a usage
//! error (exit code 2); see [`crate::Error`].

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use livetrace_output::convert::{self, Converted, Dest, Error, Format, Recording};

/// What `livetrace convert` takes.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The recorded trace (.lttrace)
    pub input: PathBuf,
    /// Where to write; the format follows the name (.txt, .json,
    /// .perfetto-trace, .folded, .svg, .profile, *uftrace.data) unless
    /// --format says. Without it, text to standard output.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// The output format (text, json, perfetto, folded, svg, uftrace,
    /// profile)
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,
}

/// What `livetrace report` reads: a live process, or a recorded trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    File(PathBuf),
}

/// A number is a pid; anything else a recorded trace's path.
pub fn parse_target(s: &str) -> Result<Target, String> {
    match s.parse::<u32>() {
        Ok(pid) => Ok(Target::Pid(pid)),
        Err(_) if Path::new(s).is_file() => Ok(Target::File(PathBuf::from(s))),
        Err(_) => Err(format!("'{s}' is neither a pid nor a recorded trace file")),
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

fn failed(source: Error) -> crate::Error {
    crate::Error::Convert { dest: None, source }
}

fn open(path: &Path) -> Result<Recording<std::io::BufReader<std::fs::File>>, crate::Error> {
    let rec = Recording::open(path).map_err(failed)?;
    Ok(rec)
}

/// Runs `livetrace convert`.
pub fn run(args: ConvertArgs) -> Result<(), crate::Error> {
    let format = Format::choose(args.format, args.output.as_deref()).map_err(crate::usage)?;
    let mut rec = open(&args.input)?;
    let dest = match &args.output {
        Some(p) => Dest::Path(p.clone()),
        None => Dest::Stdout,
    };
    let done = convert::convert(&mut rec, format, &dest).map_err(|e| match &args.output {
        Some(p) if matches!(e, Error::Io(_)) => crate::Error::Convert {
            dest: Some(p.clone()),
            source: e,
        },
        _ => failed(e),
    })?;
    let what = match &args.output {
        Some(p) => format!("written to {}", p.display()),
        None => "written".to_string(),
    };
    say(&mut rec, &done, &what);
    Ok(())
}

/// The offline `livetrace report FILE`: the recording's profile table on
/// standard output.
pub fn report_file(path: &Path) -> Result<(), crate::Error> {
    let mut rec = open(path)?;
    let stdout = std::io::stdout();
    let done = convert::report(&mut rec, stdout.lock()).map_err(failed)?;
    say(&mut rec, &done, "read");
    Ok(())
}

/// The closing lines on standard error: how the recording ended, losses
/// per thread, then the totals.
fn say<R: std::io::Read + std::io::Seek>(rec: &mut Recording<R>, done: &Converted, what: &str) {
    let mut err = std::io::stderr().lock();
    if let Some(why) = rec.reader().truncated() {
        let _ = writeln!(
            err,
            "livetrace: the recording is cut short ({why}): converted what it holds"
        );
    } else if rec.reader().end().is_none() {
        let _ = writeln!(
            err,
            "livetrace: the recording did not end cleanly (its recorder was stopped): converted \
             what it holds"
        );
    }
    if done.rows > 0 {
        let _ = writeln!(err, "livetrace: {} profile rows {what}", done.rows);
        return;
    }
    let s = &done.summary;
    for t in s.threads.iter().filter(|t| !t.losses.is_empty()) {
        let name = if t.tid == 0 {
            "no thread".to_string()
        } else if t.name.is_empty() {
            format!("tid {}", t.tid)
        } else {
            format!("tid {} ({})", t.tid, t.name)
        };
        let _ = writeln!(
            err,
            "livetrace: {name}: {} events kept, {}",
            t.events,
            t.losses.describe()
        );
    }
    let lost = s.lost();
    let _ = writeln!(
        err,
        "livetrace: {} events {what} from {} threads{}",
        s.events(),
        s.threads.iter().filter(|t| t.events > 0).count(),
        if lost > 0 {
            format!(", {lost} lost")
        } else {
            ", none lost".to_string()
        }
    );
}
