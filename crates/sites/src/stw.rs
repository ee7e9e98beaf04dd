//! Stop-the-world conversion of GCC's five one-byte NOPs.
//!
//! Rewriting `90 90 90 90 90` into `0f 1f 44 00 00` is safe only if no
//! thread is between two of the old NOPs: resumed there, it would execute
//! the middle of the new instruction. So every other thread is stopped with
//! a signal, and each one's position is checked before anything is written:
//!
//! - the RIP its stop signal interrupted (from the handler's `ucontext`)
//!   must not be strictly inside any sled (`site < rip < site + 5`; `rip ==
//!   site` is fine, both forms start an instruction there);
//! - no word of its stack above that point may be such an address either.
//!   This catches a thread stopped while running a signal handler that
//!   itself interrupted a sled: the sled address is then in the saved
//!   context on the stack, not in RIP, and the thread would return into the
//!   middle of the new NOP after we let it go. Return addresses and
//!   function pointers never point strictly inside a 5-byte entry sled, so
//!   a hit is either that case or a coincidental value; both are refused
//!   (the safe direction). The calling thread's own stack is not scanned:
//!   its frames legitimately hold addresses computed from the sites being
//!   converted; instead the caller must not be running a signal handler
//!   that interrupted a sled (documented on the policy).
//!
//! A busy round releases everyone and tries again a little later; after
//! [`MAX_ATTEMPTS`] it refuses. A thread that does not reach the handler in
//! time (it blocks the signal, or is stopped by a debugger) makes the whole
//! conversion refuse: nothing is written without every thread accounted for.
//!
//! While the world is stopped the controller allocates nothing and takes no
//! lock a stopped thread could hold (malloc's, the engine's batch lock):
//! buffers are reserved beforehand, threads are listed with raw
//! `getdents64`, memory is read and the sleds written through
//! `/proc/self/mem` (the kernel writes through to the private text page
//! without an `mprotect`, so a batch stopped mid-way in another thread
//! keeps the page protections it expects), and cores are serialised with
//! `membarrier` before anyone is released. The handler itself only touches
//! atomics and calls `futex`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Rounds tried before a conversion is refused because some thread keeps
/// being inside a sled.
pub const MAX_ATTEMPTS: u32 = 25;
/// Threads that can be stopped at once.
pub const MAX_THREADS: usize = 4096;
/// How long every thread gets to reach the stop handler.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How far above a stopped thread's stack pointer its stack is scanned; a
/// larger used stack is refused as unverifiable.
const MAX_STACK_SCAN: usize = 64 << 20;

const FUTEX_WAIT_PRIVATE: libc::c_int = 128;
const FUTEX_WAKE_PRIVATE: libc::c_int = 129;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

/// Odd while a stop is in progress; bumped to even to release everyone.
static GEN: AtomicU32 = AtomicU32::new(0);
/// Threads currently inside the handler, stale deliveries included.
static IN_HANDLER: AtomicU32 = AtomicU32::new(0);
/// Slots handed out this round.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

struct Slot {
    gen: AtomicU32,
    tid: AtomicI32,
    rip: AtomicUsize,
    rsp: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    gen: AtomicU32::new(0),
    tid: AtomicI32::new(0),
    rip: AtomicUsize::new(0),
    rsp: AtomicUsize::new(0),
};
static SLOTS: [Slot; MAX_THREADS] = [EMPTY_SLOT; MAX_THREADS];

static LOCK: Mutex<()> = Mutex::new(());
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static INSTALLED: OnceLock<Result<libc::c_int, String>> = OnceLock::new();

/// Chooses the signal used to stop threads. Must be called before the first
/// stop-the-world conversion; the default is `SIGRTMAX - 1`. The handler,
/// once installed, stays installed for the life of the process, so that a
/// late or stray delivery never finds the default action (which for a
/// real-time signal kills the process).
pub fn set_stop_signal(sig: libc::c_int) -> Result<(), String> {
    if INSTALLED.get().is_some() {
        return Err("the stop signal is already installed".into());
    }
    if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return Err(format!("{sig} is not a real-time signal"));
    }
    SIGNAL.store(sig, SeqCst);
    Ok(())
}

