//! Moving a session's records out of its shared buffers
//! (`livetrace_ring::shm`) into a recording, with no work per record: a
//! pass over the buffers finds, in each, the records between what was
//! consumed and the writer's `head`, and hands them to an [`Out`] as file
//! ranges (the recording file copies them with `sendfile`, kernel to
//! kernel) or, for the outputs that decode, as records read through the
//! mapping (whose pages are dropped right after, so the command's memory
//! stays small). Then the buffer's tail is stored: room for its writer.
//! Losses are read from the buffers' counters as they grow: per thread,
//! with why.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, BorrowedFd};

use livetrace_format::{
    ClockCal, End, Info, Location, LossReason, Mapping, ProfileRow, Record, Symbol, Writer,
    MAX_BLOCK_RECORDS,
};
use livetrace_output::{Event, Process, Sink, Summary, Symbols};
use livetrace_ring::shm::Consumer;

/// Where records go.
pub trait Out {
    /// A thread appeared, was renamed, or exited.
    fn thread(&mut self, tid: u32, name: &str, exited: bool) -> io::Result<()>;
    /// Records of thread `tid` from stream index `first`, at `pieces`
    /// (file offset, records) of the data file `fd`; `Ok(false)` to be
    /// given them by [`Out::records`] instead.
    fn copy(
        &mut self,
        _tid: u32,
        _first: u64,
        _fd: BorrowedFd<'_>,
        _pieces: &[(u64, u64)],
    ) -> io::Result<bool> {
        Ok(false)
    }
    /// Records of thread `tid` from stream index `first`.
    fn records(&mut self, tid: u32, first: u64, records: &[Record]) -> io::Result<()>;
    /// `n` records of thread `tid` (0: none) lost for `reason`.
    fn loss(&mut self, tid: u32, reason: LossReason, n: u64) -> io::Result<()>;
    /// New mappings and the symbols of what they map.
    fn names(&mut self, maps: &[Mapping], symbols: &[Symbol]) -> io::Result<()>;
    /// Where functions are in their source.
    fn locations(&mut self, locations: &[Location]) -> io::Result<()>;
    /// The buffers are drained for now: push out what is buffered, so a
    /// reader (a terminal, a pipe) sees the first events without waiting
    /// for a buffer to fill.
    fn idle(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one thread kept and lost.
#[derive(Clone, Debug, Default)]
pub struct ThreadStat {
    pub name: String,
    pub kept: u64,
    pub lost: livetrace_format::Losses,
}

/// Kept and lost, per thread (tid 0: records of threads with no buffer).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub threads: BTreeMap<u32, ThreadStat>,
}

impl Stats {
    pub fn kept(&self) -> u64 {
        self.threads.values().map(|t| t.kept).sum()
    }
    pub fn lost(&self) -> u64 {
        self.threads.values().map(|t| t.lost.total()).sum()
    }
    fn thread(&mut self, tid: u32) -> &mut ThreadStat {
        self.threads.entry(tid).or_default()
    }

    /// The closing lines: each thread that lost records (and why), then
    /// the totals and where they went, worded as `livetrace convert` words
    /// them (`N events written to PLACE from T threads, M lost`, plain
    /// numbers, so scripts can read the count).
    pub fn report(&self, place: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for (tid, t) in self.threads.iter().filter(|(_, t)| t.lost.total() > 0) {
            let who = if *tid == 0 {
                "threads without a buffer".to_string()
            } else if t.name.is_empty() {
                format!("tid {tid}")
            } else {
                format!("tid {tid} ({})", t.name)
            };
            let why: Vec<String> = t
                .lost
                .0
                .iter()
                .map(|(r, n)| format!("{} {}", crate::ui::count(*n), r.describe()))
                .collect();
            lines.push(format!(
                "{who}: {} kept, {} lost: {}",
                crate::ui::count(t.kept),
                crate::ui::count(t.lost.total()),
                why.join(", ")
            ));
        }
        let threads = self
            .threads
            .iter()
            .filter(|(t, s)| **t != 0 && s.kept > 0)
            .count();
        lines.push(format!(
            "{} events written to {place} from {threads} thread{}, {} lost",
            self.kept(),
            if threads == 1 { "" } else { "s" },
            self.lost(),
        ));
        lines
    }
}

/// Where one buffer's current owner is.
struct Cursor {
    generation: u64,
    tid: u32,
    name: String,
    /// Records consumed (stream index of the next).
    consumed: u64,
    /// The writer's refusal count as last seen.
    dropped: u64,
    exited: bool,
}

/// A session's buffers, mapped.
pub struct Source {
    shm: Consumer,
    cursors: Vec<Option<Cursor>>,
    unattributed: u64,
    pub stats: Stats,
    buf: Vec<Record>,
}

impl Source {
    pub fn new(shm: Consumer) -> Source {
        let n = shm.layout().slots as usize;
        Source {
            shm,
            cursors: (0..n).map(|_| None).collect(),
            unattributed: 0,
            stats: Stats::default(),
            buf: Vec::new(),
        }
    }

