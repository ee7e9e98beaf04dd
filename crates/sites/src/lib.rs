//! Discovery of traceable sites and the function record table: the user-space
//! counterpart of the kernel's `__mcount_loc` processing and `dyn_ftrace`
//! records.
//!
//! # Model
//!
//! A *site* is five bytes at (or, with `-fcf-protection`, just after the
//! `endbr64` of) a function's entry that hold a NOP while the function is not
//! traced, and that the engine (`livetrace-poke`) rewrites live into `call
//! trampoline`. Sites come from two places:
//!
//! - **The compiler.** [`Table::rescan`] walks every loaded object
//!   (`dl_iterate_phdr`), maps its ELF file (`/proc/self/exe` for the
//!   program) and reads `__patchable_function_entries` (gcc/clang
//!   `-fpatchable-function-entry=5[,0]`, rustc `-Zpatchable-function-entry`)
//!   and `__mcount_loc` (gcc `-pg -mfentry -mnop-mcount -mrecord-mcount`).
//!   Those sections hold link-time addresses; the runtime site is that plus
//!   the load bias `dlpi_addr`. In position-independent objects the value is
//!   taken from the slot's dynamic relocation when there is one (lld leaves
//!   the slot itself zero). Each site is named by the function symbol
//!   containing it (`.symtab`, else `.dynsym`), demangled (Rust legacy and
//!   v0, C++). Demangled names need not be unique; a [`Disambiguator`]
//!   suffix (`NAME[h<hash>]`, `NAME@0xADDR`) picks one of several
//!   ([`Table::lookup_name`]).
//! - **The program.** [`Table::insert_external`] takes sites described by
//!   the `#[traced]` macro (address, path, file, line).
//!
//! `__mcount_loc` in PIE executables and shared objects: gcc refuses
//! `-mnop-mcount` with `-fPIC`/`-fPIE`, and without it the site is a 6-byte
//! `call *__fentry__@GOTPCREL(%rip)` which is refused like any unexpected
//! bytes. The reader itself handles relocated tables (it is the same code as
//! for `__patchable_function_entries` in shared objects), so any object
//! whose mcount sites hold a 5-byte NOP works; in practice that means
//! non-PIE executables.
//!
//! Livetrace's own functions, and the instances of `core`/`alloc`/`std`
//! code compiled into the program, are never put in the table, whatever
//! sites they have ([`is_notrace`]): tracing them would trace the tracer.
//!
//! # Invariants
//!
//! 1. **Every site's bytes are checked when found, and only NOPs are
//!    accepted.** The canonical `0f 1f 44 00 00` is live at once. GCC's
//!    `90 90 90 90 90` and non-canonical 5-byte NOPs (clang 14's
//!    `0f 1f 44 00 08`) are recorded as [`SiteState::Unconverted`] and
//!    cannot be patched until [`Table::convert`] has rewritten them into the
//!    canonical NOP under a [`ConvertPolicy`] that guarantees no thread is
//!    inside one (single-threaded, just loaded, or stop-the-world). Anything
//!    else is refused with a [`Rejected`] report (address, symbol, bytes;
//!    the kernel's `ftrace_bug`), kept out of the table and so never
//!    patched.
//! 2. **Records are sorted by address** and hold at most 32 bytes of hot
//!    state ([`Record`]); names and source positions live in a parallel
//!    cold array over one string arena.
//! 3. **No record outlives its code, and no enabled site is unmapped.** Every
//!    change of a site's instruction goes through [`Table::apply`], which,
//!    before the first site of a shared library leaves the NOP state, takes a
//!    reference to that library with `dlopen(name, RTLD_NOLOAD | RTLD_NOW)`
//!    (checked to be the same object: same load address), and drops it when
//!    the library's last enabled site is a NOP again. While pinned, the
//!    program's `dlclose` only lowers the count: the code stays mapped and
//!    the record stays valid, so disabling later writes to the right bytes,
//!    and calls through the site keep landing in mapped code. Once no site is
//!    enabled the library can go; [`Table::rescan`] (or
//!    [`Table::on_dlclose`]) then drops its records. Scans and conversions
//!    also hold a temporary reference while they read or write a library's
//!    text, so a concurrent `dlclose` cannot unmap it under them. The main
//!    program is never pinned (it cannot be unloaded).
//! 4. **Rescans are idempotent.** Objects are identified by loader name and
//!    load address; known ones are skipped without reading their file. If
//!    the loader's unload counter moved since the last scan, each unpinned
//!    object's sites are re-read and an object whose bytes no longer match
//!    its records (unloaded and reloaded at the same address) is read
//!    afresh.
//!
//! Records of a library that was unloaded after its last enabled site went
//! back to NOP stay in the table until the next rescan; any attempt to patch
//! them fails cleanly (the pin cannot be taken), and nothing reads or writes
//! their text.
//!
//! # Converting sleds
//!
//! [`ConvertPolicy::SingleThreaded`] checks `/proc/self/task` has one entry;
//! [`ConvertPolicy::StopTheWorld`] (also what [`Table::on_dlopen`] uses)
//! has the engine stop every other thread with its world signal, refuse
//! while any thread's RIP, or a RIP saved in a signal frame on its stacks,
//! is strictly inside a sled, rewrite every sled with one atomic store
//! without allocating or taking locks while threads are held, serialise all
//! cores with `membarrier`, and release them. It refuses, writing nothing,
//! when a thread does not stop in time. The writing is the engine's
//! (`livetrace_poke::convert_sleds`): this crate only finds sites.
//!
//! The table is not internally synchronised: the tracing core keeps it under
//! its own lock, and `on_dlopen`/`on_dlclose` are called by its interposers
//! under that lock.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod convert;
mod demangle;
mod disambiguator;
mod elf;
mod glob;
mod loaded;
mod notrace;
mod record;
mod symbolize;
mod table;

