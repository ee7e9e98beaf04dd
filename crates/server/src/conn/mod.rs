//! One connection: its thread, its lease, its requests, and the teardown of
//! everything it started.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, OwnedFd};

use livetrace_proto::{
    decode_request, encode, read_frame, write_frame, write_frame_with_fds, ErrorCode, FrameError,
    Request, Response, TracerKind, WireTrace, MAX_FRAME, PROTOCOL_VERSION,
};
use livetrace_tracers::Session;

use crate::{creds, Error, CONNECTIONS, MAX_CONNECTIONS, TICK};

mod patch;
mod query;
mod sessions;

pub(crate) use patch::revert_all_patches;
use patch::{patches, PatchEntry};
pub(crate) use sessions::{config, Spec};

/// Sessions one connection may hold at once.
const MAX_SESSIONS: usize = 16;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
static NEXT_SESSION: AtomicU32 = AtomicU32::new(1);
static NEXT_PATCH: AtomicU32 = AtomicU32::new(1);

/// Counts a connection thread for as long as it lives.
struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Checks the peer and starts the connection's thread, or refuses it.
/// `record`: the connection `livetrace record` made (it may take over the
/// session started before `main`).
pub(crate) fn spawn(mut stream: UnixStream, stop: Arc<AtomicBool>, record: bool) {
    let refuse = |stream: &mut UnixStream, code, msg: String| {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = write_frame(stream, &encode(&Response::error(code, msg)));
        let _ = stream.shutdown(std::net::Shutdown::Both);
    };
    let peer = match creds::peer(&stream) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                &mut stream,
                ErrorCode::Refused,
                format!("cannot read peer credentials: {e}"),
            )
        }
    };
    if !creds::allowed(peer) {
        return refuse(
            &mut stream,
            ErrorCode::Refused,
            format!(
                "uid {} may not control process {} (only its own user or root)",
                peer.uid,
                std::process::id()
            ),
        );
    }
    if CONNECTIONS.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
        return refuse(
            &mut stream,
            ErrorCode::Busy,
            format!("already serving {MAX_CONNECTIONS} connections"),
        );
    }
    let spawned = std::thread::Builder::new()
        .name("livetrace-conn".into())
        .spawn(move || {
            let _counted = Counted;
            serve_connection(stream, &stop, record);
        });
    if spawned.is_err() {
        CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads from the socket in short timeouts so the thread notices a server
/// shutdown, and fails with `TimedOut` once the lease has run out.
struct LeaseReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    stop: &'a AtomicBool,
}

impl Read for LeaseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut s = self.stream;
            match s.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "server shutting down",
                        ));
                    }
                    if Instant::now() >= self.deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "lease expired"));
                    }
                }
                r => return r,
            }
        }
    }
}

