//! The recording loop `trace`, `record` and `snapshot` share: a session's
//! buffers mapped, its records moved out pass after pass (stream) or once
//! at the end (flight recorder), the process's names written alongside,
//! until the user, the program or a trigger ends it; and the outputs it
//! can write to.
//!
//! At the end the recording is told where the traced functions are in
//! their source (a SOURCES block): what the process reports for its
//! `#[traced]` functions, else the line their objects' debug information
//! gives for their first instruction ([`crate::source::Sources`]). That is
//! one lookup per function, made here, after the records are out, so
//! neither the traced process nor the recording's pace pays for it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use livetrace_format::{
    ClockCal, End, EndReason, Format, Info, Location, Mapping, Mode, ProfileRow, Symbol, Tracer,
};
use livetrace_output::Process;
use livetrace_proto::{Client, ClientError, Request, Response};

use crate::consume::{FileOut, LiveOut, Out, Source, Stats};
use crate::symtab::Known;
use crate::ui::{self, Progress};
use crate::Error;

/// Why recording ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C, the duration, or the caller's own reason.
    Asked,
    /// The traced process went away.
    ProgramEnded,
    /// A flight recorder's snapshot trigger fired.
    Triggered,
}

/// A session of a process, attached to.
pub struct Attached {
    pub client: Client,
    pub id: u32,
    pub pid: u32,
    pub tracer: Tracer,
    pub flight: bool,
    pub source: Option<Source>,
    clock: ClockCal,
    names: Vec<Symbol>,
    known: Known,
    /// Names learnt before the output was open, to write first.
    pending: Option<(Vec<Mapping>, Vec<Symbol>)>,
    /// Every mapping written, to find functions' objects by.
    maps: Vec<Mapping>,
    /// Without the traced functions' names (a snapshot), the addresses of
    /// every symbol written: the functions whose locations to find.
    symbol_addrs: Vec<u64>,
    /// `file:line` the process reports for its traced functions
    /// (`#[traced]` records them), by address.
    reported: HashMap<u64, (String, u32)>,
    /// Functions whose location was looked for.
    located: HashSet<u64>,
    alive: bool,
    last_ping: Instant,
    last_names: Instant,
    /// Records were written since the output was last flushed.
    unflushed: bool,
    progress: Progress,
    started: Instant,
}

