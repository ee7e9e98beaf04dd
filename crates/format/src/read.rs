//! Reading a trace file: one pass over the block headers to learn what it
//! holds (metadata, threads, losses, where each thread's records are), then
//! records on demand, a bounded chunk at a time.
//!
//! This module holds the [`Reader`] and what it answers; the opening pass
//! is in `scan`, the record iterators in `records`.

mod records;
mod scan;

pub use records::{Merged, ThreadRecords};

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
