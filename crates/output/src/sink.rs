//! The streaming interface every writer implements, and the drivers that
//! feed it.
//!
//! A [`Sink`] is told about the process once ([`Sink::begin`]), then
//! receives threads, events and losses as a reader finds them, and writes
//! what is left at [`Sink::finish`]. Events of one thread arrive in the
//! order they happened; events of different threads may interleave in any
//! way (a recorded file holds per-thread chunks, a live session per-thread
//! polls). Names are resolved through the [`Symbols`] passed with each
//! call, which the caller may grow between calls (a library loaded
//! mid-trace).
//!
//! No writer keeps events: each keeps, per thread, the calls still open
//! (bounded by the nesting depth, at most [`MAX_OPEN`]), and the
//! aggregating writers (folded stacks, profile) one entry per distinct
//! stack or function. Memory is therefore bounded by the program's shape,
//! never by the trace's length.
//!
//! [`feed`] drives a sink from an in-memory [`Trace`]; [`merge_by_time`]
//! merges per-thread event streams into one in time order, for the
//! writers whose layout is a single timeline (ftrace's `function` text).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;

use crate::model::{Event, LossReason, Process, Summary, Symbols, ThreadSummary, Trace};

/// Open calls a writer tracks per thread. Deeper entries are not tracked:
/// their exits are then treated like exits whose entries were lost. The
/// tracers' own limit is far below (256).
pub const MAX_OPEN: usize = 4096;

/// A streaming trace writer.
pub trait Sink {
    /// Called once, before anything else.
    fn begin(&mut self, process: &Process) -> io::Result<()>;

    /// Names a thread (first sight or rename). Events may also arrive for a
    /// thread never announced.
    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()>;

    /// One event of thread `tid`, after every earlier event of that thread.
    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()>;

    /// `count` events of thread `tid` were not kept, for `reason`, between
    /// the events already given and the ones still to come.
    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()>;

    /// Writes what is left and flushes. `names` are the final symbols.
    /// Returns what was kept and lost, per thread.
    fn finish(&mut self, names: &Symbols) -> io::Result<Summary>;

    /// The stream paused: push what is buffered to its reader (a terminal
    /// or a pipe waiting for the first lines). Writers that can only write
    /// whole files at the end do nothing.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        (**self).begin(process)
    }
    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        (**self).thread(tid, name)
    }
    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        (**self).event(tid, event, names)
    }
    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        (**self).lost(tid, count, reason)
    }
    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        (**self).finish(names)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

/// Several sinks fed the same stream (a terminal view and a file, or
/// several files from one read). Each gets every call; the first error
/// stops the stream. `finish` returns the first sink's summary (all see
/// the same events).
pub struct Tee(pub Vec<Box<dyn Sink>>);

impl Sink for Tee {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.begin(process))
    }
    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.thread(tid, name))
    }
    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|s| s.event(tid, event, names))
    }
    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|s| s.lost(tid, count, reason))
    }
    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        let mut first = None;
        for s in &mut self.0 {
            let summary = s.finish(names)?;
            first.get_or_insert(summary);
        }
        Ok(first.unwrap_or_default())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }
}

/// The order [`feed`] gives a trace's events in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Each thread whole, one after another.
    ByThread,
    /// All threads merged by timestamp (ties: thread order, then event
    /// order).
    ByTime,
}

/// Feeds a whole in-memory trace to `sink`: each thread's name and losses
/// first (a [`ThreadTrace`](crate::ThreadTrace) does not say where its
/// losses happened; overwrite mode loses the oldest), then its events.
pub fn feed<S: Sink + ?Sized>(trace: &Trace, order: Order, sink: &mut S) -> io::Result<Summary> {
    sink.begin(&trace.process())?;
    let announce = |sink: &mut S, t: &crate::ThreadTrace| -> io::Result<()> {
        sink.thread(t.tid, &t.name)?;
        if t.lost > 0 {
            sink.lost(t.tid, t.lost, LossReason::Overwritten)?;
        }
        if t.depth_overflows > 0 {
            sink.lost(t.tid, t.depth_overflows, LossReason::DepthLimit)?;
        }
        Ok(())
    };
    match order {
        Order::ByThread => {
            for t in &trace.threads {
                announce(sink, t)?;
                for &e in &t.events {
                    sink.event(t.tid, e, &trace.symbols)?;
                }
            }
        }
        Order::ByTime => {
            for t in &trace.threads {
                announce(sink, t)?;
            }
            let streams = trace
                .threads
                .iter()
                .map(|t| (t.tid, t.events.iter().copied()))
                .collect();
            for (tid, e) in merge_by_time(streams) {
                sink.event(tid, e, &trace.symbols)?;
            }
        }
    }
    sink.finish(&trace.symbols)
}

