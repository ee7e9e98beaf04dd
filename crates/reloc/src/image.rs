//! Candidate functions of an ELF object and, for each, whether its prologue
//! can be relocated.

use std::collections::BTreeMap;
use std::fmt;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind, Register};
use object::read::{Object, ObjectSection, ObjectSymbol};
use object::{
    Architecture, ObjectKind, RelocationFlags, RelocationTarget, SectionFlags, SymbolFlags,
};

use crate::lsda;
use crate::prologue::Prologue;
use crate::refusal::Refusal;

const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;
const R_X86_64_64: u32 = 1;
const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;
const R_X86_64_RELATIVE: u32 = 8;
/// Jump tables longer than this are not believed.
const MAX_TABLE_ENTRIES: u64 = 1 << 16;

/// Why an object could not be analysed. Nothing is partially analysed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Not an ELF file `object` can read.
    Parse(object::Error),
    /// Not x86-64 code.
    Architecture(Architecture),
    /// `.eh_frame` is malformed.
    Unwind(gimli::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse(e) => write!(f, "cannot read the ELF file: {e}"),
            Error::Architecture(a) => write!(f, "not x86-64 code ({a:?})"),
            Error::Unwind(e) => write!(f, "malformed .eh_frame: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Where a candidate was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A symbol of `.dynsym` (exported, or imported-and-defined).
    Dynsym,
    /// A symbol of `.symtab` only.
    Symtab,
    /// An `.eh_frame` FDE range with no symbol at its start (a stripped
    /// object); named `sub_<address>`.
    Unwind,
}

/// One function of an object and the verdict on its prologue.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Entry (link-time address).
    pub addr: u64,
    /// Size in bytes (the largest of its symbols', or its FDE range).
    pub size: u64,
    /// Every name at this address, the preferred one first (aliases are one
    /// candidate).
    pub names: Vec<String>,
    /// Where it was found.
    pub origin: Origin,
    /// The relocatable prologue, or why not.
    pub verdict: Result<Prologue, Refusal>,
    /// Whether code of the object calls or jumps to the entry directly
    /// (from outside the function). Such a caller may have been compiled
    /// knowing exactly which registers the function clobbers (gcc's
    /// `-fipa-ra`) and keep values in the others across the call: whatever
    /// runs at the relocated function's entry and return must then keep
    /// every register. A function reached only through the PLT or a
    /// pointer has callers that assume the ABI.
    pub entered_directly: bool,
    /// Whether the function, or a function it calls or jumps to (tail
    /// calls, its cold part), transitively, makes an indirect call or calls
    /// through the PLT: a call whose callee the compiler could not see, so
    /// it counted every call-clobbered register as clobbered by this
    /// function too, and no caller keeps a value in one across a call to
    /// it, IPA-RA or not. Only then is a directly called function served
    /// like a compiler site.
    pub clobbers_all: bool,
}

impl Candidate {
    /// Whether callers may keep values in call-clobbered registers across
    /// a call to it (gcc's `-fipa-ra`): called directly from its object,
    /// and not known to clobber them all.
    pub fn callers_keep_registers(&self) -> bool {
        self.entered_directly && !self.clobbers_all
    }
}

impl Candidate {
    /// The preferred name.
    pub fn name(&self) -> &str {
        &self.names[0]
    }

    /// Whether it is relocatable.
    pub fn is_relocatable(&self) -> bool {
        self.verdict.is_ok()
    }

    /// Whether it is a function one would trace at all (not a resolver, PLT
    /// stub or cold part).
    pub fn is_function(&self) -> bool {
        !matches!(&self.verdict, Err(r) if r.is_exclusion())
    }
}

/// Counts over an image's candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every candidate.
    pub candidates: usize,
    /// Candidates that are not functions to trace (ifunc resolvers, PLT,
    /// cold parts, unreferenced unnamed code).
    pub excluded: usize,
    /// The rest: functions.
    pub functions: usize,
    /// Functions whose prologue can be relocated.
    pub relocatable: usize,
    /// Refusal kinds ([`Refusal::kind`]) with their counts, most frequent
    /// first; exclusions included.
    pub reasons: Vec<(&'static str, usize)>,
}

impl Summary {
    /// Relocatable functions as a percentage of functions.
    pub fn patchable_pct(&self) -> f64 {
        if self.functions == 0 {
            0.0
        } else {
            100.0 * self.relocatable as f64 / self.functions as f64
        }
    }
}

