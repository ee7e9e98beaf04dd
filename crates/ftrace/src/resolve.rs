//! Which sites an ops' patterns name.

use std::collections::HashSet;

use crate::{livepatch, Core, Error, Pattern};

impl Core {
    /// The sites named by `filter` minus those named by `notrace`, sorted.
    pub(crate) fn resolve(
        &self,
        filter: &[Pattern],
        notrace: &[Pattern],
    ) -> Result<Vec<usize>, Error> {
        let mut want: Vec<usize> = if filter.is_empty() {
            self.table
                .records()
                .iter()
                .filter(|r| r.is_live())
                .map(|r| r.ip())
                .collect()
        } else {
            self.matching_each(filter, "filter")?
        };
        let skip: HashSet<usize> = self
            .matching_each(notrace, "notrace")?
            .into_iter()
            .collect();
        want.retain(|ip| !skip.contains(ip));
        want.sort_unstable();
        want.dedup();
        Ok(want)
    }

    /// Live sites the patterns of `set` name; each must name one.
    fn matching_each(&self, patterns: &[Pattern], set: &'static str) -> Result<Vec<usize>, Error> {
        let mut v = Vec::new();
        for p in patterns {
            let found = self.matching(p);
            if found.is_empty() {
                return Err(Error::NoMatch {
                    pattern: p.to_string(),
                    set,
                });
            }
            v.extend(found);
        }
        Ok(v)
    }

    /// Live sites a pattern names.
    pub(crate) fn matching(&self, p: &Pattern) -> Vec<usize> {
        let t = &self.table;
        let idx: Vec<usize> = match p {
            Pattern::Glob(g) => t.glob(g),
            Pattern::Name(n) => t.lookup_name(n),
            Pattern::Addr(a) => self.record_at(*a).into_iter().collect(),
        };
        idx.into_iter()
            .filter(|&i| t.record(i).is_live())
            .map(|i| t.record(i).ip())
            .collect()
    }

    /// The record of the function at `addr`: its site; its entry when the
    /// site follows an `endbr64`; or, for a function whose entry is not the
    /// site itself (a `#[traced]` function's inline wrapper, taken as a
    /// function pointer), the site its first instructions lead to.
    pub(crate) fn record_at(&self, addr: usize) -> Option<usize> {
        if let Some(i) = self.table.find(addr) {
            return Some(i);
        }
        if let Some(i) = self.table.find_relocated_entry(addr) {
            return Some(i);
        }
        let code = livetrace_poke::read_text(addr, 4).ok()?;
        if code == [0xf3, 0x0f, 0x1e, 0xfa] {
            if let Some(i) = self.table.find(addr + 4) {
                return Some(i);
            }
        }
        livepatch::wrapper_target(addr, |a| self.table.find(a))
    }
}
