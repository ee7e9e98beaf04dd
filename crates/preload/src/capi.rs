//! The C API: `include/livetrace.h`.
//!
//! Every function runs its body under [`boundary`]: a panic is caught and
//! becomes `LT_EINTERNAL`, and any failure sets this thread's error message
//! ([`lt_last_error`]) and returns an error code or NULL. Calls are
//! serialised with each other, with the `dlopen`/`dlclose` interposers and
//! with `fork` (they are control operations, not hot paths). Functions that
//! resolve names first bring the table up to date (a rescan, under the
//! interposers' lock, so it never races a `dlopen` being handled): records
//! of libraries that were unloaded go, so a glob never names them.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use livetrace::raw::output::{convert, Trace};
use livetrace::{Call, Config, Ops, Pattern, Session, Tracer};
use livetrace_format::Format;

use crate::Error;

/// Success.
pub const LT_OK: c_int = 0;
/// Bad argument.
pub const LT_EINVAL: c_int = -1;
/// A pattern matches no traceable function.
pub const LT_ENOMATCH: c_int = -2;
/// The tracing core refused the change.
pub const LT_ETRACE: c_int = -3;
/// Writing a file failed.
pub const LT_EIO: c_int = -4;
/// livetrace is not active, or called from inside a callback.
pub const LT_ESTATE: c_int = -5;
/// An internal panic, caught.
pub const LT_EINTERNAL: c_int = -6;
/// Detached, but a thread may still be inside the callback (the bounded
/// quiescence wait gave up): the callback's data must not be freed yet.
pub const LT_EBUSY: c_int = -7;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning failures and panics into `on_fail(code)` with this
/// thread's message set; clears the message on success.
///
/// `f` runs under the interposers' lock, which the interposed `fork` takes
/// too: a fork never happens while a C API call is halfway through
/// livetrace (holding, say, the tracers' sink registry or the engine's
/// probe lock), which would leave the child a lock nobody releases.
fn boundary<T>(on_fail: impl Fn(c_int) -> T, f: impl FnOnce() -> Result<T, Error>) -> T {
    if crate::active() && crate::interpose::in_callback() {
        // Waiting for the lock here could wait for a quiescence wait that
        // waits for this thread: refuse at once.
        set_error("livetrace cannot be called from inside a callback");
        return on_fail(LT_ESTATE);
    }
    let _serial = crate::interpose::serialize();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => {
            set_error("");
            v
        }
        Ok(Err(e)) => {
            set_error(&e.to_string());
            on_fail(e.code())
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(&format!("livetrace: internal error: {what}"));
            on_fail(LT_EINTERNAL)
        }
    }
}

fn need_active() -> Result<(), Error> {
    if crate::active() {
        Ok(())
    } else {
        Err(Error::State(format!(
            "livetrace is not active: {}",
            crate::off_reason()
        )))
    }
}

/// A C string argument; `None` for NULL when `optional`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| Error::Argument(format!("{what} is not UTF-8")))
}

/// # Safety
/// As for [`arg`].
unsafe fn required<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    // SAFETY: forwarded.
    unsafe { arg(p, what) }?.ok_or_else(|| Error::Argument(format!("{what} is NULL")))
}

fn clamp(n: usize) -> c_int {
    n.min(c_int::MAX as usize) as c_int
}

/// Brings the table up to date with what is loaded (the caller holds the
/// interposers' lock: [`boundary`]); converts what is still unconverted
/// (libraries loaded by means the interposer does not see) with the other
/// threads stopped.
fn rescan() -> Result<(), Error> {
    livetrace::rescan()?;
    // Best effort: what cannot be converted stays listed as `unconverted`
    // and cannot be traced.
    let _ = livetrace_ftrace::convert(None, livetrace::raw::sites::ConvertPolicy::StopTheWorld);
    Ok(())
}

/// The message of this thread's last failed call.
#[unsafe(no_mangle)]
pub extern "C" fn lt_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"livetrace: thread is exiting".as_ptr())
}

/// The library's version.
#[unsafe(no_mangle)]
pub extern "C" fn lt_version() -> *const c_char {
    static VERSION: &CStr = {
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => c"?",
        }
    };
    VERSION.as_ptr()
}

/// Builds the table if needed; returns the number of traceable functions.
#[unsafe(no_mangle)]
pub extern "C" fn lt_init() -> c_int {
    boundary(
        |c| c,
        || {
            need_active()?;
            Ok(clamp(livetrace::functions(None)?.len()))
        },
    )
}

/// Rescans; returns the number of traceable functions.
#[unsafe(no_mangle)]
pub extern "C" fn lt_rescan() -> c_int {
    boundary(
        |c| c,
        || {
            need_active()?;
            rescan()?;
            Ok(clamp(livetrace::functions(None)?.len()))
        },
    )
}

