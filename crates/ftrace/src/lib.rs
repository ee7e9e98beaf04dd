//! Dynamic ftrace in user space: any number of [`Ops`] attach to any set of
//! functions at run time, and each function's site calls exactly the right
//! trampoline for the ops attached to it.
//!
//! # Model
//!
//! A *record* is one traceable function (its site), kept in the
//! [`livetrace_sites::Table`]. An *ops* is a callback with a filter and a
//! notrace set ([`Pattern`]s: globs, names, addresses) and flags: needs the
//! register set ([`OpsBuilder::regs`]), modifies the resume address
//! ([`OpsBuilder::ipmodify`]). Registering, unregistering or refiltering an
//! ops recomputes, for every record whose set of ops changes, what its site
//! must call (the kernel's `ftrace_get_addr_new`):
//!
//! | ops attached | site |
//! |---|---|
//! | none | the 5-byte NOP |
//! | one, plain | that ops' *dedicated* trampoline: calls its callback directly |
//! | several, plain | the *list caller*: walks the ops, checking each one's set |
//! | any needing regs or IPMODIFY | the *regs caller*: a full register set, then the list walk |
//! | any, on a relocated function its object calls directly | the *full caller*: the regs caller that also keeps every vector and mask register (its callers may keep values in any register) |
//!
//! An ops may also bring a [`FastPath`]: machine code that does its whole
//! job without calling into Rust (the tracers record an event in a few
//! instructions). Where that ops is alone on a function, its site calls a
//! copy of the fast path, which falls back on the ordinary dedicated
//! trampoline whenever it cannot finish the call itself.
//!
//! and applies all of it as **one** engine batch: either every site changes
//! or none does, and a thread reaching a site meanwhile is sent by the trap
//! handler to exactly the new target being written.
//!
//! # Invariants
//!
//! - New state is published before the batch that makes sites use it (an
//!   ops' function set and the ops list are replaced, never edited), so a
//!   thread that reaches a new target finds everything it needs.
//! - Nothing a thread may still be using is freed until a *quiescence wait*
//!   (the stand-in for `synchronize_rcu_tasks`, in `quiesce.rs`) has seen
//!   every thread clear of it: neither executing (or, from a signal frame,
//!   about to resume) a dying trampoline, nor inside a callback it entered
//!   before the change. `unregister` returns `Ok` only then, so after it
//!   returns the callback is never called again and everything it owned
//!   has been dropped. The wait is quiet — threads the kernel shows blocked
//!   (in `poll`, `nanosleep`, `epoll_wait`…) are observed through `/proc`
//!   without a signal — and bounded: when it gives up it says which threads
//!   and why ([`Error::NotQuiescent`]), and frees nothing. Registering and
//!   refiltering never wait: what they replace waits for the next
//!   unregister.
//! - At most one IPMODIFY ops per function: a second is refused, naming the
//!   function and the owner.
//! - A callback never recurses: a traced call made while the thread is in a
//!   callback runs untraced and is counted ([`recursion_dropped`]). The
//!   guard suppresses callbacks, not redirection: a live patch
//!   ([`OpsBuilder::redirect_to`]) holds for those calls too.
//! - Bad input changes nothing: a pattern that matches no function is an
//!   error, and any failure before or during the batch leaves every site,
//!   every count and the ops list as they were.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod error;
mod fast;
mod livepatch;
mod ops;
mod quiesce;
mod regs;
mod relocate;
mod thread;
mod tramp;

use std::collections::{HashMap, HashSet};

use quiesce::{normalize, quiesce, Watch};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicPtr, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};

use livetrace_poke::Insn;
use livetrace_sites::Table;