/// An analysed ELF object: every candidate function with its verdict.
#[derive(Clone, Debug)]
pub struct Image {
    kind: ObjectKind,
    candidates: Vec<Candidate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefKind {
    /// A direct jump (`jmp`, `jcc`, `loop`, `jrcxz`, `xbegin`).
    Jump,
    /// A direct call.
    Call,
    /// An address computed or stored: a RIP-relative operand, an absolute
    /// immediate or displacement, a pointer-sized data word.
    Address,
    /// A dynamic relocation's value.
    Relocation,
    /// An entry of a jump table (`from` is the table).
    JumpTable,
    /// An exception landing pad (`from` is the LSDA).
    LandingPad,
}

#[derive(Clone, Copy, Debug)]
struct Ref {
    target: u64,
    from: u64,
    kind: RefKind,
}

struct Section<'a> {
    name: String,
    addr: u64,
    data: &'a [u8],
    exec: bool,
}

struct Sections<'a> {
    list: Vec<Section<'a>>,
}

impl<'a> Sections<'a> {
    fn containing(&self, addr: u64) -> Option<&Section<'a>> {
        self.list
            .iter()
            .find(|s| addr >= s.addr && addr - s.addr < s.data.len() as u64)
    }

    fn is_exec(&self, addr: u64) -> bool {
        self.containing(addr).is_some_and(|s| s.exec)
    }

    /// The bytes from `addr` to the end of its section.
    fn from(&self, addr: u64) -> Option<&'a [u8]> {
        self.containing(addr)
            .map(|s| &s.data[(addr - s.addr) as usize..])
    }

    fn read<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        self.from(addr)?.get(..N)?.try_into().ok()
    }
}

/// For every candidate, whether it clobbers every call-clobbered register
/// as its callers' compiler saw it (see [`Candidate::clobbers_all`]): a
/// least fixed point over the direct calls and jumps that leave each
/// function's range, seeded by indirect calls and calls into PLT sections.
/// A target the analysis cannot place (no candidate holds it) proves
/// nothing: only known-unknown callees do.
fn clobbers_all(cands: &[Cand], bodies: &[Body], refs: &[Ref], sections: &Sections) -> Vec<bool> {
    let in_plt = |a: u64| {
        sections
            .containing(a)
            .is_some_and(|s| s.name == ".plt" || s.name == ".plt.sec" || s.name == ".plt.got")
    };
    // cands is sorted by address.
    let holder = |a: u64| -> Option<usize> {
        let i = cands.partition_point(|c| c.addr <= a).checked_sub(1)?;
        (a < cands[i].addr + cands[i].size.max(1)).then_some(i)
    };
    let mut outgoing: Vec<(usize, u64)> = refs
        .iter()
        .filter(|r| matches!(r.kind, RefKind::Call | RefKind::Jump))
        .filter_map(|r| {
            let f = holder(r.from)?;
            let c = &cands[f];
            (r.target < c.addr || r.target >= c.addr + c.size).then_some((f, r.target))
        })
        .collect();
    outgoing.sort_unstable();
    let mut all: Vec<bool> = bodies.iter().map(|b| b.indirect_call).collect();
    let mut callees: Vec<Vec<usize>> = vec![Vec::new(); cands.len()];
    for &(f, target) in &outgoing {
        if in_plt(target) {
            all[f] = true;
        } else if let Some(g) = holder(target) {
            callees[f].push(g);
        }
    }
    loop {
        let mut changed = false;
        for f in 0..cands.len() {
            if !all[f] && callees[f].iter().any(|&g| all[g]) {
                all[f] = true;
                changed = true;
            }
        }
        if !changed {
            return all;
        }
    }
}

/// Whether a direct call (from anywhere: a recursive call is a call) or a
/// direct jump from outside `[addr, addr + size)` (a tail call) reaches
/// `addr`. `refs` is sorted by target.
fn entered_directly(refs: &[Ref], addr: u64, size: u64) -> bool {
    let from = refs.partition_point(|r| r.target < addr);
    refs[from..]
        .iter()
        .take_while(|r| r.target == addr)
        .any(|r| match r.kind {
            RefKind::Call => true,
            RefKind::Jump => r.from < addr || r.from >= addr + size,
            _ => false,
        })
}

/// Symbols merged by address.
#[derive(Default)]
struct Sym {
    size: u64,
    names: Vec<(bool, bool, String)>, // (local, not dynamic, name): sorts preferred first
    ifunc: bool,
    dynamic: bool,
}

/// What the linear sweep of one function found beyond its references.
#[derive(Default)]
struct Body {
    first_error: Option<u64>,
    /// An indirect call (through a register, memory or the GOT): its
    /// callee is unknown, so the compiler assumed it clobbers every
    /// call-clobbered register.
    indirect_call: bool,
}

