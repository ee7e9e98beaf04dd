//! Frames on the byte stream: the length prefix, bounded reads and single
//! writes, and the JSON payload's encoding and total decoding.

use std::io::{self, Read, Write};

use serde::Serialize;

use crate::{Request, Response, MAX_FRAME};

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
