//! How a client finds a process and a process learns what to do: the
//! environment variables, the [`RecordSpec`] `livetrace record` passes, and
//! the socket directory and path.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Controls, Mode, TracerKind};

/// Environment variable that makes a program linking `livetrace-server`
/// start its server thread at start-up when set to `1`.
pub const ENABLE_ENV: &str = "LIVETRACE";

/// Environment variable holding a [`RecordSpec`] (JSON): the program
/// starts tracing before `main` and serves the connection `livetrace
/// record` passed it (`livetrace record`).
pub const RECORD_ENV: &str = "LIVETRACE_RECORD";

/// What `livetrace record` asks a program it starts to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    /// The inherited descriptor of a connected Unix stream socket: the
    /// control connection to `livetrace record`, served like an accepted
    /// one, whose `Recording` request takes over the session.
    pub fd: i32,
    /// The tracer.
    pub tracer: TracerKind,
    /// Functions to trace.
    pub filter: Vec<String>,
    /// Functions never to trace.
    pub notrace: Vec<String>,
    /// Ring records per thread.
    pub buffer_records: Option<u64>,
    /// Bytes of buffers in all.
    #[serde(default)]
    pub memory_budget: Option<u64>,
    /// How the buffers are used (stream when `None`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// What to record.
    #[serde(default)]
    pub controls: Controls,
}

/// Environment variable that overrides the socket directory (both sides).
pub const SOCKET_DIR_ENV: &str = "LIVETRACE_SOCKET_DIR";

/// Where this user's livetrace sockets live: `$LIVETRACE_SOCKET_DIR`, else
/// `$XDG_RUNTIME_DIR/livetrace`, else `/tmp/livetrace-$UID`.
pub fn socket_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(SOCKET_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        if d.is_absolute() && d.is_dir() {
            return d.join("livetrace");
        }
    }
    PathBuf::from(format!("/tmp/livetrace-{}", current_uid()))
}

/// The socket of process `pid`.
pub fn socket_path(pid: u32) -> PathBuf {
    socket_dir().join(format!("{pid}.sock"))
}

fn current_uid() -> u32 {
    // /proc avoids a libc dependency here; the real uid is its first field.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
