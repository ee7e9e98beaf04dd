//! Tracing sessions: one tracer, its ops, its buffers, and what it read.
//!
//! A [`Session`] owns an ops attached to the functions its filter names and
//! the per-thread ring buffers its callback writes. Records are the
//! trace format's 32 bytes (`livetrace_format::Record`): `ts` in clock
//! ticks, then (function, caller or depth, kind).
//!
//! - **function**: one `CALL` record per call (function, caller).
//! - **graph**: an `ENTRY` record when the function is entered, its return
//!   hooked (see [`crate::retstack`]), and an `EXIT` record when it returns.
//! - **profile**: no records; the exit hook folds each call's total and
//!   self time into a per-thread table, merged when read.
//!
//! # Volume control
//!
//! [`Controls`] decide, in the traced thread and before anything reaches a
//! buffer, what is recorded at all: a depth limit and a minimum duration
//! for the graph tracer (uftrace's `-D` and `-t`), and triggers that start
//! and stop recording, or freeze a flight recorder's buffers for a
//! snapshot, when a given function is called (ftrace's `traceon`,
//! `traceoff` and `snapshot` commands). A session with any control records
//! through the Rust callbacks only: the assembly fast paths know none of
//! them.
//!
//! With a minimum duration, an entry is held back in the thread's state
//! until its call returns: a call at least that long is written then, with
//! the held-back entries of its callers first (as uftrace's time filter
//! does), so records stay in time order and every recorded call has its
//! callers.
//!
//! # Per-thread state
//!
//! A thread's state for a session (the slow-path count, the profile
//! table, held-back entries) is made on its first call with one anonymous
//! `mmap` and published on a lock-free list: no allocation and no lock, so
//! a thread's first traced call may be in a signal handler.
//!
//! # Lifetime
//!
//! Hooked frames may outlive a session (a traced `main` returns when the
//! program ends), so frames name their session by id (see
//! [`crate::retstack`]); a dropped session is simply not found, and the
//! frame returns without a record.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::Arc;

use livetrace_ftrace::{Call, Ops, Pattern};
use livetrace_output::{Event, ProfileRow, ThreadTrace, Trace};
use livetrace_ring::{Record, Rings};

use crate::layout::{CALL, ENTRY, EXIT, OVERFLOW};
use crate::retstack::{self, Sink, MAX_DEPTH};

/// Which tracer a session runs (the shared vocabulary's).
pub use livetrace_format::Tracer;

/// What a session records at all (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct Controls {
    /// Graph: record only calls at depth below this (1: top-level calls).
    pub depth: Option<u32>,
    /// Graph: record only calls lasting at least this many ns.
    pub min_duration_ns: u64,
    /// Record nothing until one of these functions is called; its call is
    /// the first recorded.
    pub start_at: Vec<Pattern>,
    /// Stop recording when one of these functions is called (its call is
    /// not recorded; calls entered before still record their exits).
    pub stop_at: Vec<Pattern>,
    /// Freeze the buffers for a snapshot when one of these is called.
    pub snapshot_at: Vec<Pattern>,
}

impl Controls {
    /// Whether any control is set.
    pub fn any(&self) -> bool {
        self.depth.is_some()
            || self.min_duration_ns > 0
            || !self.start_at.is_empty()
            || !self.stop_at.is_empty()
            || !self.snapshot_at.is_empty()
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
    /// Ring buffer size, mode and memory budget.
    pub ring: livetrace_ring::Config,
    /// Record through the assembly fast paths where they apply (see
    /// `fast.rs`); off, every event goes through the Rust callback. The
    /// records are the same either way. Also off for the whole process
    /// with `LIVETRACE_NO_FAST_PATH` set, and for sessions with controls.
    pub fast_path: bool,
    /// Volume control.
    pub controls: Controls,
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
            controls: Controls::default(),
        }
    }
}

/// The profiler's per-thread table: open addressing on the function
/// address, owned (written) by one thread, read by anyone. Zeroed memory
/// is an empty table.
#[repr(C)]
struct ProfileTable {
    slots: [ProfileSlot; PROFILE_SLOTS],
    full: AtomicU64,
}

