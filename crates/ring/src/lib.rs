//! Per-thread lock-free trace buffers and the trace clock.
//!
//! The crate knows nothing about tracing. Tracers fill fixed 32-byte
//! [`Record`]s (a timestamp from [`clock`] and three words whose meaning is
//! theirs) and hand them to a [`Rings`], which keeps one ring buffer per
//! writing thread.
//!
//! # Model
//!
//! A [`Rings`] is one tracing session's set of buffers; several may exist at
//! once and never share a buffer. Its memory is one *pool*, reserved when
//! the set is made and sized by its memory budget: a header page, then one
//! fixed-size buffer slot after another, in a memory file (`memfd`) that a
//! consumer in another process can map ([`shm`]) to move records to disk
//! without the traced process doing any work per record. A thread's first
//! [`Rings::write`] to a given `Rings` *takes* a free slot: atomic
//! compare-and-swaps, a `prctl` for its name and an `madvise` to commit the
//! memory, no allocation and no lock, so a thread's first event can be in a
//! signal handler. Later writes find it through a small thread-local
//! `(rings id, buffer)` cache, direct-mapped by id (a miss scans the slots
//! for the thread's own). Buffers belong to the `Rings`, not the thread: a
//! thread's records stay readable after it exits, and a reader *releases*
//! the slot once the exited thread's last record has been consumed, for
//! another thread to take. A thread that finds no free slot (the budget is
//! used up) has its records counted in [`Rings::unattributed_lost`].
//!
//! Readers ([`Rings::drain`] to consume, [`Rings::snapshot`] to copy, or a
//! [`shm::Consumer`] in another process) run on any thread, concurrently
//! with writers, and never block them.
//!
//! Writers in machine code (a tracer's assembly fast path) follow the same
//! protocol through the layout [`ring::raw`] publishes: the cache's
//! thread-pointer offset, the writer fields' offsets.
//!
//! # Invariants
//!
//! - **Single writer.** A buffer is written only by the thread that took
//!   it; `write` is not reentrant on one thread. A signal handler that
//!   interrupted a `write` must not write itself (the push would store into
//!   the same slot and one record would be lost or torn): the tracing core's
//!   per-thread recursion guard ensures it, since trace callbacks never nest
//!   on one thread. Hence the push is wait-free and needs no atomic
//!   read-modify-write: plain stores (the `started` marker below, the
//!   record), then a Release store of the buffer's `head` (the count of
//!   records ever pushed).
//! - **Publication.** A reader loads `head` with Acquire, so every record
//!   below it is fully visible.
//! - **No torn records (Overwrite mode).** The writer may overwrite a record
//!   while a reader copies it. Slots are atomic words (plain moves on
//!   x86-64), and the two sides follow the seqlock protocol. The writer
//!   first stores `started = h + 1` (record `h` is being written, over
//!   record `h - capacity`), then `fence(Release)` (a compiler barrier on
//!   x86-64), then the record, then `head`. The reader copies, issues
//!   `fence(Acquire)`, loads `started`, and discards every copied record
//!   below `started - capacity`, counting it lost: a copy that saw any
//!   overwritten word is guaranteed to see the `started` that condemns it,
//!   and an idle writer condemns nothing.
//! - **DropNewest mode.** The writer refuses a record when `head - tail`
//!   reaches the capacity, so it never touches unread slots: the reader's
//!   Release store of `tail` after copying pairs with the writer's Acquire
//!   load of it, which the writer repeats only when the buffer looks full.
//!   `tail` lives in a separate memory file the consumer may write; the
//!   data pool is sealed so that only this process can write it, and
//!   nothing in the tails file is ever used as an address.
//! - **Ownership.** A slot's `state` goes FREE (never used) or EXITED and
//!   released, to TAKING (one compare-and-swap wins), to LIVE with a new
//!   `generation`; the owner's exit hook makes it EXITED; a reader that has
//!   consumed everything of an EXITED generation stores `released =
//!   generation`, its last action on it. Readers check the generation
//!   around what they read, so one owner's records are never mistaken for
//!   the next one's.
//! - **Loss accounting.** Overwritten records are counted by the reader (it
//!   sees the gap), refused ones by the writer (a per-buffer counter it alone
//!   stores to). Every record pushed is eventually delivered by a drain,
//!   counted lost, or still in the buffer: nothing disappears uncounted.
//!   Records a thread writes when it cannot have a buffer (none free, or
//!   writing after its exit hook ran, or in a fork child) are counted in
//!   [`Rings::unattributed_lost`].
//! - **Readers** take a per-buffer lock, so drains and snapshots on the same
//!   `Rings` take turns buffer by buffer; writers never take it. A set is
//!   read either in-process or by one external consumer, not both.
//!
//! # Lifetime
//!
//! Safe Rust guarantees no `write` is running when a `Rings` is dropped
//! (`write` borrows it), and dropping the `Rings` unmaps the pool (a
//! consumer's mapping keeps the memory until it unmaps too). Code that
//! calls `write` through a raw pointer (a trampoline's callback) must
//! itself keep the `Rings` alive until no thread can still be inside it:
//! the tracing core's quiescence wait provides that before it drops its
//! `Arc`. The thread-local caches never keep a buffer alive and never
//! dangle in a harmful way: `Rings` ids are never reused, a cached pointer
//! is used only with the `Rings` whose id it is cached under, and that
//! `Rings`, being borrowed, still maps the buffer. A slot goes to another
//! thread only after its owner's exit hook (a pthread key destructor, run
//! after the thread's Rust and C++ thread-local destructors) cleared the
//! cache and marked it exited. A thread that exits without running its
//! hook is reported exited (its tid is gone) but keeps its slot until the
//! process marks it ([`Rings::maintain`]) and a reader releases it.
//!
//! After `fork`, the pool is shared memory the child shares with its
//! parent: a fork handler clears the child's cache, and the child never
//! takes a slot or touches any state in its parent's sets (its writes to
//! them are not stored, its drains read nothing).
//!
//! # Example
//!
//! ```
//! use livetrace_ring::{Clock, Config, Mode, Record, Rings};
//!
//! let rings = Rings::new(Config { records_per_thread: 1024, mode: Mode::Overwrite, ..Config::default() });
//! let clock = Clock::get();
//! rings.write(Record { ts: clock.now(), a: 1, b: 2, c: 3 });
//! rings.drain(|tid, name, records, lost| {
//!     for r in records {
//!         println!("{tid} {name} {} ns: {} {} {}", clock.to_ns(r.ts), r.a, r.b, r.c);
//!     }
//!     assert_eq!(lost, 0);
//! });
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod clock;
pub mod ring;
pub mod shm;
mod sys;

pub use clock::{Clock, Source};
pub use ring::{
    forget_exit_hook, thread_serial, Config, Layout, Mode, Rings, ThreadBuffer, Writer,
    DEFAULT_MEMORY_BUDGET, DEFAULT_RECORDS_PER_THREAD,
};

/// One trace event: a timestamp ([`Clock::now`] ticks) and three words whose
/// meaning is the tracer's. 32 bytes, so two share a cache line; defined by
/// the trace file format (`livetrace-format`), whose files hold these very
/// bytes.
pub use livetrace_format::Record;

/// The calling thread's kernel thread id, as the buffers report it.
pub fn gettid() -> i32 {
    sys::gettid()
}
