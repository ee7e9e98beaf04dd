//! Thread-local storage that works when the library is loaded late, and
//! lets it be unloaded again.
//!
//! # Static TLS
//!
//! The trampolines reach livetrace's per-thread state at a fixed offset
//! from the thread pointer, which only holds for TLS in the *static* block.
//! A library loaded at start-up is placed there; one loaded with `dlopen`
//! gets dynamic TLS (allocated per thread on first use, anywhere) unless
//! it has an initial-exec TLS relocation, which makes the loader place its
//! whole TLS block in the static block's reserve (`DF_STATIC_TLS`). Rust
//! cannot choose the TLS model, so [`static_tls_offset`] is written in
//! assembly: one `@gottpoff` load of a TLS word defined here gives the
//! library that flag (`readelf -d liblivetrace.so` shows `STATIC_TLS`).
//! The reserve is small (glibc: about 1.5 KiB shared by every library
//! loaded late, `glibc.rtld.optional_static_tls` adds to it); when the
//! block does not fit, `dlopen` fails with "cannot allocate memory in
//! static TLS block" and nothing is loaded.
//!
//! # Thread-local destructors
//!
//! Rust registers a thread's TLS destructors with glibc's
//! `__cxa_thread_atexit_impl`, naming this library; glibc then refuses to
//! unload it (`dlclose` keeps it mapped) until every such thread has
//! exited. A traced thread registers one (its ring buffers' exit hook), so
//! a library loaded late into a long-running program could never go. So
//! this library defines its own `__cxa_thread_atexit_impl`, hidden (the
//! program and its other libraries never see it; only this library's own
//! references bind to it):
//!
//! - loaded at start-up, it forwards to glibc's (nothing changes);
//! - loaded late, it keeps each thread's destructors in a list (one
//!   pointer of static TLS) run by a `pthread_key_create` destructor at
//!   thread exit, which does
//!   not pin the library. Before unloading, [`forget_destructors`] deletes
//!   the key: threads still running never call into the unmapped library
//!   (their lists are abandoned; what they owned was freed by the teardown
//!   or leaks). Destructors do not run at `exit` (nor do they for
//!   pthread keys), which only concerns state that is about to vanish.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering::*};

core::arch::global_asm!(
    ".pushsection .tbss.livetrace_static_tls,\"awT\",@nobits",
    ".p2align 3",
    "livetrace_static_tls_anchor:",
    ".zero 8",
    ".popsection",
    ".pushsection .text.livetrace_static_tls_offset,\"ax\",@progbits",
    ".globl livetrace_static_tls_offset",
    ".hidden livetrace_static_tls_offset",
    ".type livetrace_static_tls_offset,@function",
    "livetrace_static_tls_offset:",
    // The initial-exec access: the GOT slot holds the anchor's offset
    // from the thread pointer, the same in every thread.
    "mov rax, qword ptr [rip + livetrace_static_tls_anchor@GOTTPOFF]",
    "ret",
    ".size livetrace_static_tls_offset, . - livetrace_static_tls_offset",
    ".popsection",
);

unsafe extern "C" {
    fn livetrace_static_tls_offset() -> isize;
}

/// The thread-pointer offset of a word in this library's TLS block, read
/// through an initial-exec relocation (its presence is what puts the block
/// in static TLS).
pub(crate) fn static_tls_offset() -> isize {
    // SAFETY: the assembly above only loads a GOT slot into rax.
    unsafe { livetrace_static_tls_offset() }
}

// ---------------------------------------------------------------------------
// Thread-local destructors.

/// Not decided yet.
const UNDECIDED: u8 = 0;
/// Loaded at start-up: glibc's implementation.
const FORWARD: u8 = 1;
/// Loaded late: our list and key.
const OWN: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
/// The pthread key + 1 (0: none yet; `u32::MAX`: deleted).
static KEY: AtomicU32 = AtomicU32::new(0);
const KEY_DELETED: u32 = u32::MAX;
/// glibc's `__cxa_thread_atexit_impl`.
static REAL: AtomicUsize = AtomicUsize::new(0);

type Dtor = unsafe extern "C" fn(*mut c_void);
type CxaThreadAtexit = unsafe extern "C" fn(Dtor, *mut c_void, *mut c_void) -> i32;
type List = Vec<(usize, usize)>;

thread_local! {
    // This thread's destructors, on the heap: one pointer of static TLS
    // (the reserve a late library gets is small). Const-initialised and
    // without drop glue, so it registers nothing itself.
    static LIST: Cell<*mut List> = const { Cell::new(std::ptr::null_mut()) };
}

