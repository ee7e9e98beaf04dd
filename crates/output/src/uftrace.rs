//! Writes a `uftrace.data` directory that the real `uftrace` tool reads:
//! `uftrace replay|report|graph|info|dump --chrome -d DIR`.
//!
//! The layout follows what `uftrace record` writes (uftrace's `uftrace.h`,
//! `cmds/record.c`, `cmds/info.c`, `utils/session.c`, `utils/symbol.c`,
//! `utils/perf.c`, `libmcount/record.c`, and `doc/uftrace-record.md`), checked
//! against uftrace v0.13 by the tests in `tests/uftrace.rs`:
//!
//! * `info`: a 40-byte little-endian header (`"Ftrace!\0"`, file version 4,
//!   header size 40, endian 1 = little, class 2 = ELF64, feature mask, info
//!   mask, max stack depth, 6 unused bytes), then one text section per info
//!   mask bit, in bit order. We write `exename:`, `cmdline:` and
//!   `taskinfo:` (which lists the tids whose `<tid>.dat` uftrace opens).
//! * `task.txt`: one `SESS` line (pid, session id, executable) and one
//!   `TASK` line per thread. A record is symbolized through the session its
//!   task joined at the `TASK` timestamp, so both use the trace's earliest
//!   timestamp.
//! * `sid-<session id>.map`: `/proc/<pid>/maps` lines, one per loaded
//!   object that has symbols in the trace. uftrace merges consecutive lines
//!   of the same path and resolves an address as `addr - start` of that
//!   object's first line in its `.sym` file.
//! * `<basename>.sym`: `# symbols: N` and `# path name: PATH` headers, then
//!   `%016x T name` per function, relative to the object's `start` above,
//!   in address order. uftrace sizes a symbol up to the next line, so a
//!   `%016x ? __sym_end` line ends each symbol that is not followed directly
//!   by the next one. A second object with the same basename gets
//!   `<basename>-<checksum of its path, %04x>.sym`, the name uftrace looks
//!   for when the `path name` of `<basename>.sym` is another object's.
//! * `<basename>.dbg` (named as the `.sym` file, `dbg` for `sym`), for the
//!   objects with functions whose source location is known: `# path
//!   name: PATH`, then per function `F: <hex offset> <name>` (the offset as
//!   in the `.sym` file, which is how uftrace finds the symbol it belongs
//!   to: an offset no `.sym` symbol covers makes the whole file invalid)
//!   and `L: <line> <file>`, as uftrace's `save_debug_entries` writes them
//!   (`utils/dwarf.c`). `uftrace replay --srcline` then shows `/* file:line
//!   */` after each function, `uftrace report --srcline` a source column,
//!   and the TUI its status line. Locations come with the symbols
//!   ([`Symbols::location`]); nothing here reads debug information.
//! * `<tid>.dat`: 16-byte records, `u64` time then a `u64` packing
//!   `type:2 more:1 magic:3 depth:10 addr:48` from bit 0 up (type 0 entry,
//!   1 exit; magic 5).
//! * `perf-cpu0.dat`: one `PERF_RECORD_COMM` per named thread (with the
//!   `PERF_EVENT` feature bit): a perf event header, pid, tid, the
//!   NUL-padded name and a `sample_id` of pid, tid and time, as the kernel
//!   writes it for uftrace's `sample_id_all`, `PERF_SAMPLE_TID |
//!   PERF_SAMPLE_TIME` event. This is how uftrace learns thread names:
//!   `uftrace info --task` and `uftrace dump --chrome` show them, and
//!   `uftrace replay` prints a `linux:task-name` event at the thread's start
//!   (when it is inside a function).
//!
//! How the model maps onto it:
//!
//! * Written as events arrive ([`UftraceDir`]): each thread's records go to
//!   its `<tid>.dat` through a buffer (at most [`OPEN_FILES`] files open at
//!   once); `info`, `task.txt`, the map, the `.sym` files, `perf-cpu0.dat`
//!   and `note.txt` are written once, at the end, when every thread and
//!   symbol is known. Memory: per thread, its open calls.
//! * Lost events (by reason) and depth overflows are listed per thread in
//!   `note.txt`, which `uftrace info` prints as "extra note information",
//!   with the events kept. They are not written as `LOST` records: uftrace
//!   v0.13 hides a `LOST` record that is outside any function (where a ring
//!   in overwrite mode loses events: at the start) from `replay`, and
//!   `dump --chrome` then writes invalid JSON.
//! * A thread that starts mid-stack starts at depth 0, as a `uftrace record`
//!   of it would: uftrace takes the frames below a thread's first record
//!   for calls it has not seen, named `<0>` in `report` and `graph`. The
//!   exits of calls whose entries predate the trace (the orphan exits a
//!   thread begins with, each shallower than everything before it) are
//!   written, and their entries are made up at the thread's first
//!   timestamp; frames still below those, which never return in the trace,
//!   are unknown, so every depth is lowered by the shallowest depth the
//!   thread has. Both need the whole thread, so its `.dat` is rewritten
//!   once at the end (a streaming copy) when, and only when, it began
//!   mid-stack.
//! * Other orphan exits (an entry lost mid-trace) are left out: uftrace
//!   matches an exit to the entry at its depth, which is another call's.
//! * A call whose exit is missing while its caller returns (an exit lost
//!   mid-trace) gets an exit made up at its caller's exit: uftrace matches
//!   exits to entries by position on its stack, so without it the caller's
//!   exit would close the wrong call. Its duration is then an upper bound.
//! * Calls still open at the end are left open, as uftrace itself leaves
//!   them when a program exits mid-call: replay shows no closing brace and
//!   report counts them up to the thread's last timestamp.
//! * Function-tracer Call events become an entry and an exit at the same
//!   timestamp (zero duration), nested under the open graph call if any.
//!   `uftrace report` then counts calls correctly; times are 0.
//! * The record's depth field has 10 bits: deeper events are written with
//!   depth 1023 and the header's max stack is raised to cover them (uftrace
//!   accepts up to 65535).
//! * uftrace demangles C++/legacy-Rust (`_Z`) names itself; names are
//!   written as given, with tabs and newlines replaced by spaces (a tab would
//!   end the name in uftrace's parser).
//!
//! Nothing here needs the traced executable: every symbol comes from the
//! trace, so the directory can be read on another machine.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::model::{Event, LossReason, Mapping, Process, Summary, Symbols, ThreadSummary, Trace};
use crate::sink::{feed, land, Landing, Order, Sink, Threads, MAX_OPEN};

