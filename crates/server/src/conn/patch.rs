//! Live patches by request: resolving both functions to `#[traced]` sites
//! with recorded signatures, the table of patches in place, and reverting
//! them (one by one, when their connection ends, or all before unloading).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use livetrace_proto::{PatchInfo, Response};

use super::{Conn, NEXT_PATCH};
use crate::Error;

pub(super) struct PatchEntry {
    pub(super) patch: livetrace_ftrace::LivePatch,
    pub(super) info: PatchInfo,
    /// The connection that reverts it when it ends; `None` when persistent.
    pub(super) owner: Option<u64>,
}

/// Every patch in place, by id; any connection of the same user may list
/// or revert them.
static PATCHES: Mutex<BTreeMap<u32, PatchEntry>> = Mutex::new(BTreeMap::new());

pub(super) fn patches() -> std::sync::MutexGuard<'static, BTreeMap<u32, PatchEntry>> {
    PATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reverts every patch in place, persistent ones included (before the
/// library is unloaded). Returns how many were reverted, or the first
/// failure (the patches not reverted stay listed).
pub(crate) fn revert_all_patches() -> Result<usize, Error> {
    let all = std::mem::take(&mut *patches());
    let mut n = 0;
    let mut first_err = None;
    for (id, p) in all {
        let info = p.info.clone();
        match p.patch.revert() {
            Ok(()) => n += 1,
            Err(source) => {
                first_err.get_or_insert(Error::Revert {
                    id,
                    what: format!("{} -> {}", info.original, info.replacement),
                    source,
                });
            }
        }
    }
    first_err.map_or(Ok(n), Err)
}

/// A known `#[traced]` function that a patch may name.
struct Known {
    addr: usize,
    name: &'static str,
    signature: &'static str,
}

impl Conn {
    pub(super) fn patch(
        &mut self,
        original: &str,
        replacement: &str,
        persist: bool,
    ) -> Result<Response, Error> {
        let o = known(original)?;
        let r = known(replacement)?;
        if o.addr == r.addr {
            return Err(Error::Invalid(format!("{} cannot replace itself", o.name)));
        }
        for k in [&o, &r] {
            if k.signature.is_empty() {
                return Err(Error::Invalid(format!(
                    "{} has no known signature (generic functions have none), so it cannot be \
                     patched: {} -> {}",
                    k.name, o.name, r.name
                )));
            }
        }
        if o.signature != r.signature {
            return Err(Error::Invalid(format!(
                "signatures differ: {} is `{}` but {} is `{}`",
                o.name, o.signature, r.name, r.signature
            )));
        }
        let patch = livetrace_ftrace::livepatch_addr(o.addr, r.addr)?;
        let id = NEXT_PATCH.fetch_add(1, Ordering::Relaxed);
        let info = PatchInfo {
            id,
            original: o.name.to_string(),
            replacement: r.name.to_string(),
            signature: o.signature.to_string(),
            persistent: persist,
        };
        patches().insert(
            id,
            PatchEntry {
                patch,
                info: info.clone(),
                owner: (!persist).then_some(self.id),
            },
        );
        Ok(Response::Patched { patch: info })
    }
}

/// Resolves a patch operand: the exact path of one `#[traced]` function,
/// or the `0x…` address of its site. Anything else, including a
/// compiler-emitted site (whose type nobody recorded), is refused.
fn known(what: &str) -> Result<Known, Error> {
    let by_addr = match livetrace_ftrace::Pattern::parse(what) {
        livetrace_ftrace::Pattern::Addr(a) => Some(a),
        _ => None,
    };
    let found: Vec<livetrace_runtime::MacroSite> = livetrace_runtime::macro_sites()
        .filter(|s| match by_addr {
            Some(a) => s.addr == a,
            None => s.path == what,
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(Known {
            addr: one.addr,
            name: one.path,
            signature: one.signature,
        }),
        [] => {
            let traceable = match by_addr {
                Some(_) => false,
                None => livetrace_runtime::functions(Some(what)).is_ok_and(|f| !f.is_empty()),
            };
            Err(Error::Invalid(if traceable {
                format!("{what} has no known signature (not a #[traced] function), so it cannot be patched")
            } else {
                format!("no #[traced] function named {what}")
            }))
        }
        many => Err(Error::Invalid(format!(
            "{what} names {} functions (generic instantiations?); name one by its 0x site address",
            many.len()
        ))),
    }
}
