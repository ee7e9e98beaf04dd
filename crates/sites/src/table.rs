//! The record table: every known site, sorted by address, with its hot
//! state in one array and its names and source position in another.

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
            relocated: 0,
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

    /// Three `drop_in_place<x::Bar>` (two hashes, one of them in two
    /// objects' worth of records), two C `helper`s (one after `endbr64`),
    /// and a unique function.
    fn table_with_duplicates() -> Table {
        let mut t = table_with(&[]);
        let drop = "core::ptr::drop_in_place<x::Bar>";
        let raw = |h: &str| format!("_ZN4core3ptr27drop_in_place$LT$x..Bar$GT$17h{h}E");
        let rec = |ip, name: &str, raw: String, offset| NewRecord {
            rec: Record::new(ip, ObjectId(0), Origin::Patchable, false),
            name: name.into(),
            raw,
            file: String::new(),
            line: 0,
            offset,
        };
        t.merge(vec![
            rec(0x1000, drop, raw("1a2b3c4d5e6f7a8b"), 0),
            rec(0x2000, drop, raw("00000000000000ff"), 0),
            rec(0x3000, drop, raw("1a2b3c4d5e6f7a8b") + ".llvm.77", 0),
            rec(0x4000, "helper", "helper".into(), 0),
            rec(0x5004, "helper", "helper".into(), 4),
            rec(0x6000, "unique", "unique".into(), 0),
        ]);
        t
    }

    #[test]
    fn disambiguators_pick_among_same_named_functions() {
        let t = table_with_duplicates();
        let ips = |name: &str| {
            t.lookup_name(name)
                .into_iter()
                .map(|i| t.record(i).ip())
                .collect::<Vec<_>>()
        };
        // A plain name still names them all.
        let drop = "core::ptr::drop_in_place<x::Bar>";
        assert_eq!(ips(drop), [0x1000, 0x2000, 0x3000]);
        assert_eq!(ips("helper"), [0x4000, 0x5004]);
        // The hash picks its instance(s).
        assert_eq!(ips(&format!("{drop}[h00000000000000ff]")), [0x2000]);
        assert_eq!(ips(&format!("{drop}[h1a2b3c4d5e6f7a8b]")), [0x1000, 0x3000]);
        assert_eq!(ips(&format!("{drop}[h1A2B3C4D5E6F7A8B]")), [0x1000, 0x3000]);
        // The address: the site, or the entry before an `endbr64`.
        assert_eq!(ips(&format!("{drop}@0x3000")), [0x3000]);
        assert_eq!(ips("helper@0x4000"), [0x4000]);
        assert_eq!(ips("helper@0x5004"), [0x5004]);
        assert_eq!(ips("helper@0x5000"), [0x5004]);
        // A disambiguator that picks nothing names nothing: no such hash,
        // an address of another function or inside this one, a hash of a
        // C function, or another name.
        assert!(ips(&format!("{drop}[h0000000000000001]")).is_empty());
        assert!(ips("helper@0x6000").is_empty());
        assert!(ips("helper@0x4001").is_empty());
        assert!(ips("helper[h1a2b3c4d5e6f7a8b]").is_empty());
        assert!(ips("helpe@0x4000").is_empty());
        // A unique name takes a disambiguator too; a literal glob is a name.
        assert_eq!(ips("unique@0x6000"), [0x6000]);
        assert_eq!(
            t.glob("helper@0x5000")
                .into_iter()
                .map(|i| t.record(i).ip())
                .collect::<Vec<_>>(),
            [0x5004]
        );
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
                relocated: 0,
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
