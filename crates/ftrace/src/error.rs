//! The one error type of the tracing core's verbs.

use std::fmt;

use crate::quiesce::{self, Straggler};

/// Why a tracing change was refused. Nothing changed when one is returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A filter pattern matches no function.
    NoMatch {
        /// The pattern.
        pattern: String,
        /// Which set it was in ("filter" or "notrace").
        set: &'static str,
    },
    /// A function already has an IPMODIFY ops.
    IpModifyTaken {
        /// The function.
        function: String,
        /// The ops that owns it.
        owner: String,
    },
    /// The ops is already registered.
    AlreadyRegistered(String),
    /// The ops is not registered.
    NotRegistered(String),
    /// Tracing cannot be changed from inside a callback.
    InCallback,
    /// No traceable function at this address.
    NoSuchFunction(usize),
    /// The per-thread state is not in static TLS (livetrace was loaded with
    /// `dlopen` into a running program), so trampolines cannot reach it.
    DynamicTls,
    /// A trampoline could not be created.
    Trampoline(std::io::Error),
    /// A quiescence wait gave up: these threads may still be using state
    /// the change retired (inside a callback that began before it, or
    /// about to execute a retired trampoline). The change itself was made
    /// (an unregistered ops is detached and its callback is not called for
    /// new calls), but nothing was freed: a later `unregister` of the same
    /// ops, or [`synchronize`](crate::synchronize), tries again.
    NotQuiescent {
        /// The threads and why each is not clear.
        threads: Vec<Straggler>,
    },
    /// The record table or the engine refused the change.
    Sites(livetrace_sites::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoMatch { pattern, set } => {
                write!(f, "{set} pattern '{pattern}' matches no traceable function")
            }
            Error::IpModifyTaken { function, owner } => {
                write!(f, "{function} is already modified by ops '{owner}'; only one IPMODIFY ops per function")
            }
            Error::AlreadyRegistered(n) => write!(f, "ops '{n}' is already registered"),
            Error::NotRegistered(n) => write!(f, "ops '{n}' is not registered"),
            Error::InCallback => f.write_str("tracing cannot be changed from inside a callback"),
            Error::NoSuchFunction(a) => write!(f, "no traceable function at {a:#x}"),
            Error::DynamicTls => {
                f.write_str("livetrace's thread state is not in static TLS; load it at start-up")
            }
            Error::Trampoline(e) => write!(f, "cannot create a trampoline: {e}"),
            Error::NotQuiescent { threads } => {
                write!(
                    f,
                    "threads still inside retired tracing state after {:?} (nothing was freed; \
                     try again later):",
                    quiesce::timeout()
                )?;
                for t in threads {
                    write!(f, "\n  {t}")?;
                }
                Ok(())
            }
            Error::Sites(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<livetrace_sites::Error> for Error {
    fn from(e: livetrace_sites::Error) -> Error {
        Error::Sites(e)
    }
}
