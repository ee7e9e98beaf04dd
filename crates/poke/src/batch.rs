//! Batches: validate everything, then rewrite every site with the int3
//! protocol.
//!
//! This module holds the [`Batch`] and the protocol; its children hold
//! the checks made before anything is written (`validate`), the state
//! published to the trap handler (`parked`, `known`), and plain reads and
//! the quiescent write (`access`).

mod access;
mod known;
mod parked;
mod validate;

use access::read5;
pub use access::{poke_quiescent, read_memory, read_site, read_text};
use known::{publish_known, retire_known};
use parked::ParkedSets;
use validate::validate;
pub use validate::{RejectReason, Rejection};

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::insn::{Hex5, Insn, INT3};
use crate::maps::Maps;
use crate::relocation::{self, Region, Registry};
use crate::text::Unlocked;
use crate::trap::{self, Emulate, Entry, Parked, Published};
use crate::{sync, Error};

/// One batch at a time per process: the handler serves one active batch, and
/// the known set is updated only here (see [`crate::lock`]).
pub(crate) fn lock() -> crate::lock::EngineGuard {
    crate::lock::BATCH.lock()
}

/// Patch even while a debugger traces the process.
static ALLOW_TRACER: AtomicBool = AtomicBool::new(false);

/// Lets batches run while a ptrace tracer is attached, which they refuse by
/// default ([`Error::Traced`]): a debugger stops on the engine's `int3`s as
/// on its own breakpoints and resumes the thread at `site + 1`, in the
/// middle of the instruction, without the signal. (gdb's `handle SIGTRAP
/// nostop pass` does not help: it passes gdb's own internal breakpoint
/// traps on too, which kills the program.) Only for a tracer that passes
/// every signal on, as `strace` does. Also set by
/// `LIVETRACE_ALLOW_PTRACE=1`.
pub fn allow_tracer(allow: bool) {
    ALLOW_TRACER.store(allow, SeqCst);
}

fn tracer_allowed() -> bool {
    ALLOW_TRACER.load(SeqCst)
        || std::env::var_os("LIVETRACE_ALLOW_PTRACE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Everything that must hold before any byte of a batch is written, beyond
/// the sites themselves: no debugger that would eat our traps, and every
/// thread able to take SIGTRAP.
fn check_process() -> Result<(), Error> {
    if let Some(pid) = crate::world::proc::tracer_pid() {
        if !tracer_allowed() {
            let mut name = [0u8; 32];
            let n = crate::world::proc::comm_of_pid(pid, &mut name);
            return Err(Error::Traced {
                pid,
                name: String::from_utf8_lossy(&name[..n]).into_owned(),
            });
        }
    }
    crate::signals::keep_interposers();
    crate::signals::sanitize();
    crate::signals::check_threads()
}

/// What happened after each step of the protocol, for [`Batch::apply_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every site starts with `int3`, and all cores are synced: any thread
    /// reaching a site now traps and has the new instruction emulated.
    Int3,
    /// The tail bytes are written and synced; the `int3`s are still there.
    Tail,
    /// The new first bytes are written and synced; the handler no longer
    /// finds these sites in an active batch once this hook returns.
    Done,
}

/// Figures about one applied batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Sites rewritten.
    pub sites: usize,
    /// Runs of pages made writable (one `mprotect` each way per run).
    pub runs: usize,
    /// Core syncs issued.
    pub syncs: usize,
    /// Wall time of the whole `apply`, validation included.
    pub elapsed: Duration,
}

/// A set of sites to rewrite together.
///
/// Queue with [`Batch::queue`] (instructions) or [`Batch::queue_bytes`]
/// (raw bytes that must decode as one of our forms), then [`Batch::apply`].
#[derive(Default, Debug)]
pub struct Batch {
    entries: Vec<Entry>,
    /// The entries that are steps of prologue relocations (crate-internal:
    /// only [`crate::relocation`] queues them), by site.
    relocs: Vec<RelocStep>,
}

/// One step of a prologue relocation's protocol (see [`crate::relocation`]).
/// Each is an entry whose trap is emulated as "jump to the detour", and
/// whose old and new bytes are those of the step; `region` is the function's
/// original bytes at the site (N ≥ 5), all of which the batch validates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Original bytes -> `int3` over them; the site becomes parked.
    Park,
    /// Parked `int3` -> `jmp detour`; the site is unparked, relocated.
    Jump,
    /// Parked `int3` -> the original first byte; unparked, not relocated.
    Abort,
    /// `jmp detour` -> the original bytes; not relocated any more.
    Unjump,
}

