//! `dlopen`, `dlclose` and `fork`, interposed.
//!
//! These are exported from `liblivetrace.so`, which comes right after the
//! executable in the loader's search order under `LD_PRELOAD`, so the
//! program's calls (and its libraries') land here. The real functions are
//! found with `dlsym(RTLD_NEXT, …)`.
//!
//! # Serialisation
//!
//! One lock ([`serialize`]) is held across every interposed real `dlopen`
//! or `dlclose` and the table update after it, and by the C API around its
//! rescans, so one `dlopen`'s objects are scanned and converted (with every
//! other thread stopped: [`livetrace::raw::sites::ConvertPolicy::StopTheWorld`])
//! before another `dlopen` can hand them out again. A
//! `dlopen` made while the lock is held by the same thread (a library's
//! constructor loading another library, an `atfork` handler) is passed
//! through and its handle remembered; the outermost call handles it.
//!
//! # The caller's identity
//!
//! glibc's `dlopen` looks at its own return address to find the calling
//! object, whose RUNPATH and `$ORIGIN` it searches and whose namespace it
//! loads into. A plain call from here would make this library the caller
//! and break, for instance, a program that `dlopen`s `libplugin.so` found
//! through its `RUNPATH=$ORIGIN`. So the entry stubs pass the program's
//! return address along, and [`call_via`] enters the real `dlopen` with a
//! return address inside the caller's own text: a `c3` (`ret`) byte found
//! there, which returns to us. glibc then sees the right caller; the `ret`
//! only pops our continuation. (With a CET shadow stack that `ret` would
//! fault, so then the plain call is made.)
//!
//! Calls from livetrace itself (the table's pins: `dlopen(RTLD_NOLOAD)`,
//! `dlclose`) resolve to these same symbols, since they are defined in this
//! library; a return address inside this library sends them straight to the
//! real functions, under no lock (they run with the tracing core's lock
//! held, which the interposers take after theirs).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::{Mutex, MutexGuard, OnceLock};

use livetrace::raw::sites::{ConvertPolicy, ObjectId};

type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type ForkFn = unsafe extern "C" fn() -> libc::pid_t;

static REAL_DLOPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_DLCLOSE: AtomicUsize = AtomicUsize::new(0);
static REAL_FORK: AtomicUsize = AtomicUsize::new(0);

