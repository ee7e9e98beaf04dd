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

use std::collections::HashMap;
use std::io::{self, Write};

use crate::calls::CallTree;
use crate::model::{ProfileRow, Trace};

/// Profile rows sorted by total time, longest first (then by self time,
/// calls, and name, so the order is stable).
pub fn compute(trace: &Trace) -> Vec<ProfileRow> {
    let mut rows: HashMap<String, ProfileRow> = HashMap::new();
    fn row<'a>(rows: &'a mut HashMap<String, ProfileRow>, name: &str) -> &'a mut ProfileRow {
        rows.entry(name.to_string()).or_insert_with(|| ProfileRow {
            name: name.to_string(),
            min_ns: u64::MAX,
            ..Default::default()
        })
    }

    for thread in &trace.threads {
        let tree = CallTree::build(thread);
        let names: Vec<String> = tree
            .calls
            .iter()
            .map(|c| trace.symbols.display(c.func).into_owned())
            .collect();
        // How many completed calls of each function are on the stack while
        // walking the tree: a call nested in one adds no total time.
        let mut active: HashMap<&str, u32> = HashMap::new();
        // (call, leaving?) so a call is popped after its subtree.
        let mut todo: Vec<(usize, bool)> = tree.roots.iter().rev().map(|&c| (c, false)).collect();
        while let Some((id, leaving)) = todo.pop() {
            let name = names[id].as_str();
            let Some(duration) = tree.calls[id].duration() else {
                if !leaving {
                    todo.extend(tree.calls[id].children.iter().rev().map(|&c| (c, false)));
                }
                continue;
            };
            let depth = active.entry(name).or_insert(0);
            if leaving {
                *depth -= 1;
                continue;
            }
            let r = row(&mut rows, name);
            r.calls += 1;
            if *depth == 0 {
                r.total_ns += duration;
            }
            r.self_ns += tree.self_time(id).unwrap_or(duration);
            r.min_ns = r.min_ns.min(duration);
            r.max_ns = r.max_ns.max(duration);
            *depth += 1;
            todo.push((id, true));
            todo.extend(tree.calls[id].children.iter().rev().map(|&c| (c, false)));
        }
        for instant in &tree.instants {
            row(&mut rows, &trace.symbols.display(instant.func)).calls += 1;
        }
    }

    let mut rows: Vec<ProfileRow> = rows
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

fn sort(rows: &mut [ProfileRow]) {
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
