//! Records for functions compiled without a site, given one by prologue
//! relocation (`livetrace-reloc` decides and builds the detour, the engine's
//! `livetrace_poke::relocation` installs it live).
//!
//! A relocated function's record is the detour's 5-byte NOP ([`Origin::Relocated`]):
//! from then on it is a site like any other, enabled, disabled and
//! live-patched by ordinary batches, named by the function, and its
//! [`Relocated`] entry remembers the function's entry and the bytes moved.
//! The function's object is pinned for as long as any of its functions is
//! relocated: its text jumps to the detours and the detours back into it.
//!
//! Candidates come from each object's file ([`livetrace_reloc::Image`],
//! analysed once per object and kept): functions with no compiler site
//! anywhere in their body, not livetrace's own nor the Rust runtime's
//! ([`crate::is_notrace`]), not in the dynamic loader (which runs under
//! livetrace's own `dlopen`/`dl_iterate_phdr` calls). A function whose text
//! is not the file's (another tool's breakpoint) is refused, never patched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use livetrace_poke::relocation::{self as engine, Relocation};
use livetrace_reloc::{Image, Prologue};

use super::{NewRecord, Table};
use crate::loaded::Pin;
use crate::record::{ObjectId, Origin, Record};
use crate::Error;

/// A relocated function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relocated {
    /// The function's entry.
    pub entry: usize,
    /// The first byte the jump overwrote (the entry, or after `endbr64`).
    pub site: usize,
    /// Bytes moved out of line (N ≥ 5).
    pub len: usize,
    /// The detour; its first five bytes are the record's site.
    pub detour: usize,
}

/// A function that matched but cannot be relocated, and why (`livetrace ls
/// --why-not`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhyNot {
    /// Its name (demangled).
    pub name: String,
    /// Its entry.
    pub entry: usize,
    /// The object's file.
    pub object: String,
    /// A short kind (`branch-into-region`, `too-short`, `text-changed`…).
    pub kind: &'static str,
    /// The reason in words.
    pub reason: String,
}

impl std::fmt::Display for WhyNot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let obj = self.object.rsplit('/').next().unwrap_or(&self.object);
        write!(
            f,
            "{:#x} {} [{obj}] {}: {}",
            self.entry, self.name, self.kind, self.reason
        )
    }
}

/// What [`Table::relocate`] did.
#[derive(Clone, Debug, Default)]
pub struct RelocateReport {
    /// New records (their sites, in the detours).
    pub relocated: Vec<usize>,
    /// Matching functions that cannot be relocated.
    pub refused: Vec<WhyNot>,
    /// Matching functions that already have a site (compiler's, or an
    /// earlier relocation).
    pub already: usize,
    /// Objects whose file could not be analysed: (object, why).
    pub errors: Vec<(String, String)>,
}

/// The table's relocation state.
#[derive(Debug, Default)]
pub(super) struct State {
    /// By record site (the detour).
    by_site: BTreeMap<usize, Relocated>,
    /// Entry -> record site.
    by_entry: HashMap<usize, usize>,
    /// Analysed objects.
    images: HashMap<ObjectId, Arc<Result<Image, String>>>,
}

impl State {
    pub(super) fn forget(&mut self, ids: &[ObjectId]) {
        for id in ids {
            self.images.remove(id);
        }
    }
}

/// A function about to be relocated.
struct Plan {
    object: ObjectId,
    name: String,
    raw: String,
    entry: usize,
    prologue: Prologue,
    bias: u64,
    preserve_all: bool,
}

fn is_loader(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with("ld-linux") || f.starts_with("ld64.so"))
}

impl Table {
    /// The relocation behind record `i`, if it is a relocated function.
    pub fn relocated(&self, i: usize) -> Option<&Relocated> {
        self.reloc.by_site.get(&self.records[i].ip())
    }

