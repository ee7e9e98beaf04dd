//! Converting a recorded trace file (`livetrace-format`'s `.lttrace`) into
//! every output format, with bounded memory whatever the file's size: the
//! reader brings records a chunk at a time and the writers keep no events
//! ([`crate::sink`]). `livetrace convert IN -o OUT` and the offline
//! `livetrace report IN` are these functions.
//!
//! * Records become [`Event`]s: ticks turned into `CLOCK_MONOTONIC` ns with
//!   the file's clock calibration, depths and callers as recorded. A run of
//!   the graph tracer's overflow records (calls too deep to follow) is one
//!   depth-limit loss where it happened.
//! * Losses are reported where they happened when the file shows where: a
//!   jump in a thread's record indices. Each jump is put down to the
//!   thread's loss reasons (from its LOSS blocks) in turn; what the LOSS
//!   blocks count beyond the jumps is reported at the thread's end, and
//!   losses no thread can be blamed for under tid 0.
//! * The order each writer needs: ftrace's `function` layout a single
//!   timeline (threads merged by time), the `function_graph` layout each
//!   thread whole, every other format the file's own block order (one
//!   sequential pass).
//! * Symbols are the file's (all of them are known before any record is
//!   read), named as livetrace names its own (`display_symbol`), with the
//!   functions' source locations its SOURCES blocks hold.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use livetrace_format as lf;

use crate::model::{Event, LossReason, Mapping, Process, ProfileRow, Summary, Symbols};
use crate::sink::Sink;

pub use lf::Format;

/// A recorded trace file, opened.
pub struct Recording<R> {
    reader: lf::Reader<R>,
    symbols: Symbols,
    process: Process,
}

/// Why a conversion failed.
#[derive(Debug)]
pub enum Error {
    /// The input is not a trace file this version reads.
    Input(String),
    /// The format does not suit the recording (the message says why).
    Unsuited(String),
    /// Reading or writing failed.
    Io(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Input(m) | Error::Unsuited(m) => f.write_str(m),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl Recording<BufReader<File>> {
    /// Opens the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let reader = lf::Reader::open(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        Recording::new(reader)
    }
}

fn loss_reason(r: lf::LossReason) -> LossReason {
    match r {
        lf::LossReason::BufferFull => LossReason::BufferFull,
        lf::LossReason::Overwritten => LossReason::Overwritten,
        lf::LossReason::NoBuffer => LossReason::NoBuffer,
        lf::LossReason::NotWritten => LossReason::NotWritten,
        lf::LossReason::Other(_) => LossReason::Unknown,
    }
}

impl<R: Read + Seek> Recording<R> {
    /// Wraps an opened reader: builds the symbol table and finds where the
    /// recording starts (its earliest record).
    pub fn new(mut reader: lf::Reader<R>) -> Result<Self, Error> {
        let mut symbols = Symbols::new();
        for s in reader.symbols() {
            symbols.insert(s.addr, s.size, lf::display_symbol(&s.name));
        }
        for l in reader.locations() {
            symbols.set_location(l.addr, l.file.clone(), l.line);
        }
        let clock = reader.clock();
        // Each thread's first record, read alone.
        let mut firsts: Vec<lf::BlockRef> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for b in reader.record_blocks() {
            if b.count > 0 && seen.insert(b.tid) {
                let mut one = *b;
                one.count = 1;
                firsts.push(one);
            }
        }
        let mut buf = Vec::new();
        let mut start = None::<u64>;
        for b in &firsts {
            reader.read_block(b, &mut buf)?;
            if let Some(r) = buf.first() {
                let ns = clock.to_ns(r.ts);
                start = Some(start.map_or(ns, |s| s.min(ns)));
            }
        }
        let info = reader.info();
        let process = Process {
            pid: info.pid,
            program: info.program.clone(),
            cmdline: info.cmdline.clone(),
            start_ns: start.unwrap_or(0),
            maps: reader
                .maps()
                .iter()
                .map(|m| Mapping {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    path: m.path.clone(),
                })
                .collect(),
        };
        Ok(Recording {
            reader,
            symbols,
            process,
        })
    }

