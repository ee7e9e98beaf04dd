//! Choosing the real-time signals livetrace uses among those the program
//! leaves alone, and putting the program's dispositions back.

use super::*;

/// Whether `sig` has its default disposition and no thread blocks it.
pub(super) fn free_signal(sig: libc::c_int, blocked: u64) -> bool {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: queries only.
    if unsafe { libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: filled by sigaction.
    let cur = unsafe { cur.assume_init() };
    cur.sa_sigaction == libc::SIG_DFL && blocked & (1u64 << (sig - 1)) == 0
}

/// Signals some thread keeps blocked, from `/proc/self/task/*/status`,
/// sampled several times while the attach thread works: a thread's mask
/// counts only for what it blocks in every sample, threads that come and
/// go meanwhile not at all, and a mask blocking everything not at all
/// (glibc blocks everything while it creates a thread, and a new thread
/// starts so, for as long as they wait for a CPU or the injector holds
/// them; a thread that really blocks everything cannot answer the thread
/// probes on any signal).
pub(super) struct BlockedSignals {
    pub(super) steady: std::collections::HashMap<String, u64>,
    pub(super) samples: u32,
    pub(super) since: Instant,
}

impl BlockedSignals {
    pub(super) fn read() -> std::collections::HashMap<String, u64> {
        let mut out = std::collections::HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
                    // Held by the injector (at a clone, say): not its own
                    // doing.
                    if s.lines().any(|l| l.starts_with("State:\tt")) {
                        continue;
                    }
                    if let Some(v) = s.lines().find_map(|l| l.strip_prefix("SigBlk:")) {
                        let mask = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
                        // Everything blocked: creating or starting a thread
                        // (for as long as it waits for a CPU), or a thread
                        // no signal-based probe could ever reach anyway.
                        if mask.count_ones() < 56 {
                            out.insert(e.file_name().to_string_lossy().into_owned(), mask);
                        }
                    }
                }
            }
        }
        out
    }

    pub(super) fn start() -> BlockedSignals {
        BlockedSignals {
            steady: BlockedSignals::read(),
            samples: 1,
            since: Instant::now(),
        }
    }

    pub(super) fn sample(&mut self) {
        let next = BlockedSignals::read();
        self.steady.retain(|tid, mask| match next.get(tid) {
            Some(m) => {
                *mask &= m;
                true
            }
            None => false,
        });
        self.samples += 1;
    }

    /// The mask, after at least 4 samples over at least 10 ms, and which
    /// threads block what.
    pub(super) fn blocked(mut self) -> (u64, String) {
        while self.samples < 4 || self.since.elapsed() < Duration::from_millis(10) {
            std::thread::sleep(Duration::from_millis(3));
            self.sample();
        }
        let who: Vec<String> = self
            .steady
            .iter()
            .filter(|(_, &m)| m != 0)
            .map(|(t, m)| format!("thread {t}: {m:#x}"))
            .collect();
        (self.steady.values().fold(0, |a, m| a | m), who.join(", "))
    }
}

/// Picks the world signal (thread probes and stops) among real-time
/// signals the program does not use, and saves the program's dispositions
/// of it and of SIGTRAP.
pub(super) fn choose_signals(blocked: BlockedSignals) -> Result<(), String> {
    let (blocked, who) = blocked.blocked();
    let Some(world) = (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .rev()
        .find(|&s| free_signal(s, blocked))
    else {
        let handled: Vec<String> = (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .filter(|&s| !free_signal(s, 0))
            .map(|s| s.to_string())
            .collect();
        return Err(format!(
            "every real-time signal is in use by the program (blocked: {who}; with a \
             handler or ignored: {}); livetrace needs one",
            if handled.is_empty() {
                "none".into()
            } else {
                handled.join(" ")
            }
        ));
    };
    livetrace::raw::poke::set_probe_signal(world).map_err(|e| e.to_string())?;
    livetrace_attach_signals.store(
        (1u64 << (libc::SIGTRAP - 1)) | (1u64 << (world - 1)),
        Release,
    );
    let mut sigs = Vec::new();
    for sig in [libc::SIGTRAP, world] {
        let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries only.
        if unsafe { libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) } == 0 {
            // SAFETY: filled by sigaction.
            sigs.push((sig, unsafe { cur.assume_init() }));
        }
    }
    let old = SAVED.swap(Box::into_raw(Box::new(Saved { sigs })), AcqRel);
    if !old.is_null() {
        // SAFETY: a previous Saved of ours, no longer published.
        drop(unsafe { Box::from_raw(old) });
    }
    Ok(())
}

/// Signals pending for some thread or for the process.
pub(super) fn pending_anywhere() -> u64 {
    let mut mask = 0u64;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
                for l in s.lines() {
                    if let Some(v) = l
                        .strip_prefix("SigPnd:")
                        .or_else(|| l.strip_prefix("ShdPnd:"))
                    {
                        mask |= u64::from_str_radix(v.trim(), 16).unwrap_or(0);
                    }
                }
            }
        }
    }
    mask
}

/// Puts back the dispositions livetrace changed: only those whose handler
/// is still ours (the program may have set its own since). A real-time
/// signal of ours still pending somewhere (a probe a thread never
/// answered) would kill the process under its default action: that one is
/// ignored instead.
pub(super) fn restore_signals() {
    let saved = SAVED.swap(std::ptr::null_mut(), AcqRel);
    if saved.is_null() {
        return;
    }
    // SAFETY: ours, unpublished above.
    let saved = unsafe { Box::from_raw(saved) };
    for (sig, old) in &saved.sigs {
        let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: queries only.
        if unsafe { libc::sigaction(*sig, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: filled by sigaction.
        let cur = unsafe { cur.assume_init() };
        if !crate::interpose::is_own(cur.sa_sigaction) {
            continue;
        }
        let mut put = *old;
        if *sig != libc::SIGTRAP
            && old.sa_sigaction == libc::SIG_DFL
            && pending_anywhere() & (1u64 << (*sig - 1)) != 0
        {
            put.sa_sigaction = libc::SIG_IGN;
        }
        // SAFETY: reinstalls the disposition the program had (or ignores a
        // stray signal of ours).
        unsafe { libc::sigaction(*sig, &put, std::ptr::null_mut()) };
    }
}
