//! The shadow stack's memory: frames, each thread's block of them, and
//! the blocks' life (mapped on a thread's first hook, reused after it
//! exits).

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

use super::gc::gc;
use super::MAX_DEPTH;

/// One hooked call. `repr(C)`, 64 bytes: the fast paths (crate::fast) and
/// the hook's fast exit address its fields, and write it as four 16-byte
/// pairs: (ret, slot), (func, entry_ticks), (child_ticks, sink | level),
/// (hook, parent).
#[repr(C, align(64))]
pub(crate) struct Frame {
    /// The real return address.
    pub(crate) ret: AtomicUsize,
    /// The return slot's address; 0 for a free frame (a hole).
    pub(crate) slot: AtomicUsize,
    pub(crate) func: AtomicUsize,
    pub(crate) entry_ticks: AtomicU64,
    pub(crate) child_ticks: AtomicU64,
    pub(crate) sink: AtomicU32,
    /// The depth reported for the call.
    pub(crate) level: AtomicU32,
    /// What the slot holds while the call runs: the hook's address, or the
    /// return address into the site's stub.
    pub(crate) hook: AtomicUsize,
    /// Index + 1 of the parent frame (0: none).
    pub(crate) parent: AtomicU32,
    _pad: u32,
}

/// A thread's shadow stack. `repr(C)`: frame `k` is at byte 64 + 64 k.
#[repr(C, align(64))]
pub(crate) struct Block {
    /// Frames `0..depth` are in use (some may be holes); published last.
    pub(crate) depth: AtomicUsize,
    pub(super) overflow: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) unwound: AtomicU64,
    pub(super) migrated: AtomicU64,
    _pad: [u64; 3],
    pub(crate) frames: [Frame; MAX_DEPTH],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Frame>() == 64);
    assert!(offset_of!(Block, frames) == 64);
    assert!(offset_of!(Frame, slot) == offset_of!(Frame, ret) + 8);
    assert!(offset_of!(Frame, entry_ticks) == offset_of!(Frame, func) + 8);
    assert!(offset_of!(Frame, sink) == offset_of!(Frame, child_ticks) + 8);
    assert!(offset_of!(Frame, level) == offset_of!(Frame, sink) + 4);
    assert!(offset_of!(Frame, parent) == offset_of!(Frame, hook) + 8);
};

impl Block {
    pub(super) fn frame(&self, k: usize) -> &Frame {
        &self.frames[k]
    }

    /// The newest frame in use whose slot is `slot`.
    pub(super) fn find(&self, slot: usize) -> Option<usize> {
        let d = self.depth.load(Acquire).min(MAX_DEPTH);
        (0..d)
            .rev()
            .find(|&k| self.frames[k].slot.load(Relaxed) == slot)
    }

    /// Lowers the depth past free frames on top.
    pub(super) fn trim(&self) -> usize {
        let mut d = self.depth.load(Relaxed).min(MAX_DEPTH);
        while d > 0 && self.frames[d - 1].slot.load(Relaxed) == 0 {
            d -= 1;
        }
        self.depth.store(d, Release);
        d
    }

    /// Frees frame `k` (a single store: atomic for a signal handler).
    pub(super) fn free(&self, k: usize) {
        self.frames[k].slot.store(0, Release);
    }
}

// ---------------------------------------------------------------------------
// Blocks: mapped on a thread's first hook, reused after it exits.

pub(super) struct BlockSlot {
    /// The owning thread's tid; 0 when free; -1 while being reclaimed.
    owner: AtomicI32,
    pub(super) block: AtomicPtr<Block>,
}

/// Threads that can hook at once; a thread beyond has no shadow stack (its
/// calls are counted as overflows).
pub(super) const MAX_THREADS: usize = 8192;
pub(super) static BLOCKS: [BlockSlot; MAX_THREADS] = [const {
    BlockSlot {
        owner: AtomicI32::new(0),
        block: AtomicPtr::new(std::ptr::null_mut()),
    }
}; MAX_THREADS];
/// Slots of BLOCKS ever handed out.
pub(super) static USED: AtomicUsize = AtomicUsize::new(0);
/// Calls not hooked because their thread could get no shadow stack.
pub(super) static NO_BLOCK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // This thread's block, or null. Const-initialised, no Drop: plain
    // static TLS the fast paths reach at a fixed thread-pointer offset.
    pub(super) static SHADOW: Cell<*mut Block> = const { Cell::new(std::ptr::null_mut()) };
}

/// The thread-pointer offset of the block pointer, measured on the calling
/// thread (the same in every thread when it is in static TLS).
pub(crate) fn shadow_tpoff() -> isize {
    livetrace_poke::tls_offset_of(SHADOW.with(|s| s as *const Cell<*mut Block> as usize))
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Whether thread `tid` of this process is gone.
fn thread_gone(tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// This thread's block, if it has one.
pub(super) fn current() -> Option<&'static Block> {
    let p = SHADOW.with(|s| s.get());
    // SAFETY: blocks are never unmapped; this one is the thread's own.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// This thread's block, claimed or mapped if it has none. Async-signal-safe
/// (atomics, `mmap`, `tgkill`).
pub(super) fn block() -> Option<&'static Block> {
    if let Some(b) = current() {
        return Some(b);
    }
    let tid = gettid();
    let claim = |slot: &BlockSlot| -> Option<*mut Block> {
        slot.owner.compare_exchange(0, tid, AcqRel, Relaxed).ok()?;
        let mut p = slot.block.load(Acquire);
        if p.is_null() {
            p = map_block()?;
            slot.block.store(p, Release);
        }
        Some(p)
    };
    let mut found = None;
    for attempt in 0..2 {
        let used = USED.load(Acquire).min(MAX_THREADS);
        found = BLOCKS[..used].iter().find_map(claim);
        if found.is_none() {
            let i = USED.fetch_add(1, AcqRel);
            if i < MAX_THREADS {
                // Every 64 new threads, look for blocks of exited ones.
                if i % 64 == 63 {
                    reclaim();
                }
                found = claim(&BLOCKS[i]);
            } else {
                USED.store(MAX_THREADS, Release);
            }
        }
        if found.is_some() || attempt == 1 {
            break;
        }
        reclaim();
    }
    let Some(p) = found else {
        NO_BLOCK.fetch_add(1, Relaxed);
        return None;
    };
    SHADOW.with(|s| s.set(p));
    // SAFETY: mapped by map_block, never unmapped, owned by this thread.
    Some(unsafe { &*p })
}

fn map_block() -> Option<*mut Block> {
    let len = std::mem::size_of::<Block>().next_multiple_of(4096);
    // SAFETY: a fresh anonymous mapping; zeroed memory is a valid Block.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

/// Frees the blocks of threads that exited, unless a frame in one may still
/// be live (hooked on a coroutine's stack that another thread runs now).
fn reclaim() {
    let used = USED.load(Acquire).min(MAX_THREADS);
    for slot in &BLOCKS[..used] {
        let o = slot.owner.load(Acquire);
        if o <= 0 || !thread_gone(o) {
            continue;
        }
        let p = slot.block.load(Acquire);
        if p.is_null() || slot.owner.compare_exchange(o, -1, AcqRel, Relaxed).is_err() {
            continue;
        }
        // SAFETY: blocks are never unmapped; its thread is gone.
        let b = unsafe { &*p };
        gc(b);
        if b.trim() == 0 {
            for c in [&b.overflow, &b.skipped, &b.unwound, &b.migrated] {
                c.store(0, Relaxed);
            }
            slot.owner.store(0, Release);
        } else {
            slot.owner.store(o, Release);
        }
    }
}
