//! Unwinding through hooked frames.
//!
//! A hooked function's return slot holds the hook's address (or, for the
//! graph fast path, the return address into the site's stub) instead of
//! its caller's. An unwinder that reads it finds a frame at that address
//! (a *pseudo-frame*), and the unwind information there — the hooks'
//! `.cfi` directives, the core's registered FDEs for stub pages — says:
//! this frame's caller has rsp = CFA (the slot + 8) and its return address
//! is in the slot (CFA - 8). What makes that true is the slot holding the
//! real address by the time the unwinder reads it:
//!
//! - **Exceptions, panics, `pthread_exit`, `pthread_cancel`**: the unwind
//!   information names [`personality`], which libgcc's unwinder calls for
//!   the pseudo-frame in both phases of `_Unwind_RaiseException` and in
//!   `_Unwind_ForcedUnwind` — however the unwinder was reached, including
//!   glibc's own calls into the libgcc_s it loads with `dlopen`. It puts
//!   the frame's real return address into the slot and drops the frame:
//!   an unwinder only visits live frames, and this one is being unwound
//!   (a frame below a handler is never visited). Destructors and cleanups
//!   above the hooked frames run as without tracing.
//! - **Backtraces** (`_Unwind_Backtrace`, which Rust's `std::backtrace`
//!   and the `backtrace` crate call; glibc's `backtrace()`): no
//!   personality runs, so this crate defines both, and they reach the
//!   program's references first (symbol interposition: the executable's
//!   or a preloaded library's definitions win). Each pseudo-frame the
//!   walk reaches gets its real return address *lent* into its slot, is
//!   left out of the trace, and gets the hook back when the walk ends. Only
//!   slots the walk reaches are written, so only live frames' — never one
//!   a `longjmp` skipped. The walk holds the recursion guard, so no frame
//!   of this thread is hooked or collected meanwhile; it is
//!   async-signal-safe (a profiler's SIGPROF handler).
//!
//! An unwinder that does neither (a debugger; libgcc's `_Unwind_Backtrace`
//! reached some other way than by symbol) sees the pseudo-frame's return
//! address still pointing at the hook: stub frames end the walk there (their
//! unwind information says so), hook frames repeat until the walker stops
//! (gdb: "previous frame identical to this frame").

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering::*};

use libc::c_int;

use crate::retstack::{self, MAX_DEPTH};

const URC_NO_REASON: c_int = 0;
const URC_FATAL_PHASE1_ERROR: c_int = 3;
const URC_END_OF_STACK: c_int = 5;
const URC_CONTINUE_UNWIND: c_int = 8;

unsafe extern "C" {
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
    fn _Unwind_GetCFA(ctx: *mut c_void) -> usize;
}

/// The personality routine of the hooks' and the stubs' unwind
/// information (see the module documentation).
///
/// # Safety
/// Called by the unwinder, with its context for the pseudo-frame.
pub(crate) unsafe extern "C" fn personality(
    version: c_int,
    _actions: c_int,
    _class: u64,
    _exception: *mut c_void,
    ctx: *mut c_void,
) -> c_int {
    if version != 1 {
        return URC_FATAL_PHASE1_ERROR;
    }
    // SAFETY: the unwinder's context for this frame.
    let (ip, cfa) = unsafe { (_Unwind_GetIP(ctx), _Unwind_GetCFA(ctx)) };
    let slot = cfa.wrapping_sub(8);
    if let Some(found) = retstack::find_frame(slot, ip) {
        // SAFETY: the slot of a live frame the unwinder is going through.
        unsafe { retstack::take(&found, slot) };
        retstack::count_unwound(&found);
    }
    URC_CONTINUE_UNWIND
}

/// What a trace function is.
pub(crate) type TraceFn = unsafe extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int;
type BacktraceFn = unsafe extern "C" fn(TraceFn, *mut c_void) -> c_int;

/// libgcc's `_Unwind_Backtrace`, resolved before any signal handler can
/// need it (dlsym is not async-signal-safe).
static REAL_BACKTRACE: AtomicUsize = AtomicUsize::new(0);

/// Resolves libgcc's `_Unwind_Backtrace` (the definition after ours).
pub(crate) fn resolve() -> usize {
    let a = REAL_BACKTRACE.load(Acquire);
    if a != 0 {
        return a;
    }
    // SAFETY: dlsym with RTLD_NEXT finds the next definition; no effect.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"_Unwind_Backtrace".as_ptr()) };
    if p.is_null() {
        crate::fatal("the unwinder's _Unwind_Backtrace is not loaded");
    }
    REAL_BACKTRACE.store(p as usize, Release);
    p as usize
}

// Resolved at load time, before main and before any thread exists.
#[used]
#[unsafe(link_section = ".init_array")]
static RESOLVE_AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        resolve();
    }
    at_load
};

