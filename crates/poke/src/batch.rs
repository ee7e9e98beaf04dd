//! Batches: validate everything, then rewrite every site with the int3
//! protocol.

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

/// Why a queued site was refused. Nothing is written when any is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The site address.
    pub site: usize,
    /// The bytes the caller said the site holds.
    pub expected: [u8; 5],
    /// What it holds, when it could be read.
    pub found: Option<[u8; 5]>,
    /// Which check failed.
    pub reason: RejectReason,
}

/// The check a rejected site failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The site's bytes are not the expected ones.
    Mismatch,
    /// The five bytes are not all mapped readable and executable.
    NotText,
    /// The site is queued more than once.
    Duplicate,
    /// The site overlaps the five bytes of another queued site.
    Overlap {
        /// The other site.
        other: usize,
    },
    /// The text is mapped `MAP_SHARED`: writing it would change the file
    /// on disk (or every process mapping it).
    Shared,
    /// The five bytes are inside (or at) the region of a relocated
    /// function, whose site is given: they are not a site of their own,
    /// and only the relocation's own steps may change them.
    Relocated {
        /// The relocated function's site.
        site: usize,
    },
    /// A relocation step found its site in the wrong state: parking a site
    /// already parked or relocated, placing the jump or aborting at a site
    /// not parked for this detour, or removing a relocation that is not
    /// installed with this detour and these original bytes.
    RelocationState,
    /// The original bytes past the first five, which the relocation moves
    /// out of line too, differ from what the caller said at this address.
    RegionMismatch {
        /// The first differing byte.
        at: usize,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site {:#x}: ", self.site)?;
        match self.reason {
            RejectReason::Mismatch => {}
            RejectReason::NotText => f.write_str("not mapped executable text; ")?,
            RejectReason::Duplicate => f.write_str("queued twice; ")?,
            RejectReason::Overlap { other } => {
                write!(f, "overlaps the site at {other:#x}; ")?;
            }
            RejectReason::Shared => {
                f.write_str("text mapped MAP_SHARED (writing it would write the file on disk); ")?
            }
            RejectReason::Relocated { site } => write!(
                f,
                "inside the relocated prologue of the function whose site is {site:#x}; "
            )?,
            RejectReason::RelocationState => {
                f.write_str("not in the state this relocation step starts from; ")?
            }
            RejectReason::RegionMismatch { at } => write!(
                f,
                "the relocated bytes differ from the original at {at:#x}; "
            )?,
        }
        write!(f, "expected {}", Hex5(self.expected))?;
        match self.found {
            Some(b) => write!(f, ", found {}", Hex5(b)),
            None => f.write_str(", found nothing readable"),
        }
    }
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

/// Checks every entry (sorted by site) before anything is written. An entry
/// that is a relocation step (in `relocs`, sorted too) covers its whole
/// region, whose bytes past the first five must be the original ones; no
/// other entry may touch a relocated function's region; and each step must
/// find its site in the state it starts from (`registry`).
fn validate(
    entries: &[Entry],
    relocs: &[RelocStep],
    registry: &Registry,
    maps: &Maps,
) -> Result<(), Error> {
    let mut bad = Vec::new();
    let mut prev: Option<(usize, usize)> = None; // (site, extent)
                                                 // Sites are sorted: remember the last text range found, so a batch of
                                                 // thousands of sites does a handful of map lookups, not one each.
    let mut text = 0..0;
    let step_of = |site: usize| {
        relocs
            .binary_search_by_key(&site, |r| r.site)
            .ok()
            .map(|i| &relocs[i])
    };
    for e in entries {
        let step = step_of(e.site);
        let extent = step.map_or(5, |r| r.region.len());
        let reason = match prev {
            Some((p, _)) if p == e.site => Some(RejectReason::Duplicate),
            Some((p, n)) if e.site < p + n => Some(RejectReason::Overlap { other: p }),
            _ => None,
        };
        prev = Some((e.site, extent));
        let readable = (text.start <= e.site && e.site.saturating_add(extent) <= text.end) || {
            match maps.text_range(e.site, extent) {
                Some(r) => {
                    text = r;
                    true
                }
                None => false,
            }
        };
        let found = readable.then(|| read5(e.site));
        let reason = reason
            .or(match found {
                None => Some(RejectReason::NotText),
                Some(b) if b != e.old => Some(RejectReason::Mismatch),
                Some(_) if maps.is_shared(e.site, extent) => Some(RejectReason::Shared),
                Some(_) => None,
            })
            .or_else(|| match step {
                None => registry
                    .touching(e.site, 5)
                    .map(|r| RejectReason::Relocated { site: r.site }),
                Some(r) => check_step(r, registry),
            });
        if let Some(reason) = reason {
            bad.push(Rejection {
                site: e.site,
                expected: e.old,
                found,
                reason,
            });
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Rejected(bad))
    }
}

/// Whether a relocation step may run: the rest of its region holds the
/// original bytes, and its site is in the state the step starts from.
fn check_step(r: &RelocStep, registry: &Registry) -> Option<RejectReason> {
    let n = r.region.len();
    for (i, &want) in r.region.iter().enumerate().skip(5) {
        // SAFETY: validation found [site, site+n) mapped text.
        let b = unsafe { std::ptr::read_volatile((r.site + i) as *const u8) };
        if b != want {
            return Some(RejectReason::RegionMismatch { at: r.site + i });
        }
    }
    let same = |g: &Region| g.detour == r.detour && g.original == r.region;
    match (r.step, registry.at(r.site)) {
        (Step::Park, None) => registry
            .touching(r.site, n)
            .map(|g| RejectReason::Relocated { site: g.site }),
        (Step::Jump | Step::Abort, Some(g)) if g.parked && same(g) => None,
        (Step::Unjump, Some(g)) if !g.parked && same(g) => None,
        _ => Some(RejectReason::RelocationState),
    }
}

/// The parked sets a relocation batch publishes: the current one plus the
/// sites it parks (before its first int3), and that minus the sites whose
/// int3 it replaces (after it). Built before the batch writes anything.
struct ParkedSets {
    /// The two new sets (null when the batch parks, or unparks, nothing),
    /// owned here until published, then by `trap::PARKED`.
    sets: [*mut ParkedSet; 2],
    /// What each publication replaced (null: not published yet), freed in
    /// `retire`, after the batch's drain.
    replaced: std::cell::Cell<[Option<*mut Published<Parked>>; 2]>,
}

/// A published parked set: its header first, so a pointer to the whole is
/// a pointer to what the handler reads.
#[repr(C)]
struct ParkedSet {
    header: Published<Parked>,
    list: Vec<Parked>,
}

impl ParkedSet {
    fn raw(mut list: Vec<Parked>) -> *mut ParkedSet {
        list.sort_unstable_by_key(|p| p.site);
        Box::into_raw(Box::new(ParkedSet {
            header: Published {
                ptr: list.as_ptr(),
                len: list.len(),
            },
            list,
        }))
    }
}

impl ParkedSets {
    fn new(registry: &Registry, relocs: &[RelocStep]) -> ParkedSets {
        // `relocs` is sorted by site (and holds each site once).
        let unparks = |site: usize| {
            relocs
                .binary_search_by_key(&site, |r| r.site)
                .is_ok_and(|i| matches!(relocs[i].step, Step::Jump | Step::Abort))
        };
        let parks = relocs.iter().any(|r| r.step == Step::Park);
        let mut before = registry.parked();
        before.extend(
            relocs
                .iter()
                .filter(|r| r.step == Step::Park)
                .map(|r| Parked {
                    site: r.site,
                    detour: r.detour,
                }),
        );
        let any_unpark = before.iter().any(|p| unparks(p.site));
        let after: Vec<Parked> = before
            .iter()
            .filter(|p| !unparks(p.site))
            .copied()
            .collect();
        ParkedSets {
            sets: [
                if parks {
                    ParkedSet::raw(before)
                } else {
                    std::ptr::null_mut()
                },
                if any_unpark {
                    ParkedSet::raw(after)
                } else {
                    std::ptr::null_mut()
                },
            ],
            replaced: std::cell::Cell::new([None; 2]),
        }
    }

    fn publish(&self, which: usize) {
        let set = self.sets[which];
        if set.is_null() {
            return;
        }
        let old = trap::PARKED.swap(set as *mut Published<Parked>, SeqCst);
        trap::SEQ.fetch_add(1, SeqCst);
        let mut r = self.replaced.get();
        r[which] = Some(old);
        self.replaced.set(r);
    }

    fn publish_before(&self) {
        self.publish(0);
    }

    fn publish_after(&self) {
        self.publish(1);
    }

    /// After the batch's drain: frees what the publications replaced (no
    /// handler can read it any more) and any set never published.
    fn retire(self) {
        let replaced = self.replaced.get();
        for (which, set) in self.sets.into_iter().enumerate() {
            if !set.is_null() && replaced[which].is_none() {
                // SAFETY: from ParkedSet::raw, never published.
                drop(unsafe { Box::from_raw(set) });
            }
        }
        for old in replaced.into_iter().flatten() {
            if !old.is_null() {
                // SAFETY: every parked set ever published came from
                // `ParkedSet::raw` (its header first); this one was
                // replaced by this batch, which drained afterwards.
                drop(unsafe { Box::from_raw(old as *mut ParkedSet) });
            }
        }
    }
}

/// Reads five bytes of text already known to be mapped.
fn read5(site: usize) -> [u8; 5] {
    // SAFETY: the caller checked that [site, site+5) is mapped readable.
    // Volatile: text changes behind the compiler's back (other batches, run
    // under the same lock, but also any other writer of code).
    unsafe { std::ptr::read_volatile(site as *const [u8; 5]) }
}

/// Reads the five bytes at `site`, checking first that they are mapped
/// readable and executable.
pub fn read_site(site: usize) -> Result<[u8; 5], Error> {
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_text(site, 5) {
        return Err(Error::NotText { site });
    }
    Ok(read5(site))
}

/// Reads `len` bytes of text at `addr`, checking first that they are all
/// mapped readable and executable.
pub fn read_text(addr: usize, len: usize) -> Result<Vec<u8>, Error> {
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_text(addr, len) {
        return Err(Error::NotText { site: addr });
    }
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: [addr, addr+len) is mapped readable (checked above).
        *b = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
    }
    Ok(out)
}

