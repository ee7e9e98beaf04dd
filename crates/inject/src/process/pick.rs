//! Choosing the thread a call runs on: which threads to try first, stopping
//! one, and whether it is at a point where a call of a given [`Safety`] is
//! safe (stack room, not inside an unrestartable system call, the C library's
//! locks, or code that holds them).

use super::*;

impl Process {
    /// Picks a thread for a call and leaves it stopped and pinned.
    pub(super) fn pick(&mut self, safety: Safety) -> Result<i32, Error> {
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
    pub(super) fn stop_one(&mut self, tid: i32) -> Result<(), Error> {
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
    pub(super) fn evaluate(&self, tid: i32, safety: Safety) -> Result<u32, String> {
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
}
