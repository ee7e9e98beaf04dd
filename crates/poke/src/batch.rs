//! Batches: validate everything, then rewrite every site with the int3
//! protocol.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::insn::{Hex5, Insn, INT3};
use crate::maps::Maps;
use crate::text::Unlocked;
use crate::trap::{self, Emulate, Entry, Published};
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
        let maps = Maps::read().map_err(Error::Io)?;
        validate(&self.entries, &maps)?;
        check_process()?;

        trap::ensure_installed().map_err(Error::Io)?;
        let old_known = publish_known(&self.entries);

        let text = match Unlocked::new(&maps, self.entries.iter().map(|e| e.site)) {
            Ok(t) => t,
            Err(e) => {
                retire_known(old_known);
                return Err(Error::Io(e));
            }
        };
        let runs = text.runs();
        let poked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.poke(&mut hook)));
        drop(text);
        retire_known(old_known);
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
    fn poke(&self, hook: &mut impl FnMut(Phase)) -> usize {
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
        let syncs = self.protocol(&mut hook);
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
        syncs
    }

    fn protocol(&self, hook: &mut impl FnMut(Phase)) -> usize {
        let desc = Published {
            ptr: self.entries.as_ptr(),
            len: self.entries.len(),
        };
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
        trap::drain();
        syncs
    }
}

/// Checks every entry (sorted by site) before anything is written.
fn validate(entries: &[Entry], maps: &Maps) -> Result<(), Error> {
    let mut bad = Vec::new();
    let mut prev: Option<&Entry> = None;
    // Sites are sorted: remember the last text range found, so a batch of
    // thousands of sites does a handful of map lookups, not one each.
    let mut text = 0..0;
    for e in entries {
        let reason = match prev {
            Some(p) if p.site == e.site => Some(RejectReason::Duplicate),
            Some(p) if e.site < p.site + 5 => Some(RejectReason::Overlap { other: p.site }),
            _ => None,
        };
        prev = Some(e);
        let readable = (text.start <= e.site && e.site.saturating_add(5) <= text.end) || {
            match maps.text_range(e.site, 5) {
                Some(r) => {
                    text = r;
                    true
                }
                None => false,
            }
        };
        let found = readable.then(|| read5(e.site));
        let reason = reason.or(match found {
            None => Some(RejectReason::NotText),
            Some(b) if b != e.old => Some(RejectReason::Mismatch),
            Some(_) if maps.is_shared(e.site, 5) => Some(RejectReason::Shared),
            Some(_) => None,
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
