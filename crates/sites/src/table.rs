//! The record table: every known site, sorted by address, with its hot
//! state in one array and its names and source position in another.

use std::collections::HashMap;
use std::fmt;
use std::io;

use livetrace_poke::{Batch, Insn, NOP1X5, NOP5};

use crate::convert::{self, ConvertPolicy, ConvertReport};
use crate::elf::{self, Mmap};
use crate::glob::Glob;
use crate::loaded::{self, Loaded, Pin};
use crate::record::{ObjectId, Origin, Record, SiteState};
use crate::Error;

/// What five bytes at a site are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The canonical 5-byte NOP.
    Nop5,
    /// GCC's five one-byte NOPs.
    Sled,
    /// A 5-byte `nopl disp8(%rax,%rax,1)` with a displacement other than 0
    /// (clang 14 emits `0f 1f 44 00 08`). One instruction, so no thread can
    /// be inside it, but the engine's batches expect the canonical bytes.
    NopVariant,
    /// Anything else.
    Other,
}

pub(crate) fn classify(b: [u8; 5]) -> Found {
    if b == NOP5 {
        Found::Nop5
    } else if b == NOP1X5 {
        Found::Sled
    } else if b[..4] == NOP5[..4] {
        Found::NopVariant
    } else {
        Found::Other
    }
}

/// Reads five bytes of text of an object that cannot be unmapped meanwhile
/// (pinned, or the main program), checking they lie inside one of its
/// executable segments so the read cannot fault.
pub(crate) fn read_text(exec: &[(usize, usize)], addr: usize) -> Option<[u8; 5]> {
    let end = addr.checked_add(5)?;
    if !exec.iter().any(|&(a, b)| a <= addr && end <= b) {
        return None;
    }
    let mut out = [0u8; 5];
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: inside a PT_LOAD segment with PF_X of an object that
        // stays mapped for the duration (the caller holds a pin or it is
        // the main program); executable segments are mapped readable.
        // Volatile: the engine rewrites text behind the compiler's back.
        *o = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
    }
    Some(out)
}

/// Why a site was refused. Refused sites are not in the table, so nothing
/// can ever patch them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The site address.
    pub addr: usize,
    /// The object's file.
    pub object: String,
    /// The function containing it, as `name+0xoff`, if any.
    pub symbol: Option<String>,
    /// The bytes found there, when readable.
    pub found: Option<[u8; 5]>,
    /// The check that failed.
    pub reason: RejectReason,
}

/// The check a refused site failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The bytes are none of the accepted NOP forms.
    UnexpectedBytes,
    /// The five bytes are not inside an executable segment of the object.
    NotText,
    /// The address is in no loaded object (externally described sites).
    NoObject,
}

