//! `livetrace record`: tracing a program from before `main` to its exit.
//!
//! `livetrace record -- CMD` makes a connected Unix socket pair, and starts
//! CMD with one end inherited, `LIVETRACE=1`, and `LIVETRACE_RECORD`
//! holding a [`RecordSpec`] (JSON) that names that descriptor. This crate's
//! constructor, before `main`:
//!
//! 1. removes `LIVETRACE_RECORD` from the environment (and marks the
//!    descriptor close-on-exec), so the program's own children do not
//!    record or inherit the connection;
//! 2. starts the session the spec asks for (the process is still
//!    single-threaded, so nothing before `main` can race it), streaming
//!    by default;
//! 3. serves the inherited socket as a control connection (checked like any
//!    other), whose `Recording` request takes the session over.
//!
//! From then on the command is an ordinary consumer: it maps the session's
//! buffers and moves their records to its file while the program runs, so
//! a program that crashes or is killed leaves everything recorded up to
//! then (the buffers' memory outlives the process while the command maps
//! it). If the command goes away, the connection's end detaches the
//! session as for any client: the program runs on untraced.
//!
//! At exit (an `atexit` handler), the handler waits (up to 5 s) until the
//! command has mapped the buffers, so a program that ends at once does not
//! take its records with it; a profile session's table is the one thing
//! not in the buffers: the handler waits (up to 2 s) for the command's next
//! `Profile` request, which then gets the final rows.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use livetrace_proto::{Mode, RecordSpec, TracerKind, RECORD_ENV};
use livetrace_tracers::Session;

/// The session started before `main`, until the connection takes it: the
/// session, its tracer, whether it is a flight recorder; or why it could
/// not start.
type Pending = Result<(Session, TracerKind, bool), crate::Error>;

struct Recording {
    /// The recorded process: a forked child inherits the `atexit` handler
    /// and must not wait in it.
    pid: u32,
    pending: Option<Pending>,
    tracer: TracerKind,
}

static RECORDING: Mutex<Option<Recording>> = Mutex::new(None);

/// Set by the exit handler; a `Profile` reply seen after it is final.
static EXITING: AtomicBool = AtomicBool::new(false);
/// The command mapped the buffers, and the handler waiting for it.
static MAPPED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
/// Whether the final rows were fetched, and the handler waiting for it.
static TAKEN: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Reads `LIVETRACE_RECORD` and starts recording if it is set.
pub(crate) fn start_from_env() {
    let Some(raw) = std::env::var_os(RECORD_ENV) else {
        return;
    };
    // SAFETY: called from the constructor, before `main`, while the
    // process has a single thread: nothing reads the environment
    // concurrently.
    unsafe { libc::unsetenv(c"LIVETRACE_RECORD".as_ptr()) };
    let spec: RecordSpec = match serde_json::from_slice(raw.as_encoded_bytes()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("livetrace: ignoring {RECORD_ENV}: {e}");
            return;
        }
    };
    // The descriptor must be a connected Unix stream socket.
    // SAFETY: fstat and getsockopt only inspect the descriptor.
    let is_socket = unsafe {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        spec.fd > 2
            && libc::fstat(spec.fd, st.as_mut_ptr()) == 0
            && (st.assume_init().st_mode & libc::S_IFMT) == libc::S_IFSOCK
            && libc::getsockopt(
                spec.fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&raw mut ty).cast(),
                &mut len,
            ) == 0
            && ty == libc::SOCK_STREAM
    };
    if !is_socket {
        eprintln!(
            "livetrace: ignoring {RECORD_ENV}: descriptor {} is not a stream socket",
            spec.fd
        );
        return;
    }
    // SAFETY: FD_CLOEXEC on a descriptor we checked is open.
    unsafe { libc::fcntl(spec.fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is ours from here on (the command passed it to
    // us alone); owning it closes it when the connection ends.
    let stream = unsafe { UnixStream::from_raw_fd(spec.fd) };
    let flight = spec.mode == Some(Mode::Flight);
    let s = crate::conn::Spec {
        filter: spec.filter,
        notrace: spec.notrace,
        buffer_records: spec.buffer_records,
        // Streaming unless told otherwise: the command consumes.
        mode: Some(spec.mode.unwrap_or(Mode::Stream)),
        memory_budget: spec.memory_budget,
        controls: spec.controls,
    };
    let pending = crate::conn::config(spec.tracer, &s)
        .and_then(|cfg| Ok(livetrace_runtime::trace(cfg)?))
        .map(|session| (session, spec.tracer, flight));
    *RECORDING.lock().unwrap_or_else(|e| e.into_inner()) = Some(Recording {
        pid: std::process::id(),
        pending: Some(pending),
        tracer: spec.tracer,
    });
    crate::register_atexit();
    crate::conn::spawn(stream, Arc::new(AtomicBool::new(false)), true);
}

/// The recording session, for the connection's `Recording` request (once).
pub(crate) fn take() -> Option<Pending> {
    RECORDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()?
        .pending
        .take()
}

/// Whether the process is exiting (its `atexit` handlers run).
pub(crate) fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// The final profile rows were handed over.
pub(crate) fn profile_taken() {
    set(&TAKEN);
}

/// The command mapped the buffers: records can no longer be lost with the
/// process.
pub(crate) fn mapped() {
    set(&MAPPED);
}

fn set(flag: &(Mutex<bool>, Condvar)) {
    let (m, cv) = flag;
    *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cv.notify_all();
}

/// Waits up to `limit` for `flag`.
fn wait(flag: &(Mutex<bool>, Condvar), limit: Duration) {
    let (m, cv) = flag;
    let deadline = Instant::now() + limit;
    let mut set = m.lock().unwrap_or_else(|e| e.into_inner());
    while !*set {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        set = cv
            .wait_timeout(set, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// At exit: a recording waits for the command to have mapped its buffers
/// (a program that ends at once must not take its records with it), and a
/// profile recording for its final rows to be fetched.
pub(crate) fn finish_at_exit() {
    let profile = {
        let g = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(r) if r.pid == std::process::id() => r.tracer == TracerKind::Profile,
            _ => return,
        }
    };
    EXITING.store(true, Ordering::SeqCst);
    if profile {
        wait(&TAKEN, Duration::from_secs(2));
    } else {
        wait(&MAPPED, Duration::from_secs(5));
    }
}
