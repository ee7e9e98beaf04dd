//! Triggers: functions whose calls start or stop recording or freeze
//! the buffers, resolved to sites when the session starts and applied on
//! each call.

use std::sync::atomic::Ordering::*;

use livetrace_ftrace::Pattern;

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
pub(super) fn resolve_triggers(cfg: &Config) -> Result<Vec<Trigger>, livetrace_ftrace::Error> {
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
