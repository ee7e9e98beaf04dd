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

use livetrace_poke::NOP5;

use crate::stw::{self, StwError, StwReport};
use crate::Error;

/// When it is safe to rewrite a sled.
#[derive(Debug)]
pub enum ConvertPolicy {
    /// The process has one thread, checked through `/proc/self/task` right
    /// before converting: the caller is the only code running, so nobody is
    /// inside a sled (a constructor, or `main` before spawning threads).
    /// Refused with [`Error::NotSingleThreaded`] otherwise. Must not be
    /// used from a signal handler that may have interrupted a sled.
    SingleThreaded,
    /// The objects were loaded a moment ago and their code has not run on
    /// another thread: the `dlopen` interposer, before it returns the handle
    /// (see [`crate::Table::on_dlopen`]). Not checkable; hence the token.
    JustLoaded(JustLoaded),
    /// Stop every other thread with a signal, check none is inside a sled
    /// (its RIP, and saved contexts on its stack), convert, release. Busy
    /// threads make it retry, then refuse; a thread that does not stop (it
    /// blocks the signal) makes it refuse. The calling thread is not
    /// checked: do not use it from a signal handler. See the `stw` module
    /// docs and [`crate::set_stop_signal`].
    StopTheWorld,
}

/// Proof that the caller upheld the [`ConvertPolicy::JustLoaded`] contract.
#[derive(Debug)]
pub struct JustLoaded(());

impl JustLoaded {
    /// # Safety
    /// No thread other than the caller may execute code of the objects
    /// being converted while the conversion runs, nor be stopped (by a
    /// signal, in a handler, or otherwise) between two bytes of one of
    /// their sleds. True for objects whose `dlopen` has just returned on
    /// this thread, when the `dlopen` calls are serialised and the objects'
    /// constructors did not start threads running their code.
    pub unsafe fn promise() -> JustLoaded {
        JustLoaded(())
    }
}

/// What a conversion did.
#[derive(Debug, Default)]
pub struct ConvertReport {
    /// Sites now holding the canonical 5-byte NOP.
    pub converted: usize,
    /// Sites left unconverted: (address, why).
    pub failed: Vec<(usize, String)>,
    /// For [`ConvertPolicy::StopTheWorld`]: rounds and busy observations.
    pub stw: Option<StwReport>,
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
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Converts `sites` (address, bytes found there a moment ago, a sled or a
/// NOP variant) under `policy`. Returns the addresses converted, and the
/// error that stopped the conversion, if any (sites converted before it
/// stay converted).
pub(crate) fn convert_sites(
    sites: &[(usize, [u8; 5])],
    policy: ConvertPolicy,
    report: &mut ConvertReport,
) -> (Vec<usize>, Result<(), Error>) {
    let mut done = Vec::with_capacity(sites.len());
    match policy {
        ConvertPolicy::SingleThreaded => {
            match thread_count() {
                Ok(1) => {}
                Ok(n) => return (done, Err(Error::NotSingleThreaded { threads: n })),
                Err(e) => return (done, Err(Error::Io(e))),
            }
            quiescent(sites, report, &mut done);
        }
        ConvertPolicy::JustLoaded(_) => quiescent(sites, report, &mut done),
        ConvertPolicy::StopTheWorld => {
            let mut sleds: Vec<usize> = sites.iter().map(|s| s.0).collect();
            sleds.sort_unstable();
            let res = stw::with_world_stopped(&sleds, |mem| {
                for &(ip, expected) in sites {
                    // Re-checked with everyone stopped: a batch elsewhere
                    // may have raced the read done before the stop.
                    if stw::read_text(mem, ip) != Some(expected) {
                        continue;
                    }
                    stw::write_text(mem, ip, &NOP5)?;
                    // Capacity reserved above: no allocation here.
                    done.push(ip);
                }
                Ok(())
            });
            match res {
                Ok(r) => report.stw = Some(r),
                Err(StwError::Write(w)) => {
                    report.converted += done.len();
                    return (done, Err(Error::StopTheWorld(StwError::Write(w))));
                }
                Err(e) => return (done, Err(Error::StopTheWorld(e))),
            }
            for &(ip, _) in sites {
                if !done.contains(&ip) {
                    report
                        .failed
                        .push((ip, "bytes changed before the world stopped".into()));
                }
            }
            report.converted += done.len();
        }
    }
    (done, Ok(()))
}

fn quiescent(sites: &[(usize, [u8; 5])], report: &mut ConvertReport, done: &mut Vec<usize>) {
    for &(ip, expected) in sites {
        // SAFETY: the policy (single thread checked just now, or the
        // caller's JustLoaded promise) guarantees no thread executes or is
        // stopped inside these bytes.
        match unsafe { livetrace_poke::poke_quiescent(ip, expected, NOP5) } {
            Ok(()) => {
                done.push(ip);
                report.converted += 1;
            }
            Err(e) => report.failed.push((ip, e.to_string())),
        }
    }
}
