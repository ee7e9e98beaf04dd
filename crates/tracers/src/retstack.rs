//! Return hooking: how the function-graph tracer sees a function return.
//!
//! At entry the graph callback saves the traced function's return address
//! (the slot the trampoline hands it) in a *frame* on the thread's *shadow
//! stack*, with the slot's address, the function and the entry time, and
//! replaces it with `lt_return_to_handler`. When the function returns it
//! lands there; the hook finds the frame, puts the real return address back
//! in the slot, pops the frame, records the exit and jumps to the caller.
//! The kernel's `ret_stack` and `return_to_handler`. The graph tracer's
//! fast path (`crate::fast`) pushes the same frames in assembly, for
//! functions whose per-site stub calls the body, and those return into
//! `lt_return_to_stub`, which does the same.
//!
//! # The shadow stack
//!
//! A thread's shadow stack is a *block* of [`MAX_DEPTH`] frames in memory
//! mapped for it (no allocator, no lock: a thread's first hook may be in a
//! signal handler), reached through one thread-local pointer: livetrace's
//! static TLS stays small enough for libraries loaded with `dlopen`.
//! Blocks of threads that exited are found (their tid is gone) and reused.
//!
//! Every update is atomic with respect to signal handlers on the same
//! thread, which may take a backtrace or unwind at any instruction: a push
//! writes the frame, then publishes the depth, then hooks the slot; a
//! return writes the real return address back into the slot first, then
//! frees the frame. Frames are 64 bytes, stored as 16-byte pairs.
//!
//! # Real programs switch stacks
//!
//! A hooked frame is identified by its return slot's address. A return
//! finds its frame by that address, newest first, wherever it is in the
//! shadow stack: frames of other stacks hooked since (a coroutine switched
//! out by `swapcontext`, corosensei or boost.context; a handler on the
//! alternate signal stack) are left alone, and a frame freed below the top
//! is a hole until the top comes down to it. A coroutine resumed on another
//! thread returns through frames of the thread that hooked them: the return
//! finds them there (and says so in [`ShadowStats::migrated`]). The depth a
//! frame reports is one more than its parent's, the newest frame hooked
//! above it on what looks like the same stack (at most [`NEAR`] bytes up).
//!
//! Frames that never return are recognised as dead, and never written
//! again: unwinding (exceptions, panics, `pthread_exit`, `pthread_cancel`)
//! goes through the hook's unwind information, whose personality routine
//! puts each frame's real return address back as the unwinder reaches it
//! and drops the frame (`crate::unwind`); frames skipped by `longjmp` or
//! `siglongjmp` are found when a frame below them returns, or when the
//! shadow stack is full: a frame whose slot no longer holds the hook's
//! address, or whose slot a newer frame also hooked, is dead. The slot is
//! read with `process_vm_readv`, so a frame on a stack that was unmapped
//! meanwhile is read safely. A frame that cannot be proven dead stays: the
//! shadow stack never drops a live frame. A frame deeper than
//! [`MAX_DEPTH`] is not hooked; the overflow is counted.
//!
//! The exit path runs with tracing suppressed on the thread, so nothing it
//! calls is traced, and the quiescence wait counts it as busy.

use std::cell::Cell;
use std::sync::atomic::{
    compiler_fence, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};

/// Frames the shadow stack holds per thread.
pub const MAX_DEPTH: usize = 256;

/// How far above a new frame's slot its parent's may be, on one stack. A
/// frame farther up, or below, is taken to be on another stack (a
/// coroutine's, the signal stack): the new frame starts a new nesting at
/// depth 0. Only reported depths and self times depend on it.
pub const NEAR: usize = 256 << 10;

/// What a graph session does with entries and exits. Implemented by the
/// sessions in this crate; called on the traced thread.
pub(crate) trait Sink: Send + Sync {
    fn exit(&self, func: usize, entry_ticks: u64, exit_ticks: u64, child_ticks: u64, depth: u32);
}

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
    overflow: AtomicU64,
    skipped: AtomicU64,
    unwound: AtomicU64,
    migrated: AtomicU64,
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
    fn frame(&self, k: usize) -> &Frame {
        &self.frames[k]
    }

    /// The newest frame in use whose slot is `slot`.
    fn find(&self, slot: usize) -> Option<usize> {
        let d = self.depth.load(Acquire).min(MAX_DEPTH);
        (0..d)
            .rev()
            .find(|&k| self.frames[k].slot.load(Relaxed) == slot)
    }

    /// Lowers the depth past free frames on top.
    fn trim(&self) -> usize {
        let mut d = self.depth.load(Relaxed).min(MAX_DEPTH);
        while d > 0 && self.frames[d - 1].slot.load(Relaxed) == 0 {
            d -= 1;
        }
        self.depth.store(d, Release);
        d
    }

    /// Frees frame `k` (a single store: atomic for a signal handler).
    fn free(&self, k: usize) {
        self.frames[k].slot.store(0, Release);
    }
}

