//! Starting: the attach thread, from the record table to the control
//! socket, and the objects kept loaded until their sleds are converted.

use super::*;

/// `flags` bit: the caller converts the sleds with every thread held
/// (through [`livetrace_attach_convert`]); without it the attach thread
/// converts them itself by stopping the world with a signal.
pub const CONVERT_BY_CALLER: u64 = 1;
/// `flags` bit: start no control socket.
pub const NO_SERVER: u64 = 2;

/// How long the attach thread waits for the caller's conversion before
/// doing it itself (the injector died, say).
pub(super) const CONVERT_WAIT: Duration = Duration::from_secs(60);

/// Starts livetrace in a running process (see the module docs); returns 0,
/// or a negative errno (`-EALREADY` when started already).
#[unsafe(no_mangle)]
pub extern "C" fn livetrace_attach_start(flags: u64) -> i64 {
    std::panic::catch_unwind(|| {
        if livetrace_attach_state
            .compare_exchange(IDLE, PREPARING, AcqRel, Acquire)
            .is_err()
        {
            return -(libc::EALREADY as i64);
        }
        let spawned = std::thread::Builder::new()
            .name("livetrace-attach".into())
            .spawn(move || {
                if std::panic::catch_unwind(|| attach(flags)).is_err() {
                    fail("internal error while attaching");
                }
            });
        match spawned {
            Ok(_) => 0,
            Err(e) => {
                fail(format!("cannot start the attach thread: {e}"));
                -(e.raw_os_error().unwrap_or(libc::EAGAIN) as i64)
            }
        }
    })
    .unwrap_or(-(libc::EFAULT as i64))
}

/// Signal dispositions as the program had them before livetrace.
pub(super) struct Saved {
    pub(super) sigs: Vec<(libc::c_int, libc::sigaction)>,
}

pub(super) static SAVED: AtomicPtr<Saved> = AtomicPtr::new(std::ptr::null_mut());