    /// The record of the relocated function whose entry (or first moved
    /// byte) is `addr`.
    pub fn find_relocated_entry(&self, addr: usize) -> Option<usize> {
        let site = self.reloc.by_entry.get(&addr).copied().or_else(|| {
            self.reloc
                .by_site
                .values()
                .find(|r| r.site == addr)
                .map(|r| r.detour)
        })?;
        self.find(site)
    }

    /// Whether some record's site lies in `[start, start+len)`.
    fn has_site_in(&self, start: usize, len: usize) -> bool {
        let i = self.records.partition_point(|r| r.ip() < start);
        self.records
            .get(i)
            .is_some_and(|r| r.ip() < start.saturating_add(len.max(1)))
    }

    fn image(&mut self, oi: usize) -> Arc<Result<Image, String>> {
        let id = self.objects[oi].id;
        if let Some(i) = self.reloc.images.get(&id) {
            return i.clone();
        }
        let o = &self.objects[oi];
        let path = o.path.clone().unwrap_or_default();
        // The file is read, not the memory: the image's candidates are
        // link-time addresses, and the table already checked that the file
        // is the one loaded (segments compared in `scan_object`).
        let parsed = std::fs::read(&path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|d| Image::parse(&d).map_err(|e| format!("{path}: {e}")));
        let a = Arc::new(parsed);
        self.reloc.images.insert(id, a.clone());
        a
    }

    /// Walks every matching function without a site of every object that
    /// may hold relocations: `f(object index, candidate, entry, name, raw,
    /// bias)`.
    fn each_candidate(
        &mut self,
        select: &dyn Fn(&str, &str, usize) -> bool,
        report: &mut RelocateReport,
        mut f: impl FnMut(&Table, usize, &livetrace_reloc::Candidate, usize, String, u64),
    ) {
        for oi in 0..self.objects.len() {
            let o = &self.objects[oi];
            let Some(path) = o.path.clone() else { continue };
            if o.error.is_some() || crate::is_notrace_object(&path) || is_loader(&path) {
                continue;
            }
            let bias = o.base as u64;
            let image = self.image(oi);
            let image = match &*image {
                Ok(i) => i,
                Err(e) => {
                    report.errors.push((path.clone(), e.clone()));
                    continue;
                }
            };
            for c in image.candidates() {
                if !c.is_function() {
                    continue;
                }
                let entry = c.addr.wrapping_add(bias) as usize;
                let matched = c.names.iter().find_map(|raw| {
                    let name = crate::demangle(raw).unwrap_or_else(|| raw.clone());
                    select(&name, raw, entry).then_some((name, raw))
                });
                let Some((name, raw)) = matched else { continue };
                if crate::is_notrace(raw, &name) {
                    continue;
                }
                if self.reloc.by_entry.contains_key(&entry)
                    || self.has_site_in(entry, c.size as usize)
                {
                    report.already += 1;
                    continue;
                }
                f(self, oi, c, entry, name, bias);
            }
        }
    }

    /// The matching functions without a site that can be given one by
    /// relocation (what a filter naming them would trace): (name, entry,
    /// object path). Nothing is changed.
    pub fn relocatable(
        &mut self,
        select: &dyn Fn(&str, &str, usize) -> bool,
    ) -> Vec<(String, usize, String)> {
        let mut report = RelocateReport::default();
        let mut out = Vec::new();
        self.each_candidate(select, &mut report, |t, oi, c, entry, name, _| {
            if c.verdict.is_ok() {
                out.push((name, entry, t.objects[oi].display_path().to_owned()));
            }
        });
        out
    }

    /// The matching functions without a site that cannot be relocated, and
    /// why. `select(name, raw_name, entry)` picks functions.
    pub fn why_not(&mut self, select: &dyn Fn(&str, &str, usize) -> bool) -> Vec<WhyNot> {
        let mut report = RelocateReport::default();
        let mut out = Vec::new();
        self.each_candidate(select, &mut report, |t, oi, c, entry, name, _| {
            if let Err(r) = &c.verdict {
                out.push(WhyNot {
                    name,
                    entry,
                    object: t.objects[oi].display_path().to_owned(),
                    kind: r.kind(),
                    reason: r.to_string(),
                });
            }
        });
        out
    }

