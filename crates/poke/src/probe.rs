//! Sampling what every thread is executing: the building block for waiting
//! until no thread can still be inside code that is about to be freed (the
//! user-space stand-in for the kernel's `synchronize_rcu_tasks`).
//!
//! [`sample_threads`] sends each other thread of the process a real-time
//! signal ([`probe_signal`], `SIGRTMAX - 2` by default) carrying a request
//! token; its handler recognises the token, records the interrupted RIP and
//! a word read at a fixed offset from the thread pointer (a static-TLS
//! variable the caller names), and returns. A thread blocked in a system
//! call answers too (the call is restarted or, for the few calls that never
//! restart, returns `EINTR`, as with any signal).
//!
//! A real-time signal, not SIGTRAP: standard signals do not queue, so a
//! probe pending when a thread executes an `int3` — the program's own
//! breakpoint, or a batch's — would make the kernel drop that trap's
//! SIGTRAP, and the thread would run on from the byte after the `int3`.
//! Real-time signals queue, and a trap is never merged with a probe.
//!
//! Only one request is in flight at a time (a lock). The request lives on
//! the caller's stack and is published in `ACTIVE_PROBE`; a handler answers
//! only if the token it carries is the published one, counts itself in
//! flight while it writes, and the caller unpublishes and drains before the
//! request goes away.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::trap::{drain, IN_FLIGHT};

/// The probe signal chosen by [`set_probe_signal`]; 0 means the default.
static PROBE_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The real-time signal thread probes use: `SIGRTMAX - 2` unless set with
/// [`set_probe_signal`]. (livetrace-sites' stop-the-world conversion uses
/// `SIGRTMAX - 1`.)
pub fn probe_signal() -> libc::c_int {
    match PROBE_SIGNAL.load(SeqCst) {
        0 => libc::SIGRTMAX() - 2,
        s => s,
    }
}

/// Chooses another real-time signal for thread probes, for a program that
/// uses `SIGRTMAX - 2` itself. Must be called before the first probe.
pub fn set_probe_signal(sig: libc::c_int) -> Result<(), crate::Error> {
    if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return Err(crate::Error::Io(std::io::Error::other(format!(
            "probe signal {sig} is not a real-time signal ({}..={})",
            libc::SIGRTMIN(),
            libc::SIGRTMAX()
        ))));
    }
    PROBE_SIGNAL.store(sig, SeqCst);
    Ok(())
}

extern "C" fn on_probe(_sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: errno is thread-local; a handler that may make system calls
    // saves and restores it.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let rip = unsafe { (*(uc as *mut libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] }
        as usize;
    answer(info, rip);
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// Installs the probe handler, once. Refuses when the program has a
/// handler of its own on that signal.
fn install_probe_handler() -> Result<(), crate::Error> {
    static INSTALLED: std::sync::OnceLock<Result<libc::c_int, String>> = std::sync::OnceLock::new();
    let sig = probe_signal();
    let r = INSTALLED.get_or_init(|| {
        let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries the disposition only.
        if unsafe { libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        // SAFETY: sigaction filled it.
        let cur = unsafe { cur.assume_init() };
        if cur.sa_sigaction != libc::SIG_DFL {
            return Err(format!(
                "signal {sig} already has a handler; choose another with set_probe_signal"
            ));
        }
        let mut sa = MaybeUninit::<libc::sigaction>::zeroed();
        let p = sa.as_mut_ptr();
        // SAFETY: fills a zeroed sigaction and installs a valid handler.
        unsafe {
            (*p).sa_sigaction = on_probe as *const () as usize;
            (*p).sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut (*p).sa_mask);
            if libc::sigaction(sig, p, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
        }
        Ok(sig)
    });
    match r {
        Ok(s) if *s == sig => Ok(()),
        Ok(s) => Err(crate::Error::Io(std::io::Error::other(format!(
            "probe handler already installed on signal {s}"
        )))),
        Err(e) => Err(crate::Error::Io(std::io::Error::other(e.clone()))),
    }
}

/// One thread's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSample {
    /// The thread id.
    pub tid: i32,
    /// Where it was interrupted; `None` for the calling thread, which is
    /// running `sample_threads`.
    pub rip: Option<usize>,
    /// The 8 bytes at the thread pointer plus the offset given.
    pub word: u64,
}

struct Slot {
    tid: AtomicI32,
    done: AtomicU8,
    rip: AtomicUsize,
    word: AtomicU64,
}

struct Request {
    slots: Vec<Slot>,
    tls_offset: isize,
    /// (from, to): the handler turns the byte at `tls_offset` from `from`
    /// into `to`, after reading the word.
    mark: Option<(u8, u8)>,
}

static ACTIVE_PROBE: AtomicPtr<Request> = AtomicPtr::new(std::ptr::null_mut());
static PROBE_LOCK: Mutex<()> = Mutex::new(());

/// Reads the 8 bytes at `fs:[offset]` for the current thread.
fn tls_word(offset: isize) -> u64 {
    let v: u64;
    // SAFETY: `offset` names a static-TLS variable of at least 8 bytes (the
    // contract of `sample_threads`), which exists in every thread at the
    // same offset from the thread pointer.
    unsafe {
        std::arch::asm!("mov {v}, qword ptr fs:[{o}]", o = in(reg) offset, v = out(reg) v, options(nostack, readonly, preserves_flags))
    };
    v
}

/// Turns the byte at `fs:[offset]` from `from` into `to` (on the current
/// thread, so nothing races with it: the handler interrupted the thread's
/// own code).
fn mark_tls_byte(offset: isize, from: u8, to: u8) {
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

/// Called by the probe handler. Returns whether it was a probe of ours (and
/// has been answered).
pub(crate) fn answer(info: *const libc::siginfo_t, rip: usize) -> bool {
    // SAFETY: for SI_QUEUE the kernel fills the sigqueue fields; si_value
    // is the token the sender put there.
    let token = unsafe { (*info).si_value().sival_ptr } as usize;
    IN_FLIGHT.fetch_add(1, SeqCst);
    let req = ACTIVE_PROBE.load(SeqCst);
    let ours = !req.is_null() && req as usize == token;
    if ours {
        // SAFETY: the request stays alive until the prober has unpublished
        // it and drained IN_FLIGHT, and we are counted.
        let req = unsafe { &*req };
        // SAFETY: gettid is async-signal-safe.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        if let Some(slot) = req.slots.iter().find(|s| s.tid.load(SeqCst) == tid) {
            slot.rip.store(rip, SeqCst);
            slot.word.store(tls_word(req.tls_offset), SeqCst);
            if let Some((from, to)) = req.mark {
                mark_tls_byte(req.tls_offset, from, to);
            }
            slot.done.store(1, SeqCst);
        }
    }
    IN_FLIGHT.fetch_sub(1, SeqCst);
    ours
}

fn thread_ids() -> std::io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

fn send(pid: i32, tid: i32, sig: libc::c_int, token: usize) -> bool {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: a zeroed siginfo is filled with the fields rt_tgsigqueueinfo
    // reads for SI_QUEUE: signo, code, pid, uid and the value (the value
    // sits after pid and uid in the kernel's layout, as the offsets show).
    unsafe {
        let p = info.as_mut_ptr();
        (*p).si_signo = sig;
        (*p).si_code = libc::SI_QUEUE;
        let base = p as *mut u8;
        // struct { int signo, errno, code; int pad; pid_t pid; uid_t uid; sigval value; }
        *(base.add(16) as *mut i32) = pid;
        *(base.add(20) as *mut u32) = libc::getuid();
        *(base.add(24) as *mut usize) = token;
        libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, p) == 0
    }
}