/// Number of traceable functions matching `glob` (all for NULL or "").
///
/// # Safety
/// `glob` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_count_functions(glob: *const c_char) -> c_int {
    boundary(
        |c| c,
        || {
            need_active()?;
            // SAFETY: by this function's contract.
            let glob = unsafe { arg(glob, "glob") }?.filter(|g| !g.is_empty());
            rescan()?;
            Ok(clamp(livetrace::functions(glob)?.len()))
        },
    )
}

/// Writes the name of the function whose site is `ip` into `buf`.
///
/// # Safety
/// `buf` is NULL with `len` 0, or valid for `len` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_function_name(ip: usize, buf: *mut c_char, len: usize) -> c_int {
    boundary(
        |c| c,
        || {
            need_active()?;
            let name = livetrace_ftrace::name_of(ip)?.ok_or(Error::NoFunctionAt(ip))?;
            if !buf.is_null() && len > 0 {
                let n = name.len().min(len - 1);
                // SAFETY: `buf` holds `len` bytes and `n < len`; the name is
                // a separate allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(name.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            Ok(clamp(name.len()))
        },
    )
}

/// An attached C callback.
pub struct LtOps {
    ops: Ops,
}

/// The callback's `data`, which the C contract lets any thread use.
#[derive(Clone, Copy)]
struct Data(*mut c_void);
// SAFETY: the header documents that `data` is passed as is, from any
// thread; synchronising what it points to is the program's business.
unsafe impl Send for Data {}
// SAFETY: as above.
unsafe impl Sync for Data {}

type LtCallback = extern "C" fn(usize, usize, *mut c_void);

/// Calls `cb(ip, parent_ip, data)` at every entry of every function `glob`
/// names.
///
/// # Safety
/// `glob` is a NUL-terminated string; `cb` is callable from any thread
/// with `data`, and does not unwind.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_ops_register(
    glob: *const c_char,
    cb: Option<LtCallback>,
    data: *mut c_void,
) -> *mut LtOps {
    boundary(
        |_| std::ptr::null_mut(),
        || {
            need_active()?;
            // SAFETY: by this function's contract.
            let glob = unsafe { required(glob, "glob") }?;
            let cb = cb.ok_or_else(|| Error::Argument("callback is NULL".into()))?;
            let data = Data(data);
            let ops = Ops::builder(format!("c:{glob}"))
                .filter(Pattern::parse(glob))
                .build(move |call: &mut Call<'_>| {
                    let data = data;
                    cb(call.ip(), call.parent_ip(), data.0)
                });
            rescan()?;
            livetrace::register(&ops)?;
            Ok(Box::into_raw(Box::new(LtOps { ops })))
        },
    )
}

/// Detaches and frees `ops`; afterwards its callback is never called.
///
/// # Safety
/// `ops` is NULL or came from [`lt_ops_register`] and was not unregistered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_ops_unregister(ops: *mut LtOps) -> c_int {
    boundary(
        |c| c,
        || {
            if ops.is_null() {
                return Ok(LT_OK);
            }
            // SAFETY: by this function's contract; not freed until the
            // unregistration succeeded.
            let o = unsafe { &*ops };
            livetrace::unregister(&o.ops)?;
            // SAFETY: from Box::into_raw in lt_ops_register, freed once.
            drop(unsafe { Box::from_raw(ops) });
            Ok(LT_OK)
        },
    )
}

/// A tracing session.
pub struct LtSession {
    tracer: Tracer,
    session: Mutex<Session>,
}

impl LtSession {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn start(tracer: &str, patterns: Vec<&str>) -> Result<*mut LtSession, Error> {
    need_active()?;
    let tracer: Tracer = tracer.parse().map_err(Error::Argument)?;
    let config = Config::new(tracer, &patterns);
    rescan()?;
    let session = livetrace::trace(config)?;
    Ok(Box::into_raw(Box::new(LtSession {
        tracer,
        session: Mutex::new(session),
    })))
}

/// Starts `tracer` over the functions `glob` names (all for NULL or "").
///
/// # Safety
/// `tracer` is a NUL-terminated string, `glob` NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_trace_start(
    tracer: *const c_char,
    glob: *const c_char,
) -> *mut LtSession {
    boundary(
        |_| std::ptr::null_mut(),
        || {
            // SAFETY: by this function's contract.
            let tracer = unsafe { required(tracer, "tracer") }?;
            // SAFETY: by this function's contract.
            let glob = unsafe { arg(glob, "glob") }?.filter(|g| !g.is_empty());
            start(tracer, glob.into_iter().collect())
        },
    )
}

