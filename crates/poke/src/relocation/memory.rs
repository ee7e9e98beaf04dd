//! Executable memory for detours, within reach of the code they serve.
//!
//! A detour's jumps are rel32, so it must lie within ±2 GiB of the
//! function it serves and of everything its relocated instructions refer
//! to: the caller gives the window of acceptable start addresses
//! (`livetrace-reloc`'s `Prologue::detour_window`). Detours are carved out
//! of 64 KiB *chunks* mapped next to existing mappings inside the window,
//! nearest the function first ([`crate::map_near`]), so one library's
//! detours share a few chunks. Chunks are mapped read+execute and filled with `int3` (a stray
//! jump into unused detour memory traps loudly); a detour is written with
//! its pages made writable for the copy, never without `PROT_EXEC` (other
//! detours on the page may be running), under the batch lock (a batch
//! patching a detour's site changes the same pages' protection).
//!
//! A block's life: *reserved* ([`alloc_detour`]), *filled*
//! ([`write_detour`]), *installed* (a relocation jumps to it), *retired*
//! (the relocation was removed; threads may still be inside), free again
//! only after a wait proved no thread can reach it ([`free_retired`],
//! `reclaim`). Retired blocks are never reused before that. A chunk whose
//! blocks are all free is unmapped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use crate::Error;

const CHUNK: usize = 64 * 1024;
const PAGE: usize = 4096;
const ALIGN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reserved { filled: bool },
    Installed,
    Retired(u64),
}

#[derive(Clone, Copy, Debug)]
struct Block {
    len: usize,
    state: State,
}

struct Chunk {
    base: usize,
    /// Bytes handed out from the start, never given back to the bump.
    bump: usize,
    /// Freed blocks (address, length), reusable.
    free: Vec<(usize, usize)>,
    /// Blocks in use (reserved, installed or retired).
    used: usize,
}

struct Arena {
    chunks: Vec<Chunk>,
    blocks: BTreeMap<usize, Block>,
    /// Retirements so far; each retire gets the next number.
    generation: u64,
}

/// Only locked under the batch lock, so a `fork` (which takes that lock
/// first) never copies it held.
static ARENA: Mutex<Arena> = Mutex::new(Arena {
    chunks: Vec::new(),
    blocks: BTreeMap::new(),
    generation: 0,
});

fn arena() -> std::sync::MutexGuard<'static, Arena> {
    ARENA.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes `[addr, addr+len)` (inside one of our chunks) writable, runs `f`,
/// and makes it read+execute again. Under the batch lock.
fn with_writable<R>(addr: usize, len: usize, f: impl FnOnce() -> R) -> Result<R, Error> {
    let start = addr & !(PAGE - 1);
    let end = (addr + len).next_multiple_of(PAGE);
    // SAFETY: the pages belong to a chunk we mapped; adding PROT_WRITE and
    // keeping PROT_EXEC disturbs no thread running other detours there.
    let rc = unsafe {
        libc::mprotect(
            start as *mut _,
            end - start,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        )
    };
    if rc != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    let r = f();
    // SAFETY: as above, back to what the chunk was mapped with.
    let rc = unsafe {
        libc::mprotect(
            start as *mut _,
            end - start,
            libc::PROT_READ | libc::PROT_EXEC,
        )
    };
    if rc != 0 {
        // Text left writable would break the engine's contract.
        crate::fatal("cannot make detour memory read-only again");
    }
    Ok(r)
}

/// Fills `[addr, addr+len)` of one of our chunks with `int3`.
fn fill_int3(addr: usize, len: usize) -> Result<(), Error> {
    with_writable(addr, len, || {
        // SAFETY: made writable just now; nobody executes these bytes (a
        // fresh chunk, or a block no thread can reach any more).
        unsafe { std::ptr::write_bytes(addr as *mut u8, crate::INT3, len) };
    })
}

/// Maps a chunk whose first byte lies in `[lo, hi]`, nearest `near`, and
/// fills it with `int3`.
fn map_chunk(lo: usize, hi: usize, near: usize) -> Result<usize, Error> {
    let c = crate::near::map_near(lo..=hi, near, CHUNK)?;
    if let Err(e) = fill_int3(c, CHUNK) {
        // SAFETY: our fresh chunk; nothing points into it.
        unsafe { libc::munmap(c as *mut _, CHUNK) };
        return Err(e);
    }
    Ok(c)
}

