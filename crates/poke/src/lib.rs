//! Live, batched rewriting of 5-byte instruction sites in a running,
//! multithreaded process: the kernel's `text_poke_bp_batch` in user space.
//!
//! This crate knows nothing about tracing. It rewrites *sites*: five bytes of
//! text holding exactly one instruction of three forms ([`Insn`]): the 5-byte
//! NOP, `call rel32`, `jmp rel32`. Other threads keep executing the sites
//! while they change, and none ever sees a torn instruction or a call that
//! goes nowhere. The world is never stopped.
//!
//! # The protocol
//!
//! A [`Batch`] collects (site, expected bytes, new bytes) entries. [`Batch::apply`]:
//!
//! 0. *validates everything before writing anything*: each site's five
//!    bytes are mapped executable and equal the expected bytes, and no site
//!    is queued twice or overlaps another. Any failure returns
//!    [`Error::Rejected`] listing every bad site (address, expected, found),
//!    and not a byte or a page protection has changed;
//! 1. publishes the batch, sorted by address, to the SIGTRAP handler;
//! 2. makes the pages writable (one `mprotect` per run of pages, keeping
//!    `PROT_EXEC`);
//! 3. writes `int3` (`0xcc`) on the first byte of every site, syncs all cores;
//! 4. writes bytes 1..4 of every site, syncs (skipped when no tail changes);
//! 5. writes the new first byte of every site, syncs;
//! 6. restores each page's exact original protection, unpublishes the batch
//!    and waits until no handler can still be reading it.
//!
//! "Sync" is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`: every
//! thread of the process executes a core-serialising instruction before it
//! next runs user code, so none can execute stale prefetched bytes.
//!
//! Between 3 and 5 any thread that reaches a site either executes the old
//! instruction whole (before it saw the `int3`) or traps. One handler serves
//! every site: it finds the trapping address in the published batch and
//! emulates *the new instruction being written*: a call pushes `site + 5` and
//! goes to the target, a jmp goes to the target, a NOP goes to `site + 5`.
//! A thread whose trap is delivered after its batch ended finds the final
//! instruction in place and re-executes it. Traps that are not ours go to the
//! program's own SIGTRAP handler, or get the default action, so the
//! program's breakpoints keep working. See [`trap_stats`].
//!
//! # Invariants
//!
//! - One batch at a time per process; [`Batch::apply`] may be called from any
//!   thread, including one that executes the batch's sites meanwhile.
//! - Text is writable only inside `apply`, and never left writable after it
//!   returns.
//! - The batch's entries outlive every handler that may read them: handlers
//!   count themselves in flight and the patcher waits for zero (the kernel's
//!   `bp_desc` refcount).
//! - Our handler stays SIGTRAP's disposition: the interposed `sigaction`
//!   records what the program installs as *its* handler, to pass the traps
//!   that are not ours on to; a handler installed behind our back is found
//!   before the next batch and treated the same (see [`signals`]).
//! - Every thread can take SIGTRAP: the kernel kills a thread that traps on
//!   `int3` with SIGTRAP blocked. The interposed mask functions never block
//!   it, and before every batch each thread's mask is read; one that still
//!   blocks it is given it back, or the batch is refused naming it
//!   ([`Error::SignalsBlocked`]).
//! - No batch runs while a debugger traces the process, unless allowed
//!   ([`allow_tracer`]): a debugger stops on our `int3`s and by default
//!   resumes the thread without passing the signal on.
//! - Text mapped `MAP_SHARED` is never written (the write would reach the
//!   file on disk).
//! - A `fork` never copies a batch half-done: it waits for the batch under
//!   way ([`register_atfork`]).
//!
//! # Beyond single sites
//!
//! - [`world`] lists, observes and stops the process's threads: each one's
//!   RIP and the RIPs saved in signal frames on its stacks, read without a
//!   signal for the threads the kernel shows blocked. The tracing core's
//!   quiescence wait is built on it.
//! - [`map_near`] maps executable memory within rel32 reach of given code,
//!   for trampolines and detours.
//! - [`convert_sleds`] makes GCC's five one-byte NOPs one 5-byte NOP, all
//!   of an object's under one stop of the world.
//!
//! # Example
//!
//! ```no_run
//! use livetrace_poke::{Batch, Insn};
//! # fn site_of_my_function() -> usize { 0 }
//! # fn my_trampoline() -> usize { 0 }
//! let site = site_of_my_function();
//! let mut batch = Batch::new();
//! batch.queue(site, Insn::Nop, Insn::Call(my_trampoline()))?;
//! batch.apply()?; // every thread now calls the trampoline on entry
//! # Ok::<(), livetrace_poke::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod batch;
mod convert;
mod insn;
mod lock;
mod maps;
mod near;
pub mod relocation;
pub mod signals;
mod sync;
mod text;
mod trap;
pub mod world;

use std::fmt;

