//! livetrace's control socket: a thread inside the traced process that
//! lets the `livetrace` command (or any [`livetrace_proto`] client) list,
//! trace, profile and live-patch the process's functions while it runs.
//!
//! # Starting it
//!
//! - Call [`serve`] (idempotent), or
//! - set `LIVETRACE=1` in the environment of a program that links this
//!   crate: a constructor in `.init_array` starts the server before `main`.
//!   The crate must actually be linked: the `livetrace` facade links it
//!   (its default `serve` feature re-exports [`serve`]); a program that
//!   depends on this crate alone and never calls it names it once
//!   (`use livetrace_server as _;`), since rustc drops a dependency no
//!   code names.
//!   With `LIVETRACE_RECORD` also set (by `livetrace record`), the
//!   constructor starts tracing before `main` and serves the connection the
//!   command passed it, which streams the records out (see [`record`]).
//!
//! # The socket
//!
//! `<dir>/<pid>.sock`, where `<dir>` is [`livetrace_proto::socket_dir`]:
//! `$XDG_RUNTIME_DIR/livetrace`, else `/tmp/livetrace-$UID`. The directory
//! is created `0700` and must be a real directory owned by this user (a
//! symlink or another user's directory is refused, so nobody can plant or
//! intercept the socket); the socket is `0600`. It is removed by
//! [`shutdown`] and by an `atexit` handler (not by a forked child's exit); a
//! process killed by a signal cannot remove it, so a stale socket of a dead
//! process with a reused pid is replaced, and `livetrace ps` removes those
//! whose process is gone. A forked child has no server thread; it gets one
//! if it execs a program that starts one.
//!
//! # Invariants
//!
//! - **Only this user, or root.** Every connection's peer credentials
//!   (`SO_PEERCRED`) are checked before anything is read: another uid gets
//!   a `Refused` error frame and the connection is closed.
//! - **The process is never at a client's mercy.** Requests are decoded
//!   with bounded frames and a total decoder; a malformed, oversized,
//!   unknown or out-of-order request gets an error reply and the connection
//!   is closed, and a panic while handling one is caught (`Internal`). No
//!   request names an arbitrary address: filters and patches resolve to the
//!   process's known sites only, and a patch needs two `#[traced]`
//!   functions whose recorded signatures are known and equal.
//! - **Records leave by shared memory, not by the socket.** A session's
//!   buffers are memory files ([`livetrace_ring::shm`]) whose descriptors
//!   `MapBuffers` passes with `SCM_RIGHTS`; the consumer maps them (the data
//!   read-only: the files are sealed so that only this process can write
//!   them) and moves records to disk itself, so the process does no work
//!   per record for it and the JSON frames stay for control. Nothing a
//!   consumer stores in the shared tails (what it consumed) is ever used
//!   as an address.
//! - **Nothing outlives its connection** (with one exception, below). Each
//!   connection runs on its own thread and owns the tracing sessions it
//!   started and the non-persistent patches it made; when the connection
//!   ends, for whatever reason, they are dropped, which detaches every
//!   tracer and reverts every patch, leaving each site as it was. A client
//!   that exits or is killed closes its socket, which the kernel reports at
//!   once as end-of-file. A client that stays connected but silent (stopped,
//!   hung, its machine gone for a forwarded socket) is noticed by the
//!   *lease*: a connection with no request for [`lease`] (30 s; env
//!   `LIVETRACE_LEASE_MS`) is closed and torn down the same way. Clients
//!   that wait ping well within it; the lease is announced in the hello.
//! - **The exception:** a patch made with `persist: true` (what
//!   `livetrace patch` does, since a patch must outlive that command) stays
//!   until a `Revert` from any connection, or the process's end.
//!
//! # Threads
//!
//! One accept thread (`livetrace-server`) and one per connection
//! (`livetrace-conn`), at most [`MAX_CONNECTIONS`]. None of them is ever
//! traced: they call no traced function, and the tracing core suppresses
//! tracing inside its own callbacks.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod conn;
mod creds;
mod error;

pub use error::Error;
pub mod record;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use livetrace_proto as proto;

/// At most this many connections are served at once; more get `Busy`.
pub const MAX_CONNECTIONS: usize = 16;

/// The default lease: a connection silent for this long is torn down.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How often blocked threads look at the stop flag and the lease.
const TICK: Duration = Duration::from_millis(200);

