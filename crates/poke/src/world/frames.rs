//! Reading a thread's whole interrupted state: its RIP, and the contexts
//! saved in the signal frames on its stacks.
//!
//! When the kernel delivers a signal it pushes an `rt_sigframe` (x86-64:
//! `pretcode`, then a `ucontext`, then a `siginfo`) on the stack the handler
//! runs on, and the handler "returns" through `pretcode` (the `sa_restorer`,
//! glibc's `__restore_rt`) into `rt_sigreturn`, which restores the saved
//! context. A thread interrupted inside some code by a signal whose handler
//! then runs for a while is *not* executing that code, but it will return
//! into it: its RIP there is in the saved context, not in the register.
//! Nothing links these frames together, so they are found by scanning the
//! stack upward from the interrupted stack pointer for words equal to a
//! restorer address (a value nothing else on a stack holds: nothing calls
//! `__restore_rt`) and checking that what follows is a user-mode context
//! (`cs == 0x33`). A frame on an alternate signal stack saved a stack pointer
//! on another stack; that stack is scanned in turn.
//!
//! Everything here is async-signal-safe: memory is read with
//! `process_vm_readv` on our own process (a bad address is an error, never a
//! fault), into buffers on the caller's stack, and nothing allocates.

use std::ops::Range;

/// Byte offsets inside an x86-64 `rt_sigframe`, from its `pretcode` word:
/// `pretcode` (8), then `ucontext`: `uc_flags` (8), `uc_link` (8),
/// `uc_stack` (24), `uc_mcontext` (glibc's `gregs` order: r8 … r15, rdi,
/// rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags, then cs/gs/fs/ss as
/// 16-bit fields).
const MCONTEXT: usize = 48;
const SAVED_RSP: usize = MCONTEXT + 15 * 8;
const SAVED_RIP: usize = MCONTEXT + 16 * 8;
const SAVED_CS: usize = MCONTEXT + 18 * 8;
/// The user-mode 64-bit code segment selector on x86-64 Linux.
const USER_CS: u16 = 0x33;
/// Bytes of a frame read to check and decode it.
const FRAME_BYTES: usize = SAVED_CS + 8;

/// Contexts (the interrupted one and saved ones) reported per thread at
/// most; a thread nested deeper is reported incomplete.
pub const MAX_CONTEXTS: usize = 16;
/// Stacks followed per thread at most (the interrupted one, alternate
/// signal stacks, the stacks they interrupted).
const MAX_STACKS: usize = 8;
/// The most stack scanned above one starting stack pointer. A thread's
/// stack is one mapping, scanned to its end; but a stack carved out of a
/// larger mapping (a coroutine's, in the heap) has no end the walk can
/// know, and the walk stops here. A signal frame is only missed if the
/// code running on top of it has since used more than this much stack.
pub const MAX_SCAN: usize = 1 << 20;

/// A readable mapping, for bounding scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub start: usize,
    pub end: usize,
}

/// One execution context: where a thread will resume, and its stack pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The instruction pointer.
    pub rip: usize,
    /// The stack pointer.
    pub rsp: usize,
}

/// Reads `buf.len()` bytes at `addr` of our own memory; returns how many
/// were read (fewer at the end of a mapping, 0 if `addr` is unmapped).
pub(crate) fn read_mem(addr: usize, buf: &mut [u8]) -> usize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: process_vm_readv on our own pid copies readable bytes into
    // `buf` (which we own) and reports a bad remote address as an error
    // instead of faulting; it is a plain system call, async-signal-safe.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        0
    } else {
        n as usize
    }
}

fn word_at(buf: &[u8], off: usize) -> usize {
    let mut w = [0u8; 8];
    if let Some(b) = buf.get(off..off + 8) {
        w.copy_from_slice(b);
    }
    usize::from_ne_bytes(w)
}

/// What a walk found and whether it saw everything.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Walked {
    /// Contexts in `out[..n]`: the starting one first, then each saved one
    /// in the order found.
    pub n: usize,
    /// Every stack involved was scanned to its end and no context was left
    /// out.
    pub complete: bool,
}

/// What to do with each stack word, besides finding signal frames.
pub(crate) trait WordVisitor {
    /// Returns false to stop the walk (the caller has its answer).
    fn word(&mut self, addr: usize, value: usize) -> bool;
}

/// Visits nothing: only signal frames matter.
pub(crate) struct NoWords;

impl WordVisitor for NoWords {
    fn word(&mut self, _: usize, _: usize) -> bool {
        true
    }
}