// ---------------------------------------------------------------------------
// Blocks: mapped on a thread's first hook, reused after it exits.

struct BlockSlot {
    /// The owning thread's tid; 0 when free; -1 while being reclaimed.
    owner: AtomicI32,
    block: AtomicPtr<Block>,
}

/// Threads that can hook at once; a thread beyond has no shadow stack (its
/// calls are counted as overflows).
const MAX_THREADS: usize = 8192;
static BLOCKS: [BlockSlot; MAX_THREADS] = [const {
    BlockSlot {
        owner: AtomicI32::new(0),
        block: AtomicPtr::new(std::ptr::null_mut()),
    }
}; MAX_THREADS];
/// Slots of BLOCKS ever handed out.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Calls not hooked because their thread could get no shadow stack.
static NO_BLOCK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // This thread's block, or null. Const-initialised, no Drop: plain
    // static TLS the fast paths reach at a fixed thread-pointer offset.
    static SHADOW: Cell<*mut Block> = const { Cell::new(std::ptr::null_mut()) };
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
fn current() -> Option<&'static Block> {
    let p = SHADOW.with(|s| s.get());
    // SAFETY: blocks are never unmapped; this one is the thread's own.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// This thread's block, claimed or mapped if it has none. Async-signal-safe
/// (atomics, `mmap`, `tgkill`).
fn block() -> Option<&'static Block> {
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

// ---------------------------------------------------------------------------
// Reading slots safely, to prove frames dead.

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
fn free_dead(b: &Block, ks: &[usize]) -> u64 {
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
fn gc(b: &Block) {
    let d = b.depth.load(Relaxed).min(MAX_DEPTH);
    let all: [usize; MAX_DEPTH] = std::array::from_fn(|k| k);
    let n = free_dead(b, &all[..d]);
    b.skipped.fetch_add(n, Relaxed);
    b.trim();
}

// ---------------------------------------------------------------------------
// Hooking and returning.

/// Per-thread counts of frames the graph tracer could not follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Calls not hooked because the shadow stack was full (or, in
    /// [`no_shadow_stack`], the thread could get none).
    pub overflow: u64,
    /// Frames found dead without returning: skipped by `longjmp`, or left
    /// on a stack that was freed.
    pub skipped: u64,
    /// Frames an unwinder went through (exceptions, panics, thread exits).
    pub unwound: u64,
    /// Returns of frames this thread hooked that happened on another
    /// thread (a coroutine resumed elsewhere), counted by the thread that
    /// saw the return.
    pub migrated: u64,
}

/// This thread's [`ShadowStats`].
pub fn shadow_stats() -> ShadowStats {
    current().map_or_else(ShadowStats::default, |b| ShadowStats {
        overflow: b.overflow.load(Relaxed),
        skipped: b.skipped.load(Relaxed),
        unwound: b.unwound.load(Relaxed),
        migrated: b.migrated.load(Relaxed),
    })
}

/// Calls of any thread not hooked because the thread could get no shadow
/// stack (more than 8192 threads hooking at once, or no memory).
pub fn no_shadow_stack() -> u64 {
    NO_BLOCK.load(Relaxed)
}

/// This thread's hooked frames not yet returned (nor found dead).
pub fn depth() -> usize {
    current().map_or(0, |b| {
        let d = b.depth.load(Acquire).min(MAX_DEPTH);
        (0..d)
            .filter(|&k| b.frame(k).slot.load(Relaxed) != 0)
            .count()
    })
}

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
/// `sink` is the id of a sink published with [`publish_sink`]; if it is gone
/// when the function returns, the exit is not recorded.
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

// ---------------------------------------------------------------------------
// Sinks by id. Hooked frames may outlive what they report to (a traced
// `main` returns when the program ends), so a frame names its sink by id
// and the exit path looks the id up in a published registry. The registry
// is read with tracing suppressed, so the core's quiescence wait covers
// its readers: a sink is unpublished, waited for, and only then freed.

struct Registry {
    sinks: Vec<(u32, *const dyn Sink)>,
}

static REGISTRY: std::sync::atomic::AtomicPtr<Registry> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static REGISTRY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lookup_sink(id: u32) -> Option<&'static dyn Sink> {
    let r = REGISTRY.load(std::sync::atomic::Ordering::Acquire);
    if r.is_null() {
        return None;
    }
    // SAFETY: a published registry, and every sink in it, is freed only
    // after a quiescence wait, which waits for this (suppressed) thread.
    let r = unsafe { &*r };
    r.sinks.iter().find(|(i, _)| *i == id).map(|&(_, p)| {
        // SAFETY: as above.
        unsafe { &*p }
    })
}

/// Registries replaced since the last wait, and whether a sink left.
struct Graveyard(Vec<*mut Registry>);
// SAFETY: the pointers are owned boxes only touched under REGISTRY_LOCK.
unsafe impl Send for Graveyard {}
static GRAVEYARD: std::sync::Mutex<Graveyard> = std::sync::Mutex::new(Graveyard(Vec::new()));

