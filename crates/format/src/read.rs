//! Reading a trace file: one pass over the block headers to learn what it
//! holds (metadata, threads, losses, where each thread's records are), then
//! records on demand, a bounded chunk at a time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::{
    kind, ClockCal, End, EndReason, Info, Location, LossReason, Losses, Mapping, Mode, ProfileRow,
    Record, Symbol, ThreadInfo, Tracer, BLOCK_HEADER_BYTES, HEADER_BYTES, MAGIC, MAX_BLOCK_RECORDS,
    VERSION,
};

/// Metadata blocks larger than this are taken for corruption.
const MAX_META_BLOCK: u64 = 256 << 20;

/// Records a chunk iterator reads at once.
const CHUNK_RECORDS: usize = 4096;

/// Why a file cannot be read at all. (A file that is merely cut short or
/// damaged further on opens, with [`Reader::truncated`] saying where.)
#[derive(Debug)]
pub enum Error {
    /// It does not start with the trace magic.
    NotATrace,
    /// A version this crate does not read.
    Version(u32),
    /// Reading failed.
    Io(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotATrace => f.write_str("not a livetrace trace file (bad magic)"),
            Error::Version(v) => write!(
                f,
                "trace file version {v} is not supported (this livetrace reads version {VERSION})"
            ),
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

/// Where one RECORDS block's records are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// The thread.
    pub tid: u32,
    /// Index of its first record in the thread's stream.
    pub first: u64,
    /// Records in it.
    pub count: u32,
    /// File offset of its first record.
    offset: u64,
}

/// A trace file, opened. Metadata is read when opening; records are read
/// on demand, so memory stays small whatever the file's size (the block
/// index is 32 bytes per block of up to [`MAX_BLOCK_RECORDS`] records).
pub struct Reader<R> {
    src: R,
    info: Info,
    clock: Option<ClockCal>,
    threads: Vec<ThreadInfo>,
    by_tid: HashMap<u32, usize>,
    unattributed: Losses,
    symbols: Vec<Symbol>,
    locations: Vec<Location>,
    maps: Vec<Mapping>,
    profile: Vec<ProfileRow>,
    blocks: Vec<BlockRef>,
    end: Option<End>,
    truncated: Option<String>,
    records: u64,
}

impl Reader<BufReader<File>> {
    /// Opens the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Reader::new(BufReader::with_capacity(64 * 1024, File::open(path)?))
    }
}

/// Reads the fields of a metadata payload; `None` when it runs out.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// A count of items of at least `min_bytes` each: refused if the
    /// payload cannot hold that many (no allocation from a bad count).
    fn count(&mut self, min_bytes: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(min_bytes)? <= self.0.len()).then_some(n)
    }
}

