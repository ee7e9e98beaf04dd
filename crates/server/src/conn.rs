//! One connection: its thread, its lease, its requests, and the teardown of
//! everything it started.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, OwnedFd};

use livetrace_proto::{
    decode_request, encode, read_frame, write_frame, write_frame_with_fds, BufferLayout, ClockInfo,
    Controls, EnabledInfo, ErrorCode, FrameError, Mode, PatchInfo, ProfileEntry, Refusal, Request,
    Response, TracerKind, WireSymbol, WireTrace, MAX_EVENTS_PER_REPLY, MAX_FRAME,
    MAX_FUNCTIONS_PER_REPLY, PROTOCOL_VERSION,
};
use livetrace_tracers::{Config, Session};

use crate::{creds, CONNECTIONS, MAX_CONNECTIONS, TICK};

/// Sessions one connection may hold at once.
const MAX_SESSIONS: usize = 16;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
static NEXT_SESSION: AtomicU32 = AtomicU32::new(1);
static NEXT_PATCH: AtomicU32 = AtomicU32::new(1);

struct PatchEntry {
    patch: livetrace_ftrace::LivePatch,
    info: PatchInfo,
    /// The connection that reverts it when it ends; `None` when persistent.
    owner: Option<u64>,
}

/// Every patch in place, by id; any connection of the same user may list
/// or revert them.
static PATCHES: Mutex<BTreeMap<u32, PatchEntry>> = Mutex::new(BTreeMap::new());

