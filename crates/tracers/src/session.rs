//! Tracing sessions: one tracer, its ops, its buffers, and what it read.
//!
//! A [`Session`] owns an ops attached to the functions its filter names and
//! the per-thread ring buffers its callback writes. Records are 32 bytes:
//! `ts` in clock ticks, then (function, caller or depth, kind).
//!
//! - **function**: one `CALL` record per call (function, caller).
//! - **graph**: an `ENTRY` record when the function is entered, its return
//!   hooked (see [`crate::retstack`]), and an `EXIT` record when it returns.
//! - **profile**: no records; the exit hook folds each call's total and
//!   self time into a per-thread table, merged when read.
//!
//! # Lifetime
//!
//! Hooked frames may outlive a session (a traced `main` returns when the
//! program ends), so frames name their session by id (see
//! [`crate::retstack`]); a dropped session is simply not found, and the
//! frame returns without a record.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};

use livetrace_ftrace::{Call, Ops, Pattern};
use livetrace_output::{Event, ProfileRow, ThreadTrace, Trace};
use livetrace_ring::{Record, Rings};

use crate::retstack::{self, Sink};

/// Which tracer a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tracer {
    /// One event per call: function and caller.
    Function,
    /// Entry and exit of every call, with depth and duration.
    Graph,
    /// Per function: calls, total and self time, min and max.
    Profile,
}

impl std::str::FromStr for Tracer {
    type Err = String;
    fn from_str(s: &str) -> Result<Tracer, String> {
        match s {
            "function" => Ok(Tracer::Function),
            "graph" | "function_graph" => Ok(Tracer::Graph),
            "profile" => Ok(Tracer::Profile),
            other => Err(format!(
                "unknown tracer '{other}' (function, graph or profile)"
            )),
        }
    }
}

/// What to trace and how to buffer it.
#[derive(Clone, Debug)]
pub struct Config {
    /// The tracer.
    pub tracer: Tracer,
    /// Functions to trace (all when empty).
    pub filter: Vec<Pattern>,
    /// Functions never to trace.
    pub notrace: Vec<Pattern>,
    /// Ring buffer size and mode.
    pub ring: livetrace_ring::Config,
    /// Record through the assembly fast paths where they apply (see
    /// `fast.rs`); off, every event goes through the Rust callback. The
    /// records are the same either way. Also off for the whole process
    /// with `LIVETRACE_NO_FAST_PATH` set.
    pub fast_path: bool,
}

impl Config {
    /// A configuration for `tracer` on the functions `filter` names.
    pub fn new(tracer: Tracer, filter: &[&str]) -> Config {
        Config {
            tracer,
            filter: filter.iter().map(|p| Pattern::parse(p)).collect(),
            notrace: Vec::new(),
            ring: livetrace_ring::Config::default(),
            fast_path: true,
        }
    }
}

pub(crate) const CALL: u64 = 1;
pub(crate) const ENTRY: u64 = 2;
pub(crate) const EXIT: u64 = 3;
/// A call not followed because the shadow stack was full.
pub(crate) const OVERFLOW: u64 = 4;

/// The profiler's per-thread table: open addressing on the function
/// address, owned (written) by one thread, read by anyone.
struct ProfileTable {
    slots: Box<[ProfileSlot]>,
    full: AtomicU64,
}

#[derive(Default)]
struct ProfileSlot {
    func: AtomicU64,
    calls: AtomicU64,
    total: AtomicU64,
    self_ticks: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

const PROFILE_SLOTS: usize = 4096;

impl ProfileTable {
    fn new() -> ProfileTable {
        ProfileTable {
            slots: (0..PROFILE_SLOTS).map(|_| ProfileSlot::default()).collect(),
            full: AtomicU64::new(0),
        }
    }

