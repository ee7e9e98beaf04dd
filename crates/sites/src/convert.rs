//! Turning accepted-but-unconverted sites into the canonical 5-byte NOP.
//!
//! GCC's `-fpatchable-function-entry=5` emits five one-byte NOPs. Live
//! rewriting needs one instruction (a thread can be stopped between any two
//! one-byte NOPs and would resume in the middle of whatever replaced them),
//! so such a "sled" is made one 5-byte NOP exactly once, at a moment when no
//! thread can be executing it. The three ways to know that are the three
//! [`ConvertPolicy`] modes. Clang 14's `0f 1f 44 00 08` is already one
//! instruction but not the bytes the engine's batches expect; it goes
//! through the same modes (trivially safe for it).

use std::fmt;

use livetrace_poke::world::StopReport;
use livetrace_poke::{convert_sleds, ConvertError, Quiet};

use crate::Error;

/// When it is safe to rewrite a sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertPolicy {
    /// The process has one thread, checked through `/proc/self/task` right
    /// before converting: the caller is the only code running, so nobody is
    /// inside a sled (a constructor, or `main` before spawning threads).
    /// Refused with [`Error::NotSingleThreaded`] otherwise. Must not be
    /// used from a signal handler that may have interrupted a sled.
    SingleThreaded,
    /// Stop every other thread with the engine's stop-the-world, check that
    /// neither its RIP nor a RIP saved in a signal frame on its stacks is
    /// inside a sled, convert every sled at once, release. Busy threads make
    /// it retry, then refuse; a thread that does not stop (it blocks the
    /// world signal with a raw system call, or a debugger holds it) makes
    /// it refuse. The calling thread is not checked: do not use it from a
    /// signal handler. Used at start-up with threads running and after
    /// every `dlopen` (a library's constructors may have started threads
    /// running its code). See `livetrace_poke::convert_sleds`.
    StopTheWorld,
}

/// What a conversion did.
#[derive(Debug, Default)]
pub struct ConvertReport {
    /// Sites now holding the canonical 5-byte NOP.
    pub converted: usize,
    /// Sites left unconverted: (address, why).
    pub failed: Vec<(usize, String)>,
    /// For [`ConvertPolicy::StopTheWorld`]: rounds and busy observations.
    pub stw: Option<StopReport>,
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} converted, {} failed",
            self.converted,
            self.failed.len()
        )?;
        if let Some(s) = &self.stw {
            write!(
                f,
                " ({} stop round(s), {} thread(s) stopped)",
                s.attempts, s.stopped
            )?;
        }
        for (a, why) in &self.failed {
            write!(f, "\n  {a:#x}: {why}")?;
        }
        Ok(())
    }
}

/// Number of threads in this process.
pub fn thread_count() -> std::io::Result<usize> {
    Ok(livetrace_poke::world::threads()?.len())
}

/// Converts `sites` (address, bytes found there a moment ago, a sled or a
/// NOP variant) under `policy`, all at once. Returns the addresses
/// converted, and the error that stopped the conversion, if any (then
/// nothing was converted).
pub(crate) fn convert_sites(
    sites: &[(usize, [u8; 5])],
    policy: ConvertPolicy,
    report: &mut ConvertReport,
) -> (Vec<usize>, Result<(), Error>) {
    let quiet = match policy {
        ConvertPolicy::SingleThreaded => Quiet::SingleThreaded,
        ConvertPolicy::StopTheWorld => Quiet::StopTheWorld,
    };
    match convert_sleds(sites, quiet) {
        Ok(c) => {
            report.converted += c.done.len();
            for ip in c.changed {
                report
                    .failed
                    .push((ip, "bytes changed before the world stopped".into()));
            }
            report.stw = c.stop;
            (c.done, Ok(()))
        }
        Err(ConvertError::NotSingleThreaded(n)) => {
            (Vec::new(), Err(Error::NotSingleThreaded { threads: n }))
        }
        Err(ConvertError::Stop(e)) => (Vec::new(), Err(Error::StopTheWorld(e))),
        Err(e) => (Vec::new(), Err(Error::Poke(e.into()))),
    }
}
