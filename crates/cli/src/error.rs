//! Why a command failed: one value per kind of failure, and the exit code
//! each maps to.
//!
//! The command prints `livetrace: error: {error}` on stderr and exits with
//! [`Error::exit_code`]: 2 for bad usage (arguments that do not fit: an
//! output format the tracer or the destination cannot take), 141 when the
//! output's reader went away (`| head`; the command then ends quietly, as
//! `yes | head` does), 1 for everything else. `Display` is the whole
//! message a user reads, the underlying error's own text included;
//! [`source`](std::error::Error::source) also gives that underlying error
//! (ptrace, I/O, the control protocol, a converter) to code that walks
//! the chain.

use std::fmt;
use std::io;
use std::path::PathBuf;

use livetrace_inject::Refusal;
use livetrace_output::convert::Error as ConvertError;
use livetrace_proto::ClientError;

/// The exit code of a failure the user caused by the arguments.
pub const USAGE: u8 = 2;
/// The exit code when the output's reader went away (128 + SIGPIPE, what
/// a shell shows for a command killed by it).
pub const READER_GONE: u8 = 141;

/// A failed command.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Arguments that do not fit together or with what they name.
    Usage(String),

    // --- Reaching the process.
    /// The process runs no control socket and `--no-attach` forbids
    /// loading livetrace into it.
    NoSocket {
        /// The process.
        pid: u32,
        /// Where its socket would be.
        dir: PathBuf,
    },
    /// The process runs no control socket and livetrace could not be
    /// loaded into it (`source` says why).
    CannotAttach {
        /// The process.
        pid: u32,
        /// Why attaching failed.
        source: Box<Error>,
    },
    /// Connecting to the control socket, or a call on it, failed: the
    /// connection, the frames, or the process's answer (an error it
    /// returned, say a filter matching nothing).
    Client(ClientError),
    /// The process answered a request with a reply of another kind.
    UnexpectedReply,
    /// A session's buffers came without their two memory descriptors.
    NoBuffers,

    // --- Attaching and detaching (ptrace, `livetrace-inject`).
    /// The process cannot be attached to, checked before anything
    /// changed: no such process, another user's, statically linked,
    /// already traced...
    Refused(Refusal),
    /// A ptrace operation on the process failed.
    Inject(livetrace_inject::Error),
    /// The process's objects have no site and this command will not give
    /// functions one by relocation.
    NoSites {
        /// The process's executable.
        exe: String,
    },
    /// The library to load is not where it was looked for.
    LibraryMissing {
        /// Where.
        path: PathBuf,
        /// Why it could not be found.
        source: io::Error,
    },
    /// The process cannot open the library, and no copy could be placed
    /// where it can.
    CannotStage {
        /// The library.
        lib: PathBuf,
        /// Where the last copy was tried.
        place: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// `dlopen` of the library failed in the process (`dlerror`'s
    /// message).
    Load(String),
    /// `dlopen` failed for lack of static TLS space in the process.
    StaticTls {
        /// `dlerror`'s message.
        message: String,
        /// The TLS segment's size, when known.
        need: Option<u64>,
    },
    /// The library in the process is not a liblivetrace.so this command
    /// can drive.
    NotOurLibrary {
        /// The library.
        path: String,
        /// A symbol of the attach protocol it lacks.
        symbol: String,
    },
    /// Reading the library's symbols failed.
    LibrarySymbols {
        /// The library.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The library speaks another version of the attach protocol.
    AbiMismatch {
        /// Its version.
        library: u32,
    },
    /// An attach step did not finish in time.
    Timeout {
        /// What livetrace was doing.
        step: &'static str,
        /// The protocol state it was last seen in.
        state: u32,
        /// How long it had.
        secs: u64,
    },
    /// livetrace failed in the process (its own message).
    LibraryFailed(String),
    /// The library answered outside the attach protocol (a state, count
    /// or value this command does not expect).
    AttachProtocol(String),
    /// The library refused an attach call (an errno).
    LibraryRefused {
        /// What was asked.
        what: String,
        /// The errno it returned.
        source: io::Error,
    },
    /// A thread stayed inside a function's entry sled while every thread
    /// was held, attempt after attempt.
    InsideSled {
        /// The thread.
        tid: i32,
        /// Its RIP is there (else a return address on its stack).
        in_rip: bool,
        /// The address.
        addr: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// Attaching failed, and unloading the library again failed too.
    UndoFailed {
        /// Why attaching failed.
        source: Box<Error>,
        /// Why unloading failed.
        undo: Box<Error>,
    },
    /// livetrace is not loaded in the process.
    NotLoaded {
        /// The process.
        pid: i32,
    },
    /// livetrace is loaded in the process but in no state to serve or be
    /// unloaded (the message says which and what to do).
    NotServing(String),
    /// livetrace was torn down in the process, but something may still
    /// run its code, so the library stays loaded.
    StillInside {
        /// What may still run it.
        why: String,
        /// The process.
        pid: i32,
    },
    /// `dlclose` left the library mapped.
    StillMapped {
        /// The library.
        path: String,
    },

    // --- What the commands found.
    /// `ls GLOB` listed nothing.
    NoMatch {
        /// The glob.
        glob: String,
    },
    /// `patch --revert` named a patch the process does not have.
    NoPatch {
        /// The process.
        pid: u32,
        /// The patch asked for.
        original: String,
        /// Its replacement.
        replacement: String,
        /// The patches it has, `original -> replacement`.
        existing: Vec<String>,
    },
    /// The process ended before its profile could be read.
    ProcessEnded {
        /// The process.
        pid: u32,
    },

    // --- `record`.
    /// The program to record is not on `PATH`.
    ProgramNotFound {
        /// Its name.
        program: String,
    },
    /// The program does not link livetrace and the preload library is
    /// missing.
    NoPreloadLibrary {
        /// The program.
        program: String,
        /// Where the library was looked for.
        lib: PathBuf,
    },
    /// The program never answered as livetrace does.
    NotRecordable {
        /// The program.
        program: String,
        /// What happened instead.
        why: String,
    },
    /// The program refused to start tracing.
    StartFailed {
        /// The program.
        program: String,
        /// Its answer.
        source: ClientError,
    },

    // --- Outputs and the system.
    /// Writing the output failed.
    Write {
        /// The file (`None`: standard output).
        dest: Option<PathBuf>,
        /// Why.
        source: io::Error,
    },
    /// The output's reader went away (a pipe closed): end quietly.
    ReaderGone,
    /// A recording could not be read or converted.
    Convert {
        /// The file written (`None`: standard output, or failing before
        /// writing).
        dest: Option<PathBuf>,
        /// Why.
        source: ConvertError,
    },
    /// A system call failed.
    Io {
        /// What was being done ("cannot run prog").
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Recording or tracing stopped part-way: the output holds what came
    /// before.
    Stopped {
        /// Why it stopped.
        source: Box<Error>,
        /// What that means for the output and the process.
        note: String,
    },
}

/// A usage error.
pub fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

impl Error {
    /// `what`: `source` (a failed system call).
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// A failed write of the output, or [`Error::ReaderGone`] when its
    /// reader went away.
    pub fn write(e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Error::ReaderGone;
        }
        Error::Write {
            dest: None,
            source: e,
        }
    }

    /// The command's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => USAGE,
            Error::ReaderGone => READER_GONE,
            Error::Convert {
                dest: None,
                source: ConvertError::Unsuited(_),
            } => USAGE,
            Error::Stopped { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::LibraryFailed(m) | Error::AttachProtocol(m) => f.write_str(m),
            Error::NotServing(m) | Error::Load(m) => f.write_str(m),
            Error::NoSocket { pid, dir } => write!(
                f,
                "process {pid} runs no livetrace control socket (looked in {} and its open \
                 sockets); drop --no-attach to load livetrace into it",
                dir.display()
            ),
            Error::CannotAttach { pid, source } => write!(
                f,
                "process {pid} runs no livetrace control socket, and livetrace cannot be loaded \
                 into it: {source}"
            ),
            Error::Client(e) => e.fmt(f),
            Error::UnexpectedReply => f.write_str("unexpected reply"),
            Error::NoBuffers => f.write_str("the process passed no buffers"),
            Error::Refused(r) => r.fmt(f),
            Error::Inject(e) => e.fmt(f),
            Error::NoSites { exe } => write!(
                f,
                "{exe} has no traceable functions yet: no object it has loaded was built with \
                 sites. `livetrace trace` (without --no-relocate) gives the functions a filter \
                 names one by prologue relocation; `livetrace ls --why-not GLOB` lists those it \
                 cannot"
            ),
            Error::LibraryMissing { path, source } => write!(
                f,
                "the library to load, {}, is missing ({source}): build it with `cargo build \
                 --release -p livetrace-preload`, or name it with --lib or LIVETRACE_PRELOAD_LIB",
                path.display()
            ),
            Error::CannotStage { lib, place, source } => write!(
                f,
                "the process cannot open {} and no copy could be placed where it can ({}: \
                 {source})",
                lib.display(),
                place.display()
            ),
            Error::StaticTls { message, need } => {
                write!(
                    f,
                    "{message}: the process has too little static TLS left for livetrace's \
                     thread-local state"
                )?;
                if let Some(n) = need {
                    write!(f, " ({n} bytes)")?;
                }
                f.write_str(
                    "; start the program with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384 \
                     to reserve more",
                )
            }
            Error::NotOurLibrary { path, symbol } => write!(
                f,
                "{path} has no {symbol}: it is not a liblivetrace.so of this version"
            ),
            Error::LibrarySymbols { path, source } => write!(f, "{path}: {source}"),
            Error::AbiMismatch { library } => write!(
                f,
                "the library speaks attach protocol {library}, this command {}",
                crate::attach::ABI
            ),
            Error::Timeout { step, state, secs } => write!(
                f,
                "livetrace did not finish {step} in {secs}s (state {state})"
            ),
            Error::LibraryRefused { what, source } => write!(f, "{what}: {source}"),
            Error::InsideSled {
                tid,
                in_rip,
                addr,
                attempts,
            } => write!(
                f,
                "thread {tid} stayed inside a function's entry sled ({} {addr:#x}) for \
                 {attempts} attempts; try again",
                if *in_rip { "at" } else { "returning to" },
            ),
            Error::UndoFailed { source, undo } => {
                write!(f, "{source} (and unloading the library failed: {undo})")
            }
            Error::NotLoaded { pid } => write!(f, "livetrace is not loaded in process {pid}"),
            Error::StillInside { why, pid } => write!(
                f,
                "{why}; livetrace is stopped in the process but stays loaded: `livetrace detach \
                 {pid}` again unloads it once that is over"
            ),
            Error::StillMapped { path } => write!(
                f,
                "{path} is still mapped after dlclose: something else in the process holds a \
                 reference to it"
            ),
            Error::NoMatch { glob } => write!(f, "no traceable function matches '{glob}'"),
            Error::NoPatch {
                pid,
                original,
                replacement,
                existing,
            } => {
                write!(f, "no patch {original} -> {replacement} in process {pid}")?;
                if existing.is_empty() {
                    f.write_str(" (it has none)")
                } else {
                    write!(f, " (it has: {})", existing.join("; "))
                }
            }
            Error::ProcessEnded { pid } => {
                write!(f, "process {pid} ended before its profile could be read")
            }
            Error::ProgramNotFound { program } => write!(f, "cannot find {program}"),
            Error::NoPreloadLibrary { program, lib } => write!(
                f,
                "{program} does not link livetrace, and the preload library {} is missing (build \
                 it with `cargo build -p livetrace-preload`, or set LIVETRACE_PRELOAD_LIB)",
                lib.display()
            ),
            Error::NotRecordable { program, why } => write!(
                f,
                "{program} {why}: it must link livetrace-server (and name it, e.g. `use \
                 livetrace_server as _;`), or be a C/C++ program with patchable function entries"
            ),
            Error::StartFailed { program, source } => {
                write!(f, "tracing could not start in {program}: {source}")
            }
            Error::Write { dest, source } => match dest {
                Some(p) => write!(f, "cannot write {}: {source}", p.display()),
                None => write!(f, "cannot write the output: {source}"),
            },
            Error::ReaderGone => f.write_str("the output's reader went away"),
            Error::Convert { dest, source } => match dest {
                Some(p) => write!(f, "cannot write {}: {source}", p.display()),
                None => source.fmt(f),
            },
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Stopped { source, note } => write!(f, "{source}; {note}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::CannotAttach { source, .. }
            | Error::UndoFailed { source, .. }
            | Error::Stopped { source, .. } => Some(source.as_ref()),
            Error::Client(e) | Error::StartFailed { source: e, .. } => Some(e),
            Error::Refused(r) => Some(r),
            Error::Inject(e) => Some(e),
            Error::LibraryMissing { source, .. }
            | Error::CannotStage { source, .. }
            | Error::LibrarySymbols { source, .. }
            | Error::LibraryRefused { source, .. }
            | Error::Write { source, .. }
            | Error::Io { source, .. } => Some(source),
            Error::Convert { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        Error::Client(e)
    }
}

impl From<livetrace_inject::Error> for Error {
    fn from(e: livetrace_inject::Error) -> Error {
        match e {
            livetrace_inject::Error::Refused(r) => Error::Refused(r),
            e => Error::Inject(e),
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        Error::Refused(r)
    }
}

#[cfg(test)]
mod tests;
