//! livetrace: dynamic function tracing and live patching for running
//! programs, like the kernel's dynamic ftrace, in user space.
//!
//! # Model
//!
//! A *site* is five bytes at the entry of a function that hold a NOP
//! (`0f 1f 44 00 00`) while tracing is off, and `call trampoline` while it
//! is on. Sites come from [`traced`] (`#[traced]` on Rust functions, listed
//! by [`macro_sites`]) and from compilers (`-fpatchable-function-entry=5`,
//! `-mnop-mcount -mrecord-mcount`, rustc's `-Zpatchable-function-entry`),
//! found in the executable and every loaded library by [`init`].
//!
//! On top of them:
//!
//! - [`Ops`] attach callbacks to any set of functions at run time
//!   ([`register`], [`unregister`], [`set_filter`]); every change is one live
//!   batch, and [`enabled_functions`] shows what each site calls;
//! - [`livepatch`] redirects every call of a function to a replacement;
//! - [`trace`] starts a [`Session`] of one of the tracers (function,
//!   function-graph, profile), whose [`Session::snapshot`] feeds the writers
//!   in [`output`] (ftrace text, Chrome/Perfetto JSON, flame graphs,
//!   `uftrace.data`).
//!
//! # Invariants
//!
//! - A `#[traced]` site is the first instruction of the function's call, with
//!   only the caller's return address on the stack; no site is inside a
//!   body.
//! - Site records are gathered by the linker, never by code at start-up: the
//!   list is complete before `main`.
//! - Disabled sites cost one NOP and one direct `jmp` per call (`#[traced]`)
//!   or one NOP (compiler-emitted sites).
//! - Every entry point calls [`init`] first, so the record table is complete
//!   before any filter is resolved.
//!
//! # Example
//!
//! ```
//! #[livetrace::traced]
//! fn add(a: u32, b: u32) -> u32 {
//!     a + b
//! }
//!
//! assert_eq!(add(2, 3), 5);
//! let site = livetrace::macro_sites().find(|s| s.path.ends_with("::add")).unwrap();
//! assert_eq!(livetrace::poke::read_site(site.addr).unwrap(), livetrace::poke::NOP5);
//!
//! // Trace it with the function-graph tracer, live.
//! let session = livetrace::trace(livetrace::Config::new(livetrace::Tracer::Graph, &["*::add"])).unwrap();
//! assert_eq!(add(2, 3), 5);
//! let trace = session.snapshot();
//! assert_eq!(trace.threads.iter().map(|t| t.events.len()).sum::<usize>(), 2);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod macro_sites;

pub use livetrace_poke as poke;

pub use livetrace_macros::traced;
pub use macro_sites::{macro_sites, MacroSite};

pub use livetrace_ftrace::{
    recursion_dropped, Call, EnabledFunction, Error, Function, LivePatch, Ops, OpsBuilder, Pattern,
    Regs, Trampoline,
};
pub use livetrace_output as output;
pub use livetrace_sites as sites;
pub use livetrace_tracers::{process_identity, Config, Session, Tracer};

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
    init()?;
    let mut rows = livetrace_ftrace::functions(glob, false)?;
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

/// Items that `#[traced]` expansions name as `::livetrace::__private::…`,
/// so user crates depend on `livetrace` alone. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use core::arch::{global_asm, naked_asm};

    /// Returns a function pointer of `like`'s type that points at `addr`.
    /// `like` only carries the type; optimised builds fold the result into
    /// a direct `call addr`.
    ///
    /// # Safety
    ///
    /// `F` is a function pointer type, and calling the code at `addr` with
    /// `F`'s signature and ABI is the same as calling a function of type
    /// `F` (for `#[traced]`: `addr` is a site stub that jumps to the body
    /// `like` points to, touching nothing).
    #[inline(always)]
    pub unsafe fn retarget<F: Copy>(like: F, addr: *const ()) -> F {
        const { assert!(size_of::<F>() == size_of::<*const ()>()) };
        let _ = like;
        // SAFETY: `F` is pointer-sized (checked above) and, by the caller's
        // contract, a function pointer type for which `addr` is valid.
        unsafe { core::mem::transmute_copy::<*const (), F>(&addr) }
    }
}