use std::fmt;
use std::io;

pub use convert::{thread_count, ConvertPolicy, ConvertReport};
pub use demangle::demangle;
pub use disambiguator::Disambiguator;
pub use glob::Glob;
pub use livetrace_poke::world::{
    set_signal as set_stop_signal, signal as stop_signal, Busy, StopError as StwError,
    StopReport as StwReport,
};
pub use notrace::{is_notrace, is_notrace_object};
pub use record::{ObjectId, Origin, Record, SiteState};
pub use symbolize::{Symbol, Symbolizer};
pub use table::{
    ExternalSite, FunctionInfo, InsertReport, Object, RejectReason, Rejected, ScanReport, Table,
};
pub use table::{RelocateReport, Relocated, WhyNot};

/// Why a table operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No record at this address.
    NoSuchSite {
        /// The address asked for.
        addr: usize,
    },
    /// The site still holds a sled (or a non-canonical NOP) and must be
    /// converted before it can be patched.
    NotConverted {
        /// The site.
        addr: usize,
        /// Its function.
        name: String,
    },
    /// A library could not be pinned (it is no longer loaded).
    Pin {
        /// The library.
        object: String,
        /// Why.
        source: io::Error,
    },
    /// The engine refused or failed the batch; nothing was written.
    Poke(livetrace_poke::Error),
    /// [`ConvertPolicy::SingleThreaded`] with other threads running.
    NotSingleThreaded {
        /// Threads found.
        threads: usize,
    },
    /// [`ConvertPolicy::StopTheWorld`] refused.
    StopTheWorld(StwError),
    /// A system call failed.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchSite { addr } => write!(f, "no site at {addr:#x}"),
            Error::NotConverted { addr, name } => write!(
                f,
                "site {addr:#x} <{name}> holds one-byte NOPs and cannot be patched live until \
                 converted (Table::convert)"
            ),
            Error::Pin { object, source } => write!(f, "cannot pin {object}: {source}"),
            Error::Poke(e) => write!(f, "engine: {e}"),
            Error::NotSingleThreaded { threads } => write!(
                f,
                "refusing single-threaded conversion: the process has {threads} threads"
            ),
            Error::StopTheWorld(e) => write!(f, "stop-the-world conversion refused: {e}"),
            Error::Io(e) => write!(f, "system call failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Pin { source, .. } => Some(source),
            Error::Poke(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}
