//! The few system calls the crate needs, each wrapped once.

use std::ptr::NonNull;

/// The calling thread's kernel thread id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The calling thread's name (`comm`), without touching /proc: it runs on
/// the writing thread when its buffer is created.
pub(crate) fn current_thread_name() -> String {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the
    // buffer, which has 17 so a terminator always remains.
    let rc = unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            buf.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Any thread's current name, from /proc (it may have been renamed since its
/// buffer was created). `None` when it cannot be read, e.g. the thread is gone.
pub(crate) fn thread_name(tid: i32) -> Option<String> {
    let mut s = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
    if s.ends_with('\n') {
        s.pop();
    }
    Some(s)
}

/// Whether no thread `tid` exists in this process any more. Signal 0 only
/// checks existence, and within one process permission is never the
/// problem, so only ESRCH means gone; any other failure says "don't know",
/// reported as alive.
pub(crate) fn thread_gone(tid: i32) -> bool {
    // SAFETY: getpid cannot fail; tgkill with signal 0 delivers nothing.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// `bytes` of fresh zeroed anonymous memory, page-aligned; with `populate`
/// every page is committed before returning, so the writer never faults.
/// (Transparent huge pages were tried: on the development VM they made the
/// first write bimodal, 0.45 or 2.6 ms against a steady 0.9 ms, and the
/// writes no faster.)
pub(crate) fn map_zeroed(bytes: usize, populate: bool) -> Option<NonNull<u8>> {
    let populate = if populate { libc::MAP_POPULATE } else { 0 };
    mmap(bytes, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate)
}

fn mmap(bytes: usize, flags: libc::c_int) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing aliases nothing; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// Returns memory from [`map_zeroed`].
///
/// # Safety
///
/// `p` and `bytes` are exactly one earlier `map_zeroed` result and size, and
/// nothing uses the memory any more.
pub(crate) unsafe fn unmap(p: NonNull<u8>, bytes: usize) {
    // SAFETY: the caller hands over a whole mapping nobody uses any more.
    unsafe { libc::munmap(p.as_ptr().cast(), bytes) };
}

/// CLOCK_MONOTONIC in nanoseconds (through the vDSO, ~20 ns).
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether `rdtsc` is allowed in this thread (a process may have made it
/// fault with `prctl(PR_SET_TSC, PR_TSC_SIGSEGV)`).
pub(crate) fn tsc_enabled() -> bool {
    let mut state: libc::c_int = 0;
    // SAFETY: PR_GET_TSC writes one int through the pointer it is given.
    let rc = unsafe {
        libc::prctl(
            libc::PR_GET_TSC,
            &mut state as *mut libc::c_int as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    rc != 0 || state != libc::PR_TSC_SIGSEGV
}
