//! Writing sites: every change of a site's bytes goes through the engine
//! from here — live batches (`apply`) that keep the pinning invariant, the
//! one-time conversion of compiler NOP sleds (`convert`), and the scans a
//! `dlopen`/`dlclose` needs.

use super::*;

impl Table {
    /// Rewrites sites live through the engine, as one batch: each `(ip,
    /// insn)` makes the site at `ip` hold `insn`. Either all change or none.
    ///
    /// Keeps the pinning invariant: before any site of a library goes from
    /// NOP to call/jmp the library is pinned, and once its last enabled site
    /// is back to NOP the pin is released. Unconverted sites are refused.
    pub fn apply(&mut self, changes: &[(usize, Insn)]) -> Result<(), Error> {
        let mut idx = Vec::with_capacity(changes.len());
        for &(ip, insn) in changes {
            let i = self.find(ip).ok_or(Error::NoSuchSite { addr: ip })?;
            if !self.records[i].is_live() {
                return Err(Error::NotConverted {
                    addr: ip,
                    name: self.name(i).to_owned(),
                });
            }
            if self.records[i].insn() != insn {
                idx.push((i, insn));
            }
        }
        if idx.is_empty() {
            return Ok(());
        }
        // Per-object change in the number of enabled sites.
        let mut delta: HashMap<ObjectId, i64> = HashMap::new();
        for &(i, new) in &idx {
            let r = &self.records[i];
            let d = i64::from(new != Insn::Nop) - i64::from(r.is_enabled());
            *delta.entry(r.object()).or_default() += d;
        }
        // Pin first: the batch must never put a call into a library that
        // could be unmapped while it is there.
        let mut newly_pinned: Vec<ObjectId> = Vec::new();
        for (&id, &d) in &delta {
            let o = self.object(id).expect("records refer to known objects");
            if d > 0 && o.enabled == 0 && !o.is_main && o.pin.is_none() {
                match Pin::take(&o.dl_name, o.base) {
                    Ok(p) => {
                        self.object_mut(id).expect("known").pin = Some(p);
                        newly_pinned.push(id);
                    }
                    Err(e) => {
                        let path = o.display_path().to_owned();
                        for id in newly_pinned {
                            self.object_mut(id).expect("known").pin = None;
                        }
                        return Err(Error::Pin {
                            object: path,
                            source: e,
                        });
                    }
                }
            }
        }
        let mut batch = Batch::with_capacity(idx.len());
        let mut queued: Result<(), livetrace_poke::Error> = Ok(());
        for &(i, new) in &idx {
            let r = &self.records[i];
            queued = batch.queue(r.ip(), r.insn(), new);
            if queued.is_err() {
                break;
            }
        }
        if let Err(e) = queued.and_then(|()| batch.apply().map(|_| ())) {
            for id in newly_pinned {
                self.object_mut(id).expect("known").pin = None;
            }
            return Err(Error::Poke(e));
        }
        for &(i, new) in &idx {
            self.records[i].set_insn(new);
        }
        for (id, d) in delta {
            let o = self.object_mut(id).expect("known");
            o.enabled = (i64::from(o.enabled) + d) as u32;
            if o.enabled == 0 && o.relocated == 0 {
                // Every site of the library is a NOP again: nothing can
                // call into it from its sites any more, so it may go.
                o.pin = None;
            }
        }
        Ok(())
    }

