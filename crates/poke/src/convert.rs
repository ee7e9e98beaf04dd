//! Turning sleds into the canonical 5-byte NOP, once, with no thread inside
//! one: the kernel's `text_poke_early` for code that may already be running.
//!
//! GCC's `-fpatchable-function-entry=5` emits five one-byte NOPs. Live
//! rewriting needs one instruction (a thread can be stopped between any two
//! one-byte NOPs and would resume in the middle of whatever replaced them),
//! so each such *sled* is made one 5-byte NOP exactly once, at a moment when
//! no thread can be executing it. Clang 14's `0f 1f 44 00 08` is already
//! one instruction but not the bytes batches expect; it takes the same path.
//!
//! Two ways to know no thread is inside a sled ([`Quiet`]): the process has
//! one thread (checked), or every other thread is held by stopping the
//! world (see [`crate::world`]) with neither its RIP nor a RIP saved in a
//! signal frame strictly inside a sled. All sleds of a call are converted
//! under one stop, so a shared library's thousands of sites cost one round
//! of signals: the pages are made writable, each sled is rewritten with one
//! atomic store (an aligned 8- or 16-byte word covering it, compared and
//! exchanged so its neighbours are untouched), the pages are put back and
//! every core is serialised before anyone is released. Nothing allocates
//! or takes a lock while the world is stopped.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::insn::NOP5;
use crate::maps::Maps;
use crate::text::Plan;
use crate::world::stop::{self, StopError, StopReport};
use crate::Error;

/// How a conversion knows no thread is inside a sled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiet {
    /// The process has one thread (checked right before converting): the
    /// caller, which must not be a signal handler that interrupted a sled.
    SingleThreaded,
    /// Stop every other thread and check where each one is.
    StopTheWorld,
}

/// What a conversion did.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    /// Sites now holding the canonical 5-byte NOP.
    pub done: Vec<usize>,
    /// Sites left as they were because their bytes were no longer the ones
    /// given (something else rewrote them meanwhile).
    pub changed: Vec<usize>,
    /// For [`Quiet::StopTheWorld`]: what stopping took.
    pub stop: Option<StopReport>,
}

/// Why nothing was converted.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConvertError {
    /// A site is not five bytes of private executable text (address, and
    /// why).
    NotText(usize, &'static str),
    /// [`Quiet::SingleThreaded`] with other threads running.
    NotSingleThreaded(usize),
    /// The world could not be stopped with everyone outside the sleds.
    Stop(StopError),
    /// A system call failed.
    Io(std::io::Error),
    /// The engine cannot serialise cores.
    NoCoreSync(String),
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::NotText(a, why) => write!(f, "site {a:#x}: {why}"),
            ConvertError::NotSingleThreaded(n) => write!(
                f,
                "refusing single-threaded conversion: the process has {n} threads"
            ),
            ConvertError::Stop(e) => write!(f, "stopping the world: {e}"),
            ConvertError::Io(e) => write!(f, "system call failed: {e}"),
            ConvertError::NoCoreSync(why) => write!(f, "cannot sync cores: {why}"),
        }
    }
}

impl std::error::Error for ConvertError {}

