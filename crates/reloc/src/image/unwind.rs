//! What `.eh_frame` says: function ranges the symbol table lacks, the
//! unwind shape at a candidate's start (a function entry, mid-frame, a
//! signal trampoline, an outermost frame), and exception landing pads.

use super::*;

/// Symbol ranges, to tell whether an FDE starts inside a known function.
pub(super) struct Coverage {
    starts: Vec<u64>,
    max_end: Vec<u64>,
}

impl Coverage {
    pub(super) fn new(cands: &[Cand]) -> Coverage {
        let mut starts = Vec::with_capacity(cands.len());
        let mut max_end = Vec::with_capacity(cands.len());
        let mut m = 0;
        for c in cands {
            m = u64::max(m, c.addr + c.size);
            starts.push(c.addr);
            max_end.push(m);
        }
        Coverage { starts, max_end }
    }

    pub(super) fn covers_or_starts(&self, addr: u64) -> bool {
        let i = self.starts.partition_point(|&s| s <= addr);
        i > 0 && (self.starts[i - 1] == addr || self.max_end[i - 1] > addr)
    }
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

pub(super) struct Fde<'a> {
    pub(super) start: u64,
    pub(super) len: u64,
    parsed: gimli::FrameDescriptionEntry<Slice<'a>>,
}

pub(super) struct Unwind<'a> {
    /// By start address.
    pub(super) fdes: Vec<Fde<'a>>,
    frame: Option<(gimli::EhFrame<Slice<'a>>, gimli::BaseAddresses)>,
    /// (LSDA, landing pad).
    pub(super) pads: Vec<(u64, u64)>,
    /// Starts of FDEs whose LSDA could not be read.
    pub(super) unreadable: Vec<u64>,
}

/// What the unwind information says about an address a candidate starts
/// at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// No FDE covers it, or its rules there are those of a function entry.
    Entry,
    /// The CFA is not `rsp+8`, or callee-saved registers are saved.
    MidFrame,
    /// A signal-return trampoline (CIE augmentation `S`).
    Signal,
    /// The return address is undefined: an outermost frame (`_start`, a
    /// thread's first function).
    Outermost,
}

impl Unwind<'_> {
    pub(super) fn shape(&self, addr: u64, ctx: &mut gimli::UnwindContext<usize>) -> Shape {
        let i = self.fdes.partition_point(|f| f.start <= addr);
        let Some(f) = i
            .checked_sub(1)
            .map(|i| &self.fdes[i])
            .filter(|f| addr - f.start < f.len)
        else {
            return Shape::Entry;
        };
        if f.parsed.is_signal_trampoline() {
            return Shape::Signal;
        }
        let Some((frame, bases)) = &self.frame else {
            return Shape::Entry;
        };
        match f.parsed.unwind_info_for_address(frame, bases, ctx, addr) {
            Ok(row) => entry_shape(row),
            // Rules that cannot be evaluated say nothing about an entry.
            Err(_) => Shape::MidFrame,
        }
    }
}

pub(super) fn read_eh_frame<'a>(
    file: &object::File<'a>,
    sections: &Sections<'a>,
) -> Result<Unwind<'a>, Error> {
    use gimli::UnwindSection;
    let mut out = Unwind {
        fdes: Vec::new(),
        frame: None,
        pads: Vec::new(),
        unreadable: Vec::new(),
    };
    let Some(eh) = file.section_by_name(".eh_frame") else {
        return Ok(out);
    };
    let Ok(data) = eh.data() else {
        return Ok(out);
    };
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(eh.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let eh_frame = gimli::EhFrame::new(data, gimli::LittleEndian);
    let mut entries = eh_frame.entries(&bases);
    while let Some(entry) = entries.next().map_err(Error::Unwind)? {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial
            .parse(gimli::EhFrame::cie_from_offset)
            .map_err(Error::Unwind)?;
        let start = fde.initial_address();
        if let Some(lsda) = fde.lsda() {
            let lsda = match lsda {
                gimli::Pointer::Direct(a) => Some(a),
                gimli::Pointer::Indirect(a) => sections.read::<8>(a).map(u64::from_le_bytes),
            };
            match lsda
                .and_then(|a| lsda::landing_pads(|x| sections.from(x), a, start).map(|p| (a, p)))
            {
                Some((a, pads)) => out.pads.extend(pads.into_iter().map(|p| (a, p))),
                None => out.unreadable.push(start),
            }
        }
        out.fdes.push(Fde {
            start,
            len: fde.len(),
            parsed: fde,
        });
    }
    out.fdes.sort_by_key(|f| f.start);
    out.frame = Some((eh_frame, bases));
    Ok(out)
}

/// What an unwind row says: a function's first instruction has the return
/// address just pushed (CFA = `rsp+8`, return address defined) and no
/// callee-saved register saved yet.
fn entry_shape<T: gimli::ReaderOffset>(row: &gimli::UnwindTableRow<T>) -> Shape {
    use gimli::{CfaRule, RegisterRule, X86_64};
    if matches!(row.register(X86_64::RA), Some(RegisterRule::Undefined)) {
        return Shape::Outermost;
    }
    let cfa_ok = matches!(row.cfa(), CfaRule::RegisterAndOffset { register, offset: 8 } if *register == X86_64::RSP);
    let callee_saved = [
        X86_64::RBX,
        X86_64::RBP,
        X86_64::R12,
        X86_64::R13,
        X86_64::R14,
        X86_64::R15,
    ];
    let saved = row.registers().any(|(reg, rule)| {
        callee_saved.contains(reg)
            && !matches!(rule, RegisterRule::Undefined | RegisterRule::SameValue)
    });
    if cfa_ok && !saved {
        Shape::Entry
    } else {
        Shape::MidFrame
    }
}
