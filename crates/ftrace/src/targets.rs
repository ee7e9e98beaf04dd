//! The trampolines sites call, made on first use: an ops' dedicated
//! trampoline (and its fast path's copy) per window, the shared callers
//! per window and kind.

use std::sync::Arc;

use crate::ops::OpsInner;
use crate::tramp::{self, Kind};
use crate::walk::{list_entry, list_entry_fast, list_entry_full};
use crate::{Core, Error};

impl Core {
    pub(crate) fn trampoline(
        &mut self,
        window: usize,
        kind: Kind,
        ops: Option<&Arc<OpsInner>>,
    ) -> Result<usize, Error> {
        let tpoff = self.tpoff;
        match ops {
            Some(o) => {
                let key = (o.id, window);
                let dedicated = match self.dedicated.get(&key) {
                    Some(&a) => a,
                    None => {
                        let a = self
                            .pools
                            .create(
                                window,
                                Kind::Fast,
                                tpoff,
                                Arc::as_ptr(o) as usize,
                                o.entry as usize,
                            )
                            .map_err(Error::Trampoline)?;
                        self.dedicated.insert(key, a);
                        a
                    }
                };
                let Some(fast) = &o.fast else {
                    return Ok(dedicated);
                };
                if let Some(&a) = self.fast.get(&key) {
                    return Ok(a);
                }
                let fallback = if fast.exit().is_some() {
                    let d = self
                        .pools
                        .create_decline(window, dedicated)
                        .map_err(Error::Trampoline)?;
                    self.decline.insert(key, d);
                    d
                } else {
                    dedicated
                };
                let a = self
                    .pools
                    .create_fast(window, tpoff, fast.code(), fallback)
                    .map_err(Error::Trampoline)?;
                self.fast.insert(key, a);
                Ok(a)
            }
            None => {
                if let Some(&a) = self.shared.get(&(window, kind)) {
                    return Ok(a);
                }
                let entry = match kind {
                    Kind::Fast => list_entry_fast as tramp::FastEntryFn as usize,
                    Kind::Regs => list_entry as tramp::EntryFn as usize,
                    Kind::Full => list_entry_full as tramp::EntryFn as usize,
                };
                let a = self
                    .pools
                    .create(window, kind, tpoff, 0, entry)
                    .map_err(Error::Trampoline)?;
                self.shared.insert((window, kind), a);
                Ok(a)
            }
        }
    }
}
