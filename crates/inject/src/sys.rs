//! Thin, checked wrappers over `ptrace(2)` and `waitpid(2)`.
//!
//! Every request is made by the thread that seized the tracee (ptrace
//! binds a tracee to one tracer *thread*); [`crate::Process`] is `!Send`
//! for that reason.

use std::io;

pub(crate) type Regs = libc::user_regs_struct;

const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_LISTEN: libc::c_uint = 0x4208;
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const NT_X86_XSTATE: usize = 0x202;

pub(crate) const PTRACE_O_TRACECLONE: usize = 0x8;
pub(crate) const PTRACE_O_TRACEEXEC: usize = 0x10;

const PTRACE_EVENT_CLONE: i32 = 3;
const PTRACE_EVENT_EXEC: i32 = 4;
const PTRACE_EVENT_STOP: i32 = 128;

/// Largest xstate buffer asked for; the kernel reports the real size
/// (about 2.7 KiB with AVX-512, 11 KiB with AMX).
const XSTATE_MAX: usize = 16 << 10;

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `ptrace(req, tid, addr, data)`.
///
/// # Safety
/// `addr` and `data` must be what `req` expects (pointers valid for the
/// kernel to read or write as the request defines).
unsafe fn ptrace(
    req: libc::c_uint,
    tid: i32,
    addr: usize,
    data: usize,
) -> io::Result<libc::c_long> {
    // SAFETY: forwarded from the caller's contract; clearing errno first is
    // only needed for PEEK requests, which are not used here.
    check(unsafe { libc::ptrace(req, tid, addr, data) })
}

/// Attaches to `tid` without stopping it.
pub(crate) fn seize(tid: i32, options: usize) -> io::Result<()> {
    // SAFETY: SEIZE takes no pointers; `data` is the option mask.
    unsafe { ptrace(PTRACE_SEIZE, tid, 0, options) }.map(drop)
}

/// Asks `tid` to stop (it reports `PTRACE_EVENT_STOP`).
pub(crate) fn interrupt(tid: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    unsafe { ptrace(PTRACE_INTERRUPT, tid, 0, 0) }.map(drop)
}

/// Resumes a stopped `tid`, delivering `sig` (0: none).
pub(crate) fn cont(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers; `data` is a signal number.
    unsafe { ptrace(libc::PTRACE_CONT, tid, 0, sig as usize) }.map(drop)
}

/// Lets a tracee in group-stop stay stopped while still reporting events.
pub(crate) fn listen(tid: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    unsafe { ptrace(PTRACE_LISTEN, tid, 0, 0) }.map(drop)
}

/// Detaches a stopped `tid`, delivering `sig` (0: none).
pub(crate) fn detach(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    unsafe { ptrace(libc::PTRACE_DETACH, tid, 0, sig as usize) }.map(drop)
}

pub(crate) fn get_regs(tid: i32) -> io::Result<Regs> {
    // SAFETY: an all-zero user_regs_struct is valid; GETREGS fills it.
    let mut r: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: `data` points to a user_regs_struct the kernel writes.
    unsafe { ptrace(libc::PTRACE_GETREGS, tid, 0, &mut r as *mut Regs as usize) }?;
    Ok(r)
}

pub(crate) fn set_regs(tid: i32, r: &Regs) -> io::Result<()> {
    // SAFETY: `data` points to a user_regs_struct the kernel reads.
    unsafe { ptrace(libc::PTRACE_SETREGS, tid, 0, r as *const Regs as usize) }.map(drop)
}

/// The thread's whole extended state (x87, SSE, AVX, ... as XSAVE lays it
/// out), exactly as many bytes as the kernel keeps.
pub(crate) fn get_xstate(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `data` points to an iovec describing `buf`; the kernel writes
    // at most iov_len bytes and stores the length it wrote.
    unsafe {
        ptrace(
            PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE,
            &mut iov as *mut libc::iovec as usize,
        )
    }?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub(crate) fn set_xstate(tid: i32, x: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: x.as_ptr() as *mut libc::c_void,
        iov_len: x.len(),
    };
    // SAFETY: `data` points to an iovec describing `x`, which the kernel
    // only reads.
    unsafe {
        ptrace(
            PTRACE_SETREGSET,
            tid,
            NT_X86_XSTATE,
            &mut iov as *mut libc::iovec as usize,
        )
    }
    .map(drop)
}

