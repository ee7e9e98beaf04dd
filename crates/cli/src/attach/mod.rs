//! Attaching to processes that never loaded livetrace: `livetrace attach`,
//! `livetrace detach`, `livetrace ps`, and loading livetrace on demand
//! before `ls`, `trace`, `report` and `patch` (`--attach`, the default
//! when you have the rights; `--no-attach` never does).
//!
//! Attaching loads `liblivetrace.so` into the process with ptrace
//! (`livetrace-inject`) and runs its attach protocol (see the preload
//! crate's `attach` module): start it (the process keeps running while it
//! finds its sites), then convert gcc's sleds with **every thread held**
//! and checked to be outside them, then wait for its control socket.
//! Detaching tears livetrace down inside the process (sessions, patches,
//! signal handlers) with the process not traced meanwhile, checks with
//! every thread held that none is inside the library, and `dlclose`s it:
//! `/proc/PID/maps` no longer maps it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Args;
use livetrace_inject::{procfs, Arg, Module, Process, Safety, Target};

use crate::ui::Style;
use crate::Error;

/// The attach protocol's constants (the preload crate's `attach` module).
mod protocol {
    pub const ABI: u32 = 2;
    pub const MASK_SLOTS: usize = 256;
    pub const IDLE: u32 = 0;
    pub const READY: u32 = 2;
    pub const SERVING: u32 = 4;
    pub const DETACHING: u32 = 5;
    pub const UNLOADABLE: u32 = 6;
    pub const STARTUP: u32 = 7;
    pub const FAILED: u32 = 100;
    pub const CONVERT_BY_CALLER: u64 = 1;
}

/// The attach protocol this command speaks.
pub const ABI: u32 = protocol::ABI;

/// How long the process gets for each step of attaching.
const STEP: Duration = Duration::from_secs(60);
/// Rounds of holding every thread before giving up on a thread that
/// stays inside a sled (or inside the library, when detaching).
const HOLD_ATTEMPTS: u32 = 50;

/// Options shared by every command that talks to a process.
#[derive(Args, Clone, Debug, Default)]
pub struct AttachArgs {
    /// Load livetrace into a process that runs no control socket (the
    /// default when you have the rights to)
    #[arg(long, global = true)]
    pub attach: bool,
    /// Never load livetrace into a process
    #[arg(long, global = true, conflicts_with = "attach")]
    pub no_attach: bool,
    /// The library to load [default: $LIVETRACE_PRELOAD_LIB, else
    /// liblivetrace.so next to this command]
    #[arg(long, global = true, value_name = "PATH")]
    pub lib: Option<PathBuf>,
}

/// `livetrace ps`'s options.
#[derive(Args, Clone, Debug)]
pub struct PsArgs {
    /// Every process of yours, not only those with livetrace or sites
    #[arg(long, short)]
    pub all: bool,
}

static CONFIG: OnceLock<AttachArgs> = OnceLock::new();

/// Records the options (once, from `main`).
pub fn configure(a: AttachArgs) {
    let _ = CONFIG.set(a);
}

fn config() -> AttachArgs {
    CONFIG.get().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Finding a process's control socket.

/// The control socket of `pid`, loading livetrace into it first when it
/// has none and the options allow.
pub fn socket(dir: &Path, pid: u32) -> Result<PathBuf, Error> {
    let direct = dir.join(format!("{pid}.sock"));
    // A socket we may not even look at is still the process's: connecting
    // says why we may not use it (never try to attach past it).
    match std::fs::symlink_metadata(&direct) {
        Ok(_) => return Ok(direct),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(direct),
        Err(_) => {}
    }
    if let Some(s) = find_socket(pid as i32) {
        return Ok(s);
    }
    let cfg = config();
    if cfg.no_attach {
        return Err(Error::NoSocket {
            pid,
            dir: dir.to_path_buf(),
        });
    }
    match attach_process(pid as i32, cfg.lib.as_deref()) {
        Ok(a) => {
            eprintln!("livetrace: {}", a.summary(pid));
            Ok(a.socket)
        }
        Err(e) => Err(Error::CannotAttach {
            pid,
            source: Box::new(e),
        }),
    }
}

/// A listening livetrace socket among `pid`'s open sockets (one it made
/// in a directory we do not look in, or in another mount namespace), as a
/// path we can connect to.
fn find_socket(pid: i32) -> Option<PathBuf> {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(l) = std::fs::read_link(e.path()) {
            if let Some(i) = l
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                inodes.insert(i);
            }
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()?;
    for line in table.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let listening = u32::from_str_radix(f[3], 16).is_ok_and(|fl| fl & 0x10000 != 0);
        let inode: u64 = f[6].parse().unwrap_or(0);
        let path = f[7];
        // The server's socket: `<dir>/<pid>.sock` (its pid as it sees it).
        let named = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if listening && inodes.contains(&inode) && named {
            return Some(reachable(pid, path));
        }
    }
    None
}

/// `path` as `pid` sees it, as a path we can use: itself when we share its
/// root, else through `/proc/PID/root`.
fn reachable(pid: i32, path: &str) -> PathBuf {
    if procfs::same_root(pid) {
        PathBuf::from(path)
    } else {
        procfs::in_root(&procfs::root_of(pid), path)
    }
}

mod detach;
mod library;
mod load;
mod ps;
#[cfg(test)]
mod tests;

use detach::unload;
pub use detach::{cmd_attach, cmd_detach};
use library::*;
pub use load::will_not_relocate;
use load::*;
pub use ps::ps;
