//! Reading slots safely, to prove frames dead.

use std::sync::atomic::Ordering::*;

use super::{Block, MAX_DEPTH};

/// Reads the words at `addrs` into `out` with `process_vm_readv` on this
/// process, so an address that is no longer mapped reads as `None`
/// instead of faulting. Async-signal-safe.
fn read_words(addrs: &[usize], out: &mut [Option<usize>]) {
    const BATCH: usize = 64;
    let mut done = 0;
    while done < addrs.len() {
        let n = (addrs.len() - done).min(BATCH);
        let mut vals = [0usize; BATCH];
        let local = libc::iovec {
            iov_base: vals.as_mut_ptr().cast(),
            iov_len: n * 8,
        };
        let mut remote = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        for (r, &a) in remote.iter_mut().zip(&addrs[done..done + n]) {
            r.iov_base = a as *mut libc::c_void;
            r.iov_len = 8;
        }
        // SAFETY: the local buffer has n words; remote addresses are only
        // read, by the kernel, which reports unmapped ones.
        let got = unsafe {
            libc::process_vm_readv(libc::getpid(), &local, 1, remote.as_ptr(), n as _, 0)
        };
        // A failing address ends the copy: what came before it is good.
        let whole = if got < 0 { 0 } else { got as usize / 8 };
        for i in 0..n {
            out[done + i] = (i < whole).then_some(vals[i]);
        }
        if whole < n {
            // Skip the failing word and go on after it.
            out[done + whole] = None;
            done += whole + 1;
        } else {
            done += n;
        }
    }
}

/// Frees the frames among `ks` proven dead: a newer frame in use has the
/// same slot, or the slot no longer holds what the frame hooked it with.
/// Returns how many.
pub(super) fn free_dead(b: &Block, ks: &[usize]) -> u64 {
    let d = b.depth.load(Relaxed).min(MAX_DEPTH);
    let mut addrs = [0usize; MAX_DEPTH];
    let mut which = [0usize; MAX_DEPTH];
    let mut n = 0;
    let mut freed = 0;
    for &k in ks {
        let s = b.frame(k).slot.load(Relaxed);
        if s == 0 {
            continue;
        }
        if (k + 1..d).any(|m| b.frame(m).slot.load(Relaxed) == s) {
            b.free(k);
            freed += 1;
            continue;
        }
        addrs[n] = s;
        which[n] = k;
        n += 1;
    }
    let mut vals = [None; MAX_DEPTH];
    read_words(&addrs[..n], &mut vals[..n]);
    for i in 0..n {
        let f = b.frame(which[i]);
        // Unreadable: the stack is gone, and the frame with it.
        if vals[i] != Some(f.hook.load(Relaxed)) {
            b.free(which[i]);
            freed += 1;
        }
    }
    freed
}

/// Frees every frame of `b` proven dead.
pub(super) fn gc(b: &Block) {
    let d = b.depth.load(Relaxed).min(MAX_DEPTH);
    let all: [usize; MAX_DEPTH] = std::array::from_fn(|k| k);
    let n = free_dead(b, &all[..d]);
    b.skipped.fetch_add(n, Relaxed);
    b.trim();
}
