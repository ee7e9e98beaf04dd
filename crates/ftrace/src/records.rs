//! The record table's verbs: the only ways any layer above the core
//! discovers, converts, relocates back or looks up functions.
//!
//! The core owns the [`Table`]: every record's ops count, regs and
//! IPMODIFY flags and the instruction its site holds must agree with the
//! registered ops and the trampolines the core built, and only the core
//! keeps them so. So nothing outside this crate gets `&mut Table`: the
//! changes other layers need are verbs here (the way the kernel's
//! `ftrace.c` offers `ftrace_module_init` and `ftrace_release_mod` to the
//! module loader rather than its record pages), each run under the core's
//! lock, and reading is [`inspect`], which lends `&Table`:
//!
//! ```compile_fail,E0596
//! // A mutating method through the read-only lend does not compile.
//! livetrace_ftrace::inspect(|t| t.rescan());
//! ```
//!
//! ```compile_fail,E0425
//! // Nor is there any other way to the core's table.
//! livetrace_ftrace::with_table(|t| t.rescan());
//! ```
//!
//! The table is created by the first verb that needs it (any verb of this
//! crate); [`discover`] fills it with what is loaded.

use std::time::Duration;

use livetrace_format::Function;
use livetrace_sites::{
    ConvertPolicy, ConvertReport, Disambiguator, ExternalSite, Glob, InsertReport, ObjectId,
    ScanReport, SiteState, Table,
};

use crate::{core, Error, Pattern};

/// Runs `f` on the record table, read-only, under the core's lock (no
/// batch, scan or relocation runs meanwhile). Keep `f` short: every verb of
/// the core waits for it.
pub fn inspect<R>(f: impl FnOnce(&Table) -> R) -> Result<R, Error> {
    let g = core()?;
    Ok(f(&g.as_ref().expect("initialised").table))
}

/// Runs `f` while holding the core's lock, with no access to anything:
/// for `fork`, so that no batch, scan or conversion is half done in the
/// child and the lock is not held there by a thread that does not exist.
pub fn exclusive<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
    let _g = core()?;
    Ok(f())
}

/// Scans the loaded objects for sites: adds the records of objects loaded
/// since the last scan and drops those of objects no longer loaded.
pub fn discover() -> Result<ScanReport, Error> {
    let mut g = core()?;
    Ok(g.as_mut().expect("initialised").table.rescan()?)
}

