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

/// Threads given a protected signal back by the check before each batch,
/// for tests.
pub fn masks_repaired() -> u32 {
    REPAIRED.load(SeqCst)
}

/// glibc's mask for a thread whose start routine has returned: every
/// signal but SIGSETXID (33) blocked with a raw `rt_sigprocmask` in
/// `start_thread`, so that no program code (a handler) runs on a thread
/// that is about to exit (glibc bugs 12889 and 28361). Such a thread never
/// reaches a site again — its TLS destructors have run — but under load it
/// can take a while to be gone (it frees its stack with `madvise` first).
fn exiting_mask(m: u64) -> bool {
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    let setxid = 1u64 << (33 - 1);
    m & setxid == 0 && (m | unblockable | setxid) == u64::MAX
}

/// glibc's mask around the creation of a thread (`pthread_create` blocks
/// every signal, SIGCANCEL and SIGSETXID included, with a raw
/// `rt_sigprocmask`, and the new thread starts with it until
/// `start_thread` restores the creator's mask) and around `raise`. No
/// mask the program sets through glibc looks like it (glibc never lets
/// SIGCANCEL and SIGSETXID be blocked), and it is transient, but it can
/// last: a new thread waits for a CPU on a busy machine, and a debugger or
/// `livetrace attach` keeps a thread it reported stopped while it holds
/// the process. Such a thread is waited for longer ([`CREATION_WAIT`]).
fn creation_mask(m: u64) -> bool {
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    m | unblockable == u64::MAX
}

/// How long [`check_threads`] waits for a thread with glibc's creation
/// mask ([`creation_mask`]) to be done with it.
const CREATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Before a batch: every thread must take SIGTRAP. A thread found blocking
/// a protected signal is re-read for a short while (glibc blocks every
/// signal for a few instructions in `pthread_create`, `raise` and thread
/// exit; longer while the mask is glibc's creation mask, see
/// [`creation_mask`]), then given it back through a probe if the world
/// signal reaches it; otherwise the batch is refused naming it, unless its
/// mask is glibc's for a thread on its way out ([`exiting_mask`]).
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
        let start = std::time::Instant::now();
        let mut creating = false;
        for attempt in 0u32.. {
            if attempt >= 20 && !(creating && start.elapsed() < CREATION_WAIT) {
                break;
            }
            let blocked = world::proc::blocked_signals(tid);
            creating = blocked.is_some_and(creation_mask);
            match blocked {
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
            if let Some(m) = still.filter(|&m| !exiting_mask(m)) {
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
    fn only_glibcs_creation_mask_is_waited_for_longer() {
        let kernel_all: u64 = !((1 << 8) | (1 << 18));
        assert!(creation_mask(kernel_all));
        assert!(creation_mask(u64::MAX));
        // What a program blocking "everything" through glibc gets.
        assert!(!creation_mask(kernel_all & !(1 << 31) & !(1 << 32)));
        // glibc's exit mask.
        assert!(!creation_mask(kernel_all & !(1 << 32)));
    }

    #[test]
    fn only_glibcs_exit_mask_counts_as_exiting() {
        let all: u64 = !((1 << 8) | (1 << 18));
        assert!(exiting_mask(all & !(1 << 32)));
        // Every signal, SIGSETXID included: not glibc's exit.
        assert!(!exiting_mask(all));
        // A program's mask that leaves some signal deliverable.
        assert!(!exiting_mask(all & !(1 << 32) & !(1 << 1)));
        assert!(!exiting_mask(1 << 4));
    }
}