/// Reserves `len` bytes of executable memory for a detour whose first byte
/// must lie in `[lo, hi]` (the window the detour's rel32 fields reach
/// from), as near `near` (the function) as possible. The memory holds
/// `int3`s until [`write_detour`] fills it.
pub fn alloc_detour(lo: usize, hi: usize, near: usize, len: usize) -> Result<usize, Error> {
    if len == 0 || lo > hi {
        return Err(Error::NoRoom { near, len });
    }
    crate::lock::register_atfork();
    let _g = crate::batch::lock();
    let mut a = arena();
    let len = len.next_multiple_of(ALIGN);
    if len > CHUNK {
        return Err(Error::NoRoom { near, len });
    }
    let fits = |addr: usize| addr >= lo && addr <= hi;
    // Existing chunks, nearest first: a freed block, else the bump.
    let mut order: Vec<usize> = (0..a.chunks.len()).collect();
    order.sort_by_key(|&i| a.chunks[i].base.abs_diff(near));
    let mut found = None;
    for i in order {
        let c = &mut a.chunks[i];
        if let Some(k) = c.free.iter().position(|&(addr, l)| l >= len && fits(addr)) {
            let (addr, l) = c.free[k];
            if l == len {
                c.free.swap_remove(k);
            } else {
                c.free[k] = (addr + len, l - len);
            }
            c.used += 1;
            found = Some(addr);
            break;
        }
        if c.bump + len <= CHUNK && fits(c.base + c.bump) {
            let addr = c.base + c.bump;
            c.bump += len;
            c.used += 1;
            found = Some(addr);
            break;
        }
    }
    let addr = match found {
        Some(a) => a,
        None => {
            let base = map_chunk(lo, hi, near)?;
            a.chunks.push(Chunk {
                base,
                bump: len,
                free: Vec::new(),
                used: 1,
            });
            base
        }
    };
    a.blocks.insert(
        addr,
        Block {
            len,
            state: State::Reserved { filled: false },
        },
    );
    Ok(addr)
}

/// Writes a detour's bytes into memory from [`alloc_detour`] that no
/// relocation uses yet.
pub fn write_detour(addr: usize, bytes: &[u8]) -> Result<(), Error> {
    let _g = crate::batch::lock();
    let mut a = arena();
    let block = match a.blocks.get_mut(&addr) {
        Some(b) if matches!(b.state, State::Reserved { .. }) => b,
        _ => {
            return Err(Error::Detour {
                addr,
                why: "not detour memory reserved for a relocation not yet installed",
            })
        }
    };
    if bytes.len() > block.len {
        return Err(Error::Detour {
            addr,
            why: "the detour is longer than the memory reserved for it",
        });
    }
    let len = block.len;
    with_writable(addr, len, || {
        // SAFETY: made writable just now; the block is reserved for this
        // detour and nothing points at it yet.
        unsafe {
            std::ptr::write_bytes(addr as *mut u8, crate::INT3, len);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len());
        }
    })?;
    block.state = State::Reserved { filled: true };
    Ok(())
}

/// Gives back detour memory that was never installed (a relocation that
/// failed or was not attempted).
pub fn discard_detour(addr: usize) -> Result<(), Error> {
    let _g = crate::batch::lock();
    let mut a = arena();
    match a.blocks.get(&addr) {
        Some(b) if matches!(b.state, State::Reserved { .. }) => {}
        _ => {
            return Err(Error::Detour {
                addr,
                why: "not detour memory reserved for a relocation not yet installed",
            })
        }
    }
    free_block(&mut a, addr);
    Ok(())
}

/// Under the batch lock: the detour at `addr` is reserved and written.
pub(crate) fn check_ready(addr: usize) -> Result<(), Error> {
    match arena().blocks.get(&addr) {
        Some(Block {
            state: State::Reserved { filled: true },
            ..
        }) => Ok(()),
        _ => Err(Error::Detour {
            addr,
            why: "not a written detour from alloc_detour, or one already in use",
        }),
    }
}

pub(crate) fn mark_installed(addr: usize) {
    if let Some(b) = arena().blocks.get_mut(&addr) {
        b.state = State::Installed;
    }
}

/// The current retirement generation.
pub(crate) fn generation() -> u64 {
    arena().generation
}

/// Retires installed detours (their relocations are gone); returns the
/// generation they were retired in.
pub(crate) fn retire(addrs: &[usize]) -> u64 {
    let mut a = arena();
    a.generation += 1;
    let g = a.generation;
    for addr in addrs {
        if let Some(b) = a.blocks.get_mut(addr) {
            b.state = State::Retired(g);
        }
    }
    g
}

