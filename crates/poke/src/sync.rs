//! Core serialisation of every thread of the process.
//!
//! x86 requires a thread that executes code another core modified to run a
//! serialising instruction before it may rely on the new bytes (Intel SDM
//! vol. 3, 8.1.3 "Handling Self- and Cross-Modifying Code"). The kernel
//! sends an IPI that runs `sync_core()`; user space asks the kernel to do the
//! same for it with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`:
//! on return, every other running thread of the process has executed a core
//! serialising instruction, and every sleeping one will before it next runs
//! user code. The calling thread needs nothing more: its own writes are
//! self-modifying code, which the processor snoops, and it reaches any site
//! only through a branch.
//!
//! There is no fallback. A kernel without SYNC_CORE (before 4.16) gets a
//! clear error and no batch is applied: patching without core sync could let
//! another core execute a stale mix of old and new bytes.

use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::OnceLock;

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes (cmd, flags, cpu_id) and touches no memory of
    // ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Where registration stands: not done, under way, done, failed. Atomics
/// rather than a `OnceLock`, so that a fork child whose parent was in the
/// middle of it can start again ([`forget_in_child`]) instead of waiting
/// for a thread it does not have.
static STATE: AtomicU8 = AtomicU8::new(NONE);
const NONE: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const FAILED: u8 = 3;
/// Why registration failed, kept so every later batch reports it.
static WHY: OnceLock<String> = OnceLock::new();

fn try_register() -> Result<(), String> {
    let mask = membarrier(MEMBARRIER_CMD_QUERY);
    if mask < 0 {
        return Err(format!(
            "membarrier is not available ({})",
            std::io::Error::last_os_error()
        ));
    }
    let need = (MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
        | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) as libc::c_long;
    if mask & need != need {
        return Err(format!(
            "membarrier lacks PRIVATE_EXPEDITED_SYNC_CORE (supported mask {mask:#x})"
        ));
    }
    if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) != 0 {
        return Err(format!(
            "membarrier REGISTER_PRIVATE_EXPEDITED_SYNC_CORE failed ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Registers the process for SYNC_CORE membarriers, once. The error is kept
/// so every later batch reports the same reason.
pub(crate) fn register() -> Result<(), String> {
    loop {
        match STATE.compare_exchange(NONE, RUNNING, SeqCst, SeqCst) {
            Ok(_) => {
                let r = try_register();
                match &r {
                    Ok(()) => STATE.store(DONE, SeqCst),
                    Err(why) => {
                        let _ = WHY.set(why.clone());
                        STATE.store(FAILED, SeqCst);
                    }
                }
                return r;
            }
            Err(DONE) => return Ok(()),
            Err(FAILED) => return Err(WHY.get().cloned().unwrap_or_default()),
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// In a fork child: registration is per address space, and a parent thread
/// may have been in the middle of it. Register again at the next batch.
pub(crate) fn forget_in_child() {
    if STATE.load(SeqCst) != FAILED {
        STATE.store(NONE, SeqCst);
    }
}

/// Serialises every core running a thread of this process. Only called after
/// a successful [`register`].
pub(crate) fn sync_cores() {
    let rc = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE);
    // It cannot fail once registered. If it did, neither going on (patching
    // unsynchronised) nor unwinding (leaving int3s behind and a published
    // batch about to be freed) is safe.
    if rc != 0 {
        crate::fatal("membarrier SYNC_CORE failed after registration");
    }
}