/// The signal used to stop threads.
pub fn stop_signal() -> libc::c_int {
    match SIGNAL.load(SeqCst) {
        0 => libc::SIGRTMAX() - 1,
        s => s,
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

extern "C" fn handler(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local; saved and restored so the interrupted
    // code never sees our futex calls' errors.
    let errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, SeqCst);
    let g = GEN.load(SeqCst);
    if g & 1 == 1 {
        // SAFETY: the kernel passes the interrupted context as a
        // `ucontext_t` to SA_SIGINFO handlers; it lives on this frame.
        let (rip, rsp) = unsafe {
            let uc = &*(ctx as *const libc::ucontext_t);
            (
                uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize,
                uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize,
            )
        };
        let idx = CLAIMED.fetch_add(1, SeqCst);
        if let Some(slot) = SLOTS.get(idx) {
            slot.tid.store(gettid(), SeqCst);
            slot.rip.store(rip, SeqCst);
            slot.rsp.store(rsp, SeqCst);
            slot.gen.store(g, SeqCst);
        }
        while GEN.load(SeqCst) == g {
            // SAFETY: futex wait on a static word; returns at once if the
            // value has already changed, spuriously on signals.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    GEN.as_ptr(),
                    FUTEX_WAIT_PRIVATE,
                    g,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
    }
    IN_HANDLER.fetch_sub(1, SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn install() -> Result<libc::c_int, String> {
    INSTALLED
        .get_or_init(|| {
            let sig = stop_signal();
            // SAFETY: a zeroed sigaction is a valid starting point; the
            // handler has the SA_SIGINFO signature; the mask blocks every
            // signal while a thread is held, so no other handler of the
            // program (which might run sled code) runs on a stopped thread.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigfillset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                    return Err(format!("sigaction({sig}): {}", io::Error::last_os_error()));
                }
            }
            Ok(sig)
        })
        .clone()
}

/// One thread found inside a sled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    /// The thread.
    pub tid: i32,
    /// The address found: its RIP, or a word on its stack.
    pub addr: usize,
    /// The sled that address is inside.
    pub site: usize,
    /// Whether `addr` was the thread's RIP (else a stack word).
    pub in_rip: bool,
}

/// Why a stop-the-world conversion did not happen.
#[derive(Debug)]
pub enum StwError {
    /// Some thread kept being inside a sled for every attempt.
    Busy(Busy),
    /// A thread did not reach the stop handler in time.
    NotStopped {
        /// The thread.
        tid: i32,
    },
    /// More threads than the stop machinery can hold (4096).
    TooManyThreads,
    /// The stop machinery could not be set up.
    Setup(String),
    /// Writing a sled failed (the sleds before it in address order were
    /// converted).
    Write(WriteFailure),
}

/// A sled that could not be written through `/proc/self/mem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    /// The site.
    pub site: usize,
    /// The OS error, if the write itself failed (else it did not read back).
    pub errno: Option<i32>,
}

impl std::fmt::Display for StwError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StwError::Busy(b) => {
                write!(
                f,
                "thread {} stays inside the sled at {:#x} ({} {:#x}) after {MAX_ATTEMPTS} attempts",
                b.tid,
                b.site,
                if b.in_rip { "rip" } else { "saved context on its stack at" },
                b.addr
            )
            }
            StwError::NotStopped { tid } => write!(
                f,
                "thread {tid} did not stop within {ARRIVAL_TIMEOUT:?} (is signal {} blocked, \
                 or the thread stopped by a debugger?)",
                stop_signal()
            ),
            StwError::TooManyThreads => write!(f, "more than {MAX_THREADS} threads"),
            StwError::Setup(s) => f.write_str(s),
            StwError::Write(w) => {
                write!(
                    f,
                    "writing the sled at {:#x} through /proc/self/mem ",
                    w.site
                )?;
                match w.errno {
                    Some(e) => write!(f, "failed: {}", io::Error::from_raw_os_error(e)),
                    None => f.write_str("did not take"),
                }
            }
        }
    }
}

/// What a successful stop-the-world conversion saw.
#[derive(Clone, Debug, Default)]
pub struct StwReport {
    /// Rounds needed (1 when nobody was inside a sled).
    pub attempts: u32,
    /// Threads stopped in the successful round.
    pub stopped: usize,
    /// Each busy observation of the failed rounds.
    pub busy: Vec<Busy>,
}

/// A readable memory range, from `/proc/self/maps`.
#[derive(Clone, Copy)]
struct Region {
    start: usize,
    end: usize,
}

fn readable_regions() -> io::Result<Vec<Region>> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            out.push(Region { start, end });
        }
    }
    out.sort_by_key(|r| r.start);
    Ok(out)
}

