//! Read-only requests about the process's functions: what can be traced
//! (or relocated, or why not), and what is traced now.

use livetrace_proto::{EnabledInfo, Refusal, Response};

use crate::Error;

/// The traceable functions `glob` names (all when `None`); with
/// `enabled_only`, those whose site is not a NOP.
pub(super) fn list_functions(glob: Option<String>, enabled_only: bool) -> Result<Response, Error> {
    let glob = glob.as_deref();
    let mut functions = livetrace_runtime::function_rows(glob, enabled_only)?;
    if functions.is_empty() && !enabled_only {
        // Nothing with a site matches: what a filter naming them would
        // trace is the functions relocation can give one (`trace` does
        // that on demand), listed as such without touching them.
        functions = livetrace_runtime::relocatable(glob)?;
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
    Ok(Response::Functions { functions })
}

/// The functions `glob` names that have no site and cannot be given one.
pub(super) fn why_not(glob: &str) -> Result<Response, Error> {
    livetrace_runtime::init()?;
    let list = livetrace_ftrace::why_not(&livetrace_ftrace::Pattern::parse(glob))?;
    let mut functions: Vec<Refusal> = list
        .into_iter()
        .map(|w| Refusal {
            name: w.name,
            entry: w.entry as u64,
            object: w.object,
            kind: w.kind.to_string(),
            reason: w.reason,
        })
        .collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.entry.cmp(&b.entry)));
    Ok(Response::NotRelocatable { functions })
}

/// Every function whose site is not a NOP: its ops and what it calls.
pub(super) fn enabled() -> Result<Response, Error> {
    let mut functions: Vec<EnabledInfo> = livetrace_runtime::enabled_functions()?
        .into_iter()
        .map(|f| EnabledInfo {
            trampoline: f.trampoline.to_string(),
            name: f.name,
            ip: f.ip as u64,
            ops: f.ops,
        })
        .collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Response::Enabled { functions })
}