    /// Gives a site to every function `select(name, raw_name, entry)` picks
    /// that has none and can be relocated, live: detours are built, the
    /// engine installs them all (waiting at most `timeout` for threads
    /// inside the moved instructions), and each gets a record
    /// ([`Origin::Relocated`], a NOP until enabled). Either all of them are
    /// relocated or, on error, none is and nothing changed.
    pub fn relocate(
        &mut self,
        select: &dyn Fn(&str, &str, usize) -> bool,
        timeout: Duration,
    ) -> Result<RelocateReport, Error> {
        let mut report = RelocateReport::default();
        let mut plans: Vec<Plan> = Vec::new();
        let mut refused = Vec::new();
        self.each_candidate(
            select,
            &mut report,
            |t, oi, c, entry, name, bias| match &c.verdict {
                Ok(p) => plans.push(Plan {
                    object: t.objects[oi].id,
                    name,
                    raw: c.name().to_owned(),
                    entry,
                    prologue: p.clone(),
                    bias,
                    preserve_all: c.callers_keep_registers(),
                }),
                Err(r) => refused.push(WhyNot {
                    name,
                    entry,
                    object: t.objects[oi].display_path().to_owned(),
                    kind: r.kind(),
                    reason: r.to_string(),
                }),
            },
        );
        report.refused = refused;
        if plans.is_empty() {
            return Ok(report);
        }

        // Pin every object first: its text must stay while we read it and
        // for as long as it jumps to detours.
        let mut newly_pinned: Vec<ObjectId> = Vec::new();
        let mut objects: Vec<ObjectId> = plans.iter().map(|p| p.object).collect();
        objects.sort_unstable();
        objects.dedup();
        for &id in &objects {
            let o = self.object(id).expect("known");
            if o.is_main || o.pin.is_some() {
                continue;
            }
            match Pin::take(&o.dl_name, o.base) {
                Ok(p) => {
                    self.object_mut(id).expect("known").pin = Some(p);
                    newly_pinned.push(id);
                }
                Err(e) => {
                    let object = o.display_path().to_owned();
                    self.unpin_unused(&newly_pinned);
                    return Err(Error::Pin { object, source: e });
                }
            }
        }

        let mut list: Vec<Relocation> = Vec::with_capacity(plans.len());
        let mut kept: Vec<Plan> = Vec::with_capacity(plans.len());
        let discard = |list: &[Relocation]| {
            for r in list {
                let _ = engine::discard_detour(r.detour);
            }
        };
        for p in plans {
            let site = p.prologue.site().wrapping_add(p.bias) as usize;
            let object = self
                .object(p.object)
                .expect("known")
                .display_path()
                .to_owned();
            let refuse = |kind: &'static str, reason: String| WhyNot {
                name: p.name.clone(),
                entry: p.entry,
                object: object.clone(),
                kind,
                reason,
            };
            // The text must be the file's: another tool's breakpoint or
            // patch is never overwritten.
            match livetrace_poke::read_text(site, p.prologue.len()) {
                Ok(b) if b == p.prologue.original() => {}
                _ => {
                    report.refused.push(refuse(
                        "text-changed",
                        "the function's first bytes in memory are not the file's".into(),
                    ));
                    continue;
                }
            }
            let Some((lo, hi)) = p.prologue.detour_window(p.bias) else {
                report.refused.push(refuse(
                    "out-of-reach",
                    "no detour address reaches every operand".into(),
                ));
                continue;
            };
            let addr =
                match engine::alloc_detour(lo as usize, hi as usize, site, p.prologue.detour_len())
                {
                    Ok(a) => a,
                    Err(e) => {
                        report.refused.push(refuse("no-room", e.to_string()));
                        continue;
                    }
                };
            let built = p
                .prologue
                .relocate(p.bias, addr as u64)
                .map_err(|r| refuse(r.kind(), r.to_string()))
                .and_then(|d| {
                    engine::write_detour(addr, &d.bytes)
                        .map(|()| d)
                        .map_err(|e| refuse("detour", e.to_string()))
                });
            match built {
                Ok(d) => {
                    list.push(Relocation {
                        site,
                        original: d.original,
                        detour: addr,
                    });
                    kept.push(p);
                }
                Err(w) => {
                    let _ = engine::discard_detour(addr);
                    report.refused.push(w);
                }
            }
        }
        if list.is_empty() {
            self.unpin_unused(&newly_pinned);
            return Ok(report);
        }
        if let Err(e) = engine::install(&list, timeout) {
            discard(&list);
            self.unpin_unused(&newly_pinned);
            return Err(Error::Poke(e));
        }