pub use error::Error;
pub use fast::{
    inside_tpoff, FastPath, FastPathError, DROPPED_PLACEHOLDER, INSIDE_PLACEHOLDER,
    STUB_BODY_RETURN_FROM_RETURN, STUB_IP_FROM_RETURN,
};
pub use livepatch::{livepatch, livepatch_addr, LivePatch};
pub use ops::{Call, Callback, Ops, OpsBuilder, Pattern};
pub use quiesce::{quiesce_stats, set_quiescence_timeout, QuiesceStats, Straggler};
pub use regs::Regs;
pub use relocate::{relocate, set_relocate_on_demand, why_not};
pub use thread::{in_callback, recursion_dropped, suppress, Suppress};
pub use tramp::{vector_state, VectorState};

use ops::{FuncSet, OpsInner};
use tramp::{window_of, Kind, Pools};

/// The registered ops, as the list walker reads it.
struct OpsList {
    ops: Vec<Arc<OpsInner>>,
}

static LIST: AtomicPtr<OpsList> = AtomicPtr::new(std::ptr::null_mut());

/// The list caller's entry (a fast trampoline): see [`list_entry`].
extern "C" fn list_entry_fast(data: usize, slot: *mut usize) {
    // SAFETY: the trampoline passes its return slot, on the live stack for
    // the whole call (site + 5 there, the caller's return address above).
    let (ip, parent_slot) = unsafe { (slot.read() - 5, slot.add(1)) };
    list_entry(data, ip, parent_slot, std::ptr::null_mut());
}

/// Walks every registered ops and delivers the call to those whose set holds
/// `ip`: the body of the list caller and of the regs caller.
extern "C" fn list_entry(_data: usize, ip: usize, parent_slot: *mut usize, regs: *mut Regs) {
    walk(ip, parent_slot, regs, false);
}

/// The full caller's entry: the list walk, telling each callback that the
/// function's callers keep values in every register
/// ([`Call::preserves_all`]).
extern "C" fn list_entry_full(_data: usize, ip: usize, parent_slot: *mut usize, regs: *mut Regs) {
    walk(ip, parent_slot, regs, true);
}

fn walk(ip: usize, parent_slot: *mut usize, regs: *mut Regs, full: bool) {
    let list = LIST.load(Acquire);
    if list.is_null() {
        return;
    }
    // SAFETY: a published list is freed only after a quiescence wait, and
    // this thread is inside a callback (its inside byte set) until it
    // returns.
    let list = unsafe { &*list };
    // SAFETY: the regs caller passes its frame's Regs, or null.
    let mut regs = unsafe { regs.as_mut() };
    for ops in &list.ops {
        let set = ops.funcs.load(Acquire);
        // SAFETY: as for the list: replaced sets are freed after a wait.
        if !set.is_null() && unsafe { &*set }.contains(ip) {
            let mut r = if ops.regs { regs.as_deref_mut() } else { None };
            if let (Some(t), Some(r)) = (ops.redirect, r.as_deref_mut()) {
                r.ip = t as u64;
            }
            ops::deliver(ops, ip, parent_slot, r, full);
        }
    }
}

/// The regs caller's entry inside a callback (the recursion guard set):
/// no callback runs, but redirections declared as data
/// ([`OpsBuilder::redirect_to`], live patches) are applied, so a live
/// patch holds for every caller. Runs with the thread inside a callback,
/// like the list walk, so what it reads stays alive.
pub(crate) extern "C" fn guarded_entry(
    _data: usize,
    ip: usize,
    _parent_slot: *mut usize,
    regs: *mut Regs,
) {
    let list = LIST.load(Acquire);
    if list.is_null() {
        return;
    }
    // SAFETY: as in `list_entry`: the thread's inside byte is set (by the
    // callback or fast path this call interrupted or came from).
    let list = unsafe { &*list };
    // SAFETY: the regs caller passes its frame's Regs.
    let Some(regs) = (unsafe { regs.as_mut() }) else {
        return;
    };
    for ops in &list.ops {
        let Some(t) = ops.redirect else { continue };
        let set = ops.funcs.load(Acquire);
        // SAFETY: as in `list_entry`.
        if !set.is_null() && unsafe { &*set }.contains(ip) {
            regs.ip = t as u64;
            return;
        }
    }
}