impl Image {
    /// Reads the object's candidate functions and decides for each.
    pub fn parse(data: &[u8]) -> Result<Image, Error> {
        let file = object::File::parse(data).map_err(Error::Parse)?;
        if file.architecture() != Architecture::X86_64 {
            return Err(Error::Architecture(file.architecture()));
        }
        let kind = file.kind();
        let fixed = kind == ObjectKind::Executable;
        let sections = Sections {
            list: file
                .sections()
                .filter_map(|s| {
                    let SectionFlags::Elf { sh_flags } = s.flags() else {
                        return None;
                    };
                    if sh_flags & SHF_ALLOC == 0 {
                        return None;
                    }
                    let data = s.data().ok().filter(|d| !d.is_empty())?;
                    Some(Section {
                        name: s.name().unwrap_or("").to_string(),
                        addr: s.address(),
                        data,
                        exec: sh_flags & SHF_EXECINSTR != 0,
                    })
                })
                .collect(),
        };

        // Symbols: functions (candidates) and untyped labels in code (other
        // entry points, hints only).
        let mut syms: BTreeMap<u64, Sym> = BTreeMap::new();
        let mut labels: Vec<(u64, String)> = Vec::new();
        for (dynamic, sym) in file
            .dynamic_symbols()
            .map(|s| (true, s))
            .chain(file.symbols().map(|s| (false, s)))
        {
            let SymbolFlags::Elf { st_info, .. } = sym.flags() else {
                continue;
            };
            let st_type = st_info & 0xf;
            if sym.is_undefined() || !matches!(st_type, STT_FUNC | STT_GNU_IFUNC | STT_NOTYPE) {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || !sections.is_exec(sym.address()) {
                continue;
            }
            if st_type == STT_NOTYPE {
                labels.push((sym.address(), name.to_string()));
                continue;
            }
            let e = syms.entry(sym.address()).or_default();
            e.size = e.size.max(sym.size());
            e.ifunc |= st_type == STT_GNU_IFUNC;
            e.dynamic |= dynamic;
            let key = (sym.is_local(), !dynamic, name.to_string());
            if !e.names.iter().any(|n| n.2 == key.2) {
                e.names.push(key);
            }
        }

        // Unwind ranges and their landing pads.
        let unwind = read_eh_frame(&file, &sections)?;

        // Candidates: symbols, then FDE ranges starting where no symbol's
        // range covers them.
        let mut cands: Vec<Cand> = syms
            .into_iter()
            .map(|(addr, mut s)| {
                s.names.sort();
                Cand {
                    addr,
                    size: s.size,
                    names: s.names.into_iter().map(|n| n.2).collect(),
                    origin: if s.dynamic {
                        Origin::Dynsym
                    } else {
                        Origin::Symtab
                    },
                    ifunc: s.ifunc,
                }
            })
            .collect();
        let fde_len: BTreeMap<u64, u64> = unwind.fdes.iter().map(|f| (f.start, f.len)).collect();
        for c in &mut cands {
            if c.size == 0 {
                c.size = fde_len.get(&c.addr).copied().unwrap_or(0);
            }
        }
        let covered = Coverage::new(&cands);
        let mut extra = Vec::new();
        for f in &unwind.fdes {
            if f.len == 0 || covered.covers_or_starts(f.start) || !sections.is_exec(f.start) {
                continue;
            }
            extra.push(Cand {
                addr: f.start,
                size: f.len,
                names: vec![format!("sub_{:x}", f.start)],
                origin: Origin::Unwind,
                ifunc: false,
            });
        }
        extra.sort_by_key(|c| c.addr);
        extra.dedup_by_key(|c| c.addr);
        cands.extend(extra);
        cands.sort_by_key(|c| c.addr);
        // A symbol of size 0 (crt code, some assembly) ends where the next
        // symbol or unwind range starts, or with its section.
        let mut starts: Vec<u64> = cands
            .iter()
            .map(|c| c.addr)
            .chain(labels.iter().map(|l| l.0))
            .collect();
        starts.sort_unstable();
        for c in cands.iter_mut().filter(|c| c.size == 0) {
            let next = starts[starts.partition_point(|&a| a <= c.addr)..]
                .first()
                .copied();
            if let Some(sec) = sections.containing(c.addr) {
                let end = sec.addr + sec.data.len() as u64;
                c.size = next.map_or(end, |n| n.min(end)) - c.addr;
            }
        }

        // Every reference to code the object holds.
        let mut refs: Vec<Ref> = Vec::new();
        let mut bodies: Vec<Body> = Vec::with_capacity(cands.len());
        for c in &cands {
            bodies.push(scan_function(&sections, c, fixed, &mut refs));
        }
        for (start, end) in gaps(&sections, &cands) {
            let mut data_refs = Vec::new();
            sweep(&sections, start, end, fixed, &mut refs, &mut data_refs);
        }
        for (slot, target) in dynamic_pointers(&file)
            .into_iter()
            .chain(relr_pointers(&file, &sections))
        {
            refs.push(Ref {
                target,
                from: slot,
                kind: RefKind::Relocation,
            });
        }
        if fixed {
            data_pointers(&sections, &mut refs);
        }
        for (lsda, pad) in &unwind.pads {
            refs.push(Ref {
                target: *pad,
                from: *lsda,
                kind: RefKind::LandingPad,
            });
        }
        refs.retain(|r| sections.is_exec(r.target));
        refs.sort_by_key(|r| (r.target, r.from));

        let mut entries: Vec<(u64, String)> = labels;
        for c in &cands {
            entries.extend(c.names.iter().map(|n| (c.addr, n.clone())));
        }
        entries.sort();
        let mut fde_starts: Vec<u64> = unwind.fdes.iter().map(|f| f.start).collect();
        fde_starts.sort_unstable();

        let mut uctx = gimli::UnwindContext::new();
        // Exclusions first: BranchToEntry needs to know the cold parts.
        let exclusions: Vec<Option<Refusal>> = cands
            .iter()
            .map(|c| exclusion(c, &sections, &refs, unwind.shape(c.addr, &mut uctx)))
            .collect();
        let cold: Vec<(u64, u64)> = cands
            .iter()
            .zip(&exclusions)
            .filter(|(_, e)| {
                matches!(
                    e,
                    Some(Refusal::ColdPart | Refusal::MidFrame | Refusal::JumpedIntoOnly)
                )
            })
            .map(|(c, _)| (c.addr, c.addr + c.size))
            .collect();

        let ctx = Context {
            sections: &sections,
            refs: &refs,
            entries: &entries,
            fde_starts: &fde_starts,
            unreadable_lsda: &unwind.unreadable,
            cold: &cold,
        };
        let clobbers_all = clobbers_all(&cands, &bodies, &refs, &sections);
        let candidates = cands
            .into_iter()
            .zip(exclusions)
            .zip(bodies)
            .zip(clobbers_all)
            .map(|(((c, excl), body), clobbers_all)| {
                let verdict = match excl {
                    Some(r) => Err(r),
                    None => ctx.verdict(&c, &body),
                };
                let entered_directly = entered_directly(&refs, c.addr, c.size);
                Candidate {
                    clobbers_all,
                    addr: c.addr,
                    size: c.size,
                    names: c.names,
                    origin: c.origin,
                    verdict,
                    entered_directly,
                }
            })
            .collect();
        Ok(Image { kind, candidates })
    }

    /// Whether the object is position-dependent (`ET_EXEC`: loaded at its
    /// link-time addresses, bias 0).
    pub fn is_fixed(&self) -> bool {
        self.kind == ObjectKind::Executable
    }

    /// Every candidate, by address.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The candidate one of whose names is `name`.
    pub fn find(&self, name: &str) -> Option<&Candidate> {
        self.candidates
            .iter()
            .find(|c| c.names.iter().any(|n| n == name))
    }

    /// Counts of candidates, functions, relocatable ones and refusals.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            candidates: self.candidates.len(),
            ..Summary::default()
        };
        let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
        for c in &self.candidates {
            match &c.verdict {
                Ok(_) => s.relocatable += 1,
                Err(r) => *reasons.entry(r.kind()).or_default() += 1,
            }
            if c.is_function() {
                s.functions += 1;
            } else {
                s.excluded += 1;
            }
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        s.reasons = reasons;
        s
    }
}