/// Retired detours (merged ranges) and the newest generation among them.
pub(crate) fn retired() -> (Vec<Range<usize>>, u64) {
    let a = arena();
    let mut out: Vec<Range<usize>> = Vec::new();
    for (&addr, b) in &a.blocks {
        if let State::Retired(_) = b.state {
            match out.last_mut() {
                Some(r) if r.end == addr => r.end = addr + b.len,
                _ => out.push(addr..addr + b.len),
            }
        }
    }
    (out, a.generation)
}

/// Every retired detour (merged ranges) and the current generation: a
/// caller that waits until no thread can reach these may then free them
/// with [`free_retired`]`(generation)`.
pub fn retired_detours() -> (Vec<Range<usize>>, u64) {
    let _g = crate::batch::lock();
    retired()
}

/// Frees the detours retired up to `generation` (from [`retired_detours`]
/// or a `Removed`); returns how many.
///
/// # Safety
/// A wait that began after they were retired must have seen every thread
/// unable to execute them: none with its RIP, or a RIP saved in a signal
/// frame, inside one, and none that can still return or jump into one
/// (through whatever the detour's site called). The memory may be reused
/// for another detour at once.
pub unsafe fn free_retired(generation: u64) -> usize {
    let _g = crate::batch::lock();
    free_upto(generation)
}

pub(crate) fn free_upto(generation: u64) -> usize {
    let mut a = arena();
    let dead: Vec<usize> = a
        .blocks
        .iter()
        .filter(|(_, b)| matches!(b.state, State::Retired(g) if g <= generation))
        .map(|(&addr, _)| addr)
        .collect();
    for &addr in &dead {
        free_block(&mut a, addr);
    }
    dead.len()
}

/// Returns a block to its chunk (int3s written over it, so a stray jump
/// into it traps), and unmaps a chunk left with no block in use.
fn free_block(a: &mut Arena, addr: usize) {
    let Some(b) = a.blocks.remove(&addr) else {
        return;
    };
    let Some(i) = a
        .chunks
        .iter()
        .position(|c| addr >= c.base && addr < c.base + CHUNK)
    else {
        return;
    };
    let c = &mut a.chunks[i];
    c.used -= 1;
    if c.used == 0 {
        // SAFETY: our own chunk, none of whose blocks is in use (reserved,
        // installed or retired): nothing can execute it.
        unsafe { libc::munmap(c.base as *mut _, CHUNK) };
        a.chunks.swap_remove(i);
        return;
    }
    // Failing to refill only loses the loud trap on a stray jump.
    let _ = fill_int3(addr, b.len);
    c.free.push((addr, b.len));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_in_window_reused_and_chunks_unmapped() {
        let near = blocks_are_in_window_reused_and_chunks_unmapped as *const () as usize;
        let (lo, hi) = (near - (1 << 30), near + (1 << 30));
        let a = alloc_detour(lo, hi, near, 40).unwrap();
        assert!(a >= lo && a <= hi && a.is_multiple_of(ALIGN));
        // Filled with int3 until written.
        // SAFETY: our own mapped, readable chunk.
        assert_eq!(unsafe { *(a as *const u8) }, crate::INT3);
        write_detour(a, &[0x90; 40]).unwrap();
        assert!(write_detour(a, &[0x90; 64]).is_err(), "too long");
        check_ready(a).unwrap();
        let b = alloc_detour(lo, hi, near, 24).unwrap();
        assert_ne!(a, b);
        assert!(check_ready(b).is_err(), "not written yet");
        discard_detour(b).unwrap();
        // The discarded block is handed out again.
        let c = alloc_detour(lo, hi, near, 24).unwrap();
        assert_eq!(b, c);
        discard_detour(c).unwrap();
        {
            let _g = crate::batch::lock();
            mark_installed(a);
            assert!(
                discard_detour(a).is_err(),
                "installed memory is not discarded"
            );
            let g = retire(&[a]);
            assert!(retired().0.iter().any(|r| r.start == a));
            // SAFETY: nothing ever executed the block.
            assert_eq!(unsafe { free_retired(g) }, 1);
        }
        assert!(!retired().0.iter().any(|r| r.start == a));
        // A window nowhere near anything mapped still gets a chunk or a
        // clear error, never an address outside it.
        let far = 0x5000_0000_0000usize;
        match alloc_detour(far, far + (1 << 20), far, 16) {
            Ok(x) => {
                assert!(x >= far && x <= far + (1 << 20));
                discard_detour(x).unwrap();
            }
            Err(Error::NoRoom { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
