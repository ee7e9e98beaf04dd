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

impl Trace {
    /// The process facts every writer is told before any event.
    pub fn process(&self) -> Process {
        Process {
            pid: self.pid,
            program: self.program.clone(),
            cmdline: self.cmdline.clone(),
            start_ns: self.start_ns,
            maps: self.maps.clone(),
        }
    }
}

/// What a streaming writer ([`crate::Sink`]) is told about the traced
/// process before any event: everything in a [`Trace`] but its threads and
/// symbols.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Path of the executable.
    pub program: String,
    pub cmdline: Vec<String>,
    /// `CLOCK_MONOTONIC` ns when recording began; relative times count from
    /// here.
    pub start_ns: u64,
    /// Loaded objects' executable mappings.
    pub maps: Vec<Mapping>,
}

impl Process {
    /// The program's file name, for titles.
    pub fn program_name(&self) -> &str {
        self.program.rsplit('/').next().unwrap_or(&self.program)
    }
}

/// Why events of a thread were not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LossReason {
    /// The thread's ring was full and its oldest events were overwritten
    /// (overwrite mode, the flight recorder): losses at the start.
    Overwritten,
    /// The buffer was full when the thread recorded, because the consumer
    /// had not yet emptied it (stream mode): the new events were dropped.
    BufferFull,
    /// The thread had no buffer (the session's memory budget was used up,
    /// or it wrote while exiting).
    NoBuffer,
    /// The consumer could not store them (a write error, such as a full
    /// disk).
    NotWritten,
    /// Calls nested deeper than the tracer's depth limit were not recorded
    /// (counted in calls, not events).
    DepthLimit,
    /// A reason the producer named and this version does not know.
    Unknown,
}

impl LossReason {
    pub const ALL: [LossReason; 6] = [
        LossReason::Overwritten,
        LossReason::BufferFull,
        LossReason::NoBuffer,
        LossReason::NotWritten,
        LossReason::DepthLimit,
        LossReason::Unknown,
    ];

    fn index(self) -> usize {
        match self {
            LossReason::Overwritten => 0,
            LossReason::BufferFull => 1,
            LossReason::NoBuffer => 2,
            LossReason::NotWritten => 3,
            LossReason::DepthLimit => 4,
            LossReason::Unknown => 5,
        }
    }

    /// A short machine-readable key (JSON and protobuf annotations).
    pub fn key(self) -> &'static str {
        match self {
            LossReason::Overwritten => "overwritten",
            LossReason::BufferFull => "buffer_full",
            LossReason::NoBuffer => "no_buffer",
            LossReason::NotWritten => "not_written",
            LossReason::DepthLimit => "depth_limit",
            LossReason::Unknown => "unknown",
        }
    }

    /// Why, in words.
    pub fn describe(self) -> &'static str {
        match self {
            LossReason::Overwritten => "ring full, oldest events overwritten",
            LossReason::BufferFull => "buffer full, the consumer was late",
            LossReason::NoBuffer => "no buffer, the memory budget was used up",
            LossReason::NotWritten => "not written, an output error",
            LossReason::DepthLimit => "calls deeper than the depth limit, not recorded",
            LossReason::Unknown => "for a reason this version does not know",
        }
    }
}

/// Per-reason loss counts of one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    counts: [u64; 6],
}

impl Losses {
    pub fn add(&mut self, reason: LossReason, count: u64) {
        let slot = &mut self.counts[reason.index()];
        *slot = slot.saturating_add(count);
    }

    pub fn get(&self, reason: LossReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Events lost, whatever the reason (depth-limit calls are not events).
    pub fn events(&self) -> u64 {
        self.iter()
            .filter(|&(r, _)| r != LossReason::DepthLimit)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(n))
    }

    /// The non-zero counts, by reason.
    pub fn iter(&self) -> impl Iterator<Item = (LossReason, u64)> + '_ {
        LossReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// `7 events lost (ring full, oldest events overwritten); 2 calls deeper
    /// than the depth limit, not recorded`, or `none lost`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .iter()
            .map(|(r, n)| match r {
                LossReason::DepthLimit => format!("{n} {}", r.describe()),
                _ => format!("{n} events lost ({})", r.describe()),
            })
            .collect();
        if parts.is_empty() {
            "none lost".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// What a writer kept and lost of one thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadSummary {
    pub tid: u32,
    pub name: String,
    /// Events received (kept).
    pub events: u64,
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    pub losses: Losses,
}

/// What a writer kept and lost, per thread in the order threads were first
/// seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub threads: Vec<ThreadSummary>,
}

