//! The protocol of livetrace's control socket: how the `livetrace` command
//! (or any other client) talks to the server thread inside a traced
//! process (`livetrace-server`).
//!
//! # Model
//!
//! A client connects to the process's Unix socket ([`socket_path`]) and
//! exchanges *frames*: a 4-byte little-endian payload length, then that many
//! bytes of JSON (one [`Request`] or one [`Response`]). The first request
//! must be [`Request::Hello`] carrying [`PROTOCOL_VERSION`]; the server
//! answers with its own version and the process's identity. From then on
//! every request gets exactly one response, in order; a failure is a
//! [`Response::Error`] with an [`ErrorCode`].
//!
//! # Invariants
//!
//! - **Bounded.** No frame is longer than [`MAX_FRAME`] bytes. A reader
//!   refuses a longer length prefix before allocating anything for it
//!   ([`FrameError::TooLarge`]), and a writer refuses to send one.
//! - **Total decoding.** [`read_frame`], [`decode_request`] and
//!   [`decode_response`] never panic: any input is a value or a clean
//!   error (fuzzed in `tests/fuzz.rs`). JSON nesting is bounded by
//!   `serde_json`'s recursion limit, so hostile input cannot overflow the
//!   stack either.
//! - **Fail closed.** A server that gets a malformed, oversized, unknown or
//!   out-of-order request replies with an error and closes the connection:
//!   after garbage, the byte stream cannot be trusted to be at a frame
//!   boundary.
//! - **Names, not addresses.** Requests name functions by name or glob; an
//!   address (`0x…`) is accepted only where it is exactly one of the
//!   process's known sites, which the server checks. Nothing in the
//!   protocol can make the server write to an address a client chose: live
//!   patches go from one known, signature-checked function to another.
//!
//! # Records travel by shared memory
//!
//! A consumer does not receive records in frames: [`Request::MapBuffers`]
//! (and [`Request::Snapshot`] for a flight recorder) are answered with a
//! frame that carries the session's two memory files as `SCM_RIGHTS`
//! ([`Client::call_with_fds`], [`write_frame_with_fds`]); the consumer maps
//! them and reads the records itself, storing what it consumed in the
//! shared tails (see `livetrace_ring::shm`). The frames stay for control:
//! starting and stopping, names ([`Request::Functions`]), profiles,
//! patches. [`Request::PollEvents`] remains for simple clients: it drains
//! the buffers in the process and sends events as [`WireTrace`], a serde
//! mirror of [`livetrace_output::Trace`] with events as compact `[kind, ts,
//! func, caller_or_depth]` arrays, at most [`MAX_EVENTS_PER_REPLY`] a
//! frame.

#![warn(missing_docs)]

mod client;
mod fds;
mod wire;

pub use client::{Client, ClientError, ServerInfo, REPLY_TIMEOUT};
pub use fds::{read_frame_with_fds, write_frame_with_fds, MAX_FDS};
pub use wire::{merge_trace, WireEvent, WireMapping, WireSymbol, WireThread, WireTrace};

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol version; [`Request::Hello`] must carry exactly this one.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest frame payload either side sends or accepts: 16 MiB.
pub const MAX_FRAME: usize = 16 << 20;

/// At most this many events travel in one [`Response::Events`]; the rest
/// wait for the next poll (`more` is set). Keeps replies well under
/// [`MAX_FRAME`] (an event is at most ~70 bytes of JSON).
pub const MAX_EVENTS_PER_REPLY: usize = 100_000;

/// At most this many filter or notrace patterns in one request.
pub const MAX_PATTERNS: usize = 4096;

/// The longest pattern or function name a request may carry: longer than
/// any real name, short enough that matching stays cheap.
pub const MAX_NAME: usize = 4096;

/// Ring sizes a client may ask for (records per thread; a power of two).
pub const RING_RECORDS: std::ops::RangeInclusive<u64> = 64..=(1 << 22);

/// Memory budgets a client may ask for (bytes of buffers per session).
pub const MEMORY_BUDGET: std::ops::RangeInclusive<u64> = (64 << 10)..=(64 << 30);

/// At most this many functions travel in one [`Response::FunctionNames`].
pub const MAX_FUNCTIONS_PER_REPLY: usize = 20_000;

/// Which tracer a session runs (the shared vocabulary's [`Tracer`]).
pub use livetrace_format::Tracer as TracerKind;
pub use livetrace_format::{Function, Mode, Tracer};