/// Merges per-thread event streams (each in time order) into one stream in
/// time order. Holds one event per stream.
pub fn merge_by_time<I: Iterator<Item = Event>>(
    streams: Vec<(u32, I)>,
) -> impl Iterator<Item = (u32, Event)> {
    let mut streams = streams;
    let mut heap = BinaryHeap::new();
    for (i, (_, it)) in streams.iter_mut().enumerate() {
        if let Some(e) = it.next() {
            heap.push(Reverse((e.ts(), i, Pending(e))));
        }
    }
    std::iter::from_fn(move || {
        let Reverse((_, i, Pending(e))) = heap.pop()?;
        let (tid, it) = &mut streams[i];
        if let Some(next) = it.next() {
            heap.push(Reverse((next.ts(), i, Pending(next))));
        }
        Some((*tid, e))
    })
}

/// An event in the merge heap, ordered by (ts, stream) only.
struct Pending(Event);
impl PartialEq for Pending {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// One thread as a writer tracks it: what it kept and lost, and the
/// writer's own per-thread state.
pub(crate) struct Thread<T> {
    pub summary: ThreadSummary,
    pub state: T,
}

/// Writers' per-thread state by tid, in first-seen order. Events come in
/// runs of one thread, so the last thread found is checked first.
pub(crate) struct Threads<T> {
    list: Vec<Thread<T>>,
    index: HashMap<u32, usize>,
    last: Option<(u32, usize)>,
}

impl<T> Default for Threads<T> {
    fn default() -> Self {
        Threads {
            list: Vec::new(),
            index: HashMap::new(),
            last: None,
        }
    }
}

impl<T: Default> Threads<T> {
    /// The thread's index, creating it if new.
    pub fn index(&mut self, tid: u32) -> usize {
        if let Some((t, i)) = self.last {
            if t == tid {
                return i;
            }
        }
        let list = &mut self.list;
        let i = *self.index.entry(tid).or_insert_with(|| {
            list.push(Thread {
                summary: ThreadSummary {
                    tid,
                    ..Default::default()
                },
                state: T::default(),
            });
            list.len() - 1
        });
        self.last = Some((tid, i));
        i
    }

    pub fn get(&mut self, tid: u32) -> &mut Thread<T> {
        let i = self.index(tid);
        &mut self.list[i]
    }

    /// Counts one event of the thread and returns it.
    pub fn event(&mut self, tid: u32, ts: u64) -> &mut Thread<T> {
        let t = self.get(tid);
        let s = &mut t.summary;
        s.events += 1;
        s.first_ts.get_or_insert(ts);
        s.last_ts = Some(s.last_ts.map_or(ts, |l| l.max(ts)));
        t
    }

    pub fn name(&mut self, tid: u32, name: &str) -> &mut Thread<T> {
        let t = self.get(tid);
        if t.summary.name != name {
            t.summary.name = name.to_string();
        }
        t
    }

    pub fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> &mut Thread<T> {
        let t = self.get(tid);
        t.summary.losses.add(reason, count);
        t
    }
}

impl<T> Threads<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, Thread<T>> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Thread<T>> {
        self.list.iter_mut()
    }

    pub fn summary(&self) -> Summary {
        Summary {
            threads: self.list.iter().map(|t| t.summary.clone()).collect(),
        }
    }
}

/// An open call, as the writers track it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Open {
    pub func: u64,
    pub depth: u32,
    pub entry: u64,
}

/// Where an Exit lands in a thread's stack of open calls.
pub(crate) enum Landing {
    /// It closes the open call at this index; calls above it lost their
    /// exits (abandoned).
    Closes(usize),
    /// It closes no open call (its entry was lost or overwritten). Open
    /// calls from this index up are at its depth or deeper: they ran inside
    /// it and lost their exits.
    Orphan(usize),
}

/// Matches an exit against a stack of open calls: the innermost call of the
/// same function and depth.
pub(crate) fn land<F>(
    stack: &[F],
    func: u64,
    depth: u32,
    key: impl Fn(&F) -> (u64, u32),
) -> Landing {
    match stack.iter().rposition(|f| key(f) == (func, depth)) {
        Some(i) => Landing::Closes(i),
        None => {
            let mut i = stack.len();
            while i > 0 && key(&stack[i - 1]).1 >= depth {
                i -= 1;
            }
            Landing::Orphan(i)
        }
    }
}

/// A cache of names resolved through [`Symbols`], cleared when the symbols
/// change; `make` turns a resolved name into what the writer writes (JSON
/// escaped, interned id...).
pub(crate) struct NameCache<V> {
    version: Option<u64>,
    map: HashMap<u64, V, BuildFast>,
}

impl<V> Default for NameCache<V> {
    fn default() -> Self {
        NameCache {
            version: None,
            map: HashMap::default(),
        }
    }
}

impl<V> NameCache<V> {
    pub fn get(&mut self, addr: u64, names: &Symbols, make: impl FnOnce(&str) -> V) -> &V {
        if self.version != Some(names.version()) {
            self.map.clear();
            self.version = Some(names.version());
        }
        self.map
            .entry(addr)
            .or_insert_with(|| make(&names.display(addr)))
    }
}

/// A fast hasher for address keys (the standard SipHash costs more than
/// the rest of an event's formatting).
#[derive(Clone, Copy, Default)]
pub(crate) struct BuildFast;

pub(crate) struct FastHasher(u64);

impl std::hash::BuildHasher for BuildFast {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing, folded so the high bits reach the table index.
        let h = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}