fn serve_connection(mut stream: UnixStream, stop: &AtomicBool, record: bool) {
    let lease = crate::lease();
    if stream.set_read_timeout(Some(TICK)).is_err()
        || stream.set_write_timeout(Some(lease)).is_err()
    {
        return;
    }
    let mut conn = Conn {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        sessions: HashMap::new(),
        hello: false,
        lease,
        record,
        fds: Vec::new(),
        frozen: Vec::new(),
    };
    loop {
        let frame = {
            // The lease is renewed by each request, and a request must
            // arrive whole within it (no trickling a frame byte by byte).
            let mut r = LeaseReader {
                stream: &stream,
                deadline: Instant::now() + lease,
                stop,
            };
            read_frame(&mut r, MAX_FRAME)
        };
        let payload = match frame {
            Ok(p) => p,
            Err(FrameError::TooLarge(n)) => {
                reply(
                    &mut stream,
                    &Response::error(
                        ErrorCode::TooLarge,
                        format!("frame of {n} bytes exceeds the limit of {MAX_FRAME}"),
                    ),
                );
                break;
            }
            Err(FrameError::Truncated) => {
                reply(
                    &mut stream,
                    &Response::error(ErrorCode::Malformed, "connection closed inside a frame"),
                );
                break;
            }
            // Closed, lease expired, shutdown, transport error: the client
            // is gone or presumed gone.
            Err(_) => break,
        };
        let req = match decode_request(&payload) {
            Ok(r) => r,
            Err(e) => {
                let code = if serde_json::from_slice::<serde_json::Value>(&payload)
                    .is_ok_and(|v| v.get("op").is_some())
                {
                    ErrorCode::Unsupported
                } else {
                    ErrorCode::Malformed
                };
                reply(&mut stream, &Response::error(code, e.to_string()));
                break;
            }
        };
        // A panic while handling a request must neither take the process
        // down (it cannot: it would end this thread only) nor leave the
        // connection's sessions attached: `conn` is dropped below either
        // way, and the client is told.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| conn.handle(req)));
        let (resp, close) = match outcome {
            Ok(r) => r,
            Err(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                (
                    Response::error(ErrorCode::Internal, format!("server error: {what}")),
                    true,
                )
            }
        };
        let fds = std::mem::take(&mut conn.fds);
        if !reply_with(&mut stream, &resp, &fds) {
            break;
        }
        // A recording process waits at exit for these to have reached the
        // command, sent, not merely decided (it may end the moment it is
        // told).
        if conn.record {
            match resp {
                Response::Buffers { .. } => crate::record::mapped(),
                Response::Profile { last: true, .. } => crate::record::profile_taken(),
                _ => {}
            }
        }
        if close {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // `conn` drops here: every session detached, every owned patch reverted.
    drop(conn);
}

/// Sends a reply, with descriptors if any; false when the client is gone.
fn reply_with(stream: &mut UnixStream, resp: &Response, fds: &[OwnedFd]) -> bool {
    if fds.is_empty() {
        return reply(stream, resp);
    }
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    write_frame_with_fds(stream, &encode(resp), &borrowed).is_ok()
}

/// Sends a reply; false when the client is gone.
fn reply(stream: &mut UnixStream, resp: &Response) -> bool {
    let mut bytes = encode(resp);
    if bytes.len() > MAX_FRAME {
        bytes = encode(&Response::error(
            ErrorCode::TooLarge,
            format!(
                "the reply would be {} bytes, over the limit of {MAX_FRAME}; ask for less (a narrower glob)",
                bytes.len()
            ),
        ));
    }
    write_frame(stream, &bytes).is_ok()
}

pub(crate) struct SessionSlot {
    pub(crate) session: Session,
    pub(crate) tracer: TracerKind,
    /// Drained but not yet sent (a reply carries at most
    /// `MAX_EVENTS_PER_REPLY` events).
    pub(crate) pending: WireTrace,
    pub(crate) stopped: bool,
    /// A flight recorder (listed for `Snapshot` from any connection).
    pub(crate) flight: bool,
    /// A consumer mapped its buffers: it reads them, never a drain here.
    pub(crate) mapped: bool,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if self.flight {
            let me = Arc::as_ptr(self.session.rings());
            flights().retain(|(_, r, _)| r.as_ptr() != me);
        }
    }
}

/// A flight-recorder session of some connection: id, buffers, tracer.
type Flight = (u32, std::sync::Weak<livetrace_ring::Rings>, TracerKind);

/// Every flight-recorder session of the process, for `Snapshot` requests
/// from any connection.
static FLIGHTS: Mutex<Vec<Flight>> = Mutex::new(Vec::new());

fn flights() -> std::sync::MutexGuard<'static, Vec<Flight>> {
    FLIGHTS.lock().unwrap_or_else(|e| e.into_inner())
}

struct Conn {
    id: u64,
    sessions: HashMap<u32, SessionSlot>,
    hello: bool,
    lease: Duration,
    /// The connection `livetrace record` made.
    record: bool,
    /// Descriptors to send with the next reply.
    fds: Vec<OwnedFd>,
    /// Buffers this connection froze for a snapshot, thawed when it ends.
    frozen: Vec<(u32, Arc<livetrace_ring::Rings>)>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, r) in self.frozen.drain(..) {
            r.unfreeze();
        }
        // Sessions detach in their own Drop (one live batch each).
        self.sessions.clear();
        let mine: Vec<PatchEntry> = {
            let mut g = patches();
            let ids: Vec<u32> = g
                .iter()
                .filter(|(_, p)| p.owner == Some(self.id))
                .map(|(&id, _)| id)
                .collect();
            ids.into_iter().filter_map(|id| g.remove(&id)).collect()
        };
        for p in mine {
            let _ = p.patch.revert();
        }
    }
}

