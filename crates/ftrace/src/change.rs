//! Moving an ops to a new set of functions: the targets of every site
//! whose ops change, published, then applied as one batch.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use livetrace_poke::Insn;

use crate::ops::{FuncSet, OpsInner};
use crate::retire::Garbage;
use crate::tramp::{window_of, Kind};
use crate::walk::{OpsList, LIST};
use crate::{published, Core, Error, Ops};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Register,
    Unregister,
    Refilter,
}

impl Core {
    /// Moves `ops` to the function set `new` (empty to unregister) and
    /// everything that follows from it, as one batch.
    pub(crate) fn change(&mut self, ops: &Ops, how: Change, new: Vec<usize>) -> Result<(), Error> {
        let me = &ops.0;
        let old: Vec<usize> = if how == Change::Register {
            Vec::new()
        } else {
            published(me).map(|s| s.sites.clone()).unwrap_or_default()
        };
        // IPMODIFY ownership first: a refusal must change nothing.
        if me.ipmodify {
            for &ip in &new {
                let i = self.table.find(ip).expect("resolved from the table");
                if let Some(owner) = self.table.record(i).ipmodify_owner() {
                    if owner != me.id {
                        let owner = self
                            .registered
                            .iter()
                            .find(|o| o.0.id == owner)
                            .map_or_else(|| format!("#{owner}"), |o| o.0.name.clone());
                        return Err(Error::IpModifyTaken {
                            function: self.table.name(i).to_string(),
                            owner,
                        });
                    }
                }
            }
        }
        // The ops list after the change, and who is attached where.
        let after: Vec<Arc<OpsInner>> = match how {
            Change::Register => self
                .registered
                .iter()
                .map(|o| o.0.clone())
                .chain([me.clone()])
                .collect(),
            Change::Unregister => self
                .registered
                .iter()
                .filter(|o| !Arc::ptr_eq(&o.0, me))
                .map(|o| o.0.clone())
                .collect(),
            Change::Refilter => self.registered.iter().map(|o| o.0.clone()).collect(),
        };
        let new_set = FuncSet { sites: new };
        let affected = symmetric_difference(&old, &new_set.sites);
        let attached = |o: &Arc<OpsInner>, ip: usize| -> bool {
            if Arc::ptr_eq(o, me) {
                new_set.contains(ip)
            } else {
                published(o).is_some_and(|s| s.contains(ip))
            }
        };

        // Targets, creating trampolines as needed (unused ones are harmless).
        let mut changes = Vec::with_capacity(affected.len());
        let mut accounting = Vec::with_capacity(affected.len());
        for &ip in &affected {
            let on: Vec<&Arc<OpsInner>> = after.iter().filter(|o| attached(o, ip)).collect();
            let regs = on.iter().any(|o| o.regs || o.ipmodify);
            let owner = on.iter().find(|o| o.ipmodify).map(|o| o.id);
            let w = window_of(ip);
            // A relocated function its object calls directly, and that
            // clobbers less than the ABI lets it, may have callers that keep
            // values in any register (gcc's -fipa-ra, see
            // `tramp`): only the full caller serves it, never a fast path
            // or a trampoline that saves only what the ABI asks.
            let full = self
                .table
                .find(ip)
                .is_some_and(|i| self.table.record(i).preserves_all());
            let target = match on.len() {
                0 => Insn::Nop,
                _ if full => Insn::Call(self.trampoline(w, Kind::Full, None)?),
                _ if regs => Insn::Call(self.trampoline(w, Kind::Regs, None)?),
                1 => {
                    // The ops' fast path if it has one, else its dedicated
                    // trampoline.
                    let t = self.trampoline(w, Kind::Fast, Some(on[0]))?;
                    let fast = on[0].fast.as_ref();
                    match fast.and_then(|f| f.exit()) {
                        // Stub-served: the stub calls the fast path `t`.
                        Some(exit) => {
                            let p = fast.map_or(0, |f| f.personality());
                            Insn::Jmp(
                                self.stubs
                                    .point(ip, t, exit, p)
                                    .map_err(Error::Trampoline)?,
                            )
                        }
                        None => Insn::Call(t),
                    }
                }
                _ => Insn::Call(self.trampoline(w, Kind::Fast, None)?),
            };
            changes.push((ip, target));
            accounting.push((ip, on.len() as u32, regs, owner));
        }
        // Publish, then patch. The list walker must find the new set and
        // list before any site leads a thread to it.
        let old_set = me.funcs.swap(Box::into_raw(Box::new(new_set)), AcqRel);
        let old_list = LIST.swap(Box::into_raw(Box::new(OpsList { ops: after })), AcqRel);
        if let Err(e) = self.table.apply(&changes) {
            // Nothing was written: put the old state back. Threads may have
            // read the new set and list meanwhile (through sites that were
            // already enabled), so they are retired like any replaced state.
            let new_set = me.funcs.swap(old_set, AcqRel);
            let new_list = LIST.swap(old_list, AcqRel);
            self.deferred.push(Garbage {
                set: new_set,
                list: new_list,
                trampolines: Vec::new(),
                ops: None,
            });
            return Err(e.into());
        }
        for (ip, n, regs, owner) in accounting {
            let i = self.table.find(ip).expect("still in the table");
            let r = self.table.record_mut(i);
            r.set_nr_ops(n);
            r.set_needs_regs(regs);
            r.set_ipmodify_owner(owner);
        }
        let mut garbage = Garbage {
            set: old_set,
            list: old_list,
            trampolines: Vec::new(),
            ops: None,
        };
        match how {
            Change::Register => {
                self.registered.push(ops.clone());
                self.deferred.push(garbage);
            }
            Change::Refilter => self.deferred.push(garbage),
            Change::Unregister => {
                self.registered.retain(|o| !Arc::ptr_eq(&o.0, me));
                let mine: Vec<(u32, usize)> = self
                    .dedicated
                    .keys()
                    .filter(|k| k.0 == me.id)
                    .copied()
                    .collect();
                for k in mine {
                    garbage.trampolines.extend(self.dedicated.remove(&k));
                    garbage.trampolines.extend(self.fast.remove(&k));
                    garbage.trampolines.extend(self.decline.remove(&k));
                }
                // Its (now empty) published set stays until the ops itself
                // is dropped: the list walker may be reading it.
                garbage.ops = Some(ops.clone());
                self.retiring.push(me.id);
                // Unregister must wait anyway: free everything deferred too.
                return self.retire(vec![garbage]);
            }
        }
        Ok(())
    }
}

fn symmetric_difference(a: &[usize], b: &[usize]) -> Vec<usize> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::symmetric_difference;

    #[test]
    fn symmetric_differences() {
        assert_eq!(symmetric_difference(&[1, 3, 5], &[3, 4]), [1, 4, 5]);
        assert_eq!(symmetric_difference(&[], &[2]), [2]);
        assert_eq!(symmetric_difference(&[2], &[2]), Vec::<usize>::new());
    }
}
