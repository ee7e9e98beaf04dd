//! Candidate functions of an ELF object and, for each, whether its prologue
//! can be relocated.
//!
//! [`Image::parse`] reads the symbols and the unwind information into
//! candidates, scans the object for every reference into code, and judges
//! each candidate from those: the children hold the sections it reads
//! (`sections`), the scan (`scan`), the unwind information (`unwind`) and
//! the judgement (`verdict`).

mod scan;
mod sections;
mod unwind;
mod verdict;

use scan::{
    data_pointers, dynamic_pointers, gaps, relr_pointers, scan_function, sweep, Ref, RefKind,
};
use sections::{Section, Sections};
use unwind::{read_eh_frame, Coverage, Shape};
use verdict::{clobbers_all, entered_directly, exclusion, Context};

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