/// Which trampoline a record's site calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trampoline {
    /// A dedicated trampoline calling one ops' callback directly.
    Dedicated {
        /// The ops.
        ops: String,
        /// The trampoline's address.
        addr: usize,
    },
    /// The list caller.
    List(usize),
    /// The regs caller.
    Regs(usize),
    /// Something not ours (another patcher's call or jump).
    Other(Insn),
}

/// An enabled function, for introspection (`enabled_functions`).
#[derive(Clone, Debug)]
pub struct EnabledFunction {
    /// Full name.
    pub name: String,
    /// Site address.
    pub ip: usize,
    /// Names of the ops attached.
    pub ops: Vec<String>,
    /// What its site calls.
    pub trampoline: Trampoline,
}

impl fmt::Display for EnabledFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#x}) ops=[{}] ",
            self.name,
            self.ip,
            self.ops.join(",")
        )?;
        match &self.trampoline {
            Trampoline::Dedicated { ops, addr } => {
                write!(f, "tramp: {addr:#x} (dedicated to {ops})")
            }
            Trampoline::List(a) => write!(f, "tramp: {a:#x} (list caller)"),
            Trampoline::Regs(a) => write!(f, "tramp: {a:#x} (regs caller)"),
            Trampoline::Other(i) => write!(f, "{i} (not livetrace's)"),
        }
    }
}

struct Core {
    table: Table,
    registered: Vec<Ops>,
    pools: Pools,
    /// (window, kind) -> shared list/regs caller.
    shared: HashMap<(usize, Kind), usize>,
    /// (ops id, window) -> dedicated trampoline.
    dedicated: HashMap<(u32, usize), usize>,
    /// (ops id, window) -> copy of the ops' fast path (whose fallback is
    /// the dedicated trampoline of the same key).
    fast: HashMap<(u32, usize), usize>,
    /// (ops id, window) -> the thunk a stub-served fast path falls back
    /// through.
    decline: HashMap<(u32, usize), usize>,
    /// Per-site stubs (fast paths calling the original), never freed.
    stubs: tramp::Stubs,
    /// Code every quiescence wait waits for threads to leave
    /// ([`add_critical_code`]).
    critical: Vec<Range<usize>>,
    /// Code that calls callbacks (or runs under a guard): a return address
    /// into it means a thread is inside ([`add_callback_caller`]).
    callers: Vec<Range<usize>>,
    /// Ops detached by an `unregister` whose wait failed: a later
    /// `unregister` of the same ops retries the wait.
    retiring: Vec<u32>,
    tpoff: isize,
    /// State replaced by registers and refilters, freed by the next
    /// unregister's quiescence wait: starting to trace never probes the
    /// program's threads.
    deferred: Vec<Garbage>,
}

static CORE: Mutex<Option<Core>> = Mutex::new(None);

fn core() -> Result<MutexGuard<'static, Option<Core>>, Error> {
    if thread::in_callback() {
        return Err(Error::InCallback);
    }
    let mut g = CORE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        if !thread::tls_is_static() {
            return Err(Error::DynamicTls);
        }
        *g = Some(Core {
            table: Table::new(),
            registered: Vec::new(),
            pools: Pools::default(),
            shared: HashMap::new(),
            dedicated: HashMap::new(),
            fast: HashMap::new(),
            decline: HashMap::new(),
            stubs: tramp::Stubs::default(),
            critical: Vec::new(),
            callers: Vec::new(),
            retiring: Vec::new(),
            tpoff: thread::tpoff(),
            deferred: Vec::new(),
        });
    }
    Ok(g)
}

/// Runs `f` on the record table, under the core's lock: to discover sites
/// ([`Table::rescan`], [`Table::insert_external`]) or to list them.
pub fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> Result<R, Error> {
    let mut g = core()?;
    Ok(f(&mut g.as_mut().expect("initialised").table))
}

