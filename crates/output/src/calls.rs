//! The reference the streaming writers are tested against: one thread's
//! whole call tree rebuilt from its Entry/Exit events (what the writers did
//! before they streamed), with the rules for the irregular cases the model
//! allows. The profile and folded-stack writers must give the same numbers
//! on any trace whose lost events are leading (overwrite mode) or exits;
//! the property tests below check it.
//!
//! * An Exit closes the innermost open call with the same function and
//!   depth. Open calls above it lost their exits (lost events, unwinding):
//!   they are *abandoned*, and known to have ended by that exit's time.
//! * An Exit that closes nothing is an *orphan*: its Entry was overwritten or
//!   lost. It becomes a call with no start, and adopts the calls that must
//!   have run inside it: its parent's latest children deeper than itself.
//!   Leading orphans (ring overwrite) thereby rebuild the stack the thread
//!   was on when recording began, so `lex` still folds as `main;parse;lex`.
//! * Calls still open at the end are *unfinished*.
//! * Call events (function tracer) are not part of the tree; they are kept
//!   as instants under whichever call was open.

use crate::model::{Event, ThreadTrace};

#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub func: u64,
    pub depth: u32,
    /// None for an orphan.
    pub entry: Option<u64>,
    /// None for an unfinished or abandoned call.
    pub exit: Option<u64>,
    /// For an abandoned call, when its caller's exit showed it had ended,
    /// and the index of that exit event.
    pub abandoned_at: Option<u64>,
    pub abandoned_by: Option<usize>,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// Index of the Exit event in the thread's events.
    pub exit_event: Option<usize>,
}

