//! The few system calls the crate needs, each wrapped once.

use std::ptr::NonNull;

/// The calling thread's kernel thread id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
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

/// A shared mapping of a memory file: the ring pool's memory, which the
/// process writes and a consumer in another process may map too.
pub(crate) struct SharedMap {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) bytes: usize,
    /// The memory file (`memfd`), or `None` for anonymous shared memory
    /// when memory files are unavailable (then no other process can map it).
    pub(crate) fd: Option<std::os::fd::OwnedFd>,
}

// SAFETY: the mapping is plain memory, accessed through atomics by its users.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// `bytes` (a multiple of the page size) of zeroed shared memory,
    /// readable and writable here. With `seal_writes`, the memory file is
    /// sealed so that no other mapping of it, ever, can write (a consumer
    /// reads only); it is always sealed against resizing, so a consumer's
    /// mapping can never lose its pages under it.
    pub(crate) fn new(name: &std::ffi::CStr, bytes: usize, seal_writes: bool) -> Option<SharedMap> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: a NUL-terminated name and flags; returns a new fd or -1.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            let ptr = mmap(bytes, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)?;
            return Some(SharedMap {
                ptr,
                bytes,
                fd: None,
            });
        }
        // SAFETY: a descriptor memfd_create just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own memory file.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } != 0 {
            return None;
        }
        let ptr = mmap(bytes, libc::MAP_SHARED, fd.as_raw_fd())?;
        let mut seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if seal_writes {
            seals |= libc::F_SEAL_FUTURE_WRITE;
        }
        // SAFETY: adds seals to our own memory file. Existing writable
        // mappings (ours) stay writable under F_SEAL_FUTURE_WRITE.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            // SAFETY: the mapping just made, unused.
            unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
            return None;
        }
        Some(SharedMap {
            ptr,
            bytes,
            fd: Some(fd),
        })
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`, which its owner no
        // longer uses (see `Rings`' lifetime rules).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// Commits the pages of `[p, p + bytes)` (page-aligned) for writing, so the
/// writer never faults on them: one system call where the kernel has
/// `MADV_POPULATE_WRITE`, else a write to each page. Async-signal-safe.
pub(crate) fn populate(p: *mut u8, bytes: usize) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: a range of our own shared mapping; populating changes no
    // contents.
    if unsafe { libc::madvise(p.cast(), bytes, MADV_POPULATE_WRITE) } == 0 {
        return;
    }
    let page = page_size();
    let mut off = 0;
    while off < bytes {
        // SAFETY: inside the range; an atomic add of zero faults the page
        // in for writing without changing it, even if another thread (a
        // reader) looks at it.
        unsafe {
            (*p.add(off).cast::<std::sync::atomic::AtomicU64>())
                .fetch_add(0, std::sync::atomic::Ordering::Relaxed)
        };
        off += page;
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// A read-only (or, with `write`, read-write) shared mapping of all of
/// memory file `fd`, in a consumer process.
pub(crate) fn map_file(fd: libc::c_int, bytes: usize, write: bool) -> Option<NonNull<u8>> {
    let prot = if write {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a new shared mapping of a file, at an address of the kernel's
    // choosing: it aliases nothing of ours.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

fn mmap(bytes: usize, flags: libc::c_int, fd: libc::c_int) -> Option<NonNull<u8>> {
    // SAFETY: a new mapping at an address of the kernel's choosing aliases
    // nothing; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// Whether the calling thread belongs to process `pid` (false in a fork
/// child of it). Async-signal-safe.
pub(crate) fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The calling thread's name into `out` (NUL-padded), with one system call
/// and no allocation: it runs on a writing thread, maybe in a signal handler.
pub(crate) fn current_thread_name_raw(out: &mut [u8; 16]) {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the
    // buffer, which has 17.
    let rc = unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            buf.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    *out = [0; 16];
    if rc == 0 {
        out.copy_from_slice(&buf[..16]);
    }
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