#[repr(C)]
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

/// A graph entry held back until its call is known to last long enough.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    func: u64,
    ts: u64,
    /// The entry is held (set at entry, cleared at exit).
    live: bool,
    /// The entry was written (a callee lasted long enough).
    written: bool,
}

/// What one thread keeps for one session, written by that thread only
/// (plain loads and stores: no read-modify-write, no shared cache line).
/// Lives in its own anonymous mapping (zeroed memory is a valid empty
/// state), followed by the profile table for profile sessions.
#[repr(C)]
struct PerThread {
    /// The next thread's state (the session's list).
    next: AtomicPtr<PerThread>,
    /// The owning thread's serial ([`livetrace_ring::thread_serial`]).
    owner: u64,
    /// Bytes of the mapping.
    bytes: usize,
    /// Calls the Rust callback recorded while a fast path is installed (a
    /// thread's first call, a shared function, a full DropNewest buffer,
    /// the shadow stack full). Counted only then.
    slow_events: AtomicU64,
    /// The profile table after this struct, or null.
    profile: *const ProfileTable,
    /// Held-back entries by depth (minimum duration). Only its thread
    /// touches it.
    pending: UnsafeCell<[Pending; MAX_DEPTH]>,
}

thread_local! {
    /// This thread's [`PerThread`] for the session with the given id.
    static PER_THREAD: UnsafeCell<(u32, *const PerThread)> = const { UnsafeCell::new((0, std::ptr::null())) };
}

/// A trigger: a function whose call starts, stops or snapshots.
#[derive(Clone, Copy, Debug)]
struct Trigger {
    ip: usize,
    start: bool,
    stop: bool,
    snapshot: bool,
    /// Attached only to trigger: its own calls are never recorded.
    only: bool,
}

pub(crate) struct Inner {
    id: u32,
    tracer: Tracer,
    rings: Arc<Rings>,
    /// A tick value from the session's start: durations in ticks become
    /// nanoseconds as `to_ns(epoch + d) - to_ns(epoch)`.
    epoch: u64,
    /// Every thread's [`PerThread`] (a push-only list until the session
    /// is dropped).
    threads: AtomicPtr<PerThread>,
    /// The ops has a fast path.
    fast: bool,
    /// The process that started the session (see `per_thread`).
    pid: i32,
    /// Recording is on (the start and stop triggers flip it).
    recording: AtomicBool,
    depth: u32,
    min_ticks: u64,
    triggers: Vec<Trigger>,
    /// The ops' name, to find the functions it is attached to.
    ops_name: String,
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

    /// This thread's state, made on its first use with an `mmap` and a
    /// compare-and-swap (async-signal-safe); `None` in a fork child (its
    /// writes must not touch the parent's session), or if memory is out.
    fn per_thread(&self) -> Option<&PerThread> {
        PER_THREAD.with(|p| {
            // SAFETY: only this thread touches its cache.
            let cache = unsafe { &mut *p.get() };
            if cache.0 != self.id || cache.1.is_null() {
                let t = self.find_or_make_per_thread()?;
                cache.1 = t;
                cache.0 = self.id;
            }
            // SAFETY: kept alive by `threads` as long as the session, and
            // the session outlives every call into it.
            Some(unsafe { &*cache.1 })
        })
    }