pub use batch::{
    allow_tracer, poke_quiescent, read_memory, read_site, read_text, Applied, Batch, Phase,
    RejectReason, Rejection,
};
pub use convert::{convert_sleds, ConvertError, Converted, Quiet};
pub use insn::{rel32, EncodeError, Insn, INT3, NOP1X5, NOP5};
pub use lock::register_atfork;
pub use near::map_near;
pub use signals::BlockedThread;
pub use trap::{trap_stats, TrapStats};
pub use world::probe::{sample_threads, sample_threads_marking, tls_offset_of, ThreadSample};

/// The real-time signal thread probes use (the world signal).
pub fn probe_signal() -> libc::c_int {
    world::signal()
}

/// Chooses the world signal; see [`world::set_signal`].
pub fn set_probe_signal(sig: libc::c_int) -> Result<(), Error> {
    world::set_signal(sig)
}

/// Why a batch was not applied. When `apply` returns an error, no byte of
/// text and no page protection has changed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A call or jump target is out of rel32 range of its site.
    Encode(EncodeError),
    /// Bytes given to [`Batch::queue_bytes`] are not one whole instruction of
    /// the forms a site may hold.
    Form {
        /// The site.
        site: usize,
        /// The offending bytes.
        bytes: [u8; 5],
    },
    /// Sites failed validation; every failing site is listed.
    Rejected(Vec<Rejection>),
    /// The address is not mapped readable and executable.
    NotText {
        /// The address.
        site: usize,
    },
    /// The kernel cannot serialise other cores (no
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE`); patching without it is
    /// never done.
    NoCoreSync(String),
    /// Threads that did not answer a probe (they block the world signal,
    /// or are stopped).
    Unresponsive(Vec<i32>),
    /// Threads that block SIGTRAP (and cannot be given it back): an `int3`
    /// would kill the process. Nothing was written.
    SignalsBlocked(Vec<BlockedThread>),
    /// A debugger (ptrace tracer) is attached; see [`allow_tracer`].
    Traced {
        /// The tracer's pid.
        pid: i32,
        /// Its name.
        name: String,
    },
    /// A system call failed (reading the memory map, `mprotect`, `sigaction`).
    Io(std::io::Error),
    /// A prologue relocation could not finish: these threads stayed inside
    /// the instructions it moves (or could not be observed) until the
    /// timeout. Everything was put back as it was.
    NotClear {
        /// The threads, and why each is not clear.
        threads: Vec<world::Inside>,
    },
    /// No free address space within reach for executable memory
    /// ([`map_near`], detour memory).
    NoRoom {
        /// The address the memory was to be near (the function a detour
        /// serves).
        near: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// Detour memory used in a way its state does not allow (not from
    /// `alloc_detour`, not written, already installed).
    Detour {
        /// The detour address.
        addr: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Encode(e) => e.fmt(f),
            Error::Form { site, bytes } => write!(
                f,
                "site {site:#x}: {} is not a 5-byte nop, call rel32 or jmp rel32",
                insn::Hex5(*bytes)
            ),
            Error::Rejected(list) => {
                write!(f, "{} site(s) rejected, nothing was written:", list.len())?;
                for r in list {
                    write!(f, "\n  {r}")?;
                }
                Ok(())
            }
            Error::NotText { site } => {
                write!(f, "{site:#x} is not mapped readable and executable")
            }
            Error::NoCoreSync(why) => write!(f, "cannot sync cores, refusing to patch: {why}"),
            Error::Unresponsive(tids) => write!(f, "threads {tids:?} did not answer a probe"),
            Error::SignalsBlocked(list) => {
                write!(
                    f,
                    "refusing to patch: a thread that reaches a site mid-batch would be killed:"
                )?;
                for t in list {
                    write!(f, "\n  {t}")?;
                }
                Ok(())
            }
            Error::Traced { pid, name } => write!(
                f,
                "refusing to patch: the process is traced by pid {pid} ({name}). A debugger stops \
                 on livetrace's int3s as on its own breakpoints and resumes the thread one byte \
                 into the instruction (and gdb cannot pass SIGTRAP on without also passing its \
                 own internal breakpoints, which kills the program). Detach the debugger while \
                 tracing, or, for a tracer that passes every signal on (strace), set \
                 LIVETRACE_ALLOW_PTRACE=1"
            ),
            Error::Io(e) => write!(f, "system call failed: {e}"),
            Error::NotClear { threads } => {
                write!(
                    f,
                    "threads stayed inside the instructions a relocation moves (nothing was changed):"
                )?;
                for t in threads {
                    write!(f, "\n  {t}")?;
                }
                Ok(())
            }
            Error::NoRoom { near, len } => write!(
                f,
                "no free address space for {len} bytes of executable memory within reach of {near:#x}"
            ),
            Error::Detour { addr, why } => write!(f, "detour memory {addr:#x}: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Encode(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Error {
        Error::Encode(e)
    }
}

/// Ends the process when a step that cannot be undone fails mid-batch:
/// unwinding would leave `int3`s in text and a published batch about to be
/// freed.
#[cold]
pub(crate) fn fatal(what: &str) -> ! {
    eprintln!("livetrace-poke: fatal: {what}");
    std::process::abort()
}
