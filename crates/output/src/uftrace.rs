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
//! * Lost events and depth overflows are listed per thread in `note.txt`,
//!   which `uftrace info` prints as "extra note information". They are not
//!   written as `LOST` records: uftrace v0.13 hides a `LOST` record that is
//!   outside any function (where a ring in overwrite mode loses events: at
//!   the start) from `replay`, and `dump --chrome` then writes invalid JSON.
//! * Orphan exits (calls whose Entry was overwritten) are left out. uftrace
//!   never records an exit without its entry, and v0.13 copes with them
//!   only in part: `replay` shows them closing at the right depths, but
//!   `graph` then drops the whole thread. The calls that ran inside them
//!   are shown from the left margin.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::calls::CallTree;
use crate::model::{Event, ThreadTrace, Trace};

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
const ADDR_MASK: u64 = (1 << 48) - 1;

const PERF_RECORD_COMM: u32 = 3;
/// `TASK_COMM_LEN` - 1: perf (and so uftrace) keeps 15 bytes of a name.
const COMM_MAX: usize = 15;

/// Writes `trace` as a uftrace data directory at `dir`, creating it if
/// needed. Files of the same names are replaced; others are left alone
/// (uftrace only reads the files `info` and `task.txt` lead it to, and the
/// `perf-cpu*.dat` files, of which this writes `perf-cpu0.dat`).
pub fn write_dir(trace: &Trace, dir: impl AsRef<Path>) -> io::Result<()> {
    let dir = dir.as_ref();
    fs::create_dir_all(dir)?;

    let mut threads: Vec<_> = trace.threads.iter().collect();
    threads.sort_by_key(|t| t.tid);

    let t0 = earliest_ts(trace);
    let sid = session_id(trace);

    let mut max_depth = 0u32;
    for thread in &threads {
        let records = records(thread);
        max_depth = max_depth.max(records.max_depth);
        let mut out = BufWriter::new(fs::File::create(dir.join(format!("{}.dat", thread.tid)))?);
        for (time, word) in records.words {
            out.write_all(&time.to_le_bytes())?;
            out.write_all(&word.to_le_bytes())?;
        }
        out.flush()?;
    }

    let feat = TASK_SESSION | SYM_REL_ADDR | MAX_STACK | PERF_EVENT;
    let max_stack = u16::try_from((max_depth as usize + 1).max(1024)).unwrap_or(u16::MAX);
    write_info(trace, &threads, dir, feat, max_stack)?;
    write_tasks(trace, &threads, dir, t0, &sid)?;
    write_maps_and_symbols(trace, dir, &sid)?;
    write_comms(trace, &threads, dir, t0)?;
    write_note(trace, &threads, dir)
}

fn write_note(trace: &Trace, threads: &[&ThreadTrace], dir: &Path) -> io::Result<()> {
    let mut note = format!(
        "written by livetrace-output {} from a trace of pid {}\n",
        env!("CARGO_PKG_VERSION"),
        trace.pid
    );
    for t in threads {
        if t.lost > 0 {
            note.push_str(&format!("tid {}: {} events lost\n", t.tid, t.lost));
        }
        if t.depth_overflows > 0 {
            note.push_str(&format!(
                "tid {}: {} calls deeper than the depth limit not recorded\n",
                t.tid, t.depth_overflows
            ));
        }
    }
    fs::write(dir.join("note.txt"), note)
}

/// The time every session and task starts at: no record may precede it, or
/// uftrace finds no session (and no symbols) for it.
fn earliest_ts(trace: &Trace) -> u64 {
    trace
        .threads
        .iter()
        .flat_map(|t| t.events.iter().map(Event::ts))
        .fold(trace.start_ns, u64::min)
}

/// 16 hex digits, stable for a given trace so rewriting it gives the same
/// files.
fn session_id(trace: &Trace) -> String {
    // FNV-1a over what identifies the run.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&trace.pid.to_le_bytes());
    feed(&trace.start_ns.to_le_bytes());
    feed(trace.program.as_bytes());
    format!("{h:016x}")
}

struct Records {
    words: Vec<(u64, u64)>,
    max_depth: u32,
}

fn word(kind: u64, depth: u32, addr: u64) -> u64 {
    kind | (RECORD_MAGIC << 3) | (u64::from(depth.min(DEPTH_MAX)) << 6) | ((addr & ADDR_MASK) << 16)
}