/// Replaces the registry. Old registries are freed only when a sink is
/// removed (which must wait for quiescence anyway, before its owner frees
/// it): publishing a sink never probes the program's threads.
fn change_registry(change: impl FnOnce(&mut Vec<(u32, *const dyn Sink)>), removing: bool) -> bool {
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    let _g = REGISTRY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old = REGISTRY.load(Acquire);
    let mut sinks = if old.is_null() {
        Vec::new()
    } else {
        // SAFETY: replaced only under the lock we hold.
        unsafe { &*old }.sinks.clone()
    };
    change(&mut sinks);
    let old = REGISTRY.swap(Box::into_raw(Box::new(Registry { sinks })), AcqRel);
    let mut grave = GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner());
    if !old.is_null() {
        grave.0.push(old);
    }
    if removing {
        // Exit paths may still hold an old registry, or the sink removed.
        if livetrace_ftrace::synchronize().is_err() {
            // The wait gave up: keep every old registry (and the caller
            // keeps the sink) rather than free what a thread may read.
            return false;
        }
        for r in grave.0.drain(..) {
            // SAFETY: from Box::into_raw above; no reader is left.
            drop(unsafe { Box::from_raw(r) });
        }
    }
    true
}

/// The vector state the return hooks save (`livetrace_ftrace::VectorState`
/// as 0, 1, 2), set before the first frame is hooked.
pub(crate) static VECTOR_STATE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Publishes `sink` under `id` for hooked frames to report to.
///
/// # Safety
/// `sink` stays valid until [`unpublish_sink`]`(id)` has returned.
pub(crate) unsafe fn publish_sink(id: u32, sink: *const dyn Sink) {
    static HOOK_CODE: std::sync::Once = std::sync::Once::new();
    HOOK_CODE.call_once(|| {
        for code in slow_exit_code() {
            let _ = livetrace_ftrace::add_callback_caller(code);
        }
    });
    crate::unwind::resolve();
    VECTOR_STATE.store(
        livetrace_ftrace::vector_state() as u8,
        std::sync::atomic::Ordering::Relaxed,
    );
    change_registry(|v| v.push((id, sink)), false);
}

/// Removes sink `id`. Returns true when no exit path can still be using it;
/// false when the quiescence wait gave up — the caller must then keep the
/// sink alive (leak it) rather than free it.
#[must_use]
pub(crate) fn unpublish_sink(id: u32) -> bool {
    // The fast exit first: the wait below covers it too.
    crate::layout::remove_sink(id);
    change_registry(|v| v.retain(|(i, _)| *i != id), true)
}

// The hooks' unwind information names the personality routine through
// this word, as compilers do (DW_EH_PE_indirect | pcrel | sdata4).
std::arch::global_asm!(
    ".pushsection .data.rel.local.DW.ref.lt_graph_personality,\"awG\",@progbits,DW.ref.lt_graph_personality,comdat",
    ".p2align 3",
    ".hidden DW.ref.lt_graph_personality",
    ".weak DW.ref.lt_graph_personality",
    ".type DW.ref.lt_graph_personality, @object",
    ".size DW.ref.lt_graph_personality, 8",
    "DW.ref.lt_graph_personality:",
    "    .quad {personality}",
    ".popsection",
    personality = sym crate::unwind::personality,
);