fn hex5(b: [u8; 5]) -> String {
    format!(
        "{:02x} {:02x} {:02x} {:02x} {:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "livetrace: refused site at {:#x}", self.addr)?;
        if let Some(s) = &self.symbol {
            write!(f, " <{s}>")?;
        }
        write!(f, " in {}: ", self.object)?;
        match self.reason {
            RejectReason::UnexpectedBytes => {
                f.write_str("expected nop (0f 1f 44 00 00, or 90 90 90 90 90)")?
            }
            RejectReason::NotText => f.write_str("not inside an executable segment")?,
            RejectReason::NoObject => f.write_str("not inside any loaded object")?,
        }
        match self.found {
            Some(b) => write!(f, ", found {}", hex5(b)),
            None => Ok(()),
        }
    }
}

/// One loaded object the table knows.
#[derive(Debug)]
pub struct Object {
    id: ObjectId,
    dl_name: String,
    path: Option<String>,
    base: usize,
    exec: Vec<(usize, usize)>,
    is_main: bool,
    soname: Option<String>,
    needed: Vec<String>,
    /// Records holding a call or jmp.
    enabled: u32,
    /// Held while `enabled > 0` (never for the main program).
    pin: Option<Pin>,
    /// Why its file could not be used, if so.
    error: Option<String>,
}

impl Object {
    /// Its id.
    pub fn id(&self) -> ObjectId {
        self.id
    }
    /// The file its sites and names were read from (`None` when there is
    /// none, like the vDSO).
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    /// The name the dynamic loader knows it by (empty for the program).
    pub fn dl_name(&self) -> &str {
        &self.dl_name
    }
    /// Load bias: runtime address minus link-time address.
    pub fn base(&self) -> usize {
        self.base
    }
    /// Whether it is the main program.
    pub fn is_main(&self) -> bool {
        self.is_main
    }
    /// Whether the table holds a reference keeping it loaded.
    pub fn is_pinned(&self) -> bool {
        self.pin.is_some()
    }
    /// Sites of this object holding a call or jmp.
    pub fn enabled_sites(&self) -> u32 {
        self.enabled
    }
    /// Why its file could not be read, if that happened.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    /// Whether `addr` is in one of its executable segments.
    pub fn contains(&self, addr: usize) -> bool {
        self.exec.iter().any(|&(a, b)| a <= addr && addr < b)
    }
    /// Its executable ranges, at run-time addresses.
    pub fn exec_ranges(&self) -> &[(usize, usize)] {
        &self.exec
    }

    fn display_path(&self) -> &str {
        self.path.as_deref().unwrap_or(if self.is_main {
            "<main>"
        } else {
            &self.dl_name
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// Cold per-record data: strings in the arena.
#[derive(Clone, Copy, Debug, Default)]
struct Cold {
    /// Demangled name (or the raw one when not mangled).
    name: Span,
    /// Symbol name as in the symbol table (empty span when equal to name).
    raw: Span,
    file: Span,
    line: u32,
    /// Site offset from the function's start.
    offset: u32,
}

/// An externally described site (the `#[traced]` macro's), for
/// [`Table::insert_external`].
#[derive(Clone, Copy, Debug)]
pub struct ExternalSite<'a> {
    /// The site address (five bytes holding the 5-byte NOP).
    pub addr: usize,
    /// The function's full path, e.g. `mycrate::parser::parse_expr`.
    pub name: &'a str,
    /// Source file.
    pub file: &'a str,
    /// Source line.
    pub line: u32,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Objects seen for the first time.
    pub added_objects: Vec<ObjectId>,
    /// Objects no longer loaded, whose records were dropped.
    pub removed_objects: usize,
    /// Sites added to the table.
    pub added_sites: usize,
    /// Sites refused by this scan (also kept in [`Table::rejected`]).
    pub rejected: Vec<Rejected>,
    /// Objects whose file could not be used: (object, why).
    pub errors: Vec<(String, String)>,
    /// Sites left out because they are livetrace's own or the Rust
    /// runtime's (never traced; see `notrace.rs`).
    pub notrace: usize,
}

/// What [`Table::insert_external`] did.
#[derive(Debug, Default)]
pub struct InsertReport {
    /// New records.
    pub inserted: usize,
    /// Sites already in the table (their file:line was filled in if it
    /// was unknown).
    pub already_known: usize,
    /// Refused sites.
    pub rejected: Vec<Rejected>,
}

/// One row of [`Table::available`]: the `available_filter_functions`
/// equivalent.
#[derive(Clone, Copy, Debug)]
pub struct FunctionInfo<'a> {
    /// Site address.
    pub addr: usize,
    /// Demangled name.
    pub name: &'a str,
    /// Symbol name as in the symbol table.
    pub raw_name: &'a str,
    /// Site offset from the function's first byte (0 unless the compiler
    /// put something, e.g. `endbr64`, before the NOP).
    pub offset: u32,
    /// The object's file.
    pub object: &'a str,
    /// Source file, when known.
    pub file: Option<&'a str>,
    /// Source line, when known.
    pub line: Option<u32>,
    /// The hot record.
    pub record: &'a Record,
}

impl fmt::Display for FunctionInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} {}", self.addr, self.name)?;
        if self.offset != 0 {
            write!(f, "+{:#x}", self.offset)?;
        }
        let obj = self.object.rsplit('/').next().unwrap_or(self.object);
        write!(f, " [{obj}] ")?;
        match self.record.state() {
            SiteState::Unconverted => f.write_str("unconverted")?,
            SiteState::Live(Insn::Nop) => f.write_str("nop")?,
            SiteState::Live(Insn::Call(t)) => write!(f, "call {t:#x}")?,
            SiteState::Live(Insn::Jmp(t)) => write!(f, "jmp {t:#x}")?,
        }
        let r = self.record;
        if r.nr_ops() > 0 {
            write!(f, " ops={}", r.nr_ops())?;
        }
        if r.needs_regs() {
            f.write_str(" R")?;
        }
        if let Some(o) = r.ipmodify_owner() {
            write!(f, " I:{o}")?;
        }
        match (self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " {file}:{line}"),
            (Some(file), None) => write!(f, " {file}"),
            _ => Ok(()),
        }
    }
}

/// The record table. Not internally synchronised: the tracing core keeps it
/// behind its own lock (the kernel's `ftrace_lock`), and every method that
/// changes text or the set of records takes `&mut self`.
#[derive(Debug, Default)]
pub struct Table {
    records: Vec<Record>,
    cold: Vec<Cold>,
    arena: String,
    /// Record indices sorted by name, for exact and prefix lookups.
    by_name: Vec<u32>,
    objects: Vec<Object>,
    next_object: u32,
    rejected: Vec<(ObjectId, Rejected)>,
    /// `dlpi_subs` at the last scan: unloads since then mean an object
    /// could have been unloaded and reloaded at the same address.
    last_subs: Option<u64>,
}

/// A record about to be inserted, with its strings.
struct NewRecord {
    rec: Record,
    name: String,
    raw: String,
    file: String,
    line: u32,
    offset: u32,
}

