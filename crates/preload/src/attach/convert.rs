//! The conversion the injector calls with every thread held: resources
//! prepared beforehand by the attach thread, and the call itself, which may
//! not allocate or lock.

use super::*;

pub(super) struct Prepared {
    pub(super) mem_fd: libc::c_int,
    pub(super) sleds: Vec<u64>,
    pub(super) page: Vec<u8>,
    pub(super) check: Vec<u8>,
}

pub(super) static PREPARED: AtomicPtr<Prepared> = AtomicPtr::new(std::ptr::null_mut());
/// Sleds written by the last conversion, and failures.
pub(super) static CONVERTED: AtomicU64 = AtomicU64::new(0);
pub(super) static CONVERT_FAILED: AtomicU64 = AtomicU64::new(0);
/// Set by [`livetrace_attach_convert`] (1) or by a detach before it (2);
/// the attach thread waits on it.
pub(super) static CONVERT_DONE: AtomicU32 = AtomicU32::new(0);
pub(super) const ABORTED: u32 = 2;

pub(super) const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
pub(super) const PAGE: u64 = 4096;
pub(super) const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
pub(super) const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

/// Whether five bytes are a sled or a NOP5 variant the table accepts.
pub(super) fn convertible(b: &[u8]) -> bool {
    b == [0x90; 5] || (b[..4] == NOP5[..4] && b != NOP5)
}

/// Converts every published sled into the canonical 5-byte NOP, then
/// serialises every core. Called by the injector on one thread while every
/// other thread is held outside the sleds; takes no lock, allocates
/// nothing, never panics. Returns the number converted, or -1 when nothing
/// was prepared. Sites whose bytes are no longer a sled are skipped (and
/// counted as failed).
#[unsafe(no_mangle)]
pub extern "C" fn livetrace_attach_convert() -> i64 {
    let p = PREPARED.load(Acquire);
    if p.is_null() {
        return -1;
    }
    // SAFETY: published by the attach thread once fully built, and never
    // freed while the state can still lead here (it is leaked).
    let p = unsafe { &mut *p };
    let (mut done, mut failed) = (0u64, 0u64);
    let mut i = 0;
    while i < p.sleds.len() {
        // One group: the sleds within one page (a sled may run 4 bytes
        // past it).
        let start = p.sleds[i];
        let page_end = (start & !(PAGE - 1)) + PAGE;
        let mut j = i;
        while j < p.sleds.len() && p.sleds[j] < page_end {
            j += 1;
        }
        let end = p.sleds[j - 1] + 5;
        let len = (end - start) as usize;
        if len > p.page.len() {
            failed += (j - i) as u64;
            i = j;
            continue;
        }
        let buf = &mut p.page[..len];
        // SAFETY: reads into our buffer from the process's own memory.
        let n = unsafe { libc::pread(p.mem_fd, buf.as_mut_ptr().cast(), len, start as i64) };
        if n != len as isize {
            failed += (j - i) as u64;
            i = j;
            continue;
        }
        let mut changed = 0;
        for &s in &p.sleds[i..j] {
            let o = (s - start) as usize;
            if convertible(&buf[o..o + 5]) {
                buf[o..o + 5].copy_from_slice(&NOP5);
                changed += 1;
            } else if buf[o..o + 5] != NOP5 {
                failed += 1;
            }
        }
        if changed > 0 {
            // The kernel writes through to the private text page without
            // changing its protection.
            // SAFETY: writes our buffer back over the bytes just read.
            let w = unsafe { libc::pwrite(p.mem_fd, buf.as_ptr().cast(), len, start as i64) };
            let check = &mut p.check[..len];
            // SAFETY: reads back into our second buffer.
            let r = unsafe { libc::pread(p.mem_fd, check.as_mut_ptr().cast(), len, start as i64) };
            if w != len as isize || r != len as isize || check != &p.page[..len] {
                failed += changed;
            } else {
                done += changed;
            }
        }
        i = j;
    }
    // No thread may run bytes it fetched before the rewrite.
    // SAFETY: registered by the attach thread before publishing.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
        )
    };
    CONVERTED.store(done, SeqCst);
    CONVERT_FAILED.store(failed, SeqCst);
    CONVERT_DONE.store(1, Release);
    futex_wake(&CONVERT_DONE);
    done as i64
}
