//! Per-site stubs, for fast paths that call the original, and their
//! unwind information.

use std::collections::HashMap;
use std::io;

use super::pages::{map_near, write_text};
use super::templates::*;
use super::{window_of, PAGE};

/// From the return address a stub's first call pushes to the stub's word
/// holding the site's address (`LT_STUB_IP_FROM_RETURN` in the template).
pub(crate) const STUB_IP_FROM_RETURN: usize = 18;
/// From the return address a stub's first call pushes to the return
/// address its call of the body pushes (what the return slot holds while
/// the body runs).
pub(crate) const STUB_BODY_RETURN_FROM_RETURN: usize = 9;
/// Bytes per stub (a multiple of 16).
const STUB: usize = 64;

fn stub_offset(label: *const u8) -> usize {
    label as usize - &raw const lt_stub_start as usize
}

/// Per-site stubs, never freed: a function may be running, its return
/// address pointing into its stub, long after its tracer is gone.
#[derive(Default)]
pub(crate) struct Stubs {
    /// site -> stub.
    by_site: HashMap<usize, usize>,
    /// window -> (page, next free offset).
    open: HashMap<usize, (usize, usize)>,
    /// Every stub page: critical code for the quiescence wait (a thread
    /// about to call through a stub's entry word may use what it named).
    pub pages: Vec<std::ops::Range<usize>>,
}

impl Stubs {
    /// The stub of `site`, made if needed, now calling `entry`, jumping to
    /// `exit`, and naming `personality` (0: none) in its unwind
    /// information. Only called before a batch points the site at it, or
    /// while it already serves the same fast path.
    pub fn point(
        &mut self,
        site: usize,
        entry: usize,
        exit: usize,
        personality: usize,
    ) -> io::Result<usize> {
        let stub = match self.by_site.get(&site) {
            Some(&s) => s,
            None => self.make(site)?,
        };
        // The entry, exit and personality words follow the ip word.
        let ip_at = stub_offset(&raw const lt_stub_ip);
        let mut words = [0u8; 24];
        words[..8].copy_from_slice(&(entry as u64).to_le_bytes());
        words[8..16].copy_from_slice(&(exit as u64).to_le_bytes());
        words[16..].copy_from_slice(&(personality as u64).to_le_bytes());
        write_text(stub + ip_at + 8, &words)?;
        Ok(stub)
    }

    /// The stub of `site`, if it has one.
    pub fn of(&self, site: usize) -> Option<usize> {
        self.by_site.get(&site).copied()
    }

    fn make(&mut self, site: usize) -> io::Result<usize> {
        let window = window_of(site);
        let (page, used) = match self.open.get(&window) {
            Some(&(p, u)) if u + STUB <= PAGE => (p, u),
            _ => {
                let p = map_near(window)?;
                register_stub_page(p);
                self.pages.push(p..p + PAGE);
                (p, 0)
            }
        };
        let stub = page + used;
        self.open.insert(window, (page, used + STUB));
        let mut code = bytes_of(&raw const lt_stub_start, &raw const lt_stub_end).to_vec();
        code.resize(code.len().next_multiple_of(8), 0xcc);
        assert!(code.len() <= STUB);
        let call = stub_offset(&raw const lt_stub_call_body);
        let ip_at = stub_offset(&raw const lt_stub_ip);
        debug_assert_eq!(ip_at - 6, STUB_IP_FROM_RETURN);
        debug_assert_eq!(
            stub_offset(&raw const lt_stub_body_return) - 6,
            STUB_BODY_RETURN_FROM_RETURN
        );
        let rel = livetrace_poke::rel32(stub + call, site + 5)
            .ok_or_else(|| io::Error::other("site out of reach of its stub"))?;
        code[call + 1..call + 5].copy_from_slice(&rel.to_le_bytes());
        code[ip_at..ip_at + 8].copy_from_slice(&(site as u64).to_le_bytes());
        write_text(stub, &code)?;
        self.by_site.insert(site, stub);
        Ok(stub)
    }
}

/// libgcc's `struct dwarf_eh_bases`.
#[repr(C)]
struct EhBases {
    tbase: *mut libc::c_void,
    dbase: *mut libc::c_void,
    func: *mut libc::c_void,
}

unsafe extern "C" {
    // libgcc's (the unwinder every Rust and C++ program here uses).
    fn __register_frame(begin: *const u8);
    fn _Unwind_Find_FDE(pc: *const libc::c_void, bases: *mut EhBases) -> *const libc::c_void;
}