fn records(thread: &ThreadTrace) -> Records {
    let tree = CallTree::build(thread);
    // Exits to make up, innermost first, before the event that showed
    // their calls had ended.
    let mut closes: HashMap<usize, Vec<usize>> = HashMap::new();
    for (id, call) in tree.calls.iter().enumerate() {
        if let Some(idx) = call.abandoned_by {
            closes.entry(idx).or_default().push(id);
        }
    }
    let orphan_exits: HashSet<usize> = tree
        .calls
        .iter()
        .filter(|c| c.entry.is_none())
        .filter_map(|c| c.exit_event)
        .collect();
    let mut words = Vec::with_capacity(thread.events.len());
    let mut max_depth = 0;
    let mut instants = tree.instants.iter();
    for (idx, event) in thread.events.iter().enumerate() {
        if let Some(calls) = closes.get_mut(&idx) {
            calls.sort_by_key(|&id| std::cmp::Reverse(tree.calls[id].depth));
            for &id in calls.iter() {
                let call = &tree.calls[id];
                words.push((event.ts(), word(EXIT, call.depth, call.func)));
            }
        }
        match *event {
            Event::Entry { ts, func, depth } => {
                words.push((ts, word(ENTRY, depth, func)));
                max_depth = max_depth.max(depth);
            }
            Event::Exit { ts, func, depth } => {
                if !orphan_exits.contains(&idx) {
                    words.push((ts, word(EXIT, depth, func)));
                }
            }
            Event::Call { ts, func, .. } => {
                let instant = instants.next().expect("one instant per Call event");
                let depth = instant.parent.map_or(0, |p| tree.calls[p].depth + 1);
                words.push((ts, word(ENTRY, depth, func)));
                words.push((ts, word(EXIT, depth, func)));
                max_depth = max_depth.max(depth);
            }
        }
    }
    Records { words, max_depth }
}

fn write_info(
    trace: &Trace,
    threads: &[&ThreadTrace],
    dir: &Path,
    feat: u64,
    max_stack: u16,
) -> io::Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(b"Ftrace!\0");
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&HEADER_SIZE.to_le_bytes());
    out.push(1); // little endian
    out.push(2); // ELFCLASS64
    out.extend_from_slice(&feat.to_le_bytes());
    out.extend_from_slice(&(EXE_NAME | CMDLINE | TASKINFO).to_le_bytes());
    out.extend_from_slice(&max_stack.to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    debug_assert_eq!(out.len(), usize::from(HEADER_SIZE));

    // Sections in info-bit order; each is read line by line.
    writeln!(out, "exename:{}", one_line(&trace.program))?;
    writeln!(out, "cmdline:{}", one_line(&trace.cmdline.join(" ")))?;
    writeln!(out, "taskinfo:lines=2")?;
    writeln!(out, "taskinfo:nr_tid={}", threads.len())?;
    let tids: Vec<String> = threads.iter().map(|t| t.tid.to_string()).collect();
    writeln!(out, "taskinfo:tids={}", tids.join(","))?;
    fs::write(dir.join("info"), out)
}

