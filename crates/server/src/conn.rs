//! One connection: its thread, its lease, its requests, and the teardown of
//! everything it started.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livetrace::{Config, Session, Tracer};
use livetrace_proto::{
    decode_request, encode, read_frame, write_frame, EnabledInfo, ErrorCode, FrameError,
    FunctionInfo, PatchInfo, ProfileEntry, Request, Response, TracerKind, WireTrace,
    MAX_EVENTS_PER_REPLY, MAX_FRAME, PROTOCOL_VERSION,
};

use crate::{creds, CONNECTIONS, MAX_CONNECTIONS, TICK};

/// Sessions one connection may hold at once.
const MAX_SESSIONS: usize = 16;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
static NEXT_SESSION: AtomicU32 = AtomicU32::new(1);
static NEXT_PATCH: AtomicU32 = AtomicU32::new(1);

struct PatchEntry {
    patch: livetrace::LivePatch,
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
pub(crate) fn spawn(mut stream: UnixStream, stop: Arc<AtomicBool>) {
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
            serve_connection(stream, &stop);
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

fn serve_connection(mut stream: UnixStream, stop: &AtomicBool) {
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
        if !reply(&mut stream, &resp) || close {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // `conn` drops here: every session detached, every owned patch reverted.
    drop(conn);
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

struct SessionSlot {
    session: Session,
    tracer: TracerKind,
    /// Drained but not yet sent (a reply carries at most
    /// `MAX_EVENTS_PER_REPLY` events).
    pending: WireTrace,
    stopped: bool,
}

struct Conn {
    id: u64,
    sessions: HashMap<u32, SessionSlot>,
    hello: bool,
    lease: Duration,
}

impl Drop for Conn {
    fn drop(&mut self) {
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

fn tracing_error(e: livetrace::Error) -> (Response, bool) {
    match e {
        livetrace::Error::NoMatch { .. } | livetrace::Error::NoSuchFunction(_) => {
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
                    let t = livetrace::process_identity();
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
            Request::StartTrace {
                tracer,
                filter,
                notrace,
                buffer_records,
            } => self.start(tracer, filter, notrace, buffer_records),
            Request::PollEvents { session } => self.poll(session, false),
            Request::StopTrace { session } => self.poll(session, true),
            Request::Profile { session } => match self.sessions.get(&session) {
                Some(s) => (
                    Response::Profile {
                        rows: s.session.profile().iter().map(ProfileEntry::from).collect(),
                    },
                    false,
                ),
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

    fn start(
        &mut self,
        tracer: TracerKind,
        filter: Vec<String>,
        notrace: Vec<String>,
        buffer_records: Option<u64>,
    ) -> (Response, bool) {
        if self.sessions.len() >= MAX_SESSIONS {
            return err(
                ErrorCode::Failed,
                format!("this connection already has {MAX_SESSIONS} sessions"),
            );
        }
        let cfg = match config(tracer, &filter, &notrace, buffer_records) {
            Ok(c) => c,
            Err(m) => return err(ErrorCode::Invalid, m),
        };
        match livetrace::trace(cfg) {
            Ok(session) => {
                let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
                self.sessions.insert(
                    id,
                    SessionSlot {
                        session,
                        tracer,
                        pending: WireTrace::default(),
                        stopped: false,
                    },
                );
                (Response::Started { session: id }, false)
            }
            Err(e) => tracing_error(e),
        }
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
        if slot.tracer != TracerKind::Profile {
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

/// The session configuration for a request, with every address pattern
/// checked to be one of the process's sites.
pub(crate) fn config(
    tracer: TracerKind,
    filter: &[String],
    notrace: &[String],
    buffer_records: Option<u64>,
) -> Result<Config, String> {
    let mut sites: Option<HashSet<usize>> = None;
    for p in filter.iter().chain(notrace) {
        if let livetrace::Pattern::Addr(a) = livetrace::Pattern::parse(p) {
            let sites = match &mut sites {
                Some(s) => s,
                None => sites.insert(
                    livetrace::functions(None)
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|f| f.addr)
                        .collect(),
                ),
            };
            if !sites.contains(&a) {
                return Err(format!("{a:#x} is not the address of a traceable function"));
            }
        }
    }
    let tracer = match tracer {
        TracerKind::Function => Tracer::Function,
        TracerKind::Graph => Tracer::Graph,
        TracerKind::Profile => Tracer::Profile,
    };
    let filter: Vec<&str> = filter.iter().map(String::as_str).collect();
    let mut cfg = Config::new(tracer, &filter);
    cfg.notrace = notrace
        .iter()
        .map(|p| livetrace::Pattern::parse(p))
        .collect();
    if let Some(n) = buffer_records {
        cfg.ring.records_per_thread = n as usize;
    }
    Ok(cfg)
}

/// `#[traced]` site address -> signature.
fn signatures() -> HashMap<usize, &'static str> {
    livetrace::macro_sites()
        .map(|s| (s.addr, s.signature))
        .collect()
}

fn list_functions(glob: Option<String>, enabled_only: bool) -> (Response, bool) {
    if let Err(e) = livetrace::init() {
        return tracing_error(e);
    }
    let enabled: Option<HashSet<usize>> = if enabled_only {
        match livetrace::enabled_functions() {
            Ok(e) => Some(e.into_iter().map(|f| f.ip).collect()),
            Err(e) => return tracing_error(e),
        }
    } else {
        None
    };
    let sigs = signatures();
    let rows = livetrace_ftrace::with_table(|t| {
        let idx: Vec<usize> = match glob.as_deref() {
            Some(g) => t.glob(g),
            None => (0..t.len()).collect(),
        };
        idx.into_iter()
            .filter_map(|i| {
                let info = t.info(i);
                if enabled.as_ref().is_some_and(|e| !e.contains(&info.addr)) {
                    return None;
                }
                // `file:line` where the compiler or `#[traced]` recorded it,
                // else the object the function lives in.
                let source = match (info.file, info.line) {
                    (Some(f), Some(l)) => format!("{f}:{l}"),
                    (Some(f), None) => f.to_string(),
                    _ => info.object.to_string(),
                };
                Some(FunctionInfo {
                    name: info.name.to_string(),
                    addr: info.addr as u64,
                    source,
                    state: match info.record.state() {
                        livetrace::sites::SiteState::Unconverted => "unconverted".into(),
                        livetrace::sites::SiteState::Live(insn) => insn.to_string(),
                    },
                    signature: sigs
                        .get(&info.addr)
                        .filter(|s| !s.is_empty())
                        .map(|s| s.to_string()),
                })
            })
            .collect::<Vec<_>>()
    });
    match rows {
        Ok(mut functions) => {
            functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
            (Response::Functions { functions }, false)
        }
        Err(e) => tracing_error(e),
    }
}

fn enabled() -> (Response, bool) {
    match livetrace::enabled_functions() {
        Ok(list) => {
            let mut functions: Vec<EnabledInfo> = list
                .into_iter()
                .map(|f| EnabledInfo {
                    trampoline: match &f.trampoline {
                        livetrace::Trampoline::Dedicated { ops, addr } => {
                            format!("{addr:#x} (dedicated to {ops})")
                        }
                        livetrace::Trampoline::List(a) => format!("{a:#x} (list caller)"),
                        livetrace::Trampoline::Regs(a) => format!("{a:#x} (regs caller)"),
                        livetrace::Trampoline::Other(i) => format!("{i} (not livetrace's)"),
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
    let by_addr = match livetrace::Pattern::parse(what) {
        livetrace::Pattern::Addr(a) => Some(a),
        _ => None,
    };
    let found: Vec<livetrace::MacroSite> = livetrace::macro_sites()
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
                None => livetrace::functions(Some(what)).is_ok_and(|f| !f.is_empty()),
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
