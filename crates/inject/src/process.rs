//! An attached process: every thread seized, held or running as asked,
//! and calls made on one thread at a time with everything restored after.

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
    /// Seizes every thread of `target` (already inspected). The threads
    /// keep running. Fails with a [`Refusal`] (nothing changed) when the
    /// kernel does not let us.
    pub fn seize(target: Target) -> Result<Process, Error> {
        let pid = target.pid;
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::Refused(Refusal::NoSuchProcess(pid)),
                io::ErrorKind::PermissionDenied => Error::Refused(explain_eperm(&target)),
                _ => Error::Io(e),
            })?;
        let maps = procfs::maps(pid).map_err(Error::Io)?;
        let ret_addr = unmapped_page(&maps).ok_or_else(|| {
            Error::NoSafeThread("no unmapped low page for the injected calls' return".into())
        })?;
        let mut p = Process {
            target,
            pid,
            mem,
            threads: BTreeMap::new(),
            held: false,
            ret_addr,
            stats: Stats::default(),
            detached: false,
            unwind: crate::unwind::Cache::default(),
            _not_send: PhantomData,
        };
        p.seize_threads()?;
        Ok(p)
    }

    /// Detaches from every thread (as dropping does) but keeps the
    /// process's memory open: [`Process::read`] and [`Process::write`]
    /// still work, and [`Process::wait_until`] waits with nothing to pass
    /// through, until [`Process::reseize`]. For what the process must do
    /// untraced: livetrace refuses to patch a traced process, and a
    /// thread a tracer keeps stopped a moment after creating it still has
    /// the creation mask that blocks every signal.
    pub fn let_go(&mut self) -> Result<(), Error> {
        self.detach_all()
    }

    /// Seizes every thread again after [`Process::let_go`].
    pub fn reseize(&mut self) -> Result<(), Error> {
        if !self.detached {
            return Ok(());
        }
        self.detached = false;
        self.held = false;
        self.seize_threads()
    }

    /// Seizes every thread, and threads created meanwhile.
    fn seize_threads(&mut self) -> Result<(), Error> {
        let p = self;
        let pid = p.pid;
        let options = sys::PTRACE_O_TRACECLONE | sys::PTRACE_O_TRACEEXEC;
        loop {
            let tids = procfs::threads(pid).map_err(|_| Error::Exited(pid))?;
            if tids.is_empty() {
                return Err(Error::Exited(pid));
            }
            let mut new = 0;
            for tid in tids {
                if p.threads.contains_key(&tid) {
                    continue;
                }
                match sys::seize(tid, options) {
                    Ok(()) => {
                        p.threads.insert(tid, Thread::new(false));
                        new += 1;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        // A thread created by one we seized is ours
                        // already (auto-attached); its clone event will
                        // come. One that has exited meanwhile (a zombie
                        // cannot be attached) is no concern. Anything
                        // else is a refusal.
                        if !traced_by_us(pid, tid) && !exited(pid, tid) {
                            if p.threads.is_empty() {
                                p.detached = true;
                                return Err(Error::Refused(explain_eperm(&p.target)));
                            }
                            return Err(Error::Ptrace {
                                op: "seize",
                                tid,
                                source: e,
                            });
                        }
                    }
                    Err(e) => return Err(ptrace_err("seize", tid)(e)),
                }
            }
            p.pump_once()?;
            if new == 0 {
                break;
            }
        }
        p.stats.threads = p.stats.threads.max(p.threads.len());
        Ok(())
    }

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

    // -----------------------------------------------------------------
    // Events.

    fn mark_stopped(&mut self, tid: i32, state: State) {
        if let Some(t) = self.threads.get_mut(&tid) {
            // A thread let finish a system call before stopping again
            // ([`Process::restop`]) was stopped all along.
            if t.stopped_since.is_none() {
                t.stopped_since = Some(Instant::now());
            }
            t.state = state;
        }
    }

    fn note_resumed(t: &mut Thread, tid: i32, stats: &mut Stats) {
        if !t.stop_pending {
            t.started = true;
        }
        if let Some(since) = t.stopped_since.take() {
            let d = since.elapsed();
            if d > t.longest_stop {
                t.longest_stop = d;
            }
            if d > stats.longest_stop {
                stats.longest_stop = d;
                stats.longest_stop_tid = tid;
            }
        }
        t.state = State::Running;
    }

    /// Resumes one stopped thread as it should run: a suppressed or
    /// passed-through signal, deferred signals delivered, a group-stop
    /// kept.
    fn resume(&mut self, tid: i32) -> Result<(), Error> {
        let pid = self.pid;
        let Some(t) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        let mut deliver = 0;
        match t.state {
            State::Running => return Ok(()),
            State::GroupStop => {
                // LISTEN keeps it in its group-stop while we can still
                // interrupt it.
                match sys::listen(tid) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(ptrace_err("listen", tid)(e)),
                }
                Self::note_resumed(t, tid, &mut self.stats);
                return Ok(());
            }
            State::Stopped => {}
            State::Signal(sig) => deliver = sig,
        }
        let mut deferred = std::mem::take(&mut t.deferred);
        if deliver == 0 && matches!(t.state, State::Signal(_)) && !deferred.is_empty() {
            // In a signal-delivery-stop: the first deferred signal goes
            // out with its own siginfo.
            let first = deferred.remove(0);
            if sys::set_siginfo(tid, &first).is_ok() {
                deliver = first.si_signo;
            } else {
                deferred.insert(0, first);
            }
        }
        for si in &deferred {
            // The rest are sent again (standard signals coalesce anyway).
            let _ = sys::tgkill(pid, tid, si.si_signo);
        }
        match sys::cont(tid, deliver) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(ptrace_err("cont", tid)(e)),
        }
        Self::note_resumed(t, tid, &mut self.stats);
        Ok(())
    }

    /// Handles one reported event. `call` is the thread running an
    /// injected call, whose own events the caller handles.
    fn handle(&mut self, tid: i32, ev: Event) -> Result<(), Error> {
        // Any trap ends a pending `PTRACE_INTERRUPT` (or a new thread's
        // pending first stop), not only `PTRACE_EVENT_STOP`: the kernel
        // clears the request at whatever stop comes first.
        if ev != Event::Exited {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.stop_pending = false;
            }
        }
        match ev {
            Event::Exited => {
                if let Some(mut t) = self.threads.remove(&tid) {
                    Self::note_resumed(&mut t, tid, &mut self.stats);
                }
                if self.threads.is_empty() {
                    return Err(Error::Exited(self.pid));
                }
                return Ok(());
            }
            Event::Exec => {
                return Err(Error::Exec(self.pid));
            }
            Event::Clone => {
                let new = sys::event_msg(tid).map_err(ptrace_err("geteventmsg", tid))? as i32;
                self.threads.entry(new).or_insert_with(|| Thread::new(true));
                self.stats.threads = self.stats.threads.max(self.threads.len());
                self.mark_stopped(tid, State::Stopped);
                // Stopped inside `clone`/`clone3`: the thread exists, but
                // the call has not returned, and `rax` holds the kernel's
                // `-ENOSYS` placeholder. Registers saved here and set back
                // after a call made from here would make the program see
                // `ENOSYS` for a thread it did create (glibc then creates
                // it again, on the same stack). So a thread is never kept
                // at this stop: it finishes the call and stops, with an
                // interrupt, on its way back to user space.
                let keep = self.held || self.threads.get(&tid).is_some_and(|t| t.pinned);
                if keep {
                    return self.restop(tid);
                }
            }
            Event::Stop(sig) => {
                // A new thread's first stop may come before its parent's
                // clone event.
                self.threads.entry(tid).or_insert_with(|| Thread::new(true));
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.stop_pending = false;
                }
                let st = if is_stop_signal(sig) {
                    State::GroupStop
                } else {
                    State::Stopped
                };
                self.mark_stopped(tid, st);
            }
            Event::Signal(sig) => {
                self.threads
                    .entry(tid)
                    .or_insert_with(|| Thread::new(false));
                self.mark_stopped(tid, State::Signal(sig));
            }
        }
        let keep = self.held || self.threads.get(&tid).is_some_and(|t| t.pinned);
        if !keep {
            self.resume(tid)?;
        }
        Ok(())
    }

    /// Lets a thread that must stay stopped but is at a stop inside a
    /// system call (an event stop) finish it, and stop again at once on
    /// its way back to user space (`PTRACE_EVENT_STOP`), where its
    /// registers are its own. An interrupt sent while it runs: "any trap
    /// clears a pending interrupt", so one sent before resuming might be
    /// consumed by this very stop.
    fn restop(&mut self, tid: i32) -> Result<(), Error> {
        match sys::cont(tid, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(ptrace_err("cont", tid)(e)),
        }
        let Some(t) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        // Still stopped as far as the statistics go: it is only finishing
        // its system call.
        t.state = State::Running;
        match sys::interrupt(tid) {
            Ok(()) => t.stop_pending = true,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(ptrace_err("interrupt", tid)(e)),
        }
        Ok(())
    }

    /// Collects every pending event once. Returns whether there was any.
    fn pump_once(&mut self) -> Result<bool, Error> {
        let mut any = false;
        let tids: Vec<i32> = self.threads.keys().copied().collect();
        for tid in tids {
            loop {
                let ev = match sys::wait(tid, true) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Event::Exited,
                    Err(e) => return Err(ptrace_err("waitpid", tid)(e)),
                };
                any = true;
                self.handle(tid, ev)?;
                if ev == Event::Exited {
                    break;
                }
            }
        }
        Ok(any)
    }

    /// Pumps events until `done` or `timeout`; returns whether `done`.
    fn pump_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Process) -> bool,
    ) -> Result<bool, Error> {
        let start = Instant::now();
        let mut idle = 0u32;
        loop {
            let any = self.pump_once()?;
            if done(self) {
                return Ok(true);
            }
            if start.elapsed() > timeout {
                return Ok(false);
            }
            if any {
                idle = 0;
            } else {
                idle += 1;
                if idle < 64 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
    }

    /// Lets the process run (passing its events through) until `cond`
    /// holds or `timeout` passes; returns whether it held. `cond` may read
    /// the process's memory.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        cond: impl FnMut(&Process) -> bool,
    ) -> Result<bool, Error> {
        self.pump_until(timeout, cond)
    }

    // -----------------------------------------------------------------
    // Holding the world.

    /// Stops every thread (and any created meanwhile) and keeps them
    /// stopped until [`Process::release`].
    pub fn hold(&mut self) -> Result<(), Error> {
        self.held = true;
        self.stats.holds += 1;
        loop {
            let tids: Vec<i32> = self.threads.keys().copied().collect();
            for tid in tids {
                let t = self.threads.get_mut(&tid).expect("listed");
                if t.state == State::Running && !t.stop_pending {
                    match sys::interrupt(tid) {
                        Ok(()) => t.stop_pending = true,
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => return Err(ptrace_err("interrupt", tid)(e)),
                    }
                }
            }
            let stopped = self.pump_until(STOP_TIMEOUT, |p| {
                p.threads.values().all(|t| t.state != State::Running)
            })?;
            if !stopped {
                let tid = self
                    .threads
                    .iter()
                    .find(|(_, t)| t.state == State::Running)
                    .map_or(0, |(&t, _)| t);
                return Err(self.not_stopped(tid));
            }
            // Every thread we know is stopped, so none can create more; a
            // thread listed here and unknown would have escaped us.
            let listed = procfs::threads(self.pid).map_err(|_| Error::Exited(self.pid))?;
            let unknown: Vec<i32> = listed
                .into_iter()
                .filter(|t| !self.threads.contains_key(t))
                .collect();
            if unknown.is_empty() {
                return Ok(());
            }
            for tid in unknown {
                match sys::seize(tid, sys::PTRACE_O_TRACECLONE | sys::PTRACE_O_TRACEEXEC) {
                    Ok(()) => {
                        self.threads.insert(tid, Thread::new(false));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) if traced_by_us(self.pid, tid) => {
                        let _ = e;
                        self.threads.insert(tid, Thread::new(true));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) && exited(self.pid, tid) => {}
                    Err(e) => return Err(ptrace_err("seize", tid)(e)),
                }
            }
        }
    }

    fn not_stopped(&self, tid: i32) -> Error {
        let kernel = procfs::status(&format!("{}/task/{tid}", self.pid))
            .map_or_else(|_| "gone".to_string(), |s| s.state.to_string());
        let ours = self.threads.get(&tid).map_or_else(
            || "unknown".to_string(),
            |t| format!("{:?}, stop pending {}", t.state, t.stop_pending),
        );
        Error::NotStopped {
            tid,
            state: format!("kernel state {kernel}; {ours}"),
        }
    }

    /// Lets every held thread run again.
    pub fn release(&mut self) -> Result<(), Error> {
        self.held = false;
        let tids: Vec<i32> = self
            .threads
            .iter()
            .filter(|(_, t)| !t.pinned)
            .map(|(&t, _)| t)
            .collect();
        let mut first_err = None;
        for tid in tids {
            if let Err(e) = self.resume(tid) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// A stopped thread's blocked signals, bit `n - 1` for signal `n`
    /// (every thread, while held): the mask it keeps, not the temporary
    /// one of a `ppoll` or `sigsuspend` it is stopped in.
    pub fn signal_mask(&self, tid: i32) -> Result<u64, Error> {
        sys::get_sigmask(tid).map_err(ptrace_err("getsigmask", tid))
    }

    /// Sets a stopped thread's blocked signals (every thread, while held).
    /// `SIGKILL` and `SIGSTOP` are never blocked whatever `mask` says.
    pub fn set_signal_mask(&self, tid: i32, mask: u64) -> Result<(), Error> {
        sys::set_sigmask(tid, mask).map_err(ptrace_err("setsigmask", tid))
    }

    /// The registers of a stopped thread (every thread, while held).
    pub fn registers(&self, tid: i32) -> Result<Regs, Error> {
        sys::get_regs(tid).map_err(ptrace_err("getregs", tid))
    }

    /// With every thread held: the first thread whose instruction pointer,
    /// or any word of its live stack (from its stack pointer to the end of
    /// its stack's mapping), satisfies `inside`. A thread whose stack
    /// cannot be read counts as found (address 0).
    pub fn find_inside(&mut self, inside: impl Fn(u64) -> bool) -> Result<Option<Busy>, Error> {
        assert!(self.held, "find_inside needs every thread held");
        let maps = procfs::maps(self.pid).map_err(Error::Io)?;
        let tids: Vec<i32> = self.threads.keys().copied().collect();
        let mut buf = vec![0u8; 64 << 10];
        for tid in tids {
            let regs = sys::get_regs(tid).map_err(ptrace_err("getregs", tid))?;
            if inside(regs.rip) {
                return Ok(Some(Busy {
                    tid,
                    addr: regs.rip,
                    in_rip: true,
                }));
            }
            match self.scan_stack(&maps, regs.rsp, MAX_STACK_SCAN, &mut buf, &inside) {
                Ok(Some(addr)) => {
                    return Ok(Some(Busy {
                        tid,
                        addr,
                        in_rip: false,
                    }))
                }
                Ok(None) => {}
                Err(()) => {
                    return Ok(Some(Busy {
                        tid,
                        addr: 0,
                        in_rip: false,
                    }))
                }
            }
        }
        Ok(None)
    }

    /// Scans up to `limit` bytes of stack from `rsp` up to the end of its
    /// mapping for a word satisfying `inside`. `Err` when unverifiable.
    fn scan_stack(
        &self,
        maps: &[Mapping],
        rsp: u64,
        limit: u64,
        buf: &mut [u8],
        inside: &impl Fn(u64) -> bool,
    ) -> Result<Option<u64>, ()> {
        let Some(m) = maps.iter().find(|m| m.contains(rsp)) else {
            return Err(());
        };
        let start = rsp & !7;
        let end = if limit == MAX_STACK_SCAN {
            if m.end - start > MAX_STACK_SCAN {
                return Err(());
            }
            m.end
        } else {
            m.end.min(start + limit)
        };
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(buf.len());
            let n = match self.mem.read_at(&mut buf[..len], at) {
                Ok(0) | Err(_) => break,
                Ok(n) => n & !7,
            };
            if n == 0 {
                break;
            }
            for w in buf[..n].chunks_exact(8) {
                let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
                if inside(v) {
                    return Ok(Some(v));
                }
            }
            at += n as u64;
        }
        Ok(None)
    }

    // -----------------------------------------------------------------
    // Memory.

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.mem.read_at(&mut buf[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: io::Error::from(io::ErrorKind::UnexpectedEof),
                    })
                }
                Ok(n) => done += n,
                Err(e) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads a little-endian u64 at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes `bytes` at `addr` (any mapping, read-only ones included).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < bytes.len() {
            match self.mem.write_at(&bytes[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    })
                }
                Ok(n) => done += n,
                Err(e) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads a NUL-terminated string at `addr` (at most `max` bytes).
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<String, Error> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() < max {
            // A chunk may cross into an unmapped page: shrink to the page.
            let at = addr + out.len() as u64;
            let room = (4096 - (at & 4095)) as usize;
            let n = chunk.len().min(room);
            self.read(at, &mut chunk[..n])?;
            if let Some(z) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..n]);
        }
        out.truncate(max);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The object mapped from `path` (as the process names it) now, if
    /// any.
    pub fn module(&self, path: &str) -> Result<Option<Module>, Error> {
        let maps = procfs::maps(self.pid).map_err(Error::Io)?;
        Ok(elf::modules(self.pid, &maps, &self.target.root)
            .into_iter()
            .find(|m| m.path == path || m.path.strip_suffix(" (deleted)") == Some(path)))
    }

    // -----------------------------------------------------------------
    // Calls.

    /// Calls `func(args…)` in the process on a thread chosen for `safety`,
    /// waiting up to `timeout`; returns `rax`. The thread's registers,
    /// extended state, `errno` and the stack it used are restored, and an
    /// interrupted system call it was in is resumed as if never
    /// interrupted. Works with the world held (only that thread runs) or
    /// running (the others keep running meanwhile).
    pub fn call(
        &mut self,
        func: u64,
        args: &[Arg<'_>],
        safety: Safety,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let tid = self.pick(safety)?;
        let r = self.call_keeping_errno(tid, func, args, safety, timeout);
        self.unpin(tid, &r)?;
        r
    }

    /// [`Process::call`] on a given thread: it is stopped (if running)
    /// and must pass the checks of `safety`, else [`Error::NoSafeThread`]
    /// says why.
    pub fn call_on_thread(
        &mut self,
        tid: i32,
        func: u64,
        args: &[Arg<'_>],
        safety: Safety,
        timeout: Duration,
    ) -> Result<u64, Error> {
        if !self.threads.contains_key(&tid) {
            return Err(Error::NoSafeThread(format!("no thread {tid}")));
        }
        self.threads.get_mut(&tid).expect("known").pinned = true;
        if let Err(e) = self.stop_one(tid) {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pinned = false;
            }
            return Err(e);
        }
        if let Err(why) = self.evaluate(tid, safety) {
            let r = Err(Error::NoSafeThread(why));
            self.unpin(tid, &r)?;
            return r;
        }
        let r = self.call_keeping_errno(tid, func, args, safety, timeout);
        self.unpin(tid, &r)?;
        r
    }

    /// `dlopen(path, flags)` in the process (the world running or held);
    /// returns the handle, or [`Error::Load`] with `dlerror`'s message.
    pub fn dlopen(&mut self, path: &str, flags: i32, timeout: Duration) -> Result<u64, Error> {
        let mut cpath = path.as_bytes().to_vec();
        cpath.push(0);
        let tid = self.pick(Safety::CallsLibc)?;
        let calls = self.target.calls;
        let r = (|| {
            let h = self.call_keeping_errno(
                tid,
                calls.dlopen,
                &[Arg::Bytes(&cpath), Arg::Value(flags as u64)],
                Safety::CallsLibc,
                timeout,
            )?;
            if h != 0 {
                return Ok(h);
            }
            Err(Error::Load(self.dlerror_on(tid, timeout)?))
        })();
        self.unpin(tid, &r)?;
        r
    }

    /// `dlclose(handle)` in the process.
    pub fn dlclose(&mut self, handle: u64, timeout: Duration) -> Result<(), Error> {
        let tid = self.pick(Safety::CallsLibc)?;
        let calls = self.target.calls;
        let r = (|| {
            let rc = self.call_keeping_errno(
                tid,
                calls.dlclose,
                &[Arg::Value(handle)],
                Safety::CallsLibc,
                timeout,
            )?;
            if rc as u32 == 0 {
                return Ok(());
            }
            Err(Error::Load(self.dlerror_on(tid, timeout)?))
        })();
        self.unpin(tid, &r)?;
        r
    }

    fn dlerror_on(&mut self, tid: i32, timeout: Duration) -> Result<String, Error> {
        let calls = self.target.calls;
        let msg = self.call_keeping_errno(tid, calls.dlerror, &[], Safety::CallsLibc, timeout)?;
        Ok(if msg == 0 {
            "no message".into()
        } else {
            self.read_cstr(msg, 4096)?
        })
    }

    fn unpin<T>(&mut self, tid: i32, r: &Result<T, Error>) -> Result<(), Error> {
        if matches!(r, Err(Error::CallTimeout { .. })) {
            // Still inside the call: it must not be resumed as if done.
            return Ok(());
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pinned = false;
        }
        if !self.held {
            self.resume(tid)?;
        }
        Ok(())
    }

    /// Calls on `tid` (stopped, pinned), keeping its `errno` when the call
    /// goes into the C library.
    fn call_keeping_errno(
        &mut self,
        tid: i32,
        func: u64,
        args: &[Arg<'_>],
        safety: Safety,
        timeout: Duration,
    ) -> Result<u64, Error> {
        if safety == Safety::LockFree {
            return self.call_on(tid, func, args, timeout);
        }
        let at = match self.threads.get(&tid).and_then(|t| t.errno_at) {
            Some(a) => a,
            None => {
                let a = self.call_on(tid, self.target.calls.errno_location, &[], timeout)?;
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.errno_at = Some(a);
                }
                a
            }
        };
        let mut saved = [0u8; 4];
        self.read(at, &mut saved)?;
        let r = self.call_on(tid, func, args, timeout);
        if !matches!(r, Err(Error::CallTimeout { .. })) {
            self.write(at, &saved)?;
        }
        r
    }

    /// Picks a thread for a call and leaves it stopped and pinned.
    fn pick(&mut self, safety: Safety) -> Result<i32, Error> {
        let start = Instant::now();
        let mut why = String::from("no thread");
        loop {
            if self.held {
                let tids: Vec<i32> = self.threads.keys().copied().collect();
                // Threads not in a system call first: nothing to restart.
                let mut best: Option<(u32, i32)> = None;
                for tid in tids {
                    match self.evaluate(tid, safety) {
                        Ok(rank) => {
                            if best.is_none_or(|(r, _)| rank < r) {
                                best = Some((rank, tid));
                            }
                        }
                        Err(w) => why = w,
                    }
                }
                if let Some((_, tid)) = best {
                    self.threads.get_mut(&tid).expect("known").pinned = true;
                    return Ok(tid);
                }
                // Held threads do not move: retrying would not help.
                return Err(Error::NoSafeThread(why));
            }
            for tid in self.candidates() {
                if !self.threads.contains_key(&tid) {
                    continue;
                }
                self.threads.get_mut(&tid).expect("known").pinned = true;
                if let Err(e) = self.stop_one(tid) {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.pinned = false;
                    }
                    match e {
                        Error::NotStopped { .. } => continue,
                        e => return Err(e),
                    }
                }
                if !self.threads.contains_key(&tid) {
                    continue; // exited meanwhile
                }
                match self.evaluate(tid, safety) {
                    Ok(_) => return Ok(tid),
                    Err(w) => {
                        why = w;
                        self.threads.get_mut(&tid).expect("known").pinned = false;
                        self.resume(tid)?;
                    }
                }
            }
            if start.elapsed() > PICK_TIMEOUT {
                return Err(Error::NoSafeThread(why));
            }
            // Let them move on, then look again.
            self.pump_until(Duration::from_millis(2), |_| false)?;
        }
    }

    /// Threads in the order to try: blocked in an idle system call, then
    /// blocked elsewhere, then running.
    fn candidates(&self) -> Vec<i32> {
        let mut v: Vec<(u32, i32)> = self
            .threads
            .keys()
            .map(|&tid| {
                let rank = match procfs::in_syscall(self.pid, tid) {
                    Ok(InSyscall::Call(n)) if IDLE_SYSCALLS.contains(&n) => 0,
                    Ok(InSyscall::Running) => 1,
                    Ok(InSyscall::Call(202)) => 3, // futex: maybe a lock
                    Ok(_) => 2,
                    Err(_) => 4,
                };
                (rank, tid)
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, t)| t).collect()
    }

    /// Interrupts one running thread and waits until it is stopped (in an
    /// event stop: a thread that reports a signal first gets it delivered
    /// and is caught at its next stop).
    fn stop_one(&mut self, tid: i32) -> Result<(), Error> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let Some(t) = self.threads.get_mut(&tid) else {
                return Ok(());
            };
            match t.state {
                State::Stopped | State::Signal(0) => return Ok(()),
                State::Running if !t.stop_pending => match sys::interrupt(tid) {
                    Ok(()) => t.stop_pending = true,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(ptrace_err("interrupt", tid)(e)),
                },
                State::Signal(_) | State::GroupStop => {
                    // Not where a call can start: let it take its signal
                    // (it is pinned, so the next stop is kept).
                    if t.state == State::GroupStop {
                        return Err(self.not_stopped(tid));
                    }
                    self.resume(tid)?;
                    if let Some(t) = self.threads.get_mut(&tid) {
                        if !t.stop_pending {
                            sys::interrupt(tid).map_err(ptrace_err("interrupt", tid))?;
                            t.stop_pending = true;
                        }
                    }
                }
                State::Running => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.not_stopped(tid));
            }
            self.pump_until(left, |p| {
                p.threads
                    .get(&tid)
                    .is_none_or(|t| t.state != State::Running)
            })?;
        }
    }

    /// Whether a stopped thread can run a call of `safety`: `Ok(rank)`,
    /// lower is better, or why not.
    fn evaluate(&self, tid: i32, safety: Safety) -> Result<u32, String> {
        let t = self.threads.get(&tid).ok_or("gone")?;
        if !matches!(t.state, State::Stopped | State::Signal(0)) {
            return Err(format!(
                "thread {tid} is not at a plain stop ({:?})",
                t.state
            ));
        }
        if !t.started {
            return Err(format!("thread {tid} is being created"));
        }
        let regs = sys::get_regs(tid).map_err(|e| format!("thread {tid}: {e}"))?;
        let maps = procfs::maps(self.pid).map_err(|e| e.to_string())?;
        let Some(stack) = maps.iter().find(|m| m.contains(regs.rsp)) else {
            return Err(format!("thread {tid}'s stack pointer is not mapped"));
        };
        let need = match safety {
            Safety::LockFree => STACK_NEED_LOCK_FREE,
            Safety::CallsLibc => STACK_NEED_LIBC,
        };
        if !stack.write || (stack.path != "[stack]" && regs.rsp - stack.start < need + RED_ZONE) {
            return Err(format!(
                "thread {tid} has less than {} KiB of stack below its stack pointer",
                need >> 10
            ));
        }
        let mut rank = 0;
        if restart_of(&regs).is_some() {
            let mut insn = [0u8; 2];
            if self.read(regs.rip - 2, &mut insn).is_err() || insn != SYSCALL_INSN {
                return Err(format!(
                    "thread {tid} is in a system call not entered with `syscall`"
                ));
            }
            rank += 1;
        }
        if safety == Safety::CallsLibc {
            // A thread that blocks (nearly) every signal is creating a
            // thread or starting; threads made by the call would inherit
            // its mask.
            let blocked = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid))
                .ok()
                .and_then(|s| {
                    let v = s.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
                    u64::from_str_radix(v.trim(), 16).ok()
                })
                .unwrap_or(0);
            if blocked.count_ones() >= 56 {
                return Err(format!(
                    "thread {tid} blocks every signal (creating a thread?)"
                ));
            }
            let unsafe_at = |a: u64| self.target.in_unsafe_code(a);
            if unsafe_at(regs.rip) {
                return Err(format!(
                    "thread {tid} is in {} (rip {:#x})",
                    self.where_is(regs.rip),
                    regs.rip
                ));
            }
            // The live frames first, by the unwind information; the raw
            // scan (which also sees stale words) only from where that
            // cannot go on.
            let read = |a: u64| {
                let mut w = [0u8; 8];
                self.read(a, &mut w).ok().map(|_| u64::from_le_bytes(w))
            };
            let (ras, end) = self.unwind.return_addresses(
                &self.target.modules,
                (regs.rip, regs.rsp, regs.rbp),
                read,
            );
            if let Some(&a) = ras.iter().find(|&&a| unsafe_at(a.wrapping_sub(1))) {
                return Err(format!(
                    "thread {tid} returns into {} ({a:#x}, a frame on its stack)",
                    self.where_is(a)
                ));
            }
            let crate::unwind::End::Unknown { rsp: from } = end else {
                return Ok(rank);
            };
            let scanned = from.saturating_sub(regs.rsp);
            let mut buf = vec![0u8; LOCK_SCAN as usize];
            match self.scan_stack(
                &maps,
                from,
                LOCK_SCAN.saturating_sub(scanned).max(8),
                &mut buf,
                &unsafe_at,
            ) {
                Ok(None) => {}
                Ok(Some(a)) => {
                    return Err(format!(
                        "thread {tid} returns into {} ({a:#x} on its stack)",
                        self.where_is(a)
                    ))
                }
                Err(()) => return Err(format!("thread {tid}'s stack is unreadable")),
            }
        }
        Ok(rank)
    }

    fn where_is(&self, addr: u64) -> String {
        self.target
            .module_at(addr)
            .map_or_else(|| "unknown code".to_string(), |m| m.file_name().to_string())
    }

    /// Runs `func(args…)` on the stopped, pinned thread `tid`; everything
    /// the call changed in its registers and the stack it was given is
    /// restored before returning (except on [`Error::CallTimeout`]).
    fn call_on(
        &mut self,
        tid: i32,
        func: u64,
        args: &[Arg<'_>],
        timeout: Duration,
    ) -> Result<u64, Error> {
        assert!(args.len() <= 6, "at most six register arguments");
        let mut saved = sys::get_regs(tid).map_err(ptrace_err("getregs", tid))?;
        let xstate = sys::get_xstate(tid).map_err(ptrace_err("getregset", tid))?;
        // The call runs with the synchronous signals deliverable: its end is
        // a SIGSEGV, and a fault with the signal blocked makes the kernel
        // reset the process's disposition of it to the default (the
        // program's handler would be lost) and unblock it in the thread. A
        // thread that blocks everything (a `sigwait` thread) is a favourite
        // to borrow, being idle. Its own mask is put back afterwards (the
        // mask it returns to, which `PTRACE_GETSIGMASK` reports even inside
        // a `ppoll` or `sigsuspend`: restarted, that call sets its
        // temporary mask again).
        let mask = sys::get_sigmask(tid).map_err(ptrace_err("getsigmask", tid))?;
        let call_mask = mask & !SYNCHRONOUS_SIGNALS;
        // A thread stopped inside an interrupted system call: resume it
        // later exactly as the kernel would without a signal handler, by
        // re-executing the `syscall` instruction, so the call made now
        // cannot be mistaken for it and nothing sees EINTR.
        if let Some((rax, rip)) = restart_of(&saved) {
            saved.rax = rax;
            saved.rip = rip;
            saved.orig_rax = u64::MAX;
        }
        // The frame: data blobs below the red zone, 16-byte aligned, then
        // the return address, so the function starts with rsp ≡ 8 (mod 16)
        // as after a `call`.
        let mut top = (saved.rsp - RED_ZONE) & !15;
        let mut values = [0u64; 6];
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, a) in args.iter().enumerate() {
            values[i] = match *a {
                Arg::Value(v) => v,
                Arg::Bytes(b) => {
                    top = (top - b.len() as u64) & !15;
                    writes.push((top, b.to_vec()));
                    top
                }
            };
        }
        let rsp = top - 8;
        writes.push((rsp, self.ret_addr.to_le_bytes().to_vec()));
        let frame_end = saved.rsp - RED_ZONE;
        let mut original = vec![0u8; (frame_end - rsp) as usize];
        self.read(rsp, &mut original)?;
        for (at, b) in &writes {
            self.write(*at, b)?;
        }
        let mut regs: Regs = saved;
        regs.rip = func;
        regs.rsp = rsp;
        regs.rdi = values[0];
        regs.rsi = values[1];
        regs.rdx = values[2];
        regs.rcx = values[3];
        regs.r8 = values[4];
        regs.r9 = values[5];
        regs.rax = 0;
        regs.orig_rax = u64::MAX;
        regs.eflags &= !(EFLAGS_DF | EFLAGS_TF);
        let restore = |p: &mut Process| -> Result<(), Error> {
            if call_mask != mask {
                sys::set_sigmask(tid, mask).map_err(ptrace_err("setsigmask", tid))?;
            }
            p.write(rsp, &original)?;
            sys::set_xstate(tid, &xstate).map_err(ptrace_err("setregset", tid))?;
            sys::set_regs(tid, &saved).map_err(ptrace_err("setregs", tid))?;
            Ok(())
        };
        if call_mask != mask {
            if let Err(e) = sys::set_sigmask(tid, call_mask) {
                restore(self)?;
                return Err(ptrace_err("setsigmask", tid)(e));
            }
        }
        if let Err(e) = sys::set_regs(tid, &regs) {
            restore(self)?;
            return Err(ptrace_err("setregs", tid)(e));
        }
        self.stats.calls += 1;
        // Run it: from an event stop or a signal-delivery-stop alike, with
        // no signal (a real one pending at a signal stop is deferred).
        {
            let t = self.threads.get_mut(&tid).expect("pinned");
            if let State::Signal(sig) = t.state {
                if sig != 0 {
                    if let Ok(si) = sys::get_siginfo(tid) {
                        t.deferred.push(si);
                    }
                }
            }
        }
        if let Err(e) = sys::cont(tid, 0) {
            restore(self)?;
            return Err(ptrace_err("cont", tid)(e));
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.state = State::Running; // still counted as stopped for stats
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Other threads' events as usual; this one's here.
            let ev = match sys::wait(tid, true) {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    if Instant::now() > deadline {
                        return Err(Error::CallTimeout { tid });
                    }
                    self.pump_others(tid)?;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Event::Exited,
                Err(e) => return Err(ptrace_err("waitpid", tid)(e)),
            };
            if let Some(t) = self.threads.get_mut(&tid) {
                t.stop_pending = false;
            }
            match ev {
                Event::Exited => {
                    self.threads.remove(&tid);
                    return Err(Error::ThreadExited(tid));
                }
                Event::Exec => return Err(Error::Exec(self.pid)),
                Event::Clone => {
                    let new = sys::event_msg(tid).map_err(ptrace_err("geteventmsg", tid))? as i32;
                    self.threads.entry(new).or_insert_with(|| Thread::new(true));
                    sys::cont(tid, 0).map_err(ptrace_err("cont", tid))?;
                }
                Event::Stop(_) => {
                    // A stale interrupt or a group-stop: carry on.
                    sys::cont(tid, 0).map_err(ptrace_err("cont", tid))?;
                }
                Event::Signal(sig) => {
                    let si = sys::get_siginfo(tid).map_err(ptrace_err("getsiginfo", tid))?;
                    let r = sys::get_regs(tid).map_err(ptrace_err("getregs", tid))?;
                    let synchronous = si.si_code > 0
                        && matches!(
                            sig,
                            libc::SIGSEGV
                                | libc::SIGBUS
                                | libc::SIGILL
                                | libc::SIGFPE
                                | libc::SIGTRAP
                        );
                    if sig == libc::SIGSEGV && r.rip == self.ret_addr {
                        // Returned. The SIGSEGV is ours: suppressed on resume.
                        let t = self.threads.get_mut(&tid).expect("pinned");
                        t.state = State::Signal(0);
                        restore(self)?;
                        return Ok(r.rax);
                    }
                    if synchronous {
                        let t = self.threads.get_mut(&tid).expect("pinned");
                        t.state = State::Signal(0);
                        restore(self)?;
                        return Err(Error::CallFault {
                            tid,
                            signal: sig,
                            rip: r.rip,
                        });
                    }
                    // Someone's signal: delivered once the call is over.
                    self.threads
                        .get_mut(&tid)
                        .expect("pinned")
                        .deferred
                        .push(si);
                    sys::cont(tid, 0).map_err(ptrace_err("cont", tid))?;
                }
            }
        }
    }

    /// Handles pending events of every thread but `busy`, pausing briefly
    /// when there are none.
    fn pump_others(&mut self, busy: i32) -> Result<(), Error> {
        let mut any = false;
        let tids: Vec<i32> = self
            .threads
            .keys()
            .copied()
            .filter(|&t| t != busy)
            .collect();
        for tid in tids {
            loop {
                let ev = match sys::wait(tid, true) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Event::Exited,
                    Err(e) => return Err(ptrace_err("waitpid", tid)(e)),
                };
                any = true;
                match self.handle(tid, ev) {
                    Ok(()) => {}
                    // The others exiting does not end the call.
                    Err(Error::Exited(_)) => {}
                    Err(e) => return Err(e),
                }
                if ev == Event::Exited {
                    break;
                }
            }
        }
        if !any {
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Detaching.

    /// Detaches from every thread, leaving each as it was (signals that
    /// arrived meanwhile delivered). Returns what attaching cost.
    pub fn detach(mut self) -> Result<Stats, Error> {
        self.detach_all()?;
        Ok(self.stats())
    }

    fn detach_all(&mut self) -> Result<(), Error> {
        if self.detached {
            return Ok(());
        }
        // PTRACE_DETACH needs a stopped tracee.
        let held = self.hold();
        self.detached = true;
        let stats_now = self.stats();
        self.stats = stats_now;
        let pid = self.pid;
        let mut first_err = held.err();
        for (&tid, t) in self.threads.iter_mut() {
            let mut sig = match t.state {
                State::Signal(s) => s,
                _ => 0,
            };
            for si in t.deferred.drain(..) {
                if sig == 0
                    && matches!(t.state, State::Signal(_))
                    && sys::set_siginfo(tid, &si).is_ok()
                {
                    sig = si.si_signo;
                } else {
                    let _ = sys::tgkill(pid, tid, si.si_signo);
                }
            }
            match sys::detach(tid, sig) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    first_err.get_or_insert(ptrace_err("detach", tid)(e));
                }
            }
        }
        self.threads.clear();
        match first_err {
            None | Some(Error::Exited(_)) => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

/// For a thread stopped in an interrupted system call the kernel would
/// restart: the `(rax, rip)` that re-executes it.
fn restart_of(r: &Regs) -> Option<(u64, u64)> {
    if (r.orig_rax as i64) < 0 {
        return None;
    }
    let rax = r.rax as i64;
    if ERESTART_REEXEC.contains(&rax) {
        Some((r.orig_rax, r.rip - 2))
    } else if rax == ERESTART_RESTARTBLOCK {
        Some((NR_RESTART_SYSCALL, r.rip - 2))
    } else {
        None
    }
}

/// A page below 64 KiB (`vm.mmap_min_addr`) not mapped in the process.
fn unmapped_page(maps: &[Mapping]) -> Option<u64> {
    (1..16u64)
        .map(|p| p << 12)
        .find(|&a| !maps.iter().any(|m| m.contains(a)))
}

/// The calling thread's id: `TracerPid` names the tracing thread.
fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Whether `tid` of `pid` is traced by this thread.
fn traced_by_us(pid: i32, tid: i32) -> bool {
    procfs::status(&format!("{pid}/task/{tid}")).is_ok_and(|s| s.tracer == gettid())
}

/// Whether `tid` of `pid` has exited (a zombie, or gone): the kernel
/// refuses to attach to such a thread with `EPERM`.
fn exited(pid: i32, tid: i32) -> bool {
    procfs::status(&format!("{pid}/task/{tid}")).map_or(true, |s| matches!(s.state, 'Z' | 'X'))
}

/// The most likely reason the kernel refused to let us attach.
fn explain_eperm(t: &Target) -> Refusal {
    if let Ok(s) = procfs::status(&t.pid.to_string()) {
        if s.tracer != 0 && s.tracer != gettid() {
            return Refusal::Traced {
                pid: t.pid,
                tracer: s.tracer,
                tracer_name: procfs::status(&s.tracer.to_string())
                    .map(|s| s.name)
                    .unwrap_or_else(|_| "?".into()),
            };
        }
    }
    if let Some(scope) = procfs::yama_scope().filter(|&s| s > 0) {
        return Refusal::Yama { scope };
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    match t.status.uids[..3].iter().find(|&&u| u != me) {
        Some(&owner) => Refusal::OtherUser {
            pid: t.pid,
            owner,
            me,
        },
        None => Refusal::Undumpable(t.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Regs {
        // SAFETY: all-zero registers are a valid value.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn restart_of_interrupted_calls() {
        let mut r = regs();
        r.orig_rax = 7; // poll
        r.rip = 0x1002;
        r.rax = (-516i64) as u64;
        assert_eq!(restart_of(&r), Some((219, 0x1000)));
        r.rax = (-512i64) as u64;
        assert_eq!(restart_of(&r), Some((7, 0x1000)));
        r.rax = (-4i64) as u64; // EINTR: completed, nothing to restart
        assert_eq!(restart_of(&r), None);
        r.rax = (-512i64) as u64;
        r.orig_rax = u64::MAX; // not in a system call
        assert_eq!(restart_of(&r), None);
    }

    #[test]
    fn return_page_is_unmapped() {
        let maps = procfs::maps(std::process::id() as i32).unwrap();
        let a = unmapped_page(&maps).unwrap();
        assert!(a < 1 << 16 && a > 0);
    }
}
