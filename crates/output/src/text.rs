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
//! One line per call, in the order the events are given: [`write_function`]
//! merges a trace's threads in time order, as the kernel merges its per-CPU
//! buffers ([`crate::sink::merge_by_time`] does it for other sources). The kernel's `comm-pid` column is the
//! thread's `name-tid` (`<...>` when it has no name). The kernel's `[cpu]`
//! and `irqs-off/need-resched/hardirq/preempt-depth` flag columns are
//! dropped: a user-space tracer knows neither. Timestamps are absolute
//! `CLOCK_MONOTONIC` seconds with 9 decimals instead of the kernel's 6
//! (as `trace-cmd report -t` prints them), because user-space calls are
//! often less than a microsecond apart. `func <-caller` is as in the kernel;
//! graph traces are shown too, each Entry as a call from the enclosing
//! traced function open at that moment (no `<-` when there is none, as for
//! a call whose caller's entry was lost). Exits are not shown.
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
//! `print_graph_duration`; the tid column is as wide as the pid (at least 3).
//! A call whose exit is the thread's very next event is a leaf, printed on
//! one line. Events are printed in the order given, under a separator
//! naming the thread each time the thread changes (the kernel's
//! context-switch marker): [`write_function_graph`] gives each thread
//! whole, one after another, because a call tree is only readable when it
//! is not interleaved with other threads'. Orphan exits (their entry was
//! overwritten) print a closing brace without a duration, as the kernel's
//! would without its entry time; calls still running at the end have no
//! closing line, and are listed in a comment at the end. Function-tracer
//! Call events print as comments at the current depth, the way the kernel
//! shows non-graph events inside a graph.
//!
//! Both layouts report lost events where they happened with the kernel's
//! `[LOST n EVENTS]` line (`TID:` instead of `CPU:`), calls dropped for
//! exceeding the tracer's depth limit in a comment, and end with each
//! thread's kept and lost counts and why (a stream cannot know them when
//! its header is written).
//!
//! Memory: per thread, its open calls (graph) or their functions
//! (function), bounded by the nesting depth.

use std::io::{self, Write};

use crate::model::{Event, LossReason, Process, Summary, Symbols, Trace};
use crate::sink::{feed, land, Landing, Open, Order, Sink, Threads, MAX_OPEN};

fn comm(name: &str) -> &str {
    if name.is_empty() {
        "<...>"
    } else {
        name
    }
}

fn write_preamble<W: Write>(process: &Process, tracer: &str, out: &mut W) -> io::Result<()> {
    writeln!(out, "# tracer: {tracer}")?;
    writeln!(out, "#")?;
    let mut command = process.program.clone();
    for arg in &process.cmdline {
        command.push(' ');
        command.push_str(arg);
    }
    writeln!(
        out,
        "# livetrace: pid {} {}",
        process.pid,
        one_line(&command)
    )?;
    writeln!(out, "# events kept and lost per thread: at the end")?;
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

fn write_loss<W: Write>(tid: u32, count: u64, reason: LossReason, out: &mut W) -> io::Result<()> {
    match reason {
        LossReason::DepthLimit => writeln!(
            out,
            "# TID:{tid} {count} calls deeper than the depth limit not recorded"
        ),
        _ => writeln!(out, "TID:{tid} [LOST {count} EVENTS]"),
    }
}

/// The closing comment: totals, then one line per thread.
fn write_footer<W: Write>(summary: &Summary, out: &mut W) -> io::Result<()> {
    writeln!(out, "#")?;
    writeln!(
        out,
        "# entries: {} in {} threads, {} lost",
        summary.events(),
        summary.threads.len(),
        summary.lost()
    )?;
    for t in &summary.threads {
        writeln!(
            out,
            "# TID:{} {}: {} events, {}",
            t.tid,
            comm(&t.name),
            t.events,
            t.losses.describe()
        )?;
    }
    Ok(())
}

#[derive(Default)]
struct FunctionState {
    /// Functions of the open graph calls, for the `<-caller` of the next.
    stack: Vec<(u64, u32)>,
}

/// The `function` layout, streamed.
pub struct FunctionText<W: Write> {
    out: W,
    threads: Threads<FunctionState>,
}

impl<W: Write> FunctionText<W> {
    pub fn new(out: W) -> Self {
        FunctionText {
            out,
            threads: Threads::default(),
        }
    }

    /// The writer, once finished.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for FunctionText<W> {
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn begin(&mut self, process: &Process) -> io::Result<()> {
        write_preamble(process, "function", &mut self.out)?;
        // Columns: comm to 15, '-', tid 17..=23, seconds 25..=29, '.', ns to
        // 39, ':', function from 42.
        writeln!(
            self.out,
            "#           TASK-TID        TIMESTAMP     FUNCTION"
        )?;
        writeln!(self.out, "{}", ruler(&[15, 17, 32, 45]))
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name);
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        let thread = self.threads.event(tid, event.ts());
        let stack = &mut thread.state.stack;
        let (ts, func, caller) = match event {
            Event::Entry { ts, func, depth } => {
                let caller = stack.last().map(|&(f, _)| f);
                if stack.len() < MAX_OPEN {
                    stack.push((func, depth));
                }
                (ts, func, caller)
            }
            Event::Exit { func, depth, .. } => {
                match land(stack, func, depth, |&f| f) {
                    Landing::Closes(i) | Landing::Orphan(i) => stack.truncate(i),
                }
                return Ok(());
            }
            Event::Call { ts, func, caller } => (ts, func, Some(caller)),
        };
        write!(
            self.out,
            "{:>16}-{:<7} {:>5}.{:09}: {}",
            comm(&thread.summary.name),
            tid,
            ts / 1_000_000_000,
            ts % 1_000_000_000,
            names.display(func)
        )?;
        match caller {
            Some(caller) => writeln!(self.out, " <-{}", names.display(caller)),
            None => writeln!(self.out),
        }
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.threads.lost(tid, count, reason);
        write_loss(tid, count, reason, &mut self.out)
    }

    fn finish(&mut self, _names: &Symbols) -> io::Result<Summary> {
        let summary = self.threads.summary();
        write_footer(&summary, &mut self.out)?;
        self.out.flush()?;
        Ok(summary)
    }
}

