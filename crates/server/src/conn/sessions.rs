//! A connection's sessions: starting one, taking over the one `livetrace
//! record` started, passing its buffers, paging its function names,
//! freezing a flight recorder, draining and stopping.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use livetrace_proto::{
    BufferLayout, ClockInfo, Controls, Mode, Response, TracerKind, WireSymbol, WireTrace,
    MAX_EVENTS_PER_REPLY, MAX_FUNCTIONS_PER_REPLY,
};
use livetrace_tracers::{Config, Session};

use super::{flights, Conn, SessionSlot, MAX_SESSIONS, NEXT_SESSION};
use crate::Error;

impl Conn {
    pub(super) fn start(&mut self, tracer: TracerKind, spec: &Spec) -> Result<Response, Error> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(Error::TooManySessions(MAX_SESSIONS));
        }
        let session = livetrace_runtime::trace(config(tracer, spec)?)?;
        let id = self.adopt(session, tracer, spec.mode == Some(Mode::Flight));
        Ok(Response::Started { session: id })
    }

    /// Makes `session` this connection's; returns its id.
    fn adopt(&mut self, session: Session, tracer: TracerKind, flight: bool) -> u32 {
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        if flight {
            flights().push((id, Arc::downgrade(session.rings()), tracer));
        }
        self.sessions.insert(
            id,
            SessionSlot {
                session,
                tracer,
                pending: WireTrace::default(),
                stopped: false,
                flight,
                mapped: false,
            },
        );
        id
    }

    /// Takes over the session `livetrace record` started.
    pub(super) fn recording(&mut self) -> Result<Response, Error> {
        if !self.record {
            return Err(Error::Recording { taken: false });
        }
        match crate::record::take() {
            Some(Ok((session, tracer, flight))) => {
                let id = self.adopt(session, tracer, flight);
                Ok(Response::Started { session: id })
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::Recording { taken: true }),
        }
    }

    /// Replies with the buffers' memory files.
    pub(super) fn buffers(
        &mut self,
        session: u32,
        tracer: TracerKind,
        rings: Arc<livetrace_ring::Rings>,
    ) -> Result<Response, Error> {
        let Some((data, tails, l)) = rings.shared() else {
            return Err(Error::Buffers(None));
        };
        match (data.try_clone_to_owned(), tails.try_clone_to_owned()) {
            (Ok(d), Ok(t)) => self.fds = vec![d, t],
            (Err(e), _) | (_, Err(e)) => return Err(Error::Buffers(Some(e))),
        }
        if !l.overwrite {
            // A stream consumer releases exited threads' buffers itself;
            // threads that died without their exit hook are marked here.
            rings.maintain(false);
        }
        let c = livetrace_ring::Clock::get();
        let (base_ticks, base_ns, mult) = c.calibration();
        Ok(Response::Buffers {
            session,
            tracer,
            layout: BufferLayout {
                slots: l.slots,
                stride: l.stride,
                records: l.records,
                pool_header: l.pool_header,
                slot_header: l.slot_header,
                data_bytes: l.data_bytes,
                tails_bytes: l.tails_bytes,
                overwrite: l.overwrite,
            },
            clock: ClockInfo {
                tsc: c.source() == livetrace_ring::Source::Tsc,
                hz: c.frequency_hz(),
                base_ticks,
                base_ns,
                mult,
            },
        })
    }

    pub(super) fn functions(&mut self, session: u32, from: u32) -> Result<Response, Error> {
        let Some(s) = self.sessions.get(&session) else {
            return Err(Error::NoSession {
                id: session,
                frozen: false,
            });
        };
        // Also upkeep for stream consumers, which ask now and then: threads
        // that died without their exit hook are marked exited. A page past
        // every end is only that (and renews the lease).
        s.session.rings().maintain(s.flight);
        if from == u32::MAX {
            return Ok(Response::FunctionNames {
                functions: Vec::new(),
                next: None,
            });
        }
        let mut all = s.session.functions()?;
        all.sort_unstable();
        let from = from as usize;
        let end = (from + MAX_FUNCTIONS_PER_REPLY).min(all.len());
        let functions = all
            .get(from..end)
            .unwrap_or(&[])
            .iter()
            .map(|(addr, name)| WireSymbol {
                addr: *addr as u64,
                size: 0,
                name: name.clone(),
            })
            .collect();
        Ok(Response::FunctionNames {
            functions,
            next: (end < all.len()).then_some(end as u32),
        })
    }

    /// Freezes a flight recorder and passes its buffers.
    pub(super) fn snapshot(&mut self, session: Option<u32>) -> Result<Response, Error> {
        let found: Vec<(u32, Arc<livetrace_ring::Rings>, TracerKind)> = flights()
            .iter()
            .filter(|(id, _, _)| session.is_none_or(|s| s == *id))
            .filter_map(|(id, w, t)| Some((*id, w.upgrade()?, *t)))
            .collect();
        let (id, rings, tracer) = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(Error::NoFlightRecorder(session)),
            many => {
                return Err(Error::SeveralFlightRecorders(
                    many.iter().map(|(i, _, _)| *i).collect(),
                ))
            }
        };
        if !rings.is_frozen() {
            rings.freeze();
            self.frozen.push((id, rings.clone()));
        }
        self.buffers(id, tracer, rings)
    }
    pub(super) fn poll(&mut self, id: u32, stop: bool) -> Result<Response, Error> {
        let Some(slot) = self.sessions.get_mut(&id) else {
            return Err(Error::NoSession { id, frozen: false });
        };
        let mut profile = Vec::new();
        if stop && !slot.stopped {
            slot.session.stop()?;
            slot.stopped = true;
            if slot.tracer == TracerKind::Profile {
                profile = slot.session.profile().to_vec();
            }
        }
        if slot.tracer != TracerKind::Profile && !slot.mapped {
            let t = slot.session.drain();
            slot.pending.append(WireTrace::from(&t));
        }
        let front = slot.pending.split_front(MAX_EVENTS_PER_REPLY);
        let more = slot.pending.event_count() > 0;
        let stopped = slot.stopped;
        if stopped && !more {
            self.sessions.remove(&id);
        } else if !more {
            // Keep identity and symbols small between polls.
            slot.pending = WireTrace::default();
        }
        Ok(Response::Events {
            trace: front,
            more,
            stopped,
            profile,
        })
    }
}

