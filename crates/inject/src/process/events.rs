//! Ptrace events: what each stop means for a thread's state, resuming a
//! thread as it should run, and pumping events while waiting for something.

use super::*;

impl Process {
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
    pub(super) fn resume(&mut self, tid: i32) -> Result<(), Error> {
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
    pub(super) fn handle(&mut self, tid: i32, ev: Event) -> Result<(), Error> {
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
    pub(super) fn pump_once(&mut self) -> Result<bool, Error> {
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
    pub(super) fn pump_until(
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
}