macro_rules! return_handler {
    ($name:literal, $fast_end:literal, $end:literal, $jump:literal) => {
std::arch::global_asm!(
    ".pushsection .text.livetrace_graph,\"ax\",@progbits",
    ".p2align 4",
    // Unwind information: the hook stands where the function's caller
    // would, with rsp as the caller has it after the return (CFA = rsp)
    // and the return address in the return slot (CFA - 8), which holds the
    // hook's address until the frame is taken and the real address after.
    // The personality routine puts the real address there first when an
    // unwinder passes (crate::unwind). The byte before the hook is covered
    // too: unwinders look a return address up minus one.
    ".cfi_startproc",
    ".cfi_personality 0x9b, DW.ref.lt_graph_personality",
    ".cfi_def_cfa rsp, 0",
    ".cfi_offset rip, -8",
    "    nop",
    concat!(".globl ", $name),
    concat!($name, ":"),
    // The function returned here: rsp is its slot + 8 (8-aligned only).
    // rax and rdx (and vector registers 0 and 1, st0 and st1, untouched
    // here) may hold its result; rcx, rsi, rdi, r8-r11 and xmm2-15 are
    // dead at a return, free to use.
    //
    // The fast exit, for this thread's newest frame whose session is in
    // EXIT_SINKS and whose thread has a buffer with room: the same work as
    // `graph_exit` and the session's record, holding the core's recursion
    // guard (never inside a callback or another fast path), so no signal
    // handler hooks a frame meanwhile.
    "    cmp byte ptr [rip + {ready}], 0",
    "    je 50f",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    cmp byte ptr fs:[rcx], 0",
    "    jne 50f",
    "    mov byte ptr fs:[rcx], 1",
    "    mov r8, rax",
    "    mov r9, rdx",
    // rdi: the block; r10: 64 * depth, the top frame's offset in it.
    "    mov rsi, qword ptr [rip + {shadow}]",
    "    mov rdi, qword ptr fs:[rsi]",
    "    test rdi, rdi",
    "    jz 49f",
    "    mov r10, qword ptr [rdi + {depth}]",
    "    test r10, r10",
    "    jz 49f",
    "    shl r10, 6",
    "    lea r11, [rsp - 8]",
    "    cmp qword ptr [rdi + r10 + {f_slot}], r11",
    "    jne 49f",
    "    mov eax, dword ptr [rdi + r10 + {f_sink}]",
    "    mov edx, eax",
    "    and edx, {sinks_mask}",
    "    shl edx, 4",
    "    lea r11, [rip + {sinks}]",
    "    cmp qword ptr [r11 + rdx], rax",
    "    jne 49f",
    "    mov rax, qword ptr [r11 + rdx + 8]",
    "    mov edx, eax",
    "    and edx, {ways_mask}",
    "    imul edx, edx, {way_bytes}",
    "    add rdx, qword ptr [rip + {cache}]",
    "    cmp qword ptr fs:[rdx], rax",
    "    jne 49f",
    "    mov r11, qword ptr fs:[rdx + {way_buffer}]",
    "    mov rcx, qword ptr [r11 + {head}]",
    "    cmp byte ptr [r11 + {overwrite}], 0",
    "    jne 2f",
    "    mov rax, rcx",
    "    sub rax, qword ptr [r11 + {tail_seen}]",
    "    cmp rax, qword ptr [r11 + {mask}]",
    "    ja 49f",
    "2:",
    // Committed. The real return address goes back into the slot, then
    // the frame is popped (the guard keeps it unused until we are done).
    "    mov rax, qword ptr [rdi + r10 + {f_ret}]",
    "    mov qword ptr [rsp - 8], rax",
    "    mov rax, r10",
    "    shr rax, 6",
    "    sub rax, 1",
    "    mov qword ptr [rdi + {depth}], rax",
    // Stamp, charge the parent, record.
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov rdx, qword ptr [rdi + r10 + {f_entry}]",
    "    cmp rax, rdx",
    "    cmovb rax, rdx",
    "    mov esi, dword ptr [rdi + r10 + {f_parent}]",
    "    test esi, esi",
    "    jz 3f",
    "    shl rsi, 6",
    "    sub rdx, rax",
    "    sub qword ptr [rdi + rsi + {f_child}], rdx",
    "3:",
    // The record as two 16-byte stores: (ts, func), (depth, EXIT).
    "    movq xmm14, rax",
    "    movq xmm15, qword ptr [rdi + r10 + {f_func}]",
    "    punpcklqdq xmm14, xmm15",
    "    mov eax, dword ptr [rdi + r10 + {f_level}]",
    "    movq xmm15, rax",
    "    mov eax, {exit_kind}",
    "    movq xmm13, rax",
    "    punpcklqdq xmm15, xmm13",
    "    lea rdx, [rcx + 1]",
    "    mov qword ptr [r11 + {started}], rdx",
    "    and rcx, qword ptr [r11 + {mask}]",
    "    shl rcx, 5",
    "    add rcx, qword ptr [r11 + {slots}]",
    "    movups xmmword ptr [rcx], xmm14",
    "    movups xmmword ptr [rcx + 16], xmm15",
    "    mov qword ptr [r11 + {head}], rdx",
    "    mov r11, qword ptr [rsp - 8]",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    mov byte ptr fs:[rcx], 0",
    "    mov rax, r8",
    "    mov rdx, r9",
    $jump,
    // Not for the fast exit: let go of the guard, take the Rust exit.
    "49:",
    "    mov rcx, qword ptr [rip + {inside}]",
    "    mov byte ptr fs:[rcx], 0",
    "    mov rax, r8",
    "    mov rdx, r9",
    // The fast exit's end: its code, from the hook to here, is critical
    // code for the quiescence wait (it reads EXIT_SINKS and then a
    // session's buffer, and calls nothing).
    concat!(".globl ", $fast_end),
    concat!($fast_end, ":"),
    "50:",
    // Save the result registers: rax, rdx, vector register 0 at its full
    // width (a __m256 or __m512 result), xmm1, and st0/st1 when the x87
    // stack holds a long double result (the ABI wants it empty at a call).
    // rsp (the slot + 8) is only 8-aligned: gcc may have called the
    // function with the stack 8 off; realign for the call, below the slot.
    "    mov rcx, rsp",
    ".cfi_def_cfa rcx, 0",
    "    sub rsp, 8",
    "    and rsp, -64",
    "    sub rsp, 192",
    "    mov qword ptr [rsp + 128], rcx",
    // CFA = [rsp + 128] (DW_CFA_def_cfa_expression: breg7 128, deref).
    ".cfi_escape 0x0f, 0x04, 0x77, 0x80, 0x01, 0x06",
    "    mov qword ptr [rsp + 136], rax",
    "    mov qword ptr [rsp + 144], rdx",
    "    cmp byte ptr [rip + {vstate}], 1",
    "    jb 51f",
    "    je 52f",
    "    vmovdqa64 zmmword ptr [rsp], zmm0",
    "    vmovdqa xmmword ptr [rsp + 64], xmm1",
    "    vzeroupper",
    "    jmp 53f",
    "52:",
    "    vmovdqa ymmword ptr [rsp], ymm0",
    "    vmovdqa xmmword ptr [rsp + 64], xmm1",
    "    vzeroupper",
    "    jmp 53f",
    "51:",
    "    movaps xmmword ptr [rsp], xmm0",
    "    movaps xmmword ptr [rsp + 64], xmm1",
    "53:",
    // x87 TOP: 0 when empty; 7 with one value (long double), 6 with two
    // (complex long double). Anything else is left alone.
    "    fnstsw ax",
    "    shr eax, 11",
    "    and eax, 7",
    "    mov qword ptr [rsp + 152], rax",
    "    cmp eax, 6",
    "    jb 54f",
    "    fstp tbyte ptr [rsp + 160]",
    "    cmp eax, 7",
    "    je 54f",
    "    fstp tbyte ptr [rsp + 176]",
    "54:",
    "    lea rdi, [rcx - 8]",
    "    call {exit}",
    // Back to the real return address with a jump, not a `ret`: the
    // function's own `ret` already used up the return-stack-buffer entry
    // for this call (and was mispredicted into here); another `ret` would
    // mispredict too and leave the buffer out of step for the caller's
    // returns. r11 is scratch at a return (never a return register).
    "    mov r11, rax",
    "    mov rax, qword ptr [rsp + 152]",
    "    cmp eax, 6",
    "    jb 55f",
    "    jne 56f",
    "    fld tbyte ptr [rsp + 176]",
    "56:",
    "    fld tbyte ptr [rsp + 160]",
    "55:",
    "    cmp byte ptr [rip + {vstate}], 1",
    "    jb 57f",
    "    je 58f",
    "    vmovdqa64 zmm0, zmmword ptr [rsp]",
    "    vmovdqa xmm1, xmmword ptr [rsp + 64]",
    "    jmp 59f",
    "58:",
    "    vmovdqa ymm0, ymmword ptr [rsp]",
    "    vmovdqa xmm1, xmmword ptr [rsp + 64]",
    "    jmp 59f",
    "57:",
    "    movaps xmm0, xmmword ptr [rsp]",
    "    movaps xmm1, xmmword ptr [rsp + 64]",
    "59:",
    "    mov rax, qword ptr [rsp + 136]",
    "    mov rdx, qword ptr [rsp + 144]",
    "    mov rsp, qword ptr [rsp + 128]",
    ".cfi_def_cfa rsp, 0",
    $jump,
    concat!(".globl ", $end),
    concat!($end, ":"),
    ".cfi_endproc",
    ".popsection",
    exit = sym graph_exit,
    vstate = sym VECTOR_STATE,
    ready = sym crate::layout::EXIT_READY,
    inside = sym crate::layout::EXIT_INSIDE,
    shadow = sym crate::layout::EXIT_SHADOW,
    cache = sym crate::layout::EXIT_CACHE,
    sinks = sym crate::layout::EXIT_SINKS,
    sinks_mask = const crate::layout::SINKS - 1,
    ways_mask = const livetrace_ring::ring::raw::WAYS - 1,
    way_bytes = const livetrace_ring::ring::raw::WAY_BYTES,
    way_buffer = const livetrace_ring::ring::raw::WAY_BUFFER_OFFSET,
    head = const livetrace_ring::ring::raw::HEAD_OFFSET,
    started = const livetrace_ring::ring::raw::STARTED_OFFSET,
    overwrite = const livetrace_ring::ring::raw::OVERWRITE_OFFSET,
    tail_seen = const livetrace_ring::ring::raw::TAIL_SEEN_OFFSET,
    mask = const livetrace_ring::ring::raw::MASK_OFFSET,
    slots = const livetrace_ring::ring::raw::SLOTS_OFFSET,
    exit_kind = const crate::layout::EXIT,
    depth = const std::mem::offset_of!(Block, depth),
    f_ret = const std::mem::offset_of!(Frame, ret),
    f_slot = const std::mem::offset_of!(Frame, slot),
    f_func = const std::mem::offset_of!(Frame, func),
    f_entry = const std::mem::offset_of!(Frame, entry_ticks),
    f_child = const std::mem::offset_of!(Frame, child_ticks),
    f_sink = const std::mem::offset_of!(Frame, sink),
    f_level = const std::mem::offset_of!(Frame, level),
    f_parent = const std::mem::offset_of!(Frame, parent),
);
    };
}

