//! Writing a trace file, block by block, as the recording goes.

use std::io::{self, Write};

use crate::{
    kind, ClockCal, End, Info, Location, LossReason, Mapping, ProfileRow, Record, Symbol,
    BLOCK_HEADER_BYTES, HEADER_BYTES, MAGIC, MAX_BLOCK_RECORDS, VERSION,
};

/// Writes a trace file. Each call writes whole blocks, so a file cut off
/// at any point after a call returned reads back as everything written so
/// far (the writer's own buffering aside: give it an unbuffered file, or
/// flush, where that matters).
pub struct Writer<W: Write> {
    out: W,
    /// Bytes written so far (the next block's offset).
    offset: u64,
    records: u64,
}

fn pad(len: u64) -> u64 {
    len.next_multiple_of(16) - len
}

/// A metadata payload being built.
#[derive(Default)]
struct Payload(Vec<u8>);

impl Payload {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        let b = &s.as_bytes()[..s.len().min(u32::MAX as usize)];
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("fewer than 2^32 items in a block"))
    }
}

impl<W: Write> Writer<W> {
    /// Starts a file: the header and the INFO block.
    pub fn new(mut out: W, info: &Info) -> io::Result<Writer<W>> {
        let mut h = Vec::with_capacity(HEADER_BYTES as usize);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        out.write_all(&h)?;
        let mut w = Writer {
            out,
            offset: HEADER_BYTES,
            records: 0,
        };
        let mut p = Payload::default();
        p.u32(info.pid)
            .u8(info.tracer.map_or(0, |t| t.code()))
            .u8(info.mode.map_or(0, |m| m.code()))
            .u8(0)
            .u8(0)
            .str(&info.program)
            .count(info.cmdline.len());
        for a in &info.cmdline {
            p.str(a);
        }
        w.block(kind::INFO, &p.0)?;
        Ok(w)
    }

    fn block_header(&mut self, kind: u32, len: u64) -> io::Result<()> {
        let mut h = [0u8; BLOCK_HEADER_BYTES as usize];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)?;
        self.offset += BLOCK_HEADER_BYTES;
        Ok(())
    }

    fn padding(&mut self, len: u64) -> io::Result<()> {
        let n = pad(len);
        self.out.write_all(&[0u8; 16][..n as usize])?;
        self.offset += len + n;
        Ok(())
    }

    fn block(&mut self, kind: u32, payload: &[u8]) -> io::Result<()> {
        self.block_header(kind, payload.len() as u64)?;
        self.out.write_all(payload)?;
        self.padding(payload.len() as u64)
    }

    /// The clock calibration (once, before any records).
    pub fn clock(&mut self, c: &ClockCal) -> io::Result<()> {
        let mut p = Payload::default();
        p.u8(if c.tsc { 1 } else { 2 });
        for _ in 0..7 {
            p.u8(0);
        }
        p.u64(c.hz).u64(c.base_ticks).u64(c.base_ns).u64(c.mult);
        self.block(kind::CLOCK, &p.0)
    }

    /// A thread appeared, was renamed, or exited.
    pub fn thread(&mut self, tid: u32, name: &str, exited: bool) -> io::Result<()> {
        let mut p = Payload::default();
        p.u32(tid).u32(u32::from(exited)).str(name);
        self.block(kind::THREAD, &p.0)
    }

    /// Records of thread `tid`, the first being record number `first` of
    /// its stream; split into blocks of at most [`MAX_BLOCK_RECORDS`].
    pub fn records(&mut self, tid: u32, first: u64, records: &[Record]) -> io::Result<()> {
        let mut first = first;
        for chunk in records.chunks(MAX_BLOCK_RECORDS) {
            self.begin_records(tid, first, chunk.len())?;
            self.out.write_all(Record::as_bytes(chunk))?;
            self.end_records(chunk.len());
            first += chunk.len() as u64;
        }
        Ok(())
    }

    /// Starts a RECORDS block of `count` records (at most
    /// [`MAX_BLOCK_RECORDS`]) whose bytes the caller then appends to the
    /// underlying output itself (after flushing anything this writer
    /// buffers), e.g. with `sendfile` straight from the ring buffer's
    /// memory; then calls [`Writer::end_records`]. Record blocks need no
    /// padding (16 + 32 n bytes).
    pub fn begin_records(&mut self, tid: u32, first: u64, count: usize) -> io::Result<()> {
        assert!(count <= MAX_BLOCK_RECORDS, "{count} records in one block");
        self.block_header(kind::RECORDS, 16 + 32 * count as u64)?;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&tid.to_le_bytes());
        h[8..16].copy_from_slice(&first.to_le_bytes());
        self.out.write_all(&h)?;
        self.offset += 16;
        Ok(())
    }

    /// The caller appended the `count` records [`Writer::begin_records`]
    /// announced.
    pub fn end_records(&mut self, count: usize) {
        self.offset += 32 * count as u64;
        self.records += count as u64;
    }

    /// `count` records of thread `tid` (0: no thread) were lost for `reason`.
    pub fn loss(&mut self, tid: u32, reason: LossReason, count: u64) -> io::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let mut p = Payload::default();
        p.u32(tid).u32(reason.code()).u64(count);
        self.block(kind::LOSS, &p.0)
    }

    /// Names of addresses.
    pub fn symbols(&mut self, symbols: &[Symbol]) -> io::Result<()> {
        for chunk in symbols.chunks(64 * 1024) {
            let mut p = Payload::default();
            p.count(chunk.len());
            for s in chunk {
                p.u64(s.addr).u64(s.size).str(&s.name);
            }
            self.block(kind::SYMBOLS, &p.0)?;
        }
        Ok(())
    }

    /// Where functions are in their source.
    pub fn locations(&mut self, locations: &[Location]) -> io::Result<()> {
        for chunk in locations.chunks(64 * 1024) {
            let mut p = Payload::default();
            p.count(chunk.len());
            for l in chunk {
                p.u64(l.addr).u32(l.line).str(&l.file);
            }
            self.block(kind::SOURCES, &p.0)?;
        }
        Ok(())
    }

    /// Executable mappings.
    pub fn maps(&mut self, maps: &[Mapping]) -> io::Result<()> {
        let mut p = Payload::default();
        p.count(maps.len());
        for m in maps {
            p.u64(m.start).u64(m.end).u64(m.offset).str(&m.path);
        }
        self.block(kind::MAPS, &p.0)
    }

    /// The profile tracer's table (replaces any earlier one).
    pub fn profile(&mut self, rows: &[ProfileRow]) -> io::Result<()> {
        let mut p = Payload::default();
        p.count(rows.len());
        for r in rows {
            p.u64(r.calls)
                .u64(r.total_ns)
                .u64(r.self_ns)
                .u64(r.min_ns)
                .u64(r.max_ns)
                .str(&r.name);
        }
        self.block(kind::PROFILE, &p.0)
    }

    /// The END block: the recording ended cleanly.
    pub fn end(&mut self, end: &End) -> io::Result<()> {
        let mut p = Payload::default();
        p.u32(end.reason.code()).i32(end.status).str(&end.message);
        self.block(kind::END, &p.0)
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// Records written so far.
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The output, to append record bytes to (see
    /// [`Writer::begin_records`]).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The output back, flushed.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
