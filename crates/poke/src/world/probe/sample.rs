//! The simple interface on top of [`observe`]: every thread of the
//! process, probed, with its interrupted address and a TLS word.

use super::*;

/// One thread's answer to [`sample_threads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSample {
    /// The thread id.
    pub tid: i32,
    /// Where it was interrupted; `None` for the calling thread, which is
    /// running `sample_threads`.
    pub rip: Option<usize>,
    /// The 8 bytes at the thread pointer plus the offset given.
    pub word: u64,
}

/// Samples every thread of the process by probing it: where it is
/// executing and the 8-byte word at `tls_offset` from its thread pointer.
/// Threads that exit meanwhile are left out; threads that do not answer
/// within `timeout` (the world signal blocked, or stopped by a debugger)
/// make it an error.
///
/// `tls_offset` must come from [`tls_offset_of`] applied to a static-TLS
/// variable (one of the executable or of a library loaded at start-up) of
/// at least 8 bytes.
pub fn sample_threads(
    tls_offset: isize,
    timeout: Duration,
) -> Result<Vec<ThreadSample>, crate::Error> {
    sample(tls_offset, timeout, None)
}

/// [`sample_threads`], and each other thread, in its handler, right after
/// reading its word, also turns the byte at `tls_offset` from `from` into
/// `to` (a thread can write that byte from its own code only, so there is
/// no race). The reported words are the values before the marking.
///
/// This is how a waiter tells a busy span it saw from a later one without
/// a counter the thread must bump: the thread sets the byte to `from` when
/// a span starts and clears it when it ends; the waiter marks, and a later
/// sample that does not find `to` any more proves the marked span ended.
pub fn sample_threads_marking(
    tls_offset: isize,
    timeout: Duration,
    from: u8,
    to: u8,
) -> Result<Vec<ThreadSample>, crate::Error> {
    sample(tls_offset, timeout, Some((from, to)))
}

fn sample(
    tls_offset: isize,
    timeout: Duration,
    mark: Option<(u8, u8)>,
) -> Result<Vec<ThreadSample>, crate::Error> {
    let me = proc::gettid();
    let targets: Vec<Target> = crate::world::threads()
        .map_err(crate::Error::Io)?
        .into_iter()
        .map(|tid| Target {
            tid,
            mark: mark.is_some() && tid != me,
        })
        .collect();
    let obs = observe(
        &targets,
        &Observe {
            tls_offset,
            mark: mark.unwrap_or((0, 0)),
            passive: false,
            stack_code: &[],
            probe_scan: false,
            timeout,
        },
    )?;
    let silent: Vec<i32> = obs
        .iter()
        .filter(|o| matches!(o.seen, Seen::Unresponsive(_)))
        .map(|o| o.tid)
        .collect();
    if !silent.is_empty() {
        return Err(crate::Error::Unresponsive(silent));
    }
    Ok(obs
        .into_iter()
        .filter(|o| o.seen != Seen::Gone)
        .map(|o| ThreadSample {
            tid: o.tid,
            rip: (o.tid != me).then(|| o.contexts.first().map_or(0, |c| c.rip)),
            word: o.word,
        })
        .collect())
}
