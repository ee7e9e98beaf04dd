//! What a request (or a teardown) can fail with, as one type: each variant
//! names what went wrong, [`Error::code`] is the protocol's code for it,
//! and the message a client shows is its `Display`.

use std::fmt;
use std::io;

use livetrace_proto::ErrorCode;

/// Why the server refused or failed a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The client speaks another protocol version.
    Version {
        /// The version it asked for.
        asked: u32,
    },
    /// A request out of turn: anything before `Hello`, or a second `Hello`.
    OutOfTurn(&'static str),
    /// A request its own checks refuse (a name too long, a field out of
    /// range), or a filter or patch that cannot name what it means.
    Invalid(String),
    /// No session by that id on this connection (`frozen`: none that this
    /// connection froze).
    NoSession {
        /// The id asked for.
        id: u32,
        /// Whether the request was to thaw a frozen one.
        frozen: bool,
    },
    /// No flight recorder matches a snapshot request (`None`: none runs).
    NoFlightRecorder(Option<u32>),
    /// Several flight recorders run and the request named none.
    SeveralFlightRecorders(Vec<u32>),
    /// No patch by that id.
    NoPatch(u32),
    /// The connection already holds the most sessions it may.
    TooManySessions(usize),
    /// An address pattern that is not a traceable function's address.
    NotAFunction(usize),
    /// Only the connection `livetrace record` made may take its session,
    /// and only once (`taken`).
    Recording {
        /// Whether it was already taken.
        taken: bool,
    },
    /// The session `livetrace record` asked for could not start.
    RecordingFailed(String),
    /// The tracing core refused or failed.
    Tracing(livetrace_ftrace::Error),
    /// The buffers cannot be passed: not in memory files, or a descriptor
    /// could not be duplicated.
    Buffers(Option<io::Error>),
    /// Reverting a patch failed; it stays in place.
    Revert {
        /// The patch's id.
        id: u32,
        /// `original -> replacement`.
        what: String,
        /// The core's reason.
        source: livetrace_ftrace::Error,
    },
}

impl Error {
    /// The protocol's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Version { .. } => ErrorCode::Version,
            Error::OutOfTurn(_) => ErrorCode::Unsupported,
            Error::Invalid(_) | Error::NotAFunction(_) | Error::SeveralFlightRecorders(_) => {
                ErrorCode::Invalid
            }
            Error::NoSession { .. }
            | Error::NoFlightRecorder(_)
            | Error::NoPatch(_)
            | Error::Recording { .. } => ErrorCode::NotFound,
            Error::Tracing(
                livetrace_ftrace::Error::NoMatch { .. }
                | livetrace_ftrace::Error::NoSuchFunction(_),
            ) => ErrorCode::Invalid,
            Error::TooManySessions(_)
            | Error::RecordingFailed(_)
            | Error::Tracing(_)
            | Error::Buffers(_)
            | Error::Revert { .. } => ErrorCode::Failed,
        }
    }

    /// Whether the connection ends after replying (the handshake failed).
    pub(crate) fn closes(&self) -> bool {
        matches!(self, Error::Version { .. } | Error::OutOfTurn(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use livetrace_proto::PROTOCOL_VERSION;
        match self {
            Error::Version { asked } => write!(
                f,
                "protocol version {asked} is not supported (this process speaks {PROTOCOL_VERSION})"
            ),
            Error::OutOfTurn(m) => f.write_str(m),
            Error::Invalid(m) => f.write_str(m),
            Error::NoSession { id, frozen: false } => {
                write!(f, "no session {id} on this connection")
            }
            Error::NoSession { id, frozen: true } => {
                write!(f, "session {id} is not frozen by this connection")
            }
            Error::NoFlightRecorder(Some(s)) => {
                write!(f, "no flight recorder session {s} in this process")
            }
            Error::NoFlightRecorder(None) => f.write_str(
                "no flight recorder runs in this process (start one with `livetrace trace PID --flight`)",
            ),
            Error::SeveralFlightRecorders(ids) => {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                write!(f, "several flight recorders run ({}); name one", ids.join(", "))
            }
            Error::NoPatch(id) => write!(f, "no patch {id}"),
            Error::TooManySessions(n) => write!(f, "this connection already has {n} sessions"),
            Error::NotAFunction(a) => {
                write!(f, "{a:#x} is not the address of a traceable function")
            }
            Error::Recording { taken: false } => {
                f.write_str("only the connection livetrace record made can take its session")
            }
            Error::Recording { taken: true } => {
                f.write_str("the recording session was already taken")
            }
            Error::RecordingFailed(m) => f.write_str(m),
            Error::Tracing(e) => write!(f, "{e}"),
            Error::Buffers(None) => f.write_str(
                "this process's buffers are not in memory files (memfd_create failed)",
            ),
            Error::Buffers(Some(e)) => write!(f, "cannot pass the buffers: {e}"),
            Error::Revert { id, what, source } => write!(f, "patch {id} {what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Tracing(e) | Error::Revert { source: e, .. } => Some(e),
            Error::Buffers(Some(e)) => Some(e),
            _ => None,
        }
    }
}

impl From<livetrace_ftrace::Error> for Error {
    fn from(e: livetrace_ftrace::Error) -> Error {
        Error::Tracing(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn codes_follow_what_went_wrong() {
        let no_match = livetrace_ftrace::Error::NoMatch {
            pattern: "x*".into(),
            set: "filter",
        };
        assert_eq!(Error::Tracing(no_match).code(), ErrorCode::Invalid);
        assert_eq!(
            Error::Tracing(livetrace_ftrace::Error::InCallback).code(),
            ErrorCode::Failed
        );
        assert_eq!(Error::NoPatch(3).code(), ErrorCode::NotFound);
        assert_eq!(Error::Version { asked: 99 }.code(), ErrorCode::Version);
        assert!(Error::OutOfTurn("x").closes() && !Error::NoPatch(1).closes());
    }

    #[test]
    fn the_cause_is_kept() {
        let e = Error::Revert {
            id: 7,
            what: "a -> b".into(),
            source: livetrace_ftrace::Error::InCallback,
        };
        assert!(e.to_string().starts_with("patch 7 a -> b: "), "{e}");
        assert!(e.source().is_some());
        let e = Error::Buffers(Some(io::Error::from(io::ErrorKind::OutOfMemory)));
        assert!(e.source().is_some());
        assert!(Error::NotAFunction(0x10).source().is_none());
    }
}
