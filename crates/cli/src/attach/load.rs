//! Attaching: loading the library with every thread seized, starting its
//! attach thread, converting the sleds with every thread held outside them,
//! and waiting for the control socket.

use super::*;

/// What attaching did.
pub struct Attached {
    /// The control socket, as we reach it.
    pub socket: PathBuf,
    /// Sites found in the process's objects.
    pub sites: usize,
    /// From the start to the socket.
    pub elapsed: Duration,
    /// The longest any thread of the process was stopped.
    pub longest_stop: Duration,
    /// Whether livetrace was already running there.
    pub already: bool,
}

impl Attached {
    pub(super) fn summary(&self, pid: u32) -> String {
        if self.already {
            return format!("livetrace already runs in process {pid}");
        }
        format!(
            "loaded into process {pid} ({} sites) in {:.0} ms, no thread stopped longer than \
             {:.1} ms; `livetrace detach {pid}` unloads it",
            self.sites,
            self.elapsed.as_secs_f64() * 1e3,
            self.longest_stop.as_secs_f64() * 1e3
        )
    }
}

pub(super) fn inside_sled(sleds: &[u64], a: u64) -> bool {
    let i = sleds.partition_point(|&s| s < a);
    i > 0 && a - sleds[i - 1] < 5
}

/// Holds off Ctrl-C, SIGTERM, SIGHUP and SIGQUIT while alive: this command
/// must not die with a thread of the process halfway through a call it
/// made there (the thread would return to nowhere). They are delivered
/// when it drops.
pub(super) struct Uninterruptible(libc::sigset_t);

impl Uninterruptible {
    pub(super) fn new() -> Uninterruptible {
        // SAFETY: sigset operations on local sets; blocks the signals in
        // this (the only) thread, the old mask kept to restore.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::sigaddset(&mut set, s);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Uninterruptible(old)
        }
    }
}

