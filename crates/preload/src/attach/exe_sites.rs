//! The `#[traced]` sites of an executable that links livetrace without
//! running its control socket, read from its `livetrace_sites` section.

use super::*;

/// One record of an executable's `livetrace_sites` section.
pub(super) struct ExeSite {
    pub(super) addr: usize,
    pub(super) path: &'static str,
    pub(super) file: &'static str,
    pub(super) line: u32,
}

/// The `#[traced]` sites of an executable that links livetrace itself
/// (its `livetrace_sites` section, read in memory, after relocation).
/// Every pointer is checked to lie in the executable's loaded segments.
pub(super) fn executable_macro_sites() -> Vec<ExeSite> {
    let Some(sections) = crate::ctor::elf_sections("/proc/self/exe") else {
        return Vec::new();
    };
    let Some(sec) = sections.iter().find(|s| s.name == "livetrace_sites") else {
        return Vec::new();
    };
    let (bias, segs) = main_segments();
    let readable = |a: usize, len: usize| {
        segs.iter()
            .any(|&(lo, hi)| lo <= a && a.checked_add(len).is_some_and(|e| e <= hi))
    };
    let start = bias.wrapping_add(sec.addr as usize);
    let size = sec.size as usize;
    if !size.is_multiple_of(40) || !readable(start, size) || !start.is_multiple_of(8) {
        return Vec::new();
    }
    let s = |p: usize| -> Option<&'static str> {
        if !readable(p, 16) || !p.is_multiple_of(8) {
            return None;
        }
        // SAFETY: 16 readable bytes of the executable: a `&'static str`
        // as the macro laid it out (pointer, length).
        let (ptr, len) = unsafe { (*(p as *const usize), *((p + 8) as *const usize)) };
        if len > 4096 || !readable(ptr, len) {
            return None;
        }
        // SAFETY: `len` readable bytes of the executable, never written.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        std::str::from_utf8(bytes).ok()
    };
    let mut out = Vec::new();
    for i in 0..size / 40 {
        // SAFETY: inside the checked section, 8-aligned.
        let w = |k: usize| unsafe { *((start + i * 40 + k * 8) as *const usize) };
        let addr = w(0);
        if addr == 0 {
            continue;
        }
        let (Some(path), Some(file)) = (s(w(1)), s(w(2))) else {
            continue;
        };
        out.push(ExeSite {
            addr,
            path,
            file,
            line: w(3) as u32,
        });
    }
    out
}

/// The executable's load bias and readable segments.
pub(super) fn main_segments() -> (usize, Vec<(usize, usize)>) {
    unsafe extern "C" fn cb(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> i32 {
        // SAFETY: the loader passes a valid info; `data` is ours.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut (usize, Vec<(usize, usize)>))) };
        let bias = info.dlpi_addr as usize;
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's program headers of the object.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        out.0 = bias;
        out.1 = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_R != 0)
            .map(|p| {
                let lo = bias.wrapping_add(p.p_vaddr as usize);
                (lo, lo.wrapping_add(p.p_memsz as usize))
            })
            .collect();
        1 // the executable comes first
    }
    let mut out: (usize, Vec<(usize, usize)>) = (0, Vec::new());
    // SAFETY: the callback writes only `out`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut out as *mut _ as *mut c_void) };
    out
}
