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
//! Exit event, else `Calls` (a stream decides at its end). A `;` inside a
//! function name (Rust's `[u8; 4]`) would split the frame, so it is written
//! as `,`; line breaks as spaces.
//!
//! Streamed ([`Folded`]): no event is kept. Each call adds its weight to
//! its stack when it returns (self time) or starts (calls), so memory is
//! one entry per distinct stack, plus each thread's open calls. Stacks are
//! keyed by addresses and named at the end, through the final symbols.
//! The calls of a thread that started recording mid-stack have callers
//! that only a later orphan exit names: their stacks are held per thread,
//! grouped by the depth they hang from, until an orphan exit adopts them
//! (its function becomes their outermost frame) or nothing shallower can
//! any more (depth 0, or the end). This gives the same stacks as building
//! the whole call tree would (see the crate documentation on orphans),
//! except that an orphan exit with a known open caller adopts nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Write};

use crate::model::{Event, LossReason, Process, Summary, Symbols, Trace};
use crate::sink::{feed, land, Landing, Order, Sink, Threads, MAX_OPEN};

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

/// Stack (addresses, outermost first) -> [self ns, calls].
type Stacks = HashMap<Box<[u64]>, [u64; 2]>;

const SELF: usize = 0;
const CALLS: usize = 1;

fn add_to(stacks: &mut Stacks, path: &[u64], w: [u64; 2]) {
    match stacks.get_mut(path) {
        Some(v) => {
            v[SELF] += w[SELF];
            v[CALLS] += w[CALLS];
        }
        None => {
            stacks.insert(path.into(), w);
        }
    }
}

fn merge_into(into: &mut Stacks, from: Stacks) {
    if into.is_empty() {
        *into = from;
        return;
    }
    for (k, w) in from {
        add_to(into, &k, w);
    }
}

/// Stacks whose outermost frame's callers are not known yet, all hanging
/// from `depth` or deeper.
struct Group {
    depth: u32,
    stacks: Stacks,
}

struct Frame {
    func: u64,
    depth: u32,
    entry: u64,
    /// Durations of its completed callees.
    children: u64,
}

#[derive(Default)]
struct FoldThread {
    stack: Vec<Frame>,
    /// Groups by strictly increasing depth, bottom to top: an orphan exit at
    /// depth d adopts the groups deeper than d (the calls made since the
    /// last call at depth <= d).
    floating: Vec<Group>,
    path: Vec<u64>,
}

impl FoldThread {
    /// Adds stacks hanging from `depth`; `global` gets them when nothing
    /// shallower than depth 0 can adopt them.
    fn add(&mut self, depth: u32, mut stacks: Stacks, global: &mut Stacks) {
        // Groups at this depth or deeper can no longer be adopted apart
        // from these: an orphan deep enough to adopt them adopts these too.
        while let Some(top) = self.floating.last() {
            if top.depth < depth {
                break;
            }
            let top = self.floating.pop().expect("checked");
            merge_into(&mut stacks, top.stacks);
        }
        if depth == 0 {
            merge_into(global, stacks);
        } else {
            self.floating.push(Group { depth, stacks });
        }
    }

    fn add_one(&mut self, depth: u32, path: &[u64], w: [u64; 2], global: &mut Stacks) {
        if depth == 0 {
            self.floating
                .drain(..)
                .for_each(|g| merge_into(global, g.stacks));
            add_to(global, path, w);
            return;
        }
        if let Some(top) = self.floating.last_mut() {
            if top.depth == depth {
                add_to(&mut top.stacks, path, w);
                return;
            }
        }
        let mut one = Stacks::new();
        add_to(&mut one, path, w);
        self.add(depth, one, global);
    }

    /// The open calls' functions, then `func`.
    fn path_with(&mut self, upto: usize, func: u64) -> (u32, Vec<u64>) {
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        path.extend(self.stack[..upto].iter().map(|f| f.func));
        let root = self.stack.first().map(|f| f.depth);
        path.push(func);
        (root.unwrap_or(0), path)
    }