/// Decides, once, how thread-local destructors are registered: `late` is
/// whether the library was loaded after start-up.
pub(crate) fn set_loaded_late(late: bool) {
    let _ = MODE.compare_exchange(UNDECIDED, if late { OWN } else { FORWARD }, SeqCst, SeqCst);
}

unsafe extern "C" fn run_list(_value: *mut c_void) {
    // Destructors may register more; run until none is left.
    loop {
        let list = LIST.with(|l| l.replace(std::ptr::null_mut()));
        if list.is_null() {
            break;
        }
        // SAFETY: made by Box::into_raw in `thread_atexit` on this thread,
        // and taken out of the slot above.
        let list = unsafe { Box::from_raw(list) };
        for &(f, obj) in list.iter().rev() {
            // SAFETY: registered as a destructor with its object by Rust's
            // thread-local machinery.
            unsafe { std::mem::transmute::<usize, Dtor>(f)(obj as *mut c_void) };
        }
    }
}

fn key() -> Option<libc::pthread_key_t> {
    let k = KEY.load(SeqCst);
    if k == KEY_DELETED {
        return None;
    }
    if k != 0 {
        return Some(k - 1);
    }
    let mut new: libc::pthread_key_t = 0;
    // SAFETY: creates a key with a destructor that lives as long as the key
    // (deleted before this library is unloaded).
    if unsafe { libc::pthread_key_create(&mut new, Some(run_list)) } != 0 {
        return None;
    }
    match KEY.compare_exchange(0, new + 1, SeqCst, SeqCst) {
        Ok(_) => Some(new),
        Err(other) => {
            // SAFETY: our own key, never used.
            unsafe { libc::pthread_key_delete(new) };
            (other != KEY_DELETED).then(|| other - 1)
        }
    }
}

fn real() -> Option<CxaThreadAtexit> {
    let mut p = REAL.load(Relaxed);
    if p == 0 {
        // SAFETY: RTLD_NEXT lookup of a NUL-terminated name.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"__cxa_thread_atexit_impl".as_ptr()) } as usize;
        REAL.store(p, Relaxed);
    }
    // SAFETY: glibc's function has this signature.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, CxaThreadAtexit>(p) })
}

/// This library's `__cxa_thread_atexit_impl`: see the module docs.
///
/// # Safety
/// As glibc's: `dtor(obj)` must be valid to call at this thread's exit.
unsafe extern "C" fn thread_atexit(dtor: Dtor, obj: *mut c_void, dso: *mut c_void) -> i32 {
    if MODE.load(SeqCst) == UNDECIDED {
        set_loaded_late(crate::ctor::loaded_late());
    }
    if MODE.load(SeqCst) == FORWARD {
        return match real() {
            // SAFETY: forwarded as is.
            Some(f) => unsafe { f(dtor, obj, dso) },
            None => -1,
        };
    }
    let Some(key) = key() else {
        // Deleted (being unloaded) or unavailable: the destructor will not
        // run, which leaks what it owned rather than calling into a library
        // that may be gone.
        return 0;
    };
    let mut list = LIST.with(|l| l.get());
    if list.is_null() {
        list = Box::into_raw(Box::new(List::new()));
        LIST.with(|l| l.set(list));
        // SAFETY: a non-null value makes glibc run the key's destructor at
        // this thread's exit.
        unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<c_void>()) };
    }
    // SAFETY: this thread's own list, made above or by an earlier call.
    unsafe { (*list).push((dtor as usize, obj as usize)) };
    0
}

core::arch::global_asm!(
    ".pushsection .text.livetrace_cxa_thread_atexit,\"ax\",@progbits",
    ".globl __cxa_thread_atexit_impl",
    ".hidden __cxa_thread_atexit_impl",
    ".type __cxa_thread_atexit_impl,@function",
    "__cxa_thread_atexit_impl:",
    "jmp {imp}",
    ".size __cxa_thread_atexit_impl, . - __cxa_thread_atexit_impl",
    ".popsection",
    imp = sym thread_atexit,
);

/// Before unloading: no thread will call into this library at its exit
/// any more.
pub(crate) fn forget_destructors() {
    let k = KEY.swap(KEY_DELETED, SeqCst);
    if k != 0 && k != KEY_DELETED {
        // SAFETY: our key; deleting it stops its destructor from being
        // called for threads that exit later.
        unsafe { libc::pthread_key_delete(k - 1) };
    }
}
