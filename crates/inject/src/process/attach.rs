//! Attaching and detaching: seizing every thread (and those created
//! meanwhile), letting go and seizing again, and detaching with each thread
//! left as it was; with why the kernel refused, when it did.

use super::*;

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

/// A page below 64 KiB (`vm.mmap_min_addr`) not mapped in the process.
pub(super) fn unmapped_page(maps: &[Mapping]) -> Option<u64> {
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
pub(super) fn traced_by_us(pid: i32, tid: i32) -> bool {
    procfs::status(&format!("{pid}/task/{tid}")).is_ok_and(|s| s.tracer == gettid())
}

/// Whether `tid` of `pid` has exited (a zombie, or gone): the kernel
/// refuses to attach to such a thread with `EPERM`.
pub(super) fn exited(pid: i32, tid: i32) -> bool {
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