impl Conn {
    /// Handles one request: the reply, and whether to close afterwards.
    fn handle(&mut self, req: Request) -> (Response, bool) {
        match self.answer(req) {
            Ok(r) => (r, false),
            Err(e) => (Response::error(e.code(), e.to_string()), e.closes()),
        }
    }

    fn answer(&mut self, req: Request) -> Result<Response, Error> {
        if !self.hello {
            return match req {
                Request::Hello { version, .. } if version == PROTOCOL_VERSION => {
                    self.hello = true;
                    let t = livetrace_tracers::process_identity();
                    Ok(Response::Hello {
                        version: PROTOCOL_VERSION,
                        pid: std::process::id(),
                        program: t.0,
                        cmdline: t.1,
                        lease_ms: self.lease.as_millis() as u64,
                    })
                }
                Request::Hello { version, .. } => Err(Error::Version { asked: version }),
                _ => Err(Error::OutOfTurn("the first request must be Hello")),
            };
        }
        req.validate().map_err(Error::Invalid)?;
        let no_session = |id| Error::NoSession { id, frozen: false };
        match req {
            Request::Hello { .. } => Err(Error::OutOfTurn("Hello was already exchanged")),
            Request::Ping => Ok(Response::Pong),
            Request::ListFunctions { glob, enabled_only } => {
                query::list_functions(glob, enabled_only)
            }
            Request::EnabledFunctions => query::enabled(),
            Request::WhyNot { glob } => query::why_not(&glob),
            Request::StartTrace {
                tracer,
                filter,
                notrace,
                buffer_records,
                mode,
                memory_budget,
                controls,
                no_relocate,
            } => {
                // Each start says whether its filter may relocate.
                livetrace_ftrace::set_relocate_on_demand(!no_relocate);
                self.start(
                    tracer,
                    &Spec {
                        filter,
                        notrace,
                        buffer_records,
                        mode,
                        memory_budget,
                        controls,
                    },
                )
            }
            Request::MapBuffers { session } => {
                let s = self.sessions.get_mut(&session).ok_or(no_session(session))?;
                s.mapped = true;
                let (tracer, rings) = (s.tracer, s.session.rings().clone());
                self.buffers(session, tracer, rings)
            }
            Request::Functions { session, from } => self.functions(session, from),
            Request::Snapshot { session } => self.snapshot(session),
            Request::Thaw { session } => {
                match self.frozen.iter().position(|(s, _)| *s == session) {
                    Some(i) => self.frozen.remove(i).1.unfreeze(),
                    // A trigger froze it.
                    None => self
                        .sessions
                        .get(&session)
                        .ok_or(Error::NoSession {
                            id: session,
                            frozen: true,
                        })?
                        .session
                        .rings()
                        .unfreeze(),
                }
                Ok(Response::Thawed)
            }
            Request::Recording => self.recording(),
            Request::PollEvents { session } => self.poll(session, false),
            Request::StopTrace { session } => self.poll(session, true),
            Request::Profile { session } => {
                let s = self.sessions.get(&session).ok_or(no_session(session))?;
                // The process is exiting: these rows are the last (and the
                // exit handler waiting for them may go on).
                let last = self.record && crate::record::exiting();
                let rows = s.session.profile().to_vec();
                Ok(Response::Profile { rows, last })
            }
            Request::Patch {
                original,
                replacement,
                persist,
            } => self.patch(&original, &replacement, persist),
            Request::Revert { patch } => {
                let p = patches().remove(&patch).ok_or(Error::NoPatch(patch))?;
                p.patch.revert()?;
                Ok(Response::Reverted { patch })
            }
            Request::ListPatches => Ok(Response::Patches {
                patches: patches().values().map(|p| p.info.clone()).collect(),
            }),
        }
    }
}