    /// The reader, for what this type does not wrap.
    pub fn reader(&mut self) -> &mut lf::Reader<R> {
        &mut self.reader
    }

    /// The recorded process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The file's symbols, named for people.
    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The tracer that recorded.
    pub fn tracer(&self) -> Option<lf::Tracer> {
        self.reader.info().tracer
    }

    /// Feeds every record to `sink`, in `order`, and finishes it.
    pub fn feed<S: Sink + ?Sized>(
        &mut self,
        order: FileOrder,
        sink: &mut S,
    ) -> io::Result<Summary> {
        sink.begin(&self.process)?;
        let threads = self.reader.threads().to_vec();
        let mut feeder = Feeder {
            clock: self.reader.clock(),
            fallback: match self.reader.info().mode {
                Some(lf::Mode::Flight) => LossReason::Overwritten,
                _ => LossReason::BufferFull,
            },
            threads: threads
                .iter()
                .map(|t| ThreadFeed {
                    tid: t.tid,
                    next: 0,
                    overflows: 0,
                    unplaced: t.lost.0.iter().map(|&(r, n)| (loss_reason(r), n)).collect(),
                })
                .collect(),
            last: 0,
        };
        for t in &threads {
            sink.thread(t.tid, &t.name)?;
        }
        let symbols = &self.symbols;
        match order {
            FileOrder::Blocks => {
                self.reader.for_each_block(|b, records| {
                    feeder.chunk(b.tid, b.first, records, symbols, sink)
                })?;
            }
            FileOrder::ByThread => {
                for t in &threads {
                    let mut it = self.reader.thread_records(t.tid);
                    while let Some((first, records)) = it.next_chunk()? {
                        feeder.chunk(t.tid, first, records, symbols, sink)?;
                    }
                    feeder.end_thread(t.tid, sink)?;
                }
            }
            FileOrder::ByTime => {
                // A merged stream does not say where each thread's records
                // jump: its losses are reported first, as overwrite mode
                // loses the oldest.
                for t in &threads {
                    feeder.end_thread(t.tid, sink)?;
                }
                let mut merged = self.reader.merged();
                while let Some((tid, r)) = merged.next()? {
                    feeder.record(tid, &r, symbols, sink)?;
                }
            }
        }
        for t in &threads {
            feeder.end_thread(t.tid, sink)?;
        }
        for &(r, n) in &self.reader.unattributed().0 {
            sink.lost(0, n, loss_reason(r))?;
        }
        sink.finish(&self.symbols)
    }

    /// The profile tracer's table, named.
    pub fn profile_rows(&self) -> Vec<ProfileRow> {
        self.reader
            .profile()
            .iter()
            .map(|r| ProfileRow {
                name: lf::display_symbol(&r.name),
                calls: r.calls,
                total_ns: r.total_ns,
                self_ns: r.self_ns,
                min_ns: r.min_ns,
                max_ns: r.max_ns,
            })
            .collect()
    }
}

/// The order records are given to a writer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOrder {
    /// As the file holds them (threads interleaved by chunk): one pass.
    Blocks,
    /// Each thread whole, one after another.
    ByThread,
    /// All threads merged by timestamp.
    ByTime,
}

struct ThreadFeed {
    tid: u32,
    /// The index of the next record expected.
    next: u64,
    /// Overflow records seen and not yet reported.
    overflows: u64,
    /// Losses the file counts and no jump has yet been put down to.
    unplaced: Vec<(LossReason, u64)>,
}

struct Feeder {
    clock: lf::ClockCal,
    /// The reason for a jump the LOSS blocks do not account for.
    fallback: LossReason,
    threads: Vec<ThreadFeed>,
    last: usize,
}

impl Feeder {
    fn thread(&mut self, tid: u32) -> &mut ThreadFeed {
        if self.threads.get(self.last).is_none_or(|t| t.tid != tid) {
            match self.threads.iter().position(|t| t.tid == tid) {
                Some(i) => self.last = i,
                None => {
                    self.threads.push(ThreadFeed {
                        tid,
                        next: 0,
                        overflows: 0,
                        unplaced: Vec::new(),
                    });
                    self.last = self.threads.len() - 1;
                }
            }
        }
        &mut self.threads[self.last]
    }

