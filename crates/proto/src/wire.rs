//! Traces on the wire: a serde mirror of [`livetrace_output::Trace`], and
//! the merge a streaming client does to rebuild one trace from its polls.

use livetrace_output::{Event, Mapping, ThreadTrace, Trace};
use serde::{Deserialize, Serialize};

/// A trace, or one poll's worth of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTrace {
    /// The traced process.
    pub pid: u32,
    /// Its executable.
    pub program: String,
    /// Its command line.
    pub cmdline: Vec<String>,
    /// `CLOCK_MONOTONIC` ns of the first event here.
    pub start_ns: u64,
    /// Threads with events (or losses) in this piece.
    pub threads: Vec<WireThread>,
    /// Names of the addresses the events mention.
    pub symbols: Vec<WireSymbol>,
    /// Executable mappings.
    pub maps: Vec<WireMapping>,
}

/// One thread's events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireThread {
    /// Kernel thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// Events, oldest first.
    pub events: Vec<WireEvent>,
    /// Events lost (in this piece).
    pub lost: u64,
    /// Calls too deep to record.
    pub depth_overflows: u64,
}

/// One event as `[kind, ts, func, x]`: kind 1 = call (`x` = caller),
/// 2 = entry, 3 = exit (`x` = depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent(pub u8, pub u64, pub u64, pub u64);

/// One named address range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSymbol {
    /// Start.
    pub addr: u64,
    /// Size; 0 names `addr` only.
    pub size: u64,
    /// Name.
    pub name: String,
}

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMapping {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The object's path.
    pub path: String,
}

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> WireEvent {
        match *e {
            Event::Call { ts, func, caller } => WireEvent(1, ts, func, caller),
            Event::Entry { ts, func, depth } => WireEvent(2, ts, func, depth as u64),
            Event::Exit { ts, func, depth } => WireEvent(3, ts, func, depth as u64),
        }
    }
}

impl TryFrom<WireEvent> for Event {
    type Error = String;
    fn try_from(WireEvent(k, ts, func, x): WireEvent) -> Result<Event, String> {
        let depth = || u32::try_from(x).map_err(|_| format!("event depth {x} out of range"));
        Ok(match k {
            1 => Event::Call {
                ts,
                func,
                caller: x,
            },
            2 => Event::Entry {
                ts,
                func,
                depth: depth()?,
            },
            3 => Event::Exit {
                ts,
                func,
                depth: depth()?,
            },
            _ => return Err(format!("unknown event kind {k}")),
        })
    }
}

impl From<&Trace> for WireTrace {
    fn from(t: &Trace) -> WireTrace {
        WireTrace {
            pid: t.pid,
            program: t.program.clone(),
            cmdline: t.cmdline.clone(),
            start_ns: t.start_ns,
            threads: t
                .threads
                .iter()
                .map(|th| WireThread {
                    tid: th.tid,
                    name: th.name.clone(),
                    events: th.events.iter().map(WireEvent::from).collect(),
                    lost: th.lost,
                    depth_overflows: th.depth_overflows,
                })
                .collect(),
            symbols: t
                .symbols
                .iter()
                .map(|s| WireSymbol {
                    addr: s.addr,
                    size: s.size,
                    name: s.name.clone(),
                })
                .collect(),
            maps: t
                .maps
                .iter()
                .map(|m| WireMapping {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    path: m.path.clone(),
                })
                .collect(),
        }
    }
}

impl WireTrace {
    /// Events in this piece.
    pub fn event_count(&self) -> usize {
        self.threads.iter().map(|t| t.events.len()).sum()
    }

    /// The model the writers format. Fails on an unknown event kind.
    pub fn into_trace(self) -> Result<Trace, String> {
        let mut threads = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            let events = t
                .events
                .into_iter()
                .map(Event::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            threads.push(ThreadTrace {
                tid: t.tid,
                name: t.name,
                events,
                lost: t.lost,
                depth_overflows: t.depth_overflows,
            });
        }
        Ok(Trace {
            pid: self.pid,
            program: self.program,
            cmdline: self.cmdline,
            start_ns: self.start_ns,
            threads,
            symbols: self
                .symbols
                .into_iter()
                .map(|s| (s.addr, s.size, s.name))
                .collect(),
            maps: self
                .maps
                .into_iter()
                .map(|m| Mapping {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    path: m.path,
                })
                .collect(),
        })
    }

    /// Splits off the first `max` events (whole threads' prefixes, in
    /// order), leaving the rest in `self`. Identity, symbols and maps go
    /// with both pieces, so each stands alone.
    pub fn split_front(&mut self, max: usize) -> WireTrace {
        let mut front = WireTrace {
            pid: self.pid,
            program: self.program.clone(),
            cmdline: self.cmdline.clone(),
            start_ns: self.start_ns,
            threads: Vec::new(),
            symbols: self.symbols.clone(),
            maps: self.maps.clone(),
        };
        let mut budget = max;
        let mut rest = Vec::new();
        for mut t in std::mem::take(&mut self.threads) {
            if budget == 0 {
                rest.push(t);
                continue;
            }
            if t.events.len() <= budget {
                budget -= t.events.len();
                front.threads.push(t);
            } else {
                let tail = t.events.split_off(budget);
                budget = 0;
                rest.push(WireThread {
                    tid: t.tid,
                    name: t.name.clone(),
                    events: tail,
                    lost: 0,
                    depth_overflows: 0,
                });
                front.threads.push(t);
            }
        }
        self.threads = rest;
        front
    }