impl<R: Read + Seek> Reader<R> {
    /// Reads the header and every block header (and the metadata blocks)
    /// of `src`.
    pub fn new(mut src: R) -> Result<Self, Error> {
        let mut h = [0u8; HEADER_BYTES as usize];
        src.seek(SeekFrom::Start(0))?;
        if read_full(&mut src, &mut h)? < h.len() || h[0..8] != MAGIC {
            return Err(Error::NotATrace);
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let header_len = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as u64;
        if header_len < HEADER_BYTES {
            return Err(Error::NotATrace);
        }
        let len = src.seek(SeekFrom::End(0))?;
        let mut r = Reader {
            src,
            info: Info::default(),
            clock: None,
            threads: Vec::new(),
            by_tid: HashMap::new(),
            unattributed: Losses::default(),
            symbols: Vec::new(),
            locations: Vec::new(),
            maps: Vec::new(),
            profile: Vec::new(),
            blocks: Vec::new(),
            end: None,
            truncated: None,
            records: 0,
        };
        r.scan(header_len, len)?;
        Ok(r)
    }

    fn thread_mut(&mut self, tid: u32) -> &mut ThreadInfo {
        let i = *self.by_tid.entry(tid).or_insert_with(|| {
            self.threads.push(ThreadInfo {
                tid,
                ..ThreadInfo::default()
            });
            self.threads.len() - 1
        });
        &mut self.threads[i]
    }

    fn scan(&mut self, mut at: u64, len: u64) -> io::Result<()> {
        let mut symbol_at: HashMap<u64, usize> = HashMap::new();
        let mut location_at: HashMap<u64, usize> = HashMap::new();
        while at < len {
            if len - at < BLOCK_HEADER_BYTES {
                self.truncated = Some(format!("a block header is cut short at offset {at}"));
                break;
            }
            let mut bh = [0u8; BLOCK_HEADER_BYTES as usize];
            self.src.seek(SeekFrom::Start(at))?;
            self.src.read_exact(&mut bh)?;
            let kind = u32::from_le_bytes(bh[0..4].try_into().expect("4 bytes"));
            let plen = u64::from_le_bytes(bh[8..16].try_into().expect("8 bytes"));
            let body = at + BLOCK_HEADER_BYTES;
            let Some(next) = plen
                .checked_next_multiple_of(16)
                .and_then(|p| body.checked_add(p))
            else {
                self.truncated = Some(format!("a block at offset {at} has a bad length"));
                break;
            };
            // A cut-off block (the recorder was killed mid-write, the disk
            // filled) ends the file; its padding may be missing too.
            if body + plen > len {
                if kind != 0 || plen != 0 {
                    self.truncated = Some(format!("the block at offset {at} is cut short"));
                }
                break;
            }
            if kind == kind::RECORDS {
                if plen < 16 || (plen - 16) % 32 != 0 || (plen - 16) / 32 > MAX_BLOCK_RECORDS as u64
                {
                    self.truncated = Some(format!("the records block at offset {at} is malformed"));
                    break;
                }
                let mut rh = [0u8; 16];
                self.src.read_exact(&mut rh)?;
                let tid = u32::from_le_bytes(rh[0..4].try_into().expect("4 bytes"));
                let first = u64::from_le_bytes(rh[8..16].try_into().expect("8 bytes"));
                let count = ((plen - 16) / 32) as u32;
                self.thread_mut(tid).records += u64::from(count);
                self.records += u64::from(count);
                self.blocks.push(BlockRef {
                    tid,
                    first,
                    count,
                    offset: body + 16,
                });
            } else if matches!(
                kind,
                kind::INFO
                    | kind::CLOCK
                    | kind::THREAD
                    | kind::LOSS
                    | kind::SYMBOLS
                    | kind::MAPS
                    | kind::PROFILE
                    | kind::END
                    | kind::SOURCES
            ) {
                if plen > MAX_META_BLOCK {
                    self.truncated = Some(format!("the block at offset {at} is implausibly large"));
                    break;
                }
                let mut payload = vec![0u8; plen as usize];
                self.src.read_exact(&mut payload)?;
                if self
                    .meta(kind, &payload, &mut symbol_at, &mut location_at)
                    .is_none()
                {
                    self.truncated = Some(format!("the block at offset {at} is malformed"));
                    break;
                }
            }
            at = next;
        }
        self.symbols.sort_by_key(|s| s.addr);
        self.locations.sort_by_key(|l| l.addr);
        Ok(())
    }

    fn meta(
        &mut self,
        kind: u32,
        payload: &[u8],
        symbol_at: &mut HashMap<u64, usize>,
        location_at: &mut HashMap<u64, usize>,
    ) -> Option<()> {
        let mut f = Fields(payload);
        match kind {
            kind::INFO => {
                let pid = f.u32()?;
                let tracer = Tracer::from_code(f.u8()?);
                let mode = Mode::from_code(f.u8()?);
                f.take(2)?;
                let program = f.str()?;
                let n = f.count(4)?;
                let cmdline = (0..n).map(|_| f.str()).collect::<Option<Vec<_>>>()?;
                self.info = Info {
                    pid,
                    tracer,
                    mode,
                    program,
                    cmdline,
                };
            }
            kind::CLOCK => {
                let source = f.u8()?;
                f.take(7)?;
                self.clock = Some(ClockCal {
                    tsc: source == 1,
                    hz: f.u64()?,
                    base_ticks: f.u64()?,
                    base_ns: f.u64()?,
                    mult: f.u64()?,
                });
            }
            kind::THREAD => {
                let tid = f.u32()?;
                let flags = f.u32()?;
                let name = f.str()?;
                let t = self.thread_mut(tid);
                t.name = name;
                t.exited |= flags & 1 != 0;
            }
            kind::LOSS => {
                let tid = f.u32()?;
                let reason = LossReason::from_code(f.u32()?);
                let n = f.u64()?;
                if tid == 0 {
                    self.unattributed.add(reason, n);
                } else {
                    self.thread_mut(tid).lost.add(reason, n);
                }
            }
            kind::SYMBOLS => {
                let n = f.count(20)?;
                for _ in 0..n {
                    let s = Symbol {
                        addr: f.u64()?,
                        size: f.u64()?,
                        name: f.str()?,
                    };
                    match symbol_at.get(&s.addr) {
                        // A size-less name never hides a sized one: the
                        // sized symbol also names every address inside it.
                        Some(&i) if s.size == 0 && self.symbols[i].size != 0 => {}
                        Some(&i) => self.symbols[i] = s,
                        None => {
                            symbol_at.insert(s.addr, self.symbols.len());
                            self.symbols.push(s);
                        }
                    }
                }
            }
            kind::SOURCES => {
                let n = f.count(16)?;
                for _ in 0..n {
                    let l = Location {
                        addr: f.u64()?,
                        line: f.u32()?,
                        file: f.str()?,
                    };
                    match location_at.get(&l.addr) {
                        Some(&i) => self.locations[i] = l,
                        None => {
                            location_at.insert(l.addr, self.locations.len());
                            self.locations.push(l);
                        }
                    }
                }
            }
            kind::MAPS => {
                let n = f.count(28)?;
                for _ in 0..n {
                    let m = Mapping {
                        start: f.u64()?,
                        end: f.u64()?,
                        offset: f.u64()?,
                        path: f.str()?,
                    };
                    if !self.maps.contains(&m) {
                        self.maps.push(m);
                    }
                }
            }
            kind::PROFILE => {
                let n = f.count(44)?;
                let mut rows = Vec::with_capacity(n);
                for _ in 0..n {
                    let (calls, total_ns, self_ns, min_ns, max_ns) =
                        (f.u64()?, f.u64()?, f.u64()?, f.u64()?, f.u64()?);
                    rows.push(ProfileRow {
                        name: f.str()?,
                        calls,
                        total_ns,
                        self_ns,
                        min_ns,
                        max_ns,
                    });
                }
                self.profile = rows;
            }
            kind::END => {
                self.end = Some(End {
                    reason: EndReason::from_code(f.u32()?),
                    status: f.i32()?,
                    message: f.str()?,
                });
            }
            _ => {}
        }
        Some(())
    }

    /// The recorded process.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The clock calibration (ticks are nanoseconds if the file has none).
    pub fn clock(&self) -> ClockCal {
        self.clock.unwrap_or_default()
    }

    /// Every thread with records, losses or a THREAD block, in the order
    /// they first appear.
    pub fn threads(&self) -> &[ThreadInfo] {
        &self.threads
    }

    /// Losses no thread can be blamed for (threads that had no buffer).
    pub fn unattributed(&self) -> &Losses {
        &self.unattributed
    }

    /// Records in the file.
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// Records lost, all threads and reasons.
    pub fn lost_count(&self) -> u64 {
        self.unattributed.total() + self.threads.iter().map(|t| t.lost.total()).sum::<u64>()
    }

    /// Every symbol, by address (one per address).
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// The symbol at `addr`, or the closest one below it whose size covers
    /// `addr`.
    pub fn symbol(&self, addr: u64) -> Option<&Symbol> {
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (addr < s.addr.saturating_add(s.size.max(1))).then_some(s)
    }

    /// Source locations of functions, by address (one per address).
    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// The executable mappings.
    pub fn maps(&self) -> &[Mapping] {
        &self.maps
    }

    /// The profile tracer's table (empty for the other tracers).
    pub fn profile(&self) -> &[ProfileRow] {
        &self.profile
    }

    /// How the recording ended; `None` when it did not end cleanly (the
    /// recorder was killed, or the file was cut).
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Why the file's last part could not be read, if it could not.
    pub fn truncated(&self) -> Option<&str> {
        self.truncated.as_deref()
    }

    /// Every RECORDS block, in file order.
    pub fn record_blocks(&self) -> &[BlockRef] {
        &self.blocks
    }

    /// Reads `block`'s records into `buf` (replacing its contents).
    pub fn read_block(&mut self, block: &BlockRef, buf: &mut Vec<Record>) -> io::Result<()> {
        self.read_at(block.offset, block.count as usize, buf)
    }

    fn read_at(&mut self, offset: u64, n: usize, buf: &mut Vec<Record>) -> io::Result<()> {
        buf.clear();
        buf.resize(n, Record::default());
        self.src.seek(SeekFrom::Start(offset))?;
        self.src.read_exact(Record::as_bytes_mut(buf))
    }

    /// Calls `f(block, records)` for every RECORDS block, in file order
    /// (threads interleaved as they were recorded).
    pub fn for_each_block(
        &mut self,
        mut f: impl FnMut(&BlockRef, &[Record]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        for i in 0..self.blocks.len() {
            let b = self.blocks[i];
            self.read_block(&b, &mut buf)?;
            f(&b, &buf)?;
        }
        Ok(())
    }

    /// Thread `tid`'s records, in order, a chunk at a time.
    pub fn thread_records(&mut self, tid: u32) -> ThreadRecords<'_, R> {
        let blocks = self
            .blocks
            .iter()
            .filter(|b| b.tid == tid)
            .copied()
            .collect();
        ThreadRecords {
            reader: self,
            cursor: Cursor::new(tid, blocks),
            buf: Vec::new(),
        }
    }

    /// Every record, all threads merged in timestamp order (ties in thread
    /// order): `(tid, record)`. Memory: a chunk of records per thread.
    pub fn merged(&mut self) -> Merged<'_, R> {
        let mut per: HashMap<u32, Vec<BlockRef>> = HashMap::new();
        for b in &self.blocks {
            per.entry(b.tid).or_default().push(*b);
        }
        let chunk = (CHUNK_RECORDS * 64 / per.len().max(64)).clamp(64, CHUNK_RECORDS);
        let cursors: Vec<(Cursor, Vec<Record>, usize)> = self
            .threads
            .iter()
            .filter_map(|t| {
                per.remove(&t.tid)
                    .map(|b| (Cursor::new(t.tid, b), Vec::new(), 0))
            })
            .collect();
        Merged {
            reader: self,
            cursors,
            heap: BinaryHeap::new(),
            started: false,
            chunk,
        }
    }
}

