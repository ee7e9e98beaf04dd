//! ftrace-style text, in the two layouts of the kernel's
//! `Documentation/trace/ftrace.rst`: the `function` tracer's and the
//! `function_graph` tracer's (with `funcgraph-tail`).
//!
//! # `function`
//!
//! ```text
//! # tracer: function
//! #
//! #           TASK-TID          TIMESTAMP  FUNCTION
//! #              | |                |         |
//!             demo-4242     1000.000000100: parse <-main
//! ```
//!
//! One line per call, all threads merged in time order, as the kernel
//! merges its per-CPU buffers. The kernel's `comm-pid` column is the
//! thread's `name-tid` (`<...>` when it has no name). The kernel's `[cpu]`
//! and `irqs-off/need-resched/hardirq/preempt-depth` flag columns are
//! dropped: a user-space tracer knows neither. Timestamps are absolute
//! `CLOCK_MONOTONIC` seconds with 9 decimals instead of the kernel's 6
//! (as `trace-cmd report -t` prints them), because user-space calls are
//! often less than a microsecond apart. `func <-caller` is as in the kernel;
//! graph traces are shown too, each Entry as a call from the enclosing
//! traced function (no `<-` when there is none). Exits are not shown.
//!
//! # `function_graph`
//!
//! ```text
//! # tracer: function_graph
//! #
//! #  TID  DURATION                  FUNCTION CALLS
//! #   |   |   |                     |   |   |   |
//!  4242)               |  main() {
//!  4242)   0.500 us    |    lex();
//!  4242) + 25.900 us   |  } /* parse */
//! ```
//!
//! The kernel's layout with `funcgraph-tail` (every closing brace names its
//! function), with the thread id where the kernel prints the CPU. Durations,
//! the overhead marks (`+` > 10 us, `!` > 100 us, `#` > 1 ms, `*` > 10 ms,
//! `@` > 100 ms, `$` > 1 s) and the column widths follow the kernel's
//! `print_graph_duration`. A call whose exit is the very next event is a
//! leaf, printed on one line. Unlike the kernel, which merges CPUs, each
//! thread is printed whole, one after another under a separator, because a
//! call tree is only readable when it is not interleaved with other
//! threads'. Orphan exits (their entry was overwritten) print a closing
//! brace without a duration, as the kernel's would without its entry time;
//! calls still running at the end have no closing line, and are listed in a
//! comment at the end of their thread. Function-tracer Call events print as
//! comments at the current depth, the way the kernel shows non-graph events
//! inside a graph.
//!
//! Both layouts report each thread's lost events with the kernel's
//! `[LOST n EVENTS]` line (`TID:` instead of `CPU:`), and calls dropped
//! for exceeding the tracer's depth limit in a comment.

use std::io::{self, Write};

use crate::calls::CallTree;
use crate::model::{Event, ThreadTrace, Trace};

fn comm(thread: &ThreadTrace) -> &str {
    if thread.name.is_empty() {
        "<...>"
    } else {
        &thread.name
    }
}

fn write_preamble<W: Write>(trace: &Trace, tracer: &str, out: &mut W) -> io::Result<()> {
    writeln!(out, "# tracer: {tracer}")?;
    writeln!(out, "#")?;
    let mut command = trace.program.clone();
    for arg in &trace.cmdline {
        command.push(' ');
        command.push_str(arg);
    }
    writeln!(out, "# livetrace: pid {} {}", trace.pid, one_line(&command))?;
    let events: usize = trace.threads.iter().map(|t| t.events.len()).sum();
    writeln!(
        out,
        "# entries: {events} in {} threads",
        trace.threads.len()
    )?;
    writeln!(out, "#")
}

fn pad_to(line: &mut String, col: usize) {
    while line.len() < col {
        line.push(' ');
    }
}