struct Cand {
    addr: u64,
    size: u64,
    names: Vec<String>,
    origin: Origin,
    ifunc: bool,
}

/// Symbol ranges, to tell whether an FDE starts inside a known function.
struct Coverage {
    starts: Vec<u64>,
    max_end: Vec<u64>,
}

impl Coverage {
    fn new(cands: &[Cand]) -> Coverage {
        let mut starts = Vec::with_capacity(cands.len());
        let mut max_end = Vec::with_capacity(cands.len());
        let mut m = 0;
        for c in cands {
            m = u64::max(m, c.addr + c.size);
            starts.push(c.addr);
            max_end.push(m);
        }
        Coverage { starts, max_end }
    }

    fn covers_or_starts(&self, addr: u64) -> bool {
        let i = self.starts.partition_point(|&s| s <= addr);
        i > 0 && (self.starts[i - 1] == addr || self.max_end[i - 1] > addr)
    }
}

fn exclusion(c: &Cand, sections: &Sections, refs: &[Ref], shape: Shape) -> Option<Refusal> {
    let section = sections.containing(c.addr);
    if c.ifunc {
        return Some(Refusal::IfuncResolver);
    }
    if section.is_some_and(|s| s.name.starts_with(".plt") || s.name.starts_with(".iplt")) {
        return Some(Refusal::Plt);
    }
    if c.names.iter().any(|n| n.contains(".cold")) {
        return Some(Refusal::ColdPart);
    }
    if !section.is_some_and(|s| s.exec) {
        return Some(Refusal::NotCode);
    }
    match shape {
        Shape::Entry => {}
        Shape::MidFrame => return Some(Refusal::MidFrame),
        Shape::Signal => return Some(Refusal::SignalTrampoline),
        Shape::Outermost => return Some(Refusal::Outermost),
    }
    if c.origin == Origin::Unwind {
        let lo = refs.partition_point(|r| r.target < c.addr);
        let mut entered = refs[lo..].iter().take_while(|r| r.target == c.addr);
        let own = c.addr..c.addr + c.size;
        let jumped_into_only = entered.clone().next().is_some()
            && entered.all(|r| {
                r.kind == RefKind::Jump && !own.contains(&r.from) && is_jcc(sections, r.from)
            });
        if jumped_into_only {
            return Some(Refusal::JumpedIntoOnly);
        }
    }
    None
}

