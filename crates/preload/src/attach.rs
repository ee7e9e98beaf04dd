//! Starting in a process that is already running: the entry points
//! `livetrace attach` calls after it has loaded this library with `dlopen`
//! through ptrace (`livetrace-inject`), and `livetrace detach` before it
//! unloads it.
//!
//! # Protocol
//!
//! The constructor of a library loaded late does nothing ([`crate::ctor`]).
//! The injector, holding no thread, calls [`livetrace_attach_start`],
//! which starts a thread (`livetrace-attach`) and returns at once. That
//! thread, while the program runs:
//!
//! 1. chooses the real-time signals for its thread probes and
//!    stop-the-world among those the program leaves at their default, and
//!    notes the program's dispositions of them and of `SIGTRAP`;
//! 2. builds the record table: every loaded object's compiler sites, and
//!    the `#[traced]` sites of an executable that links livetrace without
//!    running its control socket;
//! 3. publishes the sorted addresses of the sites still holding gcc's five
//!    one-byte NOPs ([`livetrace_attach_sleds`]), keeps the objects they
//!    are in loaded, opens `/proc/self/mem` and registers for
//!    `membarrier` sync-core: state `READY`.
//!
//! The injector then **holds every thread**, checks that none has its
//! instruction pointer or a word of its stack strictly inside a sled
//! (letting them run a little and retrying while one has), and calls
//! [`livetrace_attach_convert`] on one held thread: it rewrites every sled
//! into the 5-byte NOP through `/proc/self/mem` (one read and one write per
//! page), serialises every core, and wakes the attach thread; the
//! injector releases the world. That call takes no lock and allocates
//! nothing, so it cannot wait for a held thread. The attach thread marks
//! the records converted, builds the rest of livetrace's state and starts
//! the control socket: state `SERVING`, its path in
//! [`livetrace_attach_message`].
//!
//! [`livetrace_detach_start`] undoes it on another thread: the control
//! socket is shut down (every connection's sessions end, every site goes
//! back to a NOP, quiescence waited for), every patch is reverted, the
//! signal dispositions livetrace changed are put back, and thread-local
//! destructors are forgotten ([`crate::tls`]): state `UNLOADABLE`. A
//! session stop the engine refuses (a thread that cannot take SIGTRAP for
//! a while) is retried for a few seconds before detaching fails. The
//! injector does not trace the process meanwhile (the engine refuses to
//! patch a traced process); it then seizes it again, checks, every thread
//! held, that none is inside the library, and `dlclose`s it.
//!
//! States and messages are plain exported statics the injector reads with
//! ptrace; the functions are found in the dynamic symbol table.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use livetrace::raw::sites::{ConvertPolicy, ExternalSite};

/// The protocol's version, for the injector to check.
#[unsafe(no_mangle)]
pub static livetrace_attach_abi: u32 = 2;

/// Loaded, nothing started.
pub const IDLE: u32 = 0;
/// The attach thread is building the table.
pub const PREPARING: u32 = 1;
/// Sleds published; waiting for [`livetrace_attach_convert`].
pub const READY: u32 = 2;
/// Sleds converted; starting the control socket.
pub const STARTING: u32 = 3;
/// The control socket runs; its path is the message.
pub const SERVING: u32 = 4;
/// Being torn down.
pub const DETACHING: u32 = 5;
/// Torn down: nothing runs or will run in the library; it can be
/// unloaded.
pub const UNLOADABLE: u32 = 6;
/// Started at process start-up (LD_PRELOAD or linked): not attached.
pub const STARTUP: u32 = 7;
/// Failed; the message says why.
pub const FAILED: u32 = 100;

/// Where the attach or detach is: one of the constants above.
#[unsafe(no_mangle)]
pub static livetrace_attach_state: AtomicU32 = AtomicU32::new(IDLE);

/// The sorted sled addresses (`u64`s) and their count, once `READY`.
#[unsafe(no_mangle)]
pub static livetrace_attach_sleds: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// A NUL-terminated message: the socket path when `SERVING`, the reason
/// when `FAILED`, a summary of the conversion when `STARTING`.
#[unsafe(no_mangle)]
pub static livetrace_attach_message: Message = Message(UnsafeCell::new([0; MESSAGE_LEN]));

