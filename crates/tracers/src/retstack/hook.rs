//! Hooking and returning.

use std::sync::atomic::{compiler_fence, Ordering::*};

use super::block::{block, current, BLOCKS, MAX_THREADS, SHADOW, USED};
use super::gc::{free_dead, gc};
use super::sinks::lookup_sink;
use super::{return_to_handler_addr, return_to_handler_full_addr, Block, MAX_DEPTH, NEAR};

/// The depth and parent of a frame hooked at `slot` with frames `0..d`
/// below it: one below the newest frame above it on the same stack.
fn parent_of(b: &Block, d: usize, slot: usize) -> (u32, u32) {
    for k in (0..d).rev() {
        let f = b.frame(k);
        let s = f.slot.load(Relaxed);
        if s > slot && s - slot < NEAR {
            return (f.level.load(Relaxed) + 1, k as u32 + 1);
        }
    }
    (0, 0)
}

/// Hooks the return of the function being entered. `slot` is the
/// trampoline's return slot; `preserve_all` picks the hook that keeps every
/// register (`livetrace_ftrace::Call::preserves_all`). Returns the depth reported for the call, or
/// `None` when the shadow stack is full (counted).
///
/// `sink` is the id of a sink published with
/// [`publish_sink`](super::publish_sink); if it is gone when the function
/// returns, the exit is not recorded.
///
/// # Safety
/// `slot` is the live return-address slot of a function being entered on
/// this thread, and the thread holds the recursion guard (a callback).
pub(crate) unsafe fn hook(
    slot: *mut usize,
    func: usize,
    entry_ticks: u64,
    sink: u32,
    preserve_all: bool,
) -> Option<u32> {
    let b = block()?;
    let mut d = b.trim();
    if d >= MAX_DEPTH {
        gc(b);
        d = b.depth.load(Relaxed);
        if d >= MAX_DEPTH {
            b.overflow.fetch_add(1, Relaxed);
            return None;
        }
    }
    let s = slot as usize;
    let (level, parent) = parent_of(b, d, s);
    let hook = if preserve_all {
        return_to_handler_full_addr()
    } else {
        return_to_handler_addr()
    };
    let f = b.frame(d);
    // SAFETY: the caller guarantees `slot` is the live return slot.
    f.ret.store(unsafe { slot.read() }, Relaxed);
    f.slot.store(s, Relaxed);
    f.func.store(func, Relaxed);
    f.entry_ticks.store(entry_ticks, Relaxed);
    f.child_ticks.store(0, Relaxed);
    f.sink.store(sink, Relaxed);
    f.level.store(level, Relaxed);
    f.hook.store(hook, Relaxed);
    f.parent.store(parent, Relaxed);
    // The frame, then the depth that publishes it, then the hook: a
    // signal handler at any point sees either no frame, or a complete one
    // whose slot still holds the real address, or both hooked.
    b.depth.store(d + 1, Release);
    compiler_fence(SeqCst);
    // SAFETY: as above; the function will `ret` through it.
    unsafe { slot.write(hook) };
    Some(level)
}

/// A frame found for a return slot: in this thread's block, or in another
/// thread's (a coroutine that moved).
pub(crate) struct Found {
    pub(crate) block: &'static Block,
    pub(crate) k: usize,
    pub(crate) own: bool,
}

/// The live frame hooked at `slot` with `hook`: this thread's newest, or
/// else another thread's. Async-signal-safe.
pub(crate) fn find_frame(slot: usize, hook: usize) -> Option<Found> {
    if let Some(b) = current() {
        if let Some(k) = b.find(slot) {
            if b.frame(k).hook.load(Relaxed) == hook {
                return Some(Found {
                    block: b,
                    k,
                    own: true,
                });
            }
        }
    }
    let me = SHADOW.with(|s| s.get());
    let used = USED.load(Acquire).min(MAX_THREADS);
    for s in &BLOCKS[..used] {
        let p = s.block.load(Acquire);
        if p.is_null() || p == me {
            continue;
        }
        // SAFETY: blocks are never unmapped.
        let b = unsafe { &*p };
        if let Some(k) = b.find(slot) {
            if b.frame(k).hook.load(Relaxed) == hook {
                return Some(Found {
                    block: b,
                    k,
                    own: false,
                });
            }
        }
    }
    None
}

/// Takes the frame found for a return or an unwind: puts its real return
/// address back into the slot (from then on the slot is what the unwind
/// information says), then frees the frame. Returns the real address.
///
/// # Safety
/// `slot` is the return slot the frame was found for, on this thread's
/// current stack.
pub(crate) unsafe fn take(found: &Found, slot: usize) -> usize {
    let f = found.block.frame(found.k);
    let ret = f.ret.load(Relaxed);
    // SAFETY: the caller's slot: the function's own return slot.
    unsafe { (slot as *mut usize).write(ret) };
    compiler_fence(SeqCst);
    if found.own {
        found.block.free(found.k);
    } else {
        // Another thread's frame: free it only if it still is this one.
        let _ = f.slot.compare_exchange(slot, 0, AcqRel, Relaxed);
        if let Some(b) = block() {
            b.migrated.fetch_add(1, Relaxed);
        }
    }
    ret
}

/// Counts a frame an unwinder went through (see `crate::unwind`).
pub(crate) fn count_unwound(found: &Found) {
    found.block.unwound.fetch_add(1, Relaxed);
    if found.own {
        found.block.trim();
    }
}

/// Called by the return hooks' slow path with the address of the slot the
/// function returned through (which still holds the hook's address);
/// returns where it should have returned.
pub(crate) extern "C" fn graph_exit(slot: usize) -> usize {
    let _quiet = livetrace_ftrace::suppress();
    let now = crate::clock_now();
    // SAFETY: the hook passes the slot the function returned through.
    let hook = unsafe { (slot as *const usize).read() };
    let Some(found) = find_frame(slot, hook) else {
        crate::fatal(
            "function-graph return without a hooked frame on any thread (the stack was \
             copied or rewritten under the tracer)",
        );
    };
    let b = found.block;
    let f = b.frame(found.k);
    let (func, entry, child, sink, level, parent) = (
        f.func.load(Relaxed),
        f.entry_ticks.load(Relaxed),
        f.child_ticks.load(Relaxed),
        f.sink.load(Relaxed),
        f.level.load(Relaxed),
        f.parent.load(Relaxed) as usize,
    );
    // SAFETY: the slot this return went through, on this stack.
    let ret = unsafe { take(&found, slot) };
    if found.own {
        // Frames above this one that a longjmp skipped, on this stack.
        let d = b.depth.load(Relaxed).min(MAX_DEPTH);
        if found.k + 1 < d {
            let mut above = [0usize; MAX_DEPTH];
            let mut n = 0;
            for k in found.k + 1..d {
                let s = b.frame(k).slot.load(Relaxed);
                if s != 0 && s < slot {
                    above[n] = k;
                    n += 1;
                }
            }
            let freed = free_dead(b, &above[..n]);
            b.skipped.fetch_add(freed, Relaxed);
        }
        b.trim();
    }
    // Never before the entry, even if an unordered clock read ran early.
    let now = now.max(entry);
    let total = now - entry;
    if found.own && parent != 0 {
        let p = b.frame(parent - 1);
        if p.slot.load(Relaxed) != 0 {
            p.child_ticks
                .store(p.child_ticks.load(Relaxed).wrapping_add(total), Relaxed);
        }
    }
    if let Some(sink) = lookup_sink(sink) {
        sink.exit(func, entry, now, child, level);
    }
    ret
}
