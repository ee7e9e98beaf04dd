//! Reading what a session recorded: snapshots, drains, trace files.

use livetrace_output::{Event, ThreadTrace, Trace};
use livetrace_ring::Record;

use crate::layout::{CALL, ENTRY, EXIT, OVERFLOW};

use super::{Session, Tracer};

impl Session {
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