    fn adopt(&mut self, func: u64, depth: u32, global: &mut Stacks) {
        let mut adopted = Stacks::new();
        while let Some(top) = self.floating.last() {
            if top.depth <= depth {
                break;
            }
            let top = self.floating.pop().expect("checked");
            merge_into(&mut adopted, top.stacks);
        }
        if adopted.is_empty() {
            return;
        }
        let prefixed: Stacks = adopted
            .into_iter()
            .map(|(path, w)| {
                let mut p = Vec::with_capacity(path.len() + 1);
                p.push(func);
                p.extend_from_slice(&path);
                (p.into_boxed_slice(), w)
            })
            .collect();
        self.add(depth, prefixed, global);
    }
}

/// Folded stacks, aggregated as events stream in.
pub struct Folded {
    weight: Option<Weight>,
    graph: bool,
    threads: Threads<FoldThread>,
    global: Stacks,
    process: Process,
}

impl Folded {
    /// `weight`: `None` to pick it at the end ([`Weight::for_trace`]'s
    /// rule).
    pub fn new(weight: Option<Weight>) -> Self {
        Folded {
            weight,
            graph: false,
            threads: Threads::default(),
            global: Stacks::new(),
            process: Process::default(),
        }
    }

    /// The weight the stacks are (or will be) given in.
    pub fn weight(&self) -> Weight {
        self.weight.unwrap_or(if self.graph {
            Weight::SelfTime
        } else {
            Weight::Calls
        })
    }

    /// Named stacks and their non-zero weights, threads merged. Complete
    /// after [`Sink::finish`].
    pub fn stacks(&self, names: &Symbols) -> BTreeMap<String, u64> {
        let i = match self.weight() {
            Weight::SelfTime => SELF,
            Weight::Calls => CALLS,
        };
        let mut named: HashMap<u64, String> = HashMap::new();
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for (path, w) in &self.global {
            if w[i] == 0 {
                continue;
            }
            let mut stack = String::new();
            for (k, &addr) in path.iter().enumerate() {
                if k > 0 {
                    stack.push(';');
                }
                stack.push_str(
                    named
                        .entry(addr)
                        .or_insert_with(|| frame(&names.display(addr))),
                );
            }
            *out.entry(stack).or_default() += w[i];
        }
        out
    }

    /// The process [`Sink::begin`] named.
    pub fn process(&self) -> &Process {
        &self.process
    }
}

impl Sink for Folded {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.process = process.clone();
        Ok(())
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name);
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, _names: &Symbols) -> io::Result<()> {
        let global = &mut self.global;
        let t = &mut self.threads.event(tid, event.ts()).state;
        match event {
            Event::Entry { ts, func, depth } => {
                self.graph = true;
                let (root, path) = t.path_with(t.stack.len(), func);
                let root = if t.stack.is_empty() { depth } else { root };
                t.add_one(root, &path, [0, 1], global);
                t.path = path;
                if t.stack.len() < MAX_OPEN {
                    t.stack.push(Frame {
                        func,
                        depth,
                        entry: ts,
                        children: 0,
                    });
                }
            }
            Event::Exit { ts, func, depth } => {
                self.graph = true;
                match land(&t.stack, func, depth, |f| (f.func, f.depth)) {
                    Landing::Closes(i) => {
                        let call = &t.stack[i];
                        let duration = ts.saturating_sub(call.entry);
                        let self_ns = duration.saturating_sub(call.children);
                        let (root, path) = t.path_with(i, func);
                        t.add_one(root, &path, [self_ns, 0], global);
                        t.path = path;
                        t.stack.truncate(i);
                        if let Some(parent) = t.stack.last_mut() {
                            parent.children += duration;
                        }
                    }
                    Landing::Orphan(i) => {
                        t.stack.truncate(i);
                        if t.stack.is_empty() {
                            t.adopt(func, depth, global);
                        }
                    }
                }
            }
            Event::Call { func, caller, .. } => {
                if t.stack.is_empty() {
                    add_to(global, &[caller, func], [0, 1]);
                } else {
                    let (root, path) = t.path_with(t.stack.len(), func);
                    t.add_one(root, &path, [0, 1], global);
                    t.path = path;
                }
            }
        }
        Ok(())
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.threads.lost(tid, count, reason);
        Ok(())
    }

    fn finish(&mut self, _names: &Symbols) -> io::Result<Summary> {
        for t in self.threads.iter_mut() {
            for g in t.state.floating.drain(..) {
                merge_into(&mut self.global, g.stacks);
            }
            t.state.stack.clear();
        }
        Ok(self.threads.summary())
    }
}

