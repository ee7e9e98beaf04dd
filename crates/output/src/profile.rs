//! Per-function profile rows, and a table in the layout of `uftrace report`:
//!
//! ```text
//!   Total time   Self time       Calls   Total min   Total max  Function
//!   ==========  ==========  ==========  ==========  ==========  ====================
//!   200.000 us  200.000 us           1  200.000 us  200.000 us  foo_init
//!    26.200 us   25.400 us           2      300 ns   25.900 us  parse
//! ```
//!
//! Rows are per function *name* (as `uftrace report` merges them), over
//! every thread:
//!
//! * `calls` counts completed calls (Entry and Exit both seen), plus
//!   function-tracer Call events, which have no duration;
//! * `total_ns` is the time inside the function, each call's duration
//!   counted only when no caller up its stack is a completed call of the
//!   same function, so recursion is not counted twice;
//! * `self_ns` is each completed call's duration less its completed
//!   callees' durations, summed over every call, recursive ones included;
//! * `min_ns`/`max_ns` are over each completed call's own duration
//!   (recursive calls included), 0 when none has a duration.
//!
//! Calls without a known duration (unfinished at the end of the trace, or
//! orphan exits whose entry was overwritten) are left out, while their
//! completed callees count; their callers' self time keeps the time they
//! took. `uftrace report` instead closes unfinished calls at the last
//! timestamp and counts orphan exits as calls.
//!
//! Streamed ([`Profile`]): rows are kept per function address (named and
//! merged by name at the end) and each thread's open calls, nothing else.
//! A recursive call's duration is held by its innermost open caller of the
//! same function, and counted only if that caller never completes.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::model::{Event, LossReason, Process, ProfileRow, Summary, Symbols, Trace};
use crate::sink::{feed, land, Landing, Order, Sink, Threads, MAX_OPEN};

#[derive(Clone, Copy)]
struct Row {
    calls: u64,
    total_ns: u64,
    self_ns: u64,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Row {
    fn default() -> Self {
        Row {
            calls: 0,
            total_ns: 0,
            self_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

struct Frame {
    func: u64,
    depth: u32,
    entry: u64,
    /// Durations of its completed callees.
    children: u64,
    /// Durations of completed recursive calls of the same function inside
    /// it, counted in the total only if it does not complete.
    nested_total: u64,
}

#[derive(Default)]
struct ProfileThread {
    stack: Vec<Frame>,
}

/// Profile rows, aggregated as events stream in.
#[derive(Default)]
pub struct Profile {
    threads: Threads<ProfileThread>,
    rows: HashMap<u64, Row>,
}

impl Profile {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops open calls from `from` up (they have no duration).
    fn abandon(&mut self, tid: u32, from: usize) {
        let rows = &mut self.rows;
        let stack = &mut self.threads.get(tid).state.stack;
        while stack.len() > from {
            let frame = stack.pop().expect("len > from");
            if frame.nested_total == 0 {
                continue;
            }
            // What its recursive calls held goes to the next open call of
            // the same function below, or to the total.
            match stack.iter().rposition(|f| f.func == frame.func) {
                Some(j) => stack[j].nested_total += frame.nested_total,
                None => rows.entry(frame.func).or_default().total_ns += frame.nested_total,
            }
        }
    }

    /// Rows named through `names`, merged by name, sorted by total time
    /// (longest first; then self time, calls, name). Complete after
    /// [`Sink::finish`].
    pub fn rows(&self, names: &Symbols) -> Vec<ProfileRow> {
        let mut by_name: HashMap<String, ProfileRow> = HashMap::new();
        for (&func, r) in &self.rows {
            let name = names.display(func).into_owned();
            let row = by_name.entry(name.clone()).or_insert_with(|| ProfileRow {
                name,
                min_ns: u64::MAX,
                ..Default::default()
            });
            row.calls += r.calls;
            row.total_ns += r.total_ns;
            row.self_ns += r.self_ns;
            row.min_ns = row.min_ns.min(r.min_ns);
            row.max_ns = row.max_ns.max(r.max_ns);
        }
        let mut rows: Vec<ProfileRow> = by_name
            .into_values()
            .map(|mut r| {
                if r.min_ns == u64::MAX {
                    r.min_ns = 0;
                }
                r
            })
            .collect();
        sort(&mut rows);
        rows
    }
}

impl Sink for Profile {
    fn begin(&mut self, _process: &Process) -> io::Result<()> {
        Ok(())
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name);
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, _names: &Symbols) -> io::Result<()> {
        let stack = &mut self.threads.event(tid, event.ts()).state.stack;
        match event {
            Event::Entry { ts, func, depth } => {
                if stack.len() < MAX_OPEN {
                    stack.push(Frame {
                        func,
                        depth,
                        entry: ts,
                        children: 0,
                        nested_total: 0,
                    });
                }
            }
            Event::Exit { ts, func, depth } => {
                match land(stack, func, depth, |f| (f.func, f.depth)) {
                    Landing::Closes(i) => {
                        self.abandon(tid, i + 1);
                        let stack = &mut self.threads.get(tid).state.stack;
                        let call = stack.pop().expect("the closed call is on top");
                        let duration = ts.saturating_sub(call.entry);
                        let row = self.rows.entry(func).or_default();
                        row.calls += 1;
                        row.self_ns += duration.saturating_sub(call.children);
                        row.min_ns = row.min_ns.min(duration);
                        row.max_ns = row.max_ns.max(duration);
                        match stack.iter().rposition(|f| f.func == func) {
                            Some(j) => stack[j].nested_total += duration,
                            None => row.total_ns += duration,
                        }
                        if let Some(parent) = stack.last_mut() {
                            parent.children += duration;
                        }
                    }
                    Landing::Orphan(i) => self.abandon(tid, i),
                }
            }
            Event::Call { func, .. } => self.rows.entry(func).or_default().calls += 1,
        }
        Ok(())
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.threads.lost(tid, count, reason);
        Ok(())
    }

    fn finish(&mut self, _names: &Symbols) -> io::Result<Summary> {
        let tids: Vec<u32> = self.threads.iter().map(|t| t.summary.tid).collect();
        for tid in tids {
            self.abandon(tid, 0);
        }
        Ok(self.threads.summary())
    }
}

/// Profile rows sorted by total time, longest first (then by self time,
/// calls, and name, so the order is stable).
pub fn compute(trace: &Trace) -> Vec<ProfileRow> {
    let mut profile = Profile::new();
    feed(trace, Order::ByThread, &mut profile).expect("aggregating in memory does not fail");
    profile.rows(&trace.symbols)
}

/// The profile table, written at the end.
pub struct ProfileTable<W: Write> {
    profile: Profile,
    out: W,
}

impl<W: Write> ProfileTable<W> {
    pub fn new(out: W) -> Self {
        ProfileTable {
            profile: Profile::new(),
            out,
        }
    }
}

impl<W: Write> Sink for ProfileTable<W> {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.profile.begin(process)
    }
    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.profile.thread(tid, name)
    }
    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        self.profile.event(tid, event, names)
    }
    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.profile.lost(tid, count, reason)
    }
    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        let summary = self.profile.finish(names)?;
        write_table(&self.profile.rows(names), &mut self.out)?;
        if summary.lost() > 0 {
            writeln!(self.out)?;
            for t in summary.threads.iter().filter(|t| !t.losses.is_empty()) {
                writeln!(self.out, "# TID:{} {}", t.tid, t.losses.describe())?;
            }
        }
        self.out.flush()?;
        Ok(summary)
    }
}