/// What a session records, decided in the traced process before anything
/// reaches a buffer (the tracers' volume control).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Controls {
    /// Graph tracer: record only calls nested less deep than this
    /// (uftrace's `-D`; 1 = top-level calls only).
    pub depth: Option<u32>,
    /// Graph tracer: record only calls that last at least this long, in ns
    /// (uftrace's `-t`), with their callers.
    pub min_duration_ns: Option<u64>,
    /// Record nothing until one of these functions is called (ftrace's
    /// `traceon` trigger; the function's own call is recorded).
    pub start_at: Vec<String>,
    /// Stop recording when one of these functions is called (`traceoff`).
    pub stop_at: Vec<String>,
    /// Flight recorder: freeze the buffers for a snapshot when one of these
    /// functions is called.
    pub snapshot_at: Vec<String>,
}

impl Controls {
    /// Whether any control is set.
    pub fn any(&self) -> bool {
        *self != Controls::default()
    }

    fn patterns(&self) -> impl Iterator<Item = &String> {
        self.start_at
            .iter()
            .chain(&self.stop_at)
            .chain(&self.snapshot_at)
    }
}

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

/// What a client asks. Unknown fields are refused, so a typo is an error
/// rather than a silently ignored option.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Request {
    /// Must come first; `version` must be [`PROTOCOL_VERSION`].
    Hello {
        /// The client's protocol version.
        version: u32,
        /// Free text for logs: the client's name.
        client: String,
    },
    /// Does nothing but renew the connection's lease.
    Ping,
    /// Traceable functions (all when `glob` is `None`).
    ListFunctions {
        /// A glob over full names.
        glob: Option<String>,
        /// Only functions whose site is currently enabled.
        enabled_only: bool,
    },
    /// Every enabled function, with its ops and trampoline.
    EnabledFunctions,
    /// Functions compiled without a site that `glob` names and that
    /// cannot be given one by prologue relocation, each with its reason.
    WhyNot {
        /// A glob over full names.
        glob: String,
    },
    /// Starts a tracing session owned by this connection.
    StartTrace {
        /// The tracer.
        tracer: TracerKind,
        /// Functions to trace: names, globs, or `0x…` site addresses.
        filter: Vec<String>,
        /// Functions never to trace.
        notrace: Vec<String>,
        /// Ring buffer records per thread (a power of two in
        /// [`RING_RECORDS`]); the tracer's default when `None`.
        buffer_records: Option<u64>,
        /// How the buffers are used; flight recorder (overwrite) when
        /// `None`.
        #[serde(default)]
        mode: Option<Mode>,
        /// Bytes of buffers the session may use in all (in
        /// [`MEMORY_BUDGET`]); the tracer's default when `None`.
        #[serde(default)]
        memory_budget: Option<u64>,
        /// What to record at all.
        #[serde(default)]
        controls: Controls,
        /// Do not give the functions a filter names that have no site one
        /// by prologue relocation (which is on by default: see
        /// `livetrace_ftrace::set_relocate_on_demand`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_relocate: bool,
    },
    /// The session's buffers, to consume them directly: answered with
    /// [`Response::Buffers`], which passes the two memory files with
    /// `SCM_RIGHTS` (read them with [`Client::call_with_fds`]).
    MapBuffers {
        /// The session.
        session: u32,
    },
    /// The names of the functions a session traces, a page at a time.
    Functions {
        /// The session.
        session: u32,
        /// Skip this many functions (the previous page's `next`).
        from: u32,
    },
    /// Freezes a flight-recorder session's buffers and passes them, for a
    /// snapshot (answered with [`Response::Buffers`]); the session of this
    /// connection, or of any connection when `None` and there is exactly
    /// one. They stay frozen until [`Request::Thaw`] or the end of this
    /// connection.
    Snapshot {
        /// The session, if not the only flight recorder.
        session: Option<u32>,
    },
    /// Lets a session frozen by [`Request::Snapshot`] (or a snapshot
    /// trigger) record again.
    Thaw {
        /// The session.
        session: u32,
    },
    /// Takes over the session `livetrace record` started before `main`
    /// (only on the connection it created): answered with `Started`.
    Recording,
    /// Events recorded since the previous poll, consumed.
    PollEvents {
        /// The session.
        session: u32,
    },
    /// Detaches the session's tracer; answers with the first batch of the
    /// remaining events (poll again while `more`) and the final profile.
    StopTrace {
        /// The session.
        session: u32,
    },
    /// The profile so far (profile tracer).
    Profile {
        /// The session.
        session: u32,
    },
    /// Redirects every call of `original` to `replacement`: two `#[traced]`
    /// functions whose recorded signatures are known and equal.
    Patch {
        /// Full name (or `0x…` site address) of the function to replace.
        original: String,
        /// Full name (or `0x…` site address) of its replacement.
        replacement: String,
        /// Keep the patch after this connection ends (until a `Revert`);
        /// otherwise it is reverted with the connection.
        persist: bool,
    },
    /// Reverts a patch.
    Revert {
        /// The patch id.
        patch: u32,
    },
    /// Every patch in place.
    ListPatches,
}

