//! Executable memory within rel32 reach of given code: the one allocator
//! of it for trampolines (`livetrace-ftrace`) and detours
//! ([`crate::relocation`]).
//!
//! # Why a window
//!
//! A site is rewritten into `call rel32` or `jmp rel32`, and a relocated
//! prologue keeps its RIP-relative operands and branches as rel32: the
//! target is the end of the instruction plus a signed 32-bit displacement,
//! so whatever a site calls, or a detour refers to, must lie within ±2 GiB
//! of it. The kernel places an `mmap` without an address top-down below
//! the stack, tens of TiB from the executable, and shared libraries lie
//! anywhere in between: memory must be asked for *at* an address. The
//! caller knows what the memory must reach, so it gives the window of
//! acceptable start addresses (a trampoline pool: within 512 MiB of its
//! 1 GiB window of sites; a detour: `livetrace-reloc`'s
//! `Prologue::detour_window`, ±2 GiB of the function and of every operand
//! it moves) and the address to stay nearest to.
//!
//! # How holes are found
//!
//! One read of `/proc/self/maps` (through the crate's parser, `maps`)
//! lists every mapping; the holes are the space between them. Candidates
//! are the addresses right above and right below each mapping, and the
//! window's two ends, nearest `near` first: memory packed against what is
//! already mapped leaves the address space in few large holes, not many
//! small ones. A candidate whose range would overlap a mapping is passed
//! over. The heap (`[heap]`) grows up into the space above it and the
//! main stack (`[stack]`) down into the space below it, so nothing is
//! placed within 1 MiB of them (the kernel's own stack guard gap is 256
//! pages): memory of ours against them would make `brk` fail or the stack
//! overflow early.
//!
//! # Races with other mappings
//!
//! Other threads map and unmap memory while we read the map and choose. A
//! candidate is mapped with `MAP_FIXED_NOREPLACE` (Linux 4.17): the kernel
//! maps at exactly that address only if nothing is there, and fails with
//! `EEXIST` otherwise, so a mapping made since the read is never replaced
//! (plain `MAP_FIXED` would silently unmap another thread's memory, heap
//! or library). `EEXIST` means the map we read is stale: the next
//! candidate is tried, and when all have been taken the map is read again
//! (a few times at most). An older kernel that does not know the flag
//! takes the address as a hint and may map elsewhere: such a mapping is
//! unmapped again and counts as a race. Any other failure (`ENOMEM`: the
//! process's mapping limit, `vm.max_map_count`) is returned as it is.
//!
//! The memory is anonymous, private, read+execute, never writable here:
//! callers make pages writable only while they write them, keeping
//! `PROT_EXEC` (other code on the page may be running), and give it back
//! with `munmap`.

use std::ops::RangeInclusive;

use crate::maps::{Maps, Region};
use crate::Error;

const PAGE: usize = 4096;
/// Nothing is placed below this: the first megabyte is for the kernel's
/// `mmap_min_addr` and for catching null-pointer arithmetic.
const LOWEST: usize = 1 << 20;
/// The end of user space with 4-level page tables (the kernel's
/// `TASK_SIZE`); with 5-level ones the kernel still maps nothing above it
/// unless asked.
const USER_END: usize = 0x7fff_ffff_f000;
/// Space left free above the heap and below the main stack.
const GROWTH_GAP: usize = 1 << 20;
/// How many times the map is read again after every candidate raced.
const ROUNDS: usize = 4;

