//! The check before a batch: every thread must be able to take SIGTRAP.

use super::*;

/// A thread livetrace cannot safely patch under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedThread {
    /// The thread.
    pub tid: i32,
    /// Its name (`comm`).
    pub name: String,
    /// The protected signals it blocks.
    pub signals: Vec<c_int>,
    /// What `/proc` showed of it (scheduler state, system call).
    pub state: String,
}

impl std::fmt::Display for BlockedThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "thread {} ({}) blocks signal(s) {:?}",
            self.tid, self.name, self.signals
        )?;
        if self.signals.contains(&world::signal()) {
            write!(
                f,
                " including livetrace's world signal, so it cannot be given SIGTRAP back \
                 (it blocked them with a raw system call, or before livetrace was loaded)"
            )?;
        }
        if !self.state.is_empty() {
            write!(f, " [{}]", self.state)?;
        }
        Ok(())
    }
}

static REPAIRED: AtomicU32 = AtomicU32::new(0);

/// Threads given a protected signal back by [`check_threads`], for tests.
pub fn masks_repaired() -> u32 {
    REPAIRED.load(SeqCst)
}

/// Whether a mask can only be glibc's own, set with a raw `rt_sigprocmask`
/// around code that runs no program function: it blocks SIGCANCEL (32),
/// which glibc's `pthread_sigmask` and `sigprocmask` never let a program
/// block. glibc blocks everything while it creates a thread (the parent
/// around `clone`, the child until `start_thread` restores its mask before
/// the start routine) and, once a start routine has returned, everything
/// but SIGSETXID until the thread is gone (glibc bugs 12889 and 28361: no
/// handler may run on a thread about to exit). Neither reaches a site with
/// that mask, but under load — or while the thread is held by a ptrace
/// stop — it can outlast the re-reads.
fn glibc_internal_mask(m: u64) -> bool {
    let sigcancel = 1u64 << (32 - 1);
    m & sigcancel != 0
}

/// Before a batch: every thread must take SIGTRAP. A thread found blocking
/// a protected signal is re-read for a short while (glibc blocks every
/// signal for a few instructions in `pthread_create`, `raise` and thread
/// exit), then given it back through a probe if the world signal reaches
/// it; otherwise the batch is refused naming it, unless its mask is glibc's
/// for a thread in the middle of its creation or exit
/// ([`glibc_internal_mask`]).
pub(crate) fn check_threads() -> Result<(), crate::Error> {
    let me = world::proc::gettid();
    let trap = 1u64 << (libc::SIGTRAP - 1);
    let wsig = 1u64 << (world::signal() - 1);
    let tids = world::threads().map_err(crate::Error::Io)?;
    let mut stuck = Vec::new();
    for tid in tids {
        if tid == me {
            continue;
        }
        let mut ok = false;
        for attempt in 0..20u32 {
            match world::proc::blocked_signals(tid) {
                // Gone, or SIGTRAP deliverable (a thread that blocks only
                // the world signal can be patched under; the quiescence
                // wait reports it if it ever needs to probe it).
                None => {
                    ok = true;
                    break;
                }
                Some(m) if m & trap == 0 => {
                    ok = true;
                    break;
                }
                Some(m) if m & wsig == 0 && attempt >= 2 => {
                    // The world signal reaches it: give SIGTRAP back.
                    if world::probe::unblock(tid) {
                        REPAIRED.fetch_add(1, SeqCst);
                    }
                }
                Some(_) => {}
            }
            std::thread::sleep(std::time::Duration::from_micros(50 << attempt.min(6)));
        }
        if !ok {
            let still = world::proc::blocked_signals(tid).filter(|m| m & trap != 0);
            if let Some(m) = still.filter(|&m| !glibc_internal_mask(m)) {
                let mut name = [0u8; 32];
                let n = world::proc::read_task_file(tid, b"comm", &mut name);
                let name =
                    String::from_utf8_lossy(name[..n].strip_suffix(b"\n").unwrap_or(&name[..n]))
                        .into_owned();
                let signals = [libc::SIGTRAP, world::signal()]
                    .into_iter()
                    .filter(|&s| m & (1 << (s - 1)) != 0)
                    .collect();
                let mut sys = [0u8; 128];
                let n = world::proc::read_task_file(tid, b"syscall", &mut sys);
                let state = format!(
                    "state {}, syscall {}",
                    world::proc::state(tid).map_or('?', char::from),
                    String::from_utf8_lossy(sys[..n].strip_suffix(b"\n").unwrap_or(&sys[..n]))
                );
                stuck.push(BlockedThread {
                    tid,
                    name,
                    signals,
                    state,
                });
            }
        }
    }
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::SignalsBlocked(stuck))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_glibcs_own_masks_count_as_internal() {
        let all = !(1u64 << 8) & !(1 << 18);
        // Thread exit: everything but SIGSETXID.
        assert!(glibc_internal_mask(all & !(1 << 32)));
        // Thread creation: everything.
        assert!(glibc_internal_mask(all));
        // What a program's pthread_sigmask(sigfillset) leaves: SIGCANCEL
        // and SIGSETXID deliverable.
        assert!(!glibc_internal_mask(all & !(1 << 31) & !(1 << 32)));
        assert!(!glibc_internal_mask(1 << 4));
    }
}