/// Writes the `function` tracer layout, threads merged in time order.
pub fn write_function<W: Write>(trace: &Trace, out: W) -> io::Result<()> {
    feed(trace, Order::ByTime, &mut FunctionText::new(out)).map(|_| ())
}

#[derive(Default)]
struct GraphState {
    stack: Vec<Open>,
    /// Depth of what is printed next (the comment of a Call event).
    depth_now: u32,
}

/// The `function_graph` layout, streamed.
pub struct GraphText<W: Write> {
    out: W,
    threads: Threads<GraphState>,
    width: usize,
    /// The thread whose section is being printed.
    current: Option<u32>,
    /// The current thread's latest Entry and its name, not printed yet: a
    /// leaf if its exit comes next.
    pending: Option<(Open, String)>,
    /// ` TID) ` of the current thread.
    prefix: String,
    line: String,
}

impl<W: Write> GraphText<W> {
    pub fn new(out: W) -> Self {
        GraphText {
            out,
            threads: Threads::default(),
            width: 3,
            current: None,
            pending: None,
            prefix: String::new(),
            line: String::with_capacity(256),
        }
    }

    /// The writer, once finished.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Writes one line: prefix, duration column, indent, then `body`'s
    /// parts.
    fn write_line(&mut self, duration: Option<u64>, depth: u32, body: &[&str]) -> io::Result<()> {
        let line = &mut self.line;
        line.clear();
        line.push_str(&self.prefix);
        push_duration(line, duration);
        push_indent(line, depth);
        for part in body {
            line.push_str(part);
        }
        line.push('\n');
        self.out.write_all(line.as_bytes())
    }

    /// Prints the pending entry as an opening line.
    fn flush_pending(&mut self) -> io::Result<()> {
        let Some((open, name)) = self.pending.take() else {
            return Ok(());
        };
        self.write_line(None, open.depth, &[&name, parens(&name), " {"])
    }

    /// Makes `tid` the thread being printed, under a separator.
    fn switch_to(&mut self, tid: u32) -> io::Result<()> {
        if self.current == Some(tid) {
            return Ok(());
        }
        self.flush_pending()?;
        self.current = Some(tid);
        let name = self.threads.get(tid).summary.name.clone();
        self.prefix = format!(" {:>width$}) ", tid, width = self.width);
        let prefix = &self.prefix;
        writeln!(self.out)?;
        writeln!(self.out, " ------------------------------------------")?;
        writeln!(self.out, "{prefix} {}-{tid}", comm(&name))?;
        writeln!(self.out, " ------------------------------------------")?;
        writeln!(self.out)
    }
}

