//! Errors of an attached process.

use std::fmt;
use std::io;

use crate::target::Refusal;

/// Why an operation on an attached process failed. Unless stated
/// otherwise, the process was left as it was: registers, memory and
/// signals restored, every thread resumed or still held as before.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// It cannot be attached to (checked before anything changed).
    Refused(Refusal),
    /// A ptrace request failed.
    Ptrace {
        /// The request.
        op: &'static str,
        /// The thread.
        tid: i32,
        /// The error.
        source: io::Error,
    },
    /// The process exited.
    Exited(i32),
    /// The process called `execve` while attached: it is another program
    /// now, and was detached.
    Exec(i32),
    /// A thread did not stop in time (uninterruptible sleep).
    NotStopped {
        /// The thread.
        tid: i32,
        /// Its state, as the kernel and as we see it.
        state: String,
    },
    /// No thread was at a point where it could be made to call the
    /// function (see the message).
    NoSafeThread(String),
    /// An injected call faulted. The thread's registers were restored,
    /// but whatever the function changed before the fault stays.
    CallFault {
        /// The thread.
        tid: i32,
        /// The signal.
        signal: i32,
        /// Where.
        rip: u64,
    },
    /// An injected call did not return in time. The thread is still
    /// running it: the process must stay attached until it returns.
    CallTimeout {
        /// The thread.
        tid: i32,
    },
    /// The thread running an injected call exited.
    ThreadExited(i32),
    /// Reading or writing the process's memory failed.
    Memory {
        /// The address.
        addr: u64,
        /// The error.
        source: io::Error,
    },
    /// `dlopen` failed in the process; `dlerror`'s message.
    Load(String),
    /// Another system error.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => r.fmt(f),
            Error::Ptrace { op, tid, source } => write!(f, "ptrace {op} on thread {tid}: {source}"),
            Error::Exited(pid) => write!(f, "process {pid} exited"),
            Error::Exec(pid) => write!(f, "process {pid} executed another program meanwhile"),
            Error::NotStopped { tid, state } => {
                write!(f, "thread {tid} did not stop within 2 s ({state})")
            }
            Error::NoSafeThread(why) => write!(f, "no thread could be used: {why}"),
            Error::CallFault { tid, signal, rip } => write!(
                f,
                "the call injected into thread {tid} faulted (signal {signal} at {rip:#x})"
            ),
            Error::CallTimeout { tid } => write!(
                f,
                "the call injected into thread {tid} has not returned; keep the process \
                 attached until it does"
            ),
            Error::ThreadExited(tid) => write!(f, "thread {tid} exited during the injected call"),
            Error::Memory { addr, source } => write!(f, "process memory at {addr:#x}: {source}"),
            Error::Load(msg) => write!(f, "dlopen failed in the process: {msg}"),
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Refused(r) => Some(r),
            Error::Ptrace { source, .. } | Error::Memory { source, .. } | Error::Io(source) => {
                Some(source)
            }
            _ => None,
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        Error::Refused(r)
    }
}