/// The sled strictly containing `addr`, from sorted site addresses.
pub(crate) fn inside_sled(sleds: &[usize], addr: usize) -> Option<usize> {
    let i = sleds.partition_point(|&s| s < addr);
    let s = *sleds.get(i.checked_sub(1)?)?;
    (addr - s < 5).then_some(s)
}

/// Everything reserved before the world stops.
struct Scratch {
    mem: File,
    dirents: Vec<u8>,
    tids: Vec<libc::pid_t>,
    signaled: Vec<(libc::pid_t, bool)>,
    stack: Vec<u8>,
}

/// Lists the process's threads into `out` with raw syscalls (no allocation:
/// `out` has its capacity reserved). Returns false when it does not fit.
fn list_tids(dirents: &mut [u8], out: &mut Vec<libc::pid_t>) -> bool {
    out.clear();
    // SAFETY: open/getdents64/close on a static NUL-terminated path into a
    // buffer we own; the fd is closed on every path out.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        loop {
            let n = libc::syscall(
                libc::SYS_getdents64,
                fd,
                dirents.as_mut_ptr(),
                dirents.len(),
            );
            if n <= 0 {
                libc::close(fd);
                return n == 0;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                let reclen = u16::from_ne_bytes([dirents[off + 16], dirents[off + 17]]) as usize;
                let name = &dirents[off + 19..off + reclen];
                let mut tid: libc::pid_t = 0;
                let mut digits = 0;
                for &b in name {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    tid = tid * 10 + libc::pid_t::from(b - b'0');
                    digits += 1;
                }
                if digits > 0 {
                    if out.len() == out.capacity() {
                        libc::close(fd);
                        return false;
                    }
                    out.push(tid);
                }
                if reclen == 0 {
                    break;
                }
                off += reclen;
            }
        }
    }
}

/// Whether thread `tid` is gone or a zombie (a thread-group leader that
/// called `pthread_exit` stays listed but never runs handlers again).
fn thread_gone(tid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) } != 0 {
        return true;
    }
    let mut path = *b"/proc/self/task/0000000000/stat\0";
    let digits = {
        let mut d = [0u8; 10];
        let mut n = tid as u32;
        let mut i = 10;
        loop {
            i -= 1;
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        (d, i)
    };
    let (d, first) = digits;
    let len = 10 - first;
    path[16..16 + len].copy_from_slice(&d[first..]);
    let rest = b"/stat\0";
    path[16 + len..16 + len + rest.len()].copy_from_slice(rest);
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated path in a local buffer; reads into a local
    // buffer; fd closed.
    let n = unsafe {
        let fd = libc::open(
            path.as_ptr() as *const libc::c_char,
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return true;
        }
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return true;
    }
    // "tid (comm) S ...": the state follows the last ')'.
    let text = &buf[..n as usize];
    match text.iter().rposition(|&b| b == b')') {
        Some(p) => matches!(text.get(p + 2), Some(b'Z' | b'X' | b'x')),
        None => false,
    }
}

/// Scans `[from, end of its region)` for words strictly inside a sled.
fn scan_stack(
    scratch: &mut Scratch,
    regions: &[Region],
    sleds: &[usize],
    from: usize,
) -> Result<(), (usize, usize)> {
    let i = regions.partition_point(|r| r.end <= from);
    let Some(region) = regions.get(i).filter(|r| r.start <= from) else {
        // Not in the map read before the stop: a thread created since.
        // Unverifiable this round.
        return Err((from, 0));
    };
    let start = from & !7;
    if region.end - start > MAX_STACK_SCAN {
        return Err((from, 0));
    }
    let mut at = start;
    while at < region.end {
        let len = (region.end - at).min(scratch.stack.len());
        let buf = &mut scratch.stack[..len];
        // A failed read means the region shrank since the map was read;
        // nothing beyond can be a live stack frame of this thread.
        let Ok(n) = scratch.mem.read_at(buf, at as u64) else {
            break;
        };
        if n == 0 {
            break;
        }
        for w in buf[..n & !7].chunks_exact(8) {
            let v = usize::from_ne_bytes(w.try_into().expect("8 bytes"));
            if let Some(site) = inside_sled(sleds, v) {
                return Err((v, site));
            }
        }
        at += n & !7;
        if n & !7 == 0 {
            break;
        }
    }
    Ok(())
}

enum Round {
    Done(usize),
    Busy(Busy),
    Failed(StwError),
}

