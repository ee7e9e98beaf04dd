//! `livetrace`: attach to a running process (through its control socket,
//! loading livetrace into it first when it has none: [`attach`]), and list,
//! trace, profile and live-patch its functions; or run a program traced
//! from start to exit.
//!
//! Exit codes: 0 success, 1 failure (the message says why), 2 bad usage.
//!
//! Every session this command starts belongs to its connection: however
//! the command ends (done, Ctrl-C, killed), the process detaches it and
//! every site is left as it was. The one exception is `patch`, whose patch
//! must outlive the command: it stays until `patch --revert`.

mod attach;
mod output;
mod ui;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use livetrace_output::{ProfileRow, Trace};
use livetrace_proto::{
    merge_trace, Client, ClientError, RecordFile, RecordSpec, Request, Response, TracerKind,
};

use output::{Dest, Format};
use ui::{Progress, Style};

#[derive(Parser)]
#[command(
    name = "livetrace",
    version,
    about = "Trace and live-patch the functions of running programs (dynamic ftrace in user space)",
    long_about = "Trace and live-patch the functions of running programs (dynamic ftrace in user space).\n\n\
                  A process that runs no livetrace control socket gets liblivetrace.so loaded first \
                  (with ptrace: `livetrace attach`; `livetrace detach` unloads it), provided it has \
                  sites: C and C++ built with -fpatchable-function-entry=5, Rust with #[traced].\n\n\
                  Exit codes: 0 success, 1 failure, 2 bad usage."
)]
struct Cli {
    /// Where the control sockets are [default: $LIVETRACE_SOCKET_DIR, else
    /// $XDG_RUNTIME_DIR/livetrace, else /tmp/livetrace-$UID]
    #[arg(long, global = true, value_name = "DIR")]
    socket_dir: Option<PathBuf>,