/// Folded stack lines, written at the end.
pub struct FoldedWriter<W: Write> {
    folded: Folded,
    out: W,
}

impl<W: Write> FoldedWriter<W> {
    pub fn new(weight: Option<Weight>, out: W) -> Self {
        FoldedWriter {
            folded: Folded::new(weight),
            out,
        }
    }

    pub fn weight(&self) -> Weight {
        self.folded.weight()
    }
}

impl<W: Write> Sink for FoldedWriter<W> {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.folded.begin(process)
    }
    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.folded.thread(tid, name)
    }
    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        self.folded.event(tid, event, names)
    }
    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.folded.lost(tid, count, reason)
    }
    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        let summary = self.folded.finish(names)?;
        let mut out = BufWriter::new(&mut self.out);
        for (stack, w) in self.folded.stacks(names) {
            writeln!(out, "{stack} {w}")?;
        }
        out.flush()?;
        Ok(summary)
    }
}

/// A flame graph SVG drawn with inferno at the end, titled with the
/// program's name and pid. Its `finish` fails with `InvalidData` when there
/// is nothing to draw (inferno's "no stack counts found"), writing nothing.
pub struct FlameGraph<W: Write> {
    folded: Folded,
    out: W,
}

impl<W: Write> FlameGraph<W> {
    pub fn new(weight: Option<Weight>, out: W) -> Self {
        FlameGraph {
            folded: Folded::new(weight),
            out,
        }
    }
}

impl<W: Write> Sink for FlameGraph<W> {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.folded.begin(process)
    }
    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.folded.thread(tid, name)
    }
    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        self.folded.event(tid, event, names)
    }
    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.folded.lost(tid, count, reason)
    }
    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        let summary = self.folded.finish(names)?;
        let weight = self.folded.weight();
        let lines: Vec<String> = self
            .folded
            .stacks(names)
            .into_iter()
            .map(|(stack, w)| format!("{stack} {w}"))
            .collect();
        if lines.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no stacks to draw: the trace has no completed calls",
            ));
        }
        let p = self.folded.process();
        let mut options = inferno::flamegraph::Options::default();
        let what = match weight {
            Weight::SelfTime => "time",
            Weight::Calls => "calls",
        };
        options.title = format!("{} (pid {}): {what}", p.program_name(), p.pid);
        let lost = summary.lost();
        if lost > 0 {
            options.subtitle = Some(format!("{lost} events lost"));
        }
        options.count_name = weight.unit().to_string();
        inferno::flamegraph::from_lines(
            &mut options,
            lines.iter().map(String::as_str),
            &mut self.out,
        )?;
        self.out.flush()?;
        Ok(summary)
    }
}

/// Stack (frames joined by `;`) -> weight, without zero weights.
pub fn stacks(trace: &Trace, weight: Weight) -> BTreeMap<String, u64> {
    let mut folded = Folded::new(Some(weight));
    feed(trace, Order::ByThread, &mut folded).expect("aggregating in memory does not fail");
    folded.stacks(&trace.symbols)
}

/// Writes folded stacks weighted by [`Weight::for_trace`], and returns it.
pub fn write<W: Write>(trace: &Trace, out: W) -> io::Result<Weight> {
    let weight = Weight::for_trace(trace);
    write_with(trace, weight, out)?;
    Ok(weight)
}

/// Writes folded stacks with the given weight.
pub fn write_with<W: Write>(trace: &Trace, weight: Weight, out: W) -> io::Result<()> {
    feed(
        trace,
        Order::ByThread,
        &mut FoldedWriter::new(Some(weight), out),
    )
    .map(|_| ())
}

/// Draws a flame graph SVG of the trace's folded stacks
/// ([`Weight::for_trace`]) with inferno, titled with the program's name.
/// Fails with `InvalidData` when there is nothing to draw (inferno's
/// "no stack counts found").
pub fn flamegraph<W: Write>(trace: &Trace, out: W) -> io::Result<()> {
    let weight = Weight::for_trace(trace);
    feed(
        trace,
        Order::ByThread,
        &mut FlameGraph::new(Some(weight), out),
    )
    .map(|_| ())
}