/// Whether the peer closed `client`'s socket (the server never speaks
/// unasked, so anything readable between calls is the end).
fn closed(client: &Client) -> bool {
    let mut p = libc::pollfd {
        fd: client.stream().as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// Whether a call failed because the process went away.
fn gone(e: &ClientError) -> bool {
    matches!(e, ClientError::Frame(_))
}

impl Attached {
    /// Maps session `id`'s buffers (`snapshot`: freezes a flight recorder
    /// and maps it, `id` naming it if not the only one) and learns the
    /// names of the functions it traces.
    pub fn new(
        mut client: Client,
        id: Option<u32>,
        tracer: Tracer,
        flight: bool,
        snapshot: bool,
    ) -> Result<Attached, Error> {
        let pid = client.server().pid;
        // Names first: a recorded program that ends at once waits at its
        // exit only until its buffers are mapped, and its maps and function
        // table go with it.
        let mut names = Vec::new();
        if !snapshot {
            let mut from = 0;
            loop {
                let Response::FunctionNames { functions, next } =
                    client.call(&Request::Functions {
                        session: id.unwrap_or(0),
                        from,
                    })?
                else {
                    return Err(Error::UnexpectedReply);
                };
                names.extend(functions.into_iter().map(|f| Symbol {
                    addr: f.addr,
                    size: f.size,
                    name: f.name,
                }));
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
        }
        let reported = if snapshot {
            HashMap::new()
        } else {
            reported_locations(&mut client, &names)?
        };
        let mut known = Known::default();
        let pending = known.refresh(pid, &names);
        let mut source = None;
        let mut clock = ClockCal::default();
        let mut id = id.unwrap_or(0);
        let mut tracer = tracer;
        if tracer != Tracer::Profile || snapshot {
            let req = if snapshot {
                Request::Snapshot {
                    session: (id != 0).then_some(id),
                }
            } else {
                Request::MapBuffers { session: id }
            };
            let (resp, fds) = client.call_with_fds(&req)?;
            let Response::Buffers {
                session,
                tracer: t,
                layout: l,
                clock: c,
            } = resp
            else {
                return Err(Error::UnexpectedReply);
            };
            let [data, tails]: [std::os::fd::OwnedFd; 2] =
                fds.try_into().map_err(|_| Error::NoBuffers)?;
            let layout = livetrace_ring::Layout {
                slots: l.slots,
                stride: l.stride,
                records: l.records,
                pool_header: l.pool_header,
                slot_header: l.slot_header,
                data_bytes: l.data_bytes,
                tails_bytes: l.tails_bytes,
                overwrite: l.overwrite,
            };
            let shm = livetrace_ring::shm::Consumer::new(data, tails, layout)
                .map_err(|e| Error::io("cannot map the process's buffers", e))?;
            clock = ClockCal {
                tsc: c.tsc,
                hz: c.hz,
                base_ticks: c.base_ticks,
                base_ns: c.base_ns,
                mult: c.mult,
            };
            source = Some(Source::new(shm));
            id = session;
            tracer = t;
        }
        Ok(Attached {
            client,
            id,
            pid,
            tracer,
            flight,
            source,
            clock,
            names,
            known,
            pending: Some(pending),
            maps: Vec::new(),
            symbol_addrs: Vec::new(),
            reported,
            located: HashSet::new(),
            alive: true,
            last_ping: Instant::now(),
            last_names: Instant::now(),
            unflushed: false,
            progress: Progress::new(),
            started: Instant::now(),
        })
    }

    /// What the recording's INFO block says.
    pub fn info(&self) -> Info {
        let s = self.client.server();
        Info {
            pid: s.pid,
            tracer: Some(self.tracer),
            mode: Some(if self.flight {
                Mode::Flight
            } else {
                Mode::Stream
            }),
            program: s.program.clone(),
            cmdline: s.cmdline.clone(),
        }
    }

    pub fn clock(&self) -> ClockCal {
        self.clock
    }

    /// The process facts a streaming writer starts with.
    pub fn process(&self) -> Process {
        let s = self.client.server();
        Process {
            pid: s.pid,
            program: s.program.clone(),
            cmdline: s.cmdline.clone(),
            start_ns: monotonic_ns(),
            maps: crate::symtab::exec_maps(self.pid)
                .into_iter()
                .map(|m| livetrace_output::Mapping {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    path: m.path,
                })
                .collect(),
        }
    }

    /// Writes the names of what the process maps now and did not before.
    pub fn names(&mut self, out: &mut dyn Out) -> io::Result<()> {
        let pending = self.pending.take();
        let fresh = self.known.refresh(self.pid, &self.names);
        for (maps, symbols) in pending.into_iter().chain([fresh]) {
            if maps.is_empty() && symbols.is_empty() {
                continue;
            }
            out.names(&maps, &symbols)?;
            self.maps.extend(maps);
            if self.names.is_empty() {
                self.symbol_addrs.extend(symbols.iter().map(|s| s.addr));
            }
        }
        Ok(())
    }

    /// Writes where the traced functions not yet located are in their
    /// source: as the process reports it, else from their objects' debug
    /// information. Functions with neither get nothing.
    pub fn locate(&mut self, out: &mut dyn Out) -> io::Result<()> {
        let addrs: Vec<u64> = if self.names.is_empty() {
            self.symbol_addrs.clone()
        } else {
            self.names.iter().map(|n| n.addr).collect()
        };
        let mut sources: Option<crate::source::Sources> = None;
        let mut found = Vec::new();
        for addr in addrs {
            if !self.located.insert(addr) {
                continue;
            }
            let loc = match self.reported.get(&addr) {
                Some((file, line)) => Some((file.clone(), *line)),
                None => sources
                    .get_or_insert_with(|| {
                        crate::source::Sources::with_maps(self.pid, self.maps.clone())
                    })
                    .locate(addr),
            };
            if let Some((file, line)) = loc {
                found.push(Location { addr, line, file });
            }
        }
        out.locations(&found)
    }

    pub fn stats(&self) -> Stats {
        self.source
            .as_ref()
            .map(|s| s.stats.clone())
            .unwrap_or_default()
    }

    /// Keeps the connection's lease, and has the process mark threads that
    /// died without their exit hook (a `Functions` request past the end).
    fn upkeep(&mut self) -> Result<(), Error> {
        let every = (self.client.server().lease / 4).max(Duration::from_millis(100));
        if self.alive && self.last_ping.elapsed() >= every {
            match self.client.call(&Request::Functions {
                session: self.id,
                from: u32::MAX,
            }) {
                Ok(_) => {}
                Err(e) if gone(&e) => self.alive = false,
                Err(e) => return Err(e.into()),
            }
            self.last_ping = Instant::now();
        }
        Ok(())
    }

    /// Moves records out until `stop` says why to end, the process goes
    /// away, or (flight recorder) a trigger fires.
    pub fn run(
        &mut self,
        out: &mut dyn Out,
        stop: &mut dyn FnMut(&Attached) -> Option<Stop>,
    ) -> Result<Stop, Error> {
        self.names(out).map_err(write_error)?;
        loop {
            if let Some(s) = stop(self) {
                return Ok(s);
            }
            if !self.alive || closed(&self.client) {
                self.alive = false;
                return Ok(Stop::ProgramEnded);
            }
            let mut moved = 0;
            if let Some(src) = self.source.as_mut() {
                if self.flight {
                    if src.triggers() > 0 {
                        return Ok(Stop::Triggered);
                    }
                } else {
                    moved = src.pass(out, true).map_err(write_error)?;
                }
            }
            if self.last_names.elapsed() >= Duration::from_secs(1) {
                self.last_names = Instant::now();
                self.names(out).map_err(write_error)?;
                if let Some(src) = self.source.as_mut() {
                    src.refresh_names(self.pid, out).map_err(write_error)?;
                }
            }
            self.upkeep()?;
            let st = self.stats();
            let (pid, secs, flight) = (self.pid, self.started.elapsed().as_secs_f64(), self.flight);
            self.progress.update(|| {
                if flight {
                    format!(
                        "flight recorder on pid {pid}: {secs:.1}s (Ctrl-C to write the snapshot)"
                    )
                } else {
                    format!(
                        "tracing pid {pid}: {} events, {} lost, {secs:.1}s (Ctrl-C to stop)",
                        ui::count(st.kept()),
                        ui::count(st.lost())
                    )
                }
            });
            if moved == 0 {
                // Drained: what the last passes wrote reaches its reader
                // now (once per busy spell, not every idle millisecond).
                if self.unflushed {
                    self.unflushed = false;
                    out.idle().map_err(write_error)?;
                }
                std::thread::sleep(Duration::from_millis(if self.flight { 20 } else { 1 }));
            } else {
                self.unflushed = true;
            }
        }
    }

    /// Ends the session's recording: detaches the tracer (if the process
    /// is still there) and moves out what is left: everything (stream), or
    /// what the buffers hold, held still (flight recorder).
    pub fn finish(&mut self, out: &mut dyn Out) -> Result<(), Error> {
        self.progress.finish();
        if self.flight {
            if self.alive {
                // Freeze (this connection thaws it when it ends).
                if let Err(e) = self.client.call_with_fds(&Request::Snapshot {
                    session: Some(self.id),
                }) {
                    if gone(&e) {
                        self.alive = false;
                    } else {
                        return Err(e.into());
                    }
                }
            }
            if let Some(src) = self.source.as_mut() {
                src.pass(out, false).map_err(write_error)?;
            }
        } else {
            if self.alive {
                match self.client.call(&Request::StopTrace { session: self.id }) {
                    Ok(_) => {}
                    Err(e) if gone(&e) => self.alive = false,
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(src) = self.source.as_mut() {
                // Calls in flight at the detach may still record exits.
                while src.pass(out, true).map_err(write_error)? > 0 {}
            }
        }
        self.names(out).map_err(write_error)?;
        self.locate(out).map_err(write_error)?;
        Ok(())
    }

    /// The profile tracer's rows: the session's, now.
    pub fn profile(&mut self) -> Result<Option<(Vec<ProfileRow>, bool)>, Error> {
        match self.client.call(&Request::Profile { session: self.id }) {
            Ok(Response::Profile { rows, last }) => Ok(Some((rows, last))),
            Ok(_) => Err(Error::UnexpectedReply),
            Err(e) if gone(&e) => {
                self.alive = false;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops a profile session and returns its final rows.
    pub fn stop_profile(&mut self) -> Result<Option<Vec<ProfileRow>>, Error> {
        match self.client.call(&Request::StopTrace { session: self.id }) {
            Ok(Response::Events { profile, .. }) => Ok(Some(profile)),
            Ok(_) => Err(Error::UnexpectedReply),
            Err(e) if gone(&e) => {
                self.alive = false;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits, keeping the lease, until `stop` says or the process ends.
    pub fn idle(&mut self, stop: &mut dyn FnMut(&Attached) -> Option<Stop>) -> Result<Stop, Error> {
        loop {
            if let Some(s) = stop(self) {
                return Ok(s);
            }
            if !self.alive || closed(&self.client) {
                self.alive = false;
                return Ok(Stop::ProgramEnded);
            }
            self.upkeep()?;
            ui::nap(Duration::from_millis(50));
        }
    }
}

/// The `file:line` the process reports for the enabled functions among
/// `names` (a server that cannot say is taken to know none).
fn reported_locations(
    client: &mut Client,
    names: &[Symbol],
) -> Result<HashMap<u64, (String, u32)>, Error> {
    let ours: HashSet<u64> = names.iter().map(|n| n.addr).collect();
    let functions = match client.call(&Request::ListFunctions {
        glob: None,
        enabled_only: true,
    }) {
        Ok(Response::Functions { functions }) => functions,
        Ok(_) | Err(ClientError::Server { .. }) => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(functions
        .into_iter()
        .filter(|f| ours.contains(&f.addr))
        .filter_map(|f| {
            let (file, line) = f.source.rsplit_once(':')?;
            let line: u32 = line.parse().ok().filter(|&l| l > 0)?;
            Some((f.addr, (file.to_string(), line)))
        })
        .collect())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A write failure, said as such (the recording holds what came before),
/// or [`Error::ReaderGone`].
fn write_error(e: io::Error) -> Error {
    Error::write(e)
}

/// Where records go, and what happens at the end.
pub enum Output {
    /// The recording file; with `convert`, converted to that at the end
    /// and removed.
    File {
        out: FileOut,
        path: PathBuf,
        convert: Option<(PathBuf, Format)>,
    },
    /// A streaming writer, fed as records come.
    Live { out: LiveOut, dest: Option<PathBuf> },
}

mod output;
pub use output::*;