    pub fn triggers(&self) -> u64 {
        self.shm.triggers()
    }

    /// Moves out what is new in every buffer. `consume`: stream mode (the
    /// tail is stored, exited threads' buffers released, ranges copied
    /// straight from the file); else a flight-recorder snapshot (records
    /// read with the seqlock check, nothing stored). Returns the records
    /// moved.
    pub fn pass(&mut self, out: &mut dyn Out, consume: bool) -> io::Result<u64> {
        let cap = self.shm.layout().records;
        let mut moved = 0;
        for i in 0..self.shm.layout().slots {
            let Some(v) = self.shm.slot(i) else { continue };
            let tid = v.tid.max(0) as u32;
            let fresh = self.cursors[i as usize]
                .as_ref()
                .is_none_or(|c| c.generation != v.generation);
            if fresh {
                // A new owner: records from what an earlier consumer left.
                self.cursors[i as usize] = Some(Cursor {
                    generation: v.generation,
                    tid,
                    name: v.name.clone(),
                    consumed: v.tail.min(v.head),
                    dropped: 0,
                    exited: false,
                });
                out.thread(tid, &v.name, false)?;
                let st = self.stats.thread(tid);
                if st.name.is_empty() {
                    st.name = v.name.clone();
                }
            }
            let c = self.cursors[i as usize].as_mut().expect("set above");
            if v.dropped > c.dropped {
                let n = v.dropped - c.dropped;
                c.dropped = v.dropped;
                // In stream mode a refusal means the consumer fell behind;
                // a flight recorder refuses only while frozen, after the
                // snapshot point: not a loss of what it shows.
                if consume {
                    out.loss(tid, LossReason::BufferFull, n)?;
                    self.stats.thread(tid).lost.add(LossReason::BufferFull, n);
                }
            }
            let head = v.head;
            if head.saturating_sub(c.consumed) > cap {
                // Overwritten before we could read them (flight recorder).
                let n = head - cap - c.consumed;
                out.loss(tid, LossReason::Overwritten, n)?;
                self.stats.thread(tid).lost.add(LossReason::Overwritten, n);
                c.consumed = head - cap;
            }
            while c.consumed < head {
                let n = (head - c.consumed).min(MAX_BLOCK_RECORDS as u64);
                let to = c.consumed + n;
                let pieces = self.shm.pieces(i, c.consumed, to);
                let copied = consume && out.copy(tid, c.consumed, self.shm.data_fd(), &pieces)?;
                let kept = if copied {
                    n
                } else {
                    let first = self.shm.copy_intact(i, c.consumed, to, &mut self.buf);
                    self.shm.forget(i, c.consumed, to);
                    if first > c.consumed {
                        let gone = first - c.consumed;
                        out.loss(tid, LossReason::Overwritten, gone)?;
                        self.stats
                            .thread(tid)
                            .lost
                            .add(LossReason::Overwritten, gone);
                    }
                    if !self.buf.is_empty() {
                        out.records(tid, first, &self.buf)?;
                    }
                    self.buf.len() as u64
                };
                c.consumed = to;
                moved += kept;
                self.stats.thread(tid).kept += kept;
            }
            if consume {
                self.shm.set_tail(i, head);
            }
            // `exited` was read before `head`: this head is the final one.
            if v.exited && !c.exited {
                c.exited = true;
                out.thread(tid, &c.name, true)?;
                if consume {
                    self.shm.release(i, v.generation);
                }
            }
        }
        let u = self.shm.unattributed();
        if u > self.unattributed {
            let n = u - self.unattributed;
            self.unattributed = u;
            out.loss(0, LossReason::NoBuffer, n)?;
            self.stats.thread(0).lost.add(LossReason::NoBuffer, n);
        }
        Ok(moved)
    }