/// Starts `tracer` over the functions any of `patterns` names.
///
/// # Safety
/// `tracer` is a NUL-terminated string; `patterns` points to `count`
/// NUL-terminated strings (or is NULL with `count` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_trace_start_n(
    tracer: *const c_char,
    patterns: *const *const c_char,
    count: usize,
) -> *mut LtSession {
    boundary(
        |_| std::ptr::null_mut(),
        || {
            // SAFETY: by this function's contract.
            let tracer = unsafe { required(tracer, "tracer") }?;
            if patterns.is_null() && count > 0 {
                return Err(Error::Argument("patterns is NULL".into()));
            }
            let mut pats = Vec::with_capacity(count);
            for i in 0..count {
                // SAFETY: `patterns` holds `count` string pointers.
                let p = unsafe { *patterns.add(i) };
                // SAFETY: by this function's contract.
                pats.push(unsafe { required(p, "pattern") }?);
            }
            if pats.is_empty() {
                return Err(Error::Argument(
                    "no pattern (use lt_trace_start(tracer, NULL) to trace every function)".into(),
                ));
            }
            start(tracer, pats)
        },
    )
}

/// Detaches the tracer; the recording stays readable.
///
/// # Safety
/// `session` came from `lt_trace_start*` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_trace_stop(session: *mut LtSession) -> c_int {
    boundary(
        |c| c,
        || {
            // SAFETY: by this function's contract.
            let s = unsafe { session.as_ref() }
                .ok_or_else(|| Error::Argument("session is NULL".into()))?;
            s.session().stop()?;
            Ok(LT_OK)
        },
    )
}

fn event_count(t: &Trace) -> usize {
    t.threads.iter().map(|th| th.events.len()).sum()
}

/// Writes what the session holds to `path` in `format`, the way `livetrace
/// convert` does (one vocabulary of formats, one writer per format): the
/// session's records as a trace file in memory, converted.
fn write(s: &LtSession, path: &str, format: &str) -> Result<usize, Error> {
    let format: Format = format.parse().map_err(Error::Argument)?;
    format.suits(s.tracer).map_err(Error::Argument)?;
    let io = |source| Error::Write {
        path: path.to_string(),
        source,
    };
    let mut recording = Vec::new();
    let records = s.session().write_recording(&mut recording).map_err(io)?;
    if format == Format::Lttrace {
        std::fs::write(path, &recording).map_err(io)?;
        return Ok(records as usize);
    }
    let reader = livetrace_format::Reader::new(std::io::Cursor::new(recording))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut rec = convert::Recording::new(reader).map_err(|e| Error::Internal(e.to_string()))?;
    let done = convert::convert(&mut rec, format, &convert::Dest::Path(path.into())).map_err(
        |source| Error::Convert {
            path: path.to_string(),
            source,
        },
    )?;
    Ok(if s.tracer == Tracer::Profile {
        done.rows
    } else {
        done.summary.events() as usize
    })
}

/// Writes what `session` recorded to `path` in `format`.
///
/// # Safety
/// `session` came from `lt_trace_start*` and was not freed; `path` and
/// `format` are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_trace_write(
    session: *mut LtSession,
    path: *const c_char,
    format: *const c_char,
) -> c_long {
    boundary(
        |c| c as c_long,
        || {
            // SAFETY: by this function's contract.
            let s = unsafe { session.as_ref() }
                .ok_or_else(|| Error::Argument("session is NULL".into()))?;
            // SAFETY: by this function's contract.
            let path = unsafe { required(path, "path") }?;
            // SAFETY: by this function's contract.
            let format = unsafe { required(format, "format") }?;
            Ok(write(s, path, format)?.min(c_long::MAX as usize) as c_long)
        },
    )
}

/// Events recorded so far (profile rows for the profile tracer).
///
/// # Safety
/// `session` came from `lt_trace_start*` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_trace_count(session: *mut LtSession) -> c_long {
    boundary(
        |c| c as c_long,
        || {
            // SAFETY: by this function's contract.
            let s = unsafe { session.as_ref() }
                .ok_or_else(|| Error::Argument("session is NULL".into()))?;
            let g = s.session();
            let n = match s.tracer {
                Tracer::Profile => g.profile().len(),
                _ => event_count(&g.snapshot()),
            };
            Ok(n.min(c_long::MAX as usize) as c_long)
        },
    )
}

/// Stops `session` if it runs, and frees it.
///
/// # Safety
/// `session` is NULL or came from `lt_trace_start*` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lt_session_free(session: *mut LtSession) {
    boundary(
        |_| (),
        || {
            if !session.is_null() {
                // SAFETY: from Box::into_raw in `start`, freed once; dropping
                // the Session detaches it.
                drop(unsafe { Box::from_raw(session) });
            }
            Ok(())
        },
    )
}
