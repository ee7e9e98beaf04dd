//! Our executable pages: mapped within reach of the sites they serve
//! (by `livetrace_poke::map_near`), written a word at a time while other
//! code on them may run.

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

/// Maps one page within reach of every address in `window` (a 1 GiB
/// window of sites, [`super::window_of`]): within [`REACH`] of its ends,
/// so every site in it reaches every trampoline on the page, and nearest
/// its middle (see [`livetrace_poke::map_near`] for how holes are found).
pub(super) fn map_near(window: usize) -> io::Result<usize> {
    let (start, end) = (window << WINDOW_SHIFT, (window + 1) << WINDOW_SHIFT);
    let lo = start.saturating_sub(REACH);
    let hi = end.saturating_add(REACH) - PAGE;
    let mid = start + (1 << (WINDOW_SHIFT - 1));
    livetrace_poke::map_near(lo..=hi, mid, PAGE).map_err(|e| match e {
        livetrace_poke::Error::Io(e) => e,
        livetrace_poke::Error::NoRoom { .. } => io::Error::other(format!(
            "no free page within reach of sites at {start:#x}..{end:#x}"
        )),
        e => io::Error::other(e.to_string()),
    })
}
