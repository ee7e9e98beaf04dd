//! The trace model every writer formats. See the crate documentation for the
//! invariants the writers rely on and the irregularities they tolerate.

use std::borrow::Cow;

/// A finished (or snapshotted) trace of one process.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub pid: u32,
    /// Path of the executable (the `/proc/self/exe` target).
    pub program: String,
    pub cmdline: Vec<String>,
    /// `CLOCK_MONOTONIC` ns of the first event. Event timestamps are absolute
    /// `CLOCK_MONOTONIC` ns too, so traces line up with perf, ftrace (with
    /// `trace_clock` = `mono`) and uftrace recordings of the same run.
    pub start_ns: u64,
    pub threads: Vec<ThreadTrace>,
    /// Function address -> name, for every `func`/`caller` address in events.
    pub symbols: Symbols,
    /// Loaded objects (the `r-xp` lines of `/proc/self/maps`), for uftrace's
    /// `sid-*.map`.
    pub maps: Vec<Mapping>,
}

/// The events of one thread, in the order they happened.
#[derive(Clone, Debug, Default)]
pub struct ThreadTrace {
    pub tid: u32,
    pub name: String,
    pub events: Vec<Event>,
    /// Events the tracer dropped or overwrote for this thread.
    pub lost: u64,
    /// Calls that were not recorded because they were nested deeper than the
    /// tracer's depth limit.
    pub depth_overflows: u64,
}

/// One traced event. Timestamps are absolute `CLOCK_MONOTONIC` ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Function tracer: one per call.
    Call { ts: u64, func: u64, caller: u64 },
    /// Function-graph tracer: a function was entered at nesting `depth`.
    Entry { ts: u64, func: u64, depth: u32 },
    /// The matching exit (same `func`, same `depth`). It may be missing at the
    /// end of a thread (still running, or the thread exited mid-call), and
    /// exits before a thread's first `Entry` may belong to calls whose entry
    /// was overwritten (ring overwrite mode).
    Exit { ts: u64, func: u64, depth: u32 },
}

impl Event {
    pub fn ts(&self) -> u64 {
        match *self {
            Event::Call { ts, .. } | Event::Entry { ts, .. } | Event::Exit { ts, .. } => ts,
        }
    }

    pub fn func(&self) -> u64 {
        match *self {
            Event::Call { func, .. } | Event::Entry { func, .. } | Event::Exit { func, .. } => func,
        }
    }
}

/// One named address range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    /// Size in bytes; 0 when unknown, and then the symbol names only `addr`
    /// itself.
    pub size: u64,
    pub name: String,
}

impl Symbol {
    /// One past the last address this symbol names.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size.max(1))
    }
}

/// Function address -> name, sorted by address, one symbol per address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbols {
    sorted: Vec<Symbol>,
}

impl Symbols {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a symbol, replacing any symbol at the same address.
    pub fn insert(&mut self, addr: u64, size: u64, name: impl Into<String>) {
        let sym = Symbol {
            addr,
            size,
            name: name.into(),
        };
        // Symbol tables are usually built in address order: keep that O(1).
        if self.sorted.last().is_none_or(|last| last.addr < addr) {
            self.sorted.push(sym);
            return;
        }
        match self.sorted.binary_search_by_key(&addr, |s| s.addr) {
            Ok(i) => self.sorted[i] = sym,
            Err(i) => self.sorted.insert(i, sym),
        }
    }

    /// The symbol at `addr`, or else the closest one below it whose size
    /// covers `addr` (so a return address inside a function finds it).
    pub fn lookup(&self, addr: u64) -> Option<&Symbol> {
        let i = self.sorted.partition_point(|s| s.addr <= addr);
        let sym = self.sorted.get(i.checked_sub(1)?)?;
        (addr < sym.end()).then_some(sym)
    }

    /// Name of the symbol at or containing `addr`.
    pub fn name_of(&self, addr: u64) -> Option<&str> {
        self.lookup(addr).map(|s| s.name.as_str())
    }

    /// The name writers print: the symbol's, or `0x<hex>` when unknown, so an
    /// unnamed function still reads as a distinct, greppable frame.
    pub fn display(&self, addr: u64) -> Cow<'_, str> {
        match self.name_of(addr) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("{addr:#x}")),
        }
    }

    /// All symbols, by increasing address.
    pub fn iter(&self) -> std::slice::Iter<'_, Symbol> {
        self.sorted.iter()
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

impl<S: Into<String>> FromIterator<(u64, u64, S)> for Symbols {
    fn from_iter<I: IntoIterator<Item = (u64, u64, S)>>(iter: I) -> Self {
        let mut symbols = Symbols::new();
        symbols.extend(iter);
        symbols
    }
}

impl<S: Into<String>> Extend<(u64, u64, S)> for Symbols {
    fn extend<I: IntoIterator<Item = (u64, u64, S)>>(&mut self, iter: I) {
        for (addr, size, name) in iter {
            self.insert(addr, size, name);
        }
    }
}

/// One executable mapping of a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub path: String,
}

/// One profile row (also computed by the in-process profiler, which does not
/// keep events).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileRow {
    pub name: String,
    pub calls: u64,
    pub total_ns: u64,
    pub self_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_exact_containing_and_sizeless() {
        let mut s = Symbols::new();
        s.insert(0x2000, 0x10, "b");
        s.insert(0x1000, 0x100, "a");
        s.insert(0x3000, 0, "c");
        s.insert(0x2000, 0x20, "b2");
        assert_eq!(s.len(), 3);
        assert_eq!(s.name_of(0x1000), Some("a"));
        assert_eq!(s.name_of(0x10ff), Some("a"));
        assert_eq!(s.name_of(0x1100), None);
        assert_eq!(s.name_of(0x201f), Some("b2"));
        assert_eq!(s.name_of(0x3000), Some("c"));
        assert_eq!(
            s.name_of(0x3001),
            None,
            "a sizeless symbol names its address only"
        );
        assert_eq!(s.name_of(0xfff), None);
        assert_eq!(s.display(0x5), "0x5");
        let addrs: Vec<u64> = s.iter().map(|s| s.addr).collect();
        assert_eq!(addrs, [0x1000, 0x2000, 0x3000]);
    }
}