/// Maps `len` bytes (a whole number of pages) of anonymous read+execute
/// memory whose first byte lies in `start` (inclusive at both ends), as
/// near `near` as the free address space allows, and returns its address.
/// See the module documentation for how the address is chosen and why no
/// existing mapping is ever touched.
///
/// Fails with [`Error::NoRoom`] when no hole in the window is large enough
/// (or `len` is zero or not whole pages), or with [`Error::Io`] when the
/// map cannot be read or `mmap` fails other than by a race.
pub fn map_near(start: RangeInclusive<usize>, near: usize, len: usize) -> Result<usize, Error> {
    if len == 0 || !len.is_multiple_of(PAGE) {
        return Err(Error::NoRoom { near, len });
    }
    let lo = (*start.start()).max(LOWEST).next_multiple_of(PAGE);
    let hi = (*start.end()).min(USER_END.saturating_sub(len));
    if lo > hi {
        return Err(Error::NoRoom { near, len });
    }
    for _round in 0..ROUNDS {
        let maps = Maps::read().map_err(Error::Io)?;
        match place(maps.regions(), lo..=hi, near, len)? {
            Placed::At(addr) => return Ok(addr),
            Placed::NoHole => break,
            Placed::Raced => continue,
        }
    }
    Err(Error::NoRoom { near, len })
}

enum Placed {
    At(usize),
    /// No candidate is free in the map read.
    NoHole,
    /// Every free candidate was taken since the map was read.
    Raced,
}

/// Space that must stay free around a mapping, on either side: the heap
/// and the main stack keep a growth gap (each grows one way, but which
/// side the heap's neighbour is on is not worth telling apart).
fn margin(r: &Region) -> usize {
    if r.grows {
        GROWTH_GAP
    } else {
        0
    }
}

/// The start addresses in `window` (page-aligned) where `len` bytes would
/// overlap no mapping of `used` nor its margins, nearest `near` first.
fn candidates(
    used: &[Region],
    window: &RangeInclusive<usize>,
    near: usize,
    len: usize,
) -> Vec<usize> {
    let mut cands: Vec<usize> = vec![*window.start(), *window.end() & !(PAGE - 1)];
    for r in used {
        let gap = margin(r);
        cands.push(r.end.saturating_add(gap).next_multiple_of(PAGE));
        cands.push(r.start.saturating_sub(len + gap) & !(PAGE - 1));
    }
    cands.retain(|c| window.contains(c));
    cands.retain(|&c| {
        !used.iter().any(|r| {
            let gap = margin(r);
            c < r.end.saturating_add(gap) && c + len > r.start.saturating_sub(gap)
        })
    });
    cands.sort_unstable();
    cands.dedup();
    cands.sort_by_key(|&c| c.abs_diff(near));
    cands
}

