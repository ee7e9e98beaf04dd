//! Prologue relocation, live: giving a site to a function that has none, by
//! replacing its first instructions with a jump to a *detour* that runs
//! them out of line — the kernel's optimized kprobes
//! (`arch/x86/kernel/kprobes/opt.c`), for a running multithreaded process.
//!
//! This module knows nothing about instructions: the caller (the
//! `livetrace-reloc` crate decides what can be moved and builds the detour)
//! gives, per function, its *site* `s` (the first byte the jump
//! overwrites), the *region* `original` (the N ≥ 5 bytes of whole
//! instructions the jump covers, as they are in the file), and a *detour*
//! `d`: memory from [`alloc_detour`] within ±2 GiB of `s`, filled with
//! [`write_detour`] (a 5-byte NOP that is the function's new site, the
//! relocated instructions, a jump back to `s + N`).
//!
//! # Why two steps
//!
//! The jump replaces several instructions, so unlike a compiler's 5-byte
//! NOP a thread may be stopped *between* two of them — its RIP, a RIP saved
//! in a signal frame (a handler interrupted it there), or a return address
//! may point into `s+1 .. s+N` — and it would resume in the middle of the
//! jump. So [`install`] works in two steps, as optimized kprobes do:
//!
//! 1. **Park.** One batch writes `int3` on `s` alone, the other N-1 bytes
//!    unchanged, and *parks* the site: from then on the SIGTRAP handler
//!    sends a thread that traps at `s` to `d` (the detour runs the
//!    relocated copy and jumps back to `s + N`), batch or no batch (see
//!    `crate::trap`'s parked set). No thread *enters* the region any more
//!    (nothing branches into it but from its first byte: the caller's
//!    check); threads already inside finish the original instructions,
//!    which are intact.
//! 2. **Wait until the regions are clear**: no thread's RIP, no RIP saved
//!    in a signal frame on its stacks and no word of its stacks (a return
//!    address) lies in any `s+1 .. s+N` ([`crate::world::wait_outside`]:
//!    threads the kernel shows blocked are read from `/proc` without a
//!    signal). A thread that stays inside (a signal handler that
//!    interrupted it there and blocks, a debugger) makes the install time
//!    out: an *abort* batch puts every first byte back and unparks, and
//!    [`Error::NotClear`] names the threads. Nothing is left half-done.
//! 3. **Jump.** The usual three-pass batch turns `int3 + original[1..5]`
//!    into `jmp d`: pass 1 finds the `int3` already in place, pass 2 writes
//!    bytes 1..4, pass 3 writes `e9`; a thread trapping meanwhile is sent to
//!    `d` by the same emulation. The site is unparked after the batch.
//!
//! [`remove`] goes back in one batch: `int3` on `s` (emulated as the jump
//! to `d`), the original bytes 1..4, the original first byte; threads keep
//! flowing through `d` until the last pass, and a trap delivered later
//! re-executes the original first instruction. The detour is then
//! *retired*, never reused: it is freed only once no thread can still be in
//! it or return into it ([`reclaim`], which waits for that on its own, or
//! [`free_retired`] after the caller's own quiescence wait, for callers
//! that know more about what the detour's site calls).
//!
//! # Invariants
//!
//! - Every step is a batch: validated whole before anything is written
//!   (the region's N bytes are the original ones, the site is in the state
//!   the step starts from, no other batch entry touches a region), so a
//!   refused step changes nothing.
//! - A site is parked before the batch that writes its `int3` is
//!   published, and unparked only after the batch that replaces it is
//!   unpublished: a trap on it is always redirected, never taken for a
//!   foreign breakpoint.
//! - Detour memory is executable before anything points at it (its bytes
//!   are written and every core synced before the park batch), and is
//!   freed only after a wait that saw no thread able to reach it.
//! - All of it runs under the batch lock: nothing else changes text or
//!   detours meanwhile, and a `fork` waits for an install or removal under
//!   way.

mod memory;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use memory::{alloc_detour, discard_detour, free_retired, retired_detours, write_detour};

use crate::batch::{RelocStep, Step};
use crate::trap::Parked;
use crate::{Batch, Error};

/// One function to relocate: what [`install`] needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relocation {
    /// The first byte the jump overwrites (a function's entry, or just
    /// after its `endbr64`).
    pub site: usize,
    /// The N ≥ 5 bytes of whole instructions at `site` that the detour runs
    /// instead, exactly as they are in the text now (checked).
    pub original: Vec<u8>,
    /// The detour: allocated with [`alloc_detour`] within reach of `site`,
    /// filled with [`write_detour`].
    pub detour: usize,
}

/// Where an [`install_with`] hook is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Every site is parked (`int3` over its original bytes) and cores are
    /// synced; the regions may still have threads inside.
    Parked,
    /// No thread is inside any region; the jump batch comes next.
    Clear,
}

/// What an [`install`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Functions relocated.
    pub relocated: usize,
    /// Rounds of observation until the regions were clear (1: clear at
    /// the first look).
    pub rounds: u32,
    /// Time spent waiting for the regions to be clear.
    pub waited: Duration,
    /// Wall time of the whole install.
    pub elapsed: Duration,
}