    #[command(flatten)]
    attach: attach::AttachArgs,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List your processes that run livetrace or have sites, and which can
    /// be attached to
    ///
    /// Sockets left by processes that died without removing them (killed by
    /// a signal) are removed.
    Ps(attach::PsArgs),
    /// Load livetrace into a running process that was started without it
    Attach {
        /// The process
        pid: u32,
    },
    /// Stop all tracing in a process and unload livetrace from it
    Detach {
        /// The process
        pid: u32,
    },
    /// List a process's traceable functions: name, address, state, source
    Ls {
        /// The process
        pid: u32,
        /// Only names matching this glob (`*` any run, `?` one character)
        glob: Option<String>,
        /// Only enabled functions, with the ops attached and the trampoline
        /// their site calls
        #[arg(long)]
        enabled: bool,
        /// Also show each function's recorded signature
        #[arg(long, short = 's')]
        signatures: bool,
    },
    /// Attach a tracer and stream its events, or write them to a file
    ///
    /// Without -o, events print to the terminal as they come (ftrace text);
    /// with -o, they are written when tracing ends, in the format the file
    /// name implies (.txt, .json, .folded, .svg, *uftrace.data) or --format
    /// gives. Ctrl-C or --duration ends tracing; either way the process is
    /// left exactly as it was.
    Trace {
        /// The process
        pid: u32,
        #[command(flatten)]
        sel: Selection,
        /// Stop after this long (10s, 500ms, 2m)
        #[arg(long, short = 'd', value_parser = ui::parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show where time goes: a per-function profile table
    ///
    /// Runs a profile session for --duration (default 2s) or until Ctrl-C,
    /// then prints the table; with --watch, refreshes it in place every
    /// --interval until Ctrl-C.
    Report {
        /// The process
        pid: u32,
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
    },
    /// Live-patch: send every call of ORIGINAL to REPLACEMENT
    ///
    /// Both must be #[traced] functions of the process with the same
    /// recorded signature; the process refuses anything else, naming both.
    /// The patch stays after this command exits, until `--revert`.
    Patch {
        /// The process
        pid: u32,
        /// Full name of the function to replace (see `livetrace ls`)
        original: String,
        /// Full name of its replacement
        replacement: String,
        /// Remove the patch ORIGINAL -> REPLACEMENT instead
        #[arg(long)]
        revert: bool,
    },
    /// Run a program traced from its start to its exit
    ///
    /// The program is started with LIVETRACE=1 and LIVETRACE_RECORD set: it
    /// starts tracing before main and writes what it recorded when it
    /// exits, which this command then converts. A program that does not
    /// link livetrace (a C or C++ program built with
    /// -fpatchable-function-entry=5) gets liblivetrace.so preloaded: the one
    /// next to this command, or $LIVETRACE_PRELOAD_LIB. A program killed by
    /// a signal leaves no recording.
    Record {
        #[command(flatten)]
        sel: Selection,
        #[command(flatten)]
        out: OutputArgs,
        /// The program and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
}

#[derive(Args)]
struct Selection {
    /// Functions to trace (name, glob or 0x site address; repeatable)
    /// [default: all]
    #[arg(short = 'f', long = "filter", value_name = "GLOB")]
    filter: Vec<String>,
    /// Functions never to trace (repeatable)
    #[arg(short = 'n', long = "notrace", value_name = "GLOB")]
    notrace: Vec<String>,
    /// The tracer: function (one event per call), graph (entries and exits,
    /// durations) or profile (a table, no events)
    #[arg(short = 't', long, default_value = "function", value_parser = parse_tracer)]
    tracer: TracerKind,
    /// Ring buffer records per thread (a power of two)
    #[arg(long, value_name = "RECORDS")]
    buffer: Option<u64>,
}

#[derive(Args)]
struct OutputArgs {
    /// Write to this file (or uftrace.data directory) instead of the terminal
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The output format [default: from -o's name, else text]
    #[arg(long, value_enum)]
    format: Option<Format>,
}

fn parse_tracer(s: &str) -> Result<TracerKind, String> {
    s.parse()
}

/// A failure: what to print, and the exit code.
struct Fail(String, u8);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail(e.to_string(), 1)
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail(e, 1)
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli
        .socket_dir
        .clone()
        .unwrap_or_else(livetrace_proto::socket_dir);
    attach::configure(cli.attach.clone());
    let r = match cli.cmd {
        Cmd::Ps(a) => attach::ps(&dir, &a).map_err(Fail::from),
        Cmd::Attach { pid } => attach::cmd_attach(&dir, pid).map_err(Fail::from),
        Cmd::Detach { pid } => attach::cmd_detach(pid).map_err(Fail::from),
        Cmd::Ls {
            pid,
            glob,
            enabled,
            signatures,
        } => ls(&dir, pid, glob, enabled, signatures),
        Cmd::Trace {
            pid,
            sel,
            duration,
            out,
        } => trace(&dir, pid, sel, duration, out),
        Cmd::Report {
            pid,
            filter,
            notrace,
            watch,
            duration,
            interval,
        } => report(&dir, pid, filter, notrace, watch, duration, interval),
        Cmd::Patch {
            pid,
            original,
            replacement,
            revert,
        } => patch(&dir, pid, &original, &replacement, revert),
        Cmd::Record { sel, out, cmd } => record(sel, out, cmd),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("livetrace: {} {msg}", ui::error_prefix());
            ExitCode::from(code)
        }
    }
}

fn connect(dir: &Path, pid: u32) -> Result<Client, Fail> {
    Ok(Client::connect_path(&attach::socket(dir, pid)?)?)
}

fn ls(
    dir: &Path,
    pid: u32,
    glob: Option<String>,
    enabled: bool,
    signatures: bool,
) -> Result<(), Fail> {
    let style = Style::stdout();
    let mut c = connect(dir, pid)?;
    let mut progress = Progress::new();
    let mut report = |got: u64, total: u64| {
        if total > 1 << 20 {
            progress.update(|| {
                format!(
                    "receiving the function list: {} of {} KiB",
                    got >> 10,
                    total >> 10
                )
            });
        }
    };
    let mut out = std::io::stdout().lock();
    if enabled {
        let Response::Enabled { functions } =
            c.call_with_progress(&Request::EnabledFunctions, &mut report)?
        else {
            return Err("unexpected reply".to_string().into());
        };
        let rows: Vec<_> = functions
            .into_iter()
            .filter(|f| glob.as_deref().is_none_or(|g| ui::glob_match(g, &f.name)))
            .collect();
        if rows.is_empty() {
            let _ = writeln!(out, "{}", style.dim("no enabled functions"));
            return Ok(());
        }
        let w = rows.iter().map(|f| f.name.len()).max().unwrap_or(0).max(4);
        let ow = rows
            .iter()
            .map(|f| f.ops.join(",").len())
            .max()
            .unwrap_or(0)
            .max(3);
        let _ = writeln!(
            out,
            "{}",
            style.bold(&format!(
                "{:<w$}  {:<14}  {:<ow$}  TRAMPOLINE",
                "NAME", "ADDRESS", "OPS"
            ))
        );
        for f in rows {
            let _ = writeln!(
                out,
                "{}  {:<14}  {:<ow$}  {}",
                style.name(&format!("{:<w$}", f.name)),
                format!("{:#x}", f.ip),
                f.ops.join(","),
                f.trampoline
            );
        }
        return Ok(());
    }
    let Response::Functions { functions } = c.call_with_progress(
        &Request::ListFunctions {
            glob: glob.clone(),
            enabled_only: false,
        },
        &mut report,
    )?
    else {
        return Err("unexpected reply".to_string().into());
    };
    drop(progress);
    let w = functions
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        out,
        "{}",
        style.bold(&format!(
            "{:<w$}  {:<14}  {:<16}  SOURCE{}",
            "NAME",
            "ADDRESS",
            "STATE",
            if signatures { "  SIGNATURE" } else { "" }
        ))
    );
    for f in &functions {
        let state = if f.state == "nop" {
            style.dim(&format!("{:<16}", f.state))
        } else {
            style.good(&format!("{:<16}", f.state))
        };
        let _ = write!(
            out,
            "{}  {:<14}  {state}  {}",
            style.name(&format!("{:<w$}", f.name)),
            format!("{:#x}", f.addr),
            f.source
        );
        if signatures {
            let _ = write!(out, "  {}", f.signature.as_deref().unwrap_or("-"));
        }
        let _ = writeln!(out);
    }
    if functions.is_empty() {
        if let Some(g) = &glob {
            return Err(format!("no traceable function matches '{g}'").into());
        }
    }
    Ok(())
}