/// Attaches `ops` to the functions its filter names, as one batch.
pub fn register(ops: &Ops) -> Result<(), Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    if c.registered.iter().any(|o| Arc::ptr_eq(&o.0, &ops.0)) {
        return Err(Error::AlreadyRegistered(ops.0.name.clone()));
    }
    let new = {
        let spec = ops.0.spec.lock().unwrap_or_else(|e| e.into_inner());
        c.relocate_on_demand(&spec.filter)?;
        c.resolve(&spec.filter, &spec.notrace)?
    };
    c.change(ops, Change::Register, new)
}

/// Detaches `ops` from every function, as one batch, and returns once no
/// thread can still be inside its callback or its trampolines.
///
/// If the wait gives up ([`Error::NotQuiescent`]), the ops is detached all
/// the same, but what it owns (its callback and captured data, its
/// trampolines) is kept: calling `unregister` on it again retries the wait
/// and returns `Ok` once it succeeds.
pub fn unregister(ops: &Ops) -> Result<(), Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    if !c.registered.iter().any(|o| Arc::ptr_eq(&o.0, &ops.0)) {
        if c.retiring.contains(&ops.0.id) {
            return c.retire(Vec::new());
        }
        return Err(Error::NotRegistered(ops.0.name.clone()));
    }
    c.change(ops, Change::Unregister, Vec::new())
}

/// Replaces `ops`' filter and notrace sets. For a registered ops, only the
/// functions that gain or lose it are patched, as one batch.
pub fn set_filter(ops: &Ops, filter: &[Pattern], notrace: &[Pattern]) -> Result<(), Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    let registered = c.registered.iter().any(|o| Arc::ptr_eq(&o.0, &ops.0));
    let new = if registered {
        c.relocate_on_demand(filter)?;
        Some(c.resolve(filter, notrace)?)
    } else {
        None
    };
    if let Some(new) = new {
        c.change(ops, Change::Refilter, new)?;
    }
    let mut spec = ops.0.spec.lock().unwrap_or_else(|e| e.into_inner());
    spec.filter = filter.to_vec();
    spec.notrace = notrace.to_vec();
    Ok(())
}

/// Every function whose site is not a NOP: the ops attached and what the
/// site calls (the kernel's `enabled_functions`).
pub fn enabled_functions() -> Result<Vec<EnabledFunction>, Error> {
    let g = core()?;
    let c = g.as_ref().expect("initialised");
    let by_addr: HashMap<usize, Trampoline> = c
        .shared
        .iter()
        .map(|(&(_, k), &a)| {
            (
                a,
                if k == Kind::Fast {
                    Trampoline::List(a)
                } else {
                    Trampoline::Regs(a)
                },
            )
        })
        .chain(
            c.dedicated
                .iter()
                .chain(c.fast.iter())
                .filter_map(|(&(id, _), &a)| {
                    let o = c.registered.iter().find(|o| o.0.id == id)?;
                    Some((
                        a,
                        Trampoline::Dedicated {
                            ops: o.0.name.clone(),
                            addr: a,
                        },
                    ))
                }),
        )
        .collect();
    let mut out = Vec::new();
    for (i, r) in c.table.records().iter().enumerate() {
        let insn = r.insn();
        if insn == Insn::Nop {
            continue;
        }
        let ip = r.ip();
        let ops: Vec<String> = c
            .registered
            .iter()
            .filter(|o| published(&o.0).is_some_and(|s| s.contains(ip)))
            .map(|o| o.0.name.clone())
            .collect();
        let trampoline = match insn {
            Insn::Call(t) => by_addr.get(&t).cloned().unwrap_or(Trampoline::Other(insn)),
            // A stub calling the only ops' fast path.
            Insn::Jmp(t) if c.stubs.of(ip) == Some(t) && ops.len() == 1 => Trampoline::Dedicated {
                ops: ops[0].clone(),
                addr: t,
            },
            other => Trampoline::Other(other),
        };
        out.push(EnabledFunction {
            name: c.table.name(i).to_string(),
            ip,
            ops,
            trampoline,
        });
    }
    Ok(out)
}

