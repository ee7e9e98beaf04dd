//! The interposers of the calls that install a mask only while they wait
//! (`ppoll`, `pselect`, `epoll_pwait`, `epoll_pwait2`) or that resume a
//! context with its own (`swapcontext`, `setcontext`): forwarded to the C
//! library's, resolved through `dlsym` at load time because they may be
//! called from a signal handler.

use super::*;

/// Resolves `name` in the objects after ours (the C library).
fn next(name: &std::ffi::CStr, slot: &AtomicUsize) -> usize {
    let p = slot.load(SeqCst);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if p == 0 {
        let msg = b"livetrace: cannot find the C library's signal functions\n";
        // SAFETY: writes a static message, then aborts: there is no
        // implementation to forward the program's call to.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    slot.store(p, SeqCst);
    p
}

static REAL_PPOLL: AtomicUsize = AtomicUsize::new(0);
static REAL_PSELECT: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_PWAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_PWAIT2: AtomicUsize = AtomicUsize::new(0);
static REAL_SWAPCONTEXT: AtomicUsize = AtomicUsize::new(0);
static REAL_SETCONTEXT: AtomicUsize = AtomicUsize::new(0);

/// Resolves the functions forwarded through `dlsym` ahead of time, from a
/// constructor: `dlsym` is not async-signal-safe, and `ppoll` and friends
/// may be called from a signal handler.
extern "C" fn resolve_at_load() {
    next(c"ppoll", &REAL_PPOLL);
    next(c"pselect", &REAL_PSELECT);
    next(c"epoll_pwait", &REAL_EPOLL_PWAIT);
    next(c"epoll_pwait2", &REAL_EPOLL_PWAIT2);
    next(c"swapcontext", &REAL_SWAPCONTEXT);
    next(c"setcontext", &REAL_SETCONTEXT);
}

#[used]
#[unsafe(link_section = ".init_array")]
pub(super) static RESOLVE_AT_LOAD: extern "C" fn() = resolve_at_load;

/// A cleaned copy of a caller's optional temporary mask.
fn cleaned(
    set: *const libc::sigset_t,
    local: &mut MaybeUninit<libc::sigset_t>,
) -> *const libc::sigset_t {
    if set.is_null() {
        return set;
    }
    // SAFETY: copies the caller's valid set into `local` and cleans it.
    unsafe {
        ptr::copy_nonoverlapping(set, local.as_mut_ptr(), 1);
        strip(&mut *local.as_mut_ptr());
    }
    local.as_ptr()
}

/// `ppoll`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `ppoll(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const libc::timespec,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's ppoll has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"ppoll", &REAL_PPOLL)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(fds, n, timeout, set) }
}

/// `pselect`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `pselect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's pselect has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"pselect", &REAL_PSELECT)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(n, r, w, e, timeout, set) }
}

/// `epoll_pwait`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `epoll_pwait(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        c_int,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's epoll_pwait has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"epoll_pwait", &REAL_EPOLL_PWAIT)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(epfd, events, max, timeout, set) }
}

/// `epoll_pwait2`, with the protected signals deliverable while it waits.
///
/// # Safety
/// As `epoll_pwait2(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    set: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    let mut local = MaybeUninit::zeroed();
    let set = cleaned(set, &mut local);
    // SAFETY: the C library's epoll_pwait2 has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"epoll_pwait2", &REAL_EPOLL_PWAIT2)) };
    // SAFETY: the caller's arguments, with the cleaned mask.
    unsafe { f(epfd, events, max, timeout, set) }
}

/// Cleans the mask a context will install when resumed. The context is
/// the caller's, writable memory (as `makecontext`/`getcontext` made it).
fn clean_context(ucp: *const libc::ucontext_t) {
    if ucp.is_null() {
        return;
    }
    // SAFETY: a caller's valid ucontext; its sigmask is plain memory.
    unsafe { strip(&mut (*(ucp as *mut libc::ucontext_t)).uc_sigmask) };
}

/// `swapcontext`, never resuming a context with the protected signals
/// blocked.
///
/// # Safety
/// As `swapcontext(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn swapcontext(
    oucp: *mut libc::ucontext_t,
    ucp: *const libc::ucontext_t,
) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::ucontext_t, *const libc::ucontext_t) -> c_int;
    clean_context(ucp);
    // SAFETY: the C library's swapcontext has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"swapcontext", &REAL_SWAPCONTEXT)) };
    // SAFETY: the caller's arguments.
    unsafe { f(oucp, ucp) }
}

/// `setcontext`, never resuming a context with the protected signals
/// blocked.
///
/// # Safety
/// As `setcontext(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setcontext(ucp: *const libc::ucontext_t) -> c_int {
    type F = unsafe extern "C" fn(*const libc::ucontext_t) -> c_int;
    clean_context(ucp);
    // SAFETY: the C library's setcontext has this signature.
    let f: F = unsafe { std::mem::transmute(next(c"setcontext", &REAL_SETCONTEXT)) };
    // SAFETY: the caller's argument.
    unsafe { f(ucp) }
}