/// Samples every thread of the process: where it is executing and the
/// 8-byte word at `tls_offset` from its thread pointer. Threads that exit
/// meanwhile are left out; threads that do not answer within `timeout`
/// (the probe signal blocked, or stopped by a debugger) make it an error.
///
/// `tls_offset` must come from [`tls_offset_of`] applied to a static-TLS
/// variable (one of the executable or of a library loaded at start-up) of
/// at least 8 bytes.
pub fn sample_threads(
    tls_offset: isize,
    timeout: Duration,
) -> Result<Vec<ThreadSample>, crate::Error> {
    sample(tls_offset, timeout, None)
}

/// [`sample_threads`], and each other thread, in its handler, right after
/// reading its word, also turns the byte at `tls_offset` from `from` into
/// `to` (a thread can write that byte from its own code only, so there is
/// no race). The reported words are the values before the marking.
///
/// This is how a waiter tells a busy span it saw from a later one without
/// a counter the thread must bump: the thread sets the byte to `from` when
/// a span starts and clears it when it ends; the waiter marks, and a later
/// sample that does not find `to` any more proves the marked span ended.
pub fn sample_threads_marking(
    tls_offset: isize,
    timeout: Duration,
    from: u8,
    to: u8,
) -> Result<Vec<ThreadSample>, crate::Error> {
    sample(tls_offset, timeout, Some((from, to)))
}

fn sample(
    tls_offset: isize,
    timeout: Duration,
    mark: Option<(u8, u8)>,
) -> Result<Vec<ThreadSample>, crate::Error> {
    let _guard = PROBE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    install_probe_handler()?;
    let sig = probe_signal();
    // SAFETY: getpid and gettid cannot fail.
    let (pid, me) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) };
    let tids = thread_ids().map_err(crate::Error::Io)?;
    let req = Request {
        slots: tids
            .iter()
            .filter(|&&t| t != me)
            .map(|&t| Slot {
                tid: AtomicI32::new(t),
                done: AtomicU8::new(0),
                rip: AtomicUsize::new(0),
                word: AtomicU64::new(0),
            })
            .collect(),
        tls_offset,
        mark,
    };
    let token = &req as *const Request as usize;
    ACTIVE_PROBE.store(token as *mut Request, SeqCst);
    let mut gone = vec![false; req.slots.len()];
    for (i, s) in req.slots.iter().enumerate() {
        if !send(pid, s.tid.load(SeqCst), sig, token) {
            gone[i] = true; // exited since we listed it
        }
    }
    let start = Instant::now();
    let mut result = Ok(());
    loop {
        let pending: Vec<usize> = (0..req.slots.len())
            .filter(|&i| !gone[i] && req.slots[i].done.load(SeqCst) == 0)
            .collect();
        if pending.is_empty() {
            break;
        }
        if start.elapsed() > timeout {
            // A thread that has exited since cannot answer; one that still
            // exists and does not is an error.
            let alive: Vec<i32> = pending
                .iter()
                .map(|&i| req.slots[i].tid.load(SeqCst))
                .filter(|t| std::path::Path::new(&format!("/proc/self/task/{t}")).exists())
                .collect();
            if alive.is_empty() {
                break;
            }
            result = Err(crate::Error::Unresponsive(alive));
            break;
        }
        std::thread::yield_now();
    }
    ACTIVE_PROBE.store(std::ptr::null_mut(), SeqCst);
    drain();
    result?;
    let mut out = vec![ThreadSample {
        tid: me,
        rip: None,
        word: tls_word(tls_offset),
    }];
    for s in &req.slots {
        if s.done.load(SeqCst) != 0 {
            out.push(ThreadSample {
                tid: s.tid.load(SeqCst),
                rip: Some(s.rip.load(SeqCst)),
                word: s.word.load(SeqCst),
            });
        }
    }
    Ok(out)
}