/// Walks the stacks of a thread stopped at `start`: fills `out` with
/// `start` and every context saved in a signal frame found on the stack
/// above `start.rsp` (following saved stack pointers onto other stacks),
/// calling `words` for every word scanned.
///
/// `regions` (sorted, non-overlapping) bound each scan: a stack is scanned
/// from its stack pointer to the end of the region holding it, or to
/// `alt_end` when the stack pointer lies in `alt` (the thread's alternate
/// signal stack, usually carved out of a larger heap mapping). A stack
/// pointer in no region makes the walk incomplete. `restorers` are the
/// possible `pretcode` values (sorted).
pub(crate) fn walk(
    start: Context,
    regions: &[Region],
    alt: Option<Range<usize>>,
    restorers: &[usize],
    words: &mut impl WordVisitor,
    out: &mut [Context; MAX_CONTEXTS],
) -> Walked {
    out[0] = start;
    let mut n = 1;
    let mut complete = true;
    // Stack pointers still to scan from, and the ranges already scanned (a
    // saved rsp inside one of them needs no new scan).
    let mut todo = [0usize; MAX_STACKS];
    let mut ntodo = 1;
    todo[0] = start.rsp;
    let mut done: [Range<usize>; MAX_STACKS] = Default::default();
    let mut ndone = 0;
    let mut buf = [0u8; 4096];
    let mut frame = [0u8; FRAME_BYTES];
    while ntodo > 0 {
        ntodo -= 1;
        let sp = todo[ntodo] & !7;
        let end = match &alt {
            Some(a) if a.contains(&sp) => Some(a.end),
            _ => {
                let i = regions.partition_point(|r| r.end <= sp);
                regions.get(i).filter(|r| r.start <= sp).map(|r| r.end)
            }
        };
        let Some(end) = end else {
            complete = false;
            continue;
        };
        let end = end.min(sp.saturating_add(MAX_SCAN));
        if ndone < MAX_STACKS {
            done[ndone] = sp..end;
            ndone += 1;
        }
        let mut at = sp;
        while at < end {
            let len = (end - at).min(buf.len());
            let got = read_mem(at, &mut buf[..len]) & !7;
            if got == 0 {
                // The mapping shrank or was never readable this far: what
                // lies beyond is not a live frame of this thread.
                break;
            }
            for off in (0..got).step_by(8) {
                let addr = at + off;
                let v = word_at(&buf, off);
                if !words.word(addr, v) {
                    return Walked { n, complete };
                }
                if restorers.binary_search(&v).is_err() {
                    continue;
                }
                if read_mem(addr, &mut frame) < FRAME_BYTES {
                    continue;
                }
                let cs = u16::from_ne_bytes([frame[SAVED_CS], frame[SAVED_CS + 1]]);
                if cs != USER_CS {
                    continue;
                }
                let saved = Context {
                    rip: word_at(&frame, SAVED_RIP),
                    rsp: word_at(&frame, SAVED_RSP),
                };
                if n < MAX_CONTEXTS {
                    out[n] = saved;
                    n += 1;
                } else {
                    complete = false;
                }
                // The interrupted code's stack: usually further up this
                // same one (already being scanned); on another stack when
                // the handler ran on an alternate signal stack.
                let seen = done[..ndone].iter().any(|r| r.contains(&saved.rsp))
                    || todo[..ntodo].contains(&saved.rsp);
                if !seen {
                    if ntodo < MAX_STACKS {
                        todo[ntodo] = saved.rsp;
                        ntodo += 1;
                    } else {
                        complete = false;
                    }
                }
            }
            at += got;
        }
    }
    Walked { n, complete }
}

/// The restorers of every signal disposition of the process (what a
/// signal frame's `pretcode` can hold), sorted and deduplicated, into
/// `out`; returns how many. Allocates nothing.
pub(crate) fn restorers(out: &mut [usize; 8]) -> usize {
    let mut n = 0;
    for sig in 1..=libc::SIGRTMAX() {
        let mut sa = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries a disposition only (null new action).
        let rc = unsafe { crate::signals::real_sigaction(sig, std::ptr::null(), sa.as_mut_ptr()) };
        if rc != 0 {
            continue;
        }
        // SAFETY: filled by sigaction.
        let sa = unsafe { sa.assume_init() };
        let r = sa.sa_restorer.map_or(0, |f| f as usize);
        if r != 0 && !out[..n].contains(&r) && n < out.len() {
            out[n] = r;
            n += 1;
        }
    }
    out[..n].sort_unstable();
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_refuses_bad_addresses() {
        let x = [7u8; 64];
        let mut b = [0u8; 64];
        assert_eq!(read_mem(x.as_ptr() as usize, &mut b), 64);
        assert_eq!(b, x);
        assert_eq!(read_mem(8, &mut b), 0);
    }

    #[test]
    fn finds_frames_in_a_fake_stack() {
        // A fake stack with one signal frame in it, whose saved context
        // points further up the same stack.
        let mut stack = vec![0usize; 256];
        let base = stack.as_ptr() as usize;
        let restorer = 0x1234_5678usize;
        let frame = 16; // word index of pretcode
        stack[frame] = restorer;
        stack[frame + SAVED_RIP / 8] = 0xdead_beef;
        stack[frame + SAVED_RSP / 8] = base + 200 * 8;
        stack[frame + SAVED_CS / 8] = USER_CS as usize;
        // A restorer-looking word without a user cs is not a frame.
        stack[100] = restorer;
        let regions = [Region {
            start: base,
            end: base + 256 * 8,
        }];
        let mut out = [Context::default(); MAX_CONTEXTS];
        let w = walk(
            Context {
                rip: 1,
                rsp: base + 8,
            },
            &regions,
            None,
            &[restorer],
            &mut NoWords,
            &mut out,
        );
        assert!(w.complete);
        assert_eq!(w.n, 2);
        assert_eq!(out[1].rip, 0xdead_beef);
        // A stack pointer in no region: incomplete.
        let w = walk(
            Context { rip: 1, rsp: 16 },
            &regions,
            None,
            &[restorer],
            &mut NoWords,
            &mut out,
        );
        assert!(!w.complete);
        drop(stack);
    }
}