#[derive(Clone, Debug)]
pub(crate) struct RelocStep {
    pub site: usize,
    pub detour: usize,
    pub region: Vec<u8>,
    pub step: Step,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch with room for `n` sites.
    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            entries: Vec::with_capacity(n),
            relocs: Vec::new(),
        }
    }

    /// Sites queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues the site at `site`, which must hold `old`, to become `new`.
    ///
    /// Fails at once when either instruction's target is out of rel32 range.
    pub fn queue(&mut self, site: usize, old: Insn, new: Insn) -> Result<(), Error> {
        let old_bytes = old.encode(site)?;
        self.push(site, old_bytes, new)
    }

    /// Queues the site at `site`, which must hold `old`, to hold `new`.
    ///
    /// Both must decode as one whole instruction of our forms; GCC's five
    /// one-byte NOPs in particular are refused, since a thread may be
    /// stopped between two of them.
    pub fn queue_bytes(&mut self, site: usize, old: [u8; 5], new: [u8; 5]) -> Result<(), Error> {
        if Insn::decode(site, old).is_none() {
            return Err(Error::Form { site, bytes: old });
        }
        let Some(new_insn) = Insn::decode(site, new) else {
            return Err(Error::Form { site, bytes: new });
        };
        self.push(site, old, new_insn)
    }

    fn push(&mut self, site: usize, old: [u8; 5], new: Insn) -> Result<(), Error> {
        let new_bytes = new.encode(site)?;
        let (emulate, target) = match new {
            Insn::Nop => (Emulate::Nop, 0),
            Insn::Call(t) => (Emulate::Call, t),
            Insn::Jmp(t) => (Emulate::Jmp, t),
        };
        self.entries.push(Entry {
            site,
            target,
            emulate,
            old,
            new: new_bytes,
        });
        Ok(())
    }

    /// Queues one step of the relocation of the prologue at `site` (whose
    /// original bytes are `region`, N ≥ 5) to the detour at `detour`. The
    /// old and new bytes follow from the step; a trap at the site during
    /// the batch is sent to the detour, whatever the step.
    pub(crate) fn queue_relocation(
        &mut self,
        site: usize,
        detour: usize,
        region: &[u8],
        step: Step,
    ) -> Result<(), Error> {
        let Some(orig) = region.get(..5) else {
            return Err(Error::Form {
                site,
                bytes: [0; 5],
            });
        };
        let orig: [u8; 5] = orig.try_into().expect("five bytes");
        let jmp = Insn::Jmp(detour).encode(site)?;
        let parked = [INT3, orig[1], orig[2], orig[3], orig[4]];
        let (old, new) = match step {
            Step::Park => (orig, parked),
            Step::Jump => (parked, jmp),
            Step::Abort => (parked, orig),
            Step::Unjump => (jmp, orig),
        };
        self.entries.push(Entry {
            site,
            target: detour,
            emulate: Emulate::Jmp,
            old,
            new,
        });
        self.relocs.push(RelocStep {
            site,
            detour,
            region: region.to_vec(),
            step,
        });
        Ok(())
    }

    /// Rewrites every queued site, live, as one batch. See the crate docs for
    /// the protocol. Either every site is rewritten or, on error, none is.
    pub fn apply(self) -> Result<Applied, Error> {
        self.apply_with(|_| {})
    }

    /// [`Batch::apply`], calling `hook` after each step of the protocol while
    /// the batch is live. For tests and benchmarks that must observe a site
    /// mid-batch (executing a site from `hook` exercises the trap handler).
    pub fn apply_with(mut self, mut hook: impl FnMut(Phase)) -> Result<Applied, Error> {
        let start = Instant::now();
        if self.entries.is_empty() {
            return Ok(Applied::default());
        }
        sync::register().map_err(Error::NoCoreSync)?;
        crate::lock::register_atfork();
        let _guard = lock();

        self.entries.sort_unstable_by_key(|e| e.site);
        self.relocs.sort_unstable_by_key(|r| r.site);
        let maps = Maps::read().map_err(Error::Io)?;
        let mut registry = relocation::registry();
        validate(&self.entries, &self.relocs, &registry, &maps)?;
        check_process()?;

        trap::ensure_installed().map_err(Error::Io)?;
        // The parked sets to publish before the first int3 and after the
        // batch, built now: nothing allocates once text is being written.
        let parked = (!self.relocs.is_empty()).then(|| ParkedSets::new(&registry, &self.relocs));
        let old_known = publish_known(&self.entries);

        let text = match Unlocked::new(&maps, self.entries.iter().map(|e| e.site)) {
            Ok(t) => t,
            Err(e) => {
                retire_known(old_known);
                if let Some(p) = parked {
                    p.retire();
                }
                return Err(Error::Io(e));
            }
        };
        let runs = text.runs();
        let poked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.poke(parked.as_ref(), &mut hook)
        }));
        drop(text);
        retire_known(old_known);
        // The batch is done (a panicking hook only stopped being called):
        // the registry follows the text.
        if let Some(p) = parked {
            p.retire();
            for r in &self.relocs {
                registry.record(r);
            }
        }
        drop(registry);
        let syncs = poked.unwrap_or_else(|payload| std::panic::resume_unwind(payload));
        Ok(Applied {
            sites: self.entries.len(),
            runs,
            syncs,
            elapsed: start.elapsed(),
        })
    }

    /// The protocol proper (the kernel's `text_poke_bp_batch`). Nothing in
    /// here can fail: everything that could was checked before the first
    /// byte was written, so no batch is ever left half-applied.
    fn poke(&self, parked: Option<&ParkedSets>, hook: &mut impl FnMut(Phase)) -> usize {
        // A panicking hook must not unwind out of here with the batch
        // published from this stack frame and int3s in text: finish the
        // protocol, then let the panic go on from `apply_with`.
        let mut panicked = None;
        let mut hook = |phase| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(phase)));
            if let Err(payload) = r {
                panicked.get_or_insert(payload);
            }
        };
        let syncs = self.protocol(parked, &mut hook);
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
        syncs
    }

    fn protocol(&self, parked: Option<&ParkedSets>, hook: &mut impl FnMut(Phase)) -> usize {
        let desc = Published {
            ptr: self.entries.as_ptr(),
            len: self.entries.len(),
        };
        // Sites this batch parks are parked before their int3 can be
        // written: a trap on one delivered after the batch still finds it.
        if let Some(p) = parked {
            p.publish_before();
        }
        // Publish before the first int3 is written: a thread that traps on
        // one must find the batch.
        trap::ACTIVE.store(&desc as *const _ as *mut _, SeqCst);
        trap::SEQ.fetch_add(1, SeqCst);

        // (a) int3 on the first byte of every site. A thread either runs the
        // old instruction or traps and is emulated into the new one.
        for e in &self.entries {
            // SAFETY: the site is validated text, made writable for this
            // batch; a single-byte store cannot tear.
            unsafe { std::ptr::write_volatile(e.site as *mut u8, INT3) };
        }
        sync::sync_cores();
        let mut syncs = 1;
        hook(Phase::Int3);

        // (b) bytes 1..4. No core executes them now: every path into a site
        // goes through its first byte, which traps. Skipped when no tail
        // changes (only the opcode does, e.g. call X <-> jmp X).
        if self.entries.iter().any(|e| e.old[1..] != e.new[1..]) {
            for e in &self.entries {
                let tail = [e.new[1], e.new[2], e.new[3], e.new[4]];
                // SAFETY: as above; these bytes are never executed while the
                // first byte is int3, so how the store is split is invisible.
                unsafe { std::ptr::write_volatile((e.site + 1) as *mut [u8; 4], tail) };
            }
            sync::sync_cores();
            syncs += 1;
        }
        hook(Phase::Tail);

        // (c) the new first byte: each site is now the whole new instruction.
        for e in &self.entries {
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(e.site as *mut u8, e.new[0]) };
        }
        sync::sync_cores();
        syncs += 1;
        hook(Phase::Done);

        // Unpublish, then wait until no handler can still be reading `desc`
        // (which lives on this stack frame) or the entries.
        trap::ACTIVE.store(std::ptr::null_mut(), SeqCst);
        trap::SEQ.fetch_add(1, SeqCst);
        // Sites whose int3 this batch replaced are unparked only now: until
        // the batch was unpublished a late handler could still look.
        if let Some(p) = parked {
            p.publish_after();
        }
        trap::drain();
        syncs
    }
}
