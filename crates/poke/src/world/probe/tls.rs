//! A word and a byte of the calling thread's static TLS, addressed by
//! their offset from the thread pointer (the same in every thread): what a
//! probed thread reads and marks for the caller.

/// Reads the 8 bytes at `fs:[offset]` for the current thread.
pub(super) fn tls_word(offset: isize) -> u64 {
    let v: u64;
    // SAFETY: `offset` names a static-TLS variable of at least 8 bytes (the
    // contract of `Observe::tls_offset`), which exists in every thread at
    // the same offset from the thread pointer.
    unsafe {
        std::arch::asm!("mov {v}, qword ptr fs:[{o}]", o = in(reg) offset, v = out(reg) v, options(nostack, readonly, preserves_flags))
    };
    v
}

/// Turns the byte at `fs:[offset]` from `from` into `to` on this thread.
pub(super) fn mark_tls_byte(offset: isize, from: u8, to: u8) {
    // SAFETY: as in `tls_word`: a static-TLS variable of this thread.
    unsafe {
        std::arch::asm!(
            "cmp byte ptr fs:[{o}], {f}",
            "jne 2f",
            "mov byte ptr fs:[{o}], {t}",
            "2:",
            o = in(reg) offset,
            f = in(reg_byte) from,
            t = in(reg_byte) to,
            options(nostack)
        )
    };
}

/// The offset from the thread pointer of `addr`, an address inside a
/// static-TLS variable of the calling thread.
pub fn tls_offset_of(addr: usize) -> isize {
    let fs_base: usize;
    // SAFETY: on x86-64 Linux, fs:0 holds the thread pointer itself (the
    // TCB's self pointer, which the psABI requires).
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:0", out(reg) fs_base, options(nostack, readonly, preserves_flags))
    };
    addr.wrapping_sub(fs_base) as isize
}
