//! `livetrace record`: tracing a program from before `main` to its exit.
//!
//! `livetrace record -- CMD` starts CMD with `LIVETRACE=1` and
//! `LIVETRACE_RECORD` holding a [`RecordSpec`] (JSON). This crate's
//! constructor, before `main`:
//!
//! 1. removes `LIVETRACE_RECORD` from the environment, so the program's own
//!    children do not record over the same file;
//! 2. starts the session the spec asks for (the process is still
//!    single-threaded, so nothing before `main` can race it);
//! 3. starts a thread that drains the session's rings every 100 ms into
//!    memory, so long runs lose nothing to ring overwrites.
//!
//! At exit (an `atexit` handler: `main` returning or `exit`), the session is
//! detached, drained a last time, and the [`RecordFile`] written to the
//! spec's `out` path, which the command then converts to the format asked
//! for. A program killed by a signal writes nothing, and the command says
//! so. Writing at exit rather than streaming over the socket is what makes
//! short programs work: there is no race between the program's first calls
//! and a client attaching.

use std::sync::Mutex;
use std::time::Duration;

use livetrace::Session;
use livetrace_proto::{ProfileEntry, RecordFile, RecordSpec, TracerKind, WireTrace, RECORD_ENV};

struct Recording {
    /// The recorded process: a forked child inherits this state and its
    /// `atexit` handler, and must not write its parent's recording.
    pid: u32,
    spec: RecordSpec,
    session: Option<Session>,
    acc: WireTrace,
    error: Option<String>,
}

static RECORDING: Mutex<Option<Recording>> = Mutex::new(None);

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
    let mut rec = Recording {
        pid: std::process::id(),
        session: None,
        acc: WireTrace::default(),
        error: None,
        spec,
    };
    let started = crate::conn::config(
        rec.spec.tracer,
        &rec.spec.filter,
        &rec.spec.notrace,
        rec.spec.buffer_records,
    )
    .and_then(|cfg| livetrace::trace(cfg).map_err(|e| e.to_string()));
    match started {
        Ok(s) => rec.session = Some(s),
        Err(e) => rec.error = Some(e),
    }
    let drain = rec.session.is_some() && rec.spec.tracer != TracerKind::Profile;
    *RECORDING.lock().unwrap_or_else(|e| e.into_inner()) = Some(rec);
    crate::register_atexit();
    if drain {
        let _ = std::thread::Builder::new()
            .name("livetrace-record".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(100));
                let mut g = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
                let Some(rec) = g.as_mut() else { return };
                let Some(s) = rec.session.as_ref() else {
                    return;
                };
                let piece = WireTrace::from(&s.drain());
                rec.acc.append(piece);
            });
    }
}

/// Detaches the recording session and writes the record file.
pub(crate) fn finish_at_exit() {
    let rec = {
        let mut g = RECORDING.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_none_or(|r| r.pid != std::process::id()) {
            return;
        }
        g.take()
    };
    let Some(mut rec) = rec else { return };
    let mut profile = Vec::new();
    if let Some(mut s) = rec.session.take() {
        if let Err(e) = s.stop() {
            rec.error.get_or_insert(e.to_string());
        }
        if rec.spec.tracer == TracerKind::Profile {
            profile = s.profile().iter().map(ProfileEntry::from).collect();
        } else {
            rec.acc.append(WireTrace::from(&s.drain()));
        }
        // Leaked, not dropped: other threads still run during exit and
        // may be in hooked frames; the process is ending anyway.
        std::mem::forget(s);
    }
    let file = RecordFile {
        trace: rec.acc,
        profile,
        error: rec.error,
    };
    let written = std::fs::File::create(&rec.spec.out).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        serde_json::to_writer(&mut w, &file).map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut w)
    });
    if let Err(e) = written {
        eprintln!(
            "livetrace: cannot write the recording to {}: {e}",
            rec.spec.out
        );
    }
}