/// Whether the instruction at `at` is a conditional jump.
fn is_jcc(sections: &Sections, at: u64) -> bool {
    let Some(code) = sections.from(at) else {
        return false;
    };
    let mut d = Decoder::with_ip(64, &code[..code.len().min(16)], at, DecoderOptions::NONE);
    let insn = d.decode();
    insn.flow_control() == FlowControl::ConditionalBranch
}

struct Context<'s, 'a> {
    sections: &'s Sections<'a>,
    refs: &'s [Ref],
    entries: &'s [(u64, String)],
    fde_starts: &'s [u64],
    unreadable_lsda: &'s [u64],
    cold: &'s [(u64, u64)],
}

impl Context<'_, '_> {
    fn verdict(&self, c: &Cand, body: &Body) -> Result<Prologue, Refusal> {
        if c.size == 0 {
            return Err(Refusal::UnknownSize);
        }
        let code = self.sections.from(c.addr).ok_or(Refusal::NotCode)?;
        let p = Prologue::decode(code, c.addr, c.size)?;
        let (site, end) = (p.site(), p.site() + p.len() as u64);
        let body_range = c.addr..c.addr + c.size;
        let lo = self.refs.partition_point(|r| r.target < c.addr);
        for r in self.refs[lo..].iter().take_while(|r| r.target < end) {
            let branch = matches!(r.kind, RefKind::Jump | RefKind::Call);
            if branch && (site..end).contains(&r.from) {
                // Kept inside the detour (Prologue::decode resolved it).
                continue;
            }
            if r.target > site {
                return Err(match r.kind {
                    RefKind::Jump | RefKind::Call => Refusal::BranchIntoRegion {
                        from: r.from,
                        target: r.target,
                    },
                    RefKind::JumpTable => Refusal::JumpTableIntoRegion {
                        table: r.from,
                        target: r.target,
                    },
                    RefKind::Address | RefKind::Relocation => Refusal::AddressTakenInRegion {
                        at: r.from,
                        target: r.target,
                    },
                    RefKind::LandingPad => Refusal::LandingPadInRegion { target: r.target },
                });
            }
            let loop_back = matches!(r.kind, RefKind::Jump | RefKind::JumpTable)
                && (body_range.contains(&r.from)
                    || self.cold.iter().any(|&(a, b)| (a..b).contains(&r.from)));
            if loop_back {
                return Err(Refusal::BranchToEntry { from: r.from });
            }
        }
        let inside = |a: u64| a > site && a < end;
        let i = self.fde_starts.partition_point(|&s| s <= site);
        if let Some(&start) = self.fde_starts.get(i).filter(|&&s| inside(s)) {
            return Err(Refusal::FdeStartsInRegion { start });
        }
        let i = self.entries.partition_point(|e| e.0 <= site);
        if let Some((addr, name)) = self.entries.get(i).filter(|e| inside(e.0)) {
            return Err(Refusal::SymbolInRegion {
                name: name.clone(),
                addr: *addr,
            });
        }
        if self.unreadable_lsda.iter().any(|a| body_range.contains(a)) {
            return Err(Refusal::ExceptionTableUnreadable);
        }
        if let Some(at) = body.first_error {
            return Err(Refusal::BodyUndecodable { at });
        }
        Ok(p)
    }
}