/// Keeps a connection's lease alive while waiting.
fn keepalive(c: &mut Client, last: &mut Instant) -> Result<(), Fail> {
    let every = (c.server().lease / 4).max(Duration::from_millis(100));
    if last.elapsed() >= every {
        c.call(&Request::Ping)?;
        *last = Instant::now();
    }
    Ok(())
}

fn trace(
    dir: &Path,
    pid: u32,
    sel: Selection,
    duration: Option<Duration>,
    out: OutputArgs,
) -> Result<(), Fail> {
    let format = output::choose(out.format, out.output.as_deref()).map_err(usage)?;
    let dest = match &out.output {
        Some(p) => Dest::File(p.clone()),
        None => Dest::Stdout,
    };
    output::check(format, sel.tracer, &dest).map_err(usage)?;
    // Text to the terminal streams; everything else is written at the end.
    let streaming =
        matches!(dest, Dest::Stdout) && format == Format::Text && sel.tracer != TracerKind::Profile;
    ui::catch_interrupts();
    let mut c = connect(dir, pid)?;
    let filter = if sel.filter.is_empty() {
        vec!["*".to_string()]
    } else {
        sel.filter
    };
    let Response::Started { session } = c.call(&Request::StartTrace {
        tracer: sel.tracer,
        filter,
        notrace: sel.notrace,
        buffer_records: sel.buffer,
    })?
    else {
        return Err("unexpected reply".to_string().into());
    };
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut acc = Trace::default();
    let mut first = true;
    let mut events = 0usize;
    let mut lost = 0u64;
    let mut graph_stream = output::GraphStream::default();
    let mut profile: Vec<ProfileRow> = Vec::new();
    let mut last_ping = Instant::now();
    let mut stopping = false;
    loop {
        if !stopping && (ui::interrupted() || duration.is_some_and(|d| started.elapsed() >= d)) {
            stopping = true;
        }
        let req = if stopping {
            Request::StopTrace { session }
        } else if sel.tracer == TracerKind::Profile {
            keepalive(&mut c, &mut last_ping)?;
            ui::nap(Duration::from_millis(100));
            continue;
        } else {
            Request::PollEvents { session }
        };
        let Response::Events {
            trace: piece,
            more,
            stopped,
            profile: rows,
        } = c.call(&req)?
        else {
            return Err("unexpected reply".to_string().into());
        };
        last_ping = Instant::now();
        profile.extend(rows.into_iter().map(ProfileRow::from));
        let n = piece.event_count();
        events += n;
        lost += piece.threads.iter().map(|t| t.lost).sum::<u64>();
        let mut piece = piece.into_trace()?;
        if streaming && sel.tracer == TracerKind::Graph {
            piece = graph_stream.push(piece, stopped && !more);
        }
        if streaming {
            if piece
                .threads
                .iter()
                .any(|t| !t.events.is_empty() || t.lost > 0)
            {
                match output::stream_text(&piece, sel.tracer, first) {
                    Ok(()) => {}
                    // The reader went away (`| head`): done, not failed.
                    // Closing the connection detaches the session.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(format!("cannot write: {e}").into()),
                }
                first = false;
            }
        } else {
            merge_trace(&mut acc, piece);
            progress.update(|| {
                format!(
                    "tracing pid {pid}: {events} events{}{}  (Ctrl-C to stop)",
                    if lost > 0 {
                        format!(", {lost} lost")
                    } else {
                        String::new()
                    },
                    if stopping { ", stopping" } else { "" }
                )
            });
        }
        if stopped && !more {
            break;
        }
        if !more {
            // Short naps at first: the first events show at once.
            ui::nap(Duration::from_millis(if events == 0 { 10 } else { 100 }));
        }
    }
    progress.finish();
    if !streaming {
        if events > 200_000 {
            progress.update(|| format!("writing {events} events…"));
        }
        output::write(&acc, sel.tracer, &profile, format, &dest)?;
        progress.finish();
        if let Dest::File(p) = &dest {
            eprintln!(
                "livetrace: {} written to {}{}",
                if sel.tracer == TracerKind::Profile {
                    format!("{} profile rows", profile.len())
                } else {
                    format!("{events} events")
                },
                p.display(),
                if lost > 0 {
                    format!(" ({lost} lost)")
                } else {
                    String::new()
                }
            );
        }
    } else if lost > 0 {
        eprintln!("livetrace: {lost} events lost (ring overwrites); try --buffer");
    }
    Ok(())
}

