//! Per-thread state the trampolines touch, by thread-pointer offset.

use std::cell::Cell;

/// Read and written by the trampolines' assembly at `fs:[tpoff]`; the layout
/// is fixed by it. The first 8 bytes are the word the quiescence wait
/// samples.
#[repr(C)]
pub(crate) struct ThreadState {
    /// Bumped on entering and on leaving a callback: odd while inside one.
    /// (A fast path stores 1 while it runs and 2 when done; see fast.rs.
    /// The value only ever needs to change when a callback is left.)
    pub seq: Cell<u32>,
    _pad: Cell<u32>,
    /// Calls dropped because they came from inside a callback.
    pub dropped: Cell<u64>,
}

thread_local! {
    // A const-initialised thread local without Drop is plain ELF TLS: it
    // lives at a fixed offset from the thread pointer in every thread (in
    // the static TLS block, for the executable and libraries loaded at
    // start-up), which is what lets copied trampolines reach it.
    pub(crate) static STATE: ThreadState = const {
        ThreadState { seq: Cell::new(0), _pad: Cell::new(0), dropped: Cell::new(0) }
    };
}

/// The thread-pointer offset of [`STATE`], the same in every thread.
pub(crate) fn tpoff() -> isize {
    STATE.with(|s| livetrace_poke::tls_offset_of(s as *const ThreadState as usize))
}

/// Whether [`STATE`] is in static TLS: the offset is the same on a new
/// thread. (A library loaded late with `dlopen` may get dynamic TLS, which
/// copied trampolines cannot reach.)
pub(crate) fn tls_is_static() -> bool {
    let here = tpoff();
    std::thread::spawn(tpoff)
        .join()
        .is_ok_and(|there| there == here)
}

/// Calls this thread dropped because they came from inside a callback: a
/// callback calling traced functions, or a signal handler interrupting one.
pub fn recursion_dropped() -> u64 {
    STATE.with(|s| s.dropped.get())
}

/// Whether this thread is inside a callback (or a fast path) now.
pub(crate) fn in_callback() -> bool {
    STATE.with(|s| s.seq.get() & 1 != 0)
}

/// Decodes a sampled word: (inside a callback, seq).
pub(crate) fn decode(word: u64) -> (bool, u32) {
    (word & 1 != 0, word as u32)
}

/// Suppresses tracing on this thread while alive: traced calls made meanwhile
/// run untraced and are counted as dropped, exactly as inside a callback.
/// Code that runs outside a trampoline but must not be traced (a return
/// hook's exit path) holds one. Also makes the quiescence wait treat the
/// thread as busy, so state it reads stays alive.
pub struct Suppress {
    entered: bool,
}

/// Starts suppressing tracing on this thread; see [`Suppress`].
#[inline]
pub fn suppress() -> Suppress {
    STATE.with(|s| {
        let seq = s.seq.get();
        let entered = seq & 1 == 0;
        if entered {
            s.seq.set(seq.wrapping_add(1));
        }
        Suppress { entered }
    })
}

impl Drop for Suppress {
    #[inline]
    fn drop(&mut self) {
        if self.entered {
            STATE.with(|s| s.seq.set(s.seq.get().wrapping_add(1)));
        }
    }
}