/// What the injector checks before unloading, once `SERVING`: the graph
/// tracer's return hook (a frame still hooked holds it on its stack), the
/// thread-pointer offset of the byte that is non-zero while a thread is
/// inside livetrace (a callback, a fast path, a return hook's exit), and
/// the return hook of relocated functions.
#[unsafe(no_mangle)]
pub static livetrace_attach_unload: [AtomicUsize; 3] = [
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
];

/// Once `UNLOADABLE`: the executable memory livetrace mapped (trampolines,
/// stubs), as `(start, end)` `u64` pairs and their count, which no thread
/// may be executing when the library goes (it unmaps them then).
#[unsafe(no_mangle)]
pub static livetrace_attach_code: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Once `READY`: the signals every thread must take (bit `n - 1` for
/// signal `n`): `SIGTRAP` and the world signal. Threads that were running
/// before livetrace was loaded may block them (the interposed mask
/// functions only see calls made from now on, and a late-loaded library
/// does not even interpose those the program binds to the C library); the
/// injector clears them from every thread's mask while it holds every
/// thread for the conversion, or the batch check would refuse to patch.
#[unsafe(no_mangle)]
pub static livetrace_attach_signals: AtomicU64 = AtomicU64::new(0);

/// Room in [`livetrace_attach_masks`] for threads.
pub const MASK_SLOTS: usize = 256;

/// Written by the injector while it holds every thread: the count, then
/// `(tid, start time, signals)` per thread whose mask it cleared of
/// [`livetrace_attach_signals`], so that detaching blocks them again in
/// the threads that still run (the start time, field 22 of
/// `/proc/PID/task/TID/stat`, tells a reused thread id apart). The library
/// itself never reads it.
#[unsafe(no_mangle)]
pub static livetrace_attach_masks: [AtomicU64; 1 + 3 * MASK_SLOTS] =
    [const { AtomicU64::new(0) }; 1 + 3 * MASK_SLOTS];

const MESSAGE_LEN: usize = 1024;

/// A message buffer, written by one thread before it publishes a state,
/// read (by the injector) after it sees that state.
#[repr(transparent)]
pub struct Message(UnsafeCell<[u8; MESSAGE_LEN]>);

// SAFETY: written only by the thread that owns the current state, before
// it publishes the next state with a release store; read by others after
// an acquire load of that state.
unsafe impl Sync for Message {}

fn set_message(msg: &str) {
    let b = msg.as_bytes();
    let n = b.len().min(MESSAGE_LEN - 1);
    // SAFETY: see `Message`: only the state's owner writes, before the
    // state store that publishes it.
    unsafe {
        let buf = &mut *livetrace_attach_message.0.get();
        buf[..n].copy_from_slice(&b[..n]);
        buf[n] = 0;
    }
}

fn publish(state: u32, msg: &str) {
    set_message(msg);
    livetrace_attach_state.store(state, Release);
    futex_wake(&livetrace_attach_state);
}

fn fail(msg: impl Into<String>) {
    let msg = msg.into();
    if crate::verbose() {
        eprintln!("livetrace: attach: {msg}");
    }
    publish(FAILED, &msg);
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE_PRIVATE on a static word; no memory is written.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), 129, i32::MAX) };
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT_PRIVATE on a static word with a valid timeout;
    // returns at once if the word changed.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), 128, expected, &ts) };
}

/// Called by [`crate::ctor`] for a library loaded at start-up.
pub(crate) fn mark_startup() {
    livetrace_attach_state.store(STARTUP, Release);
}

// ---------------------------------------------------------------------------
// Conversion resources, prepared by the attach thread for a call that may
// not allocate or lock.

struct Prepared {
    mem_fd: libc::c_int,
    sleds: Vec<u64>,
    page: Vec<u8>,
    check: Vec<u8>,
}

static PREPARED: AtomicPtr<Prepared> = AtomicPtr::new(std::ptr::null_mut());
/// Sleds written by the last conversion, and failures.
static CONVERTED: AtomicU64 = AtomicU64::new(0);
static CONVERT_FAILED: AtomicU64 = AtomicU64::new(0);
/// Set by [`livetrace_attach_convert`] (1) or by a detach before it (2);
/// the attach thread waits on it.
static CONVERT_DONE: AtomicU32 = AtomicU32::new(0);
const ABORTED: u32 = 2;