impl From<ConvertError> for Error {
    fn from(e: ConvertError) -> Error {
        match e {
            ConvertError::Io(e) => Error::Io(e),
            ConvertError::NoCoreSync(s) => Error::NoCoreSync(s),
            other => Error::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Rewrites the 5 bytes at `site` from `old` to `new` with one atomic
/// store of the aligned word covering them; false when they are not `old`
/// any more. The page is writable; nobody executes the bytes.
fn store_one(site: usize, old: [u8; 5], new: [u8; 5]) -> bool {
    let off8 = site & 7;
    if off8 <= 3 {
        let base = site - off8;
        // SAFETY: the aligned 8-byte word holding the site lies in the same
        // mapped, writable page run (a page boundary is 8-aligned, so the
        // word cannot straddle one); compare-exchange leaves the bytes
        // around the site exactly as they are.
        let word = unsafe { &*(base as *const AtomicU64) };
        let cur = word.load(SeqCst);
        let mut bytes = cur.to_le_bytes();
        if bytes[off8..off8 + 5] != old {
            return false;
        }
        bytes[off8..off8 + 5].copy_from_slice(&new);
        return word
            .compare_exchange(cur, u64::from_le_bytes(bytes), SeqCst, SeqCst)
            .is_ok();
    }
    let off16 = site & 15;
    if off16 <= 11 {
        let base = site - off16;
        // SAFETY: as above, for the aligned 16-byte word (cmpxchg16b needs
        // 16-byte alignment, which `base` has).
        unsafe {
            let p = base as *mut u128;
            let cur = std::ptr::read_volatile(p);
            let mut bytes = cur.to_le_bytes();
            if bytes[off16..off16 + 5] != old {
                return false;
            }
            bytes[off16..off16 + 5].copy_from_slice(&new);
            return cmpxchg16b(p, cur, u128::from_le_bytes(bytes));
        }
    }
    // The five bytes straddle a 16-byte boundary: byte by byte. Safe only
    // because no thread executes them now (the world is stopped or the
    // process has one thread); no aligned store can cover them.
    // SAFETY: mapped, writable (see above).
    unsafe {
        if std::ptr::read_volatile(site as *const [u8; 5]) != old {
            return false;
        }
        std::ptr::write_volatile(site as *mut [u8; 5], new);
    }
    true
}

/// `lock cmpxchg16b`: replaces `*p` with `new` if it holds `cur`.
///
/// # Safety
/// `p` is 16-byte aligned, mapped and writable.
unsafe fn cmpxchg16b(p: *mut u128, cur: u128, new: u128) -> bool {
    let ok: u8;
    // SAFETY: the caller's contract; rbx is saved and restored around the
    // instruction (LLVM reserves it).
    unsafe {
        std::arch::asm!(
            "xchg {nlo}, rbx",
            "lock cmpxchg16b [{p}]",
            "sete {ok}",
            "mov rbx, {nlo}",
            p = in(reg) p,
            nlo = inout(reg) new as u64 => _,
            ok = out(reg_byte) ok,
            in("rcx") (new >> 64) as u64,
            inout("rax") cur as u64 => _,
            inout("rdx") (cur >> 64) as u64 => _,
        )
    };
    ok != 0
}

/// Converts `sleds` — (site, the bytes found there a moment ago) — into
/// the canonical NOP under `quiet`. Validates every site first (private
/// executable text), and converts nothing if any is bad.
pub fn convert_sleds(sleds: &[(usize, [u8; 5])], quiet: Quiet) -> Result<Converted, ConvertError> {
    crate::sync::register().map_err(ConvertError::NoCoreSync)?;
    crate::lock::register_atfork();
    let mut sleds: Vec<(usize, [u8; 5])> = sleds.to_vec();
    sleds.sort_unstable_by_key(|s| s.0);
    sleds.dedup_by_key(|s| s.0);
    let mut out = Converted::default();
    if sleds.is_empty() {
        return Ok(out);
    }
    let _guard = crate::lock::BATCH.lock();
    let maps = Maps::read().map_err(ConvertError::Io)?;
    for &(site, _) in &sleds {
        if !maps.is_text(site, 5) {
            return Err(ConvertError::NotText(
                site,
                "not mapped readable and executable",
            ));
        }
        if maps.is_shared(site, 5) {
            return Err(ConvertError::NotText(
                site,
                "text mapped MAP_SHARED (writing it would write the file on disk)",
            ));
        }
    }
    let plan = Plan::new(&maps, sleds.iter().map(|s| s.0));
    // Reserved before anything stops: the writer below only pushes.
    let mut done = Vec::with_capacity(sleds.len());
    let mut changed = Vec::with_capacity(sleds.len());
    let mut write = || -> std::io::Result<()> {
        done.clear();
        changed.clear();
        plan.unlock()?;
        for &(site, old) in &sleds {
            if old == NOP5 || store_one(site, old, NOP5) {
                done.push(site);
            } else {
                changed.push(site);
            }
        }
        plan.relock();
        Ok(())
    };
    match quiet {
        Quiet::SingleThreaded => {
            let n = crate::world::threads().map_err(ConvertError::Io)?.len();
            if n != 1 {
                return Err(ConvertError::NotSingleThreaded(n));
            }
            write().map_err(ConvertError::Io)?;
            crate::sync::sync_cores();
        }
        Quiet::StopTheWorld => {
            // Strictly inside: a thread at a sled's first byte resumes at
            // the start of the new instruction, which is fine.
            let mut inside: Vec<std::ops::Range<usize>> =
                sleds.iter().map(|&(s, _)| s + 1..s + 5).collect();
            inside.dedup_by(|b, a| {
                if b.start <= a.end {
                    a.end = a.end.max(b.end);
                    true
                } else {
                    false
                }
            });
            let (r, report) = stop::stop_world(&inside, &mut write).map_err(ConvertError::Stop)?;
            r.map_err(ConvertError::Io)?;
            out.stop = Some(report);
        }
    }
    out.done = done;
    out.changed = changed;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_store_covers_each_alignment_and_spares_neighbours() {
        // A private page of our own, made writable for the test.
        // SAFETY: a fresh anonymous mapping we own.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as usize;
        assert_ne!(page as *mut libc::c_void, libc::MAP_FAILED);
        for off in 0..40usize {
            // SAFETY: inside our page.
            unsafe { std::ptr::write_bytes(page as *mut u8, 0xab, 64) };
            let site = page + 8 + off;
            // SAFETY: inside our page.
            unsafe { std::ptr::write_volatile(site as *mut [u8; 5], [0x90; 5]) };
            assert!(store_one(site, [0x90; 5], NOP5));
            // SAFETY: inside our page.
            let all = unsafe { std::ptr::read_volatile(page as *const [u8; 64]) };
            assert_eq!(all[8 + off..8 + off + 5], NOP5);
            assert!(all[..8 + off].iter().all(|&b| b == 0xab));
            assert!(all[8 + off + 5..].iter().all(|&b| b == 0xab));
            assert!(!store_one(site, [0x90; 5], NOP5), "old bytes are checked");
        }
        // SAFETY: our mapping.
        unsafe { libc::munmap(page as *mut _, 4096) };
    }
}
