//! The register set the regs caller hands to callbacks.

/// Every register a traced function can observe at its entry, as the regs
/// caller saved it. A callback may change any of them: on return the regs
/// caller restores them all, so the function sees the change. `ip` is where
/// execution resumes (the function's body, just past the site); setting it
/// elsewhere redirects the call, with the caller's return address still on
/// the stack — which is how a function is live-patched.
///
/// `xmm` holds the low 128 bits of vector registers 0-7; the regs caller
/// keeps their upper halves (ymm, zmm) as they were at entry, whatever the
/// callback does, and puts back the low halves from here.
///
/// The layout is fixed by the regs trampoline's assembly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Regs {
    /// xmm0-xmm7 (floating-point and vector arguments).
    pub xmm: [[u8; 16]; 8],
    /// r15.
    pub r15: u64,
    /// r14.
    pub r14: u64,
    /// r13.
    pub r13: u64,
    /// r12.
    pub r12: u64,
    /// rbx.
    pub rbx: u64,
    /// r11.
    pub r11: u64,
    /// r10 (static chain).
    pub r10: u64,
    /// r9, sixth integer argument.
    pub r9: u64,
    /// r8, fifth integer argument.
    pub r8: u64,
    /// rax (vector register count of a variadic call).
    pub rax: u64,
    /// rcx, fourth integer argument.
    pub rcx: u64,
    /// rdx, third integer argument.
    pub rdx: u64,
    /// rsi, second integer argument.
    pub rsi: u64,
    /// rdi, first integer argument.
    pub rdi: u64,
    /// rbp.
    pub rbp: u64,
    /// rflags.
    pub flags: u64,
    /// Where execution resumes: the function's body (site + 5) unless a
    /// callback redirects it.
    pub ip: u64,
    /// The stack pointer at the function's entry: it points at the return
    /// address into the caller; stack arguments follow. Read-only.
    pub sp: u64,
}

impl Regs {
    /// The `n`th integer argument register (0-5: rdi, rsi, rdx, rcx, r8, r9).
    pub fn arg(&self, n: usize) -> Option<u64> {
        Some(match n {
            0 => self.rdi,
            1 => self.rsi,
            2 => self.rdx,
            3 => self.rcx,
            4 => self.r8,
            5 => self.r9,
            _ => return None,
        })
    }

    /// Sets the `n`th integer argument register; false if `n` > 5.
    pub fn set_arg(&mut self, n: usize, v: u64) -> bool {
        let r = match n {
            0 => &mut self.rdi,
            1 => &mut self.rsi,
            2 => &mut self.rdx,
            3 => &mut self.rcx,
            4 => &mut self.r8,
            5 => &mut self.r9,
            _ => return false,
        };
        *r = v;
        true
    }

    /// xmm`n` as a double (its low 8 bytes).
    pub fn xmm_f64(&self, n: usize) -> f64 {
        let b = self.xmm[n];
        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Sets the low 8 bytes of xmm`n` to a double.
    pub fn set_xmm_f64(&mut self, n: usize, v: f64) {
        self.xmm[n][..8].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_assembly() {
        // The regs trampoline addresses fields at these offsets.
        assert_eq!(std::mem::offset_of!(Regs, r15), 128);
        assert_eq!(std::mem::offset_of!(Regs, r11), 128 + 40);
        assert_eq!(std::mem::offset_of!(Regs, rdi), 128 + 104);
        assert_eq!(std::mem::offset_of!(Regs, rbp), 128 + 112);
        assert_eq!(std::mem::offset_of!(Regs, flags), 128 + 120);
        assert_eq!(std::mem::offset_of!(Regs, ip), 128 + 128);
        assert_eq!(std::mem::offset_of!(Regs, sp), 128 + 136);
        assert_eq!(std::mem::size_of::<Regs>(), 128 + 144);
    }

    #[test]
    fn args() {
        let mut r = Regs::default();
        assert!(r.set_arg(3, 7));
        assert_eq!(r.rcx, 7);
        assert_eq!(r.arg(3), Some(7));
        assert!(!r.set_arg(6, 1));
        r.set_xmm_f64(2, 1.5);
        assert_eq!(r.xmm_f64(2), 1.5);
    }
}