    fn chunk<S: Sink + ?Sized>(
        &mut self,
        tid: u32,
        first: u64,
        records: &[lf::Record],
        symbols: &Symbols,
        sink: &mut S,
    ) -> io::Result<()> {
        let fallback = self.fallback;
        let t = self.thread(tid);
        if first > t.next {
            let mut gap = first - t.next;
            // Put the jump down to the reasons the file counts, in turn.
            let mut placed: Vec<(LossReason, u64)> = Vec::new();
            for (r, n) in t.unplaced.iter_mut() {
                let take = (*n).min(gap);
                if take > 0 {
                    *n -= take;
                    gap -= take;
                    placed.push((*r, take));
                }
            }
            if gap > 0 {
                placed.push((fallback, gap));
            }
            for (r, n) in placed {
                sink.lost(tid, n, r)?;
            }
        }
        let t = self.thread(tid);
        t.next = first + records.len() as u64;
        for r in records {
            self.record(tid, r, symbols, sink)?;
        }
        Ok(())
    }

    fn record<S: Sink + ?Sized>(
        &mut self,
        tid: u32,
        r: &lf::Record,
        symbols: &Symbols,
        sink: &mut S,
    ) -> io::Result<()> {
        let ts = self.clock.to_ns(r.ts);
        let depth = u32::try_from(r.b).unwrap_or(u32::MAX);
        let event = match r.kind() {
            lf::Kind::Call => Event::Call {
                ts,
                func: r.a,
                caller: r.b,
            },
            lf::Kind::Entry => Event::Entry {
                ts,
                func: r.a,
                depth,
            },
            lf::Kind::Exit => Event::Exit {
                ts,
                func: r.a,
                depth,
            },
            lf::Kind::Overflow => {
                self.thread(tid).overflows += 1;
                return Ok(());
            }
            lf::Kind::Other(_) => return Ok(()),
        };
        let t = self.thread(tid);
        if t.overflows > 0 {
            let n = std::mem::take(&mut t.overflows);
            sink.lost(tid, n, LossReason::DepthLimit)?;
        }
        sink.event(tid, event, symbols)
    }

    fn end_thread<S: Sink + ?Sized>(&mut self, tid: u32, sink: &mut S) -> io::Result<()> {
        let t = self.thread(tid);
        let overflows = std::mem::take(&mut t.overflows);
        let unplaced = std::mem::take(&mut t.unplaced);
        if overflows > 0 {
            sink.lost(tid, overflows, LossReason::DepthLimit)?;
        }
        for (r, n) in unplaced {
            if n > 0 {
                sink.lost(tid, n, r)?;
            }
        }
        Ok(())
    }
}

/// Where an output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Stdout,
    Path(PathBuf),
}

/// What a conversion wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// Events kept and lost, per thread.
    pub summary: Summary,
    /// Profile rows written (profile-tracer recordings).
    pub rows: usize,
}

/// Profile rows as a JSON array (the profile tracer's JSON output).
pub fn write_profile_json<W: Write>(rows: &[ProfileRow], mut out: W) -> io::Result<()> {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "calls": r.calls, "total_ns": r.total_ns,
                "self_ns": r.self_ns, "min_ns": r.min_ns, "max_ns": r.max_ns,
            })
        })
        .collect();
    serde_json::to_writer_pretty(&mut out, &rows).map_err(io::Error::other)?;
    writeln!(out)
}