/// A `#` comment line with `|` at the given columns, under the header's
/// column names as the kernel draws them.
fn ruler(cols: &[usize]) -> String {
    let mut line = String::from("#");
    for &col in cols {
        pad_to(&mut line, col);
        line.push('|');
    }
    line
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn write_losses<W: Write>(thread: &ThreadTrace, out: &mut W) -> io::Result<()> {
    if thread.lost > 0 {
        writeln!(out, "TID:{} [LOST {} EVENTS]", thread.tid, thread.lost)?;
    }
    if thread.depth_overflows > 0 {
        writeln!(
            out,
            "# TID:{} {} calls deeper than the depth limit not recorded",
            thread.tid, thread.depth_overflows
        )?;
    }
    Ok(())
}

/// Writes the `function` tracer layout.
pub fn write_function<W: Write>(trace: &Trace, mut out: W) -> io::Result<()> {
    write_preamble(trace, "function", &mut out)?;
    // Columns: comm to 15, '-', tid 17..=23, seconds 25..=29, '.', ns to
    // 39, ':', function from 42.
    writeln!(out, "#           TASK-TID        TIMESTAMP     FUNCTION")?;
    writeln!(out, "{}", ruler(&[15, 17, 32, 45]))?;
    for thread in &trace.threads {
        write_losses(thread, &mut out)?;
    }

    struct Line {
        ts: u64,
        thread: usize,
        func: u64,
        caller: Option<u64>,
    }
    let mut lines = Vec::new();
    for (t, thread) in trace.threads.iter().enumerate() {
        let tree = CallTree::build(thread);
        for call in &tree.calls {
            if let Some(ts) = call.entry {
                let caller = call.parent.map(|p| tree.calls[p].func);
                lines.push(Line {
                    ts,
                    thread: t,
                    func: call.func,
                    caller,
                });
            }
        }
        for instant in &tree.instants {
            lines.push(Line {
                ts: instant.ts,
                thread: t,
                func: instant.func,
                caller: Some(instant.caller),
            });
        }
    }
    // Stable: equal timestamps keep thread order, then event order.
    lines.sort_by_key(|l| l.ts);

    let syms = &trace.symbols;
    for line in lines {
        let thread = &trace.threads[line.thread];
        write!(
            out,
            "{:>16}-{:<7} {:>5}.{:09}: {}",
            comm(thread),
            thread.tid,
            line.ts / 1_000_000_000,
            line.ts % 1_000_000_000,
            syms.display(line.func)
        )?;
        match line.caller {
            Some(caller) => writeln!(out, " <-{}", syms.display(caller))?,
            None => writeln!(out)?,
        }
    }
    out.flush()
}

/// The kernel's overhead mark for a duration (`trace_find_mark`).
fn mark(ns: u64) -> char {
    const MARKS: [(u64, char); 6] = [
        (1_000_000_000, '$'),
        (100_000_000, '@'),
        (10_000_000, '*'),
        (1_000_000, '#'),
        (100_000, '!'),
        (10_000, '+'),
    ];
    MARKS
        .iter()
        .find(|&&(limit, _)| ns > limit)
        .map_or(' ', |&(_, m)| m)
}

/// The duration column up to and including `|  `: 14 columns then the bar,
/// as the kernel's `print_graph_duration` and `trace_print_graph_duration`
/// print it (at most 7 digits in all: 1234567 us drops the decimals).
fn duration_field(ns: Option<u64>) -> String {
    let Some(ns) = ns else {
        return format!("{:14}|  ", "");
    };
    let usecs = (ns / 1000).to_string();
    let mut field = format!("{} {usecs}", mark(ns));
    let mut len = usecs.len();
    if len < 7 {
        let decimals = format!("{:03}", ns % 1000);
        let keep = (7 - len).min(3);
        field.push('.');
        field.push_str(&decimals[..keep]);
        len += keep + 1;
    }
    field.push_str(" us ");
    for _ in len..8 {
        field.push(' ');
    }
    field.push_str("|  ");
    field
}

/// Writes the `function_graph` tracer layout.
pub fn write_function_graph<W: Write>(trace: &Trace, mut out: W) -> io::Result<()> {
    write_preamble(trace, "function_graph", &mut out)?;
    let width = trace
        .threads
        .iter()
        .map(|t| t.tid.to_string().len())
        .max()
        .unwrap_or(0)
        .max(3);
    // Columns: tid 1..=width, ')', overhead mark at width + 3, duration
    // digits from width + 5, the bar at width + 17, functions from width + 20.
    let func_col = width + 20;
    let mut header = format!("#{:>width$}", "TID");
    pad_to(&mut header, width + 5);
    header.push_str("DURATION");
    pad_to(&mut header, func_col);
    header.push_str("FUNCTION CALLS");
    writeln!(out, "{header}")?;
    let marks = [0, 5, 9, 20, 24, 28, 32].map(|offset| width + offset);
    writeln!(out, "{}", ruler(&marks))?;

    let syms = &trace.symbols;
    for thread in &trace.threads {
        let tree = CallTree::build(thread);
        let prefix = format!(" {:>width$}) ", thread.tid);
        writeln!(out)?;
        writeln!(out, " ------------------------------------------")?;
        writeln!(out, "{prefix} {}-{}", comm(thread), thread.tid)?;
        writeln!(out, " ------------------------------------------")?;
        writeln!(out)?;
        write_losses(thread, &mut out)?;

        // Which call each Entry/Exit event opens or closes.
        let mut call_of = vec![None; thread.events.len()];
        for (id, call) in tree.calls.iter().enumerate() {
            for idx in [call.entry_event, call.exit_event].into_iter().flatten() {
                call_of[idx] = Some(id);
            }
        }
        let indent = |depth: u32| "  ".repeat(depth as usize);
        let mut depth_now = 0u32;
        let mut skip_exit = None;
        for (idx, event) in thread.events.iter().enumerate() {
            match *event {
                Event::Entry { func, depth, .. } => {
                    depth_now = depth + 1;
                    let call = call_of[idx].map(|id| &tree.calls[id]);
                    let name = syms.display(func);
                    // C++ names already carry their parameter list.
                    let parens = if name.ends_with(')') || name.ends_with(" const") {
                        ""
                    } else {
                        "()"
                    };
                    if let Some(call) = call.filter(|c| c.exit_event == Some(idx + 1)) {
                        skip_exit = Some(idx + 1);
                        depth_now = depth;
                        writeln!(
                            out,
                            "{prefix}{}{}{name}{parens};",
                            duration_field(call.duration()),
                            indent(depth)
                        )?;
                    } else {
                        writeln!(
                            out,
                            "{prefix}{}{}{name}{parens} {{",
                            duration_field(None),
                            indent(depth)
                        )?;
                    }
                }
                Event::Exit { func, depth, .. } => {
                    depth_now = depth;
                    if skip_exit == Some(idx) {
                        continue;
                    }
                    let duration = call_of[idx].and_then(|id| tree.calls[id].duration());
                    writeln!(
                        out,
                        "{prefix}{}{}}} /* {} */",
                        duration_field(duration),
                        indent(depth),
                        syms.display(func)
                    )?;
                }
                Event::Call { func, caller, .. } => {
                    writeln!(
                        out,
                        "{prefix}{}{}/* {} <-{} */",
                        duration_field(None),
                        indent(depth_now),
                        syms.display(func),
                        syms.display(caller)
                    )?;
                }
            }
        }

        let open: Vec<String> = tree
            .preorder()
            .into_iter()
            .filter(|&id| {
                let call = &tree.calls[id];
                call.entry.is_some() && call.exit.is_none() && call.abandoned_at.is_none()
            })
            .map(|id| syms.display(tree.calls[id].func).into_owned())
            .collect();
        if !open.is_empty() {
            writeln!(
                out,
                "# TID:{} still running at the end of the trace: {}",
                thread.tid,
                open.join(" > ")
            )?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_formatted_like_the_kernel() {
        // Examples from Documentation/trace/ftrace.rst.
        assert_eq!(duration_field(Some(1_382)), "  1.382 us    |  ");
        assert_eq!(duration_field(Some(11_071)), "+ 11.071 us   |  ");
        assert_eq!(duration_field(Some(1_000_383_000)), "$ 1000383 us  |  ");
        assert_eq!(duration_field(Some(123_456_789)), "@ 123456.7 us |  ");
        assert_eq!(duration_field(Some(100_001)), "! 100.001 us  |  ");
        assert_eq!(duration_field(Some(10_000)), "  10.000 us   |  ");
        assert_eq!(duration_field(None), "              |  ");
        assert_eq!(
            duration_field(Some(1_382)).len(),
            duration_field(None).len()
        );
    }
}
