//! The pass made when opening: every block header walked, metadata blocks
//! parsed into the reader's tables, RECORDS blocks indexed (not read), and
//! where the file stops making sense noted rather than refused.

use super::*;

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

    pub(super) fn scan(&mut self, mut at: u64, len: u64) -> io::Result<()> {
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
}
