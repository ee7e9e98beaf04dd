//! Triggers: functions whose calls start or stop recording or freeze
//! the buffers, resolved to sites when the session starts and applied on
//! each call.

use std::collections::HashSet;
use std::sync::atomic::Ordering::*;

use super::{Config, Inner};

/// A trigger: a function whose call starts, stops or snapshots.
#[derive(Clone, Copy, Debug)]
pub(super) struct Trigger {
    pub(super) ip: usize,
    start: bool,
    stop: bool,
    snapshot: bool,
    /// Attached only to trigger: its own calls are never recorded.
    pub(super) only: bool,
}

/// The triggers of `c`, resolved to sites; `only` where the session's
/// filter would not trace the function itself.
pub(super) fn resolve_triggers(cfg: &Config) -> Result<Vec<Trigger>, livetrace_ftrace::Error> {
    let c = &cfg.controls;
    if c.start_at.is_empty() && c.stop_at.is_empty() && c.snapshot_at.is_empty() {
        return Ok(Vec::new());
    }
    // What the session's filter traces, by the core's own rules (a name
    // with a disambiguator, an entry, a relocated function's entry).
    let filtered: HashSet<usize> = livetrace_ftrace::named_by(&cfg.filter)?
        .into_iter()
        .collect();
    let skipped: HashSet<usize> = livetrace_ftrace::named_by(&cfg.notrace)?
        .into_iter()
        .collect();
    let mut out: Vec<Trigger> = Vec::new();
    for (list, which) in [(&c.start_at, 0), (&c.stop_at, 1), (&c.snapshot_at, 2)] {
        for p in list {
            let found = livetrace_ftrace::named_by(std::slice::from_ref(p))?;
            if found.is_empty() {
                return Err(livetrace_ftrace::Error::NoMatch {
                    pattern: p.to_string(),
                    set: "trigger",
                });
            }
            for ip in found {
                let traced =
                    (cfg.filter.is_empty() || filtered.contains(&ip)) && !skipped.contains(&ip);
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

impl Inner {
    /// The trigger at `ip`, if any.
    #[inline]
    fn trigger(&self, ip: usize) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.ip == ip)
    }

    /// Applies the triggers of a call at `ip`; returns whether the call is
    /// recorded.
    #[inline]
    pub(super) fn admit(&self, ip: usize) -> bool {
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
}
