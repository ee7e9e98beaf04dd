//! Which vector state the templates are copied for.

/// Which vector registers the trampolines save: the full width of the
/// argument and result registers (0-7) the CPU and the kernel enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VectorState {
    /// xmm0-7: SSE only.
    Xmm,
    /// ymm0-7: AVX (the kernel saves the AVX state: XCR0 bit 2).
    Ymm,
    /// zmm0-7: AVX-512 (XCR0 bits 5-7).
    Zmm,
}

impl VectorState {
    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// Bytes per register.
    pub fn width(self) -> usize {
        16 << self.index()
    }
}

/// The vector state every trampoline of this process saves: the widest the
/// CPU has and the kernel enables (CPUID and XCR0, as `std` detects them),
/// or narrower when `LIVETRACE_VECTOR_STATE` (`xmm`, `ymm`, `zmm`) asks
/// for it (to exercise each variant in tests; never wider than the
/// hardware's). Fixed at the first call.
pub fn vector_state() -> VectorState {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    static STATE: AtomicU8 = AtomicU8::new(u8::MAX);
    let v = STATE.load(Relaxed);
    if v != u8::MAX {
        return [VectorState::Xmm, VectorState::Ymm, VectorState::Zmm][v as usize];
    }
    // The full template saves the mask registers 64 bits wide (`kmovq`:
    // AVX512BW, which every AVX-512 CPU but Xeon Phi has).
    let hw = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        VectorState::Zmm
    } else if std::arch::is_x86_feature_detected!("avx") {
        VectorState::Ymm
    } else {
        VectorState::Xmm
    };
    let asked = match std::env::var("LIVETRACE_VECTOR_STATE").as_deref() {
        Ok("xmm") => VectorState::Xmm,
        Ok("ymm") => VectorState::Ymm,
        _ => VectorState::Zmm,
    };
    let chosen = hw.min(asked);
    // Racing first calls compute the same value.
    STATE.store(chosen as u8, Relaxed);
    chosen
}
