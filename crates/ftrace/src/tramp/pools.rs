//! Pools of trampoline slots, one per window of sites, and the copies
//! made into them.

use std::collections::HashMap;
use std::io;

use super::pages::{map_near, write_text};
use super::patch::{patch_data, patch_tls, patch_tls_any};
use super::templates::*;
use super::{vector_state, GuardedFn, PAGE, SLOT, WINDOW_SHIFT};

/// Which template a trampoline is a copy of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Fast,
    Regs,
    /// The regs template saving every vector and mask register too: for
    /// sites whose callers may keep values in any register.
    Full,
}

type Template = (*const u8, *const u8, *const u8);

impl Kind {
    /// (start, call, end) of the template for the process's vector state.
    fn parts(self) -> Template {
        let v = vector_state().index();
        match self {
            Kind::Fast => [
                (
                    &raw const lt_tramp_fast0_start,
                    &raw const lt_tramp_fast0_call,
                    &raw const lt_tramp_fast0_end,
                ),
                (
                    &raw const lt_tramp_fast1_start,
                    &raw const lt_tramp_fast1_call,
                    &raw const lt_tramp_fast1_end,
                ),
                (
                    &raw const lt_tramp_fast2_start,
                    &raw const lt_tramp_fast2_call,
                    &raw const lt_tramp_fast2_end,
                ),
            ][v],
            Kind::Regs => [
                (
                    &raw const lt_tramp_regs0_start,
                    &raw const lt_tramp_regs0_call,
                    &raw const lt_tramp_regs0_end,
                ),
                (
                    &raw const lt_tramp_regs1_start,
                    &raw const lt_tramp_regs1_call,
                    &raw const lt_tramp_regs1_end,
                ),
                (
                    &raw const lt_tramp_regs2_start,
                    &raw const lt_tramp_regs2_call,
                    &raw const lt_tramp_regs2_end,
                ),
            ][v],
            Kind::Full => [
                (
                    &raw const lt_tramp_full0_start,
                    &raw const lt_tramp_full0_call,
                    &raw const lt_tramp_full0_end,
                ),
                (
                    &raw const lt_tramp_full1_start,
                    &raw const lt_tramp_full1_call,
                    &raw const lt_tramp_full1_end,
                ),
                (
                    &raw const lt_tramp_full2_start,
                    &raw const lt_tramp_full2_call,
                    &raw const lt_tramp_full2_end,
                ),
            ][v],
        }
    }

    /// Offset of the template's `call qword ptr [rip + func]` (`ff 15
    /// disp32`), which a copy within reach of `func` turns into a direct
    /// `call rel32; nop`: one load and one indirect-branch prediction fewer
    /// on every traced call.
    fn call_offset(self) -> usize {
        let (start, call, _) = self.parts();
        call as usize - start as usize
    }

    /// The template's bytes; its last 16 bytes are the data words `data`
    /// and `func` (a regs template has the `guarded` entry's word before
    /// them).
    fn template(self) -> &'static [u8] {
        let (start, _, end) = self.parts();
        bytes_of(start, end)
    }
}

/// A pool key: which 1 GiB window of the address space a site is in.
pub(crate) fn window_of(site: usize) -> usize {
    site >> WINDOW_SHIFT
}

struct Pool {
    pages: Vec<usize>,
    free: Vec<usize>,
}

/// Every pool of trampolines. Kept under the core's lock.
#[derive(Default)]
pub(crate) struct Pools {
    pools: HashMap<usize, Pool>,
}