    #[cold]
    fn find_or_make_per_thread(&self) -> Option<*const PerThread> {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } != self.pid {
            return None;
        }
        let me = livetrace_ring::thread_serial();
        let mut p = self.threads.load(Acquire);
        while !p.is_null() {
            // SAFETY: list entries live until the session is dropped.
            let t = unsafe { &*p };
            if t.owner == me {
                return Some(p);
            }
            p = t.next.load(Acquire);
        }
        let profile = self.tracer == Tracer::Profile;
        let page = 4096;
        let bytes = (std::mem::size_of::<PerThread>()
            + if profile {
                std::mem::size_of::<ProfileTable>()
            } else {
                0
            })
        .next_multiple_of(page);
        // SAFETY: a fresh anonymous mapping aliases nothing; failure is
        // MAP_FAILED.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return None;
        }
        let t = m.cast::<PerThread>();
        // SAFETY: the mapping is zeroed (a valid PerThread in every field
        // but these, written before it is published) and large enough for
        // the struct and, for a profile session, the table after it
        // (aligned: PerThread's size is a multiple of 8).
        unsafe {
            (&raw mut (*t).owner).write(me);
            (&raw mut (*t).bytes).write(bytes);
            if profile {
                let table = m.cast::<u8>().add(std::mem::size_of::<PerThread>());
                (&raw mut (*t).profile).write(table.cast());
            }
        }
        // Publish: a lock-free push (other threads may push too).
        let mut head = self.threads.load(Relaxed);
        loop {
            // SAFETY: ours until published.
            unsafe { (*t).next.store(head, Relaxed) };
            match self
                .threads
                .compare_exchange_weak(head, t, Release, Relaxed)
            {
                Ok(_) => return Some(t),
                Err(h) => head = h,
            }
        }
    }

    /// Every thread's state.
    fn each_thread(&self, mut f: impl FnMut(&PerThread)) {
        let mut p = self.threads.load(Acquire);
        while !p.is_null() {
            // SAFETY: list entries live until the session is dropped.
            let t = unsafe { &*p };
            f(t);
            p = t.next.load(Acquire);
        }
    }

    /// The trigger at `ip`, if any.
    #[inline]
    fn trigger(&self, ip: usize) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.ip == ip)
    }

    /// Applies the triggers of a call at `ip`; returns whether the call is
    /// recorded.
    #[inline]
    fn admit(&self, ip: usize) -> bool {
        if let Some(t) = self.trigger(ip) {
            if t.start {
                self.recording.store(true, Relaxed);
            }
            if t.stop {
                self.recording.store(false, Relaxed);
            }
            if t.snapshot {
                self.rings.trigger();
            }
            if t.only || t.stop {
                return false;
            }
        }
        self.recording.load(Relaxed)
    }

    fn write(&self, ts: u64, func: u64, b: u64, kind: u64) {
        self.rings.write(Record {
            ts,
            a: func,
            b,
            c: kind,
        });
    }

    /// A graph entry at `depth` passed the depth limit: record it, or hold
    /// it back (minimum duration).
    fn entry(&self, func: usize, ts: u64, depth: u32) {
        if self.min_ticks == 0 {
            self.write(ts, func as u64, depth as u64, ENTRY);
            return;
        }
        if let Some(t) = self.per_thread() {
            // SAFETY: only this thread touches its pending stack, and never
            // reentrantly (tracing is suppressed while we run).
            let pending = unsafe { &mut *t.pending.get() };
            pending[depth as usize] = Pending {
                func: func as u64,
                ts,
                live: true,
                written: false,
            };
        }
    }

    /// A graph exit at `depth`, whose entry was at `entry_ticks`.
    fn exit_graph(&self, func: usize, entry_ticks: u64, now: u64, depth: u32) {
        if depth >= self.depth {
            return;
        }
        if self.min_ticks == 0 {
            self.write(now, func as u64, depth as u64, EXIT);
            return;
        }
        let Some(t) = self.per_thread() else { return };
        // SAFETY: as in `entry`.
        let pending = unsafe { &mut *t.pending.get() };
        let d = depth as usize;
        let p = pending[d];
        if !p.live || p.func != func as u64 {
            return; // entered before a start trigger, or not ours
        }
        pending[d].live = false;
        if p.written {
            self.write(now, func as u64, depth as u64, EXIT);
        } else if now.wrapping_sub(entry_ticks) >= self.min_ticks {
            // Long enough: its held-back callers first, then the call.
            for (k, q) in pending[..d].iter_mut().enumerate() {
                if q.live && !q.written {
                    self.write(q.ts, q.func, k as u64, ENTRY);
                    q.written = true;
                }
            }
            self.write(p.ts, p.func, depth as u64, ENTRY);
            self.write(now, func as u64, depth as u64, EXIT);
        }
    }
}

