//! The processor's whole extended state (x87, SSE, AVX, AVX-512), saved and
//! restored around code that runs where a caller may keep values in any
//! register.
//!
//! A compiler-emitted site needs nothing of this: gcc turns its
//! interprocedural register allocation (`-fipa-ra`) off for functions with
//! a patchable entry, so callers keep nothing caller-saved across a call to
//! one. A function *relocated* to get a site was compiled knowing it had
//! none: a caller in the same object may keep a value in r10, r11 or any
//! vector register across a call to it, because gcc saw the callee does
//! not touch them. Whatever runs at such a function's entry or return must
//! then leave every register as it found it — the job glibc's lazy-binding
//! trampoline (`_dl_runtime_resolve_xsavec`) has, done the same way:
//! `xsavec` (or `xsave`, or `fxsave` on a CPU without XSAVE) into a
//! 64-aligned area on the stack.
//!
//! The components saved are x87, SSE, AVX and the three AVX-512 ones
//! (bits 0, 1, 2, 5, 6, 7), as enabled in XCR0: not MPX (gone from the
//! kernel), PKRU (a restore would undo a `pkey_set` the program made
//! meanwhile) or AMX (8 KiB of tiles no callback touches).

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Once;

/// The XSAVE components saved: x87, SSE, AVX, opmask, ZMM_Hi256,
/// Hi16_ZMM.
const WANTED: u64 = 0b1110_0111;

/// How the state is saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum XSaveMode {
    /// `fxsave64`/`fxrstor64`: x87 and SSE only (no XSAVE).
    Fx = 0,
    /// `xsave64`/`xrstor64`, standard format.
    XSave = 1,
    /// `xsavec64`/`xrstor64`, compacted, with the init optimization: parts
    /// in their initial state are not written.
    XSaveC = 2,
}

/// The save's instruction set, `XSaveMode as u8` (read by assembly).
pub static XSTATE_MODE: AtomicU8 = AtomicU8::new(0);
/// The requested-feature mask for `xsave`/`xrstor` (edx is 0).
pub static XSTATE_MASK: AtomicU32 = AtomicU32::new(0);
/// Bytes the save area needs (64-aligned, at least 576).
pub static XSTATE_SIZE: AtomicU32 = AtomicU32::new(576);

static INIT: Once = Once::new();

/// The process's save: mode, mask and size. Computed once; the statics
/// above hold it for assembly from the first call on.
pub fn xstate() -> (XSaveMode, u32, u32) {
    INIT.call_once(|| {
        let (mode, mask, size) = probe();
        XSTATE_MASK.store(mask, Relaxed);
        XSTATE_SIZE.store(size, Relaxed);
        XSTATE_MODE.store(mode as u8, Relaxed);
    });
    let mode = match XSTATE_MODE.load(Relaxed) {
        0 => XSaveMode::Fx,
        1 => XSaveMode::XSave,
        _ => XSaveMode::XSaveC,
    };
    (mode, XSTATE_MASK.load(Relaxed), XSTATE_SIZE.load(Relaxed))
}

fn probe() -> (XSaveMode, u32, u32) {
    use std::arch::x86_64::__cpuid_count;
    let leaf1 = __cpuid_count(1, 0);
    // OSXSAVE: the kernel enabled XSAVE (and XGETBV).
    if leaf1.ecx & (1 << 27) == 0 {
        return (XSaveMode::Fx, 0, 512 + 64);
    }
    let xcr0 = xgetbv0();
    let mask = xcr0 & WANTED;
    // The standard format's size for `mask`: the end of its last
    // component (sub-leaf i: eax = size, ebx = offset). Compacted is never
    // larger.
    let mut size = 512 + 64;
    for i in 2..8 {
        if mask & (1 << i) != 0 {
            // Leaf 0xD exists when OSXSAVE is set.
            let c = __cpuid_count(0xd, i);
            size = size.max(c.ebx + c.eax);
        }
    }
    let size = size.next_multiple_of(64);
    let sub1 = __cpuid_count(0xd, 1);
    let mode = if sub1.eax & (1 << 1) != 0 {
        XSaveMode::XSaveC
    } else {
        XSaveMode::XSave
    };
    (mode, mask as u32, size)
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ecx = 0 reads XCR0; OSXSAVE (checked by the
    // caller) makes it legal in user mode. It reads nothing else.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_save_covers_sse_and_what_the_cpu_enables() {
        let (mode, mask, size) = xstate();
        assert_eq!(size % 64, 0);
        assert!(size >= 576);
        if mode != XSaveMode::Fx {
            assert_eq!(mask & 3, 3, "x87 and SSE: {mask:#x}");
            if std::arch::is_x86_feature_detected!("avx") {
                assert_ne!(mask & 4, 0, "{mask:#x}");
                assert!(size >= 832, "{size}");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert_eq!(mask & 0xe0, 0xe0, "{mask:#x}");
                assert!(size >= 2688, "{size}");
            }
        }
    }
}
