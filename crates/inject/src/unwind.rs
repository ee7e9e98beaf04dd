//! A stopped thread's return addresses, by its objects' unwind information
//! (`.eh_frame`, found through `.eh_frame_hdr`), the way a debugger walks
//! a stack.
//!
//! Whether a thread may run a call into libc depends on what it is in the
//! middle of: inside `malloc` it may hold an arena lock the call would
//! take again. Scanning the raw stack for words that look like return
//! addresses into such code errs on the safe side but sees stale words too
//! (an uninitialised local still holding the return address of a `free`
//! that returned long ago): a busy single-threaded interpreter then never
//! looks safe. Unwinding gives only the live frames. Where it cannot go
//! on — code no object describes (a JIT, livetrace's trampolines), a rule
//! it does not evaluate (a signal frame's expressions) — it says so, and
//! the caller falls back on the raw scan from there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, ParsedEhFrameHdr, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};

use crate::elf::Module;

/// Frames walked at most.
const MAX_FRAMES: usize = 512;

/// One object's unwind tables, with the file bytes they borrow from.
struct Tables {
    data: Arc<[u8]>,
    eh_frame: (usize, usize, u64),
    eh_frame_hdr: (usize, usize, u64),
    text: u64,
}

/// Objects' tables, read once per file.
#[derive(Default)]
pub(crate) struct Cache {
    files: Mutex<HashMap<String, Option<Arc<Tables>>>>,
}

/// Where a walk ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// At the outermost frame: every return address is known.
    Complete,
    /// At a frame it cannot unwind: the stack from this `rsp` up is not
    /// known frame by frame.
    Unknown { rsp: u64 },
}

impl Cache {
    fn tables(&self, m: &Module) -> Option<Arc<Tables>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files
            .entry(m.path.clone())
            .or_insert_with(|| load(&m.file).map(Arc::new))
            .clone()
    }

    /// The return addresses of the thread with registers (`rip`, `rsp`,
    /// `rbp`), innermost first, and how far the walk got. `read` reads a
    /// word of the thread's memory.
    pub(crate) fn return_addresses(
        &self,
        modules: &[Module],
        (rip, rsp, rbp): (u64, u64, u64),
        read: impl Fn(u64) -> Option<u64>,
    ) -> (Vec<u64>, End) {
        let mut out = Vec::new();
        let (mut pc, mut sp, mut fp) = (rip, rsp, rbp);
        let mut ctx = UnwindContext::new();
        for frame in 0..MAX_FRAMES {
            // A return address is looked up one byte back: the call may be
            // the last instruction of its function.
            let at = if frame == 0 { pc } else { pc.wrapping_sub(1) };
            let Some(m) = modules
                .iter()
                .find(|m| m.text().iter().any(|r| r.0 <= at && at < r.1))
            else {
                return (out, End::Unknown { rsp: sp });
            };
            let Some(t) = self.tables(m) else {
                return (out, End::Unknown { rsp: sp });
            };
            match step(&t, m.bias, at, sp, fp, &read, &mut ctx) {
                Step::Caller { ra, cfa, rbp } => {
                    if ra == 0 {
                        return (out, End::Complete);
                    }
                    out.push(ra);
                    if cfa <= sp && frame > 0 {
                        // Not moving up the stack: something is wrong.
                        return (out, End::Unknown { rsp: sp });
                    }
                    (pc, sp, fp) = (ra, cfa, rbp);
                }
                Step::Outermost => return (out, End::Complete),
                Step::Unknown => return (out, End::Unknown { rsp: sp }),
            }
        }
        (out, End::Unknown { rsp: sp })
    }
}

enum Step {
    Caller { ra: u64, cfa: u64, rbp: u64 },
    Outermost,
    Unknown,
}

