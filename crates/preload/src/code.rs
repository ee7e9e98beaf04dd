//! The executable memory livetrace maps (its trampolines and stubs), kept
//! track of so that a library loaded late leaves none behind when it is
//! unloaded.
//!
//! The tracing core maps its trampoline pools with `mmap` and keeps them
//! for the life of the process. This library defines its own `mmap`,
//! hidden (only this library's references bind to it; the program's never
//! see it), which maps through the system call and notes every anonymous
//! executable mapping it made. When livetrace has been torn down
//! ([`crate::attach`]: every site a NOP, no thread in a callback, the
//! injector has checked no thread executes any of it), the library's
//! destructor unmaps them as `dlclose` runs.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Mutex;

/// Anonymous executable mappings this library made: (start, length).
static CODE: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// Set by the teardown: the destructor may unmap them.
static RELEASE_AT_UNLOAD: AtomicBool = AtomicBool::new(false);

/// This library's `mmap`: see the module docs.
///
/// # Safety
/// As `mmap(2)`.
unsafe extern "C" fn mmap_impl(
    addr: *mut c_void,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the arguments are the caller's, passed to the system call
    // as glibc's mmap passes them (it returns MAP_FAILED and sets errno on
    // failure, as syscall() does).
    let p =
        unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) } as *mut c_void;
    if p != libc::MAP_FAILED && prot & libc::PROT_EXEC != 0 && flags & libc::MAP_ANONYMOUS != 0 {
        CODE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((p as usize, len));
    }
    p
}

core::arch::global_asm!(
    ".pushsection .text.livetrace_mmap,\"ax\",@progbits",
    ".globl mmap",
    ".hidden mmap",
    ".type mmap,@function",
    "mmap:",
    "jmp {imp}",
    ".size mmap, . - mmap",
    ".popsection",
    imp = sym mmap_impl,
);

/// The executable mappings livetrace made, as (start, end).
pub(crate) fn ranges() -> Vec<(usize, usize)> {
    CODE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|&(a, l)| (a, a + l))
        .collect()
}

/// Lets the destructor unmap them: called once nothing can execute them.
pub(crate) fn release_at_unload() {
    RELEASE_AT_UNLOAD.store(true, SeqCst);
}

extern "C" fn unmap_at_unload() {
    if !RELEASE_AT_UNLOAD.load(SeqCst) {
        return;
    }
    let code = std::mem::take(&mut *CODE.lock().unwrap_or_else(|e| e.into_inner()));
    for (a, l) in code {
        // SAFETY: mappings this library made and nothing uses any more (see
        // the module docs).
        unsafe { libc::munmap(a as *mut c_void, l) };
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static DESTRUCTOR: extern "C" fn() = unmap_at_unload;
