//! The objects loaded in this process right now (`dl_iterate_phdr`), and
//! pinning one so it cannot be unloaded.

use std::ffi::{CStr, CString};
use std::io;

/// One object as the dynamic loader reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// `dlpi_name`: empty for the main program, otherwise the name the
    /// loader knows it by (what `dlopen(name, RTLD_NOLOAD)` finds).
    pub dl_name: String,
    /// `dlpi_addr`: the load bias.
    pub base: usize,
    /// Executable PT_LOAD ranges at runtime addresses.
    pub exec: Vec<(usize, usize)>,
    /// PT_LOAD (vaddr, memsz, flags) as mapped, for checking the file on
    /// disk is the one that was loaded.
    pub loads: Vec<(u64, u64, u32)>,
    /// Whether this is the main program (the first object listed).
    pub is_main: bool,
}

/// Lists every loaded object, in the loader's order (main program first).
#[cfg(test)]
pub(crate) fn loaded_objects() -> Vec<Loaded> {
    loaded_objects_with_subs().0
}

/// Lists every loaded object, in the loader's order (main program first),
/// with the loader's count of unloads so far (`dlpi_subs`).
pub(crate) fn loaded_objects_with_subs() -> (Vec<Loaded>, u64) {
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut (Vec<Loaded>, u64)` passed below, alive for
        // the whole iteration and not otherwise borrowed meanwhile.
        let (out, subs) = unsafe { &mut *(data as *mut (Vec<Loaded>, u64)) };
        if info.is_null() || size < std::mem::size_of::<libc::dl_phdr_info>() {
            return 0;
        }
        // SAFETY: the loader passes a valid info record for the duration of
        // the callback; its name is a NUL-terminated string (possibly empty)
        // and its phdr array has `dlpi_phnum` entries, mapped as long as the
        // object is loaded, which it is while the loader's lock is held.
        let (name, base, phdrs) = unsafe {
            let i = &*info;
            let name = if i.dlpi_name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(i.dlpi_name).to_string_lossy().into_owned()
            };
            let phdrs: &[libc::Elf64_Phdr] = if i.dlpi_phdr.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(i.dlpi_phdr, usize::from(i.dlpi_phnum))
            };
            *subs = i.dlpi_subs;
            (name, i.dlpi_addr as usize, phdrs)
        };
        let mut exec = Vec::new();
        let mut loads = Vec::new();
        for p in phdrs {
            if p.p_type != libc::PT_LOAD {
                continue;
            }
            loads.push((p.p_vaddr, p.p_memsz, p.p_flags));
            if p.p_flags & libc::PF_X != 0 {
                let start = base.wrapping_add(p.p_vaddr as usize);
                exec.push((start, start.wrapping_add(p.p_memsz as usize)));
            }
        }
        let is_main = out.is_empty();
        out.push(Loaded {
            dl_name: name,
            base,
            exec,
            loads,
            is_main,
        });
        0
    }
    let mut out: (Vec<Loaded>, u64) = (Vec::new(), 0);
    // SAFETY: the callback matches the signature dl_iterate_phdr expects and
    // only touches `out` through `data`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(cb),
            &mut out as *mut (Vec<Loaded>, u64) as *mut libc::c_void,
        )
    };
    out
}

/// The file to read for an object: `/proc/self/exe` for the main program,
/// the loader's name when it is a path, otherwise the path of the mapping
/// at the object's first segment (names the loader got relative to a
/// directory that has since changed, or bare names like the vDSO's).
pub(crate) fn file_path(obj: &Loaded) -> Option<String> {
    if obj.is_main {
        return std::fs::read_link("/proc/self/exe")
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
    }
    if obj.dl_name.starts_with('/') {
        return Some(obj.dl_name.clone());
    }
    let &(vaddr, _, _) = obj.loads.first()?;
    let addr = obj.base.wrapping_add(vaddr as usize);
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(_), Some(_), Some(_), Some(_)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        if a <= addr && addr < b {
            let path: String = f.collect::<Vec<_>>().join(" ");
            return path.starts_with('/').then_some(path);
        }
    }
    None
}

/// A counted reference to a loaded library taken with
/// `dlopen(name, RTLD_NOLOAD | RTLD_NOW)`: while it exists the library
/// cannot be unmapped, whatever the program's own `dlclose` calls do.
#[derive(Debug)]
pub(crate) struct Pin {
    handle: *mut libc::c_void,
}

// SAFETY: a dlopen handle is a process-wide token; glibc's dlclose may be
// called from any thread.
unsafe impl Send for Pin {}
// SAFETY: `Pin` offers no access through `&self`.
unsafe impl Sync for Pin {}

/// The leading fields of glibc's `struct link_map`, which are public ABI.
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const libc::c_char,
    l_ld: *mut libc::c_void,
    l_next: *mut LinkMap,
    l_prev: *mut LinkMap,
}

/// The load bias and name of the object behind a dlopen handle.
pub(crate) fn handle_info(handle: *mut libc::c_void) -> io::Result<(usize, String)> {
    let mut lm: *mut LinkMap = std::ptr::null_mut();
    // SAFETY: RTLD_DI_LINKMAP stores one `struct link_map *` through the
    // pointer we pass; `handle` is a live handle per the caller.
    let rc = unsafe {
        libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            &mut lm as *mut *mut LinkMap as *mut _,
        )
    };
    if rc != 0 || lm.is_null() {
        return Err(io::Error::other(dlerror_string()));
    }
    // SAFETY: glibc returned the handle's link_map, which lives as long as
    // the handle; its name is NUL-terminated.
    let (base, name) = unsafe {
        let l = &*lm;
        let name = if l.l_name.is_null() {
            String::new()
        } else {
            CStr::from_ptr(l.l_name).to_string_lossy().into_owned()
        };
        (l.l_addr, name)
    };
    Ok((base, name))
}

impl Pin {
    /// Takes a reference to the already-loaded object known to the loader
    /// as `dl_name` and loaded at `base`. Never loads anything: an object
    /// that is gone (or was replaced by another at a different address)
    /// is an error.
    pub fn take(dl_name: &str, base: usize) -> io::Result<Pin> {
        let c = CString::new(dl_name).map_err(io::Error::other)?;
        // SAFETY: plain dlopen with RTLD_NOLOAD: loads nothing, runs no
        // constructor, only bumps the reference count of a loaded object.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_NOW) };
        if handle.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{dl_name} is no longer loaded: {}", dlerror_string()),
            ));
        }
        let pin = Pin { handle };
        let (b, _) = handle_info(handle)?;
        if b != base {
            // Another object answers to that name now (e.g. reloaded at a
            // different address): the reference we took is not to ours.
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{dl_name} is loaded at {b:#x}, not {base:#x}"),
            ));
        }
        Ok(pin)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: `handle` came from a successful dlopen and is closed once.
        unsafe { libc::dlclose(self.handle) };
    }
}

pub(crate) fn dlerror_string() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated thread-local string
    // valid until the next dl* call on this thread; copied at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dl error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_main_program_and_libc() {
        let objs = loaded_objects();
        assert!(objs[0].is_main);
        let here = lists_main_program_and_libc as *const () as usize;
        assert!(objs[0].exec.iter().any(|&(a, b)| a <= here && here < b));
        assert!(objs.iter().any(|o| o.dl_name.contains("libc.so")));
        let main_path = file_path(&objs[0]).unwrap();
        assert!(main_path.starts_with('/'));
    }

    #[test]
    fn pin_refuses_what_is_not_loaded() {
        let e = Pin::take("/nonexistent/libnothing.so", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let libc_obj = loaded_objects()
            .into_iter()
            .find(|o| o.dl_name.contains("libc.so"))
            .unwrap();
        assert!(Pin::take(&libc_obj.dl_name, libc_obj.base).is_ok());
        assert!(Pin::take(&libc_obj.dl_name, libc_obj.base + 4096).is_err());
    }
}
