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

mod config;
mod per_thread;
mod profile;
mod read;
mod record;
mod triggers;

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering::*};
use std::sync::Arc;

use livetrace_ftrace::{Call, Ops, Pattern};
use livetrace_ring::Rings;

use crate::layout::{CALL, OVERFLOW};
use crate::retstack::{self, Sink};
use per_thread::PerThread;
use triggers::{resolve_triggers, Trigger};

pub use config::{Config, Controls};

/// Which tracer a session runs (the shared vocabulary's).
pub use livetrace_format::Tracer;

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