impl Call {
    /// Both ends known.
    pub fn duration(&self) -> Option<u64> {
        Some(self.exit?.saturating_sub(self.entry?))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Instant {
    pub ts: u64,
    pub func: u64,
    pub caller: u64,
    /// The call that was open when it happened.
    pub parent: Option<usize>,
}

#[derive(Debug, Default)]
pub(crate) struct CallTree {
    pub calls: Vec<Call>,
    /// Top-level calls, in time order.
    pub roots: Vec<usize>,
    pub instants: Vec<Instant>,
    /// Latest timestamp in the thread: where unfinished calls are cut off.
    pub last_ts: u64,
}

impl CallTree {
    pub fn build(thread: &ThreadTrace) -> Self {
        let mut tree = CallTree::default();
        let mut stack: Vec<usize> = Vec::new();
        for (idx, event) in thread.events.iter().enumerate() {
            tree.last_ts = tree.last_ts.max(event.ts());
            match *event {
                Event::Call { ts, func, caller } => tree.instants.push(Instant {
                    ts,
                    func,
                    caller,
                    parent: stack.last().copied(),
                }),
                Event::Entry { ts, func, depth } => {
                    let parent = stack.last().copied();
                    let id = tree.push(Call {
                        func,
                        depth,
                        entry: Some(ts),
                        exit: None,
                        abandoned_at: None,
                        abandoned_by: None,
                        parent,
                        children: Vec::new(),
                        exit_event: None,
                    });
                    tree.siblings(parent).push(id);
                    stack.push(id);
                }
                Event::Exit { ts, func, depth } => {
                    let open = stack.iter().rposition(|&c| {
                        let call = &tree.calls[c];
                        call.func == func && call.depth == depth
                    });
                    if let Some(pos) = open {
                        for abandoned in stack.drain(pos + 1..) {
                            tree.calls[abandoned].abandoned_at = Some(ts);
                            tree.calls[abandoned].abandoned_by = Some(idx);
                        }
                        let id = stack.pop().expect("pos is within the stack");
                        tree.calls[id].exit = Some(ts);
                        tree.calls[id].exit_event = Some(idx);
                    } else {
                        // Open calls at this depth or deeper ran inside the
                        // orphan, and lost their exits.
                        while let Some(&top) = stack.last() {
                            if tree.calls[top].depth < depth {
                                break;
                            }
                            tree.calls[top].abandoned_at = Some(ts);
                            tree.calls[top].abandoned_by = Some(idx);
                            stack.pop();
                        }
                        tree.adopt_orphan(stack.last().copied(), ts, func, depth, idx);
                    }
                }
            }
        }
        tree
    }

    fn push(&mut self, call: Call) -> usize {
        self.calls.push(call);
        self.calls.len() - 1
    }

    fn siblings(&mut self, parent: Option<usize>) -> &mut Vec<usize> {
        match parent {
            Some(p) => &mut self.calls[p].children,
            None => &mut self.roots,
        }
    }

    fn adopt_orphan(&mut self, parent: Option<usize>, ts: u64, func: u64, depth: u32, idx: usize) {
        let id = self.calls.len();
        let mut siblings = std::mem::take(self.siblings(parent));
        let calls = &self.calls;
        let split = siblings
            .iter()
            .rposition(|&c| calls[c].depth <= depth)
            .map_or(0, |p| p + 1);
        // Function-tracer calls made since the last sibling that stays
        // ended happened inside the orphan too.
        let boundary = split.checked_sub(1).map_or(0, |k| {
            let last = &calls[siblings[k]];
            last.exit.or(last.abandoned_at).unwrap_or(0)
        });
        let adopted = siblings.split_off(split);
        siblings.push(id);
        *self.siblings(parent) = siblings;
        for &child in &adopted {
            self.calls[child].parent = Some(id);
        }
        // Instants are in time order: only the latest can be the orphan's.
        for instant in self.instants.iter_mut().rev() {
            if instant.ts < boundary {
                break;
            }
            if instant.parent == parent {
                instant.parent = Some(id);
            }
        }
        self.push(Call {
            func,
            depth,
            entry: None,
            exit: Some(ts),
            abandoned_at: None,
            abandoned_by: None,
            parent,
            children: adopted,
            exit_event: Some(idx),
        });
    }

    /// When a call is known or assumed to have ended: its exit, the exit that
    /// abandoned it, or the end of the thread's trace.
    pub fn end_of(&self, id: usize) -> u64 {
        let call = &self.calls[id];
        call.exit.or(call.abandoned_at).unwrap_or(self.last_ts)
    }

    /// Depth-first, parents before children, siblings in time order.
    pub fn preorder(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.calls.len());
        let mut todo: Vec<usize> = self.roots.iter().rev().copied().collect();
        while let Some(id) = todo.pop() {
            order.push(id);
            todo.extend(self.calls[id].children.iter().rev());
        }
        order
    }

    /// Functions from the outermost known caller down to `id` itself.
    pub fn path(&self, id: usize) -> Vec<u64> {
        let mut path = Vec::new();
        let mut cur = Some(id);
        while let Some(c) = cur {
            path.push(self.calls[c].func);
            cur = self.calls[c].parent;
        }
        path.reverse();
        path
    }

    /// Time `id` spent outside its completed callees, if its duration is
    /// known. Callees with unknown durations count as the caller's own time.
    pub fn self_time(&self, id: usize) -> Option<u64> {
        let total = self.calls[id].duration()?;
        let children: u64 = self.calls[id]
            .children
            .iter()
            .filter_map(|&c| self.calls[c].duration())
            .sum();
        Some(total.saturating_sub(children))
    }

    pub fn orphans(&self) -> usize {
        self.calls.iter().filter(|c| c.entry.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::folded::Weight;
    use crate::model::{ProfileRow, Trace};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    fn frame(name: &str) -> String {
        name.replace(';', ",").replace(['\n', '\r'], " ")
    }

    fn oracle_profile(trace: &Trace) -> Vec<ProfileRow> {
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
            let mut todo: Vec<(usize, bool)> =
                tree.roots.iter().rev().map(|&c| (c, false)).collect();
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
        crate::profile::sort(&mut rows);
        rows
    }

    fn oracle_stacks(trace: &Trace, weight: Weight) -> BTreeMap<String, u64> {
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

    /// Events of a random call tree, times increasing.
    fn tree_events(seed: &[u8], ts: &mut u64, depth: u32, out: &mut Vec<Event>) {
        if depth > 6 {
            return;
        }
        let n = seed.first().map_or(0, |b| b % 4) as usize;
        for k in 0..n {
            let b = seed.get(1 + k).copied().unwrap_or(7);
            let func = u64::from(b % 4) + 1;
            *ts += u64::from(b % 13) + 1;
            out.push(Event::Entry {
                ts: *ts,
                func,
                depth,
            });
            let sub: Vec<u8> = seed
                .iter()
                .skip(2 + k)
                .map(|x| x.wrapping_mul(31).wrapping_add(depth as u8))
                .take(seed.len() / 2)
                .collect();
            tree_events(&sub, ts, depth + 1, out);
            *ts += u64::from(b % 7) + 1;
            out.push(Event::Exit {
                ts: *ts,
                func,
                depth,
            });
        }
    }

    fn trace_of(threads: Vec<Vec<Event>>) -> Trace {
        let mut trace = Trace {
            pid: 1,
            start_ns: 0,
            ..Default::default()
        };
        for f in 1..=4u64 {
            trace.symbols.insert(f, 1, format!("f{f}"));
        }
        for (i, events) in threads.into_iter().enumerate() {
            trace.threads.push(ThreadTrace {
                tid: i as u32 + 1,
                events,
                ..Default::default()
            });
        }
        trace
    }

    /// A thread: a random tree, its first `cut` events overwritten, its
    /// last `tail` events not yet recorded, and the exits at the positions
    /// in `drop` lost.
    fn thread_events() -> impl Strategy<Value = Vec<Event>> {
        (
            prop::collection::vec(any::<u8>(), 1..40),
            0usize..30,
            0usize..10,
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        )
            .prop_map(|(seed, cut, tail, drop)| {
                let mut events = Vec::new();
                let mut ts = 1000;
                // Entered before the trace: a few outer calls.
                for (d, f) in [(0u32, 1u64), (1, 2), (2, 1)] {
                    events.push(Event::Entry {
                        ts,
                        func: f,
                        depth: d,
                    });
                }
                tree_events(&seed, &mut ts, 3, &mut events);
                for (d, f) in [(2u32, 1u64), (1, 2), (0, 1)] {
                    ts += 5;
                    events.push(Event::Exit {
                        ts,
                        func: f,
                        depth: d,
                    });
                    let mut more = Vec::new();
                    tree_events(&seed[seed.len() / 2..], &mut ts, d + 1, &mut more);
                    if d > 0 {
                        events.extend(more);
                    }
                }
                let end = events.len().saturating_sub(tail);
                let mut events: Vec<Event> = events[cut.min(end)..end].to_vec();
                for idx in drop {
                    if events.is_empty() {
                        break;
                    }
                    let i = idx.index(events.len());
                    if matches!(events[i], Event::Exit { .. }) {
                        events.remove(i);
                    }
                }
                events
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The streamed profile and folded stacks are the call tree's.
        #[test]
        fn streaming_writers_agree_with_the_call_tree(
            threads in prop::collection::vec(thread_events(), 1..3)
        ) {
            let trace = trace_of(threads);
            prop_assert_eq!(crate::profile::compute(&trace), oracle_profile(&trace));
            for weight in [Weight::SelfTime, Weight::Calls] {
                prop_assert_eq!(
                    crate::folded::stacks(&trace, weight),
                    oracle_stacks(&trace, weight)
                );
            }
        }
    }

    fn thread(events: Vec<Event>) -> ThreadTrace {
        ThreadTrace {
            tid: 1,
            events,
            ..Default::default()
        }
    }
    fn entry(ts: u64, func: u64, depth: u32) -> Event {
        Event::Entry { ts, func, depth }
    }
    fn exit(ts: u64, func: u64, depth: u32) -> Event {
        Event::Exit { ts, func, depth }
    }

    #[test]
    fn leading_orphans_rebuild_the_stack() {
        // main(0) > parse(1) > lex(2) entered before the ring wrapped.
        let t = thread(vec![
            exit(10, 3, 2),  // lex: orphan
            entry(20, 3, 2), // lex again, complete
            exit(30, 3, 2),
            exit(40, 2, 1), // parse: orphan
            entry(50, 4, 1),
            exit(60, 4, 1),
            exit(70, 1, 0), // main: orphan
        ]);
        let tree = CallTree::build(&t);
        assert_eq!(tree.orphans(), 3);
        assert_eq!(tree.roots.len(), 1);
        let main = tree.roots[0];
        assert_eq!(tree.calls[main].func, 1);
        let paths: Vec<Vec<u64>> = tree.preorder().iter().map(|&c| tree.path(c)).collect();
        assert_eq!(
            paths,
            vec![
                vec![1],
                vec![1, 2],
                vec![1, 2, 3],
                vec![1, 2, 3],
                vec![1, 4]
            ]
        );
    }

    #[test]
    fn missing_exits_are_abandoned_or_unfinished() {
        let t = thread(vec![
            entry(0, 1, 0),
            entry(1, 2, 1),
            entry(2, 3, 2), // its exit is lost
            exit(5, 2, 1),
            entry(6, 4, 1), // still running at the end
        ]);
        let tree = CallTree::build(&t);
        let by_func = |f: u64| tree.calls.iter().position(|c| c.func == f).unwrap();
        assert_eq!(tree.calls[by_func(3)].abandoned_at, Some(5));
        assert_eq!(tree.end_of(by_func(3)), 5);
        assert_eq!(tree.calls[by_func(2)].duration(), Some(4));
        assert_eq!(tree.calls[by_func(4)].duration(), None);
        assert_eq!(tree.end_of(by_func(4)), 6);
        assert_eq!(tree.end_of(by_func(1)), 6);
        assert_eq!(tree.self_time(by_func(2)), Some(4));
    }
}