fn push_indent(line: &mut String, depth: u32) {
    const SPACES: &str = "                                                                ";
    let mut n = depth as usize * 2;
    while n > 0 {
        let k = n.min(SPACES.len());
        line.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// C++ names already carry their parameter list.
fn parens(name: &str) -> &'static str {
    if name.ends_with(')') || name.ends_with(" const") {
        ""
    } else {
        "()"
    }
}

impl<W: Write> Sink for GraphText<W> {
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn begin(&mut self, process: &Process) -> io::Result<()> {
        write_preamble(process, "function_graph", &mut self.out)?;
        let width = process.pid.to_string().len().max(3);
        self.width = width;
        // Columns: tid 1..=width, ')', overhead mark at width + 3, duration
        // digits from width + 5, the bar at width + 17, functions from
        // width + 20.
        let func_col = width + 20;
        let mut header = format!("#{:>width$}", "TID");
        pad_to(&mut header, width + 5);
        header.push_str("DURATION");
        pad_to(&mut header, func_col);
        header.push_str("FUNCTION CALLS");
        writeln!(self.out, "{header}")?;
        let marks = [0, 5, 9, 20, 24, 28, 32].map(|offset| width + offset);
        writeln!(self.out, "{}", ruler(&marks))
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name);
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        self.threads.event(tid, event.ts());
        self.switch_to(tid)?;
        match event {
            Event::Entry { ts, func, depth } => {
                self.flush_pending()?;
                let state = &mut self.threads.get(tid).state;
                state.depth_now = depth + 1;
                let open = Open {
                    func,
                    depth,
                    entry: ts,
                };
                if state.stack.len() < MAX_OPEN {
                    state.stack.push(open);
                }
                self.pending = Some((open, names.display(func).into_owned()));
            }
            Event::Exit { ts, func, depth } => {
                let leaf = self
                    .pending
                    .take_if(|(p, _)| p.func == func && p.depth == depth);
                let state = &mut self.threads.get(tid).state;
                state.depth_now = depth;
                let duration = match land(&state.stack, func, depth, |o| (o.func, o.depth)) {
                    Landing::Closes(i) => {
                        let entry = state.stack[i].entry;
                        state.stack.truncate(i);
                        Some(ts.saturating_sub(entry))
                    }
                    Landing::Orphan(i) => {
                        state.stack.truncate(i);
                        None
                    }
                };
                if let Some((_, name)) = leaf {
                    self.write_line(duration, depth, &[&name, parens(&name), ";"])?;
                } else {
                    self.flush_pending()?;
                    let name = names.display(func);
                    self.write_line(duration, depth, &["} /* ", &name, " */"])?;
                }
            }
            Event::Call { func, caller, .. } => {
                self.flush_pending()?;
                let depth_now = self.threads.get(tid).state.depth_now;
                let (f, c) = (names.display(func), names.display(caller));
                self.write_line(None, depth_now, &["/* ", &f, " <-", &c, " */"])?;
            }
        }
        Ok(())
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.threads.lost(tid, count, reason);
        self.switch_to(tid)?;
        write_loss(tid, count, reason, &mut self.out)
    }

    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        self.flush_pending()?;
        for t in self.threads.iter() {
            if t.state.stack.is_empty() {
                continue;
            }
            let open: Vec<String> = t
                .state
                .stack
                .iter()
                .map(|o| names.display(o.func).into_owned())
                .collect();
            writeln!(
                self.out,
                "# TID:{} still running at the end of the trace: {}",
                t.summary.tid,
                open.join(" > ")
            )?;
        }
        let summary = self.threads.summary();
        write_footer(&summary, &mut self.out)?;
        self.out.flush()?;
        Ok(summary)
    }
}

/// Writes the `function_graph` tracer layout, each thread whole.
pub fn write_function_graph<W: Write>(trace: &Trace, out: W) -> io::Result<()> {
    feed(trace, Order::ByThread, &mut GraphText::new(out)).map(|_| ())
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
#[cfg(test)]
fn duration_field(ns: Option<u64>) -> String {
    let mut field = String::new();
    push_duration(&mut field, ns);
    field
}

fn push_duration(line: &mut String, ns: Option<u64>) {
    let Some(ns) = ns else {
        line.push_str("              |  ");
        return;
    };
    line.push(mark(ns));
    line.push(' ');
    let mut buf = itoa::Buffer::new();
    let usecs = buf.format(ns / 1000);
    line.push_str(usecs);
    let mut len = usecs.len();
    if len < 7 {
        let frac = ns % 1000;
        let digits = [
            (b'0' + (frac / 100) as u8) as char,
            (b'0' + (frac / 10 % 10) as u8) as char,
            (b'0' + (frac % 10) as u8) as char,
        ];
        let keep = (7 - len).min(3);
        line.push('.');
        line.extend(&digits[..keep]);
        len += keep + 1;
    }
    line.push_str(" us ");
    for _ in len..8 {
        line.push(' ');
    }
    line.push_str("|  ");
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
