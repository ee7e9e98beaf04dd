//! Names for a traced process's addresses, read from outside it: its
//! executable mappings (`/proc/PID/maps`) and the function symbols of each
//! object they map, relocated, written once into the recording (as
//! uftrace's `sid-*.map` and `.sym` files are). Callers (return addresses
//! anywhere, in libraries too) are named by the function containing them.
//! The traced process does none of this work.

use std::collections::HashSet;
use std::os::fd::AsRawFd;

use livetrace_format::{display_symbol, Mapping, Symbol};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// The executable mappings of process `pid` (its `r-xp` lines with a
/// path).
pub fn exec_maps(pid: u32) -> Vec<Mapping> {
    Mapping::executable(&std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default())
}

/// What has been named so far, so a refresh names only new objects.
#[derive(Default)]
pub struct Known {
    maps: HashSet<(u64, u64, u64, String)>,
    /// Objects whose symbols were read: path and where its file starts
    /// in memory.
    objects: HashSet<(String, u64)>,
}

impl Known {
    /// The mappings of `pid` not seen before, and the symbols of the
    /// objects they map. `names` are the traced functions' own names (from
    /// the process's function table), which win over the ELF names at the
    /// same address and are kept where no ELF symbol is.
    pub fn refresh(&mut self, pid: u32, names: &[Symbol]) -> (Vec<Mapping>, Vec<Symbol>) {
        let new: Vec<Mapping> = exec_maps(pid)
            .into_iter()
            .filter(|m| self.maps.insert((m.start, m.end, m.offset, m.path.clone())))
            .collect();
        let mut symbols = Vec::new();
        // livetrace's own library is never traced nor a traced function's
        // caller: its thousands of symbols would only weigh on the file.
        let own = |p: &str| p.rsplit('/').next() == Some("liblivetrace.so");
        for m in new
            .iter()
            .filter(|m| m.path.starts_with('/') && !own(&m.path))
        {
            if self
                .objects
                .insert((m.path.clone(), m.start.wrapping_sub(m.offset)))
            {
                object_symbols(pid, m, &mut symbols);
            }
        }
        // The table's names: over the ELF symbol at the same address (which
        // keeps its size), or alone.
        symbols.sort_by_key(|s| s.addr);
        let mut extra = Vec::new();
        for n in names {
            let inside = new.iter().any(|m| (m.start..m.end).contains(&n.addr));
            if !inside {
                continue;
            }
            match symbols.binary_search_by_key(&n.addr, |s| s.addr) {
                Ok(i) => symbols[i].name = n.name.clone(),
                Err(_) => extra.push(n.clone()),
            }
        }
        symbols.extend(extra);
        (new, symbols)
    }
}

/// A read-only mapping of a whole file, unmapped on drop (so reading a
/// large object's symbols does not stay in the command's memory).
struct FileMap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl FileMap {
    fn open(path: &str) -> Option<FileMap> {
        let f = std::fs::File::open(path).ok()?;
        let len = f.metadata().ok()?.len() as usize;
        if len == 0 {
            return None;
        }
        // SAFETY: a private read-only mapping of a file we opened; it
        // aliases nothing of ours.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(FileMap { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes while `self` lives.
        // (A file truncated meanwhile could fault; objects a process has
        // mapped are not truncated in practice.)
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The function symbols of the object mapped by `m`, at their run-time
/// addresses.
fn object_symbols(pid: u32, m: &Mapping, out: &mut Vec<Symbol>) {
    // The object as the process maps it (a file replaced or deleted since
    // is still reachable there), else by its path.
    let by_proc = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let Some(map) = FileMap::open(&by_proc).or_else(|| FileMap::open(&m.path)) else {
        return;
    };
    let Ok(file) = object::File::parse(map.bytes()) else {
        return;
    };
    // The load bias: the segment whose pages hold the mapping's file
    // offset is at `start` in memory (a segment's offset and address agree
    // modulo the page size, and the mapping starts at its first page).
    // Two segments can share a page: the one starting in the mapping's
    // first page is it.
    let Some(bias) = file
        .segments()
        .filter_map(|seg| {
            let (off, size) = seg.file_range();
            let first_page = off & !0xfff;
            (first_page <= m.offset && m.offset < off + size.max(1)).then(|| {
                let bias = m
                    .start
                    .wrapping_sub(m.offset)
                    .wrapping_sub(seg.address().wrapping_sub(off));
                (first_page == m.offset, off, bias)
            })
        })
        .max()
        .map(|(_, _, bias)| bias)
    else {
        return;
    };
    let mut take = |syms: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| {
        let before = out.len();
        for s in syms {
            if s.kind() != SymbolKind::Text || s.address() == 0 || s.is_undefined() {
                continue;
            }
            let Ok(raw) = s.name() else { continue };
            let name = livetrace_sites::demangle(raw).unwrap_or_else(|| raw.to_string());
            out.push(Symbol {
                addr: s.address().wrapping_add(bias),
                size: s.size(),
                name: display_symbol(&name),
            });
        }
        out.len() > before
    };
    if !take(&mut file.symbols()) {
        take(&mut file.dynamic_symbols());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_names_its_own_functions() {
        let pid = std::process::id();
        let here = this_process_names_its_own_functions as *const () as u64;
        let mut known = Known::default();
        let (maps, symbols) = known.refresh(pid, &[]);
        assert!(maps.iter().any(|m| (m.start..m.end).contains(&here)));
        let s = symbols
            .iter()
            .find(|s| s.addr <= here && here < s.addr + s.size.max(1))
            .expect("a symbol around this function");
        assert!(
            s.name.contains("this_process_names_its_own_functions"),
            "{s:?}"
        );
        // Nothing new the second time.
        let (maps, symbols) = known.refresh(pid, &[]);
        assert!(maps.is_empty() && symbols.is_empty());
    }
}
