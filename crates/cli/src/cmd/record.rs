//! `livetrace record -- CMD`: run a program traced from its start to its
//! exit, its records streamed to the output while it runs.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use livetrace_format::{EndReason, Tracer};
use livetrace_proto::{Client, Mode, RecordSpec, Request, Response};

use crate::args::{OutputArgs, Selection};
use crate::cmd::trace::STREAM_RECORDS;
use crate::recorder::{end, write_profile, Attached, Output, Stop};
use crate::ui;
use crate::{usage, Error};

/// How long the program may take to answer on its control connection
/// (livetrace sets itself up before `main`: finding and converting its
/// sites can take seconds in large programs).
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    sel: Selection,
    /// Flight recorder: keep each thread's newest records, written when
    /// the program ends
    #[arg(long)]
    flight: bool,
    #[command(flatten)]
    out: OutputArgs,
    /// The program and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

fn describe(status: ExitStatus) -> (EndReason, i32, String) {
    match (status.code(), status.signal()) {
        (Some(c), _) => (EndReason::Exited, c, format!("exited with status {c}")),
        (None, Some(s)) => (EndReason::Killed, s, format!("was killed by signal {s}")),
        _ => (EndReason::Ended, 0, "ended".to_string()),
    }
}

pub fn run(a: Args) -> Result<(), Error> {
    let tracer = a.sel.tracer;
    let Some(dest) = a.out.output.clone() else {
        return Err(usage("record needs -o FILE"));
    };
    let format = a.out.format(tracer).map_err(usage)?;
    if a.flight && tracer == Tracer::Profile {
        return Err(usage(
            "the profile tracer keeps a table, not records: no flight recorder",
        ));
    }
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::io("cannot make the control socket", e))?;
    // The program's end must survive its exec: not close-on-exec.
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) };
    let spec = RecordSpec {
        fd: theirs.as_raw_fd(),
        tracer,
        filter: a.sel.filter(),
        notrace: a.sel.notrace.clone(),
        buffer_records: a
            .sel
            .buffer
            .or((!a.flight && tracer != Tracer::Profile).then_some(STREAM_RECORDS)),
        memory_budget: a.sel.memory,
        mode: Some(if a.flight { Mode::Flight } else { Mode::Stream }),
        controls: a.sel.controls(&[]),
    };
    // What the program would refuse, refused here, before it runs.
    Request::StartTrace {
        tracer,
        filter: spec.filter.clone(),
        notrace: spec.notrace.clone(),
        buffer_records: spec.buffer_records,
        mode: spec.mode,
        memory_budget: spec.memory_budget,
        controls: spec.controls.clone(),
        no_relocate: a.sel.no_relocate,
    }
    .validate()
    .map_err(usage)?;
    // Ctrl-C goes to the whole foreground group: the program decides what
    // it does with it; this command records until it ends.
    ui::catch_interrupts();
    let program = &a.cmd[0];
    let mut command = std::process::Command::new(program);
    if let Some(lib) = preload_for(program)? {
        let preload = match std::env::var("LD_PRELOAD") {
            Ok(p) if !p.is_empty() => format!("{} {p}", lib.display()),
            _ => lib.display().to_string(),
        };
        command.env("LD_PRELOAD", preload);
    }
    if a.sel.no_relocate {
        command.env("LIVETRACE_NO_RELOCATE", "1");
    }
    let mut child = command
        .args(&a.cmd[1..])
        .env(livetrace_proto::ENABLE_ENV, "1")
        .env(
            livetrace_proto::RECORD_ENV,
            serde_json::to_string(&spec).expect("serialisable"),
        )
        .spawn()
        .map_err(|e| Error::io(format!("cannot run {program}"), e))?;
    drop(theirs);
    let r = record(a, &dest, format, ours, &mut child);
    if r.is_err() {
        // Tracing is detached (our end of the connection is closed); the
        // program runs to its end untraced.
        let _ = child.wait();
    }
    r
}