fn step(
    t: &Tables,
    bias: u64,
    at: u64,
    sp: u64,
    fp: u64,
    read: &impl Fn(u64) -> Option<u64>,
    ctx: &mut UnwindContext<usize>,
) -> Step {
    let link = at.wrapping_sub(bias);
    let slice = |(off, len, _): (usize, usize, u64)| {
        gimli::EndianSlice::new(&t.data[off..off + len], LittleEndian)
    };
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(t.eh_frame_hdr.2)
        .set_eh_frame(t.eh_frame.2)
        .set_text(t.text);
    let eh_frame = EhFrame::from(slice(t.eh_frame));
    let Ok(hdr): gimli::Result<ParsedEhFrameHdr<_>> =
        EhFrameHdr::new(slice(t.eh_frame_hdr).slice(), LittleEndian).parse(&bases, 8)
    else {
        return Step::Unknown;
    };
    let Some(table) = hdr.table() else {
        return Step::Unknown;
    };
    let Ok(fde) = table.fde_for_address(&eh_frame, &bases, link, EhFrame::cie_from_offset) else {
        return Step::Unknown;
    };
    let Ok(row) = fde.unwind_info_for_address(&eh_frame, &bases, ctx, link) else {
        return Step::Unknown;
    };
    let cfa = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let base = match register {
                X86_64::RSP => sp,
                X86_64::RBP => fp,
                _ => return Step::Unknown,
            };
            base.wrapping_add_signed(offset)
        }
        CfaRule::Expression(_) => return Step::Unknown,
    };
    let ra = match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(o)) => match read(cfa.wrapping_add_signed(o)) {
            Some(v) => v,
            None => return Step::Unknown,
        },
        // `_start` and `clone3` mark the end of the stack so.
        Some(RegisterRule::Undefined) => return Step::Outermost,
        _ => return Step::Unknown,
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => fp,
        Some(RegisterRule::Offset(o)) => match read(cfa.wrapping_add_signed(o)) {
            Some(v) => v,
            None => return Step::Unknown,
        },
        _ => return Step::Unknown,
    };
    Step::Caller { ra, cfa, rbp }
}

/// Reads `path`'s `.eh_frame` and `.eh_frame_hdr`; `None` when it has no
/// lookup table (then nothing is unwound through it).
fn load(path: &Path) -> Option<Tables> {
    use object::{Object, ObjectSection};
    let data: Arc<[u8]> = std::fs::read(path).ok()?.into();
    let file = object::File::parse(&*data).ok()?;
    let range = |name: &str| -> Option<(usize, usize, u64)> {
        let s = file.section_by_name(name)?;
        let (off, len) = s.file_range()?;
        Some((off as usize, len as usize, s.address()))
    };
    let eh_frame = range(".eh_frame")?;
    let eh_frame_hdr = range(".eh_frame_hdr")?;
    let text = file.section_by_name(".text").map_or(0, |s| s.address());
    if eh_frame.0 + eh_frame.1 > data.len() || eh_frame_hdr.0 + eh_frame_hdr.1 > data.len() {
        return None;
    }
    Some(Tables {
        data,
        eh_frame,
        eh_frame_hdr,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own stack, walked from here: every return address is a
    /// frame of ours, in order, and the walk reaches the thread's start.
    #[test]
    #[inline(never)]
    fn walks_this_threads_stack_to_its_start() {
        let pid = std::process::id() as i32;
        let maps = crate::procfs::maps(pid).unwrap();
        let modules = crate::elf::modules(pid, &maps, Path::new("/"));
        let (rip, rsp, rbp): (u64, u64, u64);
        // SAFETY: reads three registers and the address of a local label;
        // changes nothing.
        unsafe {
            std::arch::asm!("lea {0}, [rip]", "mov {1}, rsp", "mov {2}, rbp",
                out(reg) rip, out(reg) rsp, out(reg) rbp);
        }
        let read = |a: u64| -> Option<u64> {
            // SAFETY: addresses the unwinder computed from this thread's
            // live frames, which stay valid while this function runs.
            (a != 0 && a % 8 == 0).then(|| unsafe { (a as *const u64).read() })
        };
        let cache = Cache::default();
        let (ras, end) = cache.return_addresses(&modules, (rip, rsp, rbp), read);
        assert_eq!(end, End::Complete, "{ras:x?}");
        assert!(ras.len() >= 3, "{ras:x?}");
        // The caller is the test harness's closure, in this executable.
        let exe = modules.iter().find(|m| m.contains(rip)).unwrap();
        assert!(exe.contains(ras[0]), "{ras:x?}");
    }
}