impl Drop for Uninterruptible {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Set by a command that will not relocate (`--no-relocate`, or `ls`
/// without `--why-not`): a program without compiler sites then has nothing
/// it could show or trace.
pub(super) static NO_RELOCATE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// This command will not give functions without a site one by relocation.
pub fn will_not_relocate() {
    NO_RELOCATE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Loads livetrace into `pid` and waits for its control socket.
pub fn attach_process(pid: i32, lib: Option<&Path>) -> Result<Attached, Error> {
    let _hold_signals = Uninterruptible::new();
    let t0 = Instant::now();
    let target = Target::inspect(pid)?;
    if let Some(m) = Library::find(&target.modules) {
        return already_loaded(pid, m, t0);
    }
    // A program built without any site is attached to only when the
    // command may give functions a site by prologue relocation.
    let sites = count_sites(&target.modules);
    step_done(t0, &format!("{sites} compiler-emitted sites counted"));
    if sites == 0 && NO_RELOCATE.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::NoSites { exe: target.exe });
    }
    let lib = library_file(lib)?;
    let staged = Staged::new(pid, target.status.uids[1], &lib)?;
    let mut p = Process::seize(target)?;
    let r = load_and_start(&mut p, &staged, &lib);
    drop(staged);
    let socket = match r {
        Ok(s) => s,
        Err((e, loaded)) => {
            if let Some(l) = loaded {
                // Leave the process as it was.
                if let Err(u) = unload(&mut p, &l) {
                    return Err(Error::UndoFailed {
                        source: Box::new(e),
                        undo: Box::new(u),
                    });
                }
            }
            return Err(e);
        }
    };
    let stats = p.detach()?;
    Ok(Attached {
        socket: reachable(pid, &socket),
        sites,
        elapsed: t0.elapsed(),
        longest_stop: stats.longest_stop,
        already: false,
    })
}

type Failure = (Error, Option<Box<Library>>);

/// LIVETRACE_VERBOSE=1: attach's steps on stderr.
pub(super) fn verbose() -> bool {
    std::env::var_os("LIVETRACE_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Reports the time since `t0` on stderr, with LIVETRACE_VERBOSE=1.
pub(super) fn step_done(t0: Instant, what: &str) {
    if verbose() {
        eprintln!(
            "livetrace: attach: {what} at {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}

pub(super) fn load_and_start(
    p: &mut Process,
    staged: &Staged,
    lib: &Path,
) -> Result<String, Failure> {
    let e = Error::from;
    let t0 = Instant::now();
    let handle = match p.dlopen(&staged.path, libc::RTLD_NOW, STEP) {
        Ok(h) => h,
        Err(livetrace_inject::Error::Load(msg)) => return Err((explain_load(msg, lib), None)),
        Err(x) => return Err((e(x), None)),
    };
    let _ = handle;
    step_done(t0, "loaded");
    let module = p
        .module(&staged.path)
        .map_err(|x| (e(x), None))?
        .ok_or_else(|| {
            (
                Error::AttachProtocol("the library is not mapped after dlopen".into()),
                None,
            )
        })?;
    let l = Library::of(module).map_err(|m| (m, None))?;
    let fail = |m: Error, l: Library| -> Result<String, Failure> { Err((m, Some(Box::new(l)))) };
    let abi = {
        let mut b = [0u8; 4];
        match l
            .module
            .symbol("livetrace_attach_abi")
            .ok()
            .flatten()
            .map(|s| p.read(s.addr, &mut b))
        {
            Some(Ok(())) => u32::from_le_bytes(b),
            _ => 0,
        }
    };
    if abi != protocol::ABI {
        return fail(Error::AbiMismatch { library: abi }, l);
    }
    match l.state(p) {
        Ok(protocol::IDLE) => {}
        Ok(s) => {
            return fail(
                Error::AttachProtocol(format!("livetrace is in state {s} in the process")),
                l,
            )
        }
        Err(m) => return fail(m, l),
    }
    let rc = match p.call(
        l.start,
        &[Arg::Value(protocol::CONVERT_BY_CALLER)],
        Safety::CallsLibc,
        STEP,
    ) {
        Ok(rc) => rc as i64,
        Err(x) => return fail(e(x), l),
    };
    if rc != 0 {
        return fail(
            Error::LibraryRefused {
                what: "starting livetrace failed".into(),
                source: std::io::Error::from_raw_os_error(-rc as i32),
            },
            l,
        );
    }
    step_done(t0, "started");
    if let Err(m) = l.wait_for(p, &[protocol::READY], "finding the sites") {
        return fail(m, l);
    }
    step_done(t0, "sites found");
    let sleds = match read_sleds(p, &l) {
        Ok(s) => s,
        Err(m) => return fail(m, l),
    };
    if let Err(m) = convert_held(p, &l, &sleds) {
        return fail(m, l);
    }
    step_done(t0, &format!("{} sleds converted", sleds.len()));
    if let Err(m) = l.wait_for(p, &[protocol::SERVING], "starting its control socket") {
        return fail(m, l);
    }
    step_done(t0, "serving");
    Ok(l.message(p))
}

pub(super) fn read_sleds(p: &Process, l: &Library) -> Result<Vec<u64>, Error> {
    let ptr = p.read_u64(l.sleds)?;
    let n = p.read_u64(l.sleds + 8)? as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > 1 << 26 {
        return Err(Error::AttachProtocol(format!("implausible sled count {n}")));
    }
    let mut raw = vec![0u8; n * 8];
    p.read(ptr, &mut raw)?;
    let mut v: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Holds every thread, checks none is inside a sled, has the library
/// convert them, releases. Retries while some thread is inside one.
pub(super) fn convert_held(p: &mut Process, l: &Library, sleds: &[u64]) -> Result<(), Error> {
    let mut last = None;
    for attempt in 1..=HOLD_ATTEMPTS {
        p.hold()?;
        let busy = if sleds.is_empty() {
            None
        } else {
            p.find_inside(|a| inside_sled(sleds, a))?
        };
        if busy.is_none() {
            let r = p.call(l.convert, &[], Safety::LockFree, STEP);
            let r = r.map_err(Error::from).and_then(|n| {
                if (n as i64) < 0 {
                    return Err(Error::AttachProtocol(
                        "the library had nothing prepared to convert".into(),
                    ));
                }
                unblock_held(p, l)
            });
            p.release()?;
            return r;
        }
        last = busy;
        p.release()?;
        let _ = p.wait_until(Duration::from_micros(200 * u64::from(attempt)), |_| false);
    }
    let b = last.expect("set when retrying");
    Err(Error::InsideSled {
        tid: b.tid,
        in_rip: b.in_rip,
        addr: b.addr,
        attempts: HOLD_ATTEMPTS,
    })
}

/// A thread's start time (field 22 of its `stat`), which tells a reused
/// thread id apart.
pub(super) fn start_time(pid: i32, tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The name, in parentheses, may hold spaces; fields count after it.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// With every thread held: clears the signals livetrace must be able to
/// deliver (SIGTRAP for its traps, its world signal for probes and stops)
/// from every thread's mask, and logs in the library what was cleared
/// where, for [`reblock`]. A thread that started before livetrace was
/// loaded may block them (a `sigwait` thread blocks everything), and
/// livetrace refuses to patch while one does: its `int3`s would kill the
/// thread. Threads created later inherit a mask from a thread cleared
/// here, and from then on livetrace checks masks before every batch.
pub(super) fn unblock_held(p: &mut Process, l: &Library) -> Result<(), Error> {
    let need = p.read_u64(l.signals)?;
    if need == 0 {
        return Err(Error::AttachProtocol(
            "the library did not say which signals it needs".into(),
        ));
    }
    let mut log = Vec::new();
    for tid in p.tids() {
        let mask = match p.signal_mask(tid) {
            Ok(m) => m,
            // Exited while held (a zombie no longer answers).
            Err(_) if start_time(p.pid(), tid).is_none() => continue,
            Err(x) => return Err(x.into()),
        };
        if mask & need == 0 || glibc_transient(mask) {
            continue;
        }
        p.set_signal_mask(tid, mask & !need)?;
        if log.len() < protocol::MASK_SLOTS {
            let start = start_time(p.pid(), tid).unwrap_or(0);
            log.push([tid as u64, start, mask & need]);
        }
    }
    let mut raw = Vec::with_capacity(8 + log.len() * 24);
    raw.extend_from_slice(&(log.len() as u64).to_le_bytes());
    for w in log.iter().flatten() {
        raw.extend_from_slice(&w.to_le_bytes());
    }
    p.write(l.masks, &raw)?;
    if !log.is_empty() && verbose() {
        eprintln!(
            "livetrace: attach: SIGTRAP and the world signal unblocked in {} thread(s)",
            log.len()
        );
    }
    Ok(())
}

/// Whether a mask is one glibc sets for a few instructions with a raw
/// system call, the thread's own mask saved in its memory to be put back:
/// every signal (creating a thread, in the creator and in the new thread
/// until it starts; `raise`), or every signal but SIGSETXID (a thread
/// exiting). Such a mask is not the thread's: clearing signals from it
/// changes nothing lasting, and blocking them again at detach would block
/// them in the mask the thread has by then (its own, which never blocked
/// them), for good, and in every thread it creates.
pub(super) fn glibc_transient(mask: u64) -> bool {
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    let setxid = 1u64 << (33 - 1);
    mask | unblockable == u64::MAX
        || (mask & setxid == 0 && mask | unblockable | setxid == u64::MAX)
}

/// With livetrace torn down: blocks again, in the threads [`unblock_held`]
/// cleared that still run, the signals it cleared, every thread held (a
/// thread found in one of glibc's transient masks is let run and tried
/// again).
pub(super) fn reblock(p: &mut Process, l: &Library) -> Result<(), Error> {
    let n = p.read_u64(l.masks)? as usize;
    if n == 0 {
        return Ok(());
    }
    if n > protocol::MASK_SLOTS {
        return Err(Error::AttachProtocol(format!(
            "implausible count of thread masks {n}"
        )));
    }
    let mut raw = vec![0u8; n * 24];
    p.read(l.masks + 8, &mut raw)?;
    let words: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let mut todo: Vec<&[u64]> = words.chunks_exact(3).collect();
    for attempt in 1..=HOLD_ATTEMPTS {
        p.hold()?;
        let tids = p.tids();
        let r = (|| -> Result<(), Error> {
            let mut later = Vec::new();
            for &w in &todo {
                let (tid, start, bits) = (w[0] as i32, w[1], w[2]);
                if !tids.contains(&tid) || start_time(p.pid(), tid) != Some(start) {
                    continue;
                }
                let mask = p.signal_mask(tid)?;
                if glibc_transient(mask) && attempt < HOLD_ATTEMPTS {
                    later.push(w);
                    continue;
                }
                p.set_signal_mask(tid, mask | bits)?;
            }
            todo = later;
            Ok(())
        })();
        p.release()?;
        r?;
        if todo.is_empty() {
            break;
        }
        let _ = p.wait_until(Duration::from_millis(1), |_| false);
    }
    Ok(p.write(l.masks, &0u64.to_le_bytes())?)
}

pub(super) fn already_loaded(pid: i32, m: Module, t0: Instant) -> Result<Attached, Error> {
    let l = Library::of(m)?;
    let target = Target::inspect(pid)?;
    let p = Process::seize(target)?;
    let state = l.state(&p)?;
    let msg = l.message(&p);
    drop(p);
    match state {
        protocol::SERVING if !msg.is_empty() => Ok(Attached {
            socket: reachable(pid, &msg),
            sites: 0,
            elapsed: t0.elapsed(),
            longest_stop: Duration::ZERO,
            already: true,
        }),
        protocol::STARTUP => Err(Error::NotServing(format!(
            "liblivetrace.so was loaded at start-up in process {pid} but runs no control socket \
             (LIVETRACE_SERVE=0?)"
        ))),
        protocol::FAILED => Err(Error::NotServing(format!(
            "livetrace is loaded in process {pid} but failed to start: {msg}; `livetrace detach \
             {pid}` unloads it"
        ))),
        s => Err(Error::NotServing(format!(
            "livetrace is loaded in process {pid} but not serving (state {s}): another attach \
             is under way, or one was interrupted; `livetrace detach {pid}` unloads it"
        ))),
    }
}
