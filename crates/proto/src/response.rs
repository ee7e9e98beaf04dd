//! What the server answers ([`Response`]), the rows and layouts it carries,
//! and why a request failed ([`ErrorCode`]).

use serde::{Deserialize, Serialize};

use crate::{Function, ProfileRow, TracerKind, WireSymbol, WireTrace};

/// Where a session's buffers are in the two memory files that
/// [`Response::Buffers`] passes (see `livetrace_ring::shm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferLayout {
    /// Buffers in the pool.
    pub slots: u32,
    /// Bytes from one buffer's header to the next.
    pub stride: u64,
    /// Records per buffer.
    pub records: u64,
    /// Bytes before the first buffer's header.
    pub pool_header: u64,
    /// Bytes from a buffer's header to its first record.
    pub slot_header: u64,
    /// Bytes of the data file.
    pub data_bytes: u64,
    /// Bytes of the tails file.
    pub tails_bytes: u64,
    /// The buffers overwrite their oldest records.
    pub overwrite: bool,
}

/// The recording process's clock calibration (see
/// `livetrace_format::ClockCal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockInfo {
    /// Ticks are TSC ticks (else nanoseconds).
    pub tsc: bool,
    /// Ticks per second.
    pub hz: u64,
    /// Anchor ticks.
    pub base_ticks: u64,
    /// CLOCK_MONOTONIC ns at the anchor.
    pub base_ns: u64,
    /// ns per tick, 32.32 fixed point.
    pub mult: u64,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or its JSON could not be decoded (connection closed).
    Malformed,
    /// The frame was longer than [`MAX_FRAME`](crate::MAX_FRAME), or a reply would be.
    TooLarge,
    /// A request the server does not know, or one before `Hello`
    /// (connection closed).
    Unsupported,
    /// The protocol versions differ (connection closed).
    Version,
    /// The peer is neither the process's user nor root (connection closed).
    Refused,
    /// Too many connections at once (connection closed).
    Busy,
    /// No such session or patch (on this connection).
    NotFound,
    /// A bad argument: a pattern matching nothing, an unknown function,
    /// signatures that differ.
    Invalid,
    /// The tracing core refused the change; nothing changed.
    Failed,
    /// The server hit a bug handling the request; the process is unaffected
    /// and the connection is closed.
    Internal,
}

/// A function without a site that prologue relocation refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Full name.
    pub name: String,
    /// Its entry.
    pub entry: u64,
    /// The object it lives in.
    pub object: String,
    /// A short kind (`branch-into-region`, `too-short`, …).
    pub kind: String,
    /// The reason in words.
    pub reason: String,
}

/// One enabled function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnabledInfo {
    /// Full name.
    pub name: String,
    /// Site address.
    pub ip: u64,
    /// Names of the ops attached.
    pub ops: Vec<String>,
    /// What the site calls, as text.
    pub trampoline: String,
}

/// One live patch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchInfo {
    /// Its id, for [`Request::Revert`](crate::Request::Revert).
    pub id: u32,
    /// The function whose calls are redirected.
    pub original: String,
    /// Where they go.
    pub replacement: String,
    /// The signature both share.
    pub signature: String,
    /// Whether it outlives the connection that made it.
    pub persistent: bool,
}

/// What the server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", deny_unknown_fields)]
pub enum Response {
    /// Answers `Hello`.
    Hello {
        /// The server's protocol version.
        version: u32,
        /// The process.
        pid: u32,
        /// Its executable.
        program: String,
        /// Its command line.
        cmdline: Vec<String>,
        /// A connection that sends no request for this long is considered
        /// dead and torn down: idle clients send `Ping` well within it.
        lease_ms: u64,
    },
    /// Answers `Ping`.
    Pong,
    /// Answers `ListFunctions`.
    Functions {
        /// The functions, by name.
        functions: Vec<Function>,
    },
    /// Answers `WhyNot`.
    NotRelocatable {
        /// The functions refused, by name.
        functions: Vec<Refusal>,
    },
    /// Answers `EnabledFunctions`.
    Enabled {
        /// The enabled functions, by name.
        functions: Vec<EnabledInfo>,
    },
    /// Answers `StartTrace`.
    Started {
        /// The new session's id.
        session: u32,
    },
    /// Answers `PollEvents` and `StopTrace`.
    Events {
        /// New events (only threads with news).
        trace: WireTrace,
        /// More events are waiting: poll again.
        more: bool,
        /// The session's tracer is detached.
        stopped: bool,
        /// The final profile, on `StopTrace` of a profile session.
        profile: Vec<ProfileRow>,
    },
    /// Answers `Profile`.
    Profile {
        /// One row per function, by total time.
        rows: Vec<ProfileRow>,
        /// The session's process is exiting and these rows are final.
        #[serde(default)]
        last: bool,
    },
    /// Answers `MapBuffers` and `Snapshot`; the frame carries the data and
    /// tails memory files, in that order, as `SCM_RIGHTS`.
    Buffers {
        /// The session.
        session: u32,
        /// Its tracer.
        tracer: TracerKind,
        /// Where the buffers are in the files.
        layout: BufferLayout,
        /// The clock the records' timestamps count.
        clock: ClockInfo,
    },
    /// Answers `Functions`.
    FunctionNames {
        /// Traced functions: site address and name.
        functions: Vec<WireSymbol>,
        /// Ask again from here for more.
        next: Option<u32>,
    },
    /// Answers `Thaw`.
    Thawed,
    /// Answers `Patch`.
    Patched {
        /// The patch.
        patch: PatchInfo,
    },
    /// Answers `Revert`.
    Reverted {
        /// The patch id.
        patch: u32,
    },
    /// Answers `ListPatches`.
    Patches {
        /// Every patch in place, by id.
        patches: Vec<PatchInfo>,
    },
    /// Any request can fail.
    Error {
        /// Why.
        code: ErrorCode,
        /// What a person reads.
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}
