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
mod env;
mod fds;
mod frame;
mod request;
mod response;
mod wire;

pub use client::{Client, ClientError, ServerInfo, REPLY_TIMEOUT};
pub use env::{socket_dir, socket_path, RecordSpec, ENABLE_ENV, RECORD_ENV, SOCKET_DIR_ENV};
pub use fds::{read_frame_with_fds, write_frame_with_fds, MAX_FDS};
pub use frame::{
    decode_request, decode_response, encode, read_frame, write_frame, DecodeError, FrameError,
};
pub use request::{Controls, Request};
pub use response::{BufferLayout, ClockInfo, EnabledInfo, ErrorCode, PatchInfo, Refusal, Response};
pub use wire::{merge_trace, WireEvent, WireMapping, WireSymbol, WireThread, WireTrace};

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
pub use livetrace_format::{Function, Mode, ProfileRow, Tracer};

#[cfg(test)]
mod tests;