/// Lets this thread (and the threads it starts) take every signal: it
/// inherited the mask of whichever program thread started it.
pub(super) fn unblock_signals() {
    // SAFETY: an empty set is valid; sets this thread's mask only.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

pub(super) fn attach(flags: u64) {
    unblock_signals();
    crate::tls::set_loaded_late(true);
    let mut blocked = BlockedSignals::start();
    // The core checks its thread state is in static TLS (a thread spawned
    // and joined).
    if let Err(e) = livetrace_ftrace::inspect(|_| ()) {
        return fail(match e {
            livetrace::Error::DynamicTls => format!(
                "livetrace's thread-local state is not in static TLS (offset {:#x}): {e}",
                crate::tls::static_tls_offset()
            ),
            e => e.to_string(),
        });
    }
    match livetrace_ftrace::inside_tpoff() {
        Some(off) => livetrace_attach_unload[1].store(off as usize, Release),
        None => return fail("livetrace's thread-local state is not in static TLS"),
    }
    livetrace_attach_unload[0].store(
        livetrace_tracers::retstack::return_to_handler_addr(),
        Release,
    );
    livetrace_attach_unload[2].store(
        livetrace_tracers::retstack::return_to_handler_full_addr(),
        Release,
    );
    blocked.sample();
    let serial = crate::interpose::serialize();
    let prepared = (|| -> Result<(Vec<u64>, Vec<Pin>), livetrace::Error> {
        let scan = livetrace_ftrace::discover()?;
        let exe_sites = executable_macro_sites();
        let ext: Vec<ExternalSite<'_>> = exe_sites
            .iter()
            .map(|s| ExternalSite {
                addr: s.addr,
                name: s.path,
                file: s.file,
                line: s.line,
            })
            .collect();
        let ins = livetrace_ftrace::insert_external(&ext)?;
        if crate::verbose() {
            eprintln!(
                "livetrace: attach: {} compiler site(s), {} #[traced] site(s) of the executable",
                scan.added_sites, ins.inserted
            );
        }
        livetrace_ftrace::inspect(|t| {
            let mut sleds: Vec<u64> = t
                .records()
                .iter()
                .filter(|r| !r.is_live())
                .map(|r| r.ip() as u64)
                .collect();
            sleds.sort_unstable();
            // Keep the objects with sleds loaded until they are converted.
            let mut pins = Vec::new();
            let with_sleds: std::collections::HashSet<_> = t
                .records()
                .iter()
                .filter(|r| !r.is_live())
                .map(|r| r.object())
                .collect();
            for o in t.objects() {
                if !o.is_main() && with_sleds.contains(&o.id()) {
                    if let Some(p) = Pin::take(o.dl_name()) {
                        pins.push(p);
                    }
                }
            }
            (sleds, pins)
        })
    })();
    drop(serial);
    let (sleds, pins) = match prepared {
        Ok(v) => v,
        Err(e) => return fail(e.to_string()),
    };
    // Before anything can probe threads or stop the world.
    if let Err(e) = choose_signals(blocked) {
        return fail(e);
    }
    if flags & CONVERT_BY_CALLER != 0 {
        if let Err(e) = prepare_conversion(sleds) {
            return fail(e);
        }
        publish(READY, "");
        let deadline = Instant::now() + CONVERT_WAIT;
        while CONVERT_DONE.load(Acquire) == 0 && Instant::now() < deadline {
            futex_wait(&CONVERT_DONE, 0, Duration::from_millis(200));
        }
        if CONVERT_DONE.load(Acquire) == ABORTED {
            // Detached before converting: nothing else was started.
            drop(pins);
            return detach();
        }
        if CONVERT_DONE.load(Acquire) == 0 {
            eprintln!(
                "livetrace: attach: the sleds were not converted by the injector in {}s; \
                 converting them with the other threads stopped by a signal",
                CONVERT_WAIT.as_secs()
            );
        }
    }
    // Records of sleds now holding the NOP5 are marked converted; any left
    // (not converted above) are converted by stopping the world.
    let serial = crate::interpose::serialize();
    let conv = livetrace_ftrace::convert(None, ConvertPolicy::StopTheWorld);
    drop(serial);
    drop(pins);
    let summary = match conv {
        Ok(c) => format!(
            "{} site(s) converted{}",
            c.converted,
            if c.failed.is_empty() {
                String::new()
            } else {
                format!(", {} left unconverted", c.failed.len())
            }
        ),
        Err(e) => format!("conversion: {e}"),
    };
    livetrace_attach_state.store(STARTING, Release);
    let report = {
        let _serial = crate::interpose::serialize();
        livetrace::init()
    };
    if let Err(e) = report {
        return fail(e.to_string());
    }
    crate::STATE.store(crate::ACTIVE, Release);
    if flags & NO_SERVER != 0 {
        return publish(SERVING, &summary);
    }
    match livetrace_server::serve() {
        Ok(path) => {
            if crate::verbose() {
                eprintln!(
                    "livetrace: attached: {summary}; control socket {}",
                    path.display()
                );
            }
            publish(SERVING, &path.display().to_string())
        }
        Err(e) => fail(format!("cannot start the control socket: {e}")),
    }
}

pub(super) fn prepare_conversion(sleds: Vec<u64>) -> Result<(), String> {
    // SAFETY: registering for sync-core membarrier is process-wide and
    // idempotent.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
        )
    };
    if rc != 0 {
        return Err(format!(
            "membarrier sync-core is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: opens a NUL-terminated path; the descriptor is kept for the
    // life of the process (the converter may run at any time).
    let fd = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "/proc/self/mem: {}",
            std::io::Error::last_os_error()
        ));
    }
    let n = sleds.len();
    let p = Box::new(Prepared {
        mem_fd: fd,
        sleds,
        page: vec![0u8; PAGE as usize + 8],
        check: vec![0u8; PAGE as usize + 8],
    });
    let ptr = Box::into_raw(p);
    // SAFETY: just made, not shared yet.
    let addr = unsafe { (*ptr).sleds.as_ptr() } as usize;
    livetrace_attach_sleds[0].store(addr, Release);
    livetrace_attach_sleds[1].store(n, Release);
    let old = PREPARED.swap(ptr, AcqRel);
    debug_assert!(old.is_null());
    Ok(())
}

/// A reference that keeps a library loaded (`dlopen` with `RTLD_NOLOAD`).
pub(super) struct Pin(*mut c_void);

impl Pin {
    pub(super) fn take(name: &str) -> Option<Pin> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: NOLOAD only takes a reference to an already loaded object.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_NOW) };
        (!h.is_null()).then_some(Pin(h))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: our own reference.
        unsafe { libc::dlclose(self.0) };
    }
}