/// The thread's blocked signals (bit `n - 1` for signal `n`): the mask
/// it returns to, not the temporary one of a `sigsuspend`, `ppoll`,
/// `pselect` or `epoll_pwait` it is stopped in (the kernel reports the
/// saved mask then).
pub(crate) fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut m: u64 = 0;
    // SAFETY: `addr` is the kernel's sigset size (8 bytes on x86-64),
    // `data` points to 8 bytes the kernel writes.
    unsafe { ptrace(PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as usize) }?;
    Ok(m)
}

/// Sets the thread's blocked signals. The kernel also drops a temporary
/// mask the thread would have restored on its way out of the call it is
/// stopped in, so `mask` is the one it keeps; a call it restarts sets its
/// temporary mask again.
pub(crate) fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    // SAFETY: `addr` is the kernel's sigset size, `data` points to 8 bytes
    // the kernel reads.
    unsafe { ptrace(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as usize) }.map(drop)
}

pub(crate) fn get_siginfo(tid: i32) -> io::Result<libc::siginfo_t> {
    // SAFETY: a zeroed siginfo_t is valid; GETSIGINFO fills it.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `data` points to a siginfo_t the kernel writes.
    unsafe {
        ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            0,
            &mut si as *mut libc::siginfo_t as usize,
        )
    }?;
    Ok(si)
}

pub(crate) fn set_siginfo(tid: i32, si: &libc::siginfo_t) -> io::Result<()> {
    // SAFETY: `data` points to a siginfo_t the kernel reads.
    unsafe {
        ptrace(
            libc::PTRACE_SETSIGINFO,
            tid,
            0,
            si as *const libc::siginfo_t as usize,
        )
    }
    .map(drop)
}

pub(crate) fn event_msg(tid: i32) -> io::Result<u64> {
    let mut v: libc::c_ulong = 0;
    // SAFETY: `data` points to an unsigned long the kernel writes.
    unsafe {
        ptrace(
            libc::PTRACE_GETEVENTMSG,
            tid,
            0,
            &mut v as *mut libc::c_ulong as usize,
        )
    }?;
    Ok(v)
}

/// Sends `sig` to one thread of `pid`.
pub(crate) fn tgkill(pid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: a plain signal to a thread; no pointers.
    check(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) }).map(drop)
}

/// What `waitpid` reported for one tracee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// It exited or was killed.
    Exited,
    /// `PTRACE_EVENT_STOP`: after `PTRACE_INTERRUPT`, a new thread's first
    /// stop (with `SIGTRAP`), or a group-stop (with the stop signal).
    Stop(i32),
    /// A signal is about to be delivered to it (signal-delivery-stop).
    Signal(i32),
    /// It created a thread (`PTRACE_EVENT_CLONE`).
    Clone,
    /// It called `execve` (`PTRACE_EVENT_EXEC`).
    Exec,
}

/// Waits for an event of `tid`; `None` when `nohang` and there is none.
pub(crate) fn wait(tid: i32, nohang: bool) -> io::Result<Option<Event>> {
    let mut status: libc::c_int = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `status` is a valid int for the kernel to write.
        let rc = unsafe { libc::waitpid(tid, &mut status, flags) };
        if rc == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        break;
    }
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Ok(Some(Event::Exited));
    }
    if !libc::WIFSTOPPED(status) {
        // WIFCONTINUED is not asked for; treat anything else as no news.
        return Ok(None);
    }
    let sig = libc::WSTOPSIG(status);
    Ok(Some(match status >> 16 {
        PTRACE_EVENT_STOP => Event::Stop(sig),
        PTRACE_EVENT_CLONE => Event::Clone,
        PTRACE_EVENT_EXEC => Event::Exec,
        _ => Event::Signal(sig),
    }))
}
