//! Our executable pages: mapped within reach of the sites they serve,
//! written a word at a time while other code on them may run.

use std::io;

use super::{PAGE, REACH, WINDOW_SHIFT};

/// Writes whole 8-byte words into one of our executable pages, each with
/// one atomic store. PROT_EXEC stays on: other code on the page may be
/// running; what is written is either not in use yet, or a data word that
/// threads read atomically.
pub(super) fn write_text(at: usize, bytes: &[u8]) -> io::Result<()> {
    let page = at & !(PAGE - 1);
    assert!(at.is_multiple_of(8) && bytes.len().is_multiple_of(8));
    assert!(at + bytes.len() <= page + PAGE);
    // SAFETY: the page is one we mapped (map_near); the words are aligned
    // and inside it; see above for why writing them is safe.
    unsafe {
        if libc::mprotect(
            page as *mut _,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let word = &*((at + 8 * i) as *const std::sync::atomic::AtomicU64);
            word.store(
                u64::from_le_bytes(w.try_into().expect("8 bytes")),
                std::sync::atomic::Ordering::Release,
            );
        }
        if libc::mprotect(page as *mut _, PAGE, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            crate::fatal("cannot make a trampoline page read-only again");
        }
    }
    Ok(())
}

/// Maps one page within reach of every address in `window`.
pub(super) fn map_near(window: usize) -> io::Result<usize> {
    let lo = (window << WINDOW_SHIFT)
        .saturating_sub(REACH)
        .max(PAGE * 16);
    let hi = ((window + 1) << WINDOW_SHIFT)
        .saturating_add(REACH)
        .min(0x7fff_ffff_f000);
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut used: Vec<(usize, usize)> = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    used.sort_unstable();
    // Candidate addresses: just below and just above each mapping in range,
    // nearest to the window's middle first.
    let mid = (window << WINDOW_SHIFT) + (1 << (WINDOW_SHIFT - 1));
    let mut candidates: Vec<usize> = Vec::new();
    for &(s, e) in &used {
        if s >= PAGE && s - PAGE >= lo && s - PAGE < hi {
            candidates.push(s - PAGE);
        }
        if e >= lo && e + PAGE <= hi {
            candidates.push(e);
        }
    }
    candidates.sort_by_key(|&c| c.abs_diff(mid));
    for c in candidates {
        if used.iter().any(|&(s, e)| c < e && c + PAGE > s) {
            continue;
        }
        // SAFETY: MAP_FIXED_NOREPLACE maps at `c` only if nothing is there,
        // so no existing mapping is touched.
        let p = unsafe {
            libc::mmap(
                c as *mut _,
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED && p as usize == c {
            return Ok(c);
        }
        if p != libc::MAP_FAILED {
            // SAFETY: an old kernel ignored the flag and mapped elsewhere;
            // undo that mapping, which is ours.
            unsafe { libc::munmap(p, PAGE) };
        }
    }
    Err(io::Error::other(format!(
        "no free page within reach of sites at {:#x}..{:#x}",
        window << WINDOW_SHIFT,
        (window + 1) << WINDOW_SHIFT
    )))
}