    /// Re-reads the live threads' names (threads rename themselves).
    pub fn refresh_names(&mut self, pid: u32, out: &mut dyn Out) -> io::Result<()> {
        for c in self.cursors.iter_mut().flatten().filter(|c| !c.exited) {
            let Ok(mut name) = std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", c.tid))
            else {
                continue;
            };
            if name.ends_with('\n') {
                name.pop();
            }
            if name != c.name {
                c.name.clone_from(&name);
                out.thread(c.tid, &name, false)?;
                self.stats.thread(c.tid).name = name;
            }
        }
        Ok(())
    }
}

/// The recording file itself: records copied in as they are.
pub struct FileOut {
    w: Writer<BufWriter<File>>,
}

impl FileOut {
    pub fn create(path: &std::path::Path, info: &Info, clock: &ClockCal) -> io::Result<FileOut> {
        let f = File::create(path)?;
        let mut w = Writer::new(BufWriter::with_capacity(1 << 16, f), info)?;
        w.clock(clock)?;
        Ok(FileOut { w })
    }

    pub fn profile(&mut self, rows: &[ProfileRow]) -> io::Result<()> {
        self.w.profile(rows)
    }

    /// Writes the END block and flushes.
    pub fn finish(mut self, end: &End) -> io::Result<()> {
        self.w.end(end)?;
        let f = self.w.into_inner()?;
        f.into_inner().map_err(|e| e.into_error())?.sync_data()
    }
}

impl Out for FileOut {
    fn thread(&mut self, tid: u32, name: &str, exited: bool) -> io::Result<()> {
        self.w.thread(tid, name, exited)
    }

    fn copy(
        &mut self,
        tid: u32,
        first: u64,
        fd: BorrowedFd<'_>,
        pieces: &[(u64, u64)],
    ) -> io::Result<bool> {
        let total: u64 = pieces.iter().map(|p| p.1).sum();
        let block = self.w.bytes();
        self.w.begin_records(tid, first, total as usize)?;
        // The block header is buffered: out first, then the records by
        // sendfile, at the file's position.
        self.w.get_mut().flush()?;
        let out = self.w.get_mut().get_ref().as_raw_fd();
        let mut sent = 0u64;
        if let Err(e) = send(out, fd, pieces, &mut sent) {
            // Keep the records that made it (a full disk): the block says
            // how many, and a partial record is cut off. Both only shrink
            // what the file holds, which needs no space.
            let whole = sent / 32;
            let len = (16 + 32 * whole).to_le_bytes();
            // SAFETY: pwrite of 8 bytes from a local array into our file;
            // ftruncate of our file.
            unsafe {
                libc::pwrite(out, len.as_ptr().cast(), 8, (block + 8) as libc::off_t);
                libc::ftruncate(out, (block + 32 + 32 * whole) as libc::off_t);
            }
            return Err(e);
        }
        self.w.end_records(total as usize);
        Ok(true)
    }

    fn records(&mut self, tid: u32, first: u64, records: &[Record]) -> io::Result<()> {
        self.w.records(tid, first, records)
    }

    fn loss(&mut self, tid: u32, reason: LossReason, n: u64) -> io::Result<()> {
        self.w.loss(tid, reason, n)
    }

    fn names(&mut self, maps: &[Mapping], symbols: &[Symbol]) -> io::Result<()> {
        if !maps.is_empty() {
            self.w.maps(maps)?;
        }
        if !symbols.is_empty() {
            self.w.symbols(symbols)?;
        }
        Ok(())
    }