impl Pools {
    /// Copies a `kind` trampoline calling `func(data, ..)` (a
    /// [`FastEntryFn`](super::FastEntryFn) for `Kind::Fast`, an
    /// [`EntryFn`](super::EntryFn) for `Kind::Regs`) into the pool for
    /// `window`, returning its address. The copy is complete and made
    /// executable before any site can be pointed at it.
    pub fn create(
        &mut self,
        window: usize,
        kind: Kind,
        tpoff: isize,
        data: usize,
        func: usize,
    ) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled above");
        let code = kind.template();
        assert!(code.len() <= SLOT);
        let mut bytes = code.to_vec();
        let n = bytes.len();
        patch_tls(&mut bytes[..n - 16], tpoff);
        patch_data(&mut bytes[..n - 16], data);
        bytes[n - 16..n - 8].copy_from_slice(&(data as u64).to_le_bytes());
        bytes[n - 8..].copy_from_slice(&(func as u64).to_le_bytes());
        if kind != Kind::Fast {
            let guarded = crate::walk::guarded_entry as GuardedFn as usize;
            bytes[n - 24..n - 16].copy_from_slice(&(guarded as u64).to_le_bytes());
        }
        let at = kind.call_offset();
        debug_assert_eq!(bytes[at..at + 2], [0xff, 0x15]);
        if let Some(rel) = livetrace_poke::rel32(slot + at, func) {
            bytes[at] = 0xe8;
            bytes[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
            bytes[at + 5] = 0x90;
        }
        install(pool, slot, &bytes)
    }

    /// Copies an ops' fast path into the pool for `window`, with the
    /// thread-pointer offsets patched in and `fallback` in its last word.
    pub fn create_fast(
        &mut self,
        window: usize,
        tpoff: isize,
        code: &[u8],
        fallback: usize,
    ) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled by pool()");
        let mut bytes = code.to_vec();
        let n = bytes.len();
        assert!((8..=SLOT).contains(&n));
        patch_tls_any(&mut bytes[..n - 8], tpoff);
        bytes[n - 8..].copy_from_slice(&(fallback as u64).to_le_bytes());
        install(pool, slot, &bytes)
    }

    /// A decline thunk (see the template) going to `tramp`, in the pool for
    /// `window`.
    pub fn create_decline(&mut self, window: usize, tramp: usize) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled by pool()");
        let mut bytes = bytes_of(&raw const lt_decline_start, &raw const lt_decline_end).to_vec();
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&(tramp as u64).to_le_bytes());
        install(pool, slot, &bytes)
    }

    /// The pool for `window`, with at least one free slot.
    fn pool(&mut self, window: usize) -> io::Result<&mut Pool> {
        let pool = self.pools.entry(window).or_insert_with(|| Pool {
            pages: Vec::new(),
            free: Vec::new(),
        });
        if pool.free.is_empty() {
            let page = map_near(window)?;
            pool.pages.push(page);
            pool.free
                .extend((0..PAGE / SLOT).rev().map(|i| page + i * SLOT));
        }
        Ok(pool)
    }

    /// Where a thread inside a callback called from a trampoline returns
    /// to: for every slot of every pool, the byte after each template's
    /// call (direct `call rel32; nop` or indirect `call [rip + func]`), as
    /// two-byte ranges. A word on a blocked thread's stack that equals one
    /// of them means it is inside a callback (for the quiescence wait);
    /// anything narrower than the whole page keeps stale pointers to a
    /// trampoline (its start, kept in some local) from looking like one.
    pub fn return_addresses(&self) -> Vec<std::ops::Range<usize>> {
        let offsets = [Kind::Fast, Kind::Regs, Kind::Full].map(|k| k.call_offset() + 5);
        self.pools
            .values()
            .flat_map(|p| p.pages.iter())
            .flat_map(|&page| (0..PAGE / SLOT).map(move |i| page + i * SLOT))
            .flat_map(|slot| offsets.map(|o| slot + o..slot + o + 2))
            .collect()
    }

    /// Returns a slot to its pool. Only after the quiescence wait has shown
    /// that no thread can be executing it.
    pub fn release(&mut self, addr: usize) {
        if let Some(pool) = self.pools.get_mut(&window_of_tramp(addr, &self.pools)) {
            pool.free.push(addr);
        }
    }
}

/// Writes a slot's code: the slot is the caller's, no site calls it yet.
fn install(pool: &mut Pool, slot: usize, bytes: &[u8]) -> io::Result<usize> {
    let mut words = bytes.to_vec();
    words.resize(words.len().next_multiple_of(8), 0xcc);
    if let Err(e) = write_text(slot, &words) {
        pool.free.push(slot);
        return Err(e);
    }
    Ok(slot)
}

fn window_of_tramp(addr: usize, pools: &HashMap<usize, Pool>) -> usize {
    let page = addr & !(PAGE - 1);
    pools
        .iter()
        .find(|(_, p)| p.pages.contains(&page))
        .map_or(usize::MAX, |(w, _)| *w)
}
