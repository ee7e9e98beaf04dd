//! `livetrace`: attach to a running process (through its control socket,
//! loading livetrace into it first when it has none: [`attach`]), and list,
//! trace, profile and live-patch its functions; or run a program traced
//! from start to exit; or convert and report on recordings.
//!
//! Exit codes: 0 success, 1 failure (the message says why), 2 bad usage
//! (see [`Error`]).
//!
//! Every session this command starts belongs to its connection: however
//! the command ends (done, Ctrl-C, killed), the process detaches it and
//! every site is left as it was. The one exception is `patch`, whose patch
//! must outlive the command: it stays until `patch --revert`.
//!
//! One module per command (`cmd/`), each with its arguments and its `run`
//! (`attach`, `detach` and `ps`: [`attach`]);
//! what several share: the selection and output arguments ([`args`]),
//! moving records out of a process's buffers ([`consume`]) and the
//! recording loop around it ([`recorder`]), naming addresses from outside
//! the process ([`symtab`]), terminal niceties ([`ui`]).

mod args;
mod attach;
mod cmd;
mod consume;
mod convert;
mod error;
mod recorder;
mod source;
mod symtab;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use livetrace_proto::Client;

pub use error::{usage, Error};

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
    Ls(cmd::ls::Args),
    /// Attach a tracer and stream its events to the terminal or a file
    ///
    /// Records leave the process through shared memory while it runs:
    /// to the terminal as text, or with -o to a file in the format its name
    /// implies (.lttrace: the records as recorded; .txt, .json,
    /// .perfetto-trace, *uftrace.data: converted at the end from a
    /// recording kept next to it meanwhile; .folded, .svg, .profile:
    /// aggregated as the records come). Ctrl-C or --duration ends tracing,
    /// as does the program's end; either way everything received is
    /// written and the process is left exactly as it was. With --flight,
    /// the buffers keep the newest records and the last of them are written
    /// at the end (or when a --snapshot-at function is called).
    Trace(cmd::trace::Args),
    /// Show where time goes: a profile table, live or from a recording
    ///
    /// For a process: runs a profile session for --duration (default 2s)
    /// or until Ctrl-C, then prints the table; with --watch, refreshes it
    /// in place every --interval until Ctrl-C. For a recorded trace file
    /// (.lttrace): its table, as `uftrace report` prints one.
    Report(cmd::report::Args),
    /// Live-patch: send every call of ORIGINAL to REPLACEMENT
    ///
    /// Both must be #[traced] functions of the process with the same
    /// recorded signature; the process refuses anything else, naming both.
    /// The patch stays after this command exits, until `--revert`.
    Patch(cmd::patch::Args),
    /// Run a program traced from its start to its exit
    ///
    /// The program starts tracing before main and its records stream to
    /// the output file while it runs, so a crash or kill leaves everything
    /// recorded up to then. A program that does not link livetrace (a C or
    /// C++ program built with -fpatchable-function-entry=5) gets
    /// liblivetrace.so preloaded: the one next to this command, or
    /// $LIVETRACE_PRELOAD_LIB.
    Record(cmd::record::Args),
    /// Write what a running flight recorder holds (the last records of
    /// each thread)
    ///
    /// The process must run a flight-recorder session (`livetrace trace
    /// PID --flight`); its buffers are held still while they are copied.
    Snapshot(cmd::snapshot::Args),
    /// Convert a recorded trace (.lttrace) to another format
    Convert(convert::ConvertArgs),
}

/// Connects to process `pid`'s socket in `dir` (loading livetrace into it
/// first if it runs without: see [`attach`]).
pub fn connect(dir: &Path, pid: u32) -> Result<Client, Error> {
    Ok(Client::connect_path(&attach::socket(dir, pid)?)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli
        .socket_dir
        .clone()
        .unwrap_or_else(livetrace_proto::socket_dir);
    attach::configure(cli.attach.clone());
    let r = match cli.cmd {
        Cmd::Ps(a) => attach::ps(&dir, &a),
        Cmd::Attach { pid } => attach::cmd_attach(&dir, pid),
        Cmd::Detach { pid } => attach::cmd_detach(pid),
        Cmd::Ls(a) => cmd::ls::run(&dir, a),
        Cmd::Trace(a) => cmd::trace::run(&dir, a),
        Cmd::Report(a) => cmd::report::run(&dir, a),
        Cmd::Patch(a) => cmd::patch::run(&dir, a),
        Cmd::Record(a) => cmd::record::run(a),
        Cmd::Snapshot(a) => cmd::snapshot::run(&dir, a),
        Cmd::Convert(a) => convert::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("livetrace: {} {e}", ui::error_prefix());
            ExitCode::from(e.exit_code())
        }
    }
}