fn patches() -> std::sync::MutexGuard<'static, BTreeMap<u32, PatchEntry>> {
    PATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reverts every patch in place, persistent ones included (before the
/// library is unloaded). Returns how many were reverted, or the first
/// failure (the patches not reverted stay listed).
pub(crate) fn revert_all_patches() -> Result<usize, String> {
    let all = std::mem::take(&mut *patches());
    let mut n = 0;
    let mut first_err = None;
    for (id, p) in all {
        let info = p.info.clone();
        match p.patch.revert() {
            Ok(()) => n += 1,
            Err(e) => {
                first_err.get_or_insert_with(|| {
                    format!("patch {id} {} -> {}: {e}", info.original, info.replacement)
                });
            }
        }
    }
    first_err.map_or(Ok(n), Err)
}

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

fn err(code: ErrorCode, msg: impl Into<String>) -> (Response, bool) {
    (Response::error(code, msg), false)
}

fn tracing_error(e: livetrace_ftrace::Error) -> (Response, bool) {
    match e {
        livetrace_ftrace::Error::NoMatch { .. } | livetrace_ftrace::Error::NoSuchFunction(_) => {
            err(ErrorCode::Invalid, e.to_string())
        }
        _ => err(ErrorCode::Failed, e.to_string()),
    }
}

/// A known `#[traced]` function that a patch may name.
struct Known {
    addr: usize,
    name: &'static str,
    signature: &'static str,
}

impl Conn {
    /// Handles one request: the reply, and whether to close afterwards.
    fn handle(&mut self, req: Request) -> (Response, bool) {
        if !self.hello {
            return match req {
                Request::Hello { version, .. } if version == PROTOCOL_VERSION => {
                    self.hello = true;
                    let t = livetrace_tracers::process_identity();
                    (
                        Response::Hello {
                            version: PROTOCOL_VERSION,
                            pid: std::process::id(),
                            program: t.0,
                            cmdline: t.1,
                            lease_ms: self.lease.as_millis() as u64,
                        },
                        false,
                    )
                }
                Request::Hello { version, .. } => (
                    Response::error(
                        ErrorCode::Version,
                        format!(
                            "protocol version {version} is not supported (this process speaks {PROTOCOL_VERSION})"
                        ),
                    ),
                    true,
                ),
                _ => (
                    Response::error(ErrorCode::Unsupported, "the first request must be Hello"),
                    true,
                ),
            };
        }
        if let Err(m) = req.validate() {
            return err(ErrorCode::Invalid, m);
        }
        match req {
            Request::Hello { .. } => (
                Response::error(ErrorCode::Unsupported, "Hello was already exchanged"),
                true,
            ),
            Request::Ping => (Response::Pong, false),
            Request::ListFunctions { glob, enabled_only } => list_functions(glob, enabled_only),
            Request::EnabledFunctions => enabled(),
            Request::WhyNot { glob } => why_not(&glob),
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
            Request::MapBuffers { session } => match self.sessions.get_mut(&session) {
                Some(s) => {
                    s.mapped = true;
                    let (tracer, rings) = (s.tracer, s.session.rings().clone());
                    self.buffers(session, tracer, rings)
                }
                None => err(
                    ErrorCode::NotFound,
                    format!("no session {session} on this connection"),
                ),
            },
            Request::Functions { session, from } => self.functions(session, from),
            Request::Snapshot { session } => self.snapshot(session),
            Request::Thaw { session } => {
                match self.frozen.iter().position(|(s, _)| *s == session) {
                    Some(i) => {
                        self.frozen.remove(i).1.unfreeze();
                        (Response::Thawed, false)
                    }
                    None => match self.sessions.get(&session) {
                        // A trigger froze it.
                        Some(s) => {
                            s.session.rings().unfreeze();
                            (Response::Thawed, false)
                        }
                        None => err(
                            ErrorCode::NotFound,
                            format!("session {session} is not frozen by this connection"),
                        ),
                    },
                }
            }
            Request::Recording => self.recording(),
            Request::PollEvents { session } => self.poll(session, false),
            Request::StopTrace { session } => self.poll(session, true),
            Request::Profile { session } => match self.sessions.get(&session) {
                Some(s) => {
                    // The process is exiting: these rows are the last (and
                    // the exit handler waiting for them may go on).
                    let last = self.record && crate::record::exiting();
                    let rows = s.session.profile().iter().map(ProfileEntry::from).collect();
                    (Response::Profile { rows, last }, false)
                }
                None => err(
                    ErrorCode::NotFound,
                    format!("no session {session} on this connection"),
                ),
            },
            Request::Patch {
                original,
                replacement,
                persist,
            } => self.patch(&original, &replacement, persist),
            Request::Revert { patch } => {
                let entry = patches().remove(&patch);
                match entry {
                    Some(p) => match p.patch.revert() {
                        Ok(()) => (Response::Reverted { patch }, false),
                        Err(e) => tracing_error(e),
                    },
                    None => err(ErrorCode::NotFound, format!("no patch {patch}")),
                }
            }
            Request::ListPatches => (
                Response::Patches {
                    patches: patches().values().map(|p| p.info.clone()).collect(),
                },
                false,
            ),
        }
    }

    fn start(&mut self, tracer: TracerKind, spec: &Spec) -> (Response, bool) {
        if self.sessions.len() >= MAX_SESSIONS {
            return err(
                ErrorCode::Failed,
                format!("this connection already has {MAX_SESSIONS} sessions"),
            );
        }
        let cfg = match config(tracer, spec) {
            Ok(c) => c,
            Err(m) => return err(ErrorCode::Invalid, m),
        };
        match livetrace_runtime::trace(cfg) {
            Ok(session) => {
                let id = self.adopt(session, tracer, spec.mode == Some(Mode::Flight));
                (Response::Started { session: id }, false)
            }
            Err(e) => tracing_error(e),
        }
    }

    /// Makes `session` this connection's; returns its id.
    fn adopt(&mut self, session: Session, tracer: TracerKind, flight: bool) -> u32 {
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        if flight {
            flights().push((id, Arc::downgrade(session.rings()), tracer));
        }
        self.sessions.insert(
            id,
            SessionSlot {
                session,
                tracer,
                pending: WireTrace::default(),
                stopped: false,
                flight,
                mapped: false,
            },
        );
        id
    }

    /// Takes over the session `livetrace record` started.
    fn recording(&mut self) -> (Response, bool) {
        if !self.record {
            return err(
                ErrorCode::NotFound,
                "only the connection livetrace record made can take its session",
            );
        }
        match crate::record::take() {
            Some(Ok((session, tracer, flight))) => {
                let id = self.adopt(session, tracer, flight);
                (Response::Started { session: id }, false)
            }
            Some(Err(e)) => err(ErrorCode::Failed, e),
            None => err(
                ErrorCode::NotFound,
                "the recording session was already taken",
            ),
        }
    }

    /// Replies with the buffers' memory files.
    fn buffers(
        &mut self,
        session: u32,
        tracer: TracerKind,
        rings: Arc<livetrace_ring::Rings>,
    ) -> (Response, bool) {
        let Some((data, tails, l)) = rings.shared() else {
            return err(
                ErrorCode::Failed,
                "this process's buffers are not in memory files (memfd_create failed)",
            );
        };
        match (data.try_clone_to_owned(), tails.try_clone_to_owned()) {
            (Ok(d), Ok(t)) => self.fds = vec![d, t],
            (Err(e), _) | (_, Err(e)) => {
                return err(ErrorCode::Failed, format!("cannot pass the buffers: {e}"))
            }
        }
        if !l.overwrite {
            // A stream consumer releases exited threads' buffers itself;
            // threads that died without their exit hook are marked here.
            rings.maintain(false);
        }
        let c = livetrace_ring::Clock::get();
        let (base_ticks, base_ns, mult) = c.calibration();
        (
            Response::Buffers {
                session,
                tracer,
                layout: BufferLayout {
                    slots: l.slots,
                    stride: l.stride,
                    records: l.records,
                    pool_header: l.pool_header,
                    slot_header: l.slot_header,
                    data_bytes: l.data_bytes,
                    tails_bytes: l.tails_bytes,
                    overwrite: l.overwrite,
                },
                clock: ClockInfo {
                    tsc: c.source() == livetrace_ring::Source::Tsc,
                    hz: c.frequency_hz(),
                    base_ticks,
                    base_ns,
                    mult,
                },
            },
            false,
        )
    }

    fn functions(&mut self, session: u32, from: u32) -> (Response, bool) {
        let Some(s) = self.sessions.get(&session) else {
            return err(
                ErrorCode::NotFound,
                format!("no session {session} on this connection"),
            );
        };
        // Also upkeep for stream consumers, which ask now and then: threads
        // that died without their exit hook are marked exited. A page past
        // every end is only that (and renews the lease).
        s.session.rings().maintain(s.flight);
        if from == u32::MAX {
            return (
                Response::FunctionNames {
                    functions: Vec::new(),
                    next: None,
                },
                false,
            );
        }
        match s.session.functions() {
            Ok(mut all) => {
                all.sort_unstable();
                let from = from as usize;
                let end = (from + MAX_FUNCTIONS_PER_REPLY).min(all.len());
                let functions = all
                    .get(from..end)
                    .unwrap_or(&[])
                    .iter()
                    .map(|(addr, name)| WireSymbol {
                        addr: *addr as u64,
                        size: 0,
                        name: name.clone(),
                    })
                    .collect();
                (
                    Response::FunctionNames {
                        functions,
                        next: (end < all.len()).then_some(end as u32),
                    },
                    false,
                )
            }
            Err(e) => tracing_error(e),
        }
    }

    /// Freezes a flight recorder and passes its buffers.
    fn snapshot(&mut self, session: Option<u32>) -> (Response, bool) {
        let found: Vec<(u32, Arc<livetrace_ring::Rings>, TracerKind)> = flights()
            .iter()
            .filter(|(id, _, _)| session.is_none_or(|s| s == *id))
            .filter_map(|(id, w, t)| Some((*id, w.upgrade()?, *t)))
            .collect();
        let (id, rings, tracer) = match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return err(
                    ErrorCode::NotFound,
                    match session {
                        Some(s) => format!("no flight recorder session {s} in this process"),
                        None => "no flight recorder runs in this process (start one with                                  `livetrace trace PID --flight`)"
                            .to_string(),
                    },
                )
            }
            many => {
                let ids: Vec<String> = many.iter().map(|(i, _, _)| i.to_string()).collect();
                return err(
                    ErrorCode::Invalid,
                    format!("several flight recorders run ({}); name one", ids.join(", ")),
                );
            }
        };
        if !rings.is_frozen() {
            rings.freeze();
            self.frozen.push((id, rings.clone()));
        }
        self.buffers(id, tracer, rings)
    }
    fn poll(&mut self, id: u32, stop: bool) -> (Response, bool) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return err(
                ErrorCode::NotFound,
                format!("no session {id} on this connection"),
            );
        };
        let mut profile = Vec::new();
        if stop && !slot.stopped {
            if let Err(e) = slot.session.stop() {
                return tracing_error(e);
            }
            slot.stopped = true;
            if slot.tracer == TracerKind::Profile {
                profile = slot
                    .session
                    .profile()
                    .iter()
                    .map(ProfileEntry::from)
                    .collect();
            }
        }
        if slot.tracer != TracerKind::Profile && !slot.mapped {
            let t = slot.session.drain();
            slot.pending.append(WireTrace::from(&t));
        }
        let front = slot.pending.split_front(MAX_EVENTS_PER_REPLY);
        let more = slot.pending.event_count() > 0;
        let stopped = slot.stopped;
        if stopped && !more {
            self.sessions.remove(&id);
        } else if !more {
            // Keep identity and symbols small between polls.
            slot.pending = WireTrace::default();
        }
        (
            Response::Events {
                trace: front,
                more,
                stopped,
                profile,
            },
            false,
        )
    }

    fn patch(&mut self, original: &str, replacement: &str, persist: bool) -> (Response, bool) {
        let o = match known(original) {
            Ok(k) => k,
            Err(m) => return err(ErrorCode::Invalid, m),
        };
        let r = match known(replacement) {
            Ok(k) => k,
            Err(m) => return err(ErrorCode::Invalid, m),
        };
        if o.addr == r.addr {
            return err(
                ErrorCode::Invalid,
                format!("{} cannot replace itself", o.name),
            );
        }
        for k in [&o, &r] {
            if k.signature.is_empty() {
                return err(
                    ErrorCode::Invalid,
                    format!(
                        "{} has no known signature (generic functions have none), so it cannot be \
                         patched: {} -> {}",
                        k.name, o.name, r.name
                    ),
                );
            }
        }
        if o.signature != r.signature {
            return err(
                ErrorCode::Invalid,
                format!(
                    "signatures differ: {} is `{}` but {} is `{}`",
                    o.name, o.signature, r.name, r.signature
                ),
            );
        }
        match livetrace_ftrace::livepatch_addr(o.addr, r.addr) {
            Ok(patch) => {
                let id = NEXT_PATCH.fetch_add(1, Ordering::Relaxed);
                let info = PatchInfo {
                    id,
                    original: o.name.to_string(),
                    replacement: r.name.to_string(),
                    signature: o.signature.to_string(),
                    persistent: persist,
                };
                patches().insert(
                    id,
                    PatchEntry {
                        patch,
                        info: info.clone(),
                        owner: (!persist).then_some(self.id),
                    },
                );
                (Response::Patched { patch: info }, false)
            }
            Err(e) => tracing_error(e),
        }
    }
}

