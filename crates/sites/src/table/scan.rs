//! Scanning: bringing the table up to date with the loaded objects (read
//! new ones, drop unloaded ones, notice one reloaded at the same address)
//! and adding sites found by others (`#[traced]` stubs, external tables);
//! with what a scan reports, refused sites included.

use super::*;

/// Why a site was refused. Refused sites are not in the table, so nothing
/// can ever patch them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The site address.
    pub addr: usize,
    /// The object's file.
    pub object: String,
    /// The function containing it, as `name+0xoff`, if any.
    pub symbol: Option<String>,
    /// The bytes found there, when readable.
    pub found: Option<[u8; 5]>,
    /// The check that failed.
    pub reason: RejectReason,
}

/// The check a refused site failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The bytes are none of the accepted NOP forms.
    UnexpectedBytes,
    /// The five bytes are not inside an executable segment of the object.
    NotText,
    /// The address is in no loaded object (externally described sites).
    NoObject,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "livetrace: refused site at {:#x}", self.addr)?;
        if let Some(s) = &self.symbol {
            write!(f, " <{s}>")?;
        }
        write!(f, " in {}: ", self.object)?;
        match self.reason {
            RejectReason::UnexpectedBytes => {
                f.write_str("expected nop (0f 1f 44 00 00, or 90 90 90 90 90)")?
            }
            RejectReason::NotText => f.write_str("not inside an executable segment")?,
            RejectReason::NoObject => f.write_str("not inside any loaded object")?,
        }
        match self.found {
            Some(b) => write!(f, ", found {}", hex5(b)),
            None => Ok(()),
        }
    }
}

/// An externally described site (the `#[traced]` macro's), for
/// [`Table::insert_external`].
#[derive(Clone, Copy, Debug)]
pub struct ExternalSite<'a> {
    /// The site address (five bytes holding the 5-byte NOP).
    pub addr: usize,
    /// The function's full path, e.g. `mycrate::parser::parse_expr`.
    pub name: &'a str,
    /// Source file.
    pub file: &'a str,
    /// Source line.
    pub line: u32,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Objects seen for the first time.
    pub added_objects: Vec<ObjectId>,
    /// Objects no longer loaded, whose records were dropped.
    pub removed_objects: usize,
    /// Sites added to the table.
    pub added_sites: usize,
    /// Sites refused by this scan (also kept in [`Table::rejected`]).
    pub rejected: Vec<Rejected>,
    /// Objects whose file could not be used: (object, why).
    pub errors: Vec<(String, String)>,
    /// Sites left out because they are livetrace's own or the Rust
    /// runtime's (never traced; see `notrace.rs`).
    pub notrace: usize,
}

/// What [`Table::insert_external`] did.
#[derive(Debug, Default)]
pub struct InsertReport {
    /// New records.
    pub inserted: usize,
    /// Sites already in the table (their file:line was filled in if it
    /// was unknown).
    pub already_known: usize,
    /// Refused sites.
    pub rejected: Vec<Rejected>,
}

impl Table {
    /// Brings the table up to date with the loaded objects: objects loaded
    /// since the last scan are read and their sites added; objects no longer
    /// loaded lose their records. Idempotent: a scan with nothing loaded or
    /// unloaded since changes nothing and reads no file.
    ///
    /// Objects with an enabled site are pinned and cannot have been
    /// unloaded. An unpinned object that was unloaded and loaded again at
    /// the same address between two scans is detected (the loader's
    /// unload counter moved and its sites' bytes no longer match what the
    /// table says) and read afresh.
    pub fn rescan(&mut self) -> Result<ScanReport, Error> {
        let (now, subs) = loaded::loaded_objects_with_subs();
        let mut report = ScanReport::default();
        let unloads_happened = self.last_subs.is_some_and(|s| s != subs);
        self.last_subs = Some(subs);

        // Drop objects that are gone, or suspect of having been reloaded.
        let mut gone: Vec<ObjectId> = Vec::new();
        // The core's accounting of a reloaded object's sites carries over to
        // the same addresses (same file at the same address).
        let mut carry: HashMap<usize, Record> = HashMap::new();
        for o in &self.objects {
            let still = now
                .iter()
                .any(|l| l.dl_name == o.dl_name && l.base == o.base);
            if !still {
                debug_assert!(o.pin.is_none(), "a pinned object was unloaded");
                gone.push(o.id);
            } else if unloads_happened
                && o.pin.is_none()
                && !o.is_main
                && !self.bytes_still_match(o)
            {
                gone.push(o.id);
                carry.extend(
                    self.records
                        .iter()
                        .filter(|r| r.object() == o.id)
                        .map(|r| (r.ip(), *r)),
                );
            }
        }
        if !gone.is_empty() {
            report.removed_objects = gone.len();
            self.remove_objects(&gone);
        }

        let mut fresh: Vec<NewRecord> = Vec::new();
        for l in &now {
            if self
                .objects
                .iter()
                .any(|o| o.dl_name == l.dl_name && o.base == l.base)
            {
                continue;
            }
            let id = ObjectId(self.next_object);
            self.next_object += 1;
            let obj = self.scan_object(id, l, &mut fresh, &mut report);
            report.added_objects.push(id);
            self.objects.push(obj);
        }
        report.added_sites = fresh.len();
        self.merge(fresh);
        for (ip, old) in carry {
            if let Some(i) = self.find(ip) {
                self.records[i].take_accounting(&old);
            }
        }
        Ok(report)
    }

