//! `fork` never copies a batch half-done into the child: no `int3` left in
//! the child's text, no text page left writable, no engine lock held by a
//! thread the child does not have. In a plain Rust program (no preload
//! interposing `fork`): the engine's own `pthread_atfork` handlers do it.
//! A fork from inside a batch (its phase hook) finishes that batch in the
//! child.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use livetrace_fixtures as fx;
use livetrace_poke::{read_site, Batch, Insn, Phase, INT3, NOP5};

const SITES: std::ops::Range<usize> = 4000..4300;

fn flip(range: std::ops::Range<usize>, on: bool) -> Batch {
    let mut b = Batch::new();
    for i in range {
        let (old, new) = if on {
            (Insn::Nop, Insn::Call(fx::count_any_addr()))
        } else {
            (Insn::Call(fx::count_any_addr()), Insn::Nop)
        };
        b.queue(fx::site(i), old, new).unwrap();
    }
    b
}

/// In the child: every site whole, text not writable, and a batch can run.
/// Returns the exit code (0: all good).
fn check_child() -> i32 {
    let call = Insn::Call(fx::count_any_addr());
    for i in SITES {
        // SAFETY: fixture text, mapped for the life of the process.
        let b = unsafe { std::ptr::read_volatile(fx::site(i) as *const [u8; 5]) };
        if b[0] == INT3 {
            return 11;
        }
        if b != NOP5 && Ok(b) != call.encode(fx::site(i)) {
            return 12;
        }
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 13;
    };
    let page = fx::site(SITES.start);
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap_or(0),
            usize::from_str_radix(b, 16).unwrap_or(0),
        );
        if (a..b).contains(&page) && perms.as_bytes().get(1) == Some(&b'w') {
            return 14;
        }
    }
    // The engine's locks are free: a batch of its own goes through.
    let i = 4500;
    if flip(i..i + 1, true).apply().is_err() || flip(i..i + 1, false).apply().is_err() {
        return 15;
    }
    0
}

/// The child's exit code; a child that hangs (a lock held by a thread it
/// does not have) is killed and fails the test.
fn wait(pid: libc::pid_t) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0);
        if std::time::Instant::now() > deadline {
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the fork child hung (a lock held by a thread it does not have)");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Sets the flag when dropped, so a failed assertion still stops the
/// scope's threads (and the test fails instead of hanging).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[test]
fn forks_during_batches_leave_the_child_clean() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let patcher = s.spawn(|| {
            let mut on = false;
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                on = !on;
                flip(SITES, on).apply().unwrap();
                n += 1;
            }
            if on {
                flip(SITES, false).apply().unwrap();
            }
            n
        });
        let caller = s.spawn(|| {
            while !stop.load(SeqCst) {
                for i in SITES {
                    assert_eq!(fx::call(i), fx::value_of(i));
                }
            }
        });
        for _ in 0..100 {
            // SAFETY: the child only runs `check_child` (the C library's
            // malloc is fork-safe; the engine's locks are what is tested)
            // and `_exit`s.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = check_child();
                // SAFETY: ends the child without running the parent's
                // atexit handlers or unwinding the test harness.
                unsafe { libc::_exit(code) };
            }
            assert!(pid > 0);
            assert_eq!(wait(pid), 0, "child of a fork found a half-done batch");
        }
        stop.store(true, SeqCst);
        assert!(patcher.join().unwrap() > 0);
        caller.join().unwrap();
    });
}

static IN_CHILD: AtomicBool = AtomicBool::new(false);

#[test]
fn a_fork_from_inside_a_batch_finishes_it_in_the_child() {
    let i = 4400;
    let mut child = 0;
    let r = flip(i..i + 1, true).apply_with(|phase| {
        if phase == Phase::Int3 && child == 0 {
            // SAFETY: as above; the child goes on with this batch.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                IN_CHILD.store(true, SeqCst);
            } else {
                child = pid;
            }
        }
    });
    if IN_CHILD.load(SeqCst) {
        let ok = r.is_ok()
            && read_site(fx::site(i)).ok()
                == Insn::Call(fx::count_any_addr()).encode(fx::site(i)).ok()
            && fx::call(i) == fx::value_of(i)
            && flip(i..i + 1, false).apply().is_ok();
        // SAFETY: ends the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    r.unwrap();
    assert!(child > 0);
    assert_eq!(wait(child), 0, "the child could not finish the batch");
    flip(i..i + 1, false).apply().unwrap();
}
