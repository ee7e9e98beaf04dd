//! What `/proc` tells about a thread without disturbing it.
//!
//! A thread blocked in the kernel (in a system call, or stopped) does not
//! run user code until it wakes, and `/proc/self/task/TID/syscall` then
//! gives its user stack pointer and the instruction it will resume at.
//! Reading its stack from another thread is only meaningful if it stayed
//! blocked the whole time: [`Blocked::still`] checks that its run time
//! (`schedstat`) and its `syscall` line did not change, so a thread that
//! woke, ran and blocked again in between is never taken for one that
//! slept throughout.
//!
//! Everything here allocates nothing and takes no lock: the stop-the-world
//! controller calls [`list_tids`] while other threads are held.

use std::ffi::CStr;

/// A thread seen blocked in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocked {
    pub tid: i32,
    /// The system call it is in; `None` when blocked outside one (stopped
    /// by a signal or a tracer, or in a page fault).
    pub syscall: Option<i64>,
    /// Its user stack pointer and resume address.
    pub sp: usize,
    pub pc: usize,
    /// Nanoseconds it has run, from `schedstat`.
    pub runtime: u64,
}

impl Blocked {
    /// Whether the thread is still blocked exactly as when first seen: it
    /// has not run since.
    pub fn still(&self) -> bool {
        blocked(self.tid).is_some_and(|now| now == *self)
    }
}

/// Formats `/proc/self/task/<tid>/<leaf>` into `buf` (NUL-terminated).
fn task_path<'a>(buf: &'a mut [u8; 64], tid: i32, leaf: &[u8]) -> &'a CStr {
    let prefix = b"/proc/self/task/";
    let mut n = prefix.len();
    buf[..n].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut t = tid.unsigned_abs();
    loop {
        digits[d] = b'0' + (t % 10) as u8;
        d += 1;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    buf[n] = b'/';
    n += 1;
    let leaf = &leaf[..leaf.len().min(buf.len() - n - 1)];
    buf[n..n + leaf.len()].copy_from_slice(leaf);
    n += leaf.len();
    buf[n] = 0;
    CStr::from_bytes_with_nul(&buf[..=n]).expect("one NUL at the end")
}

