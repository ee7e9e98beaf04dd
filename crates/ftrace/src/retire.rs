//! Freeing what a change replaced, once a quiescence wait shows no
//! thread can still use it.

use crate::ops::FuncSet;
use crate::quiesce::{normalize, quiesce, Watch};
use crate::tramp;
use crate::walk::OpsList;
use crate::{Core, Error, Ops};

impl Core {
    /// What a wait watches for: `dying` trampolines and the critical code
    /// (RIPs), and every place that calls callbacks (return addresses).
    pub(crate) fn watch(&self, dying: &[usize]) -> Watch {
        Watch {
            rip: normalize(
                dying
                    .iter()
                    .map(|&a| a..a + tramp::SLOT)
                    .chain(self.critical.iter().cloned())
                    .chain(self.stubs.pages.iter().cloned()),
            ),
            frames: normalize(
                self.pools
                    .return_addresses()
                    .into_iter()
                    .chain(self.callers.iter().cloned()),
            ),
        }
    }

    /// Frees `garbage` and everything deferred once no thread can be using
    /// it. When the wait gives up, nothing is freed: it all stays deferred
    /// for the next wait, and the error names the threads.
    pub(crate) fn retire(&mut self, garbage: Vec<Garbage>) -> Result<(), Error> {
        self.deferred.extend(garbage);
        let dying: Vec<usize> = self
            .deferred
            .iter()
            .flat_map(|g| g.trampolines.iter().copied())
            .collect();
        let watch = self.watch(&dying);
        if let Err(threads) = quiesce(self.tpoff, &watch) {
            return Err(Error::NotQuiescent { threads });
        }
        self.retiring.clear();
        for g in std::mem::take(&mut self.deferred) {
            for a in &g.trampolines {
                self.pools.release(*a);
            }
            if !g.set.is_null() {
                // SAFETY: replaced sets came from Box::into_raw; no thread
                // can still read it after the wait.
                drop(unsafe { Box::from_raw(g.set) });
            }
            if !g.list.is_null() {
                // SAFETY: as above, for the list.
                drop(unsafe { Box::from_raw(g.list) });
            }
            drop(g.ops);
        }
        Ok(())
    }
}

/// State replaced by a change, freed after a quiescence wait.
pub(crate) struct Garbage {
    pub(crate) set: *mut FuncSet,
    pub(crate) list: *mut OpsList,
    pub(crate) trampolines: Vec<usize>,
    pub(crate) ops: Option<Ops>,
}

// SAFETY: the pointers are owned boxes (from Box::into_raw) that no longer
// belong to anything published; only the core, under its lock, frees them.
unsafe impl Send for Garbage {}
