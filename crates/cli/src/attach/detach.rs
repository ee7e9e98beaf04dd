//! Detaching: tearing livetrace down inside the process, checking with
//! every thread held that none is inside the library, and unloading it.

use super::*;

/// Runs `f` with the process not traced (its memory still readable), and
/// seizes it again. Tearing livetrace down stops sessions and reverts
/// patches, batches the engine refuses while the process is traced (a
/// tracer that does not pass SIGTRAP on would kill it) and while a thread
/// blocks SIGTRAP, as threads this command keeps stopped a moment after
/// their creation do (glibc's creation mask).
pub(super) fn untraced<T>(
    p: &mut Process,
    f: impl FnOnce(&mut Process) -> Result<T, Error>,
) -> Result<T, Error> {
    p.let_go()?;
    let r = f(p);
    let again = p.reseize().map_err(Error::from);
    let v = r?;
    again?;
    Ok(v)
}

/// Tears livetrace down in the process and unloads the library (see the
/// module docs); the process stays attached (ptrace) by `p`, but for the
/// teardown itself ([`untraced`]).
pub(super) fn unload(p: &mut Process, l: &Library) -> Result<(), Error> {
    let state = l.state(p)?;
    if state == protocol::STARTUP {
        return Err(Error::NotServing(
            "liblivetrace.so was loaded at start-up (LD_PRELOAD or linked): it stays; sessions \
             end when their command does"
                .into(),
        ));
    }
    if state != protocol::IDLE && state != protocol::UNLOADABLE {
        // Let an attach that is starting reach a point where it can be
        // stopped (a detach under way, its end).
        let s = l.wait_any(
            p,
            &[
                protocol::READY,
                protocol::SERVING,
                protocol::UNLOADABLE,
                protocol::DETACHING,
            ],
            "starting",
        )?;
        if s == protocol::DETACHING {
            untraced(p, |p| {
                l.wait_for(p, &[protocol::UNLOADABLE], "tearing down")
            })?;
        }
    }
    if ![protocol::IDLE, protocol::UNLOADABLE].contains(&l.state(p)?) {
        let rc = p.call(l.detach, &[], Safety::CallsLibc, STEP)? as i64;
        if rc != 0 {
            return Err(Error::LibraryRefused {
                what: format!("livetrace refused to detach (state {})", l.state(p)?),
                source: std::io::Error::from_raw_os_error(-rc as i32),
            });
        }
        untraced(p, |p| {
            l.wait_for(p, &[protocol::UNLOADABLE], "tearing down")
        })?;
    }
    // Nothing may be inside the library when it goes (see `inside_library`).
    let mut last = String::new();
    let mut clear = false;
    for attempt in 1..=HOLD_ATTEMPTS * 4 {
        match inside_library(p, l)? {
            None => {
                clear = true;
                break;
            }
            Some(why) => last = why,
        }
        let _ = p.wait_until(Duration::from_millis(u64::from(attempt).min(20)), |_| false);
    }
    if !clear {
        return Err(Error::StillInside {
            why: last,
            pid: p.pid(),
        });
    }
    // The program's own masks, as they were.
    reblock(p, l)?;
    let path = l
        .module
        .path
        .strip_suffix(" (deleted)")
        .unwrap_or(&l.module.path)
        .to_string();
    // A reference of our own names the loaded object; dropping it and the
    // one attaching took unloads it.
    let h = p.dlopen(&path, libc::RTLD_NOLOAD | libc::RTLD_NOW, STEP)?;
    p.dlclose(h, STEP)?;
    p.dlclose(h, STEP)?;
    if p.module(&path)?.is_some() {
        return Err(Error::StillMapped { path });
    }
    Ok(())
}