const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const PAGE: u64 = 4096;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

/// Whether five bytes are a sled or a NOP5 variant the table accepts.
fn convertible(b: &[u8]) -> bool {
    b == [0x90; 5] || (b[..4] == NOP5[..4] && b != NOP5)
}

/// Converts every published sled into the canonical 5-byte NOP, then
/// serialises every core. Called by the injector on one thread while every
/// other thread is held outside the sleds; takes no lock, allocates
/// nothing, never panics. Returns the number converted, or -1 when nothing
/// was prepared. Sites whose bytes are no longer a sled are skipped (and
/// counted as failed).
#[unsafe(no_mangle)]
pub extern "C" fn livetrace_attach_convert() -> i64 {
    let p = PREPARED.load(Acquire);
    if p.is_null() {
        return -1;
    }
    // SAFETY: published by the attach thread once fully built, and never
    // freed while the state can still lead here (it is leaked).
    let p = unsafe { &mut *p };
    let (mut done, mut failed) = (0u64, 0u64);
    let mut i = 0;
    while i < p.sleds.len() {
        // One group: the sleds within one page (a sled may run 4 bytes
        // past it).
        let start = p.sleds[i];
        let page_end = (start & !(PAGE - 1)) + PAGE;
        let mut j = i;
        while j < p.sleds.len() && p.sleds[j] < page_end {
            j += 1;
        }
        let end = p.sleds[j - 1] + 5;
        let len = (end - start) as usize;
        if len > p.page.len() {
            failed += (j - i) as u64;
            i = j;
            continue;
        }
        let buf = &mut p.page[..len];
        // SAFETY: reads into our buffer from the process's own memory.
        let n = unsafe { libc::pread(p.mem_fd, buf.as_mut_ptr().cast(), len, start as i64) };
        if n != len as isize {
            failed += (j - i) as u64;
            i = j;
            continue;
        }
        let mut changed = 0;
        for &s in &p.sleds[i..j] {
            let o = (s - start) as usize;
            if convertible(&buf[o..o + 5]) {
                buf[o..o + 5].copy_from_slice(&NOP5);
                changed += 1;
            } else if buf[o..o + 5] != NOP5 {
                failed += 1;
            }
        }
        if changed > 0 {
            // The kernel writes through to the private text page without
            // changing its protection.
            // SAFETY: writes our buffer back over the bytes just read.
            let w = unsafe { libc::pwrite(p.mem_fd, buf.as_ptr().cast(), len, start as i64) };
            let check = &mut p.check[..len];
            // SAFETY: reads back into our second buffer.
            let r = unsafe { libc::pread(p.mem_fd, check.as_mut_ptr().cast(), len, start as i64) };
            if w != len as isize || r != len as isize || check != &p.page[..len] {
                failed += changed;
            } else {
                done += changed;
            }
        }
        i = j;
    }
    // No thread may run bytes it fetched before the rewrite.
    // SAFETY: registered by the attach thread before publishing.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
        )
    };
    CONVERTED.store(done, SeqCst);
    CONVERT_FAILED.store(failed, SeqCst);
    CONVERT_DONE.store(1, Release);
    futex_wake(&CONVERT_DONE);
    done as i64
}

// ---------------------------------------------------------------------------
// Start.

/// `flags` bit: the caller converts the sleds with every thread held
/// (through [`livetrace_attach_convert`]); without it the attach thread
/// converts them itself by stopping the world with a signal.
pub const CONVERT_BY_CALLER: u64 = 1;
/// `flags` bit: start no control socket.
pub const NO_SERVER: u64 = 2;

/// How long the attach thread waits for the caller's conversion before
/// doing it itself (the injector died, say).
const CONVERT_WAIT: Duration = Duration::from_secs(60);