/// Waits until every thread that is inside a callback (or holds a
/// [`Suppress`]) now has left it. State unpublished before the call is then
/// no longer in use by any callback.
///
/// Fails with [`Error::NotQuiescent`] when the bounded wait gives up; the
/// caller must then keep whatever it meant to free.
pub fn synchronize() -> Result<(), Error> {
    let (tpoff, watch) = {
        let g = core()?;
        let c = g.as_ref().expect("initialised");
        (c.tpoff, c.watch(&[]))
    };
    quiesce(tpoff, &watch).map_err(|threads| Error::NotQuiescent { threads })
}

/// Declares `code` a critical section of some fast path that is not a
/// copy the core made (a return hook in a library's text): code that calls
/// nothing and uses state its owner frees only after [`synchronize`] or
/// [`unregister`]. Their quiescence waits then also wait for every thread
/// executing `code` to leave it, as for a dying trampoline.
pub fn add_critical_code(code: Range<usize>) -> Result<(), Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    if !c.critical.contains(&code) {
        c.critical.push(code);
    }
    Ok(())
}

/// Declares `code` a place that calls callbacks, or runs code under the
/// recursion guard ([`suppress`]): a return address into it on a thread's
/// stack means the thread is inside, so a quiescence wait never takes a
/// thread blocked there for one that is clear (the return hooks' slow
/// paths call Rust under [`suppress`]).
pub fn add_callback_caller(code: Range<usize>) -> Result<(), Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    if !c.callers.contains(&code) {
        c.callers.push(code);
    }
    Ok(())
}

/// The registered ops, in registration order.
pub fn registered() -> Result<Vec<Ops>, Error> {
    Ok(core()?.as_ref().expect("initialised").registered.clone())
}

fn published(ops: &OpsInner) -> Option<&FuncSet> {
    let p = ops.funcs.load(Acquire);
    // SAFETY: only called under the core lock, which every replacement of
    // the set holds, so the set is alive.
    (!p.is_null()).then(|| unsafe { &*p })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Register,
    Unregister,
    Refilter,
}

impl Core {
    /// The sites named by `filter` minus those named by `notrace`, sorted.
    fn resolve(&self, filter: &[Pattern], notrace: &[Pattern]) -> Result<Vec<usize>, Error> {
        let mut want: Vec<usize> = if filter.is_empty() {
            self.table
                .records()
                .iter()
                .filter(|r| r.is_live())
                .map(|r| r.ip())
                .collect()
        } else {
            self.matching_each(filter, "filter")?
        };
        let skip: HashSet<usize> = self
            .matching_each(notrace, "notrace")?
            .into_iter()
            .collect();
        want.retain(|ip| !skip.contains(ip));
        want.sort_unstable();
        want.dedup();
        Ok(want)
    }

    /// Live sites the patterns of `set` name; each must name one.
    fn matching_each(&self, patterns: &[Pattern], set: &'static str) -> Result<Vec<usize>, Error> {
        let mut v = Vec::new();
        for p in patterns {
            let found = self.matching(p);
            if found.is_empty() {
                return Err(Error::NoMatch {
                    pattern: p.to_string(),
                    set,
                });
            }
            v.extend(found);
        }
        Ok(v)
    }

    /// Live sites a pattern names.
    fn matching(&self, p: &Pattern) -> Vec<usize> {
        let t = &self.table;
        let idx: Vec<usize> = match p {
            Pattern::Glob(g) => t.glob(g),
            Pattern::Name(n) => t.lookup_name(n),
            Pattern::Addr(a) => self.record_at(*a).into_iter().collect(),
        };
        idx.into_iter()
            .filter(|&i| t.record(i).is_live())
            .map(|i| t.record(i).ip())
            .collect()
    }