/// Sweeps one function's body linearly: its references, its first
/// undecodable byte, and the jump tables its indirect jumps may read.
fn scan_function(sections: &Sections, c: &Cand, fixed: bool, refs: &mut Vec<Ref>) -> Body {
    if c.size == 0 || !sections.is_exec(c.addr) {
        return Body::default();
    }
    let mut data_refs = Vec::new();
    let end = c.addr + c.size;
    let sweep = sweep(sections, c.addr, end, fixed, refs, &mut data_refs);
    if sweep.indirect_jump {
        for table in data_refs {
            jump_table(sections, table, c.addr, end, refs);
        }
    }
    Body {
        first_error: sweep.first_error,
        indirect_call: sweep.indirect_call,
    }
}

#[derive(Default)]
struct Sweep {
    first_error: Option<u64>,
    indirect_jump: bool,
    indirect_call: bool,
}

/// Linear sweep of `[start, end)` (clamped to its section). On a byte that
/// does not decode it notes it and goes on from the next byte.
fn sweep(
    sections: &Sections,
    start: u64,
    end: u64,
    fixed: bool,
    refs: &mut Vec<Ref>,
    data_refs: &mut Vec<u64>,
) -> Sweep {
    let mut out = Sweep::default();
    let Some(code) = sections.from(start) else {
        return out;
    };
    let code = &code[..code.len().min((end - start) as usize)];
    let mut pos = 0usize;
    let mut insn = Instruction::default();
    while pos < code.len() {
        let ip = start + pos as u64;
        let mut decoder = Decoder::with_ip(64, &code[pos..], ip, DecoderOptions::NONE);
        let mut bad = None;
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            if insn.is_invalid() {
                bad = Some(insn.ip());
                break;
            }
            note(&insn, sections, fixed, refs, data_refs, &mut out);
        }
        match bad {
            // Resynchronise one byte after the bad instruction's start.
            Some(at) => {
                out.first_error.get_or_insert(at);
                pos = (at - start) as usize + 1;
            }
            None => break,
        }
    }
    out
}

fn note(
    insn: &Instruction,
    sections: &Sections,
    fixed: bool,
    refs: &mut Vec<Ref>,
    data_refs: &mut Vec<u64>,
    out: &mut Sweep,
) {
    let from = insn.ip();
    match insn.flow_control() {
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
            if matches!(
                insn.op0_kind(),
                OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
            ) =>
        {
            let kind = if insn.flow_control() == FlowControl::Call {
                RefKind::Call
            } else {
                RefKind::Jump
            };
            refs.push(Ref {
                target: insn.near_branch_target(),
                from,
                kind,
            });
        }
        FlowControl::XbeginXabortXend if insn.op0_kind() == OpKind::NearBranch64 => {
            refs.push(Ref {
                target: insn.near_branch_target(),
                from,
                kind: RefKind::Jump,
            });
        }
        FlowControl::IndirectBranch if !insn.is_ip_rel_memory_operand() => {
            out.indirect_jump = true;
        }
        FlowControl::IndirectCall => {
            out.indirect_call = true;
        }
        _ => {}
    }
    let mut address = |a: u64| {
        if sections.is_exec(a) {
            refs.push(Ref {
                target: a,
                from,
                kind: RefKind::Address,
            });
        } else if sections.containing(a).is_some() {
            data_refs.push(a);
        }
    };
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Memory => {
                if insn.is_ip_rel_memory_operand() {
                    address(insn.ip_rel_memory_address());
                } else if fixed && insn.memory_base() == Register::None {
                    // `jmp [table + rax*8]`, `mov eax, [abs]`.
                    address(insn.memory_displacement64());
                }
            }
            OpKind::Immediate32to64 | OpKind::Immediate32 | OpKind::Immediate64 if fixed => {
                address(insn.immediate(i));
            }
            _ => {}
        }
    }
}