pub(crate) fn sort(rows: &mut [ProfileRow]) {
    rows.sort_by(|a, b| {
        b.total_ns
            .cmp(&a.total_ns)
            .then(b.self_ns.cmp(&a.self_ns))
            .then(b.calls.cmp(&a.calls))
            .then(a.name.cmp(&b.name))
    });
}

/// A duration in the largest unit that keeps it at or above 1: `780 ns`,
/// `1.234 us`, `25.900 ms`, `3.000 s`.
pub fn format_duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.3} us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.3} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

/// Writes `rows` as an aligned table sorted by total time, longest first.
pub fn write_table<W: Write>(rows: &[ProfileRow], mut out: W) -> io::Result<()> {
    let mut rows = rows.to_vec();
    sort(&mut rows);
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                format_duration(r.total_ns),
                format_duration(r.self_ns),
                r.calls.to_string(),
                format_duration(r.min_ns),
                format_duration(r.max_ns),
            ]
        })
        .collect();
    const HEADERS: [&str; 5] = ["Total time", "Self time", "Calls", "Total min", "Total max"];
    let mut widths = [10usize; 5];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = String::new();
    for (w, h) in widths.iter().zip(HEADERS) {
        line.push_str(&format!("  {h:>w$}"));
    }
    writeln!(out, "{line}  Function")?;
    line.clear();
    for w in widths {
        line.push_str(&format!("  {}", "=".repeat(w)));
    }
    writeln!(out, "{line}  ====================")?;
    for (row, r) in cells.iter().zip(&rows) {
        line.clear();
        for (w, cell) in widths.iter().zip(row) {
            line.push_str(&format!("  {cell:>w$}"));
        }
        writeln!(out, "{line}  {}", r.name)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(format_duration(0), "0 ns");
        assert_eq!(format_duration(999), "999 ns");
        assert_eq!(format_duration(1_000), "1.000 us");
        assert_eq!(format_duration(25_900), "25.900 us");
        assert_eq!(format_duration(1_234_567), "1.235 ms");
        assert_eq!(format_duration(3_000_000_000), "3.000 s");
        assert_eq!(format_duration(4_000_000_000_000), "4000.000 s");
    }
}