    /// The record of the function at `addr`: its site; its entry when the
    /// site follows an `endbr64`; or, for a function whose entry is not the
    /// site itself (a `#[traced]` function's inline wrapper, taken as a
    /// function pointer), the site its first instructions lead to.
    fn record_at(&self, addr: usize) -> Option<usize> {
        if let Some(i) = self.table.find(addr) {
            return Some(i);
        }
        if let Some(i) = self.table.find_relocated_entry(addr) {
            return Some(i);
        }
        let code = livetrace_poke::read_text(addr, 4).ok()?;
        if code == [0xf3, 0x0f, 0x1e, 0xfa] {
            if let Some(i) = self.table.find(addr + 4) {
                return Some(i);
            }
        }
        livepatch::wrapper_target(addr, |a| self.table.find(a))
    }

    fn trampoline(
        &mut self,
        window: usize,
        kind: Kind,
        ops: Option<&Arc<OpsInner>>,
    ) -> Result<usize, Error> {
        let tpoff = self.tpoff;
        match ops {
            Some(o) => {
                let key = (o.id, window);
                let dedicated = match self.dedicated.get(&key) {
                    Some(&a) => a,
                    None => {
                        let a = self
                            .pools
                            .create(
                                window,
                                Kind::Fast,
                                tpoff,
                                Arc::as_ptr(o) as usize,
                                o.entry as usize,
                            )
                            .map_err(Error::Trampoline)?;
                        self.dedicated.insert(key, a);
                        a
                    }
                };
                let Some(fast) = &o.fast else {
                    return Ok(dedicated);
                };
                if let Some(&a) = self.fast.get(&key) {
                    return Ok(a);
                }
                let fallback = if fast.exit().is_some() {
                    let d = self
                        .pools
                        .create_decline(window, dedicated)
                        .map_err(Error::Trampoline)?;
                    self.decline.insert(key, d);
                    d
                } else {
                    dedicated
                };
                let a = self
                    .pools
                    .create_fast(window, tpoff, fast.code(), fallback)
                    .map_err(Error::Trampoline)?;
                self.fast.insert(key, a);
                Ok(a)
            }
            None => {
                if let Some(&a) = self.shared.get(&(window, kind)) {
                    return Ok(a);
                }
                let entry = match kind {
                    Kind::Fast => list_entry_fast as tramp::FastEntryFn as usize,
                    Kind::Regs => list_entry as tramp::EntryFn as usize,
                    Kind::Full => list_entry_full as tramp::EntryFn as usize,
                };
                let a = self
                    .pools
                    .create(window, kind, tpoff, 0, entry)
                    .map_err(Error::Trampoline)?;
                self.shared.insert((window, kind), a);
                Ok(a)
            }
        }
    }

