//! The pool's layout in shared memory: the headers a writer, a reader in
//! this process and a consumer in another ([`crate::shm`]) all read at fixed
//! offsets. Separate because it is the contract between them; the code that
//! uses it is in the sibling modules.

use super::*;

// The storage of one record. Atomic words because readers copy records
// while the writer may be overwriting them (the race is detected and the
// copy discarded, but it must not be undefined behaviour): relaxed atomic
// loads and stores are plain `mov`s on x86-64, so this costs nothing.
// 32-byte aligned so a record never straddles two cache lines.
#[repr(C, align(32))]
pub(crate) struct Slot(pub(crate) [AtomicU64; 4]);

const _: () = assert!(std::mem::size_of::<Slot>() == std::mem::size_of::<Record>());

/// The hot fields, on their own cache line at the start of a buffer's
/// header (where [`raw`] writers find them). Only the owning thread stores
/// to `head`, `started` and `dropped`; `tail_seen` and `overwrite` also by
/// [`Rings::freeze`]; `slots`, `mask` and `tail` never change.
#[repr(C, align(64))]
pub(crate) struct WriterLine {
    pub(crate) slots: *mut Slot,
    pub(crate) mask: u64,
    /// Overwrite mode (cleared while the set is frozen).
    pub(crate) overwrite: AtomicBool,
    /// The set is frozen ([`Rings::freeze`]): refuse every record.
    pub(crate) frozen: AtomicBool,
    /// Records ever pushed; the next one goes to slot `head & mask`.
    pub(crate) head: AtomicU64,
    /// Records whose storing has begun: `head + 1` while a push is storing
    /// record `head`, `head` otherwise (the seqlock's "write in progress").
    /// Without it a reader could not tell a writer about to overwrite the
    /// oldest record from an idle one, and would have to discard it.
    pub(crate) started: AtomicU64,
    /// Records refused (DropNewest full, or the set frozen).
    pub(crate) dropped: AtomicU64,
    /// The last tail the writer loaded (DropNewest): it only reloads the
    /// consumer's tail when the buffer looks full by this stale,
    /// conservative value.
    pub(crate) tail_seen: AtomicU64,
    /// This buffer's consumer tail word (in the tails mapping).
    pub(crate) tail: *const AtomicU64,
}

// The writer's words fit one cache line, at fixed offsets the assembly
// writers were built against.
const _: () = {
    assert!(std::mem::size_of::<WriterLine>() == 64);
    assert!(std::mem::offset_of!(WriterLine, head) == 24);
};

/// Who owns a buffer, on the header's second line.
#[repr(C, align(64))]
pub(crate) struct Meta {
    /// FREE, TAKING, LIVE or EXITED.
    pub(crate) state: AtomicU32,
    pub(crate) tid: AtomicI32,
    /// Bumped each time a thread takes the buffer: readers tell one
    /// owner's records from the next one's by it.
    pub(crate) generation: AtomicU64,
    /// The owning thread's serial ([`thread_serial`]).
    pub(crate) owner: AtomicU64,
    /// The owner's name when it took the buffer, NUL-padded.
    pub(crate) name: [AtomicU64; 2],
}

/// A buffer's header, in shared memory; its records follow at
/// [`SLOT_HEADER_BYTES`].
#[repr(C)]
pub(crate) struct Header {
    /// First, at offset 0: [`raw`] writers find its fields at fixed offsets.
    pub(crate) w: WriterLine,
    pub(crate) m: Meta,
}

/// Bytes from a buffer's header to its first record.
pub(crate) const SLOT_HEADER_BYTES: usize = 256;
const _: () = assert!(std::mem::size_of::<Header>() <= SLOT_HEADER_BYTES);

pub(crate) const FREE: u32 = 0;
pub(crate) const TAKING: u32 = 1;
pub(crate) const LIVE: u32 = 2;
pub(crate) const EXITED: u32 = 3;

/// A buffer's consumer words, in the tails mapping (which a consumer in
/// another process maps writable): whatever it stores there can only make
/// the writer keep or drop records, never make it write elsewhere.
#[repr(C, align(64))]
pub(crate) struct TailLine {
    /// Records consumed. Stored only by readers; the DropNewest writer
    /// loads it to find room.
    pub(crate) tail: AtomicU64,
    /// The generation whose records the reader is done with (all read and
    /// the owner exited): the buffer may then be taken by another thread.
    pub(crate) released: AtomicU64,
}

/// The pool's first page, in shared memory.
#[repr(C)]
pub(crate) struct PoolHeader {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u32,
    pub(crate) slots: u32,
    pub(crate) stride: u64,
    pub(crate) records: u64,
    pub(crate) slot_header: u64,
    pub(crate) overwrite: u32,
    pub(crate) pid: i32,
    /// Records lost because their thread had no buffer.
    pub(crate) unattributed: AtomicU64,
    /// Non-zero while [`Rings::freeze`] holds the buffers still.
    pub(crate) frozen: AtomicU32,
    pub(super) _pad: u32,
    /// Times a snapshot trigger fired ([`Rings::trigger`]).
    pub(crate) triggers: AtomicU64,
}

pub(crate) const POOL_MAGIC: [u8; 8] = *b"LTRINGS\0";
pub(crate) const POOL_VERSION: u32 = 1;

/// Where a set's buffers are, for a consumer in another process: see
/// [`crate::shm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Buffers in the pool.
    pub slots: u32,
    /// Bytes from one buffer's header to the next.
    pub stride: u64,
    /// Records per buffer (a power of two).
    pub records: u64,
    /// Bytes from the pool's start to the first buffer's header.
    pub pool_header: u64,
    /// Bytes from a buffer's header to its first record.
    pub slot_header: u64,
    /// Bytes of the data memory file.
    pub data_bytes: u64,
    /// Bytes of the tails memory file.
    pub tails_bytes: u64,
    /// The buffers overwrite their oldest records (flight recorder).
    pub overwrite: bool,
}

impl Rings {
    /// The memory files and layout a consumer in another process maps (see
    /// [`crate::shm`]); `None` when the pool is not in memory files.
    pub fn shared(
        &self,
    ) -> Option<(
        std::os::fd::BorrowedFd<'_>,
        std::os::fd::BorrowedFd<'_>,
        Layout,
    )> {
        use std::os::fd::AsFd;
        let data = self.data.fd.as_ref()?.as_fd();
        let tails = self.tails.fd.as_ref()?.as_fd();
        Some((data, tails, self.layout()))
    }

    /// Where the buffers are in the pool.
    pub fn layout(&self) -> Layout {
        Layout {
            slots: self.slots,
            stride: self.stride as u64,
            records: self.config.records_per_thread as u64,
            pool_header: sys::page_size() as u64,
            slot_header: SLOT_HEADER_BYTES as u64,
            data_bytes: self.data.bytes as u64,
            tails_bytes: self.tails.bytes as u64,
            overwrite: self.config.mode == Mode::Overwrite,
        }
    }
}