const FILE_VERSION: u32 = 4;
const HEADER_SIZE: u16 = 40;

// uftrace_feat_bits
const TASK_SESSION: u64 = 1 << 1;
const SYM_REL_ADDR: u64 = 1 << 5;
const MAX_STACK: u64 = 1 << 6;
const PERF_EVENT: u64 = 1 << 8;

// uftrace_info_bits
const EXE_NAME: u64 = 1 << 0;
const CMDLINE: u64 = 1 << 3;
const TASKINFO: u64 = 1 << 7;

const RECORD_MAGIC: u64 = 5;
const ENTRY: u64 = 0;
const EXIT: u64 = 1;
const DEPTH_MAX: u32 = (1 << 10) - 1;
const DEPTH_SHIFT: u32 = 6;
const DEPTH_MASK: u64 = (DEPTH_MAX as u64) << DEPTH_SHIFT;
const ADDR_MASK: u64 = (1 << 48) - 1;

const PERF_RECORD_COMM: u32 = 3;
/// `TASK_COMM_LEN` - 1: perf (and so uftrace) keeps 15 bytes of a name.
const COMM_MAX: usize = 15;

/// `<tid>.dat` files kept open at once; others are closed and reopened to
/// append, so a trace of thousands of threads needs no more descriptors.
pub const OPEN_FILES: usize = 64;

fn word(kind: u64, depth: u32, addr: u64) -> u64 {
    kind | (RECORD_MAGIC << 3)
        | (u64::from(depth.min(DEPTH_MAX)) << DEPTH_SHIFT)
        | ((addr & ADDR_MASK) << 16)
}