/// What a request asks a session to be.
pub(crate) struct Spec {
    pub(crate) filter: Vec<String>,
    pub(crate) notrace: Vec<String>,
    pub(crate) buffer_records: Option<u64>,
    pub(crate) mode: Option<Mode>,
    pub(crate) memory_budget: Option<u64>,
    pub(crate) controls: Controls,
}

/// The session configuration for a request, with every address pattern
/// checked to be one of the process's sites.
pub(crate) fn config(tracer: TracerKind, spec: &Spec) -> Result<Config, String> {
    let c = &spec.controls;
    let mut sites: Option<HashSet<usize>> = None;
    for p in spec
        .filter
        .iter()
        .chain(&spec.notrace)
        .chain(&c.start_at)
        .chain(&c.stop_at)
        .chain(&c.snapshot_at)
    {
        if let livetrace_ftrace::Pattern::Addr(a) = livetrace_ftrace::Pattern::parse(p) {
            let sites = match &mut sites {
                Some(s) => s,
                None => sites.insert(
                    livetrace_runtime::functions(None)
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|f| f.addr as usize)
                        .collect(),
                ),
            };
            if !sites.contains(&a) {
                return Err(format!("{a:#x} is not the address of a traceable function"));
            }
        }
    }
    let filter: Vec<&str> = spec.filter.iter().map(String::as_str).collect();
    let mut cfg = Config::new(tracer, &filter);
    let parse = |v: &[String]| {
        v.iter()
            .map(|p| livetrace_ftrace::Pattern::parse(p))
            .collect()
    };
    cfg.notrace = parse(&spec.notrace);
    if let Some(n) = spec.buffer_records {
        cfg.ring.records_per_thread = n as usize;
    }
    if let Some(b) = spec.memory_budget {
        cfg.ring.memory_budget = b as usize;
    }
    // Buffers are committed up front up to 2 MiB; larger ones (streams)
    // as they first fill, so idle threads cost little memory.
    cfg.ring.prefault = cfg.ring.records_per_thread <= 64 * 1024;
    cfg.ring.mode = match spec.mode {
        Some(Mode::Stream) => livetrace_ring::Mode::DropNewest,
        Some(Mode::Flight) | None => livetrace_ring::Mode::Overwrite,
    };
    cfg.controls = livetrace_tracers::Controls {
        depth: c.depth,
        min_duration_ns: c.min_duration_ns.unwrap_or(0),
        start_at: parse(&c.start_at),
        stop_at: parse(&c.stop_at),
        snapshot_at: parse(&c.snapshot_at),
    };
    Ok(cfg)
}