    /// Moves `ops` to the function set `new` (empty to unregister) and
    /// everything that follows from it, as one batch.
    fn change(&mut self, ops: &Ops, how: Change, new: Vec<usize>) -> Result<(), Error> {
        let me = &ops.0;
        let old: Vec<usize> = if how == Change::Register {
            Vec::new()
        } else {
            published(me).map(|s| s.sites.clone()).unwrap_or_default()
        };
        // IPMODIFY ownership first: a refusal must change nothing.
        if me.ipmodify {
            for &ip in &new {
                let i = self.table.find(ip).expect("resolved from the table");
                if let Some(owner) = self.table.record(i).ipmodify_owner() {
                    if owner != me.id {
                        let owner = self
                            .registered
                            .iter()
                            .find(|o| o.0.id == owner)
                            .map_or_else(|| format!("#{owner}"), |o| o.0.name.clone());
                        return Err(Error::IpModifyTaken {
                            function: self.table.name(i).to_string(),
                            owner,
                        });
                    }
                }
            }
        }
        // The ops list after the change, and who is attached where.
        let after: Vec<Arc<OpsInner>> = match how {
            Change::Register => self
                .registered
                .iter()
                .map(|o| o.0.clone())
                .chain([me.clone()])
                .collect(),
            Change::Unregister => self
                .registered
                .iter()
                .filter(|o| !Arc::ptr_eq(&o.0, me))
                .map(|o| o.0.clone())
                .collect(),
            Change::Refilter => self.registered.iter().map(|o| o.0.clone()).collect(),
        };
        let new_set = FuncSet { sites: new };
        let affected = symmetric_difference(&old, &new_set.sites);
        let attached = |o: &Arc<OpsInner>, ip: usize| -> bool {
            if Arc::ptr_eq(o, me) {
                new_set.contains(ip)
            } else {
                published(o).is_some_and(|s| s.contains(ip))
            }
        };

        // Targets, creating trampolines as needed (unused ones are harmless).
        let mut changes = Vec::with_capacity(affected.len());
        let mut accounting = Vec::with_capacity(affected.len());
        for &ip in &affected {
            let on: Vec<&Arc<OpsInner>> = after.iter().filter(|o| attached(o, ip)).collect();
            let regs = on.iter().any(|o| o.regs || o.ipmodify);
            let owner = on.iter().find(|o| o.ipmodify).map(|o| o.id);
            let w = window_of(ip);
            // A relocated function its object calls directly may have
            // callers that keep values in any register (gcc's -fipa-ra, see
            // `tramp`): only the full caller serves it, never a fast path
            // or a trampoline that saves only what the ABI asks.
            let full = self
                .table
                .find(ip)
                .is_some_and(|i| self.table.record(i).preserves_all());
            let target = match on.len() {
                0 => Insn::Nop,
                _ if full => Insn::Call(self.trampoline(w, Kind::Full, None)?),
                _ if regs => Insn::Call(self.trampoline(w, Kind::Regs, None)?),
                1 => {
                    // The ops' fast path if it has one, else its dedicated
                    // trampoline.
                    let t = self.trampoline(w, Kind::Fast, Some(on[0]))?;
                    let fast = on[0].fast.as_ref();
                    match fast.and_then(|f| f.exit()) {
                        // Stub-served: the stub calls the fast path `t`.
                        Some(exit) => {
                            let p = fast.map_or(0, |f| f.personality());
                            Insn::Jmp(
                                self.stubs
                                    .point(ip, t, exit, p)
                                    .map_err(Error::Trampoline)?,
                            )
                        }
                        None => Insn::Call(t),
                    }
                }
                _ => Insn::Call(self.trampoline(w, Kind::Fast, None)?),
            };
            changes.push((ip, target));
            accounting.push((ip, on.len() as u32, regs, owner));
        }
        // Publish, then patch. The list walker must find the new set and
        // list before any site leads a thread to it.
        let old_set = me.funcs.swap(Box::into_raw(Box::new(new_set)), AcqRel);
        let old_list = LIST.swap(Box::into_raw(Box::new(OpsList { ops: after })), AcqRel);
        if let Err(e) = self.table.apply(&changes) {
            // Nothing was written: put the old state back. Threads may have
            // read the new set and list meanwhile (through sites that were
            // already enabled), so they are retired like any replaced state.
            let new_set = me.funcs.swap(old_set, AcqRel);
            let new_list = LIST.swap(old_list, AcqRel);
            self.deferred.push(Garbage {
                set: new_set,
                list: new_list,
                trampolines: Vec::new(),
                ops: None,
            });
            return Err(e.into());
        }
        for (ip, n, regs, owner) in accounting {
            let i = self.table.find(ip).expect("still in the table");
            let r = self.table.record_mut(i);
            r.set_nr_ops(n);
            r.set_needs_regs(regs);
            r.set_ipmodify_owner(owner);
        }
        let mut garbage = Garbage {
            set: old_set,
            list: old_list,
            trampolines: Vec::new(),
            ops: None,
        };
        match how {
            Change::Register => {
                self.registered.push(ops.clone());
                self.deferred.push(garbage);
            }
            Change::Refilter => self.deferred.push(garbage),
            Change::Unregister => {
                self.registered.retain(|o| !Arc::ptr_eq(&o.0, me));
                let mine: Vec<(u32, usize)> = self
                    .dedicated
                    .keys()
                    .filter(|k| k.0 == me.id)
                    .copied()
                    .collect();
                for k in mine {
                    garbage.trampolines.extend(self.dedicated.remove(&k));
                    garbage.trampolines.extend(self.fast.remove(&k));
                    garbage.trampolines.extend(self.decline.remove(&k));
                }
                // Its (now empty) published set stays until the ops itself
                // is dropped: the list walker may be reading it.
                garbage.ops = Some(ops.clone());
                self.retiring.push(me.id);
                // Unregister must wait anyway: free everything deferred too.
                return self.retire(vec![garbage]);
            }
        }
        Ok(())
    }

