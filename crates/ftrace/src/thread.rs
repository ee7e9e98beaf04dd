//! Per-thread state the trampolines touch, by thread-pointer offset.

use std::cell::Cell;

/// Read and written by the trampolines' assembly at `fs:[tpoff]`; the layout
/// is fixed by it. The first 8 bytes are the word the quiescence wait
/// samples.
#[repr(C)]
pub(crate) struct ThreadState {
    /// [`OUTSIDE`], or [`INSIDE`] while the thread is in a callback, a fast
    /// path or a [`Suppress`]: set and cleared by plain stores of those
    /// constants, by the thread itself. A quiescence wait that finds it
    /// [`INSIDE`] turns it into [`MARKED`] (from the thread's own probe
    /// handler, so without a race); it stays so until that span ends.
    pub inside: Cell<u8>,
    _pad: [Cell<u8>; 7],
    /// Calls dropped because they came from inside a callback.
    pub dropped: Cell<u64>,
}

/// The thread is in no callback, fast path or [`Suppress`].
pub(crate) const OUTSIDE: u8 = 0;
/// The thread is in one.
pub(crate) const INSIDE: u8 = 1;
/// The thread is in one that a quiescence wait has seen.
pub(crate) const MARKED: u8 = 2;

thread_local! {
    // A const-initialised thread local without Drop is plain ELF TLS: it
    // lives at a fixed offset from the thread pointer in every thread (in
    // the static TLS block, for the executable and libraries loaded at
    // start-up), which is what lets copied trampolines reach it.
    pub(crate) static STATE: ThreadState = const {
        ThreadState {
            inside: Cell::new(OUTSIDE),
            _pad: [const { Cell::new(0) }; 7],
            dropped: Cell::new(0),
        }
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

/// Whether this thread is inside a callback, a fast path or a
/// [`Suppress`] now (its traced calls are dropped). A signal handler can
/// ask: it is true when the handler interrupted one.
pub fn in_callback() -> bool {
    STATE.with(|s| s.inside.get() != OUTSIDE)
}

/// The `inside` byte of a sampled word.
pub(crate) fn inside_of(word: u64) -> u8 {
    word as u8
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
        let entered = s.inside.get() == OUTSIDE;
        if entered {
            s.inside.set(INSIDE);
        }
        Suppress { entered }
    })
}

impl Drop for Suppress {
    #[inline]
    fn drop(&mut self) {
        if self.entered {
            STATE.with(|s| s.inside.set(OUTSIDE));
        }
    }
}