#[derive(Default)]
struct DatThread {
    file: Option<BufWriter<fs::File>>,
    /// The file exists (created, truncated) for this trace.
    created: bool,
    /// Open calls: function and depth.
    stack: Vec<(u64, u32)>,
    /// The shallowest depth written so far.
    min_depth: Option<u32>,
    max_depth: u32,
    /// Exits of calls entered before the trace began, by decreasing depth.
    leading: Vec<(u64, u32)>,
}

/// A `uftrace.data` directory, written as events arrive.
pub struct UftraceDir {
    dir: PathBuf,
    process: Process,
    threads: Threads<DatThread>,
    /// Tids whose file is open, least recently used first.
    open: VecDeque<u32>,
}

impl UftraceDir {
    /// Writes into `dir`, creating it if needed. Files of the same names are
    /// replaced; others are left alone (uftrace only reads the files `info`
    /// and `task.txt` lead it to, and the `perf-cpu*.dat` files, of which
    /// this writes `perf-cpu0.dat`).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        UftraceDir {
            dir: dir.as_ref().to_path_buf(),
            process: Process::default(),
            threads: Threads::default(),
            open: VecDeque::new(),
        }
    }

    fn dat_path(&self, tid: u32) -> PathBuf {
        self.dir.join(format!("{tid}.dat"))
    }

    /// Appends records to the thread's file, opening it if needed.
    fn write(&mut self, tid: u32, records: &[(u64, u64)]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.threads.get(tid).state.file.is_none() {
            if self.open.len() >= OPEN_FILES {
                if let Some(old) = self.open.pop_front() {
                    if let Some(mut f) = self.threads.get(old).state.file.take() {
                        f.flush()?;
                    }
                }
            }
            let path = self.dat_path(tid);
            let t = &mut self.threads.get(tid).state;
            let file = if t.created {
                fs::OpenOptions::new().append(true).open(&path)?
            } else {
                fs::File::create(&path)?
            };
            t.created = true;
            t.file = Some(BufWriter::with_capacity(1 << 16, file));
            self.open.push_back(tid);
        } else if self.open.back() != Some(&tid) {
            if let Some(pos) = self.open.iter().position(|&t| t == tid) {
                self.open.remove(pos);
                self.open.push_back(tid);
            }
        }
        let t = &mut self.threads.get(tid).state;
        let out = t.file.as_mut().expect("opened above");
        for &(time, w) in records {
            out.write_all(&time.to_le_bytes())?;
            out.write_all(&w.to_le_bytes())?;
            let depth = ((w & DEPTH_MASK) >> DEPTH_SHIFT) as u32;
            t.min_depth = Some(t.min_depth.map_or(depth, |m| m.min(depth)));
            t.max_depth = t.max_depth.max(depth);
        }
        Ok(())
    }

    /// Rewrites a thread that began mid-stack: made-up entries for the
    /// calls that predate it, every depth lowered by its shallowest.
    fn rebase(&self, t: &ThreadSummary, state: &DatThread) -> io::Result<()> {
        let shift = state.min_depth.unwrap_or(0);
        if shift == 0 && state.leading.is_empty() {
            return Ok(());
        }
        let path = self.dat_path(t.tid);
        let tmp = self.dir.join(format!("{}.dat.tmp", t.tid));
        let mut out = BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
        let first = t.first_ts.unwrap_or(self.process.start_ns);
        for &(func, depth) in state.leading.iter().rev() {
            out.write_all(&first.to_le_bytes())?;
            out.write_all(&word(ENTRY, depth - shift, func).to_le_bytes())?;
        }
        let mut input = BufReader::with_capacity(1 << 16, fs::File::open(&path)?);
        let mut rec = [0u8; 16];
        loop {
            match input.read_exact(&mut rec) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let w = u64::from_le_bytes(rec[8..].try_into().expect("8 bytes"));
            let depth = ((w & DEPTH_MASK) >> DEPTH_SHIFT) as u32;
            let w = (w & !DEPTH_MASK) | (u64::from(depth.saturating_sub(shift)) << DEPTH_SHIFT);
            out.write_all(&rec[..8])?;
            out.write_all(&w.to_le_bytes())?;
        }
        out.flush()?;
        drop(out);
        fs::rename(&tmp, &path)
    }
}