    /// Appends a later piece of the same trace (see [`merge_trace`]).
    pub fn append(&mut self, later: WireTrace) {
        if self.threads.is_empty() && self.symbols.is_empty() {
            self.pid = later.pid;
            self.program = later.program;
            self.cmdline = later.cmdline;
        }
        if self.start_ns == 0 || (later.start_ns != 0 && later.start_ns < self.start_ns) {
            self.start_ns = later.start_ns;
        }
        for t in later.threads {
            match self.threads.iter_mut().find(|x| x.tid == t.tid) {
                Some(x) => {
                    x.name = t.name;
                    x.events.extend(t.events);
                    x.lost += t.lost;
                    x.depth_overflows += t.depth_overflows;
                }
                None => self.threads.push(t),
            }
        }
        for s in later.symbols {
            if !self.symbols.iter().any(|x| x.addr == s.addr) {
                self.symbols.push(s);
            }
        }
        if !later.maps.is_empty() {
            self.maps = later.maps;
        }
    }
}

/// Appends `later`, a later piece of the same process's trace, to `acc`:
/// events of a thread already present go after its own, losses add up,
/// new symbols are added, the newest mappings win, and `start_ns` is the
/// earliest seen.
pub fn merge_trace(acc: &mut Trace, later: Trace) {
    if acc.threads.is_empty() && acc.program.is_empty() {
        acc.pid = later.pid;
        acc.program = later.program;
        acc.cmdline = later.cmdline;
    }
    if acc.start_ns == 0 || (later.start_ns != 0 && later.start_ns < acc.start_ns) {
        acc.start_ns = later.start_ns;
    }
    for t in later.threads {
        match acc.threads.iter_mut().find(|x| x.tid == t.tid) {
            Some(x) => {
                x.name = t.name;
                x.events.extend(t.events);
                x.lost += t.lost;
                x.depth_overflows += t.depth_overflows;
            }
            None => acc.threads.push(t),
        }
    }
    // A function first named only as a callee (size unknown) and later as
    // the function around a caller address (sized) must end up sized, or
    // the later callers print as addresses.
    acc.symbols.merge(&later.symbols);
    if !later.maps.is_empty() {
        acc.maps = later.maps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(tid: u32, events: &[(u8, u64)]) -> WireTrace {
        WireTrace {
            pid: 7,
            program: "p".into(),
            threads: vec![WireThread {
                tid,
                name: format!("t{tid}"),
                events: events
                    .iter()
                    .map(|&(k, ts)| WireEvent(k, ts, 0x1000, 0))
                    .collect(),
                lost: 1,
                depth_overflows: 0,
            }],
            symbols: vec![WireSymbol {
                addr: 0x1000,
                size: 0,
                name: "f".into(),
            }],
            start_ns: events.first().map_or(0, |e| e.1),
            ..WireTrace::default()
        }
    }

    #[test]
    fn pieces_merge_per_thread() {
        let mut acc = Trace::default();
        merge_trace(
            &mut acc,
            piece(1, &[(2, 10), (3, 20)]).into_trace().unwrap(),
        );
        merge_trace(&mut acc, piece(2, &[(1, 5)]).into_trace().unwrap());
        merge_trace(&mut acc, piece(1, &[(2, 30)]).into_trace().unwrap());
        assert_eq!(acc.pid, 7);
        assert_eq!(acc.start_ns, 5);
        assert_eq!(acc.threads.len(), 2);
        assert_eq!(acc.threads[0].events.len(), 3);
        assert_eq!(acc.threads[0].lost, 2);
        assert_eq!(acc.symbols.len(), 1);
        assert_eq!(acc.symbols.name_of(0x1000), Some("f"));
    }

    #[test]
    fn a_size_learned_in_a_later_piece_is_kept() {
        let mut acc = Trace::default();
        let mut first = piece(1, &[(1, 10)]);
        // The callee, named exactly and without a size.
        first.symbols = vec![WireSymbol {
            addr: 0x2000,
            size: 0,
            name: "luaH_free".into(),
        }];
        merge_trace(&mut acc, first.into_trace().unwrap());
        let mut later = piece(1, &[(1, 20)]);
        // The same function, now containing a caller address.
        later.symbols = vec![WireSymbol {
            addr: 0x2000,
            size: 0x100,
            name: "luaH_free".into(),
        }];
        merge_trace(&mut acc, later.into_trace().unwrap());
        assert_eq!(acc.symbols.name_of(0x2042), Some("luaH_free"));
    }

    #[test]
    fn split_front_keeps_every_event_once() {
        let mut w = piece(1, &[(1, 1), (1, 2), (1, 3)]);
        w.append(piece(2, &[(1, 4), (1, 5)]));
        let a = w.split_front(4);
        assert_eq!(a.event_count(), 4);
        assert_eq!(w.event_count(), 1);
        assert_eq!(w.threads[0].tid, 2);
        assert!(Event::try_from(WireEvent(9, 0, 0, 0)).is_err());
        assert!(Event::try_from(WireEvent(2, 0, 0, u64::MAX)).is_err());
    }
}
