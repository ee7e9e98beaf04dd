//! `file:line` of a function in another process, from its object file's
//! DWARF, the way `addr2line` and perf find them: the address is placed in
//! the mapping that holds it (`/proc/PID/maps`), turned into a file offset
//! and then into the object's own virtual address through its `PT_LOAD`
//! headers, and looked up in the line table.
//!
//! This runs in the CLI, never in the traced process: reading debug
//! information costs megabytes and milliseconds that a traced program
//! should not pay for a listing. `ls` shows the locations; the recorder
//! writes those of the traced functions into the recording (its SOURCES
//! block), once per function, for the outputs with a place for them.

use std::collections::HashMap;
use std::path::PathBuf;

use livetrace_format::Mapping;

/// An object file opened for lookups: its line tables and where its
/// loadable segments lie in the file.
struct Object {
    loader: addr2line::Loader,
    /// `(p_offset, p_filesz, p_vaddr)` of each `PT_LOAD`.
    loads: Vec<(u64, u64, u64)>,
}

/// Source locations of addresses in one process; object files are opened
/// once, on their first lookup.
pub struct Sources {
    pid: u32,
    maps: Vec<Mapping>,
    objects: HashMap<String, Option<Object>>,
}

impl Sources {
    /// The process's mappings as they are now; `None` if they cannot be
    /// read (the process is gone or not ours to look into).
    pub fn new(pid: u32) -> Option<Sources> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        Some(Sources::with_maps(pid, Mapping::executable(&text)))
    }

    /// Lookups through `maps`, the process's executable mappings as they
    /// were recorded (the process may be gone by now: its objects are read
    /// by path).
    pub fn with_maps(pid: u32, maps: Vec<Mapping>) -> Sources {
        Sources {
            pid,
            maps: maps
                .into_iter()
                .filter(|m| m.path.starts_with('/'))
                .collect(),
            objects: HashMap::new(),
        }
    }

    /// `file:line` of the code at `addr`, when its object has line
    /// information for it.
    pub fn lookup(&mut self, addr: u64) -> Option<String> {
        let (file, line) = self.locate(addr)?;
        Some(format!("{file}:{line}"))
    }

    /// File and line of the code at `addr`, when its object has line
    /// information for it (line 0, "no line", counts as none).
    pub fn locate(&mut self, addr: u64) -> Option<(String, u32)> {
        let m = self.maps.iter().find(|m| m.start <= addr && addr < m.end)?;
        let file_offset = addr - m.start + m.offset;
        let pid = self.pid;
        let obj = self
            .objects
            .entry(m.path.clone())
            .or_insert_with(|| open(pid, &m.path))
            .as_ref()?;
        let &(p_offset, _, p_vaddr) = obj
            .loads
            .iter()
            .find(|&&(o, sz, _)| o <= file_offset && file_offset < o + sz)?;
        let svma = file_offset - p_offset + p_vaddr;
        let loc = obj.loader.find_location(svma).ok()??;
        let (file, line) = (loc.file?, loc.line.filter(|&l| l > 0)?);
        Some((file.to_string(), line))
    }
}

/// Opens `path` as the process sees it: through `/proc/PID/root` first, so
/// a process in another mount namespace (a container) has its own files
/// read, else by the same path here.
fn open(pid: u32, path: &str) -> Option<Object> {
    let candidates = [
        PathBuf::from(format!("/proc/{pid}/root{path}")),
        PathBuf::from(path),
    ];
    candidates.iter().find_map(|p| {
        let loads = loads(p)?;
        let loader = addr2line::Loader::new(p).ok()?;
        Some(Object { loader, loads })
    })
}

fn loads(path: &std::path::Path) -> Option<Vec<(u64, u64, u64)>> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = std::fs::read(path).ok()?;
    let hdr = object::elf::FileHeader64::<object::Endianness>::parse(&*data).ok()?;
    let e = hdr.endian().ok()?;
    Some(
        hdr.program_headers(e, &*data)
            .ok()?
            .iter()
            .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
            .map(|p| (p.p_offset(e), p.p_filesz(e), p.p_vaddr(e)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own code has line information (tests build with debug
    /// info): the lookup finds this file.
    #[test]
    fn finds_this_function() {
        let mut s = Sources::new(std::process::id()).unwrap();
        let here = finds_this_function as *const () as u64;
        let loc = s.lookup(here).expect("a location for the test itself");
        assert!(loc.contains("source.rs:"), "{loc}");
        // The same through the mappings alone.
        let maps = crate::symtab::exec_maps(std::process::id());
        let (file, line) = Sources::with_maps(0, maps).locate(here).unwrap();
        assert_eq!(format!("{file}:{line}"), loc);
        assert!(s.locate(0x10).is_none());
    }
}