    fn locations(&mut self, locations: &[Location]) -> io::Result<()> {
        if !locations.is_empty() {
            self.w.locations(locations)?;
        }
        Ok(())
    }
}

/// Copies `pieces` (offset, records) of `fd` to `out` at its position,
/// counting the bytes sent in `sent`.
fn send(out: i32, fd: BorrowedFd<'_>, pieces: &[(u64, u64)], sent: &mut u64) -> io::Result<()> {
    for &(off, n) in pieces {
        let mut off = off as libc::off_t;
        let mut left = (n * 32) as usize;
        while left > 0 {
            // SAFETY: sendfile between two descriptors we hold, with an
            // offset of ours; it touches no memory of this process.
            let r = unsafe { libc::sendfile(out, fd.as_raw_fd(), &mut off, left) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the buffers' memory file ended early",
                ));
            }
            left -= r as usize;
            *sent += r as u64;
        }
    }
    Ok(())
}

/// A streaming writer of `livetrace-output` fed as records arrive: the
/// terminal's text, and the aggregating outputs (folded stacks, flame
/// graphs, profile tables), which need no recording file.
pub struct LiveOut {
    sink: Box<dyn Sink>,
    symbols: Symbols,
    clock: ClockCal,
    /// Graph overflow records not yet reported, per thread.
    overflows: BTreeMap<u32, u64>,
}

impl LiveOut {
    pub fn new(mut sink: Box<dyn Sink>, process: &Process, clock: ClockCal) -> io::Result<LiveOut> {
        sink.begin(process)?;
        Ok(LiveOut {
            sink,
            symbols: Symbols::new(),
            clock,
            overflows: BTreeMap::new(),
        })
    }

    pub fn finish(mut self) -> io::Result<Summary> {
        for (tid, n) in std::mem::take(&mut self.overflows) {
            if n > 0 {
                self.sink
                    .lost(tid, n, livetrace_output::LossReason::DepthLimit)?;
            }
        }
        self.sink.finish(&self.symbols)
    }
}

fn out_reason(r: LossReason) -> livetrace_output::LossReason {
    use livetrace_output::LossReason as O;
    match r {
        LossReason::BufferFull => O::BufferFull,
        LossReason::Overwritten => O::Overwritten,
        LossReason::NoBuffer => O::NoBuffer,
        LossReason::NotWritten => O::NotWritten,
        LossReason::Other(_) => O::Unknown,
    }
}

impl Out for LiveOut {
    fn thread(&mut self, tid: u32, name: &str, _exited: bool) -> io::Result<()> {
        self.sink.thread(tid, name)
    }

    fn records(&mut self, tid: u32, _first: u64, records: &[Record]) -> io::Result<()> {
        use livetrace_format::Kind;
        for r in records {
            let ts = self.clock.to_ns(r.ts);
            let depth = u32::try_from(r.b).unwrap_or(u32::MAX);
            let e = match r.kind() {
                Kind::Call => Event::Call {
                    ts,
                    func: r.a,
                    caller: r.b,
                },
                Kind::Entry => Event::Entry {
                    ts,
                    func: r.a,
                    depth,
                },
                Kind::Exit => Event::Exit {
                    ts,
                    func: r.a,
                    depth,
                },
                Kind::Overflow => {
                    *self.overflows.entry(tid).or_default() += 1;
                    continue;
                }
                Kind::Other(_) => continue,
            };
            if let Some(n) = self.overflows.get_mut(&tid).filter(|n| **n > 0) {
                let n = std::mem::take(n);
                self.sink
                    .lost(tid, n, livetrace_output::LossReason::DepthLimit)?;
            }
            self.sink.event(tid, e, &self.symbols)?;
        }
        Ok(())
    }

    fn loss(&mut self, tid: u32, reason: LossReason, n: u64) -> io::Result<()> {
        self.sink.lost(tid, n, out_reason(reason))
    }

    fn names(&mut self, _maps: &[Mapping], symbols: &[Symbol]) -> io::Result<()> {
        for s in symbols {
            self.symbols.insert(s.addr, s.size, s.name.clone());
        }
        Ok(())
    }

    fn locations(&mut self, locations: &[Location]) -> io::Result<()> {
        for l in locations {
            self.symbols.set_location(l.addr, l.file.clone(), l.line);
        }
        Ok(())
    }

    fn idle(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}