fn list_functions(glob: Option<String>, enabled_only: bool) -> (Response, bool) {
    let rows = if enabled_only {
        livetrace_runtime::init().and_then(|_| livetrace_ftrace::functions(glob.as_deref(), true))
    } else {
        livetrace_runtime::functions(glob.as_deref()).and_then(|rows| {
            // Nothing with a site matches: what a filter naming them would
            // trace is the functions relocation can give one (`trace` does
            // that on demand), listed as such without touching them.
            if rows.is_empty() {
                livetrace_runtime::relocatable(glob.as_deref())
            } else {
                Ok(rows)
            }
        })
    };
    match rows {
        Ok(mut functions) => {
            functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
            (Response::Functions { functions }, false)
        }
        Err(e) => tracing_error(e),
    }
}

/// The functions `glob` names that have no site and cannot be given one.
fn why_not(glob: &str) -> (Response, bool) {
    if let Err(e) = livetrace_runtime::init() {
        return tracing_error(e);
    }
    match livetrace_ftrace::why_not(&livetrace_ftrace::Pattern::parse(glob)) {
        Ok(list) => {
            let mut functions: Vec<Refusal> = list
                .into_iter()
                .map(|w| Refusal {
                    name: w.name,
                    entry: w.entry as u64,
                    object: w.object,
                    kind: w.kind.to_string(),
                    reason: w.reason,
                })
                .collect();
            functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.entry.cmp(&b.entry)));
            (Response::NotRelocatable { functions }, false)
        }
        Err(e) => tracing_error(e),
    }
}

