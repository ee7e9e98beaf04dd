//! Detaching: sessions, patches, relocations and signal dispositions
//! undone, so that the injector can unload the library.

use super::*;

/// Starts tearing livetrace down (see the module docs); returns 0, or a
/// negative errno (`-EINVAL` when not attached, or while starting or
/// detaching already). Before the conversion (`READY`) it makes the attach
/// thread give up instead.
#[unsafe(no_mangle)]
pub extern "C" fn livetrace_detach_start() -> i64 {
    std::panic::catch_unwind(|| {
        let cur = livetrace_attach_state.load(Acquire);
        if cur == READY {
            // The attach thread waits for a conversion that will not come:
            // it tears down itself.
            if CONVERT_DONE
                .compare_exchange(0, ABORTED, AcqRel, Acquire)
                .is_ok()
            {
                livetrace_attach_state.store(DETACHING, Release);
                futex_wake(&CONVERT_DONE);
                return 0;
            }
        }
        if !matches!(cur, SERVING | FAILED | UNLOADABLE) {
            return -(libc::EINVAL as i64);
        }
        if cur == UNLOADABLE {
            return 0;
        }
        livetrace_attach_state.store(DETACHING, Release);
        let spawned = std::thread::Builder::new()
            .name("livetrace-detach".into())
            .spawn(|| {
                if std::panic::catch_unwind(detach).is_err() {
                    fail("internal error while detaching");
                }
            });
        match spawned {
            Ok(_) => 0,
            Err(e) => {
                fail(format!("cannot start the detach thread: {e}"));
                -(e.raw_os_error().unwrap_or(libc::EAGAIN) as i64)
            }
        }
    })
    .unwrap_or(-(libc::EFAULT as i64))
}

/// How long detaching keeps retrying to take tracers off the sites.
pub(super) const DETACH_RETRY: Duration = Duration::from_secs(10);

/// Unregisters every ops still registered once the sessions are gone,
/// retrying until none is left or `patience` runs out. A session whose
/// stop was refused — a batch refuses while some thread cannot take
/// SIGTRAP, which is mostly transient: a thread being created, stopped by
/// a debugger meanwhile — leaves its ops registered and its sites live;
/// giving up on the first refusal would leave livetrace loaded for good.
pub(super) fn unregister_leftovers(patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    let mut last_err = None;
    loop {
        let left = livetrace::enabled_functions().map_err(|e| e.to_string())?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} function(s) are still traced or patched ({}{}){}; not unloading",
                left.len(),
                left[0].name,
                if left.len() > 1 { ", …" } else { "" },
                last_err.map_or(String::new(), |e| format!(": {e}"))
            ));
        }
        for ops in livetrace_ftrace::registered().map_err(|e| e.to_string())? {
            if let Err(e) = livetrace_ftrace::unregister(&ops) {
                last_err = Some(e.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gives every relocated function its original bytes back before the
/// library goes: their entries jump to detours that call into it. A
/// detour a thread may still be in stays allocated (retired, never freed
/// once the library is gone); the function itself no longer leads there.
pub(super) fn unrelocate_all() -> Result<(), String> {
    let left =
        livetrace_ftrace::unrelocate_all(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    if left > 0 {
        return Err(format!(
            "{left} relocated function(s) could not be given their bytes back; not unloading"
        ));
    }
    Ok(())
}

pub(super) fn detach() {
    // The injector that started this lets go of the process (ptrace) right
    // after its call returns; every batch below is refused while it is
    // still attached.
    let deadline = Instant::now() + Duration::from_secs(10);
    while livetrace::raw::poke::world::tracer_pid().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    unblock_signals();
    // Every connection ends: its sessions stop (sites back to NOPs,
    // quiescence waited for) and its patches are reverted.
    livetrace_server::shutdown(Duration::from_secs(10));
    if let Err(e) = livetrace_server::revert_all_patches() {
        return fail(format!("cannot revert a patch: {e}"));
    }
    if let Err(m) = unregister_leftovers(DETACH_RETRY) {
        return fail(m);
    }
    if let Err(m) = unrelocate_all() {
        return fail(m);
    }
    crate::STATE.store(crate::OFF, Release);
    restore_signals();
    crate::tls::forget_destructors();
    // The ring buffers' thread-exit hook (a pthread key destructor).
    livetrace_ring::forget_exit_hook();
    let code: Vec<u64> = crate::code::ranges()
        .into_iter()
        .flat_map(|(a, b)| [a as u64, b as u64])
        .collect();
    let code = Box::leak(code.into_boxed_slice());
    livetrace_attach_code[0].store(code.as_ptr() as usize, Release);
    livetrace_attach_code[1].store(code.len() / 2, Release);
    crate::code::release_at_unload();
    publish(UNLOADABLE, "");
}
