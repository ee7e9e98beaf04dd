//! Reading one loaded object's ELF file: its site sections, its function
//! symbols, its dynamic dependencies.
//!
//! Site sections hold *link-time* addresses of the sites, which become
//! runtime addresses by adding the object's load bias (`dlpi_addr`). In a
//! position-independent object each slot also has a dynamic relocation,
//! and what the file holds in the slot depends on the linker: GNU ld writes
//! the link-time address into the slot as well, lld (Rust's default linker)
//! leaves zero there and puts it only in the `R_X86_64_RELATIVE` addend. So
//! a slot with a `RELATIVE` or `R_X86_64_64` relocation takes its value from
//! the relocation, any other slot (non-PIE, or RELR-packed relocations,
//! whose values are in place) from the file.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};

use crate::record::Origin;

/// Section names the compilers use for site tables.
pub(crate) const PATCHABLE_SECTION: &str = "__patchable_function_entries";
pub(crate) const MCOUNT_SECTION: &str = "__mcount_loc";

/// A function symbol, at its link-time address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FuncSym {
    pub addr: u64,
    pub size: u64,
    pub name: String,
    pub global: bool,
}

/// One PT_LOAD segment, as the kernel was told to map it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    pub vaddr: u64,
    pub memsz: u64,
    pub flags: u32,
}

/// What a scan needs from one ELF file.
#[derive(Debug, Default)]
pub(crate) struct ElfInfo {
    /// Link-time site addresses with where they were found; deduplicated
    /// (an address in both tables keeps the first origin).
    pub sites: Vec<(u64, Origin)>,
    /// Function symbols sorted by address (then globals first).
    pub funcs: Vec<FuncSym>,
    pub loads: Vec<Load>,
    pub soname: Option<String>,
    pub needed: Vec<String>,
}

impl ElfInfo {
    /// The function symbol containing link-time address `addr`: the last
    /// symbol starting at or before it whose extent covers it. Zero-size
    /// symbols (hand-written assembly without `.size`) cover only their
    /// first byte.
    pub fn containing(&self, addr: u64) -> Option<&FuncSym> {
        let end = self.funcs.partition_point(|s| s.addr <= addr);
        // Sorted with globals first among equal addresses, so the first
        // covering symbol found at an address is the preferred alias.
        // Functions do not nest, so looking back a bounded distance (past
        // zero-size labels that may sit between a function's start and the
        // site) is enough.
        let from = end.saturating_sub(64);
        let mut best: Option<&FuncSym> = None;
        for s in self.funcs[from..end].iter().rev() {
            if addr < s.addr + s.size.max(1) {
                match best {
                    Some(b) if b.addr != s.addr => break,
                    _ => best = Some(s),
                }
            }
        }
        best
    }
}