/// The next definition of `name` after this library: libc's.
fn real(name: &CStr, slot: &AtomicUsize) -> usize {
    let p = slot.load(Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: RTLD_NEXT lookup of a NUL-terminated name; no preconditions.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if p == 0 {
        // Nothing sensible is left to do: the program asked for a function
        // that has no implementation behind us.
        let msg = b"livetrace: cannot find the real dlopen/dlclose/fork (dlsym RTLD_NEXT)\n";
        // SAFETY: writing a static buffer to stderr, then aborting.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    slot.store(p, Relaxed);
    p
}

fn real_dlopen() -> DlopenFn {
    let p = real(c"dlopen", &REAL_DLOPEN);
    // SAFETY: libc's dlopen has exactly this signature.
    unsafe { std::mem::transmute::<usize, DlopenFn>(p) }
}

fn real_dlclose() -> DlcloseFn {
    let p = real(c"dlclose", &REAL_DLCLOSE);
    // SAFETY: libc's dlclose has exactly this signature.
    unsafe { std::mem::transmute::<usize, DlcloseFn>(p) }
}

fn real_fork() -> ForkFn {
    let p = real(c"fork", &REAL_FORK);
    // SAFETY: libc's fork has exactly this signature.
    unsafe { std::mem::transmute::<usize, ForkFn>(p) }
}

/// Resolves the real functions early (from the constructor), so the first
/// interposed call does not pay for it.
pub(crate) fn resolve() {
    real_dlopen();
    real_dlclose();
    real_fork();
    own_text();
}

// ---------------------------------------------------------------------------
// Serialisation.

static DL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds `DL` (so a nested call must not take it).
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// Holds the interposers' lock, unless this thread already does.
pub(crate) struct Serial {
    guard: Option<MutexGuard<'static, ()>>,
}

/// Takes the lock that orders `dlopen`/`dlclose` with table updates (see
/// the module docs). Reentrant on one thread.
pub(crate) fn serialize() -> Serial {
    if HELD.get() {
        return Serial { guard: None };
    }
    let guard = DL.lock().unwrap_or_else(|e| e.into_inner());
    HELD.set(true);
    Serial { guard: Some(guard) }
}

impl Drop for Serial {
    fn drop(&mut self) {
        if self.guard.take().is_some() {
            HELD.set(false);
        }
    }
}

/// Whether this thread is inside a livetrace callback (a C callback of
/// `lt_ops_register`, or a tracer's). Such a thread must not wait for the
/// interposers' lock: its holder may be in a quiescence wait, which waits
/// for this very thread to leave its callback. (The core answers
/// `InCallback` without taking its lock.)
pub(crate) fn in_callback() -> bool {
    livetrace_ftrace::in_callback()
}

// ---------------------------------------------------------------------------
// Address ranges of loaded objects.

/// The executable `PT_LOAD` segments of the object containing `addr`.
fn exec_segments_of(addr: usize) -> Vec<(usize, usize)> {
    struct Find {
        addr: usize,
        segs: Vec<(usize, usize)>,
    }
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: dl_iterate_phdr passes a valid info, and `data` is the
        // `Find` passed below, alive for the whole iteration.
        let (info, find) = unsafe { (&*info, &mut *(data as *mut Find)) };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's program headers of this object.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let segs: Vec<(usize, usize)> = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
            .map(|p| {
                let lo = (info.dlpi_addr as usize).wrapping_add(p.p_vaddr as usize);
                (lo, lo.wrapping_add(p.p_memsz as usize))
            })
            .collect();
        if segs
            .iter()
            .any(|&(lo, hi)| lo <= find.addr && find.addr < hi)
        {
            find.segs = segs;
            return 1;
        }
        0
    }
    let mut find = Find {
        addr,
        segs: Vec::new(),
    };
    // SAFETY: the callback only reads what the loader passes it and writes
    // `find`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut find as *mut Find as *mut c_void) };
    find.segs
}

/// This library's executable text.
fn own_text() -> &'static [(usize, usize)] {
    static OWN: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    OWN.get_or_init(|| exec_segments_of(own_text as *const () as usize))
}

pub(crate) fn is_own(addr: usize) -> bool {
    own_text().iter().any(|&(lo, hi)| lo <= addr && addr < hi)
}

/// A `c3` byte in the executable text of the object that contains `ret`,
/// looked for from `ret` on (a function's `ret` is usually close).
fn ret_gadget(ret: usize) -> Option<usize> {
    if shadow_stack() {
        return None;
    }
    let segs = exec_segments_of(ret);
    let &(lo, hi) = segs.iter().find(|&&(lo, hi)| lo <= ret && ret < hi)?;
    // SAFETY: [lo, hi) is an executable PT_LOAD segment of a loaded object
    // (the one that called us, so it stays loaded during this call), which
    // the loader maps readable.
    let text = unsafe { std::slice::from_raw_parts(lo as *const u8, hi - lo) };
    let from = ret - lo;
    text[from..]
        .iter()
        .position(|&b| b == 0xc3)
        .map(|i| ret + i)
        .or_else(|| text.iter().position(|&b| b == 0xc3).map(|i| lo + i))
}

/// Whether this thread runs with a CET user shadow stack, on which a return
/// through a `ret` gadget would fault.
fn shadow_stack() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        const ARCH_SHSTK_STATUS: libc::c_long = 0x5005;
        const ARCH_SHSTK_SHSTK: u64 = 1;
        let mut features: u64 = 0;
        // SAFETY: ARCH_SHSTK_STATUS writes one u64 through the pointer;
        // kernels without it fail with EINVAL and write nothing.
        let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SHSTK_STATUS, &mut features) };
        rc == 0 && features & ARCH_SHSTK_SHSTK != 0
    })
}

