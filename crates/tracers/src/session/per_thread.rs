//! A thread's state for a session (see "Per-thread state" in the
//! `session` module documentation): made on the thread's first call,
//! found again through a thread-local cache, unmapped with the session.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};

use crate::retstack::MAX_DEPTH;

use super::profile::ProfileTable;
use super::record::Pending;
use super::{Inner, Tracer};

/// What one thread keeps for one session, written by that thread only
/// (plain loads and stores: no read-modify-write, no shared cache line).
/// Lives in its own anonymous mapping (zeroed memory is a valid empty
/// state), followed by the profile table for profile sessions.
#[repr(C)]
pub(super) struct PerThread {
    /// The next thread's state (the session's list).
    next: AtomicPtr<PerThread>,
    /// The owning thread's serial ([`livetrace_ring::thread_serial`]).
    owner: u64,
    /// Bytes of the mapping.
    bytes: usize,
    /// Calls the Rust callback recorded while a fast path is installed (a
    /// thread's first call, a shared function, a full DropNewest buffer,
    /// the shadow stack full). Counted only then.
    pub(super) slow_events: AtomicU64,
    /// The profile table after this struct, or null.
    pub(super) profile: *const ProfileTable,
    /// Held-back entries by depth (minimum duration). Only its thread
    /// touches it.
    pub(super) pending: UnsafeCell<[Pending; MAX_DEPTH]>,
}

thread_local! {
    /// This thread's [`PerThread`] for the session with the given id.
    static PER_THREAD: UnsafeCell<(u32, *const PerThread)> = const { UnsafeCell::new((0, std::ptr::null())) };
}

impl Inner {
    #[inline]
    pub(super) fn count_slow(&self) {
        if self.fast {
            if let Some(t) = self.per_thread() {
                t.slow_events
                    .store(t.slow_events.load(Relaxed) + 1, Relaxed);
            }
        }
    }

    /// This thread's state, made on its first use with an `mmap` and a
    /// compare-and-swap (async-signal-safe); `None` in a fork child (its
    /// writes must not touch the parent's session), or if memory is out.
    pub(super) fn per_thread(&self) -> Option<&PerThread> {
        PER_THREAD.with(|p| {
            // SAFETY: only this thread touches its cache.
            let cache = unsafe { &mut *p.get() };
            if cache.0 != self.id || cache.1.is_null() {
                let t = self.find_or_make_per_thread()?;
                cache.1 = t;
                cache.0 = self.id;
            }
            // SAFETY: kept alive by `threads` as long as the session, and
            // the session outlives every call into it.
            Some(unsafe { &*cache.1 })
        })
    }

    #[cold]
    fn find_or_make_per_thread(&self) -> Option<*const PerThread> {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } != self.pid {
            return None;
        }
        let me = livetrace_ring::thread_serial();
        let mut p = self.threads.load(Acquire);
        while !p.is_null() {
            // SAFETY: list entries live until the session is dropped.
            let t = unsafe { &*p };
            if t.owner == me {
                return Some(p);
            }
            p = t.next.load(Acquire);
        }
        let profile = self.tracer == Tracer::Profile;
        let page = 4096;
        let bytes = (std::mem::size_of::<PerThread>()
            + if profile {
                std::mem::size_of::<ProfileTable>()
            } else {
                0
            })
        .next_multiple_of(page);
        // SAFETY: a fresh anonymous mapping aliases nothing; failure is
        // MAP_FAILED.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return None;
        }
        let t = m.cast::<PerThread>();
        // SAFETY: the mapping is zeroed (a valid PerThread in every field
        // but these, written before it is published) and large enough for
        // the struct and, for a profile session, the table after it
        // (aligned: PerThread's size is a multiple of 8).
        unsafe {
            (&raw mut (*t).owner).write(me);
            (&raw mut (*t).bytes).write(bytes);
            if profile {
                let table = m.cast::<u8>().add(std::mem::size_of::<PerThread>());
                (&raw mut (*t).profile).write(table.cast());
            }
        }
        // Publish: a lock-free push (other threads may push too).
        let mut head = self.threads.load(Relaxed);
        loop {
            // SAFETY: ours until published.
            unsafe { (*t).next.store(head, Relaxed) };
            match self
                .threads
                .compare_exchange_weak(head, t, Release, Relaxed)
            {
                Ok(_) => return Some(t),
                Err(h) => head = h,
            }
        }
    }

    /// Every thread's state.
    pub(super) fn each_thread(&self, mut f: impl FnMut(&PerThread)) {
        let mut p = self.threads.load(Acquire);
        while !p.is_null() {
            // SAFETY: list entries live until the session is dropped.
            let t = unsafe { &*p };
            f(t);
            p = t.next.load(Acquire);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut p = *self.threads.get_mut();
        while !p.is_null() {
            // SAFETY: the session is gone (no callback can run: its ops
            // was unregistered and waited for, its sink unpublished), so
            // nothing uses the list; each entry is its own mapping.
            unsafe {
                let next = (*p).next.load(Relaxed);
                libc::munmap(p.cast(), (*p).bytes);
                p = next;
            }
        }
    }
}
