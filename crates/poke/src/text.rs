//! Making text writable for the length of one batch, and putting it back.
//!
//! Text is writable only between [`Unlocked::new`] and its drop: the pages
//! holding the batch's sites are grouped into runs of contiguous pages with
//! the same original protection, each run gets one `mprotect` adding
//! `PROT_WRITE` (never removing `PROT_EXEC`: other threads keep executing
//! those pages the whole time), and dropping restores each run's exact
//! original protection. `mprotect` rather than `/proc/self/mem` because a
//! batch of 40,000 sites writes 120,000 times; one syscall per write would
//! cost microseconds per site, the `mprotect`s cost a few per batch.
//!
//! The first write to a file-backed private text page takes a copy-on-write
//! fault; later batches write to the private copy.

use crate::maps::Maps;

pub(crate) const PAGE: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Run {
    start: usize,
    len: usize,
    prot: i32,
}

/// The page runs a set of sites needs writable: planned (allocating)
/// before anything is stopped, applied without allocating.
pub(crate) struct Plan {
    runs: Vec<Run>,
}

impl Plan {
    /// The runs of pages touched by the 5-byte sites at `sites` (sorted
    /// ascending), with each page's protection from `maps`.
    pub fn new(maps: &Maps, sites: impl Iterator<Item = usize>) -> Plan {
        let mut runs: Vec<Run> = Vec::new();
        for site in sites {
            let mut page = site & !(PAGE - 1);
            let last = (site + 4) & !(PAGE - 1);
            // Most sites share their page with the previous one.
            if runs.last().is_some_and(|r| r.start + r.len > last) {
                continue;
            }
            loop {
                // Validation already checked that both ends are mapped text.
                let prot = maps.find(page).map_or(0, |r| r.prot);
                match runs.last_mut() {
                    Some(r) if r.start + r.len > page => {}
                    Some(r) if r.start + r.len == page && r.prot == prot => r.len += PAGE,
                    _ => runs.push(Run {
                        start: page,
                        len: PAGE,
                        prot,
                    }),
                }
                if page == last {
                    break;
                }
                page += PAGE;
            }
        }
        Plan { runs }
    }

    /// Adds `PROT_WRITE` to every run. On failure every run already
    /// changed is restored before the error is returned. Allocates
    /// nothing.
    pub fn unlock(&self) -> std::io::Result<()> {
        for (i, run) in self.runs.iter().enumerate() {
            // SAFETY: the run covers whole pages that /proc/self/maps showed
            // mapped with `run.prot`; adding PROT_WRITE while keeping the
            // other bits changes no mapping anybody else relies on, since
            // executing threads need only PROT_EXEC|PROT_READ, which stay.
            let rc = unsafe {
                libc::mprotect(run.start as *mut _, run.len, run.prot | libc::PROT_WRITE)
            };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                Plan::restore(&self.runs[..i]);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Puts back every run's original protection. Allocates nothing.
    pub fn relock(&self) {
        Plan::restore(&self.runs);
    }

    fn restore(runs: &[Run]) {
        for run in runs {
            // SAFETY: restores exactly the protection read from the map
            // before this batch made the run writable.
            let rc = unsafe { libc::mprotect(run.start as *mut _, run.len, run.prot) };
            // Cannot fail for a range we changed a moment ago short of the
            // kernel running out of memory for the VMA split. Text left
            // writable would break the contract, and this runs mid-batch
            // where unwinding is not safe.
            if rc != 0 {
                crate::fatal("failed to restore text protection");
            }
        }
    }

    /// How many `mprotect` runs.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// Pages made writable for one batch; restored on drop.
pub(crate) struct Unlocked {
    plan: Plan,
}

impl Unlocked {
    /// Adds `PROT_WRITE` to every page touched by the 5-byte sites at
    /// `sites` (sorted ascending). On failure every run already changed is
    /// restored before the error is returned.
    pub fn new(maps: &Maps, sites: impl Iterator<Item = usize>) -> std::io::Result<Unlocked> {
        let plan = Plan::new(maps, sites);
        plan.unlock()?;
        Ok(Unlocked { plan })
    }

    /// How many `mprotect` runs this batch needed.
    pub fn runs(&self) -> usize {
        self.plan.runs()
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        self.plan.relock();
    }
}
