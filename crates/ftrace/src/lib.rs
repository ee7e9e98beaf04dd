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
//! | any, on a relocated function its object calls directly (and not known to clobber every call-clobbered register) | the *full caller*: the regs caller that also keeps every vector and mask register (its callers may keep values in any register) |
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

mod change;
mod error;
mod fast;
mod livepatch;
mod ops;
mod quiesce;
mod records;
mod regs;
mod relocate;
mod resolve;
mod retire;
mod targets;
mod thread;
mod tramp;
mod walk;

use std::collections::HashMap;

use quiesce::quiesce;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, MutexGuard};

use livetrace_poke::Insn;
use livetrace_sites::Table;

pub use error::Error;
pub use fast::{
    inside_tpoff, FastPath, FastPathError, DROPPED_PLACEHOLDER, INSIDE_PLACEHOLDER,
    STUB_BODY_RETURN_FROM_RETURN, STUB_IP_FROM_RETURN,
};
pub use livepatch::{livepatch, livepatch_addr, LivePatch};
pub use livetrace_format::Function;
pub use ops::{Call, Callback, Ops, OpsBuilder, Pattern};
pub use quiesce::{quiesce_stats, set_quiescence_timeout, QuiesceStats, Straggler};
pub use records::{
    convert, discover, exclusive, functions, insert_external, inspect, name_of, named_by,
    on_dlclose, on_dlopen, relocatable, unrelocate_all,
};
pub use regs::Regs;
pub use relocate::{relocate, set_relocate_on_demand, why_not};
pub use thread::{in_callback, recursion_dropped, suppress, Suppress};
pub use tramp::{vector_state, VectorState};

use change::Change;
use ops::{FuncSet, OpsInner};
use retire::Garbage;
use tramp::{Kind, Pools};

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
            Trampoline::Other(_) => write!(f, "{}", self.trampoline),
            t => write!(f, "tramp: {t}"),
        }
    }
}

/// `0x… (dedicated to OPS)`, `0x… (list caller)`, `0x… (regs caller)`, or
/// the instruction and `(not livetrace's)`.
impl fmt::Display for Trampoline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trampoline::Dedicated { ops, addr } => write!(f, "{addr:#x} (dedicated to {ops})"),
            Trampoline::List(a) => write!(f, "{a:#x} (list caller)"),
            Trampoline::Regs(a) => write!(f, "{a:#x} (regs caller)"),
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

/// Ends the process when a step that cannot be undone fails, or a callback
/// panics inside a trampoline (unwinding into assembly is undefined).
#[cold]
pub(crate) fn fatal(what: &str) -> ! {
    eprintln!("livetrace: fatal: {what}");
    std::process::abort()
}
