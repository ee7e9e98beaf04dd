//! The probed thread's side: what the world signal's handler does when its
//! token is the published request's (async-signal-safe: atomics and reads
//! of its own stacks only).

use super::*;

/// The alternate signal stack of the calling thread, if it has one.
fn altstack() -> Option<Range<usize>> {
    let mut ss = std::mem::MaybeUninit::<libc::stack_t>::zeroed();
    // SAFETY: sigaltstack with a null new stack only reads the current one;
    // async-signal-safe.
    if unsafe { libc::sigaltstack(std::ptr::null(), ss.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled by sigaltstack.
    let ss = unsafe { ss.assume_init() };
    (ss.ss_flags & libc::SS_DISABLE == 0 && ss.ss_size > 0)
        .then(|| ss.ss_sp as usize..ss.ss_sp as usize + ss.ss_size)
}

/// Called by the world signal's handler. Returns whether the token was
/// this module's current request (and answered it).
pub(crate) fn answer(token: usize, uc: *mut libc::ucontext_t) -> bool {
    IN_FLIGHT.fetch_add(1, SeqCst);
    let req = ACTIVE.load(SeqCst);
    // SAFETY: a published request stays alive until the prober has
    // unpublished it and drained IN_FLIGHT, and we are counted.
    let ours = !req.is_null() && token_of(unsafe { &*req }) == token;
    if ours {
        // SAFETY: as above.
        let req = unsafe { &*req };
        let tid = proc::gettid();
        if let Some(slot) = req.slots.iter().find(|s| s.tid.load(SeqCst) == tid) {
            // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO
            // handler; it lives on this handler's frame.
            let g = unsafe { &mut (*uc).uc_mcontext.gregs };
            let start = Context {
                rip: g[libc::REG_RIP as usize] as usize,
                rsp: g[libc::REG_RSP as usize] as usize,
            };
            let mut out = [Context::default(); MAX_CONTEXTS];
            let mut v = InRanges {
                ranges: &req.scan,
                hit: None,
            };
            let w = frames::walk(
                start,
                &req.regions,
                altstack(),
                &req.restorers[..req.nrestorers],
                &mut v,
                &mut out,
            );
            slot.hit.store(v.hit.unwrap_or(0), SeqCst);
            for (i, c) in out[..w.n].iter().enumerate() {
                slot.rips[i].store(c.rip, SeqCst);
                slot.rsps[i].store(c.rsp, SeqCst);
            }
            slot.n.store(w.n, SeqCst);
            slot.complete.store(u8::from(w.complete), SeqCst);
            slot.word.store(tls_word(req.tls_offset), SeqCst);
            if slot.mark.load(SeqCst) != 0 {
                mark_tls_byte(req.tls_offset, req.mark.0, req.mark.1);
            }
            if req.unblock {
                // The mask sigreturn restores: the thread resumes with
                // SIGTRAP and the world signal deliverable.
                // SAFETY: as above; the ucontext's mask is plain memory.
                unsafe { crate::signals::strip(&mut (*uc).uc_sigmask) };
            }
            slot.done.store(1, SeqCst);
        }
    }
    IN_FLIGHT.fetch_sub(1, SeqCst);
    ours
}
