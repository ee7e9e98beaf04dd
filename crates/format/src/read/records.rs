//! Reading records on demand, a bounded chunk at a time: one thread's in
//! order ([`ThreadRecords`]), or every thread's merged by timestamp
//! ([`Merged`]).

use super::*;

impl<R: Read + Seek> Reader<R> {
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