/// What a [`remove`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Functions given back their original bytes.
    pub removed: usize,
    /// The retirement generation of their detours (see [`free_retired`]).
    pub generation: u64,
}

/// A relocated (or parked) function, as the engine tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub site: usize,
    pub detour: usize,
    pub original: Vec<u8>,
    /// Between the park and jump steps.
    pub parked: bool,
}

impl Region {
    fn end(&self) -> usize {
        self.site + self.original.len()
    }
}

static REGISTRY: Mutex<BTreeMap<usize, Region>> = Mutex::new(BTreeMap::new());

/// The relocated functions, by site. Only used under the batch lock (so a
/// `fork`, which takes that lock first, never copies it held).
pub(crate) struct Registry(MutexGuard<'static, BTreeMap<usize, Region>>);

/// The registry, under the batch lock (the caller holds it).
pub(crate) fn registry() -> Registry {
    Registry(REGISTRY.lock().unwrap_or_else(|e| e.into_inner()))
}

impl Registry {
    /// The function relocated (or parked) at exactly `site`.
    pub fn at(&self, site: usize) -> Option<&Region> {
        self.0.get(&site)
    }

    /// A relocated function whose region overlaps `[addr, addr+len)`.
    /// Regions are disjoint, so the last one starting below the end is the
    /// only one that can.
    pub fn touching(&self, addr: usize, len: usize) -> Option<&Region> {
        let end = addr.saturating_add(len);
        self.0
            .range(..end)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end() > addr)
    }

    /// The parked sites, for the trap handler.
    pub fn parked(&self) -> Vec<Parked> {
        self.0
            .values()
            .filter(|r| r.parked)
            .map(|r| Parked {
                site: r.site,
                detour: r.detour,
            })
            .collect()
    }

    /// Follows a step that was applied.
    pub fn record(&mut self, r: &RelocStep) {
        match r.step {
            Step::Park => {
                self.0.insert(
                    r.site,
                    Region {
                        site: r.site,
                        detour: r.detour,
                        original: r.region.clone(),
                        parked: true,
                    },
                );
            }
            Step::Jump => {
                if let Some(g) = self.0.get_mut(&r.site) {
                    g.parked = false;
                }
            }
            Step::Abort | Step::Unjump => {
                self.0.remove(&r.site);
            }
        }
    }
}

/// The detour of the function relocated at `site`, if it is (installed,
/// not merely parked).
pub fn detour_of(site: usize) -> Option<usize> {
    let _g = crate::batch::lock();
    registry().at(site).filter(|r| !r.parked).map(|r| r.detour)
}

/// Every relocated function: (site, detour, N).
pub fn relocated() -> Vec<(usize, usize, usize)> {
    let _g = crate::batch::lock();
    registry()
        .0
        .values()
        .filter(|r| !r.parked)
        .map(|r| (r.site, r.detour, r.original.len()))
        .collect()
}

/// Relocates every function of `list` live, as described in the module
/// docs: park, wait until no thread is inside any region (at most
/// `timeout`), jump. Either every function is relocated or, on error, none
/// is and their text is as it was (their detours stay allocated, for the
/// caller to retry or [`discard_detour`]).
pub fn install(list: &[Relocation], timeout: Duration) -> Result<Installed, Error> {
    install_with(list, timeout, |_| {})
}

/// [`install`], calling `hook` at each [`Stage`] (for tests that must act
/// while the sites are parked).
pub fn install_with(
    list: &[Relocation],
    timeout: Duration,
    mut hook: impl FnMut(Stage),
) -> Result<Installed, Error> {
    let start = Instant::now();
    if list.is_empty() {
        return Ok(Installed::default());
    }
    crate::sync::register().map_err(Error::NoCoreSync)?;
    crate::lock::register_atfork();
    let _guard = crate::batch::lock();
    for r in list {
        if r.original.len() < 5 {
            return Err(Error::Detour {
                addr: r.detour,
                why: "the relocated region is shorter than the 5-byte jump",
            });
        }
        memory::check_ready(r.detour)?;
    }
    // Whatever was in the detours' memory before (a retired detour, freed
    // and allocated again) must not linger in any core's pipeline.
    crate::sync::sync_cores();

    let batch = |step: Step| -> Result<Batch, Error> {
        let mut b = Batch::with_capacity(list.len());
        for r in list {
            b.queue_relocation(r.site, r.detour, &r.original, step)?;
        }
        Ok(b)
    };
    batch(Step::Park)?.apply()?;
    hook(Stage::Parked);

    let mut inside: Vec<Range<usize>> = list
        .iter()
        .map(|r| r.site + 1..r.site + r.original.len())
        .collect();
    inside.sort_unstable_by_key(|r| r.start);
    let waited = Instant::now();
    let rounds = match crate::world::wait_outside(&inside, timeout) {
        Ok(n) => n,
        Err(threads) => {
            // Back to the original bytes: every step from here is a batch
            // validated against the state the park left.
            if let Err(e) = batch(Step::Abort).and_then(|b| b.apply()) {
                crate::fatal(&format!("cannot undo a parked relocation: {e}"));
            }
            return Err(Error::NotClear { threads });
        }
    };
    let waited = waited.elapsed();
    hook(Stage::Clear);
    if let Err(e) = batch(Step::Jump).and_then(|b| b.apply()) {
        // Validated a moment ago under the lock: only a system call can
        // have failed. Leave the text as it was.
        if let Err(e2) = batch(Step::Abort).and_then(|b| b.apply()) {
            crate::fatal(&format!(
                "cannot undo a parked relocation ({e2}) after the jump failed ({e})"
            ));
        }
        return Err(e);
    }
    for r in list {
        memory::mark_installed(r.detour);
    }
    Ok(Installed {
        relocated: list.len(),
        rounds,
        waited,
        elapsed: start.elapsed(),
    })
}