// Where a hooked slot sends a function: its `ret` was predicted to go to
// the caller (the return-stack buffer holds the caller's return address,
// which that `ret` used up), so it leaves with a jump, not another `ret`.
return_handler!(
    "lt_return_to_handler",
    "lt_return_to_handler_fast_end",
    "lt_return_to_handler_end",
    "    jmp r11"
);
// Where a per-site stub's call of the body lands (see the core's
// `FastPath::calling_original`): the stub's call pushed its own return-
// stack entry, which the body's `ret` used, so the caller's entry is still
// there and a `ret` to it is predicted.
return_handler!(
    "lt_return_to_stub",
    "lt_return_to_stub_fast_end",
    "lt_return_to_stub_end",
    "    push r11\n.cfi_adjust_cfa_offset 8\n    ret\n.cfi_adjust_cfa_offset -8"
);

unsafe extern "C" {
    fn lt_return_to_handler();
    static lt_return_to_handler_fast_end: u8;
    static lt_return_to_handler_end: u8;
    fn lt_return_to_stub();
    static lt_return_to_stub_fast_end: u8;
    static lt_return_to_stub_end: u8;
}

/// The return hooks' slow paths, which call `graph_exit` under the
/// recursion guard: a return address into them means a thread is inside
/// (the quiescence wait must not take a thread blocked there for one that
/// is clear).
fn slow_exit_code() -> [std::ops::Range<usize>; 3] {
    [
        &raw const lt_return_to_handler_fast_end as usize
            ..&raw const lt_return_to_handler_end as usize,
        &raw const lt_return_to_stub_fast_end as usize..&raw const lt_return_to_stub_end as usize,
        crate::full_hook::code(),
    ]
}