/// A read-only private mapping of a whole file.
pub(crate) struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mmap {
    pub fn open(path: &str) -> io::Result<Mmap> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a fresh read-only private mapping of a file we opened;
        // nothing else refers to the returned memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // A file truncated under us would raise SIGBUS; package managers
        // replace loaded objects' files rather than truncate them, the
        // dynamic loader's own assumption.
        // SAFETY: `ptr..ptr+len` stays mapped readable until drop.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped; no borrow of
        // `bytes()` outlives `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Parses the ELF file `data`: sites, function symbols, load segments and
/// dynamic dependencies.
pub(crate) fn parse(data: &[u8]) -> io::Result<ElfInfo> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(bad)?;
    let endian = file.endian();
    let header = file.elf_header();
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Err(bad("not an x86-64 ELF file"));
    }
    let sections = file.elf_section_table();

    // Dynamic relocations by the address they patch.
    let mut relocs: HashMap<u64, (u32, u32, i64)> = HashMap::new();
    for sh in sections.iter() {
        if sh.sh_type(endian) != elf::SHT_RELA
            || sh.sh_flags(endian) & u64::from(elf::SHF_ALLOC) == 0
        {
            continue;
        }
        let Ok(Some((rela, _))) = sh.rela(endian, data) else {
            continue;
        };
        for r in rela {
            relocs.insert(
                r.r_offset(endian),
                (
                    r.r_type(endian, false),
                    r.r_sym(endian, false),
                    r.r_addend(endian),
                ),
            );
        }
    }
    let dynsyms = sections
        .symbols(endian, data, elf::SHT_DYNSYM)
        .map_err(bad)?;

    let mut sites: Vec<(u64, Origin)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, origin) in [
        (PATCHABLE_SECTION, Origin::Patchable),
        (MCOUNT_SECTION, Origin::Mcount),
    ] {
        for sh in sections.iter() {
            if sections.section_name(endian, sh).ok() != Some(name.as_bytes())
                || sh.sh_type(endian) == elf::SHT_NOBITS
            {
                continue;
            }
            let base = sh.sh_addr(endian);
            let bytes = sh.data(endian, data).map_err(bad)?;
            for (i, slot) in bytes.chunks_exact(8).enumerate() {
                let at = base + 8 * i as u64;
                let in_file = u64::from_le_bytes(slot.try_into().expect("8-byte chunk"));
                let value = match relocs.get(&at) {
                    Some(&(elf::R_X86_64_RELATIVE, _, addend)) => addend as u64,
                    Some(&(elf::R_X86_64_64, sym, addend)) => {
                        let Ok(s) = dynsyms.symbol(object::SymbolIndex(sym as usize)) else {
                            continue;
                        };
                        use object::read::elf::Sym;
                        if s.st_shndx(endian) == elf::SHN_UNDEF {
                            // A site in another object: not ours to list.
                            continue;
                        }
                        s.st_value(endian).wrapping_add(addend as u64)
                    }
                    _ => in_file,
                };
                // Zero slots are entries of discarded sections (gc-sections
                // keeps the table slot but resolves it to 0).
                if value != 0 && seen.insert(value) {
                    sites.push((value, origin));
                }
            }
        }
    }

    // Fall back to .dynsym for stripped objects (static functions are
    // then unnamed).
    let dynsym_only = file.symbol_table().is_none();
    let mut funcs: Vec<FuncSym> = Vec::new();
    let syms: Box<dyn Iterator<Item = _>> = if dynsym_only {
        Box::new(file.dynamic_symbols())
    } else {
        Box::new(file.symbols())
    };
    for s in syms {
        if s.kind() != SymbolKind::Text || !s.is_definition() {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        funcs.push(FuncSym {
            addr: s.address(),
            size: s.size(),
            name: name.to_owned(),
            global: s.is_global(),
        });
    }
    funcs.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.global.cmp(&a.global)));

    let loads = file
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .map(|p| Load {
            vaddr: p.p_vaddr(endian),
            memsz: p.p_memsz(endian),
            flags: p.p_flags(endian),
        })
        .collect();

    let mut soname = None;
    let mut needed = Vec::new();
    if let Ok(Some((dyns, strtab_index))) = sections.dynamic(endian, data) {
        let strings = sections.strings(endian, data, strtab_index).map_err(bad)?;
        for d in dyns {
            let tag = d.d_tag(endian) as u32;
            if tag != elf::DT_NEEDED && tag != elf::DT_SONAME {
                continue;
            }
            let Ok(s) = strings.get(d.d_val(endian) as u32) else {
                continue;
            };
            let s = String::from_utf8_lossy(s).into_owned();
            if tag == elf::DT_NEEDED {
                needed.push(s);
            } else {
                soname = Some(s);
            }
        }
    }

    Ok(ElfInfo {
        sites,
        funcs,
        loads,
        soname,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(addr: u64, size: u64, name: &str, global: bool) -> FuncSym {
        FuncSym {
            addr,
            size,
            name: name.into(),
            global,
        }
    }

    #[test]
    fn containing_prefers_global_alias_and_respects_size() {
        let mut funcs = vec![
            sym(0x100, 0x20, "a_local", false),
            sym(0x100, 0x20, "a", true),
            sym(0x120, 0x10, "b", true),
            sym(0x140, 0, "asm_label", false),
        ];
        funcs.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.global.cmp(&a.global)));
        let info = ElfInfo {
            funcs,
            ..ElfInfo::default()
        };
        assert_eq!(info.containing(0x100).unwrap().name, "a");
        assert_eq!(info.containing(0x11f).unwrap().name, "a");
        assert_eq!(info.containing(0x120).unwrap().name, "b");
        assert!(info.containing(0x130).is_none());
        assert_eq!(info.containing(0x140).unwrap().name, "asm_label");
        assert!(info.containing(0x141).is_none());
        assert!(info.containing(0x50).is_none());
    }

    #[test]
    fn parses_own_executable() {
        let map = Mmap::open("/proc/self/exe").unwrap();
        let info = parse(map.bytes()).unwrap();
        assert!(!info.funcs.is_empty());
        assert!(info.loads.iter().any(|l| l.flags & elf::PF_X != 0));
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{:?}",
            info.needed
        );
        // Sorted by address.
        assert!(info.funcs.windows(2).all(|w| w[0].addr <= w[1].addr));
    }
}