impl Sink for UftraceDir {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.process = process.clone();
        fs::create_dir_all(&self.dir)
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name);
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, _names: &Symbols) -> io::Result<()> {
        let t = &mut self.threads.event(tid, event.ts()).state;
        let mut records: [(u64, u64); 2] = [(0, 0); 2];
        let n;
        match event {
            Event::Entry { ts, func, depth } => {
                if t.stack.len() < MAX_OPEN {
                    t.stack.push((func, depth));
                }
                records[0] = (ts, word(ENTRY, depth, func));
                n = 1;
            }
            Event::Exit { ts, func, depth } => {
                let (keep, closes) = match land(&t.stack, func, depth, |&f| f) {
                    Landing::Closes(i) => (i, true),
                    Landing::Orphan(i) => (i, false),
                };
                // Exits made up for the abandoned calls, innermost first.
                let mut made_up: Vec<(u64, u64)> = t.stack[keep + usize::from(closes)..]
                    .iter()
                    .rev()
                    .map(|&(f, d)| (ts, word(EXIT, d, f)))
                    .collect();
                t.stack.truncate(keep);
                // Entered before the trace began: nothing of the thread so
                // far was as shallow.
                let predates =
                    !closes && t.stack.is_empty() && t.min_depth.is_none_or(|m| depth < m);
                if closes || predates {
                    made_up.push((ts, word(EXIT, depth, func)));
                }
                if predates {
                    t.leading.push((func, depth));
                }
                return self.write(tid, &made_up);
            }
            Event::Call { ts, func, .. } => {
                let depth = t.stack.last().map_or(0, |&(_, d)| d + 1);
                records[0] = (ts, word(ENTRY, depth, func));
                records[1] = (ts, word(EXIT, depth, func));
                n = 2;
            }
        }
        self.write(tid, &records[..n])
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        self.threads.lost(tid, count, reason);
        Ok(())
    }

    fn finish(&mut self, names: &Symbols) -> io::Result<Summary> {
        for t in self.threads.iter_mut() {
            if let Some(mut f) = t.state.file.take() {
                f.flush()?;
            }
        }
        self.open.clear();
        for t in self.threads.iter() {
            if t.state.created {
                self.rebase(&t.summary, &t.state)?;
            }
        }
        let summary = self.threads.summary();
        // Threads with records, by tid.
        let mut threads: Vec<&ThreadSummary> = self
            .threads
            .iter()
            .filter(|t| t.state.created)
            .map(|t| &t.summary)
            .collect();
        threads.sort_by_key(|t| t.tid);
        let max_depth = self
            .threads
            .iter()
            .map(|t| t.state.max_depth)
            .max()
            .unwrap_or(0);
        let t0 = threads
            .iter()
            .filter_map(|t| t.first_ts)
            .fold(self.process.start_ns, u64::min);
        let sid = session_id(&self.process);
        let feat = TASK_SESSION | SYM_REL_ADDR | MAX_STACK | PERF_EVENT;
        let max_stack = u16::try_from((max_depth as usize + 1).max(1024)).unwrap_or(u16::MAX);
        let dir = &self.dir;
        write_info(&self.process, &threads, dir, feat, max_stack)?;
        write_tasks(&self.process, &threads, dir, t0, &sid)?;
        write_maps_and_symbols(&self.process.maps, names, dir, &sid)?;
        write_comms(&self.process, &threads, dir, t0)?;
        write_note(&self.process, &summary, dir)?;
        Ok(summary)
    }
}

/// Writes `trace` as a uftrace data directory at `dir`, creating it if
/// needed (see [`UftraceDir::new`]).
pub fn write_dir(trace: &Trace, dir: impl AsRef<Path>) -> io::Result<()> {
    feed(trace, Order::ByThread, &mut UftraceDir::new(dir)).map(|_| ())
}

mod files;
use files::*;

#[cfg(test)]
mod tests;
