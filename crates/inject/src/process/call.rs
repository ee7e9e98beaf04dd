//! Injected calls: a frame built on a stopped thread's stack, the call run
//! until it returns into an unmapped page, and everything it changed (the
//! registers, extended state, signal mask, `errno`, the stack, an interrupted
//! system call) put back; `dlopen` and `dlclose` on top.

use super::*;

impl Process {
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
}

/// For a thread stopped in an interrupted system call the kernel would
/// restart: the `(rax, rip)` that re-executes it.
pub(super) fn restart_of(r: &Regs) -> Option<(u64, u64)> {
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
