//! Rebuilds one thread's call tree from its Entry/Exit events, once, for
//! every writer: they must agree on which exit closes which entry, and on
//! what to do with the irregular cases the model allows.
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
    /// Index of the Entry / Exit event in the thread's events.
    pub entry_event: Option<usize>,
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
                        entry_event: Some(idx),
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
            entry_event: None,
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