impl Summary {
    /// Events kept, all threads.
    pub fn events(&self) -> u64 {
        self.threads.iter().map(|t| t.events).sum()
    }

    /// Events lost, all threads and reasons.
    pub fn lost(&self) -> u64 {
        self.threads.iter().map(|t| t.losses.events()).sum()
    }
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

/// Where a function is in its source: the line of its first instruction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceLocation {
    /// Source file, as the debug information names it.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
}

/// Function address -> name, sorted by address, one symbol per address;
/// and, for functions whose source is known, where they are
/// ([`Symbols::location`]), for the formats with a place for it (uftrace's
/// `.dbg` files, Perfetto's source locations). Locations are found by
/// whoever builds the symbols (the recorder, from debug information); the
/// writers only carry them.
///
/// Symbols may nest or overlap (a size-less label inside a function, a
/// `.cold` part, an alias): [`Symbols::lookup`] finds the closest symbol at
/// or below an address *that covers it*, so a small or size-less symbol never
/// hides the sized function around it.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    sorted: Vec<Symbol>,
    /// `max_end[i]`: the largest [`Symbol::end`] among `sorted[..=i]`, so a
    /// lookup knows when no symbol further down can cover an address. Built
    /// on first lookup after a change.
    max_end: std::sync::OnceLock<Vec<u64>>,
    /// Function start address -> where it is in its source.
    locations: std::collections::HashMap<u64, SourceLocation>,
    /// Bumped by every change, so caches of resolved names know when to
    /// start over.
    version: u64,
}

impl PartialEq for Symbols {
    fn eq(&self, other: &Self) -> bool {
        self.sorted == other.sorted && self.locations == other.locations
    }
}

impl Eq for Symbols {}

impl Symbols {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a symbol, replacing any symbol at the same address. A size-less
    /// symbol keeps the size already known for its address: the same
    /// function is often named twice, once exactly (a traced function, from
    /// the record table, size unknown) and once as the function containing
    /// a caller address (from the ELF symbol table, sized), and the order in
    /// which the two arrive must not decide whether callers resolve.
    pub fn insert(&mut self, addr: u64, size: u64, name: impl Into<String>) {
        let mut sym = Symbol {
            addr,
            size,
            name: name.into(),
        };
        self.version += 1;
        // Symbol tables are usually built in address order: keep that O(1).
        if self.sorted.last().is_none_or(|last| last.addr < addr) {
            if let Some(max_end) = self.max_end.get_mut() {
                let prev = max_end.last().copied().unwrap_or(0);
                max_end.push(prev.max(sym.end()));
            }
            self.sorted.push(sym);
            return;
        }
        self.max_end = std::sync::OnceLock::new();
        match self.sorted.binary_search_by_key(&addr, |s| s.addr) {
            Ok(i) => {
                if sym.size == 0 {
                    sym.size = self.sorted[i].size;
                }
                self.sorted[i] = sym;
            }
            Err(i) => self.sorted.insert(i, sym),
        }
    }

    /// Adds every symbol of `other`. Where both name the same address, the
    /// name already here stays and a size missing here is taken from
    /// `other`: pieces of one trace polled at different times name the same
    /// functions, sometimes with and sometimes without their sizes. Source
    /// locations likewise: one known here stays.
    pub fn merge(&mut self, other: &Symbols) {
        for s in other.iter() {
            match self.sorted.binary_search_by_key(&s.addr, |x| x.addr) {
                Ok(i) if self.sorted[i].size == 0 && s.size > 0 => {
                    self.sorted[i].size = s.size;
                    self.max_end = std::sync::OnceLock::new();
                    self.version += 1;
                }
                Ok(_) => {}
                Err(_) => self.insert(s.addr, s.size, s.name.clone()),
            }
        }
        for (&addr, loc) in &other.locations {
            if !self.locations.contains_key(&addr) {
                self.set_location(addr, loc.file.clone(), loc.line);
            }
        }
    }