fn report(
    dir: &Path,
    pid: u32,
    filter: Vec<String>,
    notrace: Vec<String>,
    watch: bool,
    duration: Duration,
    interval: Duration,
) -> Result<(), Fail> {
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
    })?
    else {
        return Err("unexpected reply".to_string().into());
    };
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let mut last_show = Instant::now();
    let mut progress = Progress::new();
    while !ui::interrupted() && (watch || started.elapsed() < duration) {
        ui::nap(Duration::from_millis(100));
        if watch && last_show.elapsed() >= interval {
            let Response::Profile { rows } = c.call(&Request::Profile { session })? else {
                return Err("unexpected reply".to_string().into());
            };
            last_ping = Instant::now();
            last_show = Instant::now();
            let rows: Vec<ProfileRow> = rows.into_iter().map(ProfileRow::from).collect();
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
        keepalive(&mut c, &mut last_ping)?;
    }
    progress.finish();
    let Response::Events { profile, .. } = c.call(&Request::StopTrace { session })? else {
        return Err("unexpected reply".to_string().into());
    };
    let rows: Vec<ProfileRow> = profile.into_iter().map(ProfileRow::from).collect();
    if watch && tty {
        let _ = write!(std::io::stdout(), "\x1b[H\x1b[2J");
    }
    livetrace_output::profile::write_table(&rows, std::io::stdout().lock())
        .map_err(|e| format!("cannot write: {e}"))?;
    Ok(())
}

fn patch(
    dir: &Path,
    pid: u32,
    original: &str,
    replacement: &str,
    revert: bool,
) -> Result<(), Fail> {
    let style = Style::stdout();
    let mut c = connect(dir, pid)?;
    if revert {
        let Response::Patches { patches } = c.call(&Request::ListPatches)? else {
            return Err("unexpected reply".to_string().into());
        };
        let Some(p) = patches
            .iter()
            .find(|p| p.original == original && p.replacement == replacement)
        else {
            let list: Vec<String> = patches
                .iter()
                .map(|p| format!("{} -> {}", p.original, p.replacement))
                .collect();
            return Err(format!(
                "no patch {original} -> {replacement} in process {pid}{}",
                if list.is_empty() {
                    " (it has none)".to_string()
                } else {
                    format!(" (it has: {})", list.join("; "))
                }
            )
            .into());
        };
        c.call(&Request::Revert { patch: p.id })?;
        println!(
            "reverted {} -> {}: calls go to {} again",
            style.name(&p.original),
            style.name(&p.replacement),
            p.original
        );
        return Ok(());
    }
    let Response::Patched { patch } = c.call(&Request::Patch {
        original: original.to_string(),
        replacement: replacement.to_string(),
        persist: true,
    })?
    else {
        return Err("unexpected reply".to_string().into());
    };
    println!(
        "patched {} -> {} ({}), patch {}; it stays until `livetrace patch {pid} {} {} --revert`",
        style.name(&patch.original),
        style.name(&patch.replacement),
        patch.signature,
        patch.id,
        patch.original,
        patch.replacement
    );
    Ok(())
}

