//! The record table: every known site, sorted by address, with its hot
//! state in one array and its names and source position in another.
//!
//! This module holds the table, its objects and its lookups; scanning and
//! its reports are in `scan`, writing sites in `write`, prologue
//! relocation in `relocate`.

use std::collections::HashMap;
use std::fmt;
use std::io;

use livetrace_poke::{Batch, Insn, NOP1X5, NOP5};

use crate::convert::{self, ConvertPolicy, ConvertReport};
use crate::disambiguator::Disambiguator;
use crate::elf::{self, Mmap};
use crate::glob::Glob;
use crate::loaded::{self, Loaded, Pin};
use crate::record::{ObjectId, Origin, Record, SiteState};
use crate::Error;

mod relocate;
mod scan;
mod write;
pub use relocate::{RelocateReport, Relocated, WhyNot};
pub use scan::{ExternalSite, InsertReport, RejectReason, Rejected, ScanReport};

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

fn hex5(b: [u8; 5]) -> String {
    format!(
        "{:02x} {:02x} {:02x} {:02x} {:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
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
    /// Functions of it given a site by prologue relocation: while there are
    /// any, it stays pinned (its text jumps to detours, and the detours
    /// back into it).
    relocated: u32,
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
        if r.origin() == Origin::Relocated {
            f.write_str(" relocated")?;
        }
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
    /// Prologue relocation: relocated functions by site, and analysed
    /// objects (see `relocate.rs`).
    reloc: relocate::State,
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
    /// symbol-table name is, or, failing that, when `name` ends in a
    /// [`Disambiguator`], the sites of that name it picks: those whose
    /// symbol carries the hash (`NAME[h0123456789abcdef]`), or the one whose
    /// site, function entry or relocated entry is the address
    /// (`NAME@0xADDR`). O(log n) for demangled names.
    pub fn lookup_name(&self, name: &str) -> Vec<usize> {
        let found = self.lookup_plain(name);
        if !found.is_empty() {
            return found;
        }
        let Some((base, which)) = Disambiguator::split(name) else {
            return found;
        };
        let mut out = self.lookup_plain(base);
        out.retain(|&i| self.is_picked_by(i, which));
        out
    }

    /// Whether `which` picks record `i` among those of its name.
    fn is_picked_by(&self, i: usize, which: Disambiguator) -> bool {
        match which {
            Disambiguator::Hash(_) => Disambiguator::hash_of(self.raw_name(i)) == Some(which),
            Disambiguator::Addr(a) => {
                let ip = self.records[i].ip();
                ip == a
                    || ip.checked_sub(self.cold[i].offset as usize) == Some(a)
                    || self.relocated(i).is_some_and(|r| r.entry == a)
            }
        }
    }

    /// [`Table::lookup_name`] without disambiguators.
    fn lookup_plain(&self, name: &str) -> Vec<usize> {
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
}

#[cfg(test)]
mod tests;