/// Tries the candidates `used` leaves, nearest first.
fn place(
    used: &[Region],
    window: RangeInclusive<usize>,
    near: usize,
    len: usize,
) -> Result<Placed, Error> {
    let cands = candidates(used, &window, near, len);
    if cands.is_empty() {
        return Ok(Placed::NoHole);
    }
    for c in cands {
        // SAFETY: MAP_FIXED_NOREPLACE maps at `c` only if nothing is there
        // (EEXIST otherwise), so no existing mapping is touched; a kernel
        // that ignores the flag may map elsewhere, undone below.
        let p = unsafe {
            libc::mmap(
                c as *mut _,
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                continue;
            }
            return Err(Error::Io(e));
        }
        if p as usize == c {
            return Ok(Placed::At(c));
        }
        // SAFETY: a kernel without MAP_FIXED_NOREPLACE took `c` as a hint
        // and mapped elsewhere: that mapping is ours and nothing uses it.
        unsafe { libc::munmap(p, len) };
    }
    Ok(Placed::Raced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: usize, end: usize, grows: bool) -> Region {
        Region {
            start,
            end,
            prot: libc::PROT_READ | libc::PROT_WRITE,
            shared: false,
            grows,
        }
    }

    #[test]
    fn candidates_hug_mappings_nearest_first_and_spare_heap_and_stack() {
        const G: usize = 1 << 30;
        let text = region(G, G + 0x10_0000, false);
        let heap = region(G + 0x40_0000, G + 0x50_0000, true);
        let lib = region(G + 0x4000_0000, G + 0x4000_8000, false);
        let used = [text, heap, lib];
        let window = G - 0x1000_0000..=G + 0x5000_0000;
        let c = candidates(&used, &window, G + 0x10_0000, PAGE);
        // Right above the text first, then right below it.
        assert_eq!(c[..2], [G + 0x10_0000, G - PAGE]);
        // Around the heap only past its growth gap, on both sides.
        assert!(c.contains(&(G + 0x50_0000 + GROWTH_GAP)));
        assert!(c.contains(&(G + 0x40_0000 - GROWTH_GAP - PAGE)));
        let heap_and_gap = G + 0x40_0000 - GROWTH_GAP..G + 0x50_0000 + GROWTH_GAP;
        assert!(!c
            .iter()
            .any(|&a| a + PAGE > heap_and_gap.start && a < heap_and_gap.end));
        // Around the library, and the window's ends; all inside the window.
        assert!(c.contains(&(G + 0x4000_8000)) && c.contains(&(G + 0x4000_0000 - PAGE)));
        assert!(c.contains(&(G - 0x1000_0000)) && c.contains(&(G + 0x5000_0000)));
        assert!(c
            .iter()
            .all(|a| window.contains(a) && a.is_multiple_of(PAGE)));
        let d: Vec<usize> = c.iter().map(|a| a.abs_diff(G + 0x10_0000)).collect();
        assert!(d.is_sorted());
        // A window entirely inside a mapping has no candidate.
        assert!(candidates(&used, &(G + PAGE..=G + 8 * PAGE), G, PAGE).is_empty());
    }

    #[test]
    fn maps_in_window_near_the_address_readable_and_executable() {
        let near = maps_in_window_near_the_address_readable_and_executable as *const () as usize;
        let window = near - (1 << 30)..=near + (1 << 30);
        let a = map_near(window.clone(), near, 4 * PAGE).unwrap();
        assert!(window.contains(&a) && a.is_multiple_of(PAGE));
        let maps = Maps::read().unwrap();
        assert!(maps.is_text(a, 4 * PAGE));
        // Near: within the code's own neighbourhood, not merely the window
        // (the test binary's text, data and heap span far less than this).
        assert!(a.abs_diff(near) < 256 << 20, "{a:#x} far from {near:#x}");
        // SAFETY: our mapping, unused.
        unsafe { libc::munmap(a as *mut _, 4 * PAGE) };
        assert!(matches!(
            map_near(window.clone(), near, 0),
            Err(Error::NoRoom { .. })
        ));
        assert!(matches!(
            map_near(window, near, 100),
            Err(Error::NoRoom { .. })
        ));
        assert!(matches!(
            map_near(near..=near - PAGE, near, PAGE),
            Err(Error::NoRoom { .. })
        ));
    }

    /// A mapping made after the map was read (here: one we make, left out
    /// of the map we pass) is never replaced: its candidate fails with
    /// EEXIST and the next one is used, or the round reports the race.
    #[test]
    fn a_mapping_made_since_the_read_is_not_replaced() {
        // SAFETY: a fresh anonymous mapping, anywhere.
        let taken = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(taken, libc::MAP_FAILED);
        let taken = taken as usize;
        // SAFETY: our writable page.
        unsafe { *(taken as *mut u64) = 0x1234_5678 };
        let stale: Vec<Region> = Maps::read()
            .unwrap()
            .regions()
            .iter()
            .filter(|r| r.start != taken)
            .copied()
            .collect();
        assert!(candidates(&stale, &(taken..=taken), taken, PAGE) == [taken]);
        // The only candidate is the page mapped behind the map's back.
        assert!(matches!(
            place(&stale, taken..=taken, taken, PAGE),
            Ok(Placed::Raced)
        ));
        // With more room the next candidate is used.
        let window = taken - (64 << 20)..=taken + (64 << 20);
        let Ok(Placed::At(a)) = place(&stale, window.clone(), taken, PAGE) else {
            panic!("no page near {taken:#x}");
        };
        assert_ne!(a, taken);
        assert!(window.contains(&a));
        // SAFETY: our pages; the first one is still what we wrote.
        unsafe {
            assert_eq!(*(taken as *const u64), 0x1234_5678);
            libc::munmap(a as *mut _, PAGE);
            libc::munmap(taken as *mut _, PAGE);
        }
    }
}