/// Unwind information (`.eh_frame`: a CIE and an FDE per stub) for the
/// stubs of a new page, registered with the unwinder and never freed.
///
/// In a stub, until its `add rsp, 8` the caller's frame is as at a
/// function's entry (CFA = rsp + 8); from there on, CFA = rsp. The return
/// address is always in the return slot (CFA - 8). After the body's call,
/// the slot holds the stub's own return address until a personality
/// routine or a backtrace puts the real one back (the fast path's owner
/// knows it): an unwinder that finds the stub's address there stops
/// (return address 0) rather than walk the same frame forever. Each stub
/// has its own CIE, naming the personality routine through the stub's
/// last word (DW_EH_PE_indirect), so the fast path serving it decides.
fn stub_eh_frame(page: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |v: &mut Vec<u8>, start: usize| {
        while !(v.len() - start).is_multiple_of(8) {
            v.push(0); // DW_CFA_nop
        }
    };
    let personality_at = stub_offset(&raw const lt_stub_personality);
    let add_at = stub_offset(&raw const lt_stub_add);
    let after_add = stub_offset(&raw const lt_stub_call_body);
    let body_return = stub_offset(&raw const lt_stub_body_return);
    assert!(after_add - add_at == 4 && after_add < 64);
    for stub in (page..page + PAGE).step_by(STUB) {
        // CIE.
        let cie = out.len();
        out.extend([0u8; 4]); // length, below
        out.extend(0u32.to_le_bytes()); // CIE id
        out.push(1); // version
        out.extend(b"zPR\0");
        out.push(1); // code alignment
        out.push(0x78); // data alignment: -8
        out.push(16); // return address column
        out.push(1 + 8 + 1); // augmentation data length
        out.push(0x80); // personality: DW_EH_PE_indirect | absptr
        out.extend(((stub + personality_at) as u64).to_le_bytes());
        out.push(0x00); // FDE addresses: absptr
        out.extend([0x0c, 0x07, 0x08]); // DW_CFA_def_cfa rsp, 8
                                        // DW_CFA_val_expression rip: x = [CFA - 8]; x != stub's body
                                        // return ? x : 0.
        out.extend([0x16, 16, 16]);
        out.extend([0x10, 0x08, 0x1c, 0x06, 0x12, 0x0e]);
        out.extend(((stub + body_return) as u64).to_le_bytes());
        out.extend([0x2e, 0x1e]);
        pad(&mut out, cie + 4);
        let len = (out.len() - cie - 4) as u32;
        out[cie..cie + 4].copy_from_slice(&len.to_le_bytes());
        // FDE.
        let fde = out.len();
        out.extend([0u8; 4]);
        out.extend(((fde + 4 - cie) as u32).to_le_bytes()); // CIE pointer
        out.extend((stub as u64).to_le_bytes());
        out.extend((STUB as u64).to_le_bytes());
        out.push(0); // augmentation data length
        out.push(0x40 | after_add as u8); // DW_CFA_advance_loc
        out.extend([0x0e, 0x00]); // DW_CFA_def_cfa_offset 0
        pad(&mut out, fde + 4);
        let len = (out.len() - fde - 4) as u32;
        out[fde..fde + 4].copy_from_slice(&len.to_le_bytes());
    }
    out.extend(0u32.to_le_bytes());
    out
}

fn register_stub_page(page: usize) {
    let eh = Box::leak(stub_eh_frame(page).into_boxed_slice());
    // SAFETY: a complete .eh_frame section (terminated by a zero length)
    // that stays alive for the process's life, describing code that does.
    unsafe { __register_frame(eh.as_ptr()) };
    // libgcc sorts a registered object's FDEs, with malloc, at the first
    // lookup that reaches it: do that lookup here, so that none made later
    // by a signal handler (a profiler's backtrace) allocates.
    let mut bases = EhBases {
        tbase: std::ptr::null_mut(),
        dbase: std::ptr::null_mut(),
        func: std::ptr::null_mut(),
    };
    // SAFETY: a lookup only; `bases` is written.
    let fde = unsafe { _Unwind_Find_FDE((page + 1) as *const libc::c_void, &mut bases) };
    debug_assert!(
        !fde.is_null(),
        "the stub page's unwind information is found"
    );
}