/// Stops every other thread, checks none is inside any of `sleds` (sorted
/// site addresses), runs `write` (which must not allocate or lock), and
/// releases them. See the module docs.
pub(crate) fn with_world_stopped(
    sleds: &[usize],
    mut write: impl FnMut(&File) -> Result<(), WriteFailure>,
) -> Result<StwReport, StwError> {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let sig = install().map_err(StwError::Setup)?;
    // SAFETY: registering for membarrier sync-core is idempotent and
    // process-wide.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
        )
    };
    if rc != 0 {
        return Err(StwError::Setup(format!(
            "membarrier sync-core unavailable: {}",
            io::Error::last_os_error()
        )));
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .map_err(|e| StwError::Setup(format!("/proc/self/mem: {e}")))?;
    let mut scratch = Scratch {
        mem,
        dirents: vec![0u8; 64 * 1024],
        tids: Vec::with_capacity(MAX_THREADS),
        signaled: Vec::with_capacity(MAX_THREADS),
        stack: vec![0u8; 64 * 1024],
    };
    let me = gettid();
    let mut report = StwReport::default();
    for attempt in 1..=MAX_ATTEMPTS {
        report.attempts = attempt;
        let regions = readable_regions().map_err(|e| StwError::Setup(e.to_string()))?;
        // SAFETY: an all-zero sigset_t is a valid (empty) set.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: blocks every signal on this thread for the round (so no
        // handler of the program runs sled code here while others are
        // held); restored below on every path.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        let round = stop_round(&mut scratch, &regions, sleds, sig, me, &mut write);
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        match round {
            Round::Done(n) => {
                report.stopped = n;
                return Ok(report);
            }
            Round::Busy(b) => {
                report.busy.push(b);
                if attempt == MAX_ATTEMPTS {
                    return Err(StwError::Busy(b));
                }
                std::thread::sleep(Duration::from_micros(200 * u64::from(attempt)));
            }
            Round::Failed(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

fn wait_handlers_drained() {
    let deadline = Instant::now() + Duration::from_secs(1);
    while IN_HANDLER.load(SeqCst) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn stop_round(
    scratch: &mut Scratch,
    regions: &[Region],
    sleds: &[usize],
    sig: libc::c_int,
    me: libc::pid_t,
    write: &mut impl FnMut(&File) -> Result<(), WriteFailure>,
) -> Round {
    // Stale deliveries from an earlier round leave before slots are reset.
    wait_handlers_drained();
    let claimed = CLAIMED.load(SeqCst).min(MAX_THREADS);
    for s in &SLOTS[..claimed] {
        s.gen.store(0, SeqCst);
    }
    CLAIMED.store(0, SeqCst);
    let g = GEN.fetch_add(1, SeqCst) + 1;
    debug_assert!(g & 1 == 1);

    let outcome = stop_all(scratch, sig, me, g).and_then(|stopped| {
        // Everyone is held: check positions, then write.
        let claimed = CLAIMED.load(SeqCst);
        if claimed > MAX_THREADS {
            return Err(Round::Failed(StwError::TooManyThreads));
        }
        for s in &SLOTS[..claimed] {
            if s.gen.load(SeqCst) != g {
                continue;
            }
            let tid = s.tid.load(SeqCst);
            let rip = s.rip.load(SeqCst);
            if let Some(site) = inside_sled(sleds, rip) {
                return Err(Round::Busy(Busy {
                    tid,
                    addr: rip,
                    site,
                    in_rip: true,
                }));
            }
            if let Err((addr, site)) = scan_stack(scratch, regions, sleds, s.rsp.load(SeqCst)) {
                return Err(Round::Busy(Busy {
                    tid,
                    addr,
                    site,
                    in_rip: false,
                }));
            }
        }
        write(&scratch.mem).map_err(|e| Round::Failed(StwError::Write(e)))?;
        // SAFETY: registered above; makes every thread serialise before it
        // next runs user code, so none executes stale prefetched sled bytes.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
                0,
            )
        };
        Ok(stopped)
    });

    // Release.
    GEN.fetch_add(1, SeqCst);
    // SAFETY: futex wake on the static word the handlers wait on.
    unsafe { libc::syscall(libc::SYS_futex, GEN.as_ptr(), FUTEX_WAKE_PRIVATE, i32::MAX) };
    wait_handlers_drained();
    match outcome {
        Ok(n) => Round::Done(n),
        Err(r) => r,
    }
}

/// Signals every thread but `me` until all are held in the handler or
/// gone. Returns how many are held.
fn stop_all(
    scratch: &mut Scratch,
    sig: libc::c_int,
    me: libc::pid_t,
    g: u32,
) -> Result<usize, Round> {
    scratch.signaled.clear();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        if !list_tids(&mut scratch.dirents, &mut scratch.tids) {
            return Err(Round::Failed(StwError::TooManyThreads));
        }
        let mut new = 0;
        for &t in &scratch.tids {
            if t == me || scratch.signaled.iter().any(|&(s, _)| s == t) {
                continue;
            }
            if scratch.signaled.len() == scratch.signaled.capacity() {
                return Err(Round::Failed(StwError::TooManyThreads));
            }
            // SAFETY: directed signal to a thread of our own process.
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, t, sig) };
            scratch.signaled.push((t, rc != 0));
            new += 1;
        }
        // Threads that were running when listed may have created more
        // before they stopped: once all are held, list again until a
        // listing brings nobody new (held threads create nothing).
        if new == 0 && all_accounted(scratch, g) {
            let held = scratch.signaled.iter().filter(|&&(_, gone)| !gone).count();
            return Ok(held);
        }
        let mut waited = 0u32;
        while !all_accounted(scratch, g) {
            if Instant::now() > deadline {
                let tid = scratch
                    .signaled
                    .iter()
                    .find(|&&(t, gone)| !gone && !arrived(t, g))
                    .map_or(0, |&(t, _)| t);
                return Err(Round::Failed(StwError::NotStopped { tid }));
            }
            std::thread::sleep(Duration::from_micros(50));
            waited += 1;
            if waited.is_multiple_of(100) {
                for e in scratch.signaled.iter_mut() {
                    if !e.1 && !arrived(e.0, g) && thread_gone(e.0) {
                        e.1 = true;
                    }
                }
            }
        }
    }
}

