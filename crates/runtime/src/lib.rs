//! The traced process's side of livetrace above the core: what must
//! happen once before any function can be named, and the core's verbs with
//! that done first.
//!
//! # Model
//!
//! The core (`livetrace-ftrace`) owns the record table and starts it empty.
//! [`init`] fills it, once per process: the compiler-emitted sites of every
//! loaded object (`-fpatchable-function-entry=5`, `-mnop-mcount
//! -mrecord-mcount`, rustc's `-Zpatchable-function-entry`), the `#[traced]`
//! sites the linker gathered ([`macro_sites`]), and the conversion of
//! compilers' sleds into the one NOP the engine rewrites. Every verb here
//! calls [`init`] first, so a caller never has an order to remember and
//! never resolves a filter against a partial table.
//!
//! The `livetrace` facade re-exports these for programs; the control socket
//! (`livetrace-server`) and `liblivetrace.so` use them directly, which is
//! why they live below the facade rather than in it (the facade re-exports
//! the socket's `serve()` in turn).
//!
//! # Invariants
//!
//! - `#[traced]` site records are gathered by the linker, never by code at
//!   start-up: the list is complete before `main`.
//! - [`init`] runs its discovery once; later loads are found by [`rescan`]
//!   (or the preload library's `dlopen` interposer).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod macro_sites;

pub use macro_sites::{macro_sites, MacroSite};

use livetrace_ftrace::{EnabledFunction, Error, Function, LivePatch, Ops, Pattern};
use livetrace_sites as sites;
use livetrace_tracers::{Config, Session};
use std::sync::Mutex;

/// What [`init`] found.
#[derive(Clone, Debug, Default)]
pub struct InitReport {
    /// Sites from `#[traced]`.
    pub macro_sites: usize,
    /// Sites the compiler emitted, in the executable and its libraries.
    pub compiler_sites: usize,
    /// Sites refused (unexpected bytes), with the reason.
    pub rejected: Vec<String>,
    /// GCC sleds converted into 5-byte NOPs.
    pub converted: usize,
    /// Why some sites could not be converted, if so.
    pub conversion_error: Option<String>,
}

static INIT: Mutex<Option<InitReport>> = Mutex::new(None);

/// Builds the record table, once: every `#[traced]` site and every
/// compiler-emitted site of the executable and its loaded libraries. GCC's
/// five one-byte NOPs are converted into one 5-byte NOP while no thread can
/// be inside them: directly when the process is single-threaded, else with
/// every other thread briefly stopped outside them. Called by every entry
/// point of this crate; call it early (before threads start) to make that
/// conversion free.
pub fn init() -> Result<InitReport, Error> {
    let mut g = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = g.as_ref() {
        return Ok(r.clone());
    }
    let mut report = InitReport::default();
    let scan = livetrace_ftrace::discover()?;
    report.compiler_sites = scan.added_sites;
    report.rejected = scan.rejected.iter().map(|r| r.to_string()).collect();
    let names: Vec<MacroSite> = macro_sites().collect();
    let ext: Vec<sites::ExternalSite<'_>> = names
        .iter()
        .map(|m| sites::ExternalSite {
            addr: m.addr,
            name: m.path,
            file: m.file,
            line: m.line,
        })
        .collect();
    let ins = livetrace_ftrace::insert_external(&ext)?;
    report.macro_sites = ins.inserted + ins.already_known;
    report
        .rejected
        .extend(ins.rejected.iter().map(|r| r.to_string()));
    let policy = if sites::thread_count().is_ok_and(|n| n == 1) {
        sites::ConvertPolicy::SingleThreaded
    } else {
        sites::ConvertPolicy::StopTheWorld
    };
    match livetrace_ftrace::convert(None, policy) {
        Ok(c) => report.converted = c.converted,
        Err(e) => report.conversion_error = Some(e.to_string()),
    }
    *g = Some(report.clone());
    Ok(report)
}

/// Scans for libraries loaded since [`init`] (after `dlopen`) and adds their
/// sites; drops the records of unloaded ones.
pub fn rescan() -> Result<sites::ScanReport, Error> {
    init()?;
    livetrace_ftrace::discover()
}

/// Attaches `ops` to the functions its filter names, as one live batch.
pub fn register(ops: &Ops) -> Result<(), Error> {
    init()?;
    livetrace_ftrace::register(ops)
}

/// Detaches `ops`; returns once no thread can still be in its callback.
pub fn unregister(ops: &Ops) -> Result<(), Error> {
    livetrace_ftrace::unregister(ops)
}

/// Replaces `ops`' filter and notrace sets, patching only the difference.
pub fn set_filter(ops: &Ops, filter: &[Pattern], notrace: &[Pattern]) -> Result<(), Error> {
    init()?;
    livetrace_ftrace::set_filter(ops, filter, notrace)
}

/// Every enabled function: ops attached and the trampoline its site calls.
pub fn enabled_functions() -> Result<Vec<EnabledFunction>, Error> {
    livetrace_ftrace::enabled_functions()
}

/// Redirects every call of `original` to `replacement`, a function pointer
/// of the same type: `livepatch::<fn(u32) -> u32>(old, new)`.
pub fn livepatch<F: Copy>(original: F, replacement: F) -> Result<LivePatch, Error> {
    init()?;
    livetrace_ftrace::livepatch(original, replacement)
}

/// Starts a tracing session.
pub fn trace(config: Config) -> Result<Session, Error> {
    init()?;
    Session::start(config)
}

/// Every traceable function whose name matches `glob` (all when `None`),
/// with the signature of each `#[traced]` one.
pub fn functions(glob: Option<&str>) -> Result<Vec<Function>, Error> {
    function_rows(glob, false)
}

/// [`functions`], or with `enabled_only` those whose site is not a NOP
/// (`livetrace ls --enabled`).
pub fn function_rows(glob: Option<&str>, enabled_only: bool) -> Result<Vec<Function>, Error> {
    init()?;
    let mut rows = livetrace_ftrace::functions(glob, enabled_only)?;
    add_signatures(&mut rows);
    Ok(rows)
}

/// The functions matching `glob` (all when `None`) that have no site and
/// that prologue relocation can give one (what a filter naming them
/// traces). Nothing is changed.
pub fn relocatable(glob: Option<&str>) -> Result<Vec<Function>, Error> {
    init()?;
    livetrace_ftrace::relocatable(glob)
}

/// Fills in the signature `#[traced]` recorded for each row it knows.
fn add_signatures(rows: &mut [Function]) {
    let sigs: std::collections::HashMap<u64, &'static str> = macro_sites()
        .filter(|s| !s.signature.is_empty())
        .map(|s| (s.addr as u64, s.signature))
        .collect();
    for r in rows {
        if let Some(s) = sigs.get(&r.addr) {
            r.signature = Some(s.to_string());
        }
    }
}