/// The preload library `program` needs, or `None` when it links livetrace
/// itself (preloading it too would start a second server in the process).
fn preload_for(program: &str) -> Result<Option<std::path::PathBuf>, Fail> {
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
        return Err(format!("cannot find {program}").into());
    };
    let data = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
            .map_err(|e| format!("cannot find this command's directory: {e}"))?
            .with_file_name("liblivetrace.so"),
    };
    if !lib.is_file() {
        return Err(format!(
            "{program} does not link livetrace, and the preload library {} is missing              (build it with `cargo build -p livetrace-preload`, or set LIVETRACE_PRELOAD_LIB)",
            lib.display()
        )
        .into());
    }
    Ok(Some(lib))
}

fn record(sel: Selection, out: OutputArgs, cmd: Vec<String>) -> Result<(), Fail> {
    let Some(output_path) = out.output.clone() else {
        return Err(usage("record needs -o FILE"));
    };
    let format = output::choose(out.format, Some(&output_path)).map_err(usage)?;
    let dest = Dest::File(output_path.clone());
    output::check(format, sel.tracer, &dest).map_err(usage)?;
    let tmp = std::env::temp_dir().join(format!(
        "livetrace-record-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let _ = std::fs::remove_file(&tmp);
    let spec = RecordSpec {
        out: tmp.display().to_string(),
        tracer: sel.tracer,
        filter: if sel.filter.is_empty() {
            vec!["*".into()]
        } else {
            sel.filter
        },
        notrace: sel.notrace,
        buffer_records: sel.buffer,
    };
    // Ctrl-C goes to the whole foreground group: the program decides what
    // it does with it; this command waits to report.
    ui::catch_interrupts();
    let mut command = std::process::Command::new(&cmd[0]);
    if let Some(lib) = preload_for(&cmd[0])? {
        let preload = match std::env::var("LD_PRELOAD") {
            Ok(p) if !p.is_empty() => format!("{} {p}", lib.display()),
            _ => lib.display().to_string(),
        };
        command.env("LD_PRELOAD", preload);
    }
    let status = command
        .args(&cmd[1..])
        .env(livetrace_proto::ENABLE_ENV, "1")
        .env(
            livetrace_proto::RECORD_ENV,
            serde_json::to_string(&spec).expect("serialisable"),
        )
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    let raw = std::fs::read(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let raw = raw.map_err(|_| {
        format!(
            "{} left no recording ({status}); it must link livetrace-server (and name it, e.g. \
             `use livetrace_server as _;`), and exit normally rather than by a signal",
            cmd[0]
        )
    })?;
    let rec: RecordFile =
        serde_json::from_slice(&raw).map_err(|e| format!("the recording is unreadable: {e}"))?;
    if let Some(e) = rec.error {
        return Err(format!("tracing could not start in {}: {e}", cmd[0]).into());
    }
    let events = rec.trace.event_count();
    let trace = rec.trace.into_trace()?;
    let profile: Vec<ProfileRow> = rec.profile.into_iter().map(ProfileRow::from).collect();
    let mut progress = Progress::new();
    if events > 200_000 {
        progress.update(|| format!("writing {events} events…"));
    }
    output::write(&trace, sel.tracer, &profile, format, &dest)?;
    progress.finish();
    eprintln!(
        "livetrace: {} exited ({status}); {} written to {}",
        cmd[0],
        if sel.tracer == TracerKind::Profile {
            format!("{} profile rows", profile.len())
        } else {
            format!("{events} events")
        },
        output_path.display()
    );
    Ok(())
}