/// Adds sites that no scan finds (`#[traced]` functions, test fixtures):
/// each is checked as a scanned one is.
pub fn insert_external(sites: &[ExternalSite<'_>]) -> Result<InsertReport, Error> {
    let mut g = core()?;
    Ok(g.as_mut()
        .expect("initialised")
        .table
        .insert_external(sites)?)
}

/// Converts the unconverted sites (sleds, non-canonical NOPs) of `objects`
/// (all when `None`) into the canonical 5-byte NOP under `policy`; sites
/// that cannot be stay listed as `unconverted` and untraceable.
pub fn convert(
    objects: Option<&[ObjectId]>,
    policy: ConvertPolicy,
) -> Result<ConvertReport, Error> {
    let mut g = core()?;
    let t = &mut g.as_mut().expect("initialised").table;
    if t.records().iter().all(|r| r.is_live()) {
        return Ok(ConvertReport::default());
    }
    Ok(t.convert(objects, policy)?)
}

/// For a `dlopen` interposer, after the real `dlopen` returned `handle`
/// and before the program sees it: scans the new objects and converts the
/// sleds of what this `dlopen` loaded with the other threads stopped (its
/// constructors may have started threads running its code).
///
/// # Safety
///
/// `handle` was returned by a successful `dlopen` and not closed since.
pub unsafe fn on_dlopen(handle: *mut libc::c_void) -> Result<(ScanReport, ConvertReport), Error> {
    let mut g = core()?;
    Ok(g.as_mut().expect("initialised").table.on_dlopen(handle)?)
}

/// For a `dlclose` interposer, after the real `dlclose`: drops the records
/// of objects that are no longer loaded.
pub fn on_dlclose() -> Result<ScanReport, Error> {
    let mut g = core()?;
    Ok(g.as_mut().expect("initialised").table.on_dlclose()?)
}

/// Gives every relocated function its bytes back (before the library that
/// relocated them is unloaded), waiting up to `timeout` for threads to
/// leave the detours; returns how many are still relocated.
pub fn unrelocate_all(timeout: Duration) -> Result<usize, Error> {
    let mut g = core()?;
    let t = &mut g.as_mut().expect("initialised").table;
    let relocated = |t: &Table| -> Vec<usize> {
        (0..t.len())
            .filter(|&i| t.relocated(i).is_some())
            .map(|i| t.record(i).ip())
            .collect()
    };
    let sites = relocated(t);
    if !sites.is_empty() {
        t.unrelocate(&sites, timeout)?;
    }
    Ok(relocated(t).len())
}

/// The live sites `patterns` name, sorted by address: by the rules an
/// ops' filter follows (globs, names with their `[hHASH]` or `@0xADDR`
/// disambiguators, sites, relocated entries, entries before a site). A
/// pattern that names nothing adds nothing.
pub fn named_by(patterns: &[Pattern]) -> Result<Vec<usize>, Error> {
    let g = core()?;
    let c = g.as_ref().expect("initialised");
    let mut ips: Vec<usize> = patterns.iter().flat_map(|p| c.matching(p)).collect();
    ips.sort_unstable();
    ips.dedup();
    Ok(ips)
}

/// The name of the function whose site is `ip`.
pub fn name_of(ip: usize) -> Result<Option<String>, Error> {
    inspect(|t| t.find(ip).map(|i| t.name(i).to_owned()))
}

/// Every traceable function whose name matches `glob` (all when `None`)
/// and, with `enabled_only`, whose site is not a NOP; in table (address)
/// order.
pub fn functions(glob: Option<&str>, enabled_only: bool) -> Result<Vec<Function>, Error> {
    inspect(|t| {
        let idx: Vec<usize> = match glob {
            Some(g) => t.glob(g),
            None => (0..t.len()).collect(),
        };
        idx.into_iter()
            .filter(|&i| !enabled_only || t.record(i).is_enabled())
            .map(|i| row(t, i))
            .collect()
    })
}

/// The functions matching `glob` (all when `None`) that have no site and
/// that relocation can give one: what a filter naming them would trace.
/// Nothing is changed.
pub fn relocatable(glob: Option<&str>) -> Result<Vec<Function>, Error> {
    let g = glob.map(Glob::new);
    let select = |name: &str, _: &str, _: usize| g.as_ref().is_none_or(|g| g.matches(name));
    let mut core = core()?;
    let t = &mut core.as_mut().expect("initialised").table;
    Ok(t.relocatable(&select)
        .into_iter()
        .map(|(name, entry, object)| Function {
            name,
            addr: entry as u64,
            source: object,
            state: "relocatable".into(),
            signature: None,
            hash: None,
        })
        .collect())
}

fn row(t: &Table, i: usize) -> Function {
    let info = t.info(i);
    // A function given a site by prologue relocation is shown at its own
    // entry (what `-f 0x…` and debug info name), marked as such; its site
    // is in its detour.
    let relocated = t.relocated(i).map(|r| r.entry);
    let source = match (info.file, info.line) {
        (Some(f), Some(l)) => format!("{f}:{l}"),
        (Some(f), None) => f.to_string(),
        _ => info.object.to_string(),
    };
    let mut state = match info.record.state() {
        SiteState::Unconverted => "unconverted".to_string(),
        SiteState::Live(insn) => insn.to_string(),
    };
    if relocated.is_some() {
        state.push_str(" relocated");
    }
    Function {
        name: info.name.to_string(),
        addr: relocated.unwrap_or(info.addr) as u64,
        source,
        state,
        signature: None,
        hash: match Disambiguator::hash_of(info.raw_name) {
            Some(Disambiguator::Hash(h)) => Some(format!("h{h:016x}")),
            _ => None,
        },
    }
}
