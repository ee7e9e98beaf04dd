//! Reading text and memory without faulting, and the one write that needs
//! no protocol ([`poke_quiescent`], for text no thread can be executing).

use super::*;

/// Reads five bytes of text already known to be mapped.
pub(super) fn read5(site: usize) -> [u8; 5] {
    // SAFETY: the caller checked that [site, site+5) is mapped readable.
    // Volatile: text changes behind the compiler's back (other batches, run
    // under the same lock, but also any other writer of code).
    unsafe { std::ptr::read_volatile(site as *const [u8; 5]) }
}

/// Reads the five bytes at `site`, checking first that they are mapped
/// readable and executable.
pub fn read_site(site: usize) -> Result<[u8; 5], Error> {
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_text(site, 5) {
        return Err(Error::NotText { site });
    }
    Ok(read5(site))
}

/// Reads `len` bytes of text at `addr`, checking first that they are all
/// mapped readable and executable.
pub fn read_text(addr: usize, len: usize) -> Result<Vec<u8>, Error> {
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_text(addr, len) {
        return Err(Error::NotText { site: addr });
    }
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: [addr, addr+len) is mapped readable (checked above).
        *b = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
    }
    Ok(out)
}

/// Reads `len` bytes of any readable memory at `addr` (checked first).
pub fn read_memory(addr: usize, len: usize) -> Result<Vec<u8>, Error> {
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_readable(addr, len) {
        return Err(Error::NotText { site: addr });
    }
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: [addr, addr+len) is mapped readable (checked above).
        *b = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
    }
    Ok(out)
}

/// Rewrites the five bytes at `site` from `expected` to `new` with plain
/// stores, without the int3 protocol: the kernel's `text_poke_early`.
///
/// Unlike a batch this accepts any bytes, so that GCC's five one-byte NOPs
/// can be made one 5-byte NOP once, and syncs all cores afterwards.
///
/// # Safety
/// No thread may be executing, or be stopped inside, the five bytes while
/// this runs: the process is single-threaded, the code was just loaded and
/// has not run yet, or every other thread is stopped with its RIP outside.
pub unsafe fn poke_quiescent(site: usize, expected: [u8; 5], new: [u8; 5]) -> Result<(), Error> {
    sync::register().map_err(Error::NoCoreSync)?;
    let _guard = lock();
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_text(site, 5) {
        return Err(Error::NotText { site });
    }
    let found = read5(site);
    if found != expected {
        return Err(Error::Rejected(vec![Rejection {
            site,
            expected,
            found: Some(found),
            reason: RejectReason::Mismatch,
        }]));
    }
    let text = Unlocked::new(&maps, std::iter::once(site)).map_err(Error::Io)?;
    for (i, b) in new.iter().enumerate() {
        // SAFETY: validated text made writable; the caller guarantees no
        // thread executes these bytes now.
        unsafe { std::ptr::write_volatile((site + i) as *mut u8, *b) };
    }
    drop(text);
    sync::sync_cores();
    Ok(())
}