/// Gives the functions relocated at `sites` their original bytes back, as
/// one batch, and retires their detours (see [`reclaim`] and
/// [`free_retired`]). The detours' own sites should be NOPs first: a
/// thread already on its way through one keeps going, but no new one comes.
/// Nothing changes when any site is not relocated.
pub fn remove(sites: &[usize]) -> Result<Removed, Error> {
    if sites.is_empty() {
        return Ok(Removed {
            removed: 0,
            generation: memory::generation(),
        });
    }
    crate::sync::register().map_err(Error::NoCoreSync)?;
    crate::lock::register_atfork();
    let _guard = crate::batch::lock();
    let mut batch = Batch::with_capacity(sites.len());
    let mut detours = Vec::with_capacity(sites.len());
    {
        let reg = registry();
        let mut missing = Vec::new();
        for &s in sites {
            match reg.at(s) {
                Some(r) if !r.parked => {
                    batch.queue_relocation(s, r.detour, &r.original, Step::Unjump)?;
                    detours.push(r.detour);
                }
                _ => missing.push(crate::Rejection {
                    site: s,
                    expected: [0; 5],
                    found: crate::batch::read_site(s).ok(),
                    reason: crate::RejectReason::RelocationState,
                }),
            }
        }
        if !missing.is_empty() {
            return Err(Error::Rejected(missing));
        }
    }
    batch.apply()?;
    let generation = memory::retire(&detours);
    Ok(Removed {
        removed: sites.len(),
        generation,
    })
}

/// What a [`reclaim`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Detours freed.
    pub freed: usize,
    /// Detours still retired (a thread may still be in one).
    pub kept: usize,
}

/// Frees the retired detours no thread can reach any more, waiting at most
/// `timeout` for them to be clear: no thread's RIP, no RIP in a signal
/// frame and no word on its stacks (a return address: a thread inside
/// whatever the detour's site called) in any of them. On a timeout nothing
/// is freed and the detours stay retired (never reused) for a later call.
///
/// This is enough when only the relocation leads into a detour and its
/// site calls code that returns to it. A caller whose detour sites lead
/// elsewhere first (through a jump to code that later calls the detour's
/// body) waits for its own code to be left and calls [`free_retired`].
pub fn reclaim(timeout: Duration) -> Result<Reclaimed, Error> {
    crate::lock::register_atfork();
    let _guard = crate::batch::lock();
    let (ranges, generation) = memory::retired();
    if ranges.is_empty() {
        return Ok(Reclaimed::default());
    }
    // Handlers that sent a thread to a detour have returned, or left the
    // detour's address as the RIP of their signal frame, where the wait
    // finds it.
    crate::trap::drain();
    match crate::world::wait_outside(&ranges, timeout) {
        Ok(_) => {
            let freed = memory::free_upto(generation);
            Ok(Reclaimed {
                freed,
                kept: memory::retired().0.len(),
            })
        }
        Err(threads) => Err(Error::NotClear { threads }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_overlaps() {
        let mut m = BTreeMap::new();
        for (s, n) in [(100usize, 7usize), (200, 5)] {
            m.insert(
                s,
                Region {
                    site: s,
                    detour: 0,
                    original: vec![0; n],
                    parked: false,
                },
            );
        }
        // A registry over a map of its own, not the process's.
        let own: &'static Mutex<BTreeMap<usize, Region>> = Box::leak(Box::new(Mutex::new(m)));
        let r = Registry(own.lock().unwrap());
        assert_eq!(r.touching(100, 5).map(|g| g.site), Some(100));
        assert_eq!(r.touching(96, 5).map(|g| g.site), Some(100));
        assert_eq!(r.touching(95, 5).map(|g| g.site), None);
        assert_eq!(r.touching(106, 5).map(|g| g.site), Some(100));
        assert_eq!(r.touching(107, 5).map(|g| g.site), None);
        assert_eq!(r.touching(199, 1).map(|g| g.site), None);
        assert_eq!(r.touching(204, 1).map(|g| g.site), Some(200));
        assert_eq!(r.touching(150, 100).map(|g| g.site), Some(200));
    }
}