    /// Whether every record of `o` still finds the bytes the table expects
    /// (only meaningful for unpinned objects, whose live sites are all NOPs).
    fn bytes_still_match(&self, o: &Object) -> bool {
        let Ok(_pin) = Pin::take(&o.dl_name, o.base) else {
            return false;
        };
        self.records.iter().filter(|r| r.object() == o.id).all(|r| {
            matches!(
                (read_text(&o.exec, r.ip()).map(classify), r.state()),
                (Some(Found::Nop5), SiteState::Live(Insn::Nop))
                    | (
                        Some(Found::Sled | Found::NopVariant),
                        SiteState::Unconverted
                    )
            )
        })
    }

    pub(super) fn remove_objects(&mut self, ids: &[ObjectId]) {
        let keep: Vec<bool> = self
            .records
            .iter()
            .map(|r| !ids.contains(&r.object()))
            .collect();
        self.retain_records(&keep);
        self.objects.retain(|o| !ids.contains(&o.id));
        self.rejected.retain(|(id, _)| !ids.contains(id));
        self.reloc.forget(ids);
    }

    /// Keeps the records whose `keep` entry is true (with their strings).
    pub(super) fn retain_records(&mut self, keep: &[bool]) {
        let mut new_records = Vec::with_capacity(self.records.len());
        let mut new_cold = Vec::with_capacity(self.cold.len());
        let mut arena = String::with_capacity(self.arena.len());
        for (i, k) in keep.iter().enumerate() {
            if !k {
                continue;
            }
            let c = self.cold[i];
            let mut move_span = |s: Span| {
                let text = &self.arena[s.start as usize..(s.start + s.len) as usize];
                let start = arena.len() as u32;
                arena.push_str(text);
                Span { start, len: s.len }
            };
            let nc = Cold {
                name: move_span(c.name),
                raw: move_span(c.raw),
                file: move_span(c.file),
                line: c.line,
                offset: c.offset,
            };
            new_records.push(self.records[i]);
            new_cold.push(nc);
        }
        self.records = new_records;
        self.cold = new_cold;
        self.arena = arena;
        self.rebuild_name_index();
    }