/// Where a reader of one thread's records is.
struct Cursor {
    tid: u32,
    blocks: Vec<BlockRef>,
    block: usize,
    /// Records of `blocks[block]` already read.
    pos: u32,
}

impl Cursor {
    fn new(tid: u32, blocks: Vec<BlockRef>) -> Cursor {
        Cursor {
            tid,
            blocks,
            block: 0,
            pos: 0,
        }
    }

    /// Reads the next up-to-`max` records into `buf`; returns the stream
    /// index of the first, or `None` at the end.
    fn next<R: Read + Seek>(
        &mut self,
        reader: &mut Reader<R>,
        max: usize,
        buf: &mut Vec<Record>,
    ) -> io::Result<Option<u64>> {
        while let Some(b) = self.blocks.get(self.block) {
            if self.pos < b.count {
                let n = (b.count - self.pos).min(max as u32);
                let first = b.first + u64::from(self.pos);
                reader.read_at(b.offset + 32 * u64::from(self.pos), n as usize, buf)?;
                self.pos += n;
                return Ok(Some(first));
            }
            self.block += 1;
            self.pos = 0;
        }
        buf.clear();
        Ok(None)
    }
}

/// One thread's records, a chunk at a time: see [`Reader::thread_records`].
pub struct ThreadRecords<'a, R> {
    reader: &'a mut Reader<R>,
    cursor: Cursor,
    buf: Vec<Record>,
}

