//! Judging each candidate from what the scan found: why it is excluded, or
//! whether its prologue can be moved (no reference into the bytes a site
//! replaces); and what its callers' compiler assumed of it (entered directly,
//! clobbering every call-clobbered register).

use super::*;

/// For every candidate, whether it clobbers every call-clobbered register
/// as its callers' compiler saw it (see [`Candidate::clobbers_all`]): a
/// least fixed point over the direct calls and jumps that leave each
/// function's range, seeded by indirect calls and calls into PLT sections.
/// A target the analysis cannot place (no candidate holds it) proves
/// nothing: only known-unknown callees do.
pub(super) fn clobbers_all(
    cands: &[Cand],
    bodies: &[Body],
    refs: &[Ref],
    sections: &Sections,
) -> Vec<bool> {
    let in_plt = |a: u64| {
        sections
            .containing(a)
            .is_some_and(|s| s.name == ".plt" || s.name == ".plt.sec" || s.name == ".plt.got")
    };
    // cands is sorted by address.
    let holder = |a: u64| -> Option<usize> {
        let i = cands.partition_point(|c| c.addr <= a).checked_sub(1)?;
        (a < cands[i].addr + cands[i].size.max(1)).then_some(i)
    };
    let mut outgoing: Vec<(usize, u64)> = refs
        .iter()
        .filter(|r| matches!(r.kind, RefKind::Call | RefKind::Jump))
        .filter_map(|r| {
            let f = holder(r.from)?;
            let c = &cands[f];
            (r.target < c.addr || r.target >= c.addr + c.size).then_some((f, r.target))
        })
        .collect();
    outgoing.sort_unstable();
    let mut all: Vec<bool> = bodies.iter().map(|b| b.indirect_call).collect();
    let mut callees: Vec<Vec<usize>> = vec![Vec::new(); cands.len()];
    for &(f, target) in &outgoing {
        if in_plt(target) {
            all[f] = true;
        } else if let Some(g) = holder(target) {
            callees[f].push(g);
        }
    }
    loop {
        let mut changed = false;
        for f in 0..cands.len() {
            if !all[f] && callees[f].iter().any(|&g| all[g]) {
                all[f] = true;
                changed = true;
            }
        }
        if !changed {
            return all;
        }
    }
}

/// Whether a direct call (from anywhere: a recursive call is a call) or a
/// direct jump from outside `[addr, addr + size)` (a tail call) reaches
/// `addr`. `refs` is sorted by target.
pub(super) fn entered_directly(refs: &[Ref], addr: u64, size: u64) -> bool {
    let from = refs.partition_point(|r| r.target < addr);
    refs[from..]
        .iter()
        .take_while(|r| r.target == addr)
        .any(|r| match r.kind {
            RefKind::Call => true,
            RefKind::Jump => r.from < addr || r.from >= addr + size,
            _ => false,
        })
}

pub(super) fn exclusion(
    c: &Cand,
    sections: &Sections,
    refs: &[Ref],
    shape: Shape,
) -> Option<Refusal> {
    let section = sections.containing(c.addr);
    if c.ifunc {
        return Some(Refusal::IfuncResolver);
    }
    if section.is_some_and(|s| s.name.starts_with(".plt") || s.name.starts_with(".iplt")) {
        return Some(Refusal::Plt);
    }
    if c.names.iter().any(|n| n.contains(".cold")) {
        return Some(Refusal::ColdPart);
    }
    if !section.is_some_and(|s| s.exec) {
        return Some(Refusal::NotCode);
    }
    match shape {
        Shape::Entry => {}
        Shape::MidFrame => return Some(Refusal::MidFrame),
        Shape::Signal => return Some(Refusal::SignalTrampoline),
        Shape::Outermost => return Some(Refusal::Outermost),
    }
    if c.origin == Origin::Unwind {
        let lo = refs.partition_point(|r| r.target < c.addr);
        let mut entered = refs[lo..].iter().take_while(|r| r.target == c.addr);
        let own = c.addr..c.addr + c.size;
        let jumped_into_only = entered.clone().next().is_some()
            && entered.all(|r| {
                r.kind == RefKind::Jump && !own.contains(&r.from) && is_jcc(sections, r.from)
            });
        if jumped_into_only {
            return Some(Refusal::JumpedIntoOnly);
        }
    }
    None
}

/// Whether the instruction at `at` is a conditional jump.
fn is_jcc(sections: &Sections, at: u64) -> bool {
    let Some(code) = sections.from(at) else {
        return false;
    };
    let mut d = Decoder::with_ip(64, &code[..code.len().min(16)], at, DecoderOptions::NONE);
    let insn = d.decode();
    insn.flow_control() == FlowControl::ConditionalBranch
}

pub(super) struct Context<'s, 'a> {
    pub(super) sections: &'s Sections<'a>,
    pub(super) refs: &'s [Ref],
    pub(super) entries: &'s [(u64, String)],
    pub(super) fde_starts: &'s [u64],
    pub(super) unreadable_lsda: &'s [u64],
    pub(super) cold: &'s [(u64, u64)],
}

impl Context<'_, '_> {
    pub(super) fn verdict(&self, c: &Cand, body: &Body) -> Result<Prologue, Refusal> {
        if c.size == 0 {
            return Err(Refusal::UnknownSize);
        }
        let code = self.sections.from(c.addr).ok_or(Refusal::NotCode)?;
        let p = Prologue::decode(code, c.addr, c.size)?;
        let (site, end) = (p.site(), p.site() + p.len() as u64);
        let body_range = c.addr..c.addr + c.size;
        let lo = self.refs.partition_point(|r| r.target < c.addr);
        for r in self.refs[lo..].iter().take_while(|r| r.target < end) {
            let branch = matches!(r.kind, RefKind::Jump | RefKind::Call);
            if branch && (site..end).contains(&r.from) {
                // Kept inside the detour (Prologue::decode resolved it).
                continue;
            }
            if r.target > site {
                return Err(match r.kind {
                    RefKind::Jump | RefKind::Call => Refusal::BranchIntoRegion {
                        from: r.from,
                        target: r.target,
                    },
                    RefKind::JumpTable => Refusal::JumpTableIntoRegion {
                        table: r.from,
                        target: r.target,
                    },
                    RefKind::Address | RefKind::Relocation => Refusal::AddressTakenInRegion {
                        at: r.from,
                        target: r.target,
                    },
                    RefKind::LandingPad => Refusal::LandingPadInRegion { target: r.target },
                });
            }
            let loop_back = matches!(r.kind, RefKind::Jump | RefKind::JumpTable)
                && (body_range.contains(&r.from)
                    || self.cold.iter().any(|&(a, b)| (a..b).contains(&r.from)));
            if loop_back {
                return Err(Refusal::BranchToEntry { from: r.from });
            }
        }
        let inside = |a: u64| a > site && a < end;
        let i = self.fde_starts.partition_point(|&s| s <= site);
        if let Some(&start) = self.fde_starts.get(i).filter(|&&s| inside(s)) {
            return Err(Refusal::FdeStartsInRegion { start });
        }
        let i = self.entries.partition_point(|e| e.0 <= site);
        if let Some((addr, name)) = self.entries.get(i).filter(|e| inside(e.0)) {
            return Err(Refusal::SymbolInRegion {
                name: name.clone(),
                addr: *addr,
            });
        }
        if self.unreadable_lsda.iter().any(|a| body_range.contains(a)) {
            return Err(Refusal::ExceptionTableUnreadable);
        }
        if let Some(at) = body.first_error {
            return Err(Refusal::BodyUndecodable { at });
        }
        Ok(p)
    }
}
