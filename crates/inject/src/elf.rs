//! The objects mapped into a process and the symbols they export, read
//! from their files (the dynamic symbol table, with symbol versions) and
//! placed at their load address from `/proc/PID/maps`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, Sym};
use object::{Endianness, ReadCache};

use crate::procfs::{self, Mapping};

/// An ELF object mapped into the target.
#[derive(Clone, Debug)]
pub struct Module {
    /// Its path as the target sees it (`/proc/PID/maps`).
    pub path: String,
    /// Where this process reads it: the path under the target's root.
    pub file: PathBuf,
    /// Load bias: runtime address = link-time address + bias.
    pub bias: u64,
    /// Its mappings.
    pub maps: Vec<Mapping>,
    /// Its exported symbols, read once: (name, value, size), default
    /// versions first.
    exports: OnceLock<Arc<Vec<(String, u64, u64)>>>,
}

/// A symbol's runtime address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Runtime address.
    pub addr: u64,
    /// Size in bytes (0 when the object does not say).
    pub size: u64,
}

impl Module {
    /// Its executable ranges.
    pub fn text(&self) -> Vec<(u64, u64)> {
        self.maps
            .iter()
            .filter(|m| m.exec)
            .map(|m| (m.start, m.end))
            .collect()
    }

    /// Whether `addr` is inside one of its mappings.
    pub fn contains(&self, addr: u64) -> bool {
        self.maps.iter().any(|m| m.contains(addr))
    }

    /// The file name without directories.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    fn exports(&self) -> io::Result<Arc<Vec<(String, u64, u64)>>> {
        if let Some(e) = self.exports.get() {
            return Ok(e.clone());
        }
        let cache = ReadCache::new(File::open(&self.file)?);
        let e = Arc::new(exported(&cache)?);
        Ok(self.exports.get_or_init(|| e).clone())
    }

    /// The exported (dynamic) symbol `name`: its default version when it
    /// has several (`dlopen@@GLIBC_2.34` over `dlopen@GLIBC_2.2.5`).
    pub fn symbol(&self, name: &str) -> io::Result<Option<Symbol>> {
        let e = self.exports()?;
        let i = e.partition_point(|(n, _, _)| n.as_str() < name);
        Ok(e.get(i)
            .filter(|(n, _, _)| n == name)
            .map(|&(_, value, size)| Symbol {
                addr: value.wrapping_add(self.bias),
                size,
            }))
    }

    /// Every exported function whose name satisfies `pred`, at runtime
    /// addresses: (name, symbol).
    pub fn functions(&self, pred: impl Fn(&str) -> bool) -> io::Result<Vec<(String, Symbol)>> {
        Ok(self
            .exports()?
            .iter()
            .filter(|(n, _, _)| pred(n))
            .map(|(n, value, size)| {
                (
                    n.clone(),
                    Symbol {
                        addr: value.wrapping_add(self.bias),
                        size: *size,
                    },
                )
            })
            .collect())
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Defined dynamic symbols: (name, value, size), sorted by name, the
/// default version first for each name. Reads only the headers and the
/// dynamic symbol, string and version tables.
fn exported<'a, R: object::ReadRef<'a>>(data: R) -> io::Result<Vec<(String, u64, u64)>> {
    let hdr = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
    let endian = hdr.endian().map_err(|e| bad(e.to_string()))?;
    let sections = hdr.sections(endian, data).map_err(|e| bad(e.to_string()))?;
    let dynsym = sections
        .symbols(endian, data, elf::SHT_DYNSYM)
        .map_err(|e| bad(e.to_string()))?;
    let versions = sections
        .versions(endian, data)
        .map_err(|e| bad(e.to_string()))?;
    let mut out: Vec<(String, u64, u64, bool)> = Vec::new();
    for (i, sym) in dynsym.symbols().iter().enumerate() {
        if sym.st_shndx(endian) == elf::SHN_UNDEF || sym.st_value(endian) == 0 {
            continue;
        }
        let Ok(name) = sym.name(endian, dynsym.strings()) else {
            continue;
        };
        let hidden = versions
            .as_ref()
            .is_some_and(|v| v.version_index(endian, object::SymbolIndex(i)).is_hidden());
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            sym.st_value(endian),
            sym.st_size(endian),
            hidden,
        ));
    }
    // By name, default (non-hidden) versions first.
    out.sort_by(|a, b| (&a.0, a.3).cmp(&(&b.0, b.3)));
    Ok(out.into_iter().map(|(n, v, s, _)| (n, v, s)).collect())
}

/// The ELF header facts the attach checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfKind {
    /// ELFCLASS64.
    pub class64: bool,
    /// `e_machine`.
    pub machine: u16,
    /// It has a `PT_INTERP` (a dynamic loader runs it).
    pub interp: Option<String>,
    /// It has a `PT_DYNAMIC`.
    pub dynamic: bool,
}