/// What a request asks a session to be.
pub(crate) struct Spec {
    pub(crate) filter: Vec<String>,
    pub(crate) notrace: Vec<String>,
    pub(crate) buffer_records: Option<u64>,
    pub(crate) mode: Option<Mode>,
    pub(crate) memory_budget: Option<u64>,
    pub(crate) controls: Controls,
}

/// The session configuration for a request, with every address pattern
/// checked to be one of the process's sites.
pub(crate) fn config(tracer: TracerKind, spec: &Spec) -> Result<Config, Error> {
    let c = &spec.controls;
    let mut sites: Option<HashSet<usize>> = None;
    for p in spec
        .filter
        .iter()
        .chain(&spec.notrace)
        .chain(&c.start_at)
        .chain(&c.stop_at)
        .chain(&c.snapshot_at)
    {
        if let livetrace_ftrace::Pattern::Addr(a) = livetrace_ftrace::Pattern::parse(p) {
            let sites = match &mut sites {
                Some(s) => s,
                None => sites.insert(
                    livetrace_runtime::functions(None)?
                        .into_iter()
                        .map(|f| f.addr as usize)
                        .collect(),
                ),
            };
            if !sites.contains(&a) {
                return Err(Error::NotAFunction(a));
            }
        }
    }
    let filter: Vec<&str> = spec.filter.iter().map(String::as_str).collect();
    let mut cfg = Config::new(tracer, &filter);
    let parse = |v: &[String]| {
        v.iter()
            .map(|p| livetrace_ftrace::Pattern::parse(p))
            .collect()
    };
    cfg.notrace = parse(&spec.notrace);
    if let Some(n) = spec.buffer_records {
        cfg.ring.records_per_thread = n as usize;
    }
    if let Some(b) = spec.memory_budget {
        cfg.ring.memory_budget = b as usize;
    }
    // Buffers are committed up front up to 2 MiB; larger ones (streams)
    // as they first fill, so idle threads cost little memory.
    cfg.ring.prefault = cfg.ring.records_per_thread <= 64 * 1024;
    cfg.ring.mode = match spec.mode {
        Some(Mode::Stream) => livetrace_ring::Mode::DropNewest,
        Some(Mode::Flight) | None => livetrace_ring::Mode::Overwrite,
    };
    cfg.controls = livetrace_tracers::Controls {
        depth: c.depth,
        min_duration_ns: c.min_duration_ns.unwrap_or(0),
        start_at: parse(&c.start_at),
        stop_at: parse(&c.stop_at),
        snapshot_at: parse(&c.snapshot_at),
    };
    Ok(cfg)
}