    /// Only the owning thread calls this; readers see each field
    /// atomically (plain loads and stores, no read-modify-write needed).
    fn add(&self, func: usize, total: u64, self_ticks: u64) {
        let mut i = (func.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) % PROFILE_SLOTS;
        for _ in 0..PROFILE_SLOTS {
            let s = &self.slots[i];
            let f = s.func.load(Relaxed);
            if f == func as u64 || f == 0 {
                if f == 0 {
                    s.min.store(u64::MAX, Relaxed);
                    s.func.store(func as u64, Release);
                }
                s.calls.store(s.calls.load(Relaxed) + 1, Relaxed);
                s.total
                    .store(s.total.load(Relaxed).wrapping_add(total), Relaxed);
                s.self_ticks
                    .store(s.self_ticks.load(Relaxed).wrapping_add(self_ticks), Relaxed);
                if total < s.min.load(Relaxed) {
                    s.min.store(total, Relaxed);
                }
                if total > s.max.load(Relaxed) {
                    s.max.store(total, Relaxed);
                }
                return;
            }
            i = (i + 1) % PROFILE_SLOTS;
        }
        self.full.store(self.full.load(Relaxed) + 1, Relaxed);
    }
}

pub(crate) struct Inner {
    id: u32,
    tracer: Tracer,
    rings: Arc<Rings>,
    /// A tick value from the session's start: durations in ticks become
    /// nanoseconds as `to_ns(epoch + d) - to_ns(epoch)`.
    epoch: u64,
    /// Every thread's [`PerThread`], for the readers.
    threads: Mutex<Vec<Arc<PerThread>>>,
    /// The ops has a fast path.
    fast: bool,
    /// The process that started the session (see `per_thread`).
    pid: i32,
}

/// What one thread keeps for one session, written by that thread only
/// (plain loads and stores: no read-modify-write, no shared cache line).
struct PerThread {
    /// Calls the Rust callback recorded while a fast path is installed (a
    /// thread's first call, a shared function, a full DropNewest buffer,
    /// the shadow stack full). Counted only then.
    slow_events: AtomicU64,
    /// The profiler's table (profile sessions only).
    profile: Option<ProfileTable>,
}

thread_local! {
    /// This thread's [`PerThread`] for the session with the given id.
    static PER_THREAD: UnsafeCell<(u32, *const PerThread)> = const { UnsafeCell::new((0, std::ptr::null())) };
}

impl Inner {
    #[inline]
    fn count_slow(&self) {
        if self.fast {
            if let Some(t) = self.per_thread() {
                t.slow_events
                    .store(t.slow_events.load(Relaxed) + 1, Relaxed);
            }
        }
    }

    /// This thread's state, made on its first use; `None` in a fork child
    /// (another thread of the parent may have held `threads` at the fork:
    /// a thread of the child never takes it).
    fn per_thread(&self) -> Option<&PerThread> {
        PER_THREAD.with(|p| {
            // SAFETY: only this thread touches its cache.
            let cache = unsafe { &mut *p.get() };
            if cache.0 != self.id || cache.1.is_null() {
                // SAFETY: getpid has no preconditions.
                if unsafe { libc::getpid() } != self.pid {
                    return None;
                }
                let t = Arc::new(PerThread {
                    slow_events: AtomicU64::new(0),
                    profile: (self.tracer == Tracer::Profile).then(ProfileTable::new),
                });
                cache.1 = Arc::as_ptr(&t);
                cache.0 = self.id;
                self.threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t);
            }
            // SAFETY: kept alive by `threads` as long as the session, and
            // the session outlives every call into it.
            Some(unsafe { &*cache.1 })
        })
    }
}

impl Sink for Inner {
    fn exit(&self, func: usize, entry_ticks: u64, now: u64, child_ticks: u64, depth: u32) {
        match self.tracer {
            Tracer::Graph => {
                self.rings.write(Record {
                    ts: now,
                    a: func as u64,
                    b: depth as u64,
                    c: EXIT,
                });
            }
            Tracer::Profile => {
                let total = now.wrapping_sub(entry_ticks);
                if let Some(t) = self.per_thread().and_then(|t| t.profile.as_ref()) {
                    t.add(func, total, total.saturating_sub(child_ticks));
                }
            }
            Tracer::Function => {}
        }
    }
}

/// A running (or stopped) tracer.
pub struct Session {
    inner: Arc<Inner>,
    ops: Ops,
    running: bool,
}