struct Walk {
    trace: TraceFn,
    arg: *mut c_void,
    /// Slots lent their real return address, with what they held.
    lent: [(usize, usize); MAX_DEPTH],
    n: usize,
    /// The first frame is the walk's own (this crate's
    /// `_Unwind_Backtrace`), not the caller's.
    first: bool,
    /// Frames seen, and the last one's (ip, cfa): a walk that goes round
    /// in a circle (a stack the unwinder cannot make sense of, a frame it
    /// keeps finding again) is ended rather than left to spin forever in a
    /// signal handler.
    seen: usize,
    last: (usize, usize),
}

/// Frames a backtrace walks at most.
const MAX_WALK: usize = 4096;

unsafe extern "C" fn walk_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Walk `_Unwind_Backtrace` below passed.
    let w = unsafe { &mut *(arg as *mut Walk) };
    if std::mem::take(&mut w.first) {
        return URC_NO_REASON;
    }
    // SAFETY: the unwinder's context for this frame.
    let (ip, cfa) = unsafe { (_Unwind_GetIP(ctx), _Unwind_GetCFA(ctx)) };
    w.seen += 1;
    if w.seen > MAX_WALK || (ip, cfa) == w.last {
        return URC_END_OF_STACK;
    }
    w.last = (ip, cfa);
    let slot = cfa.wrapping_sub(8);
    if w.n < MAX_DEPTH {
        if let Some(found) = retstack::find_frame(slot, ip) {
            let f = &found.block.frames[found.k];
            // SAFETY: the slot of a live frame this walk reached: the
            // unwinder reads the return address there next.
            unsafe {
                let old = (slot as *const usize).read();
                (slot as *mut usize).write(f.ret.load(Relaxed));
                w.lent[w.n] = (slot, old);
            }
            w.n += 1;
            return URC_NO_REASON;
        }
    }
    if retstack::hook_code().iter().any(|r| r.contains(&ip)) {
        // Inside a hook (a signal interrupted it): not the program's.
        return URC_NO_REASON;
    }
    // SAFETY: the caller's trace function, with its argument.
    unsafe { (w.trace)(ctx, w.arg) }
}

/// A backtrace walks the stack without changing it: lends hooked frames
/// their real return addresses as it reaches them, hides the hooks, and
/// puts everything back. See the module documentation.
///
/// # Safety
/// As libgcc's `_Unwind_Backtrace`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int {
    let real = resolve();
    // SAFETY: the loader's definition has this signature.
    let real: BacktraceFn = unsafe { std::mem::transmute::<usize, BacktraceFn>(real) };
    let _quiet = livetrace_ftrace::suppress();
    let mut w = Walk {
        trace,
        arg,
        lent: [(0, 0); MAX_DEPTH],
        n: 0,
        first: true,
        seen: 0,
        last: (0, 0),
    };
    // SAFETY: walk_frame is a trace function; `w` outlives the walk.
    let r = unsafe { real(walk_frame, (&raw mut w).cast()) };
    for &(slot, old) in w.lent[..w.n].iter().rev() {
        // SAFETY: slots this walk lent, still live: the frames cannot have
        // returned while this thread was in the walk.
        unsafe { (slot as *mut usize).write(old) };
    }
    r
}

/// glibc's `backtrace()`, which calls the `_Unwind_Backtrace` of the
/// libgcc_s it loads itself: the same, through ours.
///
/// # Safety
/// As glibc's: `buffer` has room for `size` pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn backtrace(buffer: *mut *mut c_void, size: c_int) -> c_int {
    struct Collect {
        buffer: *mut *mut c_void,
        size: c_int,
        /// -1 until this function's own frame has been skipped.
        n: c_int,
    }
    unsafe extern "C" fn collect(ctx: *mut c_void, arg: *mut c_void) -> c_int {
        // SAFETY: `arg` is the Collect below.
        let c = unsafe { &mut *(arg as *mut Collect) };
        if c.n >= 0 {
            // SAFETY: n < size, checked below; the context is the
            // unwinder's.
            unsafe { *c.buffer.add(c.n as usize) = _Unwind_GetIP(ctx) as *mut c_void };
        }
        c.n += 1;
        if c.n == c.size {
            URC_END_OF_STACK
        } else {
            URC_NO_REASON
        }
    }
    if size <= 0 {
        return 0;
    }
    let mut c = Collect {
        buffer,
        size,
        n: -1,
    };
    // SAFETY: `collect` is a trace function; `c` outlives the walk.
    unsafe { _Unwind_Backtrace(collect, (&raw mut c).cast()) };
    let mut n = c.n.max(0);
    // As glibc: a last frame of address 0 is the end of the stack.
    // SAFETY: n - 1 < size was written above.
    if n > 1 && unsafe { (*buffer.add(n as usize - 1)).is_null() } {
        n -= 1;
    }
    n
}