    /// Converts unconverted sites (sleds and non-canonical NOPs) into the
    /// canonical 5-byte NOP under `policy`; `objects` limits it to those
    /// objects (all when `None`). See [`ConvertPolicy`] for what each mode
    /// guarantees.
    pub fn convert(
        &mut self,
        objects: Option<&[ObjectId]>,
        policy: ConvertPolicy,
    ) -> Result<ConvertReport, Error> {
        let targets: Vec<usize> = (0..self.records.len())
            .filter(|&i| {
                let r = &self.records[i];
                !r.is_live() && objects.is_none_or(|ids| ids.contains(&r.object()))
            })
            .collect();
        if targets.is_empty() {
            return Ok(ConvertReport::default());
        }
        // Keep every involved library mapped while its text is rewritten.
        let mut pins: Vec<Pin> = Vec::new();
        let mut ids: Vec<ObjectId> = targets.iter().map(|&i| self.records[i].object()).collect();
        ids.dedup();
        ids.sort();
        ids.dedup();
        for id in &ids {
            let o = self.object(*id).expect("known");
            if !o.is_main {
                let p = Pin::take(&o.dl_name, o.base).map_err(|e| Error::Pin {
                    object: o.display_path().to_owned(),
                    source: e,
                })?;
                pins.push(p);
            }
        }
        let mut sites: Vec<(usize, [u8; 5])> = Vec::with_capacity(targets.len());
        let mut report = ConvertReport::default();
        let mut already = Vec::new();
        for &i in &targets {
            let r = &self.records[i];
            let o = self.object(r.object()).expect("known");
            match read_text(&o.exec, r.ip()) {
                // Converted already (an earlier conversion stopped by an
                // error after writing it): only the record lags.
                Some(NOP5) => already.push(i),
                Some(b) if matches!(classify(b), Found::Sled | Found::NopVariant) => {
                    sites.push((r.ip(), b))
                }
                other => report.failed.push((
                    r.ip(),
                    format!(
                        "{}: expected 90 90 90 90 90 or 0f 1f 44 00 xx, found {}",
                        self.name(i),
                        other.map_or("nothing readable".into(), hex5)
                    ),
                )),
            }
        }
        for i in already {
            self.records[i].set_converted();
            report.converted += 1;
        }
        if sites.is_empty() {
            // Nothing left to write (someone converted them already, e.g.
            // with every thread held by a ptrace injector): no need to
            // stop anyone.
            return Ok(report);
        }
        let (done, result) = convert::convert_sites(&sites, policy, &mut report);
        for ip in done {
            if let Some(i) = self.find(ip) {
                self.records[i].set_converted();
            }
        }
        drop(pins);
        result?;
        Ok(report)
    }

    /// For the `dlopen` interposer: call after the real `dlopen` returned
    /// `handle` (before handing it to the program, so that its code has run
    /// only in its constructors). Scans the new objects, then converts the
    /// sleds of the object behind `handle` and of the libraries it brought
    /// in with it, stopping the world ([`ConvertPolicy::StopTheWorld`]):
    /// the constructors may have started threads that run their code.
    pub fn on_dlopen(
        &mut self,
        handle: *mut libc::c_void,
    ) -> Result<(ScanReport, ConvertReport), Error> {
        let scan = self.rescan()?;
        let (base, _) = loaded::handle_info(handle).map_err(Error::Io)?;
        let Some(root) = self
            .objects
            .iter()
            .find(|o| o.base == base && scan.added_objects.contains(&o.id))
            .map(|o| o.id)
        else {
            // Already known before this dlopen: its code may have run.
            return Ok((scan, ConvertReport::default()));
        };
        let closure = self.just_loaded_closure(root, &scan.added_objects);
        let conv = self.convert(Some(&closure), ConvertPolicy::StopTheWorld)?;
        Ok((scan, conv))
    }

    /// For the `dlclose` interposer: call after the real `dlclose`. Drops
    /// the records of objects that are no longer loaded.
    pub fn on_dlclose(&mut self) -> Result<ScanReport, Error> {
        self.rescan()
    }

    /// `root` and the new objects reachable from it through DT_NEEDED
    /// (matched by soname or file name): what one `dlopen` loaded.
    fn just_loaded_closure(&self, root: ObjectId, new: &[ObjectId]) -> Vec<ObjectId> {
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            let needed = self
                .object(out[i])
                .map(|o| o.needed.clone())
                .unwrap_or_default();
            for n in &needed {
                for o in &self.objects {
                    if !new.contains(&o.id) || out.contains(&o.id) {
                        continue;
                    }
                    let file = o.dl_name.rsplit('/').next().unwrap_or("");
                    if o.soname.as_deref() == Some(n.as_str()) || file == n {
                        out.push(o.id);
                    }
                }
            }
            i += 1;
        }
        out
    }
}