// SAFETY: the raw pointers in Inner's registry entry point at the Arc the
// session owns; everything else is Sync.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Session {
    /// Starts tracing: attaches the tracer's ops as one live batch.
    pub fn start(cfg: Config) -> Result<Session, livetrace_ftrace::Error> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let id = NEXT.fetch_add(1, Relaxed);
        let rings = Rings::new(cfg.ring.clone());
        let kind = match cfg.tracer {
            Tracer::Function => Some(crate::fast::Kind::Function),
            Tracer::Graph => Some(crate::fast::Kind::Graph),
            Tracer::Profile => None,
        };
        let offsets = cfg.fast_path.then(crate::fast::offsets).flatten();
        let fast = offsets
            .zip(kind)
            .and_then(|(o, k)| crate::fast::patch(k, o, rings.id(), id));
        let inner = Arc::new(Inner {
            id,
            tracer: cfg.tracer,
            rings,
            epoch: crate::clock_now(),
            threads: Mutex::new(Vec::new()),
            fast: fast.is_some(),
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
        });
        // SAFETY: the session keeps `inner` alive until its Drop has
        // unpublished it.
        unsafe { retstack::publish_sink(inner.id, Arc::as_ptr(&inner) as *const dyn Sink) };
        let me = inner.clone();
        let name = format!("{:?}#{}", cfg.tracer, inner.id).to_lowercase();
        let mut b = Ops::builder(name);
        for p in &cfg.filter {
            b = b.filter(p.clone());
        }
        for p in &cfg.notrace {
            b = b.notrace(p.clone());
        }
        if let Some(code) = fast {
            // A graph session's frames also get the fast exit, if its slot
            // there is free (otherwise they take the Rust exit).
            if cfg.tracer == Tracer::Graph {
                crate::fast::add_sink(inner.id, inner.rings.id());
            }
            b = b.fast_path(code);
        }
        let ops = match cfg.tracer {
            Tracer::Function => b.build(move |call: &mut Call<'_>| {
                me.count_slow();
                let ts = crate::clock_now();
                me.rings.write(Record {
                    ts,
                    a: call.ip() as u64,
                    b: call.parent_ip() as u64,
                    c: CALL,
                });
            }),
            Tracer::Graph | Tracer::Profile => {
                let id = me.id;
                b.build(move |call: &mut Call<'_>| {
                    me.count_slow();
                    let ts = crate::clock_now();
                    // SAFETY: the trampoline's return slot of this call; the
                    // session id is resolved through the registry at exit.
                    let depth = unsafe { retstack::hook(call.return_slot(), call.ip(), ts, id) };
                    match (depth, me.tracer) {
                        (Some(d), Tracer::Graph) => {
                            me.rings.write(Record {
                                ts,
                                a: call.ip() as u64,
                                b: d as u64,
                                c: ENTRY,
                            });
                        }
                        // Too deep to hook: the call is not followed, but
                        // it is counted where the outputs report it.
                        (None, _) => {
                            me.rings.write(Record {
                                ts,
                                a: call.ip() as u64,
                                b: 0,
                                c: OVERFLOW,
                            });
                        }
                        _ => {}
                    }
                })
            }
        };
        if let Err(e) = livetrace_ftrace::register(&ops) {
            if !retstack::unpublish_sink(inner.id) {
                // A thread may still report to it: never free it.
                std::mem::forget(inner.clone());
            }
            return Err(e);
        }
        Ok(Session {
            inner,
            ops,
            running: true,
        })
    }

    /// The tracer this session runs.
    pub fn tracer(&self) -> Tracer {
        self.inner.tracer
    }

    /// Whether calls are recorded by an assembly fast path where this
    /// session's ops is alone on a function (see [`Config::fast_path`]).
    pub fn has_fast_path(&self) -> bool {
        self.inner.fast
    }

    /// With a fast path: calls the Rust callback recorded instead (each
    /// thread's first call, functions shared with another ops, a full
    /// DropNewest buffer, overflowing shadow stacks). Zero without one.
    pub fn slow_path_events(&self) -> u64 {
        self.inner
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|t| t.slow_events.load(Relaxed))
            .sum()
    }

    /// The ops attached (for introspection).
    pub fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Detaches the tracer (one batch); what was recorded stays readable.
    /// Calls still in flight may complete their exits until the session is
    /// dropped.
    pub fn stop(&mut self) -> Result<(), livetrace_ftrace::Error> {
        if self.running {
            livetrace_ftrace::unregister(&self.ops)?;
            self.running = false;
        }
        Ok(())
    }

    /// Whether the tracer is attached.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Everything recorded so far, per thread, without consuming it.
    pub fn snapshot(&self) -> Trace {
        let mut threads = Vec::new();
        for buf in self.inner.rings.snapshot() {
            threads.push(thread_trace(buf.tid, buf.name, &buf.records, buf.lost));
        }
        finish(threads)
    }

    /// What was recorded since the previous drain, consuming it: each
    /// event is returned by exactly one drain, so a reader can stream a
    /// session without copying its buffers again and again (the control
    /// socket's event polling). Only threads with new events or new losses
    /// are listed; `lost` counts the losses since the previous drain.
    /// [`Session::snapshot`] afterwards sees only what no drain consumed.
    pub fn drain(&self) -> Trace {
        let mut threads = Vec::new();
        self.inner.rings.drain(|tid, name, records, lost| {
            threads.push(thread_trace(tid, name.to_string(), records, lost));
        });
        finish(threads)
    }

    /// The profile so far: one row per function, merged over threads.
    pub fn profile(&self) -> Vec<ProfileRow> {
        let clock = crate::clock();
        let epoch = self.inner.epoch;
        let base = clock.to_ns(epoch);
        let ns = |d: u64| clock.to_ns(epoch.wrapping_add(d)).saturating_sub(base);
        let mut by_func: HashMap<u64, ProfileRow> = HashMap::new();
        for t in self
            .inner
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|t| t.profile.as_ref())
        {
            for s in t.slots.iter() {
                let f = s.func.load(Acquire);
                if f == 0 {
                    continue;
                }
                let row = by_func.entry(f).or_insert_with(|| ProfileRow {
                    name: String::new(),
                    calls: 0,
                    total_ns: 0,
                    self_ns: 0,
                    min_ns: u64::MAX,
                    max_ns: 0,
                });
                row.calls += s.calls.load(Relaxed);
                row.total_ns += ns(s.total.load(Relaxed));
                row.self_ns += ns(s.self_ticks.load(Relaxed));
                row.min_ns = row.min_ns.min(ns(s.min.load(Relaxed)));
                row.max_ns = row.max_ns.max(ns(s.max.load(Relaxed)));
            }
        }
        let mut rows: Vec<ProfileRow> = by_func
            .into_iter()
            .map(|(f, mut r)| {
                r.name = crate::symbols::name_of(f as usize);
                r
            })
            .collect();
        rows.sort_by(|a, b| {
            b.total_ns
                .cmp(&a.total_ns)
                .then_with(|| a.name.cmp(&b.name))
        });
        rows
    }
}

