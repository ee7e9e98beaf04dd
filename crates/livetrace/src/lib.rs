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
//! found in the executable and every loaded library by [`init`]; a function
//! compiled without one can be given one by prologue relocation
//! ([`relocatable`]).
//!
//! On top of them:
//!
//! - [`trace`] starts a [`Session`] of one of the tracers (function,
//!   function-graph, profile) over the functions a [`Config`] names;
//!   [`Session::snapshot`] returns a [`Trace`] that the writers in
//!   [`raw::output`] turn into ftrace text, Chrome/Perfetto JSON, flame
//!   graphs or `uftrace.data`;
//! - [`Ops`] attach your own callbacks to any set of functions at run time
//!   ([`register`], [`unregister`], [`set_filter`]); every change is one live
//!   batch, and [`enabled_functions`] shows what each site calls;
//! - [`livepatch`] redirects every call of a function to a replacement;
//! - [`functions`] lists what can be traced, one [`Function`] row each;
//! - [`serve`] (feature `serve`, on by default) opens the control socket
//!   the `livetrace` command talks to, so one dependency makes a program
//!   traceable from outside.
//!
//! Everything below this API — the patching engine, the record table, the
//! rings, the trace file format and the writers — is under [`raw`], for
//! tools that need it; it follows its own crates' versions.
//!
//! # Invariants
//!
//! - A `#[traced]` site is the first instruction of the function's call, with
//!   only the caller's return address on the stack; no site is inside a
//!   body.
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
//! assert_eq!(livetrace::raw::poke::read_site(site.addr).unwrap(), livetrace::raw::poke::NOP5);
//!
//! // Trace it with the function-graph tracer, live.
//! let session = livetrace::trace(livetrace::Config::new(livetrace::Tracer::Graph, &["*::add"])).unwrap();
//! assert_eq!(add(2, 3), 5);
//! let trace = session.snapshot();
//! assert_eq!(trace.threads.iter().map(|t| t.events.len()).sum::<usize>(), 2);
//! ```
//!
//! A program that only wants to be traceable from the `livetrace` command:
//!
//! ```no_run
//! fn main() -> std::io::Result<()> {
//!     let socket = livetrace::serve()?;
//!     eprintln!("livetrace: control socket at {}", socket.display());
//!     // ... the program's work ...
//!     Ok(())
//! }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

pub use livetrace_macros::traced;

pub use livetrace_runtime::{
    enabled_functions, functions, init, livepatch, macro_sites, register, relocatable, rescan,
    set_filter, trace, unregister, InitReport, MacroSite,
};

pub use livetrace_ftrace::{
    recursion_dropped, Call, EnabledFunction, Error, FastPath, Function, LivePatch, Ops,
    OpsBuilder, Pattern, Regs, Trampoline,
};
pub use livetrace_output::{Event, ThreadTrace, Trace};
pub use livetrace_tracers::{process_identity, Config, Controls, Session, Tracer};

/// How a session's per-thread buffers are sized and what happens when one
/// is full ([`Config::ring`]).
pub use livetrace_ring::Config as RingConfig;
/// What a full buffer does: overwrite the oldest records (a flight
/// recorder) or drop new ones and count them ([`RingConfig::mode`]).
pub use livetrace_ring::Mode;

#[cfg(feature = "serve")]
pub use livetrace_server::{serve, serve_in, shutdown, socket_path};

/// The layers below this API, for tools that build on them: the patching
/// engine, the record table, the dynamic-ftrace core, the tracers, the
/// rings, the trace file format and the output writers. Each is its own
/// crate and keeps its own compatibility.
pub mod raw {
    pub use livetrace_format as format;
    pub use livetrace_ftrace as ftrace;
    pub use livetrace_output as output;
    pub use livetrace_poke as poke;
    pub use livetrace_ring as ring;
    #[cfg(feature = "serve")]
    pub use livetrace_server as server;
    pub use livetrace_sites as sites;
    pub use livetrace_tracers as tracers;
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