/// Starts livetrace in a running process (see the module docs); returns 0,
/// or a negative errno (`-EALREADY` when started already).
#[unsafe(no_mangle)]
pub extern "C" fn livetrace_attach_start(flags: u64) -> i64 {
    std::panic::catch_unwind(|| {
        if livetrace_attach_state
            .compare_exchange(IDLE, PREPARING, AcqRel, Acquire)
            .is_err()
        {
            return -(libc::EALREADY as i64);
        }
        let spawned = std::thread::Builder::new()
            .name("livetrace-attach".into())
            .spawn(move || {
                if std::panic::catch_unwind(|| attach(flags)).is_err() {
                    fail("internal error while attaching");
                }
            });
        match spawned {
            Ok(_) => 0,
            Err(e) => {
                fail(format!("cannot start the attach thread: {e}"));
                -(e.raw_os_error().unwrap_or(libc::EAGAIN) as i64)
            }
        }
    })
    .unwrap_or(-(libc::EFAULT as i64))
}

/// Signal dispositions as the program had them before livetrace.
struct Saved {
    sigs: Vec<(libc::c_int, libc::sigaction)>,
}

static SAVED: AtomicPtr<Saved> = AtomicPtr::new(std::ptr::null_mut());

/// Lets this thread (and the threads it starts) take every signal: it
/// inherited the mask of whichever program thread started it.
fn unblock_signals() {
    // SAFETY: an empty set is valid; sets this thread's mask only.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

fn attach(flags: u64) {
    unblock_signals();
    crate::tls::set_loaded_late(true);
    let mut blocked = BlockedSignals::start();
    // The core checks its thread state is in static TLS (a thread spawned
    // and joined).
    if let Err(e) = livetrace_ftrace::inspect(|_| ()) {
        return fail(match e {
            livetrace::Error::DynamicTls => format!(
                "livetrace's thread-local state is not in static TLS (offset {:#x}): {e}",
                crate::tls::static_tls_offset()
            ),
            e => e.to_string(),
        });
    }
    match livetrace_ftrace::inside_tpoff() {
        Some(off) => livetrace_attach_unload[1].store(off as usize, Release),
        None => return fail("livetrace's thread-local state is not in static TLS"),
    }
    livetrace_attach_unload[0].store(
        livetrace_tracers::retstack::return_to_handler_addr(),
        Release,
    );
    livetrace_attach_unload[2].store(
        livetrace_tracers::retstack::return_to_handler_full_addr(),
        Release,
    );
    blocked.sample();
    let serial = crate::interpose::serialize();
    let prepared = (|| -> Result<(Vec<u64>, Vec<Pin>), livetrace::Error> {
        let scan = livetrace_ftrace::discover()?;
        let exe_sites = executable_macro_sites();
        let ext: Vec<ExternalSite<'_>> = exe_sites
            .iter()
            .map(|s| ExternalSite {
                addr: s.addr,
                name: s.path,
                file: s.file,
                line: s.line,
            })
            .collect();
        let ins = livetrace_ftrace::insert_external(&ext)?;
        if crate::verbose() {
            eprintln!(
                "livetrace: attach: {} compiler site(s), {} #[traced] site(s) of the executable",
                scan.added_sites, ins.inserted
            );
        }
        livetrace_ftrace::inspect(|t| {
            let mut sleds: Vec<u64> = t
                .records()
                .iter()
                .filter(|r| !r.is_live())
                .map(|r| r.ip() as u64)
                .collect();
            sleds.sort_unstable();
            // Keep the objects with sleds loaded until they are converted.
            let mut pins = Vec::new();
            let with_sleds: std::collections::HashSet<_> = t
                .records()
                .iter()
                .filter(|r| !r.is_live())
                .map(|r| r.object())
                .collect();
            for o in t.objects() {
                if !o.is_main() && with_sleds.contains(&o.id()) {
                    if let Some(p) = Pin::take(o.dl_name()) {
                        pins.push(p);
                    }
                }
            }
            (sleds, pins)
        })
    })();
    drop(serial);
    let (sleds, pins) = match prepared {
        Ok(v) => v,
        Err(e) => return fail(e.to_string()),
    };
    // Before anything can probe threads or stop the world.
    if let Err(e) = choose_signals(blocked) {
        return fail(e);
    }
    if flags & CONVERT_BY_CALLER != 0 {
        if let Err(e) = prepare_conversion(sleds) {
            return fail(e);
        }
        publish(READY, "");
        let deadline = Instant::now() + CONVERT_WAIT;
        while CONVERT_DONE.load(Acquire) == 0 && Instant::now() < deadline {
            futex_wait(&CONVERT_DONE, 0, Duration::from_millis(200));
        }
        if CONVERT_DONE.load(Acquire) == ABORTED {
            // Detached before converting: nothing else was started.
            drop(pins);
            return detach();
        }
        if CONVERT_DONE.load(Acquire) == 0 {
            eprintln!(
                "livetrace: attach: the sleds were not converted by the injector in {}s; \
                 converting them with the other threads stopped by a signal",
                CONVERT_WAIT.as_secs()
            );
        }
    }
    // Records of sleds now holding the NOP5 are marked converted; any left
    // (not converted above) are converted by stopping the world.
    let serial = crate::interpose::serialize();
    let conv = livetrace_ftrace::convert(None, ConvertPolicy::StopTheWorld);
    drop(serial);
    drop(pins);
    let summary = match conv {
        Ok(c) => format!(
            "{} site(s) converted{}",
            c.converted,
            if c.failed.is_empty() {
                String::new()
            } else {
                format!(", {} left unconverted", c.failed.len())
            }
        ),
        Err(e) => format!("conversion: {e}"),
    };
    livetrace_attach_state.store(STARTING, Release);
    let report = {
        let _serial = crate::interpose::serialize();
        livetrace::init()
    };
    if let Err(e) = report {
        return fail(e.to_string());
    }
    crate::STATE.store(crate::ACTIVE, Release);
    if flags & NO_SERVER != 0 {
        return publish(SERVING, &summary);
    }
    match livetrace_server::serve() {
        Ok(path) => {
            if crate::verbose() {
                eprintln!(
                    "livetrace: attached: {summary}; control socket {}",
                    path.display()
                );
            }
            publish(SERVING, &path.display().to_string())
        }
        Err(e) => fail(format!("cannot start the control socket: {e}")),
    }
}

fn prepare_conversion(sleds: Vec<u64>) -> Result<(), String> {
    // SAFETY: registering for sync-core membarrier is process-wide and
    // idempotent.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
        )
    };
    if rc != 0 {
        return Err(format!(
            "membarrier sync-core is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: opens a NUL-terminated path; the descriptor is kept for the
    // life of the process (the converter may run at any time).
    let fd = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "/proc/self/mem: {}",
            std::io::Error::last_os_error()
        ));
    }
    let n = sleds.len();
    let p = Box::new(Prepared {
        mem_fd: fd,
        sleds,
        page: vec![0u8; PAGE as usize + 8],
        check: vec![0u8; PAGE as usize + 8],
    });
    let ptr = Box::into_raw(p);
    // SAFETY: just made, not shared yet.
    let addr = unsafe { (*ptr).sleds.as_ptr() } as usize;
    livetrace_attach_sleds[0].store(addr, Release);
    livetrace_attach_sleds[1].store(n, Release);
    let old = PREPARED.swap(ptr, AcqRel);
    debug_assert!(old.is_null());
    Ok(())
}