        let mut fresh = Vec::with_capacity(list.len());
        for (r, p) in list.iter().zip(kept) {
            let info = Relocated {
                entry: p.entry,
                site: r.site,
                len: r.original.len(),
                detour: r.detour,
            };
            self.reloc.by_site.insert(r.detour, info);
            self.reloc.by_entry.insert(p.entry, r.detour);
            self.object_mut(p.object).expect("known").relocated += 1;
            report.relocated.push(r.detour);
            let mut rec = Record::new(r.detour, p.object, Origin::Relocated, false);
            if p.preserve_all {
                rec.set_preserves_all();
            }
            fresh.push(NewRecord {
                rec,
                name: p.name,
                raw: p.raw,
                file: String::new(),
                line: 0,
                offset: (r.site - p.entry) as u32,
            });
        }
        self.merge(fresh);
        Ok(report)
    }

    /// Gives back their original bytes to the relocated functions among
    /// `sites` (record sites) that are not enabled and have no ops, drops
    /// their records, and frees their detours once no thread can be in one
    /// (waiting at most `timeout`; on a timeout the detours stay allocated,
    /// retired, and are freed by a later call). Returns how many were
    /// given back. The tracing core must no longer refer to these sites.
    pub fn unrelocate(&mut self, sites: &[usize], timeout: Duration) -> Result<usize, Error> {
        let mut idle: Vec<usize> = sites
            .iter()
            .copied()
            .filter(|s| {
                self.reloc.by_site.contains_key(s)
                    && self.find(*s).is_some_and(|i| {
                        !self.records[i].is_enabled() && self.records[i].nr_ops() == 0
                    })
            })
            .collect();
        idle.sort_unstable();
        idle.dedup();
        if !idle.is_empty() {
            let originals: Vec<usize> = idle.iter().map(|s| self.reloc.by_site[s].site).collect();
            engine::remove(&originals).map_err(Error::Poke)?;
            let keep: Vec<bool> = self
                .records
                .iter()
                .map(|r| idle.binary_search(&r.ip()).is_err())
                .collect();
            let mut objects = Vec::new();
            for s in &idle {
                let i = self.find(*s).expect("a record");
                objects.push(self.records[i].object());
                let r = self.reloc.by_site.remove(s).expect("relocated");
                self.reloc.by_entry.remove(&r.entry);
            }
            self.retain_records(&keep);
            for id in objects {
                if let Some(o) = self.object_mut(id) {
                    o.relocated -= 1;
                    if o.relocated == 0 && o.enabled == 0 {
                        o.pin = None;
                    }
                }
            }
        }
        engine::reclaim(timeout).map_err(Error::Poke)?;
        Ok(idle.len())
    }

    /// Drops the pins just taken for objects that ended up with nothing
    /// relocated nor enabled.
    fn unpin_unused(&mut self, ids: &[ObjectId]) {
        for &id in ids {
            if let Some(o) = self.object_mut(id) {
                if o.relocated == 0 && o.enabled == 0 {
                    o.pin = None;
                }
            }
        }
    }
}