    /// Records where the function starting at `addr` is in its source
    /// (replacing what was known).
    pub fn set_location(&mut self, addr: u64, file: impl Into<String>, line: u32) {
        let loc = SourceLocation {
            file: file.into(),
            line,
        };
        if self.locations.get(&addr) != Some(&loc) {
            self.locations.insert(addr, loc);
            self.version += 1;
        }
    }

    /// Where the function starting exactly at `addr` is in its source, when
    /// known (an address inside a function has none: callers are return
    /// addresses, not functions).
    pub fn location(&self, addr: u64) -> Option<&SourceLocation> {
        self.locations.get(&addr)
    }

    /// Every known location, by function address, in no order.
    pub fn locations(&self) -> impl Iterator<Item = (u64, &SourceLocation)> + '_ {
        self.locations.iter().map(|(&a, l)| (a, l))
    }

    fn max_end(&self) -> &[u64] {
        self.max_end.get_or_init(|| {
            let mut end = 0;
            self.sorted
                .iter()
                .map(|s| {
                    end = end.max(s.end());
                    end
                })
                .collect()
        })
    }

    /// The innermost symbol covering `addr`: the symbol at `addr`, or else
    /// the closest one below it whose size covers `addr` (so a return
    /// address inside a function finds it), skipping symbols below `addr`
    /// that end before it.
    pub fn lookup(&self, addr: u64) -> Option<&Symbol> {
        let i = self.sorted.partition_point(|s| s.addr <= addr);
        let mut j = i.checked_sub(1)?;
        let max_end = self.max_end();
        loop {
            let sym = &self.sorted[j];
            if addr < sym.end() {
                return Some(sym);
            }
            // Nothing at or below j reaches addr.
            if max_end[j] <= addr || j == 0 {
                return None;
            }
            j -= 1;
        }
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

    /// Changes with every insertion: a cache of names resolved through
    /// these symbols is valid while this stays the same.
    pub fn version(&self) -> u64 {
        self.version
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

/// One executable mapping of a loaded object: the recorded file's own.
pub use livetrace_format::Mapping;

/// One profile row (also computed by the in-process profiler, which does not
/// keep events).
pub use livetrace_format::ProfileRow;

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

    #[test]
    fn a_sizeless_symbol_inside_a_function_does_not_hide_it() {
        // luaH_free's caller is a return address in `f`; a traced function
        // named without a size sits between f's start and that address.
        let mut s = Symbols::new();
        s.insert(0x1000, 0x200, "f");
        s.insert(0x1080, 0, "label");
        s.insert(0x1100, 0x10, "inner");
        assert_eq!(s.name_of(0x10f0), Some("f"));
        assert_eq!(s.name_of(0x1080), Some("label"));
        assert_eq!(s.name_of(0x1105), Some("inner"));
        assert_eq!(s.name_of(0x1110), Some("f"));
        assert_eq!(s.name_of(0x1200), None);
        // Built out of order, after a lookup built the cover table.
        s.insert(0x800, 0x1000, "outer");
        assert_eq!(s.name_of(0x1300), Some("outer"));
        assert_eq!(s.name_of(0x10f0), Some("f"));
        s.insert(0x3000, 0x10, "g");
        assert_eq!(s.name_of(0x3008), Some("g"));
        assert_eq!(s.name_of(0x2000), None);
    }

    #[test]
    fn a_known_size_survives_a_sizeless_rename_and_merges() {
        let mut s = Symbols::new();
        s.insert(0x1000, 0x100, "f");
        s.insert(0x1000, 0, "f");
        assert_eq!(s.name_of(0x1050), Some("f"));

        // Polled pieces: first f only as a callee (size unknown), then as
        // the function containing a caller address (sized).
        let mut acc = Symbols::new();
        acc.insert(0x1000, 0, "f");
        assert_eq!(acc.name_of(0x1050), None);
        let mut later = Symbols::new();
        later.insert(0x1000, 0x100, "f");
        later.insert(0x2000, 0x10, "g");
        acc.merge(&later);
        assert_eq!(acc.name_of(0x1050), Some("f"));
        assert_eq!(acc.name_of(0x2001), Some("g"));
        // And the other way round: the size stays.
        let mut sizeless = Symbols::new();
        sizeless.insert(0x1000, 0, "other name");
        acc.merge(&sizeless);
        assert_eq!(acc.name_of(0x1050), Some("f"));
    }
}
