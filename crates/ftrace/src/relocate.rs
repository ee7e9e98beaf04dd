//! Relocation on demand: a filter pattern that names no site gives the
//! functions it names one by prologue relocation (`livetrace_sites`'
//! `Table::relocate`, installed by the engine) before it is resolved, so a
//! binary built without any patchable entry is traced like any other.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::{core, quiesce, Core, Error, Pattern};

/// Whether a filter pattern that names no site relocates the functions it
/// names (see [`set_relocate_on_demand`]).
static RELOCATE_ON_DEMAND: AtomicBool = AtomicBool::new(true);

/// Turns relocation on demand on (the default) or off: when a filter
/// pattern of an ops being registered or refiltered names no traceable
/// function (or only functions relocation gave a site before), the
/// functions it names that were compiled without a site are
/// given one by prologue relocation ([`livetrace_sites::Table::relocate`])
/// before the pattern is resolved, and those that cannot be are reported by
/// [`why_not`]. `LIVETRACE_NO_RELOCATE=1` keeps it off whatever is asked.
///
/// A relocated function that its own object calls directly (and that makes
/// no call its callers' compiler could not see) may have callers compiled
/// with gcc's interprocedural register allocation
/// (`-fipa-ra`, on at `-O2`), which keep values in the call-clobbered
/// registers the function does not touch across the call: such a function
/// is served by the full caller and the full return hook, which keep every
/// register ([`livetrace_sites::Record::preserves_all`]).
pub fn set_relocate_on_demand(on: bool) {
    RELOCATE_ON_DEMAND.store(on, SeqCst);
}

fn relocate_on_demand_enabled() -> bool {
    let off = std::env::var_os("LIVETRACE_NO_RELOCATE").is_some_and(|v| !v.is_empty() && v != "0");
    RELOCATE_ON_DEMAND.load(SeqCst) && !off
}

/// Picks functions by (name, raw name, entry).
type Select<'a> = dyn Fn(&str, &str, usize) -> bool + 'a;

/// A selector over function names and entries for a filter pattern, as
/// [`livetrace_sites::Table::relocate`] and [`livetrace_sites::Table::why_not`] take it.
fn selector(p: &Pattern) -> Box<Select<'_>> {
    match p {
        Pattern::Glob(g) => {
            let g = livetrace_sites::Glob::new(g);
            Box::new(move |name, _, _| g.matches(name))
        }
        Pattern::Name(n) => {
            // `NAME@0xADDR` and `NAME[hHASH]` pick one of same-named
            // functions, as they do among sites.
            use livetrace_sites::Disambiguator;
            let picked = Disambiguator::split(n);
            Box::new(move |name, raw, entry| {
                name == n
                    || raw == n
                    || picked.is_some_and(|(base, d)| {
                        (name == base || raw == base)
                            && match d {
                                Disambiguator::Addr(a) => a == entry,
                                h => Disambiguator::hash_of(raw) == Some(h),
                            }
                    })
            })
        }
        Pattern::Addr(a) => Box::new(move |_, _, entry| entry == *a),
    }
}

/// The functions `pattern` names that have no site and cannot be given one
/// by relocation, with the reason (`livetrace ls --why-not`).
pub fn why_not(pattern: &Pattern) -> Result<Vec<livetrace_sites::WhyNot>, Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    Ok(c.table.why_not(&*selector(pattern)))
}

/// Gives a site, by prologue relocation, to the functions `pattern` names
/// that have none (what registering an ops whose filter names them does on
/// its own; see [`set_relocate_on_demand`]).
pub fn relocate(pattern: &Pattern) -> Result<livetrace_sites::RelocateReport, Error> {
    let mut g = core()?;
    let c = g.as_mut().expect("initialised");
    Ok(c.table.relocate(&*selector(pattern), quiesce::timeout())?)
}

impl Core {
    /// Relocates what each filter pattern names that has no site, when the
    /// pattern names no compiler-emitted site: nothing at all, or only
    /// functions relocation gave a site earlier (`-f '*'` after `-f
    /// 'ZSTD_*'` on a program built without sites means every function,
    /// not the ones an earlier trace happened to relocate). A pattern that
    /// names compiler sites is taken to mean those: the program was built
    /// for tracing, and what has no site there was left so on purpose.
    pub(crate) fn relocate_on_demand(&mut self, filter: &[Pattern]) -> Result<(), Error> {
        if !relocate_on_demand_enabled() {
            return Ok(());
        }
        for p in filter {
            let t = &self.table;
            let only_relocated = self.matching(p).iter().all(|&ip| {
                t.find(ip)
                    .is_some_and(|i| t.record(i).origin() == livetrace_sites::Origin::Relocated)
            });
            if only_relocated {
                self.table.relocate(&*selector(p), quiesce::timeout())?;
            }
        }
        Ok(())
    }
}
