//! The writer's side as machine code sees it, for trampolines that push
//! records without calling into Rust (the tracers' assembly fast paths).
//!
//! A thread finds its buffer of a [`Rings`](super::Rings) with id `id` in its writer
//! cache: the way (`id` word, then buffer pointer) at thread-pointer offset
//! [`cache_tpoff`]`() + (id % WAYS) * WAY_BYTES`, if that way's `id`
//! matches (on a miss, the Rust [`Rings::write`](super::Rings::write) finds or takes the buffer
//! and fills the way). The way's `buffer` points at the buffer's writer
//! fields, at the `*_OFFSET`s below. A push of record `h = head` is exactly
//! what [`Rings::write`](super::Rings::write) does: if the `overwrite` byte is 0 (DropNewest, or
//! frozen), give up unless `h - tail_seen <= mask` (the Rust path reloads
//! the consumer's tail and counts refusals); store `started = h + 1`; store
//! the four words at `slots + (h & mask) * 32`; store `head = h + 1`. Plain
//! `mov`s in that order (x86-64 keeps stores in order).
//!
//! The rules of the crate documentation hold unchanged: only the owning
//! thread pushes, never reentrantly (a signal handler must not push while
//! it interrupted a push), and the `Rings` must outlive every push: a
//! cached way is only valid while the `Rings` whose id it carries is alive,
//! which the caller must guarantee some other way than by borrowing it.

use super::{CacheEntry, Header, WriterLine, CACHE, CACHE_WAYS};
use std::mem::offset_of;

/// Ways in the per-thread cache.
pub const WAYS: usize = CACHE_WAYS;
/// Bytes per way: the `id` word, then the `buffer` pointer.
pub const WAY_BYTES: usize = std::mem::size_of::<CacheEntry>();
/// Offset of a way's buffer pointer.
pub const WAY_BUFFER_OFFSET: usize = offset_of!(CacheEntry, buffer);
/// Offset of the pointer to the slots (32-byte records).
pub const SLOTS_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, slots);
/// Offset of the index mask (records - 1).
pub const MASK_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, mask);
/// Offset of the overwrite byte (1: Overwrite, 0: DropNewest or frozen).
pub const OVERWRITE_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, overwrite);
/// Offset of `head`, the count of records ever pushed.
pub const HEAD_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, head);
/// Offset of `started`, the seqlock's write-in-progress count.
pub const STARTED_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, started);
/// Offset of `tail_seen`, the writer's stale copy of the consumer's tail.
pub const TAIL_SEEN_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, tail_seen);
/// Offset of `dropped`, the count of records the writer refused. Only
/// the owning thread stores to it (a plain add is enough).
pub const DROPPED_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, dropped);
/// Offset of the pointer to the consumer's tail word (a `u64` another
/// process may store to: its value may be anything, never an address).
/// A writer that finds the buffer full by `tail_seen` may reload the
/// tail through it, store it as `tail_seen`, and, still full, count the
/// refusal in `dropped` and skip the record, as the Rust path does:
/// only while the `frozen` byte is 0 (a frozen buffer refuses every
/// record whatever the tail).
pub const TAIL_PTR_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, tail);
/// Offset of the `frozen` byte (1 while [`super::Rings::freeze`] holds
/// the buffer still).
pub const FROZEN_OFFSET: usize = offset_of!(Header, w) + offset_of!(WriterLine, frozen);

/// The writer cache's offset from the thread pointer, measured on the
/// calling thread. It is the same in every thread when this crate's
/// thread-locals live in static TLS (the executable and libraries
/// loaded at start-up); a caller must check that before relying on it.
pub fn cache_tpoff() -> isize {
    let at = CACHE.with(|c| c.as_ptr() as usize);
    let tp: usize;
    // SAFETY: on x86-64 Linux, fs:0 holds the thread pointer itself
    // (the TCB's self pointer); reading it has no side effect.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:0", out(reg) tp,
            options(nostack, readonly, preserves_flags));
    }
    at.wrapping_sub(tp) as isize
}
