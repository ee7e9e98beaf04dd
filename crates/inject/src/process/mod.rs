//! An attached process: every thread seized, held or running as asked,
//! and calls made on one thread at a time with everything restored after.
//!
//! This module holds the [`Process`] and what its threads' states are;
//! its children hold each thing done with them: attaching, handling
//! ptrace events, holding the world, memory, picking a thread for a call,
//! and the call itself.

mod attach;
mod call;
mod events;
mod hold;
mod memory;
mod pick;

use attach::{exited, traced_by_us};
use call::restart_of;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::elf::{self, Module};
use crate::error::Error;
use crate::procfs::{self, InSyscall, Mapping};
use crate::sys::{self, Event, Regs};
use crate::target::{Refusal, Target};

/// How long a thread gets to stop after `PTRACE_INTERRUPT`.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Process::call`] looks for a thread at a safe point.
const PICK_TIMEOUT: Duration = Duration::from_secs(10);
/// Below the stack pointer, the System V ABI's red zone: leaf code may keep
/// data there, so injected frames start below it.
const RED_ZONE: u64 = 128;
/// Stack an injected call may use: a thread with less room below its
/// stack pointer (a small signal stack) is not used.
const STACK_NEED_LIBC: u64 = 64 << 10;
const STACK_NEED_LOCK_FREE: u64 = 16 << 10;
/// How much of a thread's stack, from its stack pointer up, is searched
/// for return addresses into unsafe code before a call into the C library:
/// the innermost frames, where a thread that holds malloc's or the
/// loader's locks has them (a signal frame included).
const LOCK_SCAN: u64 = 16 << 10;
/// Stacks larger than this (from the stack pointer to the end of its
/// mapping) are not scanned and count as unverifiable.
const MAX_STACK_SCAN: u64 = 64 << 20;

/// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`: the kernel
/// re-executes the system call when no handler runs.
const ERESTART_REEXEC: [i64; 3] = [-512, -513, -514];
/// `-ERESTART_RESTARTBLOCK`: the kernel continues it with `restart_syscall`.
const ERESTART_RESTARTBLOCK: i64 = -516;
const NR_RESTART_SYSCALL: u64 = 219;
/// `syscall`.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
const EFLAGS_TF: u64 = 0x100;
const EFLAGS_DF: u64 = 0x400;

/// The signals a fault raises (bit `n - 1` for signal `n`).
const SYNCHRONOUS_SIGNALS: u64 = (1 << (libc::SIGSEGV - 1))
    | (1 << (libc::SIGBUS - 1))
    | (1 << (libc::SIGILL - 1))
    | (1 << (libc::SIGFPE - 1))
    | (1 << (libc::SIGTRAP - 1));

/// System calls a thread blocks in while idle, holding no lock of the C
/// library: the best threads to borrow for a call.
const IDLE_SYSCALLS: &[i64] = &[
    0,   // read
    7,   // poll
    23,  // select
    34,  // pause
    35,  // nanosleep
    43,  // accept
    45,  // recvfrom
    47,  // recvmsg
    61,  // wait4
    128, // rt_sigtimedwait
    130, // rt_sigsuspend
    230, // clock_nanosleep
    232, // epoll_wait
    247, // waitid
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    288, // accept4
    299, // recvmmsg
    441, // epoll_pwait2
];

/// What a called function may do, which decides which threads may run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Safety {
    /// It takes no lock and allocates nothing: any thread with some stack
    /// room can run it, even with every other thread held anywhere.
    LockFree,
    /// It calls into the C library (malloc, the loader): it must not run on
    /// a thread that is inside malloc, the dynamic loader, thread creation
    /// or exit, or that returns into them (it may hold their locks), nor
    /// inside an interrupted system call it cannot restart.
    CallsLibc,
}

/// An argument of an injected call.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    /// Passed as is.
    Value(u64),
    /// Copied onto the thread's stack for the call (below the red zone)
    /// and passed by address; the stack is restored after.
    Bytes(&'a [u8]),
}

/// A thread found where a check forbids it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    /// The thread.
    pub tid: i32,
    /// The address found.
    pub addr: u64,
    /// Whether it was the thread's instruction pointer (else a word of
    /// its stack).
    pub in_rip: bool,
}

/// What attaching cost the process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// The longest time any one thread was stopped.
    pub longest_stop: Duration,
    /// That thread.
    pub longest_stop_tid: i32,
    /// Threads seen.
    pub threads: usize,
    /// Calls made.
    pub calls: usize,
    /// Times every thread was held.
    pub holds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// In `PTRACE_EVENT_STOP` (our interrupt, a new thread's first stop),
    /// on its way back to user space, where the registers are the
    /// thread's own: a call can start here. Never an event stop inside a
    /// system call (a clone reported), which is resumed at once
    /// ([`Process::restop`]).
    Stopped,
    /// In a job-control group-stop.
    GroupStop,
    /// In a signal-delivery-stop; the signal to deliver on resume (0 for
    /// one suppressed: an injected call's return).
    Signal(i32),
}

struct Thread {
    state: State,
    /// An interrupt was sent, or the thread is new, and its
    /// `PTRACE_EVENT_STOP` has not been reported yet.
    stop_pending: bool,
    /// Kept stopped even while the world runs (a call is being set up).
    pinned: bool,
    /// Signals that arrived during an injected call, delivered on resume.
    deferred: Vec<libc::siginfo_t>,
    stopped_since: Option<Instant>,
    longest_stop: Duration,
    /// Where `errno` is (from `__errno_location`), once known.
    errno_at: Option<u64>,
    /// It has run since it was created (a thread at its first stop is
    /// inside `clone`, with every signal blocked and its thread structure
    /// not set up yet).
    started: bool,
}

impl Thread {
    fn new(stop_pending: bool) -> Thread {
        Thread {
            started: !stop_pending,
            state: State::Running,
            stop_pending,
            pinned: false,
            deferred: Vec::new(),
            stopped_since: None,
            longest_stop: Duration::ZERO,
            errno_at: None,
        }
    }
}

fn ptrace_err(op: &'static str, tid: i32) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Ptrace { op, tid, source }
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// A process attached with ptrace. Every thread is seized (threads it
/// creates are attached as they appear); the process keeps running unless
/// [`Process::hold`] stops it. Dropping it detaches, leaving every thread
/// as it was.
///
/// Not `Send`: ptrace binds a tracee to the thread that attached.
pub struct Process {
    target: Target,
    pid: i32,
    mem: File,
    threads: BTreeMap<i32, Thread>,
    held: bool,
    /// Where injected calls return: an unmapped address, whose fault ends
    /// the call.
    ret_addr: u64,
    stats: Stats,
    detached: bool,
    /// The objects' unwind tables, for walking stopped threads' stacks.
    unwind: crate::unwind::Cache,
    _not_send: PhantomData<*const ()>,
}

impl Process {
    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What it was inspected as.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The attached threads.
    pub fn tids(&self) -> Vec<i32> {
        self.threads.keys().copied().collect()
    }

    /// Whether every thread is held.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// What attaching has cost so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        let now = Instant::now();
        for (&tid, t) in &self.threads {
            let d = t
                .longest_stop
                .max(t.stopped_since.map_or(Duration::ZERO, |s| now - s));
            if d > s.longest_stop {
                s.longest_stop = d;
                s.longest_stop_tid = tid;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
