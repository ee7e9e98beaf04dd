//! Why a call of the C API failed: one value per kind of failure, each
//! with the `LT_E*` code the header documents ([`Error::code`]) and the
//! message `lt_last_error` returns (its `Display`).

use std::ffi::c_int;
use std::fmt;
use std::io;

use crate::capi::{LT_EBUSY, LT_EINTERNAL, LT_EINVAL, LT_EIO, LT_ENOMATCH, LT_ESTATE, LT_ETRACE};

/// A failed C API call.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An argument the call cannot take: NULL, not UTF-8, an unknown
    /// tracer or format, a format the session's tracer cannot write.
    Argument(String),
    /// No traceable function at an address.
    NoFunctionAt(usize),
    /// livetrace is off in this process (refused at load, or unloading),
    /// or the call came from inside a callback.
    State(String),
    /// The tracing core refused or failed (a filter matching nothing, a
    /// batch refused, a quiescence wait that gave up).
    Tracing(livetrace::Error),
    /// Writing an output file failed.
    Write {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Converting the session's records to the format failed.
    Convert {
        /// The file.
        path: String,
        /// Why.
        source: livetrace::raw::output::convert::Error,
    },
    /// The session's own records could not be read back.
    Internal(String),
}

impl Error {
    /// The `LT_E*` code the C API returns for it.
    pub fn code(&self) -> c_int {
        match self {
            Error::Argument(_) => LT_EINVAL,
            Error::NoFunctionAt(_) => LT_ENOMATCH,
            Error::State(_) => LT_ESTATE,
            Error::Tracing(e) => match e {
                livetrace::Error::NoMatch { .. } => LT_ENOMATCH,
                livetrace::Error::InCallback | livetrace::Error::DynamicTls => LT_ESTATE,
                livetrace::Error::NotQuiescent { .. } => LT_EBUSY,
                _ => LT_ETRACE,
            },
            Error::Write { .. } => LT_EIO,
            Error::Convert { source, .. } => match source {
                livetrace::raw::output::convert::Error::Unsuited(_) => LT_EINVAL,
                _ => LT_EIO,
            },
            Error::Internal(_) => LT_EINTERNAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Argument(m) | Error::State(m) | Error::Internal(m) => f.write_str(m),
            Error::NoFunctionAt(ip) => write!(f, "no traceable function at {ip:#x}"),
            Error::Tracing(e) => write!(f, "{e}"),
            Error::Write { path, source } => write!(f, "writing {path}: {source}"),
            Error::Convert {
                source: livetrace::raw::output::convert::Error::Unsuited(m),
                ..
            } => f.write_str(m),
            Error::Convert { path, source } => write!(f, "writing {path}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Tracing(e) => Some(e),
            Error::Write { source, .. } => Some(source),
            Error::Convert { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<livetrace::Error> for Error {
    fn from(e: livetrace::Error) -> Error {
        Error::Tracing(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn codes_are_the_headers() {
        let no_match = livetrace::Error::NoMatch {
            pattern: "x*".into(),
            set: "filter",
        };
        assert_eq!(Error::Tracing(no_match).code(), LT_ENOMATCH);
        assert_eq!(
            Error::Tracing(livetrace::Error::NotQuiescent {
                threads: Vec::new()
            })
            .code(),
            LT_EBUSY
        );
        assert_eq!(
            Error::Tracing(livetrace::Error::InCallback).code(),
            LT_ESTATE
        );
        assert_eq!(Error::NoFunctionAt(1).code(), LT_ENOMATCH);
        assert_eq!(Error::Argument("x".into()).code(), LT_EINVAL);
        let unsuited = Error::Convert {
            path: "p".into(),
            source: livetrace::raw::output::convert::Error::Unsuited("no".into()),
        };
        assert_eq!(
            (unsuited.code(), unsuited.to_string().as_str()),
            (LT_EINVAL, "no")
        );
    }

    #[test]
    fn the_cause_is_kept() {
        let e = Error::Write {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(e.code(), LT_EIO);
        assert!(e.to_string().starts_with("writing /x: "), "{e}");
        assert!(e.source().is_some());
        assert!(Error::Tracing(livetrace::Error::InCallback)
            .source()
            .is_some());
    }
}