/// Calls `f(a0, a1)` with `gadget` as its return address; `gadget` must be
/// the address of a `c3` byte in executable memory, which returns here.
///
/// The frame: `rbp` keeps our stack pointer (callee-saved, so `f`
/// preserves it); below an aligned slot go our continuation and then the
/// gadget, so `f` starts with `rsp ≡ 8 (mod 16)` as after a `call`, its
/// `ret` goes to the gadget, and the gadget's `ret` to the continuation.
#[unsafe(naked)]
unsafe extern "C" fn call_via(a0: usize, a1: usize, f: usize, gadget: usize) -> usize {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "and rsp, -16",
        "sub rsp, 8",
        "lea rax, [rip + 2f]",
        "push rax",
        "push rcx",
        "jmp rdx",
        "2:",
        "mov rsp, rbp",
        "pop rbp",
        "ret",
    )
}

/// The real `dlopen`, entered as if called from the object containing
/// `ret`.
///
/// # Safety
/// `file` and `flags` as for `dlopen`; `ret` is the program's return
/// address.
unsafe fn dlopen_as_caller(file: *const c_char, flags: c_int, ret: usize) -> *mut c_void {
    let real = real_dlopen();
    match ret_gadget(ret) {
        // SAFETY: `gadget` is a `c3` byte in mapped executable text, and the
        // arguments are the program's, forwarded.
        Some(gadget) => unsafe {
            call_via(file as usize, flags as usize, real as usize, gadget) as *mut c_void
        },
        // SAFETY: as above, a plain call: the loader sees us as the caller.
        None => unsafe { real(file, flags) },
    }
}

// ---------------------------------------------------------------------------
// The interposers.

/// `dlopen`: an entry stub that passes the caller's return address on.
///
/// # Safety
/// As for libc's `dlopen`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(file: *const c_char, flags: c_int) -> *mut c_void {
    core::arch::naked_asm!("mov rdx, [rsp]", "jmp {imp}", imp = sym dlopen_impl)
}

/// `dlclose`: an entry stub that passes the caller's return address on.
///
/// # Safety
/// As for libc's `dlclose`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    core::arch::naked_asm!("mov rsi, [rsp]", "jmp {imp}", imp = sym dlclose_impl)
}

unsafe extern "C" fn dlopen_impl(file: *const c_char, flags: c_int, ret: usize) -> *mut c_void {
    if is_own(ret) {
        // SAFETY: livetrace's own call (a pin), forwarded as is.
        return unsafe { real_dlopen()(file, flags) };
    }
    if !crate::active() || in_callback() {
        // SAFETY: the program's arguments, forwarded.
        return unsafe { dlopen_as_caller(file, flags, ret) };
    }
    if HELD.get() {
        // Nested in an interposed call (a constructor loading a library
        // while the outermost dlopen runs it, an atfork handler): the
        // outermost dlopen converts what this one loads; otherwise the next
        // scan finds it.
        // SAFETY: the program's arguments, forwarded.
        return unsafe { dlopen_as_caller(file, flags, ret) };
    }
    let serial = serialize();
    let before = catch_unwind(known_objects).unwrap_or_default();
    // SAFETY: the program's arguments, forwarded.
    let h = unsafe { dlopen_as_caller(file, flags, ret) };
    if !h.is_null() {
        if catch_unwind(AssertUnwindSafe(|| after_dlopen(h, &before))).is_err() {
            eprintln!("livetrace: internal error after dlopen; its sites may be missing");
        }
        // Our own dl* calls may have left an error the program would read.
        // SAFETY: dlerror has no preconditions.
        unsafe { libc::dlerror() };
    }
    drop(serial);
    h
}