/// A reference that keeps a library loaded (`dlopen` with `RTLD_NOLOAD`).
struct Pin(*mut c_void);

impl Pin {
    fn take(name: &str) -> Option<Pin> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: NOLOAD only takes a reference to an already loaded object.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_NOW) };
        (!h.is_null()).then_some(Pin(h))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: our own reference.
        unsafe { libc::dlclose(self.0) };
    }
}

// ---------------------------------------------------------------------------
// Signals.

/// Whether `sig` has its default disposition and no thread blocks it.
fn free_signal(sig: libc::c_int, blocked: u64) -> bool {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: queries only.
    if unsafe { libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: filled by sigaction.
    let cur = unsafe { cur.assume_init() };
    cur.sa_sigaction == libc::SIG_DFL && blocked & (1u64 << (sig - 1)) == 0
}

/// Signals some thread keeps blocked, from `/proc/self/task/*/status`,
/// sampled several times while the attach thread works: a thread's mask
/// counts only for what it blocks in every sample, threads that come and
/// go meanwhile not at all, and a mask blocking everything not at all
/// (glibc blocks everything while it creates a thread, and a new thread
/// starts so, for as long as they wait for a CPU or the injector holds
/// them; a thread that really blocks everything cannot answer the thread
/// probes on any signal).
struct BlockedSignals {
    steady: std::collections::HashMap<String, u64>,
    samples: u32,
    since: Instant,
}

impl BlockedSignals {
    fn read() -> std::collections::HashMap<String, u64> {
        let mut out = std::collections::HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
                    // Held by the injector (at a clone, say): not its own
                    // doing.
                    if s.lines().any(|l| l.starts_with("State:\tt")) {
                        continue;
                    }
                    if let Some(v) = s.lines().find_map(|l| l.strip_prefix("SigBlk:")) {
                        let mask = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
                        // Everything blocked: creating or starting a thread
                        // (for as long as it waits for a CPU), or a thread
                        // no signal-based probe could ever reach anyway.
                        if mask.count_ones() < 56 {
                            out.insert(e.file_name().to_string_lossy().into_owned(), mask);
                        }
                    }
                }
            }
        }
        out
    }

    fn start() -> BlockedSignals {
        BlockedSignals {
            steady: BlockedSignals::read(),
            samples: 1,
            since: Instant::now(),
        }
    }

    fn sample(&mut self) {
        let next = BlockedSignals::read();
        self.steady.retain(|tid, mask| match next.get(tid) {
            Some(m) => {
                *mask &= m;
                true
            }
            None => false,
        });
        self.samples += 1;
    }

    /// The mask, after at least 4 samples over at least 10 ms, and which
    /// threads block what.
    fn blocked(mut self) -> (u64, String) {
        while self.samples < 4 || self.since.elapsed() < Duration::from_millis(10) {
            std::thread::sleep(Duration::from_millis(3));
            self.sample();
        }
        let who: Vec<String> = self
            .steady
            .iter()
            .filter(|(_, &m)| m != 0)
            .map(|(t, m)| format!("thread {t}: {m:#x}"))
            .collect();
        (self.steady.values().fold(0, |a, m| a | m), who.join(", "))
    }
}