/// Reads a `/proc/self/task/<tid>/<leaf>` file into `out`; returns its
/// length (0 when it cannot be read: the thread is gone).
pub(crate) fn read_task_file(tid: i32, leaf: &[u8], out: &mut [u8]) -> usize {
    let mut pb = [0u8; 64];
    let path = task_path(&mut pb, tid, leaf);
    // SAFETY: open/read/close on a NUL-terminated path into a buffer we
    // own; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let mut len = 0usize;
        while len < out.len() {
            let n = libc::read(fd, out[len..].as_mut_ptr().cast(), out.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
        len
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

fn parse_dec(s: &[u8]) -> Option<i64> {
    let (neg, s) = match s.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, s),
    };
    if s.is_empty() {
        return None;
    }
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// The thread's state letter from `stat` (`R`, `S`, `D`, `T`, `t`, `Z`…).
pub(crate) fn state(tid: i32) -> Option<u8> {
    let mut buf = [0u8; 512];
    let n = read_task_file(tid, b"stat", &mut buf);
    let text = &buf[..n];
    // "tid (comm) S ...": the state follows the last ')'.
    let p = text.iter().rposition(|&b| b == b')')?;
    text.get(p + 2).copied()
}

/// Nanoseconds the thread has run (`schedstat`'s first field).
fn runtime(tid: i32) -> Option<u64> {
    let mut buf = [0u8; 96];
    let n = read_task_file(tid, b"schedstat", &mut buf);
    let first = buf[..n].split(|&b| b == b' ').next()?;
    parse_dec(first).map(|v| v as u64)
}

/// The thread, if it is blocked in the kernel now (not running, not
/// runnable), with where it will resume.
pub(crate) fn blocked(tid: i32) -> Option<Blocked> {
    let runtime = runtime(tid)?;
    if matches!(state(tid)?, b'R' | b'Z' | b'X' | b'x') {
        return None;
    }
    let mut buf = [0u8; 256];
    let n = read_task_file(tid, b"syscall", &mut buf);
    let line = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
    // "running", or "nr a1 a2 a3 a4 a5 a6 sp pc", or "-1 sp pc".
    let mut fields = [&[][..]; 9];
    let mut k = 0;
    for f in line.split(|&b| b == b' ').filter(|f| !f.is_empty()) {
        if k == fields.len() {
            return None;
        }
        fields[k] = f;
        k += 1;
    }
    let (syscall, sp, pc) = match k {
        9 => (Some(parse_dec(fields[0])?), fields[7], fields[8]),
        3 if fields[0] == b"-1" => (None, fields[1], fields[2]),
        _ => return None,
    };
    Some(Blocked {
        tid,
        syscall,
        sp: parse_hex(sp)? as usize,
        pc: parse_hex(pc)? as usize,
        runtime,
    })
}

/// The thread's blocked-signal mask (`SigBlk` in `status`), as the
/// kernel's 64-bit set (bit `n - 1` for signal `n`).
pub(crate) fn blocked_signals(tid: i32) -> Option<u64> {
    let mut buf = [0u8; 2048];
    let n = read_task_file(tid, b"status", &mut buf);
    let text = &buf[..n];
    let key = b"SigBlk:";
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &text[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    parse_hex(&rest[..end])
}

/// The process's tracer (`TracerPid` in `/proc/self/status`), if any: a
/// batch is refused while there is one (see `Error::Traced`).
pub fn tracer_pid() -> Option<i32> {
    let mut buf = [0u8; 2048];
    // SAFETY: open/read/close of a static NUL-terminated path into a
    // local buffer.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/status".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    let text = &buf[..n as usize];
    let key = b"TracerPid:";
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &text[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    match parse_dec(&rest[..end])? {
        0 => None,
        p => Some(p as i32),
    }
}

/// The name (`comm`) of process `pid`, into `out`; returns its length.
pub(crate) fn comm_of_pid(pid: i32, out: &mut [u8; 32]) -> usize {
    let Ok(text) = std::fs::read(format!("/proc/{pid}/comm")) else {
        return 0;
    };
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    let n = text.len().min(out.len());
    out[..n].copy_from_slice(&text[..n]);
    n
}

/// Lists the process's threads into `out` with raw system calls (no
/// allocation: `out` has its capacity reserved). Returns false when they
/// do not fit or `/proc/self/task` cannot be read.
pub(crate) fn list_tids(dirents: &mut [u8], out: &mut Vec<i32>) -> bool {
    out.clear();
    // SAFETY: open/getdents64/close on a static NUL-terminated path into a
    // buffer we own; the fd is closed on every path out.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        loop {
            let n = libc::syscall(
                libc::SYS_getdents64,
                fd,
                dirents.as_mut_ptr(),
                dirents.len(),
            );
            if n <= 0 {
                libc::close(fd);
                return n == 0;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                let reclen = u16::from_ne_bytes([dirents[off + 16], dirents[off + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                let name = &dirents[off + 19..(off + reclen).min(n as usize)];
                let digits = name.iter().take_while(|b| b.is_ascii_digit()).count();
                if digits > 0 {
                    if out.len() == out.capacity() {
                        libc::close(fd);
                        return false;
                    }
                    out.push(parse_dec(&name[..digits]).unwrap_or(0) as i32);
                }
                off += reclen;
            }
        }
    }
}

/// Whether thread `tid` is gone or a zombie (a thread-group leader that
/// called `pthread_exit` stays listed but never runs handlers again).
pub(crate) fn thread_gone(tid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) } != 0 {
        return true;
    }
    !matches!(state(tid), Some(s) if !matches!(s, b'Z' | b'X' | b'x'))
}

/// The calling thread's id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_hex(b"0x7ffd4aaf1768"), Some(0x7ffd4aaf1768));
        assert_eq!(parse_hex(b"ff"), Some(255));
        assert_eq!(parse_hex(b"0xg"), None);
        assert_eq!(parse_dec(b"-1"), Some(-1));
        assert_eq!(parse_dec(b"230"), Some(230));
        let mut b = [0u8; 64];
        assert_eq!(
            task_path(&mut b, 1234, b"syscall").to_bytes(),
            b"/proc/self/task/1234/syscall"
        );
    }

    #[test]
    fn a_sleeping_thread_is_seen_blocked_and_a_running_one_is_not() {
        let (tx, rx) = std::sync::mpsc::channel::<i32>();
        let sleeper = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
        let tid = rx.recv().unwrap();
        let mut seen = None;
        for _ in 0..100 {
            seen = blocked(tid);
            if seen.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let b = seen.expect("the sleeper is seen blocked");
        assert_eq!(b.syscall, Some(libc::SYS_clock_nanosleep));
        assert!(b.still());
        // The calling thread is running.
        assert!(blocked(gettid()).is_none());
        sleeper.join().unwrap();
        assert!(thread_gone(tid));
        let mut d = vec![0u8; 4096];
        let mut t = Vec::with_capacity(256);
        assert!(list_tids(&mut d, &mut t));
        assert!(t.contains(&gettid()));
        assert!(blocked_signals(gettid()).is_some());
    }
}