impl Sink for Inner {
    fn exit(&self, func: usize, entry_ticks: u64, now: u64, child_ticks: u64, depth: u32) {
        match self.tracer {
            Tracer::Graph => self.exit_graph(func, entry_ticks, now, depth),
            Tracer::Profile => {
                let total = now.wrapping_sub(entry_ticks);
                if let Some(t) = self.per_thread() {
                    if !t.profile.is_null() {
                        // SAFETY: the table after the thread's state, made
                        // with it for profile sessions.
                        let table = unsafe { &*t.profile };
                        table.add(func, total, total.saturating_sub(child_ticks));
                    }
                }
            }
            Tracer::Function => {}
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut p = *self.threads.get_mut();
        while !p.is_null() {
            // SAFETY: the session is gone (no callback can run: its ops
            // was unregistered and waited for, its sink unpublished), so
            // nothing uses the list; each entry is its own mapping.
            unsafe {
                let next = (*p).next.load(Relaxed);
                libc::munmap(p.cast(), (*p).bytes);
                p = next;
            }
        }
    }
}

/// A running (or stopped) tracer.
pub struct Session {
    inner: Arc<Inner>,
    ops: Ops,
    running: bool,
}

// SAFETY: the raw pointers in Inner's thread list point at mappings the
// session owns, written only by their threads through atomics or their
// own cells; everything else is Sync.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

/// Whether `p` names the function `name` at `ip`.
fn pattern_names(p: &Pattern, ip: usize, name: &str) -> bool {
    match p {
        Pattern::Addr(a) => *a == ip,
        Pattern::Name(n) => n == name,
        Pattern::Glob(g) => livetrace_sites::Glob::new(g).matches(name),
    }
}

/// The triggers of `c`, resolved to sites; `only` where the session's
/// filter would not trace the function itself.
fn resolve_triggers(cfg: &Config) -> Result<Vec<Trigger>, livetrace_ftrace::Error> {
    let c = &cfg.controls;
    let mut out: Vec<Trigger> = Vec::new();
    for (list, which) in [(&c.start_at, 0), (&c.stop_at, 1), (&c.snapshot_at, 2)] {
        for p in list {
            let found: Vec<(usize, String)> = livetrace_ftrace::with_table(|t| {
                let idx: Vec<usize> = match p {
                    Pattern::Glob(g) => t.glob(g),
                    Pattern::Name(n) => t.lookup_name(n),
                    Pattern::Addr(a) => t.find(*a).into_iter().collect(),
                };
                idx.into_iter()
                    .filter(|&i| t.record(i).is_live())
                    .map(|i| (t.record(i).ip(), t.name(i).to_string()))
                    .collect()
            })?;
            if found.is_empty() {
                return Err(livetrace_ftrace::Error::NoMatch {
                    pattern: p.to_string(),
                    set: "trigger",
                });
            }
            for (ip, name) in found {
                let traced = (cfg.filter.is_empty()
                    || cfg.filter.iter().any(|f| pattern_names(f, ip, &name)))
                    && !cfg.notrace.iter().any(|f| pattern_names(f, ip, &name));
                let t = match out.iter_mut().find(|t| t.ip == ip) {
                    Some(t) => t,
                    None => {
                        out.push(Trigger {
                            ip,
                            start: false,
                            stop: false,
                            snapshot: false,
                            only: !traced,
                        });
                        out.last_mut().expect("just pushed")
                    }
                };
                match which {
                    0 => t.start = true,
                    1 => t.stop = true,
                    _ => t.snapshot = true,
                }
            }
        }
    }
    Ok(out)
}

impl Session {
    /// Starts tracing: attaches the tracer's ops as one live batch.
    pub fn start(cfg: Config) -> Result<Session, livetrace_ftrace::Error> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let id = NEXT.fetch_add(1, Relaxed);
        let triggers = resolve_triggers(&cfg)?;
        let rings = Rings::new(cfg.ring.clone());
        let kind = match cfg.tracer {
            Tracer::Function => Some(crate::fast::Kind::Function),
            Tracer::Graph => Some(crate::fast::Kind::Graph),
            Tracer::Profile => None,
        };
        // The fast paths know no volume control: they decline.
        let offsets = (cfg.fast_path && !cfg.controls.any())
            .then(crate::fast::offsets)
            .flatten();
        let fast = offsets
            .zip(kind)
            .and_then(|(o, k)| crate::fast::patch(k, o, rings.id(), id));
        let epoch = crate::clock_now();
        let clock = crate::clock();
        let min_ticks = if cfg.controls.min_duration_ns == 0 {
            0
        } else {
            // Ticks per ns from the calibration: the inverse of to_ns.
            let hz = clock.frequency_hz().max(1);
            ((u128::from(cfg.controls.min_duration_ns) * u128::from(hz)) / 1_000_000_000).max(1)
                as u64
        };
        let name = format!("{}#{}", cfg.tracer, id);
        let inner = Arc::new(Inner {
            id,
            tracer: cfg.tracer,
            rings,
            epoch,
            threads: AtomicPtr::new(std::ptr::null_mut()),
            fast: fast.is_some(),
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            recording: AtomicBool::new(cfg.controls.start_at.is_empty()),
            depth: cfg.controls.depth.unwrap_or(u32::MAX),
            min_ticks,
            triggers,
            ops_name: name.clone(),
        });
        // SAFETY: the session keeps `inner` alive until its Drop has
        // unpublished it.
        unsafe { retstack::publish_sink(inner.id, Arc::as_ptr(&inner) as *const dyn Sink) };
        let me = inner.clone();
        let mut b = Ops::builder(name);
        for p in &cfg.filter {
            b = b.filter(p.clone());
        }
        // Trigger functions the filter leaves out are attached too (only
        // to trigger).
        if !cfg.filter.is_empty() {
            for t in inner.triggers.iter().filter(|t| t.only) {
                b = b.filter(Pattern::Addr(t.ip));
            }
        }
        for p in &cfg.notrace {
            b = b.notrace(p.clone());
        }
        if let Some(code) = fast {
            // A graph session's frames also get the fast exit, if its slot
            // there is free (otherwise they take the Rust exit).
            if cfg.tracer == Tracer::Graph {
                crate::layout::add_sink(inner.id, inner.rings.id());
            }
            b = b.fast_path(code);
        }
        let controlled = cfg.controls.any();
        let ops = match cfg.tracer {
            Tracer::Function => b.build(move |call: &mut Call<'_>| {
                me.count_slow();
                if controlled && !me.admit(call.ip()) {
                    return;
                }
                let ts = crate::clock_now();
                me.write(ts, call.ip() as u64, call.parent_ip() as u64, CALL);
            }),
            Tracer::Graph | Tracer::Profile => {
                let id = me.id;
                b.build(move |call: &mut Call<'_>| {
                    me.count_slow();
                    if controlled && !me.admit(call.ip()) {
                        return;
                    }
                    let ts = crate::clock_now();
                    // SAFETY: the trampoline's return slot of this call; the
                    // session id is resolved through the registry at exit.
                    let depth = unsafe {
                        retstack::hook(call.return_slot(), call.ip(), ts, id, call.preserves_all())
                    };
                    match (depth, me.tracer) {
                        (Some(d), Tracer::Graph) if d < me.depth => {
                            me.entry(call.ip(), ts, d);
                        }
                        // Too deep to hook: the call is not followed, but
                        // it is counted where the outputs report it.
                        (None, _) => {
                            me.write(ts, call.ip() as u64, 0, OVERFLOW);
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

    /// The session's buffers: to pass them to a consumer in another
    /// process ([`Rings::shared`]) or freeze them for a snapshot.
    pub fn rings(&self) -> &Arc<Rings> {
        &self.inner.rings
    }

    /// Whether recording is on (start and stop triggers flip it).
    pub fn is_recording(&self) -> bool {
        self.inner.recording.load(Relaxed)
    }

    /// The functions the session is attached to: site address and name.
    pub fn functions(&self) -> Result<Vec<(usize, String)>, livetrace_ftrace::Error> {
        Ok(livetrace_ftrace::enabled_functions()?
            .into_iter()
            .filter(|f| f.ops.iter().any(|o| *o == self.inner.ops_name))
            .map(|f| (f.ip, f.name))
            .collect())
    }

    /// With a fast path: calls the Rust callback recorded instead (each
    /// thread's first call, functions shared with another ops, a full
    /// DropNewest buffer, overflowing shadow stacks). Zero without one.
    pub fn slow_path_events(&self) -> u64 {
        let mut n = 0;
        self.inner.each_thread(|t| n += t.slow_events.load(Relaxed));
        n
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

    /// Writes what the buffers hold now (without consuming it; the profile
    /// table for a profile session) as a trace file (`livetrace-format`),
    /// with the names of every address its records mention, the process's
    /// mappings and the clock's calibration: a file the converters read
    /// like one the command recorded. Returns the records written.
    pub fn write_recording<W: std::io::Write>(&self, out: W) -> std::io::Result<u64> {
        use livetrace_format as lf;
        let overwrite = self.inner.rings.config().mode == livetrace_ring::Mode::Overwrite;
        let (program, cmdline) = crate::symbols::process_identity();
        let mut w = lf::Writer::new(
            out,
            &lf::Info {
                pid: std::process::id(),
                tracer: Some(self.inner.tracer),
                mode: Some(if overwrite {
                    lf::Mode::Flight
                } else {
                    lf::Mode::Stream
                }),
                program,
                cmdline,
            },
        )?;
        let c = crate::clock();
        let (base_ticks, base_ns, mult) = c.calibration();
        w.clock(&lf::ClockCal {
            tsc: c.source() == livetrace_ring::Source::Tsc,
            hz: c.frequency_hz(),
            base_ticks,
            base_ns,
            mult,
        })?;
        let buffers = self.inner.rings.snapshot();
        let mut addrs = Vec::new();
        for b in &buffers {
            for r in &b.records {
                addrs.push(r.a);
                if r.c == CALL {
                    addrs.push(r.b);
                }
            }
        }
        let maps: Vec<lf::Mapping> = crate::symbols::process_trace()
            .maps
            .into_iter()
            .map(|m| lf::Mapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                path: m.path,
            })
            .collect();
        w.maps(&maps)?;
        let symbols: Vec<lf::Symbol> = crate::symbols::name_addrs(addrs)
            .into_iter()
            .map(|(addr, size, name)| lf::Symbol { addr, size, name })
            .collect();
        w.symbols(&symbols)?;
        let reason = if overwrite {
            lf::LossReason::Overwritten
        } else {
            lf::LossReason::BufferFull
        };
        let mut n = 0;
        for b in &buffers {
            let tid = b.tid as u32;
            w.thread(tid, &b.name, b.exited)?;
            w.loss(tid, reason, b.lost)?;
            // Overwritten records are the oldest: the first kept one's
            // index says how many came before.
            w.records(tid, if overwrite { b.lost } else { 0 }, &b.records)?;
            n += b.records.len() as u64;
        }
        w.loss(
            0,
            lf::LossReason::NoBuffer,
            self.inner.rings.unattributed_lost(),
        )?;
        if self.inner.tracer == Tracer::Profile {
            let rows: Vec<lf::ProfileRow> = self
                .profile()
                .into_iter()
                .map(|r| lf::ProfileRow {
                    name: r.name,
                    calls: r.calls,
                    total_ns: r.total_ns,
                    self_ns: r.self_ns,
                    min_ns: r.min_ns,
                    max_ns: r.max_ns,
                })
                .collect();
            w.profile(&rows)?;
        }
        w.end(&lf::End {
            reason: lf::EndReason::Snapshot,
            status: 0,
            message: String::new(),
        })?;
        w.into_inner()?;
        Ok(n)
    }

    /// The profile so far: one row per function, merged over threads.
    pub fn profile(&self) -> Vec<ProfileRow> {
        let clock = crate::clock();
        let epoch = self.inner.epoch;
        let base = clock.to_ns(epoch);
        let ns = |d: u64| clock.to_ns(epoch.wrapping_add(d)).saturating_sub(base);
        let mut by_func: HashMap<u64, ProfileRow> = HashMap::new();
        self.inner.each_thread(|t| {
            if t.profile.is_null() {
                return;
            }
            // SAFETY: the table after the thread's state.
            let table = unsafe { &*t.profile };
            for s in table.slots.iter() {
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
        });
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