/// A path as the map and `.sym` files can carry it. uftrace reads a map
/// line's path with `%s` (up to the first blank) and skips paths starting
/// with `[`, so blanks become `_` and paths that are not absolute
/// (`[vdso]`, anonymous memory) are put under `/livetrace/`. The session's
/// executable gets the same treatment so uftrace still finds its mapping.
fn map_path(path: &str) -> String {
    let path: String = path
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if path.starts_with('/') {
        path
    } else {
        format!("/livetrace/{path}")
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

fn timestamp(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

fn write_tasks(
    trace: &Trace,
    threads: &[&ThreadTrace],
    dir: &Path,
    t0: u64,
    sid: &str,
) -> io::Result<()> {
    let mut out = String::new();
    let ts = timestamp(t0);
    out.push_str(&format!(
        "SESS timestamp={ts} pid={} sid={sid} exename=\"{}\"\n",
        trace.pid,
        map_path(&trace.program)
    ));
    for thread in threads {
        out.push_str(&format!(
            "TASK timestamp={ts} tid={} pid={}\n",
            thread.tid, trace.pid
        ));
    }
    fs::write(dir.join("task.txt"), out)
}

/// One loaded object as written to the map: a single line from `base`,
/// which symbol addresses are made relative to.
struct Module<'a> {
    path: &'a str,
    base: u64,
    end: u64,
    offset: u64,
    /// (addr, size, name), absolute, by address.
    symbols: Vec<(u64, u64, &'a str)>,
}

fn modules(trace: &Trace) -> Vec<Module<'_>> {
    // One span per path, from its lowest mapping to its highest end;
    // nameless (anonymous) mappings each on their own.
    let mut spans: BTreeMap<(&str, u64), (u64, u64, u64)> = BTreeMap::new();
    for m in &trace.maps {
        let key = (m.path.as_str(), if m.path.is_empty() { m.start } else { 0 });
        let span = spans.entry(key).or_insert((m.start, m.end, m.offset));
        if m.start < span.0 {
            span.0 = m.start;
            span.2 = m.offset;
        }
        span.1 = span.1.max(m.end);
    }
    let mut modules: Vec<Module> = spans
        .into_iter()
        .map(|((path, _), (start, end, offset))| Module {
            path,
            base: start,
            end,
            offset,
            symbols: Vec::new(),
        })
        .collect();
    modules.sort_by_key(|m| m.base);

    let mut unmapped: Vec<(u64, u64, &str)> = Vec::new();
    for sym in trace.symbols.iter() {
        let owner = modules
            .iter_mut()
            .find(|m| m.base <= sym.addr && sym.addr < m.end);
        match owner {
            Some(m) => m.symbols.push((sym.addr, sym.size, &sym.name)),
            None => unmapped.push((sym.addr, sym.size, &sym.name)),
        }
    }
    modules.retain(|m| !m.symbols.is_empty());

    // Symbols outside every mapping (JIT code, or a trace without maps) go
    // into made-up objects: one per run of them with no real object in
    // between, so the made-up ranges overlap nothing.
    let mut pseudo: Vec<Module> = Vec::new();
    for sym in unmapped {
        let extends = pseudo.last().is_some_and(|last| {
            !modules
                .iter()
                .any(|m| m.base < sym.0 && m.end > last.symbols[0].0)
        });
        if !extends {
            pseudo.push(Module {
                path: "",
                base: sym.0,
                end: sym.0,
                offset: 0,
                symbols: Vec::new(),
            });
        }
        let last = pseudo.last_mut().expect("pushed above");
        last.end = last.end.max(sym.0.saturating_add(sym.1.max(1)));
        last.symbols.push(sym);
    }

    modules.extend(pseudo);
    modules.sort_by_key(|m| m.base);
    // Start each object where its mapping offset says its file starts, so
    // .sym addresses read like the ELF's own, unless that would overlap the
    // object below.
    for i in 0..modules.len() {
        let floor = if i == 0 { 0 } else { modules[i - 1].end };
        let file_start = modules[i].base.saturating_sub(modules[i].offset);
        if file_start >= floor {
            modules[i].base = file_start;
            modules[i].offset = 0;
        }
    }
    modules
}

/// The checksum uftrace's `make_new_symbol_filename` names a `.sym` file
/// with when its basename is taken: the path's bytes summed as C `char`s.
fn path_checksum(path: &str) -> u16 {
    path.bytes()
        .fold(0u16, |sum, b| sum.wrapping_add(b as i8 as i16 as u16))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn write_maps_and_symbols(trace: &Trace, dir: &Path, sid: &str) -> io::Result<()> {
    let modules = modules(trace);
    let mut map = String::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut unmapped = 0;
    for m in &modules {
        let path = if m.path.is_empty() {
            unmapped += 1;
            format!("/livetrace/unmapped-{}", unmapped - 1)
        } else {
            map_path(m.path)
        };
        map.push_str(&format!(
            "{:x}-{:x} r-xp {:08x} 00:00 0 {}\n",
            m.base, m.end, m.offset, path
        ));
        let base_name = basename(&path);
        let file = if taken.insert(base_name.to_string()) {
            format!("{base_name}.sym")
        } else {
            format!("{base_name}-{:04x}.sym", path_checksum(&path))
        };
        write_sym_file(&dir.join(file), &path, m)?;
    }
    // uftrace takes every address at or above a kernel base for a kernel
    // address, and guesses that base from the [stack] line; without one it
    // takes user addresses for kernel ones. A stack just below the x86-64
    // user/kernel split gives the base every 4-level-paging process has.
    map.push_str("7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]\n");
    fs::write(dir.join(format!("sid-{sid}.map")), map)
}

fn write_sym_file(file: &Path, path: &str, m: &Module) -> io::Result<()> {
    let mut out = BufWriter::new(fs::File::create(file)?);
    writeln!(out, "# symbols: {}", m.symbols.len())?;
    writeln!(out, "# path name: {path}")?;
    for (i, &(addr, size, name)) in m.symbols.iter().enumerate() {
        let rel = addr - m.base;
        writeln!(out, "{rel:016x} T {}", one_line(name))?;
        let end = addr.saturating_add(size.max(1)).min(m.end.max(addr + 1));
        let next = m.symbols.get(i + 1).map(|s| s.0);
        if next.is_none_or(|next| end < next) {
            writeln!(out, "{:016x} ? __sym_end", end - m.base)?;
        }
    }
    out.flush()
}

fn write_comms(trace: &Trace, threads: &[&ThreadTrace], dir: &Path, t0: u64) -> io::Result<()> {
    let mut out = Vec::new();
    for thread in threads.iter().filter(|t| !t.name.is_empty()) {
        let mut comm: Vec<u8> = thread.name.bytes().take(COMM_MAX).collect();
        // NUL-terminated, padded to 8 bytes as the kernel writes it.
        comm.push(0);
        comm.resize(comm.len().div_ceil(8) * 8, 0);
        let ts = thread.events.first().map_or(t0, Event::ts);
        let size = 8 + 8 + comm.len() + 16;
        out.extend_from_slice(&PERF_RECORD_COMM.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // misc
        out.extend_from_slice(&(size as u16).to_le_bytes());
        out.extend_from_slice(&trace.pid.to_le_bytes());
        out.extend_from_slice(&thread.tid.to_le_bytes());
        out.extend_from_slice(&comm);
        // sample_id: PERF_SAMPLE_TID | PERF_SAMPLE_TIME
        out.extend_from_slice(&trace.pid.to_le_bytes());
        out.extend_from_slice(&thread.tid.to_le_bytes());
        out.extend_from_slice(&ts.to_le_bytes());
    }
    fs::write(dir.join("perf-cpu0.dat"), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mapping;

    #[test]
    fn record_word_layout_matches_uftrace() {
        // From a `uftrace record` of a gcc -pg program: entry of 0x559a1bf9b24f
        // at depth 0.
        assert_eq!(word(ENTRY, 0, 0x559a_1bf9_b24f), 0x559a_1bf9_b24f_0028);
        let w = word(EXIT, 3, 0x1234);
        assert_eq!(w & 3, EXIT);
        assert_eq!((w >> 3) & 7, RECORD_MAGIC);
        assert_eq!((w >> 6) & 0x3ff, 3);
        assert_eq!(w >> 16, 0x1234);
        assert_eq!((word(ENTRY, 5000, 1) >> 6) & 0x3ff, 1023);
    }

    #[test]
    fn checksum_is_the_c_char_sum() {
        assert_eq!(path_checksum("/a"), (b'/' as u16) + (b'a' as u16));
        // Bytes >= 0x80 are negative chars on x86-64.
        assert_eq!(
            path_checksum("\u{e9}"),
            (0xc3u8 as i8 as i16 + 0xa9u8 as i8 as i16) as u16
        );
    }

    #[test]
    fn modules_rebase_and_group_unmapped_symbols() {
        let mut trace = Trace {
            maps: vec![
                Mapping {
                    start: 0x5000,
                    end: 0x6000,
                    offset: 0x1000,
                    path: "/bin/prog".into(),
                },
                Mapping {
                    start: 0x9000,
                    end: 0xa000,
                    offset: 0,
                    path: "/lib/x.so".into(),
                },
            ],
            ..Default::default()
        };
        trace.symbols.insert(0x5100, 0x10, "main");
        trace.symbols.insert(0x9100, 0x10, "xf");
        trace.symbols.insert(0x7000, 0x10, "jit1");
        trace.symbols.insert(0x7100, 0x10, "jit2");
        trace.symbols.insert(0xb000, 0x10, "jit3");
        let mods = modules(&trace);
        let summary: Vec<(&str, u64, usize)> = mods
            .iter()
            .map(|m| (m.path, m.base, m.symbols.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("/bin/prog", 0x4000, 1),
                ("", 0x7000, 2),
                ("/lib/x.so", 0x9000, 1),
                ("", 0xb000, 1)
            ]
        );
    }
}