fn record(
    a: Args,
    dest: &std::path::Path,
    format: livetrace_format::Format,
    ours: UnixStream,
    child: &mut Child,
) -> Result<(), Error> {
    let program = a.cmd[0].clone();
    let no_recording = |why: String| Error::NotRecordable {
        program: program.clone(),
        why,
    };
    let mut client = match Client::from_stream(ours, HELLO_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            let why = match child.try_wait() {
                Ok(Some(s)) => format!("{} before livetrace answered", describe(s).2),
                _ => format!("did not answer as livetrace does ({e})"),
            };
            return Err(no_recording(why));
        }
    };
    let session = match client.call(&Request::Recording) {
        Ok(Response::Started { session }) => session,
        Ok(_) => return Err(Error::UnexpectedReply),
        Err(source) => return Err(Error::StartFailed { program, source }),
    };
    let tracer = a.sel.tracer;
    let mut at = Attached::new(client, Some(session), tracer, a.flight, false)?;
    let mut status: Option<ExitStatus> = None;
    let exited = |child: &mut Child, status: &mut Option<ExitStatus>| {
        if status.is_none() {
            if let Ok(Some(s)) = child.try_wait() {
                *status = Some(s);
            }
        }
        status.is_some()
    };
    if tracer == Tracer::Profile {
        let mut rows = Vec::new();
        while let Some((r, last)) = at.profile()? {
            rows = r;
            if last {
                break;
            }
            if exited(child, &mut status) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = status.unwrap_or_else(|| child.wait().expect("waiting for the program"));
        let (reason, code, said) = describe(s);
        write_profile(
            &rows,
            format,
            Some(dest),
            &at.info(),
            &end(reason, code, said.clone()),
        )?;
        eprintln!(
            "livetrace: {program} {said}; {} profile rows written to {}",
            rows.len(),
            dest.display()
        );
        return Ok(());
    }
    let mut output = Output::open(format, Some(dest), &at)?;
    let mut stop = |_: &Attached| -> Option<Stop> { None };
    let run = at.run(output.out(), &mut stop).and_then(|h| {
        at.finish(output.out())?;
        Ok(h)
    });
    if let Err(e) = run {
        output.abandon();
        return Err(Error::Stopped {
            source: Box::new(e),
            note: format!(
                "recording stopped there, the output holds what came before ({program} goes on, \
                 untraced)"
            ),
        });
    }
    let s = match status {
        Some(s) => s,
        None => child
            .wait()
            .map_err(|e| Error::io(format!("cannot wait for {program}"), e))?,
    };
    let (reason, code, said) = describe(s);
    let stats = at.stats();
    drop(at);
    let place = output.close(&end(reason, code, format!("{program} {said}")))?;
    eprintln!("livetrace: {program} {said}");
    for line in stats.report(&place) {
        eprintln!("livetrace: {line}");
    }
    Ok(())
}

/// The preload library `program` needs, or `None` when it links livetrace
/// itself (preloading it too would start a second server in the process).
fn preload_for(program: &str) -> Result<Option<std::path::PathBuf>, Error> {
    let path = if program.contains('/') {
        Some(std::path::PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|c| c.is_file())
        })
    };
    let Some(path) = path else {
        return Err(Error::ProgramNotFound {
            program: program.to_string(),
        });
    };
    let data = std::fs::read(&path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    use object::{Object, ObjectSection};
    let links_livetrace = object::File::parse(&*data)
        .map(|f| f.sections().any(|s| s.name() == Ok("livetrace_sites")))
        .unwrap_or(false);
    if links_livetrace {
        return Ok(None);
    }
    let lib = match std::env::var_os("LIVETRACE_PRELOAD_LIB") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| Error::io("cannot find this command's directory", e))?
            .with_file_name("liblivetrace.so"),
    };
    if !lib.is_file() {
        return Err(Error::NoPreloadLibrary {
            program: program.to_string(),
            lib,
        });
    }
    Ok(Some(lib))
}