/// Reads the headers of the ELF file at `path`.
pub fn kind(path: &Path) -> io::Result<ElfKind> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path)?;
    let mut ident = [0u8; 20];
    if f.read_exact_at(&mut ident, 0).is_err() || &ident[..4] != b"\x7fELF" {
        return Err(bad(format!("{} is not an ELF file", path.display())));
    }
    let class64 = ident[4] == 2;
    let machine = u16::from_le_bytes([ident[18], ident[19]]);
    if !class64 {
        return Ok(ElfKind {
            class64,
            machine,
            interp: None,
            dynamic: false,
        });
    }
    let cache = ReadCache::new(f);
    let data = &cache;
    let hdr = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
    let endian = hdr.endian().map_err(|e| bad(e.to_string()))?;
    let phdrs = hdr
        .program_headers(endian, data)
        .map_err(|e| bad(e.to_string()))?;
    let mut interp = None;
    let mut dynamic = false;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_INTERP => {
                if let Ok(Some(b)) = ph.interpreter(endian, data) {
                    interp = Some(String::from_utf8_lossy(b).into_owned());
                }
            }
            elf::PT_DYNAMIC => dynamic = true,
            _ => {}
        }
    }
    Ok(ElfKind {
        class64,
        machine,
        interp,
        dynamic,
    })
}

/// The load bias of an object from one of its mappings: the `PT_LOAD`
/// whose page-aligned file offset is the mapping's.
fn bias_of<'a, R: object::ReadRef<'a>>(data: R, m: &Mapping) -> io::Result<u64> {
    let hdr = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
    let endian = hdr.endian().map_err(|e| bad(e.to_string()))?;
    let phdrs = hdr
        .program_headers(endian, data)
        .map_err(|e| bad(e.to_string()))?;
    for ph in phdrs {
        if ph.p_type(endian) != elf::PT_LOAD {
            continue;
        }
        let off = ph.p_offset(endian);
        if off & !0xfff == m.offset {
            let vaddr_page = ph.p_vaddr(endian) - (off - m.offset);
            return Ok(m.start.wrapping_sub(vaddr_page));
        }
    }
    Err(bad("no PT_LOAD matches the mapping"))
}

/// Every ELF object mapped into `pid` (`maps` is its map), files read
/// under `root`; a file removed since it was mapped is read through
/// `/proc/PID/map_files`.
pub fn modules(pid: i32, maps: &[Mapping], root: &Path) -> Vec<Module> {
    let mut out: Vec<Module> = Vec::new();
    for m in maps.iter().filter(|m| m.is_file()) {
        if let Some(md) = out
            .iter_mut()
            .find(|md| md.maps[0].inode == m.inode && md.maps[0].dev == m.dev && md.path == m.path)
        {
            md.maps.push(m.clone());
            continue;
        }
        let file = if m.path.ends_with(" (deleted)") {
            PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
        } else {
            procfs::in_root(root, &m.path)
        };
        out.push(Module {
            path: m.path.clone(),
            file,
            bias: 0,
            maps: vec![m.clone()],
            exports: OnceLock::new(),
        });
    }
    out.retain_mut(|md| {
        let Some(first) = md.maps.iter().min_by_key(|m| m.offset).cloned() else {
            return false;
        };
        let Ok(f) = File::open(&md.file) else {
            return false;
        };
        let cache = ReadCache::new(f);
        match bias_of(&cache, &first) {
            Ok(b) => {
                md.bias = b;
                true
            }
            Err(_) => false,
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_libc() -> Module {
        let maps = procfs::maps(std::process::id() as i32).unwrap();
        modules(std::process::id() as i32, &maps, Path::new("/"))
            .into_iter()
            .find(|m| m.file_name().starts_with("libc.so"))
            .expect("libc is mapped")
    }

    #[test]
    fn finds_own_libc_symbols_at_their_addresses() {
        let libc_mod = own_libc();
        let dlopen = libc_mod.symbol("dlopen").unwrap().unwrap();
        let getpid = libc_mod.symbol("getpid").unwrap().unwrap();
        assert_eq!(getpid.addr as usize, libc::getpid as *const () as usize);
        // Through this process's own dynamic linking, the default version.
        // SAFETY: dlsym on a NUL-terminated name.
        let real = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dlopen".as_ptr()) } as u64;
        assert_eq!(dlopen.addr, real);
        assert!(libc_mod.symbol("no_such_symbol_here").unwrap().is_none());
    }

    #[test]
    fn reads_the_kind_of_executables() {
        let k = kind(Path::new("/proc/self/exe")).unwrap();
        assert!(k.class64);
        assert_eq!(k.machine, 62);
        assert!(k.interp.is_some() && k.dynamic);
    }
}