/// Picks the world signal (thread probes and stops) among real-time
/// signals the program does not use, and saves the program's dispositions
/// of it and of SIGTRAP.
fn choose_signals(blocked: BlockedSignals) -> Result<(), String> {
    let (blocked, who) = blocked.blocked();
    let Some(world) = (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .rev()
        .find(|&s| free_signal(s, blocked))
    else {
        let handled: Vec<String> = (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .filter(|&s| !free_signal(s, 0))
            .map(|s| s.to_string())
            .collect();
        return Err(format!(
            "every real-time signal is in use by the program (blocked: {who}; with a \
             handler or ignored: {}); livetrace needs one",
            if handled.is_empty() {
                "none".into()
            } else {
                handled.join(" ")
            }
        ));
    };
    livetrace::raw::poke::set_probe_signal(world).map_err(|e| e.to_string())?;
    livetrace_attach_signals.store(
        (1u64 << (libc::SIGTRAP - 1)) | (1u64 << (world - 1)),
        Release,
    );
    let mut sigs = Vec::new();
    for sig in [libc::SIGTRAP, world] {
        let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries only.
        if unsafe { libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) } == 0 {
            // SAFETY: filled by sigaction.
            sigs.push((sig, unsafe { cur.assume_init() }));
        }
    }
    let old = SAVED.swap(Box::into_raw(Box::new(Saved { sigs })), AcqRel);
    if !old.is_null() {
        // SAFETY: a previous Saved of ours, no longer published.
        drop(unsafe { Box::from_raw(old) });
    }
    Ok(())
}

/// Signals pending for some thread or for the process.
fn pending_anywhere() -> u64 {
    let mut mask = 0u64;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
                for l in s.lines() {
                    if let Some(v) = l
                        .strip_prefix("SigPnd:")
                        .or_else(|| l.strip_prefix("ShdPnd:"))
                    {
                        mask |= u64::from_str_radix(v.trim(), 16).unwrap_or(0);
                    }
                }
            }
        }
    }
    mask
}