impl Table {
    /// An empty table; see [`Table::rescan`].
    pub fn new() -> Table {
        Table::default()
    }

    /// A table holding every compiler-emitted site of every loaded object.
    pub fn discover() -> Result<(Table, ScanReport), Error> {
        let mut t = Table::new();
        let r = t.rescan()?;
        Ok((t, r))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every record, sorted by address.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The record at index `i` (indices are valid until the next scan or
    /// insertion).
    pub fn record(&self, i: usize) -> &Record {
        &self.records[i]
    }

    /// The record at index `i`, for the tracing core's accounting fields.
    pub fn record_mut(&mut self, i: usize) -> &mut Record {
        &mut self.records[i]
    }

    /// The record index for the site at exactly `ip`. O(log n).
    pub fn find(&self, ip: usize) -> Option<usize> {
        self.records.binary_search_by_key(&ip, |r| r.ip()).ok()
    }

    fn span(&self, s: Span) -> &str {
        &self.arena[s.start as usize..(s.start + s.len) as usize]
    }

    /// The demangled name of record `i`.
    pub fn name(&self, i: usize) -> &str {
        self.span(self.cold[i].name)
    }

    /// The symbol-table name of record `i`.
    pub fn raw_name(&self, i: usize) -> &str {
        let c = &self.cold[i];
        if c.raw.len == 0 {
            self.span(c.name)
        } else {
            self.span(c.raw)
        }
    }

    /// Full information about record `i`.
    pub fn info(&self, i: usize) -> FunctionInfo<'_> {
        let c = &self.cold[i];
        let r = &self.records[i];
        let object = self.object(r.object()).map_or("?", |o| o.display_path());
        FunctionInfo {
            addr: r.ip(),
            name: self.name(i),
            raw_name: self.raw_name(i),
            offset: c.offset,
            object,
            file: (c.file.len > 0).then(|| self.span(c.file)),
            line: (c.line > 0).then_some(c.line),
            record: r,
        }
    }

    /// Every site, in address order: name, address, object, file:line, state.
    pub fn available(&self) -> impl Iterator<Item = FunctionInfo<'_>> + '_ {
        (0..self.records.len()).map(|i| self.info(i))
    }

    /// Writes [`Table::available`], one site per line.
    pub fn write_available(&self, out: &mut impl io::Write) -> io::Result<()> {
        for f in self.available() {
            writeln!(out, "{f}")?;
        }
        Ok(())
    }

    /// Record indices of every site whose demangled name is exactly `name`
    /// (several static functions may share one), or, failing that, whose
    /// symbol-table name is. O(log n) for demangled names.
    pub fn lookup_name(&self, name: &str) -> Vec<usize> {
        let lo = self
            .by_name
            .partition_point(|&i| self.name(i as usize) < name);
        let hi = lo + self.by_name[lo..].partition_point(|&i| self.name(i as usize) == name);
        let mut out: Vec<usize> = self.by_name[lo..hi].iter().map(|&i| i as usize).collect();
        if out.is_empty() {
            out = (0..self.records.len())
                .filter(|&i| self.raw_name(i) == name)
                .collect();
        }
        out.sort_unstable();
        out
    }

    /// Record indices of every site whose demangled name matches the glob
    /// `pattern` (`*`, `?`), in address order. A literal prefix
    /// (`parser::*`) narrows the search through the sorted name index.
    pub fn glob(&self, pattern: &str) -> Vec<usize> {
        let g = Glob::new(pattern);
        if g.is_literal() {
            return self.lookup_name(pattern);
        }
        let prefix = g.literal_prefix();
        let lo = self
            .by_name
            .partition_point(|&i| self.name(i as usize) < prefix.as_str());
        let mut out: Vec<usize> = self.by_name[lo..]
            .iter()
            .map(|&i| i as usize)
            .take_while(|&i| self.name(i).starts_with(prefix.as_str()))
            .filter(|&i| g.matches(self.name(i)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Every object the table knows.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// The object with id `id`, if still known.
    pub fn object(&self, id: ObjectId) -> Option<&Object> {
        self.objects.iter().find(|o| o.id == id)
    }

    fn object_mut(&mut self, id: ObjectId) -> Option<&mut Object> {
        self.objects.iter_mut().find(|o| o.id == id)
    }

    /// The object whose executable segments contain `addr`.
    pub fn object_containing(&self, addr: usize) -> Option<&Object> {
        self.objects.iter().find(|o| o.contains(addr))
    }

    /// Every refused site of the objects still loaded.
    pub fn rejected(&self) -> impl Iterator<Item = &Rejected> + '_ {
        self.rejected.iter().map(|(_, r)| r)
    }

    /// Brings the table up to date with the loaded objects: objects loaded
    /// since the last scan are read and their sites added; objects no longer
    /// loaded lose their records. Idempotent: a scan with nothing loaded or
    /// unloaded since changes nothing and reads no file.
    ///
    /// Objects with an enabled site are pinned and cannot have been
    /// unloaded. An unpinned object that was unloaded and loaded again at
    /// the same address between two scans is detected (the loader's
    /// unload counter moved and its sites' bytes no longer match what the
    /// table says) and read afresh.
    pub fn rescan(&mut self) -> Result<ScanReport, Error> {
        let (now, subs) = loaded::loaded_objects_with_subs();
        let mut report = ScanReport::default();
        let unloads_happened = self.last_subs.is_some_and(|s| s != subs);
        self.last_subs = Some(subs);

        // Drop objects that are gone, or suspect of having been reloaded.
        let mut gone: Vec<ObjectId> = Vec::new();
        // The core's accounting of a reloaded object's sites carries over to
        // the same addresses (same file at the same address).
        let mut carry: HashMap<usize, Record> = HashMap::new();
        for o in &self.objects {
            let still = now
                .iter()
                .any(|l| l.dl_name == o.dl_name && l.base == o.base);
            if !still {
                debug_assert!(o.pin.is_none(), "a pinned object was unloaded");
                gone.push(o.id);
            } else if unloads_happened
                && o.pin.is_none()
                && !o.is_main
                && !self.bytes_still_match(o)
            {
                gone.push(o.id);
                carry.extend(
                    self.records
                        .iter()
                        .filter(|r| r.object() == o.id)
                        .map(|r| (r.ip(), *r)),
                );
            }
        }
        if !gone.is_empty() {
            report.removed_objects = gone.len();
            self.remove_objects(&gone);
        }

        let mut fresh: Vec<NewRecord> = Vec::new();
        for l in &now {
            if self
                .objects
                .iter()
                .any(|o| o.dl_name == l.dl_name && o.base == l.base)
            {
                continue;
            }
            let id = ObjectId(self.next_object);
            self.next_object += 1;
            let obj = self.scan_object(id, l, &mut fresh, &mut report);
            report.added_objects.push(id);
            self.objects.push(obj);
        }
        report.added_sites = fresh.len();
        self.merge(fresh);
        for (ip, old) in carry {
            if let Some(i) = self.find(ip) {
                self.records[i].take_accounting(&old);
            }
        }
        Ok(report)
    }

    /// Whether every record of `o` still finds the bytes the table expects
    /// (only meaningful for unpinned objects, whose live sites are all NOPs).
    fn bytes_still_match(&self, o: &Object) -> bool {
        let Ok(_pin) = Pin::take(&o.dl_name, o.base) else {
            return false;
        };
        self.records.iter().filter(|r| r.object() == o.id).all(|r| {
            matches!(
                (read_text(&o.exec, r.ip()).map(classify), r.state()),
                (Some(Found::Nop5), SiteState::Live(Insn::Nop))
                    | (
                        Some(Found::Sled | Found::NopVariant),
                        SiteState::Unconverted
                    )
            )
        })
    }

    fn remove_objects(&mut self, ids: &[ObjectId]) {
        let keep: Vec<bool> = self
            .records
            .iter()
            .map(|r| !ids.contains(&r.object()))
            .collect();
        let mut new_records = Vec::with_capacity(self.records.len());
        let mut new_cold = Vec::with_capacity(self.cold.len());
        let mut arena = String::with_capacity(self.arena.len());
        for (i, k) in keep.iter().enumerate() {
            if !k {
                continue;
            }
            let c = self.cold[i];
            let mut move_span = |s: Span| {
                let text = &self.arena[s.start as usize..(s.start + s.len) as usize];
                let start = arena.len() as u32;
                arena.push_str(text);
                Span { start, len: s.len }
            };
            let nc = Cold {
                name: move_span(c.name),
                raw: move_span(c.raw),
                file: move_span(c.file),
                line: c.line,
                offset: c.offset,
            };
            new_records.push(self.records[i]);
            new_cold.push(nc);
        }
        self.records = new_records;
        self.cold = new_cold;
        self.arena = arena;
        self.objects.retain(|o| !ids.contains(&o.id));
        self.rejected.retain(|(id, _)| !ids.contains(id));
        self.rebuild_name_index();
    }

    fn push_str(&mut self, s: &str) -> Span {
        let start = u32::try_from(self.arena.len()).expect("string arena exceeds 4 GiB");
        self.arena.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    /// Adds new records (any order, addresses not yet in the table) and
    /// restores address order and the name index.
    fn merge(&mut self, fresh: Vec<NewRecord>) {
        if fresh.is_empty() {
            return;
        }
        for n in fresh {
            let name = self.push_str(&n.name);
            let raw = if n.raw == n.name {
                Span::default()
            } else {
                self.push_str(&n.raw)
            };
            let file = self.push_str(&n.file);
            self.records.push(n.rec);
            self.cold.push(Cold {
                name,
                raw,
                file,
                line: n.line,
                offset: n.offset,
            });
        }
        let mut order: Vec<usize> = (0..self.records.len()).collect();
        order.sort_by_key(|&i| self.records[i].ip());
        self.records = order.iter().map(|&i| self.records[i]).collect();
        self.cold = order.iter().map(|&i| self.cold[i]).collect();
        self.rebuild_name_index();
    }

    fn rebuild_name_index(&mut self) {
        let mut idx: Vec<u32> = (0..self.records.len() as u32).collect();
        idx.sort_by(|&a, &b| self.name(a as usize).cmp(self.name(b as usize)));
        self.by_name = idx;
    }

    /// Reads one newly seen object's file and checks each of its sites.
    fn scan_object(
        &mut self,
        id: ObjectId,
        l: &Loaded,
        out: &mut Vec<NewRecord>,
        report: &mut ScanReport,
    ) -> Object {
        let mut obj = Object {
            id,
            dl_name: l.dl_name.clone(),
            path: loaded::file_path(l),
            base: l.base,
            exec: l.exec.clone(),
            is_main: l.is_main,
            soname: None,
            needed: Vec::new(),
            enabled: 0,
            pin: None,
            error: None,
        };
        let Some(path) = obj.path.clone() else {
            return obj;
        };
        // Keep the object mapped while its text is read: another thread
        // may dlclose it at any moment.
        let _pin = if l.is_main {
            None
        } else {
            match Pin::take(&l.dl_name, l.base) {
                Ok(p) => Some(p),
                Err(e) => {
                    obj.error = Some(e.to_string());
                    return obj;
                }
            }
        };
        let info = match Mmap::open(&path).and_then(|m| Ok((elf::parse(m.bytes())?, m))) {
            Ok((info, _map)) => info,
            Err(e) => {
                let why = format!("cannot read {path}: {e}");
                report.errors.push((path.clone(), why.clone()));
                obj.error = Some(why);
                return obj;
            }
        };
        let mapped: Vec<(u64, u64, u32)> = l.loads.clone();
        let in_file: Vec<(u64, u64, u32)> = info
            .loads
            .iter()
            .map(|s| (s.vaddr, s.memsz, s.flags))
            .collect();
        if mapped != in_file {
            let why = format!("{path} on disk is not the file that was loaded (segments differ)");
            report.errors.push((path.clone(), why.clone()));
            obj.error = Some(why);
            return obj;
        }
        obj.soname = info.soname.clone();
        obj.needed = info.needed.clone();
        let file_stem = path.rsplit('/').next().unwrap_or(&path).to_owned();
        if crate::notrace::is_notrace_object(&path) {
            report.notrace += info.sites.len();
            return obj;
        }
        for &(link, origin) in &info.sites {
            let addr = l.base.wrapping_add(link as usize);
            let sym = info.containing(link);
            let (raw, offset) = match sym {
                Some(s) => (s.name.clone(), (link - s.addr) as u32),
                // Stripped object (static functions are not in .dynsym):
                // still traceable by address.
                None => (format!("{file_stem}+{link:#x}"), 0),
            };
            let name = crate::demangle::demangle(&raw).unwrap_or_else(|| raw.clone());
            if crate::notrace::is_notrace(&raw, &name) {
                report.notrace += 1;
                continue;
            }
            let label = if offset == 0 {
                name.clone()
            } else {
                format!("{name}+{offset:#x}")
            };
            let found = read_text(&obj.exec, addr);
            let reason = match found.map(classify) {
                None => Some(RejectReason::NotText),
                Some(Found::Other) => Some(RejectReason::UnexpectedBytes),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                let r = Rejected {
                    addr,
                    object: path.clone(),
                    symbol: sym.map(|_| label),
                    found,
                    reason,
                };
                report.rejected.push(r.clone());
                self.rejected.push((id, r));
                continue;
            }
            let unconverted = found.map(classify) != Some(Found::Nop5);
            out.push(NewRecord {
                rec: Record::new(addr, id, origin, unconverted),
                name,
                raw,
                file: String::new(),
                line: 0,
                offset,
            });
        }
        obj
    }

    /// Adds sites described by the program itself (origin
    /// [`Origin::Macro`]). Each must lie in the executable text of a loaded
    /// object and hold an accepted NOP form; a site already in the table
    /// keeps its record and gets the source position if it had none.
    pub fn insert_external(&mut self, sites: &[ExternalSite<'_>]) -> Result<InsertReport, Error> {
        let mut report = InsertReport::default();
        if sites
            .iter()
            .any(|s| self.object_containing(s.addr).is_none())
        {
            self.rescan()?;
        }
        let mut fresh: Vec<NewRecord> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pins: HashMap<ObjectId, Option<Pin>> = HashMap::new();
        for s in sites {
            if let Some(i) = self.find(s.addr) {
                report.already_known += 1;
                if self.cold[i].file.len == 0 && !s.file.is_empty() {
                    let file = self.push_str(s.file);
                    self.cold[i].file = file;
                    self.cold[i].line = s.line;
                }
                continue;
            }
            if !seen.insert(s.addr) {
                report.already_known += 1;
                continue;
            }
            let Some(obj) = self.object_containing(s.addr) else {
                let r = Rejected {
                    addr: s.addr,
                    object: "?".into(),
                    symbol: Some(s.name.to_owned()),
                    found: None,
                    reason: RejectReason::NoObject,
                };
                report.rejected.push(r);
                continue;
            };
            let id = obj.id;
            let pin = pins.entry(id).or_insert_with(|| {
                if obj.is_main {
                    None
                } else {
                    Pin::take(&obj.dl_name, obj.base).ok()
                }
            });
            let found = if obj.is_main || pin.is_some() {
                read_text(&obj.exec, s.addr)
            } else {
                None
            };
            let kind = found.map(classify);
            if matches!(kind, None | Some(Found::Other)) {
                let r = Rejected {
                    addr: s.addr,
                    object: obj.display_path().to_owned(),
                    symbol: Some(s.name.to_owned()),
                    found,
                    reason: if found.is_none() {
                        RejectReason::NotText
                    } else {
                        RejectReason::UnexpectedBytes
                    },
                };
                self.rejected.push((id, r.clone()));
                report.rejected.push(r);
                continue;
            }
            fresh.push(NewRecord {
                rec: Record::new(s.addr, id, Origin::Macro, kind != Some(Found::Nop5)),
                name: s.name.to_owned(),
                raw: s.name.to_owned(),
                file: s.file.to_owned(),
                line: s.line,
                offset: 0,
            });
        }
        report.inserted = fresh.len();
        self.merge(fresh);
        Ok(report)
    }

    /// Rewrites sites live through the engine, as one batch: each `(ip,
    /// insn)` makes the site at `ip` hold `insn`. Either all change or none.
    ///
    /// Keeps the pinning invariant: before any site of a library goes from
    /// NOP to call/jmp the library is pinned, and once its last enabled site
    /// is back to NOP the pin is released. Unconverted sites are refused.
    pub fn apply(&mut self, changes: &[(usize, Insn)]) -> Result<(), Error> {
        let mut idx = Vec::with_capacity(changes.len());
        for &(ip, insn) in changes {
            let i = self.find(ip).ok_or(Error::NoSuchSite { addr: ip })?;
            if !self.records[i].is_live() {
                return Err(Error::NotConverted {
                    addr: ip,
                    name: self.name(i).to_owned(),
                });
            }
            if self.records[i].insn() != insn {
                idx.push((i, insn));
            }
        }
        if idx.is_empty() {
            return Ok(());
        }
        // Per-object change in the number of enabled sites.
        let mut delta: HashMap<ObjectId, i64> = HashMap::new();
        for &(i, new) in &idx {
            let r = &self.records[i];
            let d = i64::from(new != Insn::Nop) - i64::from(r.is_enabled());
            *delta.entry(r.object()).or_default() += d;
        }
        // Pin first: the batch must never put a call into a library that
        // could be unmapped while it is there.
        let mut newly_pinned: Vec<ObjectId> = Vec::new();
        for (&id, &d) in &delta {
            let o = self.object(id).expect("records refer to known objects");
            if d > 0 && o.enabled == 0 && !o.is_main && o.pin.is_none() {
                match Pin::take(&o.dl_name, o.base) {
                    Ok(p) => {
                        self.object_mut(id).expect("known").pin = Some(p);
                        newly_pinned.push(id);
                    }
                    Err(e) => {
                        let path = o.display_path().to_owned();
                        for id in newly_pinned {
                            self.object_mut(id).expect("known").pin = None;
                        }
                        return Err(Error::Pin {
                            object: path,
                            source: e,
                        });
                    }
                }
            }
        }
        let mut batch = Batch::with_capacity(idx.len());
        let mut queued: Result<(), livetrace_poke::Error> = Ok(());
        for &(i, new) in &idx {
            let r = &self.records[i];
            queued = batch.queue(r.ip(), r.insn(), new);
            if queued.is_err() {
                break;
            }
        }
        if let Err(e) = queued.and_then(|()| batch.apply().map(|_| ())) {
            for id in newly_pinned {
                self.object_mut(id).expect("known").pin = None;
            }
            return Err(Error::Poke(e));
        }
        for &(i, new) in &idx {
            self.records[i].set_insn(new);
        }
        for (id, d) in delta {
            let o = self.object_mut(id).expect("known");
            o.enabled = (i64::from(o.enabled) + d) as u32;
            if o.enabled == 0 {
                // Every site of the library is a NOP again: nothing can
                // call into it from its sites any more, so it may go.
                o.pin = None;
            }
        }
        Ok(())
    }

    /// Converts unconverted sites (sleds and non-canonical NOPs) into the
    /// canonical 5-byte NOP under `policy`; `objects` limits it to those
    /// objects (all when `None`). See [`ConvertPolicy`] for what each mode
    /// guarantees.
    pub fn convert(
        &mut self,
        objects: Option<&[ObjectId]>,
        policy: ConvertPolicy,
    ) -> Result<ConvertReport, Error> {
        let targets: Vec<usize> = (0..self.records.len())
            .filter(|&i| {
                let r = &self.records[i];
                !r.is_live() && objects.is_none_or(|ids| ids.contains(&r.object()))
            })
            .collect();
        if targets.is_empty() {
            return Ok(ConvertReport::default());
        }
        // Keep every involved library mapped while its text is rewritten.
        let mut pins: Vec<Pin> = Vec::new();
        let mut ids: Vec<ObjectId> = targets.iter().map(|&i| self.records[i].object()).collect();
        ids.dedup();
        ids.sort();
        ids.dedup();
        for id in &ids {
            let o = self.object(*id).expect("known");
            if !o.is_main {
                let p = Pin::take(&o.dl_name, o.base).map_err(|e| Error::Pin {
                    object: o.display_path().to_owned(),
                    source: e,
                })?;
                pins.push(p);
            }
        }
        let mut sites: Vec<(usize, [u8; 5])> = Vec::with_capacity(targets.len());
        let mut report = ConvertReport::default();
        let mut already = Vec::new();
        for &i in &targets {
            let r = &self.records[i];
            let o = self.object(r.object()).expect("known");
            match read_text(&o.exec, r.ip()) {
                // Converted already (an earlier conversion stopped by an
                // error after writing it): only the record lags.
                Some(NOP5) => already.push(i),
                Some(b) if matches!(classify(b), Found::Sled | Found::NopVariant) => {
                    sites.push((r.ip(), b))
                }
                other => report.failed.push((
                    r.ip(),
                    format!(
                        "{}: expected 90 90 90 90 90 or 0f 1f 44 00 xx, found {}",
                        self.name(i),
                        other.map_or("nothing readable".into(), hex5)
                    ),
                )),
            }
        }
        for i in already {
            self.records[i].set_converted();
            report.converted += 1;
        }
        if sites.is_empty() {
            // Nothing left to write (someone converted them already, e.g.
            // with every thread held by a ptrace injector): no need to
            // stop anyone.
            return Ok(report);
        }
        let (done, result) = convert::convert_sites(&sites, policy, &mut report);
        for ip in done {
            if let Some(i) = self.find(ip) {
                self.records[i].set_converted();
            }
        }
        drop(pins);
        result?;
        Ok(report)
    }

    /// For the `dlopen` interposer: call after the real `dlopen` returned
    /// `handle` (before handing it to the program, so that its code has run
    /// only in its constructors). Scans the new objects, then converts the
    /// sleds of the object behind `handle` and of the libraries it brought
    /// in with it, stopping the world ([`ConvertPolicy::StopTheWorld`]):
    /// the constructors may have started threads that run their code.
    pub fn on_dlopen(
        &mut self,
        handle: *mut libc::c_void,
    ) -> Result<(ScanReport, ConvertReport), Error> {
        let scan = self.rescan()?;
        let (base, _) = loaded::handle_info(handle).map_err(Error::Io)?;
        let Some(root) = self
            .objects
            .iter()
            .find(|o| o.base == base && scan.added_objects.contains(&o.id))
            .map(|o| o.id)
        else {
            // Already known before this dlopen: its code may have run.
            return Ok((scan, ConvertReport::default()));
        };
        let closure = self.just_loaded_closure(root, &scan.added_objects);
        let conv = self.convert(Some(&closure), ConvertPolicy::StopTheWorld)?;
        Ok((scan, conv))
    }

    /// For the `dlclose` interposer: call after the real `dlclose`. Drops
    /// the records of objects that are no longer loaded.
    pub fn on_dlclose(&mut self) -> Result<ScanReport, Error> {
        self.rescan()
    }

    /// `root` and the new objects reachable from it through DT_NEEDED
    /// (matched by soname or file name): what one `dlopen` loaded.
    fn just_loaded_closure(&self, root: ObjectId, new: &[ObjectId]) -> Vec<ObjectId> {
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            let needed = self
                .object(out[i])
                .map(|o| o.needed.clone())
                .unwrap_or_default();
            for n in &needed {
                for o in &self.objects {
                    if !new.contains(&o.id) || out.contains(&o.id) {
                        continue;
                    }
                    let file = o.dl_name.rsplit('/').next().unwrap_or("");
                    if o.soname.as_deref() == Some(n.as_str()) || file == n {
                        out.push(o.id);
                    }
                }
            }
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(names: &[(usize, &str)]) -> Table {
        let mut t = Table::new();
        t.objects.push(Object {
            id: ObjectId(0),
            dl_name: String::new(),
            path: Some("/bin/test".into()),
            base: 0,
            exec: vec![],
            is_main: true,
            soname: None,
            needed: vec![],
            enabled: 0,
            pin: None,
            error: None,
        });
        let fresh = names
            .iter()
            .map(|&(ip, n)| NewRecord {
                rec: Record::new(ip, ObjectId(0), Origin::Patchable, false),
                name: n.to_owned(),
                raw: if n == "parser::parse_expr" {
                    "_ZN6parser10parse_expr17h0123456789abcdefE".into()
                } else {
                    n.to_owned()
                },
                file: String::new(),
                line: 0,
                offset: 0,
            })
            .collect();
        t.merge(fresh);
        t
    }

    #[test]
    fn classify_forms() {
        assert_eq!(classify(NOP5), Found::Nop5);
        assert_eq!(classify(NOP1X5), Found::Sled);
        assert_eq!(classify([0x0f, 0x1f, 0x44, 0x00, 0x08]), Found::NopVariant);
        assert_eq!(classify([0xe8, 0, 0, 0, 0]), Found::Other);
        assert_eq!(classify([0x90, 0x90, 0x90, 0x90, 0xc3]), Found::Other);
    }

    #[test]
    fn lookups() {
        let t = table_with(&[
            (0x3000, "parser::parse_expr"),
            (0x1000, "main"),
            (0x2000, "parser::parse_stmt"),
            (0x5000, "my_alloc_zeroed"),
            (0x4000, "__rust_alloc"),
            (0x6000, "helper"),
            (0x7000, "helper"),
        ]);
        // Sorted by address.
        assert!(t.records().windows(2).all(|w| w[0].ip() < w[1].ip()));
        assert_eq!(
            t.find(0x3000).map(|i| t.name(i)),
            Some("parser::parse_expr")
        );
        assert_eq!(t.find(0x3001), None);
        assert_eq!(t.find(0x0fff), None);
        let names = |v: Vec<usize>| {
            v.into_iter()
                .map(|i| t.name(i).to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(t.glob("parser::*")),
            ["parser::parse_stmt", "parser::parse_expr"]
        );
        assert_eq!(
            names(t.glob("*alloc*")),
            ["__rust_alloc", "my_alloc_zeroed"]
        );
        assert_eq!(names(t.glob("m??n")), ["main"]);
        assert!(t.glob("parser::x*").is_empty());
        assert_eq!(t.lookup_name("helper").len(), 2);
        assert_eq!(names(t.lookup_name("main")), ["main"]);
        assert!(t.lookup_name("mai").is_empty());
        // Raw names are found too.
        assert_eq!(
            names(t.lookup_name("_ZN6parser10parse_expr17h0123456789abcdefE")),
            ["parser::parse_expr"]
        );
        assert_eq!(
            t.raw_name(t.find(0x3000).unwrap()),
            "_ZN6parser10parse_expr17h0123456789abcdefE"
        );
        assert_eq!(names(t.glob("*")).len(), 7);
    }

    #[test]
    fn removal_compacts_strings() {
        let mut t = table_with(&[(0x1000, "a"), (0x2000, "b")]);
        t.objects.push(Object {
            id: ObjectId(1),
            ..t.objects[0].clone_for_test()
        });
        t.merge(vec![NewRecord {
            rec: Record::new(0x1800, ObjectId(1), Origin::Macro, false),
            name: "lib::f".into(),
            raw: "lib::f".into(),
            file: "src/lib.rs".into(),
            line: 7,
            offset: 0,
        }]);
        assert_eq!(t.len(), 3);
        let i = t.find(0x1800).unwrap();
        assert_eq!(t.info(i).file, Some("src/lib.rs"));
        assert_eq!(t.info(i).line, Some(7));
        t.remove_objects(&[ObjectId(1)]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.arena, "ab");
        assert!(t.lookup_name("lib::f").is_empty());
        assert_eq!(t.lookup_name("b"), vec![1]);
    }

    impl Object {
        fn clone_for_test(&self) -> Object {
            Object {
                id: self.id,
                dl_name: self.dl_name.clone(),
                path: self.path.clone(),
                base: self.base,
                exec: self.exec.clone(),
                is_main: self.is_main,
                soname: None,
                needed: vec![],
                enabled: 0,
                pin: None,
                error: None,
            }
        }
    }

    #[test]
    fn rejected_report_names_address_symbol_and_bytes() {
        let r = Rejected {
            addr: 0x7f00_0000_1130,
            object: "/tmp/libbad.so".into(),
            symbol: Some("weird".into()),
            found: Some([0xe8, 0x01, 0x02, 0x03, 0x04]),
            reason: RejectReason::UnexpectedBytes,
        };
        let s = r.to_string();
        assert!(s.contains("0x7f0000001130"), "{s}");
        assert!(s.contains("<weird>"), "{s}");
        assert!(s.contains("/tmp/libbad.so"), "{s}");
        assert!(s.contains("found e8 01 02 03 04"), "{s}");
    }
}