/// Reads `len` bytes of any readable memory at `addr` (checked first).
pub fn read_memory(addr: usize, len: usize) -> Result<Vec<u8>, Error> {
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_readable(addr, len) {
        return Err(Error::NotText { site: addr });
    }
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: [addr, addr+len) is mapped readable (checked above).
        *b = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
    }
    Ok(out)
}

/// Rewrites the five bytes at `site` from `expected` to `new` with plain
/// stores, without the int3 protocol: the kernel's `text_poke_early`.
///
/// Unlike a batch this accepts any bytes, so that GCC's five one-byte NOPs
/// can be made one 5-byte NOP once, and syncs all cores afterwards.
///
/// # Safety
/// No thread may be executing, or be stopped inside, the five bytes while
/// this runs: the process is single-threaded, the code was just loaded and
/// has not run yet, or every other thread is stopped with its RIP outside.
pub unsafe fn poke_quiescent(site: usize, expected: [u8; 5], new: [u8; 5]) -> Result<(), Error> {
    sync::register().map_err(Error::NoCoreSync)?;
    let _guard = lock();
    let maps = Maps::read().map_err(Error::Io)?;
    if !maps.is_text(site, 5) {
        return Err(Error::NotText { site });
    }
    let found = read5(site);
    if found != expected {
        return Err(Error::Rejected(vec![Rejection {
            site,
            expected,
            found: Some(found),
            reason: RejectReason::Mismatch,
        }]));
    }
    let text = Unlocked::new(&maps, std::iter::once(site)).map_err(Error::Io)?;
    for (i, b) in new.iter().enumerate() {
        // SAFETY: validated text made writable; the caller guarantees no
        // thread executes these bytes now.
        unsafe { std::ptr::write_volatile((site + i) as *mut u8, *b) };
    }
    drop(text);
    sync::sync_cores();
    Ok(())
}

