//! Folded stacks, the input format of Brendan Gregg's `flamegraph.pl` and of
//! `inferno-flamegraph`, and flame graph SVGs drawn with the `inferno`
//! crate.
//!
//! ```text
//! main;parse 25200
//! main;parse;lex 700
//! worker;leaf 50
//! ```
//!
//! One line per distinct stack, outermost function first, frames joined by
//! `;`, then a space and the stack's weight. Lines are sorted by stack; a
//! stack whose weight is 0 is left out. Threads are merged, so a stack's
//! weight is the sum over all threads. Two weights:
//!
//! * [`Weight::SelfTime`] (function-graph traces): each completed call adds
//!   its self time in ns (its duration less its completed callees') to its
//!   stack, so the weights sum to the profile's total self time, and the
//!   width of a frame in the flame graph is the time spent in it. Calls
//!   without a known duration add nothing themselves but still appear as
//!   callers in their callees' stacks, including calls rebuilt from orphan
//!   exits (see the crate documentation).
//! * [`Weight::Calls`] (function-tracer traces): each call adds 1. A Call
//!   event's stack is `caller;func` (all the function tracer knows) or, when
//!   it happened inside a graph call, that call's stack then `func`; every
//!   graph call (completed or not) counts once on its own stack.
//!
//! [`Weight::for_trace`] picks `SelfTime` when the trace has any Entry or
//! Exit event, else `Calls`. A `;` inside a function name (Rust's `[u8; 4]`)
//! would split the frame, so it is written as `,`; line breaks as spaces.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};

use crate::calls::CallTree;
use crate::model::{Event, Trace};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// Self time in ns of completed calls.
    SelfTime,
    /// Number of calls.
    Calls,
}

impl Weight {
    /// `SelfTime` for traces with Entry/Exit events, else `Calls`.
    pub fn for_trace(trace: &Trace) -> Weight {
        let graph = trace
            .threads
            .iter()
            .flat_map(|t| &t.events)
            .any(|e| !matches!(e, Event::Call { .. }));
        if graph {
            Weight::SelfTime
        } else {
            Weight::Calls
        }
    }

    /// What the weight counts, for a flame graph's tooltips.
    pub fn unit(self) -> &'static str {
        match self {
            Weight::SelfTime => "ns",
            Weight::Calls => "calls",
        }
    }
}

fn frame(name: &str) -> String {
    name.replace(';', ",").replace(['\n', '\r'], " ")
}

/// Stack (frames joined by `;`) -> weight, without zero weights.
pub fn stacks(trace: &Trace, weight: Weight) -> BTreeMap<String, u64> {
    let syms = &trace.symbols;
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for thread in &trace.threads {
        let tree = CallTree::build(thread);
        let stack_of = |id: usize| -> String {
            tree.path(id)
                .into_iter()
                .map(|f| frame(&syms.display(f)))
                .collect::<Vec<_>>()
                .join(";")
        };
        match weight {
            Weight::SelfTime => {
                for id in 0..tree.calls.len() {
                    if let Some(self_ns) = tree.self_time(id) {
                        *stacks.entry(stack_of(id)).or_default() += self_ns;
                    }
                }
            }
            Weight::Calls => {
                for id in 0..tree.calls.len() {
                    if tree.calls[id].entry.is_some() {
                        *stacks.entry(stack_of(id)).or_default() += 1;
                    }
                }
                for instant in &tree.instants {
                    let caller = match instant.parent {
                        Some(parent) => stack_of(parent),
                        None => frame(&syms.display(instant.caller)),
                    };
                    let stack = format!("{caller};{}", frame(&syms.display(instant.func)));
                    *stacks.entry(stack).or_default() += 1;
                }
            }
        }
    }
    stacks.retain(|_, w| *w > 0);
    stacks
}

/// Writes folded stacks weighted by [`Weight::for_trace`], and returns it.
pub fn write<W: Write>(trace: &Trace, out: W) -> io::Result<Weight> {
    let weight = Weight::for_trace(trace);
    write_with(trace, weight, out)?;
    Ok(weight)
}

/// Writes folded stacks with the given weight.
pub fn write_with<W: Write>(trace: &Trace, weight: Weight, out: W) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    for (stack, w) in stacks(trace, weight) {
        writeln!(out, "{stack} {w}")?;
    }
    out.flush()
}

/// Draws a flame graph SVG of the trace's folded stacks
/// ([`Weight::for_trace`]) with inferno, titled with the program's name.
/// Fails with `InvalidData` when there is nothing to draw (inferno's
/// "no stack counts found").
pub fn flamegraph<W: Write>(trace: &Trace, out: W) -> io::Result<()> {
    let weight = Weight::for_trace(trace);
    let lines: Vec<String> = stacks(trace, weight)
        .into_iter()
        .map(|(stack, w)| format!("{stack} {w}"))
        .collect();
    if lines.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no stacks to draw: the trace has no completed calls",
        ));
    }
    let program = trace.program.rsplit('/').next().unwrap_or(&trace.program);
    let mut options = inferno::flamegraph::Options::default();
    options.title = match weight {
        Weight::SelfTime => format!("{program} (pid {}): time", trace.pid),
        Weight::Calls => format!("{program} (pid {}): calls", trace.pid),
    };
    options.count_name = weight.unit().to_string();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}
