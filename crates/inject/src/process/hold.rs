//! Holding the world: every thread stopped (and none escaping through a
//! `clone`), what a held thread's registers and signal mask are, and whether
//! any thread is inside (or returns into) given code.

use super::*;

impl Process {
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

    pub(super) fn not_stopped(&self, tid: i32) -> Error {
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
    pub(super) fn scan_stack(
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
}