/// The writer for `format` (of a `tracer` recording) writing to `dest`,
/// and the order it wants events in when the source can choose. Every
/// writer also takes events in any order (per thread in time order); a
/// live stream gives them as they come. The profile tracer's table is not
/// an event stream: see [`write_profile`].
pub fn sink_for(
    format: Format,
    tracer: lf::Tracer,
    dest: &Dest,
) -> Result<(Box<dyn Sink>, FileOrder), Error> {
    use crate::{chrome, folded, perfetto, profile, text, uftrace};
    format.suits(tracer).map_err(Error::Unsuited)?;
    if format.is_directory() && *dest == Dest::Stdout {
        return Err(Error::Unsuited(format!(
            "{} output is a directory: give it with -o NAME.uftrace.data",
            format.name()
        )));
    }
    if format == Format::Lttrace {
        return Err(Error::Unsuited(
            "lttrace is the recording format itself, not a conversion".to_string(),
        ));
    }
    if let (Format::Uftrace, Dest::Path(p)) = (format, dest) {
        return Ok((Box::new(uftrace::UftraceDir::new(p)), FileOrder::Blocks));
    }
    let out: Box<dyn Write> = match dest {
        Dest::Stdout => Box::new(BufWriter::with_capacity(1 << 16, io::stdout())),
        Dest::Path(p) => Box::new(BufWriter::with_capacity(1 << 16, File::create(p)?)),
    };
    Ok(match format {
        Format::Text if tracer == lf::Tracer::Function => {
            (Box::new(text::FunctionText::new(out)), FileOrder::ByTime)
        }
        Format::Text => (Box::new(text::GraphText::new(out)), FileOrder::ByThread),
        Format::Json => (Box::new(chrome::ChromeJson::new(out)), FileOrder::Blocks),
        Format::Perfetto => (
            Box::new(perfetto::PerfettoTrace::new(out)),
            FileOrder::Blocks,
        ),
        Format::Folded => (
            Box::new(folded::FoldedWriter::new(None, out)),
            FileOrder::Blocks,
        ),
        Format::Svg => (
            Box::new(folded::FlameGraph::new(None, out)),
            FileOrder::Blocks,
        ),
        Format::Profile => (Box::new(profile::ProfileTable::new(out)), FileOrder::Blocks),
        Format::Lttrace | Format::Uftrace => unreachable!("handled above"),
    })
}

/// The profile tracer's rows in `format` (text, profile: the table; json:
/// an array).
pub fn write_profile(rows: &[ProfileRow], format: Format, dest: &Dest) -> Result<(), Error> {
    format.suits(lf::Tracer::Profile).map_err(Error::Unsuited)?;
    let mut out: Box<dyn Write> = match dest {
        Dest::Stdout => Box::new(BufWriter::new(io::stdout())),
        Dest::Path(p) => Box::new(BufWriter::new(File::create(p)?)),
    };
    match format {
        Format::Json => write_profile_json(rows, &mut out)?,
        _ => crate::profile::write_table(rows, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

/// Writes `recording` in `format` to `dest`.
pub fn convert<R: Read + Seek>(
    recording: &mut Recording<R>,
    format: Format,
    dest: &Dest,
) -> Result<Converted, Error> {
    let tracer = recording.tracer().unwrap_or(lf::Tracer::Graph);
    if tracer == lf::Tracer::Profile {
        let rows = recording.profile_rows();
        write_profile(&rows, format, dest)?;
        return Ok(Converted {
            summary: Summary::default(),
            rows: rows.len(),
        });
    }
    let (mut sink, order) = sink_for(format, tracer, dest)?;
    let summary = recording.feed(order, &mut sink)?;
    Ok(Converted { summary, rows: 0 })
}

/// The offline report: the profile table of a recording, as `uftrace
/// report` prints one (the profile tracer's own table for its recordings).
pub fn report<R: Read + Seek, W: Write>(
    recording: &mut Recording<R>,
    out: W,
) -> Result<Converted, Error> {
    if recording.tracer() == Some(lf::Tracer::Profile) {
        let rows = recording.profile_rows();
        crate::profile::write_table(&rows, out)?;
        return Ok(Converted {
            summary: Summary::default(),
            rows: rows.len(),
        });
    }
    let summary = recording.feed(
        FileOrder::Blocks,
        &mut crate::profile::ProfileTable::new(out),
    )?;
    Ok(Converted { summary, rows: 0 })
}