unsafe extern "C" fn dlclose_impl(handle: *mut c_void, ret: usize) -> c_int {
    let real = real_dlclose();
    if is_own(ret) || !crate::active() || HELD.get() || in_callback() {
        // SAFETY: forwarded as is.
        return unsafe { real(handle) };
    }
    let serial = serialize();
    // SAFETY: the program's handle, forwarded.
    let rc = unsafe { real(handle) };
    if rc == 0 {
        let r = catch_unwind(livetrace_ftrace::on_dlclose);
        match r {
            Ok(Ok(scan)) if crate::verbose() && scan.removed_objects > 0 => {
                eprintln!(
                    "livetrace: dlclose: dropped {} object(s)",
                    scan.removed_objects
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("livetrace: after dlclose: {e}"),
            Err(_) => eprintln!("livetrace: internal error after dlclose"),
        }
        // SAFETY: dlerror has no preconditions.
        unsafe { libc::dlerror() };
    }
    drop(serial);
    rc
}

/// `fork`, with the interposers' lock and the tracing core's lock held: no
/// batch or conversion is half done in the child, and neither those locks
/// nor any lock a C API call takes is held there by a thread that does not
/// exist (see the crate docs for what is not covered).
#[unsafe(no_mangle)]
pub extern "C" fn fork() -> libc::pid_t {
    let real = real_fork();
    if !crate::active() || HELD.get() || in_callback() {
        // SAFETY: plain fork.
        return unsafe { real() };
    }
    let serial = serialize();
    let mut out: Option<(libc::pid_t, c_int)> = None;
    let _ = livetrace_ftrace::exclusive(|| {
        // SAFETY: plain fork; the closure holds the core's lock across it.
        let pid = unsafe { real() };
        out = Some((pid, errno()));
    });
    let (pid, err) = out.unwrap_or_else(|| {
        // The core refused (called from inside a callback): fork anyway.
        // SAFETY: plain fork.
        let pid = unsafe { real() };
        (pid, errno())
    });
    drop(serial);
    set_errno(err);
    pid
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = v };
}

// ---------------------------------------------------------------------------
// Table updates.

/// The objects the table knows, after bringing it up to date: what was
/// loaded before an interposed `dlopen`.
fn known_objects() -> HashSet<(String, usize)> {
    let _ = livetrace_ftrace::discover();
    livetrace_ftrace::inspect(|t| {
        t.objects()
            .iter()
            .map(|o| (o.dl_name().to_owned(), o.base()))
            .collect()
    })
    .unwrap_or_default()
}

/// After a successful `dlopen` that returned `h` (and, nested in it, more
/// handles): scan and convert what it loaded, before the program sees `h`.
/// Everything new is converted with the other threads stopped, so the
/// nested handles need no special treatment.
fn after_dlopen(h: *mut c_void, before: &HashSet<(String, usize)>) {
    // Converts with every other thread stopped: the library's constructors
    // may have started threads that run its code.
    // SAFETY: `h` was just returned by a successful `dlopen` and the program
    // has not seen it yet, so it cannot have been closed.
    match unsafe { livetrace_ftrace::on_dlopen(h) } {
        Ok((scan, conv)) if crate::verbose() => eprintln!(
            "livetrace: dlopen: {} new object(s), {} site(s), {}",
            scan.added_objects.len(),
            scan.added_sites,
            conv
        ),
        Ok(_) => {}
        Err(e) => eprintln!("livetrace: after dlopen: {e}"),
    }
    if let Err(e) = convert_leftovers(before) {
        eprintln!("livetrace: after dlopen: {e}");
    }
}

/// Objects this `dlopen` loaded whose sleds `on_dlopen` did not convert: a
/// concurrent scan (the control socket's) recorded them first, so the
/// table did not count them as just loaded, or a constructor loaded them
/// with a nested `dlopen`. Converted with the other threads stopped, which
/// is safe whoever runs them.
fn convert_leftovers(before: &HashSet<(String, usize)>) -> Result<(), livetrace::Error> {
    let stop: Vec<ObjectId> = livetrace_ftrace::inspect(|t| {
        let unconverted: HashSet<ObjectId> = t
            .records()
            .iter()
            .filter(|r| !r.is_live())
            .map(|r| r.object())
            .collect();
        t.objects()
            .iter()
            .filter(|o| {
                !o.is_main()
                    && unconverted.contains(&o.id())
                    && !before.contains(&(o.dl_name().to_owned(), o.base()))
            })
            .map(|o| o.id())
            .collect()
    })?;
    if !stop.is_empty() {
        match livetrace_ftrace::convert(Some(&stop), ConvertPolicy::StopTheWorld) {
            Ok(c) if crate::verbose() => {
                eprintln!("livetrace: dlopen: nested or missed objects: {c}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("livetrace: after dlopen: {e}"),
        }
    }
    Ok(())
}