impl<R: Read + Seek> ThreadRecords<'_, R> {
    /// The next chunk: the stream index of its first record (a jump from
    /// the previous chunk's end means records were lost there) and the
    /// records; `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<(u64, &[Record])>> {
        Ok(self
            .cursor
            .next(self.reader, CHUNK_RECORDS, &mut self.buf)?
            .map(|first| (first, &self.buf[..])))
    }

    /// The thread.
    pub fn tid(&self) -> u32 {
        self.cursor.tid
    }
}

/// All records in timestamp order: see [`Reader::merged`].
pub struct Merged<'a, R> {
    reader: &'a mut Reader<R>,
    /// Per thread: its cursor, its current chunk, the next index in it.
    cursors: Vec<(Cursor, Vec<Record>, usize)>,
    /// (timestamp, thread index) of each thread's next record.
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    started: bool,
    chunk: usize,
}

impl<R: Read + Seek> Merged<'_, R> {
    /// Loads thread `i`'s next record into the heap, if it has one.
    fn refill(&mut self, i: usize) -> io::Result<()> {
        let (cursor, buf, pos) = &mut self.cursors[i];
        if *pos >= buf.len() {
            if cursor.next(self.reader, self.chunk, buf)?.is_none() {
                return Ok(());
            }
            *pos = 0;
        }
        self.heap.push(Reverse((buf[*pos].ts, i)));
        Ok(())
    }

    /// The next record in time, with its thread; `None` at the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> io::Result<Option<(u32, Record)>> {
        if !self.started {
            self.started = true;
            for i in 0..self.cursors.len() {
                self.refill(i)?;
            }
        }
        let Some(Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let (cursor, buf, pos) = &mut self.cursors[i];
        let rec = buf[*pos];
        let tid = cursor.tid;
        *pos += 1;
        self.refill(i)?;
        Ok(Some((tid, rec)))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
