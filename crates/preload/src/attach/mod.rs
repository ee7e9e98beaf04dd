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

mod convert;
mod detach;
mod exe_sites;
mod signals;
mod start;

pub use convert::livetrace_attach_convert;
use convert::*;
pub use detach::livetrace_detach_start;
use detach::*;
use exe_sites::*;
use signals::*;
use start::*;
pub use start::{livetrace_attach_start, CONVERT_BY_CALLER, NO_SERVER};