/// The lease in force (`LIVETRACE_LEASE_MS` overrides the default).
pub fn lease() -> Duration {
    std::env::var("LIVETRACE_LEASE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms >= 100)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_LEASE)
}

struct Running {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
/// Live connection threads, so [`shutdown`] can wait for their teardown.
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// The socket to remove at exit, with the pid that made it (a forked
/// child inherits the handler, and must not remove its parent's socket);
/// kept outside `RUNNING` so the `atexit` handler never waits for a lock a
/// dying thread may hold.
static SOCKET: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

/// Starts the server in [`livetrace_proto::socket_dir`] if it is not
/// running; returns its socket path.
pub fn serve() -> io::Result<PathBuf> {
    serve_in(&livetrace_proto::socket_dir())
}

/// Starts the server with its socket in `dir` (created `0700` if missing)
/// if it is not running; returns its socket path.
pub fn serve_in(dir: &Path) -> io::Result<PathBuf> {
    let mut g = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = g.as_ref() {
        return Ok(r.path.clone());
    }
    prepare_dir(dir)?;
    let path = dir.join(format!("{}.sock", std::process::id()));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bound under a temporary name, made private, then renamed into place:
    // `<pid>.sock` only ever names a listening 0600 socket, so a client that
    // sees it appear can connect at once (between bind and listen it would
    // be refused).
    let tmp = dir.join(format!(".{}.sock.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    // The directory is 0700 already; this keeps the socket private even if
    // someone loosens it later.
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    listener.set_nonblocking(true)?;
    *SOCKET.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::process::id(), path.clone()));
    register_atexit();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("livetrace-server".into())
        .spawn(move || accept_loop(listener, stop2))?;
    *g = Some(Running {
        path: path.clone(),
        stop,
        thread: Some(thread),
    });
    Ok(path)
}

/// Starts the server if `LIVETRACE=1` is set (what the constructor does;
/// for programs that prefer to call it themselves). Returns the socket path
/// when it runs.
pub fn serve_from_env() -> Option<PathBuf> {
    if std::env::var_os(livetrace_proto::ENABLE_ENV).is_some_and(|v| v == "1") {
        match serve() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("livetrace: cannot start the control socket: {e}");
                None
            }
        }
    } else {
        None
    }
}

/// The socket path, while the server runs.
pub fn socket_path() -> Option<PathBuf> {
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|r| r.path.clone())
}

/// Stops the server: no new connections, every connection closed and torn
/// down (its sessions detached, its patches reverted; persistent patches
/// stay), the socket removed. Waits up to `timeout` for the connections.
pub fn shutdown(timeout: Duration) {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(mut r) = running else { return };
    r.stop.store(true, Ordering::SeqCst);
    // Wake the accept thread now rather than at its next tick (detaching
    // from a process waits for it).
    let _ = std::os::unix::net::UnixStream::connect(&r.path);
    if let Some(t) = r.thread.take() {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&r.path);
    *SOCKET.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let deadline = Instant::now() + timeout;
    while CONNECTIONS.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reverts every live patch, persistent ones included: what detaching
/// from a process needs after [`shutdown`] (which leaves persistent patches
/// in place). Returns how many were reverted.
pub fn revert_all_patches() -> Result<usize, Error> {
    conn::revert_all_patches()
}

/// Creates `dir` 0700 or checks that it is a private directory of ours.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let m = std::fs::symlink_metadata(dir)?;
    let bad = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("socket directory {}: {why}", dir.display()),
        ))
    };
    if !m.file_type().is_dir() {
        return bad("not a directory (a symlink is refused too)".into());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return bad(format!("owned by uid {}, not {me}", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn register_atexit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `at_exit` is an `extern "C" fn()` that lives for the
        // whole program.
        unsafe { libc::atexit(at_exit) };
    });
}

extern "C" fn at_exit() {
    record::finish_at_exit();
    // try_lock: a thread that died holding the lock must not hang exit.
    if let Ok(g) = SOCKET.try_lock() {
        if let Some((pid, p)) = g.as_ref() {
            if *pid == std::process::id() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>) {
    // Built before the first client can ask, and off the program's threads.
    if let Err(e) = livetrace_runtime::init() {
        eprintln!("livetrace: control socket: {e}");
    }
    let fd = listener.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as libc::c_int) };
        if n <= 0 || stop.load(Ordering::SeqCst) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, say: poll would report the pending
                // connection again at once, so do not spin on it.
                std::thread::sleep(TICK);
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        conn::spawn(stream, stop.clone(), false);
    }
}

// The constructor: `.init_array` entries run before `main` (and when a
// shared object is loaded). It only looks at the environment, and starts
// anything only when asked.
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

extern "C" fn constructor() {
    if std::env::var_os(livetrace_proto::ENABLE_ENV).is_none_or(|v| v != "1") {
        return;
    }
    record::start_from_env();
    serve_from_env();
}