/// One thread's records as events, with times in CLOCK_MONOTONIC ns.
fn thread_trace(tid: i32, name: String, records: &[Record], lost: u64) -> ThreadTrace {
    let clock = crate::clock();
    let depth_overflows = records.iter().filter(|r| r.c == OVERFLOW).count() as u64;
    let events = records
        .iter()
        .filter_map(|r| {
            let ts = clock.to_ns(r.ts);
            Some(match r.c {
                CALL => Event::Call {
                    ts,
                    func: r.a,
                    caller: r.b,
                },
                ENTRY => Event::Entry {
                    ts,
                    func: r.a,
                    depth: r.b as u32,
                },
                EXIT => Event::Exit {
                    ts,
                    func: r.a,
                    depth: r.b as u32,
                },
                _ => return None,
            })
        })
        .collect();
    ThreadTrace {
        tid: tid as u32,
        name,
        events,
        lost,
        depth_overflows,
    }
}

/// A trace of this process from its threads' events, with every address
/// named.
fn finish(threads: Vec<ThreadTrace>) -> Trace {
    let mut trace = crate::symbols::process_trace();
    trace.threads = threads;
    trace.start_ns = trace
        .threads
        .iter()
        .filter_map(|t| t.events.first())
        .map(event_ts)
        .min()
        .unwrap_or(0);
    crate::symbols::name_events(&mut trace);
    trace
}

fn event_ts(e: &Event) -> u64 {
    match *e {
        Event::Call { ts, .. } | Event::Entry { ts, .. } | Event::Exit { ts, .. } => ts,
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stop();
        // Frames still hooked find no session from here on.
        if !retstack::unpublish_sink(self.inner.id) {
            // The wait gave up: a thread may still be in an exit path
            // reporting to this session. Keep it alive for good.
            std::mem::forget(self.inner.clone());
        }
    }
}