    /// What a wait watches for: `dying` trampolines and the critical code
    /// (RIPs), and every place that calls callbacks (return addresses).
    fn watch(&self, dying: &[usize]) -> Watch {
        Watch {
            rip: normalize(
                dying
                    .iter()
                    .map(|&a| a..a + tramp::SLOT)
                    .chain(self.critical.iter().cloned())
                    .chain(self.stubs.pages.iter().cloned()),
            ),
            frames: normalize(
                self.pools
                    .return_addresses()
                    .into_iter()
                    .chain(self.callers.iter().cloned()),
            ),
        }
    }

    /// Frees `garbage` and everything deferred once no thread can be using
    /// it. When the wait gives up, nothing is freed: it all stays deferred
    /// for the next wait, and the error names the threads.
    fn retire(&mut self, garbage: Vec<Garbage>) -> Result<(), Error> {
        self.deferred.extend(garbage);
        let dying: Vec<usize> = self
            .deferred
            .iter()
            .flat_map(|g| g.trampolines.iter().copied())
            .collect();
        let watch = self.watch(&dying);
        if let Err(threads) = quiesce(self.tpoff, &watch) {
            return Err(Error::NotQuiescent { threads });
        }
        self.retiring.clear();
        for g in std::mem::take(&mut self.deferred) {
            for a in &g.trampolines {
                self.pools.release(*a);
            }
            if !g.set.is_null() {
                // SAFETY: replaced sets came from Box::into_raw; no thread
                // can still read it after the wait.
                drop(unsafe { Box::from_raw(g.set) });
            }
            if !g.list.is_null() {
                // SAFETY: as above, for the list.
                drop(unsafe { Box::from_raw(g.list) });
            }
            drop(g.ops);
        }
        Ok(())
    }
}

/// State replaced by a change, freed after a quiescence wait.
struct Garbage {
    set: *mut FuncSet,
    list: *mut OpsList,
    trampolines: Vec<usize>,
    ops: Option<Ops>,
}

// SAFETY: the pointers are owned boxes (from Box::into_raw) that no longer
// belong to anything published; only the core, under its lock, frees them.
unsafe impl Send for Garbage {}

fn symmetric_difference(a: &[usize], b: &[usize]) -> Vec<usize> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    out
}

/// Ends the process when a step that cannot be undone fails, or a callback
/// panics inside a trampoline (unwinding into assembly is undefined).
#[cold]
pub(crate) fn fatal(what: &str) -> ! {
    eprintln!("livetrace: fatal: {what}");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::symmetric_difference;

    #[test]
    fn symmetric_differences() {
        assert_eq!(symmetric_difference(&[1, 3, 5], &[3, 4]), [1, 4, 5]);
        assert_eq!(symmetric_difference(&[], &[2]), [2]);
        assert_eq!(symmetric_difference(&[2], &[2]), Vec::<usize>::new());
    }
}
