//! Relocation on demand: a filter pattern that names no site gives the
//! functions it names one by prologue relocation (`livetrace_sites`'
//! `Table::relocate`, installed by the engine) before it is resolved, so a
//! binary built without any patchable entry is traced like any other.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::{core, quiesce, Core, Error, Pattern};

/// Whether a filter pattern that names no site relocates the functions it
/// names (see [`set_relocate_on_demand`]).
static RELOCATE_ON_DEMAND: AtomicBool = AtomicBool::new(false);

/// Turns relocation on demand on (the default) or off: when a filter
/// pattern of an ops being registered or refiltered names no traceable
/// function, the functions it names that were compiled without a site are
/// given one by prologue relocation ([`livetrace_sites::Table::relocate`]) before the
/// pattern is resolved, and those that cannot be are reported by
/// [`why_not`].
///
/// Off by default (`LIVETRACE_RELOCATE=1` turns it on at start-up,
/// `LIVETRACE_NO_RELOCATE=1` keeps it off whatever is asked): a function
/// compiled without a patchable entry made no promise to be traced, and
/// gcc's interprocedural register allocation (`-fipa-ra`, on at `-O2`) lets
/// its callers in the same unit keep values in call-clobbered registers it
/// does not touch (r10, r11, vector registers) across the call. The
/// trampolines and return hooks keep what the ABI asks, not that: a traced
/// relocated function can then hand its caller changed registers (seen
/// with zstd's `HUF_selectDecoder` under the graph tracer: corrupt
/// output). Until the relocated paths save every register, relocation is
/// the user's explicit choice.
pub fn set_relocate_on_demand(on: bool) {
    RELOCATE_ON_DEMAND.store(on, SeqCst);
}

fn relocate_on_demand_enabled() -> bool {
    let env = |k| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0");
    (RELOCATE_ON_DEMAND.load(SeqCst) || env("LIVETRACE_RELOCATE")) && !env("LIVETRACE_NO_RELOCATE")
}

/// Picks functions by (name, raw name, entry).
type Select<'a> = dyn Fn(&str, &str, usize) -> bool + 'a;

/// A selector over function names and entries for a filter pattern, as
/// [`livetrace_sites::Table::relocate`] and [`Table::why_not`] take it.
fn selector(p: &Pattern) -> Box<Select<'_>> {
    match p {
        Pattern::Glob(g) => {
            let g = livetrace_sites::Glob::new(g);
            Box::new(move |name, _, _| g.matches(name))
        }
        Pattern::Name(n) => Box::new(move |name, raw, _| name == n || raw == n),
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
    /// Relocates what each filter pattern that names no site names.
    pub(crate) fn relocate_on_demand(&mut self, filter: &[Pattern]) -> Result<(), Error> {
        if !relocate_on_demand_enabled() {
            return Ok(());
        }
        for p in filter {
            if self.matching(p).is_empty() {
                self.table.relocate(&*selector(p), quiesce::timeout())?;
            }
        }
        Ok(())
    }
}