/// Entries of a jump table at `table` that land in `[lo, hi)`: 32-bit
/// offsets from the table (gcc and clang in position-independent code) or
/// absolute 64-bit addresses (position-dependent code). Reading stops at
/// the first entry of each form that lands elsewhere.
fn jump_table(sections: &Sections, table: u64, lo: u64, hi: u64, refs: &mut Vec<Ref>) {
    let range = lo..hi;
    for k in 0..MAX_TABLE_ENTRIES {
        let Some(e) = sections.read::<4>(table + 4 * k) else {
            break;
        };
        let dest = table.wrapping_add(i32::from_le_bytes(e) as i64 as u64);
        if !range.contains(&dest) {
            break;
        }
        refs.push(Ref {
            target: dest,
            from: table,
            kind: RefKind::JumpTable,
        });
    }
    for k in 0..MAX_TABLE_ENTRIES {
        let Some(e) = sections.read::<8>(table + 8 * k) else {
            break;
        };
        let dest = u64::from_le_bytes(e);
        if !range.contains(&dest) {
            break;
        }
        refs.push(Ref {
            target: dest,
            from: table,
            kind: RefKind::JumpTable,
        });
    }
}

/// Code in executable sections that no candidate covers (padding, code
/// without symbols or unwind info): swept too, for its references.
fn gaps(sections: &Sections, cands: &[Cand]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for s in sections.list.iter().filter(|s| s.exec) {
        let end = s.addr + s.data.len() as u64;
        let mut at = s.addr;
        let first = cands.partition_point(|c| c.addr + c.size <= s.addr);
        for c in cands[first..].iter().take_while(|c| c.addr < end) {
            if c.addr > at {
                out.push((at, c.addr));
            }
            at = at.max(c.addr + c.size);
        }
        if at < end {
            out.push((at, end));
        }
    }
    out
}

/// Values of dynamic relocations that point at code: `RELATIVE` (its
/// addend) and symbol relocations (`64`, `GLOB_DAT`, `JUMP_SLOT`) to
/// symbols defined here, plus addend.
fn dynamic_pointers(file: &object::File) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Some(relocs) = file.dynamic_relocations() else {
        return out;
    };
    for (slot, r) in relocs {
        let RelocationFlags::Elf { r_type } = r.flags() else {
            continue;
        };
        let value = match (r_type, r.target()) {
            (R_X86_64_RELATIVE, _) => r.addend() as u64,
            (R_X86_64_64 | R_X86_64_GLOB_DAT | R_X86_64_JUMP_SLOT, RelocationTarget::Symbol(i)) => {
                match file.symbol_by_index(i) {
                    Ok(s) if !s.is_undefined() => s.address().wrapping_add(r.addend() as u64),
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.push((slot, value));
    }
    out
}

/// Slots of packed relative relocations (`DT_RELR`, `SHT_RELR`): their
/// values are in the slots themselves.
fn relr_pointers(file: &object::File, sections: &Sections) -> Vec<(u64, u64)> {
    const SHT_RELR: u32 = 19;
    let mut out = Vec::new();
    for s in file.sections() {
        let object::SectionFlags::Elf { .. } = s.flags() else {
            continue;
        };
        let is_relr = match s.kind() {
            object::SectionKind::Elf(t) => t == SHT_RELR,
            _ => s.name().is_ok_and(|n| n == ".relr.dyn"),
        };
        if !is_relr {
            continue;
        }
        let Ok(data) = s.data() else { continue };
        let mut base = 0u64;
        let slot = |addr: u64, out: &mut Vec<(u64, u64)>| {
            if let Some(v) = sections.read::<8>(addr) {
                out.push((addr, u64::from_le_bytes(v)));
            }
        };
        for w in data.chunks_exact(8) {
            let e = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if e & 1 == 0 {
                slot(e, &mut out);
                base = e + 8;
            } else {
                for bit in 1..64 {
                    if e >> bit & 1 != 0 {
                        slot(base + (bit - 1) * 8, &mut out);
                    }
                }
                base += 63 * 8;
            }
        }
    }
    out
}

/// Pointer-sized, aligned words of data sections that hold a code address
/// (position-dependent objects, which have no relocations for them).
fn data_pointers(sections: &Sections, refs: &mut Vec<Ref>) {
    for s in sections.list.iter().filter(|s| !s.exec) {
        let skip = (s.addr.next_multiple_of(8) - s.addr) as usize;
        let Some(words) = s.data.get(skip..) else {
            continue;
        };
        for (k, w) in words.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if sections.is_exec(v) {
                refs.push(Ref {
                    target: v,
                    from: s.addr + (skip + 8 * k) as u64,
                    kind: RefKind::Address,
                });
            }
        }
    }
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

struct Fde<'a> {
    start: u64,
    len: u64,
    parsed: gimli::FrameDescriptionEntry<Slice<'a>>,
}

struct Unwind<'a> {
    /// By start address.
    fdes: Vec<Fde<'a>>,
    frame: Option<(gimli::EhFrame<Slice<'a>>, gimli::BaseAddresses)>,
    /// (LSDA, landing pad).
    pads: Vec<(u64, u64)>,
    /// Starts of FDEs whose LSDA could not be read.
    unreadable: Vec<u64>,
}

/// What the unwind information says about an address a candidate starts
/// at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// No FDE covers it, or its rules there are those of a function entry.
    Entry,
    /// The CFA is not `rsp+8`, or callee-saved registers are saved.
    MidFrame,
    /// A signal-return trampoline (CIE augmentation `S`).
    Signal,
    /// The return address is undefined: an outermost frame (`_start`, a
    /// thread's first function).
    Outermost,
}