/// Whether anything of the process can still run library code, and what:
/// one of its own threads not yet exited; with every thread held, a thread
/// executing in it, a thread inside livetrace by its per-thread byte (a
/// callback, a return hook's exit path: the byte the quiescence wait
/// reads), or a frame whose return the graph tracer hooked and that has
/// not returned yet (the hook's address in its live stack). Once
/// sessions are torn down nothing else leads into the library: sites are
/// NOPs, its signal handlers are the program's again, its thread-local
/// destructors are forgotten.
pub(super) fn inside_library(p: &mut Process, l: &Library) -> Result<Option<String>, Error> {
    for tid in p.tids() {
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", p.pid()))
            .unwrap_or_default();
        // The names livetrace's threads are given (truncated to 15 bytes);
        // the attach thread's helper threads inherit its name.
        if [
            "livetrace-serve",
            "livetrace-conn",
            "livetrace-attac",
            "livetrace-detac",
        ]
        .contains(&comm.trim_end())
        {
            return Ok(Some(format!(
                "livetrace's thread {tid} ({}) has not exited",
                comm.trim()
            )));
        }
    }
    let hook = p.read_u64(l.unload)?;
    let inside_off = p.read_u64(l.unload + 8)? as i64;
    let full_hook = p.read_u64(l.unload + 16)?;
    let mut ranges: Vec<(u64, u64)> = l.module.maps.iter().map(|m| (m.start, m.end)).collect();
    // Its trampolines and stubs, which it unmaps as it goes.
    let (at, n) = (p.read_u64(l.code)?, p.read_u64(l.code + 8)? as usize);
    if at != 0 && n > 0 && n < 1 << 20 {
        let mut raw = vec![0u8; n * 16];
        p.read(at, &mut raw)?;
        ranges.extend(raw.chunks_exact(16).map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
            )
        }));
    }
    p.hold()?;
    let r = (|| -> Result<Option<String>, livetrace_inject::Error> {
        for tid in p.tids() {
            let regs = p.registers(tid)?;
            if ranges
                .iter()
                .any(|&(lo, hi)| lo <= regs.rip && regs.rip < hi)
            {
                return Ok(Some(format!(
                    "thread {tid} is executing livetrace's code ({:#x})",
                    regs.rip
                )));
            }
            if inside_off != 0 && regs.fs_base != 0 {
                let mut b = [0u8; 1];
                if p.read(regs.fs_base.wrapping_add(inside_off as u64), &mut b)
                    .is_ok()
                    && b[0] != 0
                {
                    return Ok(Some(format!("thread {tid} is inside livetrace")));
                }
            }
        }
        if hook != 0 {
            if let Some(b) = p.find_inside(|w| w == hook || (full_hook != 0 && w == full_hook))? {
                if b.addr == 0 {
                    return Ok(Some(format!("thread {}'s stack cannot be checked", b.tid)));
                }
                return Ok(Some(format!(
                    "thread {} is in a function entered while the graph tracer traced it, which \
                     has not returned yet (its return is hooked)",
                    b.tid
                )));
            }
        }
        Ok(None)
    })();
    p.release()?;
    Ok(r?)
}

/// `livetrace attach PID`.
pub fn cmd_attach(dir: &Path, pid: u32) -> Result<(), Error> {
    let direct = dir.join(format!("{pid}.sock"));
    if direct.exists() || find_socket(pid as i32).is_some() {
        let _ = writeln!(std::io::stdout(), "livetrace already runs in process {pid}");
        return Ok(());
    }
    let a = attach_process(pid as i32, config().lib.as_deref())?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", a.summary(pid));
    if !a.already {
        let _ = writeln!(out, "control socket: {}", a.socket.display());
    }
    Ok(())
}

/// `livetrace detach PID`.
pub fn cmd_detach(pid: u32) -> Result<(), Error> {
    let t0 = Instant::now();
    let pid = pid as i32;
    let target = Target::inspect(pid)?;
    let Some(m) = Library::find(&target.modules) else {
        return Err(Error::NotLoaded { pid });
    };
    let l = Library::of(m)?;
    let _hold_signals = Uninterruptible::new();
    let mut p = Process::seize(target)?;
    unload(&mut p, &l)?;
    let stats = p.detach()?;
    let _ = writeln!(
        std::io::stdout(),
        "detached from process {pid} in {:.0} ms (no thread stopped longer than {:.1} ms); \
         liblivetrace.so is unloaded",
        t0.elapsed().as_secs_f64() * 1e3,
        stats.longest_stop.as_secs_f64() * 1e3
    );
    Ok(())
}
