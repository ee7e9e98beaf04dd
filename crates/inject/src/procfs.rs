//! What `/proc/PID` says about a process: its threads, memory map, owner,
//! tracer and state.

use std::io;
use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r`, `w`, `x` as the map shows them.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Offset in the file.
    pub offset: u64,
    /// Device and inode of the file (0 for anonymous memory).
    pub dev: String,
    /// Inode of the file.
    pub inode: u64,
    /// The path, `[stack]`, `[heap]`, ... or empty; a file replaced or
    /// removed since it was mapped ends in ` (deleted)`.
    pub path: String,
}

impl Mapping {
    /// Whether `addr` is inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether it maps a file (not anonymous memory or a kernel area).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses `/proc/PID/maps`.
pub fn maps(pid: i32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&text))
}

pub(crate) fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        // start-end perms offset dev inode path(may contain spaces)
        let mut rest = line;
        let mut field = || {
            let t = rest.trim_start();
            let end = t.find(' ').unwrap_or(t.len());
            let (f, r) = t.split_at(end);
            rest = r;
            f
        };
        let (range, perms, offset, dev, inode) = (field(), field(), field(), field(), field());
        let path = rest.trim_start().to_string();
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset), Ok(inode)) = (
            u64::from_str_radix(a, 16),
            u64::from_str_radix(b, 16),
            u64::from_str_radix(offset, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        let p = perms.as_bytes();
        out.push(Mapping {
            start,
            end,
            read: p.first() == Some(&b'r'),
            write: p.get(1) == Some(&b'w'),
            exec: p.get(2) == Some(&b'x'),
            offset,
            dev: dev.to_string(),
            inode,
            path,
        });
    }
    out
}

/// The thread ids of `pid`, from `/proc/PID/task`.
pub fn threads(pid: i32) -> io::Result<Vec<i32>> {
    let mut out: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The fields of `/proc/PID/status` that decide whether we may attach.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// `Name:`.
    pub name: String,
    /// `State:`'s letter (R, S, D, T, t, Z, X, I).
    pub state: char,
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gids.
    pub gids: [u32; 4],
    /// The pid tracing it, 0 if none.
    pub tracer: i32,
    /// `x86_Thread_features:` (CET: `shstk`, `wrss`), if the kernel shows it.
    pub x86_features: String,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Threads.
    pub threads: usize,
}

/// Reads `/proc/PID/status` (`PID` may be `self`).
pub fn status(pid: &str) -> io::Result<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut s = Status::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let ids = |v: &str| {
            let mut a = [0u32; 4];
            for (slot, w) in a.iter_mut().zip(v.split_whitespace()) {
                *slot = w.parse().unwrap_or(0);
            }
            a
        };
        match k {
            "Name" => s.name = v.to_string(),
            "State" => s.state = v.chars().next().unwrap_or('?'),
            "Uid" => s.uids = ids(v),
            "Gid" => s.gids = ids(v),
            "TracerPid" => s.tracer = v.parse().unwrap_or(0),
            "x86_Thread_features" => s.x86_features = v.to_string(),
            "CapEff" => s.cap_eff = u64::from_str_radix(v, 16).unwrap_or(0),
            "Threads" => s.threads = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(s)
}

/// What `/proc/PID/task/TID/syscall` says: the system call a blocked
/// thread is in (number, stack pointer, program counter), or that it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InSyscall {
    /// Running, or runnable.
    Running,
    /// Blocked, but not in a system call (a page fault, say).
    Blocked,
    /// Blocked in this system call.
    Call(i64),
}

/// Reads `/proc/PID/task/TID/syscall` (needs ptrace access).
pub fn in_syscall(pid: i32, tid: i32) -> io::Result<InSyscall> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))?;
    let first = text.split_whitespace().next().unwrap_or("");
    Ok(match first {
        "running" => InSyscall::Running,
        "-1" => InSyscall::Blocked,
        n => n.parse().map_or(InSyscall::Running, InSyscall::Call),
    })
}

/// The value of `kernel.yama.ptrace_scope`, if Yama is present.
pub fn yama_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Where `pid`'s files are, seen from here: `/proc/PID/root`, or `/` when
/// the process sees the same root in the same mount namespace.
pub fn root_of(pid: i32) -> PathBuf {
    if same_root(pid) {
        PathBuf::from("/")
    } else {
        PathBuf::from(format!("/proc/{pid}/root"))
    }
}

/// Whether `pid` shares our mount namespace and root directory.
pub fn same_root(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let same = |a: &str, b: &str| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    };
    same("/proc/self/ns/mnt", &format!("/proc/{pid}/ns/mnt"))
        && same("/proc/self/root/", &format!("/proc/{pid}/root/"))
}

/// A file of `pid`'s file system, as a path we can open: `path` under
/// [`root_of`].
pub fn in_root(root: &std::path::Path, path: &str) -> PathBuf {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    if root == std::path::Path::new("/") {
        PathBuf::from(path)
    } else {
        root.join(path.trim_start_matches('/'))
    }
}

/// The command line of `pid`, words joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    Some(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps(
            "5597254c4000-5597254c6000 r--p 00000000 fe:00 247030                     /usr/bin/cat\n\
             7f648d6ac000-7f648d802000 r-xp 00026000 fe:00 326279   /usr/lib/a b.so (deleted)\n\
             7ffc1000-7ffc2000 rw-p 00000000 00:00 0                          [stack]\n\
             7f0000000000-7f0000001000 ---p 00000000 00:00 0\n",
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].start, 0x5597254c4000);
        assert!(m[0].read && !m[0].write && !m[0].exec && m[0].is_file());
        assert_eq!(m[1].offset, 0x26000);
        assert!(m[1].exec);
        assert_eq!(m[1].path, "/usr/lib/a b.so (deleted)");
        assert_eq!(m[2].path, "[stack]");
        assert!(!m[2].is_file());
        assert_eq!(m[3].path, "");
        assert!(!m[3].read);
    }

    #[test]
    fn reads_own_status() {
        let s = status("self").unwrap();
        assert!(s.threads >= 1);
        // SAFETY: getuid cannot fail.
        assert_eq!(s.uids[0], unsafe { libc::getuid() });
        assert_eq!(s.tracer, 0);
        assert!(same_root(std::process::id() as i32));
    }
}