/// The hooks' whole code, the byte before each included: a frame whose
/// address is in here is the hook's, not the program's.
pub(crate) fn hook_code() -> [std::ops::Range<usize>; 3] {
    [
        return_to_handler_addr() - 1..&raw const lt_return_to_handler_end as usize,
        return_to_stub_addr() - 1..&raw const lt_return_to_stub_end as usize,
        crate::full_hook::code(),
    ]
}

/// The code of the return hooks' fast exits (critical code).
pub(crate) fn fast_exit_code() -> [std::ops::Range<usize>; 2] {
    [
        return_to_handler_addr()..&raw const lt_return_to_handler_fast_end as usize,
        return_to_stub_addr()..&raw const lt_return_to_stub_fast_end as usize,
    ]
}

/// The exit routine of the graph tracer's stub-served fast path.
pub(crate) fn return_to_stub_addr() -> usize {
    lt_return_to_stub as *const () as usize
}

pub use crate::full_hook::return_to_handler_full_addr;

/// The address hooked slots hold (but those of functions that preserve
/// every register: [`return_to_handler_full_addr`]).
pub fn return_to_handler_addr() -> usize {
    lt_return_to_handler as *const () as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use livetrace_ftrace::{register, unregister, with_table, Ops, Pattern};
    use livetrace_sites::ExternalSite;
    use std::sync::Mutex;

    // Two traced Rust functions: a NOP5 entry stub jumping to the body.
    std::arch::global_asm!(
        ".pushsection .text.lt_graph_test,\"ax\",@progbits",
        ".p2align 4",
        ".globl lt_g_outer",
        "lt_g_outer: .byte 0x0f,0x1f,0x44,0x00,0x00",
        "    jmp {outer}",
        ".p2align 4",
        ".globl lt_g_inner",
        "lt_g_inner: .byte 0x0f,0x1f,0x44,0x00,0x00",
        "    jmp {inner}",
        ".popsection",
        outer = sym outer_body,
        inner = sym inner_body,
    );
    unsafe extern "C-unwind" {
        fn lt_g_outer(n: u64) -> u64;
        fn lt_g_inner(n: u64) -> u64;
    }
    extern "C-unwind" fn outer_body(n: u64) -> u64 {
        // SAFETY: the stub jumps to inner_body with the same ABI.
        let r = unsafe { lt_g_inner(n) };
        std::hint::black_box(r + 1)
    }
    extern "C-unwind" fn inner_body(n: u64) -> u64 {
        if n == 99 {
            panic!("inner panics");
        }
        if n == 98 {
            let bt = std::backtrace::Backtrace::force_capture();
            let frames = format!("{bt}");
            assert!(
                frames.contains("outer_body"),
                "backtrace sees through hooked frames:\n{frames}"
            );
        }
        std::hint::black_box(n * 2)
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<(char, usize, u32)>>);
    impl Sink for Log {
        fn exit(&self, func: usize, _: u64, _: u64, _: u64, depth: u32) {
            self.0.lock().unwrap().push(('x', func, depth));
        }
    }

    fn site(f: unsafe extern "C-unwind" fn(u64) -> u64) -> usize {
        f as *const () as usize
    }

    #[test]
    fn graph_exits_panics_and_backtraces() {
        let sites = [
            ExternalSite {
                addr: site(lt_g_outer),
                name: "g::outer",
                file: file!(),
                line: 0,
            },
            ExternalSite {
                addr: site(lt_g_inner),
                name: "g::inner",
                file: file!(),
                line: 0,
            },
        ];
        with_table(|t| t.insert_external(&sites)).unwrap().unwrap();
        let log: &'static Log = Box::leak(Box::default());
        // SAFETY: the log is leaked, so it outlives its publication.
        unsafe { publish_sink(9999, log as *const dyn Sink) };
        let ops = Ops::builder("graph-test")
            .filter(Pattern::parse("g::*"))
            .build(move |call| {
                // SAFETY: the slot is this call's return slot.
                let hooked = unsafe {
                    hook(
                        call.return_slot(),
                        call.ip(),
                        crate::clock_now(),
                        9999,
                        false,
                    )
                };
                if let Some(d) = hooked {
                    log.0.lock().unwrap().push(('e', call.ip(), d));
                }
            });
        register(&ops).unwrap();
        let (o, i) = (site(lt_g_outer), site(lt_g_inner));

        // SAFETY: plain calls of the traced functions.
        assert_eq!(unsafe { lt_g_outer(3) }, 7);
        assert_eq!(
            *log.0.lock().unwrap(),
            [('e', o, 0), ('e', i, 1), ('x', i, 1), ('x', o, 0)]
        );
        assert_eq!(depth(), 0);

        // A panic through both hooked frames is caught as without tracing.
        log.0.lock().unwrap().clear();
        let before = shadow_stats();
        // SAFETY: as above.
        let r = std::panic::catch_unwind(|| unsafe { lt_g_outer(99) });
        assert!(r.is_err());
        assert_eq!(depth(), 0);
        assert_eq!(shadow_stats().unwound, before.unwound + 2);
        assert_eq!(*log.0.lock().unwrap(), [('e', o, 0), ('e', i, 1)]);

        // Later traces are right.
        log.0.lock().unwrap().clear();
        // SAFETY: as above.
        assert_eq!(unsafe { lt_g_outer(5) }, 11);
        assert_eq!(
            *log.0.lock().unwrap(),
            [('e', o, 0), ('e', i, 1), ('x', i, 1), ('x', o, 0)]
        );

        // A backtrace taken under hooked frames sees the real callers, and
        // the frames still return through the hook.
        log.0.lock().unwrap().clear();
        // SAFETY: as above.
        assert_eq!(unsafe { lt_g_outer(98) }, 197);
        assert_eq!(log.0.lock().unwrap().len(), 4);
        unregister(&ops).unwrap();
        assert!(unpublish_sink(9999));
    }

    // A traced function returning in every result register at once (rax,
    // rdx, vector register 0 at width 16 << V, xmm1, st0 and st1), and a
    // caller entering it with rsp aligned or 8 off that stores what came
    // back.
    std::arch::global_asm!(
        ".pushsection .text.lt_graph_test,\"ax\",@progbits",
        ".macro ret_values V",
        ".p2align 4",
        ".globl lt_g_ret\\V",
        "lt_g_ret\\V: .byte 0x0f,0x1f,0x44,0x00,0x00",
        "    mov rax, [rdi]",
        "    mov rdx, [rdi + 8]",
        "    .if \\V == 0",
        "    movups xmm0, [rdi + 64]",
        "    .elseif \\V == 1",
        "    vmovdqu ymm0, [rdi + 64]",
        "    .else",
        "    vmovdqu64 zmm0, [rdi + 64]",
        "    .endif",
        "    movups xmm1, [rdi + 128]",
        "    fld tbyte ptr [rdi + 176]",
        "    fld tbyte ptr [rdi + 160]",
        "    ret",
        ".p2align 4",
        ".globl lt_g_call_ret\\V",
        "lt_g_call_ret\\V:",
        "    push rbx",
        "    push rbp",
        "    mov rbx, rsi",
        "    mov rbp, rsp",
        "    and rsp, -16",
        "    test rdx, rdx",
        "    jz 1f",
        "    sub rsp, 8",
        "1:",
        "    call lt_g_ret\\V",
        "    mov [rbx], rax",
        "    mov [rbx + 8], rdx",
        "    .if \\V == 0",
        "    movups [rbx + 64], xmm0",
        "    .elseif \\V == 1",
        "    vmovdqu [rbx + 64], ymm0",
        "    .else",
        "    vmovdqu64 [rbx + 64], zmm0",
        "    .endif",
        "    movups [rbx + 128], xmm1",
        "    fstp tbyte ptr [rbx + 160]",
        "    fstp tbyte ptr [rbx + 176]",
        "    mov rsp, rbp",
        "    pop rbp",
        "    pop rbx",
        "    ret",
        ".endm",
        "ret_values 0",
        "ret_values 1",
        "ret_values 2",
        ".popsection",
    );
    unsafe extern "C" {
        fn lt_g_ret0();
        fn lt_g_ret1();
        fn lt_g_ret2();
        fn lt_g_call_ret0(values: *const u8, out: *mut u8, misalign: u64);
        fn lt_g_call_ret1(values: *const u8, out: *mut u8, misalign: u64);
        fn lt_g_call_ret2(values: *const u8, out: *mut u8, misalign: u64);
    }

    /// A sink whose exit clobbers every register a function may: general,
    /// vector at full width, and the x87 stack (`fninit` empties it).
    struct Clobber(std::sync::atomic::AtomicU64);
    impl Sink for Clobber {
        fn exit(&self, _: usize, _: u64, _: u64, _: u64, _: u32) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let v = livetrace_ftrace::vector_state();
            // SAFETY: only caller-saved state is written, declared through
            // clobber_abi; the x87 stack is empty at a call (the ABI), so
            // `fninit` loses nothing of a correct caller's; the vector
            // instructions exist at the state the hooks were chosen for.
            unsafe {
                std::arch::asm!(
                    "fninit",
                    "mov rax, -1",
                    "mov rdx, -1",
                    "mov rcx, -1",
                    "mov rsi, -1",
                    "mov rdi, -1",
                    "mov r8, -1",
                    "mov r9, -1",
                    "mov r10, -1",
                    "mov r11, -1",
                    "pcmpeqd xmm0, xmm0",
                    "pcmpeqd xmm1, xmm1",
                    clobber_abi("C"),
                );
                match v {
                    livetrace_ftrace::VectorState::Xmm => {}
                    livetrace_ftrace::VectorState::Ymm => {
                        std::arch::asm!("vpcmpeqd ymm0, ymm0, ymm0", "vzeroupper", clobber_abi("C"),)
                    }
                    livetrace_ftrace::VectorState::Zmm => std::arch::asm!(
                        "vpternlogd zmm0, zmm0, zmm0, 0xff",
                        "vzeroupper",
                        clobber_abi("C"),
                    ),
                }
            }
        }
    }

    #[test]
    fn the_return_hook_keeps_every_result_register_at_any_alignment() {
        let v = livetrace_ftrace::vector_state();
        let (f, call): (
            unsafe extern "C" fn(),
            unsafe extern "C" fn(*const u8, *mut u8, u64),
        ) = match v {
            livetrace_ftrace::VectorState::Xmm => (lt_g_ret0, lt_g_call_ret0),
            livetrace_ftrace::VectorState::Ymm => (lt_g_ret1, lt_g_call_ret1),
            livetrace_ftrace::VectorState::Zmm => (lt_g_ret2, lt_g_call_ret2),
        };
        let site = f as *const () as usize;
        let sites = [ExternalSite {
            addr: site,
            name: "ret::values",
            file: file!(),
            line: 0,
        }];
        with_table(|t| t.insert_external(&sites)).unwrap().unwrap();
        let sink: &'static Clobber = Box::leak(Box::new(Clobber(Default::default())));
        // SAFETY: leaked, so it outlives its publication.
        unsafe { publish_sink(9998, sink as *const dyn Sink) };
        let ops = Ops::builder("graph-ret-test")
            .filter(Pattern::Addr(site))
            .build(move |call| {
                // SAFETY: the slot is this call's return slot.
                unsafe {
                    hook(
                        call.return_slot(),
                        call.ip(),
                        crate::clock_now(),
                        9998,
                        false,
                    )
                };
            });
        register(&ops).unwrap();
        let mut values = [0u8; 192];
        for (i, b) in values.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(29).wrapping_add(3);
        }
        // Two valid x87 extended values (1.5 and -2.25): 64-bit mantissa
        // with the integer bit, 15-bit exponent and sign.
        let ext = |m: u64, e: u16| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&m.to_le_bytes());
            b[8..10].copy_from_slice(&e.to_le_bytes());
            b
        };
        values[160..176].copy_from_slice(&ext(0xc000_0000_0000_0000, 0x3fff));
        values[176..192].copy_from_slice(&ext(0x9000_0000_0000_0000, 0xc000));
        let w = v.width();
        for misalign in [false, true] {
            let before = sink.0.load(std::sync::atomic::Ordering::Relaxed);
            let mut out = [0u8; 192];
            // SAFETY: the caller reads and writes 192 bytes at each pointer.
            unsafe { call(values.as_ptr(), out.as_mut_ptr(), misalign.into()) };
            assert_eq!(
                sink.0.load(std::sync::atomic::Ordering::Relaxed),
                before + 1,
                "the return went through the hook's exit"
            );
            let what = if misalign { "entered 8 off" } else { "aligned" };
            assert_eq!(out[..16], values[..16], "{what}: rax, rdx");
            assert_eq!(
                out[64..64 + w],
                values[64..64 + w],
                "{what}: vector register 0"
            );
            assert_eq!(out[128..144], values[128..144], "{what}: xmm1");
            assert_eq!(out[160..170], values[160..170], "{what}: st0");
            assert_eq!(out[176..186], values[176..186], "{what}: st1");
        }
        assert_eq!(depth(), 0);
        unregister(&ops).unwrap();
        assert!(unpublish_sink(9998));
    }
}