/// Adds the batch's sites to the known set, publishing a new sorted array if
/// any is new. Returns the array it replaced, to be freed after a drain.
fn publish_known(entries: &[Entry]) -> Option<Box<KnownSet>> {
    let cur = trap::KNOWN.load(SeqCst);
    let known: &[usize] = if cur.is_null() {
        &[]
    } else {
        // SAFETY: the known set is replaced only here, under LOCK, so the
        // current one is alive while we hold the lock.
        unsafe { &(*(cur as *const KnownSet)).sites }
    };
    // Both sorted. The common case, every site already known, is one tight
    // merge pass that allocates nothing.
    let mut i = 0;
    let all_known = entries.iter().all(|e| {
        i += known[i..].iter().take_while(|&&k| k < e.site).count();
        known.get(i) == Some(&e.site)
    });
    if all_known {
        return None;
    }
    let mut merged = Vec::with_capacity(known.len() + entries.len());
    let mut k = known.iter().copied().peekable();
    for s in entries.iter().map(|e| e.site) {
        while let Some(x) = k.next_if(|&x| x < s) {
            merged.push(x);
        }
        k.next_if_eq(&s);
        merged.push(s);
    }
    merged.extend(k);
    let new = Box::new(KnownSet::new(merged));
    let old = trap::KNOWN.swap(Box::into_raw(new) as *mut _, SeqCst);
    // SAFETY: `old` came from Box::into_raw in an earlier call (or is null).
    (!old.is_null()).then(|| unsafe { Box::from_raw(old as *mut KnownSet) })
}

/// Frees a replaced known set once no handler can be reading it.
fn retire_known(old: Option<Box<KnownSet>>) {
    if old.is_some() {
        trap::drain();
    }
    drop(old);
}

/// The known set: its `Published` header first, so a pointer to the whole is
/// a pointer to what the handler reads.
#[repr(C)]
struct KnownSet {
    header: Published<usize>,
    sites: Vec<usize>,
}

impl KnownSet {
    fn new(sites: Vec<usize>) -> KnownSet {
        KnownSet {
            header: Published {
                ptr: sites.as_ptr(),
                len: sites.len(),
            },
            sites,
        }
    }
}
