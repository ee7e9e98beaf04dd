//! The files around the records: `info`, `task.txt`, the map, the
//! `.sym` and `.dbg` files, `note.txt` and the `perf-cpu0.dat` of thread
//! names, written once when the trace is complete.

use super::*;

pub(super) fn write_note(process: &Process, summary: &Summary, dir: &Path) -> io::Result<()> {
    let mut note = format!(
        "written by livetrace-output {} from a trace of pid {}\n",
        env!("CARGO_PKG_VERSION"),
        process.pid
    );
    for t in &summary.threads {
        note.push_str(&format!("tid {}: {} events kept\n", t.tid, t.events));
        for (reason, n) in t.losses.iter() {
            match reason {
                LossReason::DepthLimit => note.push_str(&format!(
                    "tid {}: {n} calls deeper than the depth limit not recorded\n",
                    t.tid
                )),
                _ => note.push_str(&format!(
                    "tid {}: {n} events lost ({})\n",
                    t.tid,
                    reason.describe()
                )),
            }
        }
    }
    fs::write(dir.join("note.txt"), note)
}

/// 16 hex digits, stable for a given trace so rewriting it gives the same
/// files.
pub(super) fn session_id(process: &Process) -> String {
    // FNV-1a over what identifies the run.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&process.pid.to_le_bytes());
    feed(&process.start_ns.to_le_bytes());
    feed(process.program.as_bytes());
    format!("{h:016x}")
}

pub(super) fn write_info(
    trace: &Process,
    threads: &[&ThreadSummary],
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
pub(super) fn map_path(path: &str) -> String {
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

pub(super) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

pub(super) fn timestamp(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

pub(super) fn write_tasks(
    trace: &Process,
    threads: &[&ThreadSummary],
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
pub(super) struct Module<'a> {
    pub(super) path: &'a str,
    pub(super) base: u64,
    pub(super) end: u64,
    pub(super) offset: u64,
    /// (addr, size, name), absolute, by address.
    pub(super) symbols: Vec<(u64, u64, &'a str)>,
}

pub(super) fn modules<'a>(maps: &'a [Mapping], symbols: &'a Symbols) -> Vec<Module<'a>> {
    // One span per path, from its lowest mapping to its highest end;
    // nameless (anonymous) mappings each on their own.
    let mut spans: BTreeMap<(&str, u64), (u64, u64, u64)> = BTreeMap::new();
    for m in maps {
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
    for sym in symbols.iter() {
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
pub(super) fn path_checksum(path: &str) -> u16 {
    path.bytes()
        .fold(0u16, |sum, b| sum.wrapping_add(b as i8 as i16 as u16))
}

pub(super) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub(super) fn write_maps_and_symbols(
    maps: &[Mapping],
    symbols: &Symbols,
    dir: &Path,
    sid: &str,
) -> io::Result<()> {
    let modules = modules(maps, symbols);
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
        let stem = if taken.insert(base_name.to_string()) {
            base_name.to_string()
        } else {
            format!("{base_name}-{:04x}", path_checksum(&path))
        };
        write_sym_file(&dir.join(format!("{stem}.sym")), &path, m)?;
        write_dbg_file(&dir.join(format!("{stem}.dbg")), &path, m, symbols)?;
    }
    // uftrace takes every address at or above a kernel base for a kernel
    // address, and guesses that base from the [stack] line; without one it
    // takes user addresses for kernel ones. A stack just below the x86-64
    // user/kernel split gives the base every 4-level-paging process has.
    map.push_str("7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]\n");
    fs::write(dir.join(format!("sid-{sid}.map")), map)
}

pub(super) fn write_sym_file(file: &Path, path: &str, m: &Module) -> io::Result<()> {
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

/// The object's source locations in uftrace's debug-info file; none (and
/// no stale file from an earlier write) when it has none.
pub(super) fn write_dbg_file(
    file: &Path,
    path: &str,
    m: &Module,
    symbols: &Symbols,
) -> io::Result<()> {
    let mut located = m
        .symbols
        .iter()
        .filter_map(|&(addr, _, name)| Some((addr, name, symbols.location(addr)?)))
        .peekable();
    if located.peek().is_none() {
        return match fs::remove_file(file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut out = BufWriter::new(fs::File::create(file)?);
    writeln!(out, "# path name: {path}")?;
    for (addr, name, loc) in located {
        writeln!(out, "F: {:x} {}", addr - m.base, one_line(name))?;
        writeln!(out, "L: {} {}", loc.line, one_line(&loc.file))?;
    }
    out.flush()
}

pub(super) fn write_comms(
    trace: &Process,
    threads: &[&ThreadSummary],
    dir: &Path,
    t0: u64,
) -> io::Result<()> {
    let mut out = Vec::new();
    for thread in threads.iter().filter(|t| !t.name.is_empty()) {
        let mut comm: Vec<u8> = thread.name.bytes().take(COMM_MAX).collect();
        // NUL-terminated, padded to 8 bytes as the kernel writes it.
        comm.push(0);
        comm.resize(comm.len().div_ceil(8) * 8, 0);
        let ts = thread.first_ts.unwrap_or(t0);
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