fn enabled() -> (Response, bool) {
    match livetrace_runtime::enabled_functions() {
        Ok(list) => {
            let mut functions: Vec<EnabledInfo> = list
                .into_iter()
                .map(|f| EnabledInfo {
                    trampoline: match &f.trampoline {
                        livetrace_ftrace::Trampoline::Dedicated { ops, addr } => {
                            format!("{addr:#x} (dedicated to {ops})")
                        }
                        livetrace_ftrace::Trampoline::List(a) => format!("{a:#x} (list caller)"),
                        livetrace_ftrace::Trampoline::Regs(a) => format!("{a:#x} (regs caller)"),
                        livetrace_ftrace::Trampoline::Other(i) => format!("{i} (not livetrace's)"),
                    },
                    name: f.name,
                    ip: f.ip as u64,
                    ops: f.ops,
                })
                .collect();
            functions.sort_by(|a, b| a.name.cmp(&b.name));
            (Response::Enabled { functions }, false)
        }
        Err(e) => tracing_error(e),
    }
}

/// Resolves a patch operand: the exact path of one `#[traced]` function,
/// or the `0x…` address of its site. Anything else, including a
/// compiler-emitted site (whose type nobody recorded), is refused.
fn known(what: &str) -> Result<Known, String> {
    let by_addr = match livetrace_ftrace::Pattern::parse(what) {
        livetrace_ftrace::Pattern::Addr(a) => Some(a),
        _ => None,
    };
    let found: Vec<livetrace_runtime::MacroSite> = livetrace_runtime::macro_sites()
        .filter(|s| match by_addr {
            Some(a) => s.addr == a,
            None => s.path == what,
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(Known {
            addr: one.addr,
            name: one.path,
            signature: one.signature,
        }),
        [] => {
            let traceable = match by_addr {
                Some(_) => false,
                None => livetrace_runtime::functions(Some(what)).is_ok_and(|f| !f.is_empty()),
            };
            Err(if traceable {
                format!("{what} has no known signature (not a #[traced] function), so it cannot be patched")
            } else {
                format!("no #[traced] function named {what}")
            })
        }
        many => Err(format!(
            "{what} names {} functions (generic instantiations?); name one by its 0x site address",
            many.len()
        )),
    }
}