fn arrived(tid: libc::pid_t, g: u32) -> bool {
    let claimed = CLAIMED.load(SeqCst).min(MAX_THREADS);
    SLOTS[..claimed]
        .iter()
        .any(|s| s.gen.load(SeqCst) == g && s.tid.load(SeqCst) == tid)
}

fn all_accounted(scratch: &Scratch, g: u32) -> bool {
    scratch
        .signaled
        .iter()
        .all(|&(t, gone)| gone || arrived(t, g))
}

/// Writes `bytes` at `addr` through `/proc/self/mem` and reads them back.
/// Allocates nothing (it runs while the world is stopped).
pub(crate) fn write_text(mem: &File, addr: usize, bytes: &[u8; 5]) -> Result<(), WriteFailure> {
    let n = mem.write_at(bytes, addr as u64).map_err(|e| WriteFailure {
        site: addr,
        errno: e.raw_os_error(),
    })?;
    let mut back = [0u8; 5];
    if n != 5 || mem.read_at(&mut back, addr as u64).ok() != Some(5) || &back != bytes {
        return Err(WriteFailure {
            site: addr,
            errno: None,
        });
    }
    Ok(())
}

/// Reads five bytes through `/proc/self/mem` (never faults).
pub(crate) fn read_text(mem: &File, addr: usize) -> Option<[u8; 5]> {
    let mut b = [0u8; 5];
    (mem.read_at(&mut b, addr as u64).ok()? == 5).then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_sled_is_strict() {
        let sleds = [0x1000, 0x2000];
        assert_eq!(inside_sled(&sleds, 0x1000), None);
        assert_eq!(inside_sled(&sleds, 0x1001), Some(0x1000));
        assert_eq!(inside_sled(&sleds, 0x1004), Some(0x1000));
        assert_eq!(inside_sled(&sleds, 0x1005), None);
        assert_eq!(inside_sled(&sleds, 0xfff), None);
        assert_eq!(inside_sled(&sleds, 0x2003), Some(0x2000));
        assert_eq!(inside_sled(&sleds, 0), None);
        assert_eq!(inside_sled(&[], 0x1001), None);
    }

    #[test]
    fn lists_own_threads() {
        let mut d = vec![0u8; 4096];
        let mut t = Vec::with_capacity(256);
        assert!(list_tids(&mut d, &mut t));
        assert!(t.contains(&gettid()));
        assert!(!thread_gone(gettid()));
        let mut tiny = Vec::with_capacity(0);
        // Capacity 0: does not fit, reports so instead of allocating.
        assert!(!list_tids(&mut d, &mut tiny));
    }
}
