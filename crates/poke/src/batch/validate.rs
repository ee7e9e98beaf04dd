//! Validation: every queued site checked against the text and the other
//! entries before any byte is written, and the [`Rejection`] that says why
//! one was refused (the batch then writes nothing).

use super::*;

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

/// Checks every entry (sorted by site) before anything is written. An entry
/// that is a relocation step (in `relocs`, sorted too) covers its whole
/// region, whose bytes past the first five must be the original ones; no
/// other entry may touch a relocated function's region; and each step must
/// find its site in the state it starts from (`registry`).
pub(super) fn validate(
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