impl Unwind<'_> {
    fn shape(&self, addr: u64, ctx: &mut gimli::UnwindContext<usize>) -> Shape {
        let i = self.fdes.partition_point(|f| f.start <= addr);
        let Some(f) = i
            .checked_sub(1)
            .map(|i| &self.fdes[i])
            .filter(|f| addr - f.start < f.len)
        else {
            return Shape::Entry;
        };
        if f.parsed.is_signal_trampoline() {
            return Shape::Signal;
        }
        let Some((frame, bases)) = &self.frame else {
            return Shape::Entry;
        };
        match f.parsed.unwind_info_for_address(frame, bases, ctx, addr) {
            Ok(row) => entry_shape(row),
            // Rules that cannot be evaluated say nothing about an entry.
            Err(_) => Shape::MidFrame,
        }
    }
}

fn read_eh_frame<'a>(
    file: &object::File<'a>,
    sections: &Sections<'a>,
) -> Result<Unwind<'a>, Error> {
    use gimli::UnwindSection;
    let mut out = Unwind {
        fdes: Vec::new(),
        frame: None,
        pads: Vec::new(),
        unreadable: Vec::new(),
    };
    let Some(eh) = file.section_by_name(".eh_frame") else {
        return Ok(out);
    };
    let Ok(data) = eh.data() else {
        return Ok(out);
    };
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(eh.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let eh_frame = gimli::EhFrame::new(data, gimli::LittleEndian);
    let mut entries = eh_frame.entries(&bases);
    while let Some(entry) = entries.next().map_err(Error::Unwind)? {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial
            .parse(gimli::EhFrame::cie_from_offset)
            .map_err(Error::Unwind)?;
        let start = fde.initial_address();
        if let Some(lsda) = fde.lsda() {
            let lsda = match lsda {
                gimli::Pointer::Direct(a) => Some(a),
                gimli::Pointer::Indirect(a) => sections.read::<8>(a).map(u64::from_le_bytes),
            };
            match lsda
                .and_then(|a| lsda::landing_pads(|x| sections.from(x), a, start).map(|p| (a, p)))
            {
                Some((a, pads)) => out.pads.extend(pads.into_iter().map(|p| (a, p))),
                None => out.unreadable.push(start),
            }
        }
        out.fdes.push(Fde {
            start,
            len: fde.len(),
            parsed: fde,
        });
    }
    out.fdes.sort_by_key(|f| f.start);
    out.frame = Some((eh_frame, bases));
    Ok(out)
}

/// What an unwind row says: a function's first instruction has the return
/// address just pushed (CFA = `rsp+8`, return address defined) and no
/// callee-saved register saved yet.
fn entry_shape<T: gimli::ReaderOffset>(row: &gimli::UnwindTableRow<T>) -> Shape {
    use gimli::{CfaRule, RegisterRule, X86_64};
    if matches!(row.register(X86_64::RA), Some(RegisterRule::Undefined)) {
        return Shape::Outermost;
    }
    let cfa_ok = matches!(row.cfa(), CfaRule::RegisterAndOffset { register, offset: 8 } if *register == X86_64::RSP);
    let callee_saved = [
        X86_64::RBX,
        X86_64::RBP,
        X86_64::R12,
        X86_64::R13,
        X86_64::R14,
        X86_64::R15,
    ];
    let saved = row.registers().any(|(reg, rule)| {
        callee_saved.contains(reg)
            && !matches!(rule, RegisterRule::Undefined | RegisterRule::SameValue)
    });
    if cfa_ok && !saved {
        Shape::Entry
    } else {
        Shape::MidFrame
    }
}
