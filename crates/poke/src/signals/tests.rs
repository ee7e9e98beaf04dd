//! The interposed mask functions, checked against the kernel's view of
//! the thread's mask.

use super::*;

#[test]
fn the_interposed_mask_functions_never_block_sigtrap() {
    // SAFETY: sigset operations on locals; pthread_sigmask (ours) with
    // valid pointers, restored at the end.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        let mut now: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        assert_eq!(pthread_sigmask(libc::SIG_BLOCK, &all, &mut old), 0);
        assert_eq!(pthread_sigmask(libc::SIG_SETMASK, ptr::null(), &mut now), 0);
        assert_eq!(libc::sigismember(&now, libc::SIGTRAP), 0);
        assert_eq!(libc::sigismember(&now, world::signal()), 0);
        assert_eq!(libc::sigismember(&now, libc::SIGUSR1), 1);
        assert_eq!(sigprocmask(libc::SIG_SETMASK, &all, ptr::null_mut()), 0);
        let bits = world::proc::blocked_signals(world::proc::gettid()).unwrap();
        assert_eq!(bits & (1 << (libc::SIGTRAP - 1)), 0);
        assert_eq!(bits & (1 << (world::signal() - 1)), 0);
        assert_ne!(bits & (1 << (libc::SIGUSR1 - 1)), 0);
        assert_eq!(pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()), 0);
    }
}