    fn push_str(&mut self, s: &str) -> Span {
        let start = u32::try_from(self.arena.len()).expect("string arena exceeds 4 GiB");
        self.arena.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    /// Adds new records (any order, addresses not yet in the table) and
    /// restores address order and the name index.
    pub(super) fn merge(&mut self, fresh: Vec<NewRecord>) {
        if fresh.is_empty() {
            return;
        }
        for n in fresh {
            let name = self.push_str(&n.name);
            let raw = if n.raw == n.name {
                Span::default()
            } else {
                self.push_str(&n.raw)
            };
            let file = self.push_str(&n.file);
            self.records.push(n.rec);
            self.cold.push(Cold {
                name,
                raw,
                file,
                line: n.line,
                offset: n.offset,
            });
        }
        let mut order: Vec<usize> = (0..self.records.len()).collect();
        order.sort_by_key(|&i| self.records[i].ip());
        self.records = order.iter().map(|&i| self.records[i]).collect();
        self.cold = order.iter().map(|&i| self.cold[i]).collect();
        self.rebuild_name_index();
    }

    fn rebuild_name_index(&mut self) {
        let mut idx: Vec<u32> = (0..self.records.len() as u32).collect();
        idx.sort_by(|&a, &b| self.name(a as usize).cmp(self.name(b as usize)));
        self.by_name = idx;
    }

    /// Reads one newly seen object's file and checks each of its sites.
    fn scan_object(
        &mut self,
        id: ObjectId,
        l: &Loaded,
        out: &mut Vec<NewRecord>,
        report: &mut ScanReport,
    ) -> Object {
        let mut obj = Object {
            id,
            dl_name: l.dl_name.clone(),
            path: loaded::file_path(l),
            base: l.base,
            exec: l.exec.clone(),
            is_main: l.is_main,
            soname: None,
            needed: Vec::new(),
            enabled: 0,
            pin: None,
            error: None,
            relocated: 0,
        };
        let Some(path) = obj.path.clone() else {
            return obj;
        };
        // Keep the object mapped while its text is read: another thread
        // may dlclose it at any moment.
        let _pin = if l.is_main {
            None
        } else {
            match Pin::take(&l.dl_name, l.base) {
                Ok(p) => Some(p),
                Err(e) => {
                    obj.error = Some(e.to_string());
                    return obj;
                }
            }
        };
        let info = match Mmap::open(&path).and_then(|m| Ok((elf::parse(m.bytes())?, m))) {
            Ok((info, _map)) => info,
            Err(e) => {
                let why = format!("cannot read {path}: {e}");
                report.errors.push((path.clone(), why.clone()));
                obj.error = Some(why);
                return obj;
            }
        };
        let mapped: Vec<(u64, u64, u32)> = l.loads.clone();
        let in_file: Vec<(u64, u64, u32)> = info
            .loads
            .iter()
            .map(|s| (s.vaddr, s.memsz, s.flags))
            .collect();
        if mapped != in_file {
            let why = format!("{path} on disk is not the file that was loaded (segments differ)");
            report.errors.push((path.clone(), why.clone()));
            obj.error = Some(why);
            return obj;
        }
        obj.soname = info.soname.clone();
        obj.needed = info.needed.clone();
        let file_stem = path.rsplit('/').next().unwrap_or(&path).to_owned();
        if crate::notrace::is_notrace_object(&path) {
            report.notrace += info.sites.len();
            return obj;
        }
        for &(link, origin) in &info.sites {
            let addr = l.base.wrapping_add(link as usize);
            let sym = info.containing(link);
            let (raw, offset) = match sym {
                Some(s) => (s.name.clone(), (link - s.addr) as u32),
                // Stripped object (static functions are not in .dynsym):
                // still traceable by address.
                None => (format!("{file_stem}+{link:#x}"), 0),
            };
            let name = crate::demangle::demangle(&raw).unwrap_or_else(|| raw.clone());
            if crate::notrace::is_notrace(&raw, &name) {
                report.notrace += 1;
                continue;
            }
            let label = if offset == 0 {
                name.clone()
            } else {
                format!("{name}+{offset:#x}")
            };
            let found = read_text(&obj.exec, addr);
            let reason = match found.map(classify) {
                None => Some(RejectReason::NotText),
                Some(Found::Other) => Some(RejectReason::UnexpectedBytes),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                let r = Rejected {
                    addr,
                    object: path.clone(),
                    symbol: sym.map(|_| label),
                    found,
                    reason,
                };
                report.rejected.push(r.clone());
                self.rejected.push((id, r));
                continue;
            }
            let unconverted = found.map(classify) != Some(Found::Nop5);
            out.push(NewRecord {
                rec: Record::new(addr, id, origin, unconverted),
                name,
                raw,
                file: String::new(),
                line: 0,
                offset,
            });
        }
        obj
    }

    /// Adds sites described by the program itself (origin
    /// [`Origin::Macro`]). Each must lie in the executable text of a loaded
    /// object and hold an accepted NOP form; a site already in the table
    /// keeps its record and gets the source position if it had none.
    pub fn insert_external(&mut self, sites: &[ExternalSite<'_>]) -> Result<InsertReport, Error> {
        let mut report = InsertReport::default();
        if sites
            .iter()
            .any(|s| self.object_containing(s.addr).is_none())
        {
            self.rescan()?;
        }
        let mut fresh: Vec<NewRecord> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pins: HashMap<ObjectId, Option<Pin>> = HashMap::new();
        for s in sites {
            if let Some(i) = self.find(s.addr) {
                report.already_known += 1;
                if self.cold[i].file.len == 0 && !s.file.is_empty() {
                    let file = self.push_str(s.file);
                    self.cold[i].file = file;
                    self.cold[i].line = s.line;
                }
                continue;
            }
            if !seen.insert(s.addr) {
                report.already_known += 1;
                continue;
            }
            let Some(obj) = self.object_containing(s.addr) else {
                let r = Rejected {
                    addr: s.addr,
                    object: "?".into(),
                    symbol: Some(s.name.to_owned()),
                    found: None,
                    reason: RejectReason::NoObject,
                };
                report.rejected.push(r);
                continue;
            };
            let id = obj.id;
            let pin = pins.entry(id).or_insert_with(|| {
                if obj.is_main {
                    None
                } else {
                    Pin::take(&obj.dl_name, obj.base).ok()
                }
            });
            let found = if obj.is_main || pin.is_some() {
                read_text(&obj.exec, s.addr)
            } else {
                None
            };
            let kind = found.map(classify);
            if matches!(kind, None | Some(Found::Other)) {
                let r = Rejected {
                    addr: s.addr,
                    object: obj.display_path().to_owned(),
                    symbol: Some(s.name.to_owned()),
                    found,
                    reason: if found.is_none() {
                        RejectReason::NotText
                    } else {
                        RejectReason::UnexpectedBytes
                    },
                };
                self.rejected.push((id, r.clone()));
                report.rejected.push(r);
                continue;
            }
            fresh.push(NewRecord {
                rec: Record::new(s.addr, id, Origin::Macro, kind != Some(Found::Nop5)),
                name: s.name.to_owned(),
                raw: s.name.to_owned(),
                file: s.file.to_owned(),
                line: s.line,
                offset: 0,
            });
        }
        report.inserted = fresh.len();
        self.merge(fresh);
        Ok(report)
    }
}
