//! What a session is asked for: the tracer, the functions, the buffers
//! and the volume [`Controls`].

use livetrace_ftrace::Pattern;

use super::Tracer;

/// What a session records at all (see the `session` module documentation).
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