impl Request {
    /// Checks the values a well-formed request may still get wrong, so the
    /// server never passes them on (ring sizes the ring crate would assert
    /// on, empty patterns, absurd pattern counts).
    pub fn validate(&self) -> Result<(), String> {
        let long = |p: &String| p.len() > MAX_NAME;
        match self {
            Request::ListFunctions { glob: Some(g), .. } | Request::WhyNot { glob: g }
                if long(g) =>
            {
                Err(format!("glob longer than {MAX_NAME} bytes"))
            }
            Request::StartTrace {
                tracer,
                filter,
                notrace,
                buffer_records,
                mode,
                memory_budget,
                controls,
                no_relocate: false,
                ..
            } => {
                if filter.len() + notrace.len() + controls.patterns().count() > MAX_PATTERNS {
                    return Err(format!("more than {MAX_PATTERNS} patterns"));
                }
                if let Some(p) = filter
                    .iter()
                    .chain(notrace)
                    .chain(controls.patterns())
                    .find(|p| p.trim().is_empty())
                {
                    return Err(format!("empty pattern {p:?}"));
                }
                if filter
                    .iter()
                    .chain(notrace)
                    .chain(controls.patterns())
                    .any(long)
                {
                    return Err(format!("pattern longer than {MAX_NAME} bytes"));
                }
                if let Some(b) = memory_budget {
                    if !MEMORY_BUDGET.contains(b) {
                        return Err(format!(
                            "memory budget {b} bytes: must be from {} to {}",
                            MEMORY_BUDGET.start(),
                            MEMORY_BUDGET.end()
                        ));
                    }
                }
                if controls.depth == Some(0) {
                    return Err("a depth limit of 0 records nothing".into());
                }
                let graph_only = controls.depth.is_some() || controls.min_duration_ns.is_some();
                if graph_only && *tracer != TracerKind::Graph {
                    return Err(format!(
                        "--depth and --min-duration need the graph tracer, not {tracer}"
                    ));
                }
                if !controls.snapshot_at.is_empty() && *mode != Some(Mode::Flight) {
                    return Err("a snapshot trigger needs the flight recorder".into());
                }
                if let Some(n) = buffer_records {
                    if !n.is_power_of_two() || !RING_RECORDS.contains(n) {
                        return Err(format!(
                            "buffer size {n} records: must be a power of two from {} to {}",
                            RING_RECORDS.start(),
                            RING_RECORDS.end()
                        ));
                    }
                }
                Ok(())
            }
            Request::Patch {
                original,
                replacement,
                ..
            } => {
                if original.is_empty() || replacement.is_empty() {
                    return Err("a patch names two functions".into());
                }
                if long(original) || long(replacement) {
                    return Err(format!("function name longer than {MAX_NAME} bytes"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or its JSON could not be decoded (connection closed).
    Malformed,
    /// The frame was longer than [`MAX_FRAME`], or a reply would be.
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
    /// Its id, for [`Request::Revert`].
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

/// One profile row (mirrors [`livetrace_output::ProfileRow`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// Function name.
    pub name: String,
    /// Calls.
    pub calls: u64,
    /// Total time, ns.
    pub total_ns: u64,
    /// Self time, ns.
    pub self_ns: u64,
    /// Shortest call, ns.
    pub min_ns: u64,
    /// Longest call, ns.
    pub max_ns: u64,
}

impl From<&livetrace_output::ProfileRow> for ProfileEntry {
    fn from(r: &livetrace_output::ProfileRow) -> ProfileEntry {
        ProfileEntry {
            name: r.name.clone(),
            calls: r.calls,
            total_ns: r.total_ns,
            self_ns: r.self_ns,
            min_ns: r.min_ns,
            max_ns: r.max_ns,
        }
    }
}

impl From<ProfileEntry> for livetrace_output::ProfileRow {
    fn from(r: ProfileEntry) -> livetrace_output::ProfileRow {
        livetrace_output::ProfileRow {
            name: r.name,
            calls: r.calls,
            total_ns: r.total_ns,
            self_ns: r.self_ns,
            min_ns: r.min_ns,
            max_ns: r.max_ns,
        }
    }
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
        profile: Vec<ProfileEntry>,
    },
    /// Answers `Profile`.
    Profile {
        /// One row per function, by total time.
        rows: Vec<ProfileEntry>,
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

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The stream ended cleanly, between frames.
    Closed,
    /// The stream ended inside a frame.
    Truncated,
    /// The length prefix exceeds the limit; nothing more was read.
    TooLarge(u64),
    /// The transport failed (including read timeouts).
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::Truncated => f.write_str("connection closed inside a frame"),
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the limit of {MAX_FRAME}")
            }
            FrameError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads one frame's payload. Refuses a length over `max` before reading
/// or allocating anything more; allocates as the bytes arrive, so a short
/// stream announcing a large frame costs nothing.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let n = u32::from_le_bytes(len) as u64;
    if n > max as u64 {
        return Err(FrameError::TooLarge(n));
    }
    let mut payload = Vec::new();
    match r.take(n).read_to_end(&mut payload) {
        Ok(_) if payload.len() as u64 == n => Ok(payload),
        Ok(_) => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes one frame: the length prefix and the payload, in one write so a
/// frame is never interleaved with another writer's.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds the limit of {MAX_FRAME}",
                payload.len()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// A message's payload bytes.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and
    // every value plain data.
    serde_json::to_vec(msg).expect("protocol messages always serialise")
}

/// Why a payload is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a request payload; never panics.
pub fn decode_request(payload: &[u8]) -> Result<Request, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError(format!("bad request: {e}")))
}

/// Decodes a response payload; never panics.
pub fn decode_response(payload: &[u8]) -> Result<Response, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError(format!("bad response: {e}")))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_look_like_json() {
        let r = Request::StartTrace {
            tracer: TracerKind::Graph,
            filter: vec!["app::*".into()],
            notrace: vec![],
            buffer_records: Some(1024),
            mode: Some(Mode::Stream),
            memory_budget: None,
            controls: Controls::default(),
            no_relocate: false,
        };
        let bytes = encode(&r);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"op":"StartTrace","tracer":"graph","filter":["app::*"],"notrace":[],"buffer_records":1024,"mode":"stream","memory_budget":null,"controls":{"depth":null,"min_duration_ns":null,"start_at":[],"stop_at":[],"snapshot_at":[]}}"#
        );
        assert_eq!(decode_request(&bytes).unwrap(), r);
        // The new fields may be left out.
        let old = br#"{"op":"StartTrace","tracer":"graph","filter":["app::*"],"notrace":[],"buffer_records":1024}"#;
        assert!(matches!(
            decode_request(old).unwrap(),
            Request::StartTrace { mode: None, .. }
        ));
        assert_eq!(decode_request(br#"{"op":"Ping"}"#).unwrap(), Request::Ping);
        assert!(decode_request(br#"{"op":"Revert","patch":1,"addr":2}"#).is_err());
        assert!(decode_request(br#"{"op":"Poke","addr":1}"#).is_err());
    }

    #[test]
    fn frames_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        assert_eq!(&buf[..4], &5u32.to_le_bytes());
        assert_eq!(read_frame(&mut &buf[..], 16).unwrap(), b"hello");
        assert!(matches!(
            read_frame(&mut &buf[..], 4),
            Err(FrameError::TooLarge(5))
        ));
        assert!(matches!(
            read_frame(&mut &buf[..6], 16),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &buf[..0], 16),
            Err(FrameError::Closed)
        ));
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..], MAX_FRAME),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn validation_catches_what_decoding_cannot() {
        let start = |n| Request::StartTrace {
            tracer: TracerKind::Function,
            filter: vec!["a".into()],
            notrace: vec![],
            buffer_records: Some(n),
            mode: None,
            memory_budget: None,
            controls: Controls::default(),
            no_relocate: false,
        };
        assert!(start(1024).validate().is_ok());
        assert!(start(1000).validate().is_err());
        assert!(start(2).validate().is_err());
        assert!(start(1 << 40).validate().is_err());
        let with = |tracer, controls: Controls, mode| Request::StartTrace {
            tracer,
            filter: vec!["a".into()],
            notrace: vec![],
            buffer_records: None,
            mode,
            memory_budget: None,
            controls,
            no_relocate: false,
        };
        let depth = Controls {
            depth: Some(3),
            ..Controls::default()
        };
        assert!(with(TracerKind::Graph, depth.clone(), None)
            .validate()
            .is_ok());
        assert!(with(TracerKind::Function, depth, None).validate().is_err());
        let zero = Controls {
            depth: Some(0),
            ..Controls::default()
        };
        assert!(with(TracerKind::Graph, zero, None).validate().is_err());
        let snap = Controls {
            snapshot_at: vec!["f".into()],
            ..Controls::default()
        };
        assert!(with(TracerKind::Graph, snap.clone(), Some(Mode::Stream))
            .validate()
            .is_err());
        assert!(with(TracerKind::Graph, snap, Some(Mode::Flight))
            .validate()
            .is_ok());
        let list = |g: String| Request::ListFunctions {
            glob: Some(g),
            enabled_only: false,
        };
        assert!(list("*".repeat(MAX_NAME)).validate().is_ok());
        assert!(list("*".repeat(MAX_NAME + 1)).validate().is_err());
    }
}