/// Puts back the dispositions livetrace changed: only those whose handler
/// is still ours (the program may have set its own since). A real-time
/// signal of ours still pending somewhere (a probe a thread never
/// answered) would kill the process under its default action: that one is
/// ignored instead.
fn restore_signals() {
    let saved = SAVED.swap(std::ptr::null_mut(), AcqRel);
    if saved.is_null() {
        return;
    }
    // SAFETY: ours, unpublished above.
    let saved = unsafe { Box::from_raw(saved) };
    for (sig, old) in &saved.sigs {
        let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries only.
        if unsafe { libc::sigaction(*sig, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: filled by sigaction.
        let cur = unsafe { cur.assume_init() };
        if !crate::interpose::is_own(cur.sa_sigaction) {
            continue;
        }
        let mut put = *old;
        if *sig != libc::SIGTRAP
            && old.sa_sigaction == libc::SIG_DFL
            && pending_anywhere() & (1u64 << (*sig - 1)) != 0
        {
            put.sa_sigaction = libc::SIG_IGN;
        }
        // SAFETY: reinstalls the disposition the program had (or ignores a
        // stray signal of ours).
        unsafe { libc::sigaction(*sig, &put, std::ptr::null_mut()) };
    }
}

// ---------------------------------------------------------------------------
// Detach.

/// Starts tearing livetrace down (see the module docs); returns 0, or a
/// negative errno (`-EINVAL` when not attached, or while starting or
/// detaching already). Before the conversion (`READY`) it makes the attach
/// thread give up instead.
#[unsafe(no_mangle)]
pub extern "C" fn livetrace_detach_start() -> i64 {
    std::panic::catch_unwind(|| {
        let cur = livetrace_attach_state.load(Acquire);
        if cur == READY {
            // The attach thread waits for a conversion that will not come:
            // it tears down itself.
            if CONVERT_DONE
                .compare_exchange(0, ABORTED, AcqRel, Acquire)
                .is_ok()
            {
                livetrace_attach_state.store(DETACHING, Release);
                futex_wake(&CONVERT_DONE);
                return 0;
            }
        }
        if !matches!(cur, SERVING | FAILED | UNLOADABLE) {
            return -(libc::EINVAL as i64);
        }
        if cur == UNLOADABLE {
            return 0;
        }
        livetrace_attach_state.store(DETACHING, Release);
        let spawned = std::thread::Builder::new()
            .name("livetrace-detach".into())
            .spawn(|| {
                if std::panic::catch_unwind(detach).is_err() {
                    fail("internal error while detaching");
                }
            });
        match spawned {
            Ok(_) => 0,
            Err(e) => {
                fail(format!("cannot start the detach thread: {e}"));
                -(e.raw_os_error().unwrap_or(libc::EAGAIN) as i64)
            }
        }
    })
    .unwrap_or(-(libc::EFAULT as i64))
}

/// How long detaching keeps retrying to take tracers off the sites.
const DETACH_RETRY: Duration = Duration::from_secs(10);

/// Unregisters every ops still registered once the sessions are gone,
/// retrying until none is left or `patience` runs out. A session whose
/// stop was refused — a batch refuses while some thread cannot take
/// SIGTRAP, which is mostly transient: a thread being created, stopped by
/// a debugger meanwhile — leaves its ops registered and its sites live;
/// giving up on the first refusal would leave livetrace loaded for good.
fn unregister_leftovers(patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    let mut last_err = None;
    loop {
        let left = livetrace::enabled_functions().map_err(|e| e.to_string())?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} function(s) are still traced or patched ({}{}){}; not unloading",
                left.len(),
                left[0].name,
                if left.len() > 1 { ", …" } else { "" },
                last_err.map_or(String::new(), |e| format!(": {e}"))
            ));
        }
        for ops in livetrace_ftrace::registered().map_err(|e| e.to_string())? {
            if let Err(e) = livetrace_ftrace::unregister(&ops) {
                last_err = Some(e.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gives every relocated function its original bytes back before the
/// library goes: their entries jump to detours that call into it. A
/// detour a thread may still be in stays allocated (retired, never freed
/// once the library is gone); the function itself no longer leads there.
fn unrelocate_all() -> Result<(), String> {
    let left =
        livetrace_ftrace::unrelocate_all(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    if left > 0 {
        return Err(format!(
            "{left} relocated function(s) could not be given their bytes back; not unloading"
        ));
    }
    Ok(())
}

fn detach() {
    // The injector that started this lets go of the process (ptrace) right
    // after its call returns; every batch below is refused while it is
    // still attached.
    let deadline = Instant::now() + Duration::from_secs(10);
    while livetrace::raw::poke::world::tracer_pid().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    unblock_signals();
    // Every connection ends: its sessions stop (sites back to NOPs,
    // quiescence waited for) and its patches are reverted.
    livetrace_server::shutdown(Duration::from_secs(10));
    if let Err(e) = livetrace_server::revert_all_patches() {
        return fail(format!("cannot revert a patch: {e}"));
    }
    if let Err(m) = unregister_leftovers(DETACH_RETRY) {
        return fail(m);
    }
    if let Err(m) = unrelocate_all() {
        return fail(m);
    }
    crate::STATE.store(crate::OFF, Release);
    restore_signals();
    crate::tls::forget_destructors();
    // The ring buffers' thread-exit hook (a pthread key destructor).
    livetrace_ring::forget_exit_hook();
    let code: Vec<u64> = crate::code::ranges()
        .into_iter()
        .flat_map(|(a, b)| [a as u64, b as u64])
        .collect();
    let code = Box::leak(code.into_boxed_slice());
    livetrace_attach_code[0].store(code.as_ptr() as usize, Release);
    livetrace_attach_code[1].store(code.len() / 2, Release);
    crate::code::release_at_unload();
    publish(UNLOADABLE, "");
}

// ---------------------------------------------------------------------------
// The executable's own `#[traced]` sites.

/// One record of an executable's `livetrace_sites` section.
struct ExeSite {
    addr: usize,
    path: &'static str,
    file: &'static str,
    line: u32,
}

/// The `#[traced]` sites of an executable that links livetrace itself
/// (its `livetrace_sites` section, read in memory, after relocation).
/// Every pointer is checked to lie in the executable's loaded segments.
fn executable_macro_sites() -> Vec<ExeSite> {
    let Some(sections) = crate::ctor::elf_sections("/proc/self/exe") else {
        return Vec::new();
    };
    let Some(sec) = sections.iter().find(|s| s.name == "livetrace_sites") else {
        return Vec::new();
    };
    let (bias, segs) = main_segments();
    let readable = |a: usize, len: usize| {
        segs.iter()
            .any(|&(lo, hi)| lo <= a && a.checked_add(len).is_some_and(|e| e <= hi))
    };
    let start = bias.wrapping_add(sec.addr as usize);
    let size = sec.size as usize;
    if !size.is_multiple_of(40) || !readable(start, size) || !start.is_multiple_of(8) {
        return Vec::new();
    }
    let s = |p: usize| -> Option<&'static str> {
        if !readable(p, 16) || !p.is_multiple_of(8) {
            return None;
        }
        // SAFETY: 16 readable bytes of the executable: a `&'static str`
        // as the macro laid it out (pointer, length).
        let (ptr, len) = unsafe { (*(p as *const usize), *((p + 8) as *const usize)) };
        if len > 4096 || !readable(ptr, len) {
            return None;
        }
        // SAFETY: `len` readable bytes of the executable, never written.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        std::str::from_utf8(bytes).ok()
    };
    let mut out = Vec::new();
    for i in 0..size / 40 {
        // SAFETY: inside the checked section, 8-aligned.
        let w = |k: usize| unsafe { *((start + i * 40 + k * 8) as *const usize) };
        let addr = w(0);
        if addr == 0 {
            continue;
        }
        let (Some(path), Some(file)) = (s(w(1)), s(w(2))) else {
            continue;
        };
        out.push(ExeSite {
            addr,
            path,
            file,
            line: w(3) as u32,
        });
    }
    out
}

/// The executable's load bias and readable segments.
fn main_segments() -> (usize, Vec<(usize, usize)>) {
    unsafe extern "C" fn cb(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> i32 {
        // SAFETY: the loader passes a valid info; `data` is ours.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut (usize, Vec<(usize, usize)>))) };
        let bias = info.dlpi_addr as usize;
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's program headers of the object.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        out.0 = bias;
        out.1 = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_R != 0)
            .map(|p| {
                let lo = bias.wrapping_add(p.p_vaddr as usize);
                (lo, lo.wrapping_add(p.p_memsz as usize))
            })
            .collect();
        1 // the executable comes first
    }
    let mut out: (usize, Vec<(usize, usize)>) = (0, Vec::new());
    // SAFETY: the callback writes only `out`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut out as *mut _ as *mut c_void) };
    out
}
