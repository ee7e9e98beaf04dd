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

// ---------------------------------------------------------------------------
// Attaching.

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
    fn summary(&self, pid: u32) -> String {
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

/// Sites the compilers and `#[traced]` left in an object, from its section
/// headers: `__patchable_function_entries` and `__mcount_loc` (8 bytes
/// each), `livetrace_sites` (40 bytes each, one of them a sentinel).
fn sites_in(file: &Path) -> Option<usize> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&eh, 0x28),
        u16_at(&eh, 0x3a),
        u16_at(&eh, 0x3c),
        u16_at(&eh, 0x3e),
    );
    if shoff == 0 || shentsize < 64 || shnum == 0 || shstrndx >= shnum || shnum > 1 << 14 {
        return Some(0);
    }
    let mut sh = vec![0u8; shentsize * shnum];
    f.read_exact_at(&mut sh, shoff as u64).ok()?;
    let strhdr = &sh[shstrndx * shentsize..];
    let (stroff, strsize) = (u64_at(strhdr, 0x18), u64_at(strhdr, 0x20));
    if strsize > 1 << 24 {
        return Some(0);
    }
    let mut strtab = vec![0u8; strsize];
    f.read_exact_at(&mut strtab, stroff as u64).ok()?;
    let mut n = 0;
    for i in 0..shnum {
        let h = &sh[i * shentsize..];
        let Some(rest) = strtab.get(u32_at(h, 0)..) else {
            continue;
        };
        let name = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        let size = u64_at(h, 0x20);
        n += match name {
            b"__patchable_function_entries" | b"__mcount_loc" => size / 8,
            b"livetrace_sites" => (size / 40).saturating_sub(1),
            _ => 0,
        };
    }
    Some(n)
}

/// Sites in every object mapped into a process (libraries counted once).
fn count_sites(modules: &[Module]) -> usize {
    modules
        .iter()
        .filter(|m| !is_livetrace_lib(m))
        .filter_map(|m| sites_in(&m.file))
        .sum()
}

/// Whether `m` is a liblivetrace.so (ours, or a copy we made).
fn is_livetrace_lib(m: &Module) -> bool {
    let n = m.file_name();
    n.starts_with("liblivetrace") || n.starts_with(".livetrace-attach-")
}

/// The loaded liblivetrace.so of a process, with its attach protocol.
struct Library {
    module: Module,
    state: u64,
    message: u64,
    sleds: u64,
    start: u64,
    convert: u64,
    detach: u64,
    unload: u64,
    code: u64,
    signals: u64,
    masks: u64,
}

impl Library {
    fn of(module: Module) -> Result<Library, Error> {
        let sym = |n: &str| -> Result<u64, Error> {
            module
                .symbol(n)
                .map_err(|source| Error::LibrarySymbols {
                    path: module.path.clone(),
                    source,
                })?
                .map(|s| s.addr)
                .ok_or_else(|| Error::NotOurLibrary {
                    path: module.path.clone(),
                    symbol: n.to_string(),
                })
        };
        Ok(Library {
            state: sym("livetrace_attach_state")?,
            message: sym("livetrace_attach_message")?,
            sleds: sym("livetrace_attach_sleds")?,
            start: sym("livetrace_attach_start")?,
            convert: sym("livetrace_attach_convert")?,
            detach: sym("livetrace_detach_start")?,
            unload: sym("livetrace_attach_unload")?,
            code: sym("livetrace_attach_code")?,
            signals: sym("livetrace_attach_signals")?,
            masks: sym("livetrace_attach_masks")?,
            module,
        })
    }

    fn find(modules: &[Module]) -> Option<Module> {
        modules.iter().find(|m| is_livetrace_lib(m)).cloned()
    }

    fn state(&self, p: &Process) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        p.read(self.state, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn message(&self, p: &Process) -> String {
        p.read_cstr(self.message, 1024).unwrap_or_default()
    }

    /// Waits (the process running) until the state is one of `want` (or
    /// failed); returns it.
    fn wait_any(&self, p: &mut Process, want: &[u32], what: &'static str) -> Result<u32, Error> {
        let mut last = 0;
        let ok = p.wait_until(STEP, |p| {
            let mut b = [0u8; 4];
            if p.read(self.state, &mut b).is_err() {
                return true;
            }
            last = u32::from_le_bytes(b);
            want.contains(&last) || last == protocol::FAILED
        })?;
        if !ok {
            return Err(Error::Timeout {
                step: what,
                state: last,
                secs: STEP.as_secs(),
            });
        }
        self.state(p)
    }

    /// Waits (the process running) until the state is one of `want`; a
    /// failure is the library's.
    fn wait_for(&self, p: &mut Process, want: &[u32], what: &'static str) -> Result<u32, Error> {
        let s = self.wait_any(p, want, what)?;
        if s == protocol::FAILED {
            return Err(Error::LibraryFailed(self.message(p)));
        }
        Ok(s)
    }
}

/// The library to load: `--lib`, `$LIVETRACE_PRELOAD_LIB`, or the one
/// next to this command.
fn library_file(lib: Option<&Path>) -> Result<PathBuf, Error> {
    let path = match lib {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("LIVETRACE_PRELOAD_LIB") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(|e| Error::io("cannot find this command's directory", e))?
                .with_file_name("liblivetrace.so"),
        },
    };
    path.canonicalize()
        .map_err(|source| Error::LibraryMissing { path, source })
}

/// The library as the process will open it: our file when the process
/// sees it at the same path and may read it, else a copy placed in its
/// file system (removed once loaded).
struct Staged {
    /// The path the process opens.
    path: String,
    /// A copy to remove, as we reach it.
    copy: Option<PathBuf>,
}

impl Staged {
    fn new(pid: i32, target_uid: u32, lib: &Path) -> Result<Staged, Error> {
        let ours = std::fs::metadata(lib).map_err(|e| Error::io(lib.display().to_string(), e))?;
        let lib_s = lib.display().to_string();
        let theirs = std::fs::metadata(procfs::in_root(&procfs::root_of(pid), &lib_s));
        let same_file = theirs.is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino());
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if same_file && (target_uid == me || readable_by_all(lib)) {
            return Ok(Staged {
                path: lib_s,
                copy: None,
            });
        }
        let root = procfs::root_of(pid);
        let name = format!(
            ".livetrace-attach-{pid}-{}.so",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut last_err = None;
        for dir in ["/dev/shm", "/tmp", "/var/tmp"] {
            let inside = format!("{dir}/{name}");
            let here = procfs::in_root(&root, &inside);
            match std::fs::copy(lib, &here) {
                Ok(_) => {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o644));
                    return Ok(Staged {
                        path: inside,
                        copy: Some(here),
                    });
                }
                Err(e) => last_err = Some((here, e)),
            }
        }
        let (place, source) = last_err.expect("a copy was tried");
        Err(Error::CannotStage {
            lib: lib.to_path_buf(),
            place,
            source,
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(c) = &self.copy {
            let _ = std::fs::remove_file(c);
        }
    }
}

/// Whether `path` and every directory above it can be read (and searched)
/// by anyone.
fn readable_by_all(path: &Path) -> bool {
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    if m.mode() & 0o004 == 0 {
        return false;
    }
    path.ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
}

/// Explains a failed `dlopen` of liblivetrace.so.
fn explain_load(msg: String, lib: &Path) -> Error {
    if msg.contains("static TLS") {
        return Error::StaticTls {
            message: msg,
            need: tls_size(lib),
        };
    }
    Error::Load(msg)
}

/// The size of a library's TLS segment.
fn tls_size(lib: &Path) -> Option<u64> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = std::fs::read(lib).ok()?;
    let hdr = object::elf::FileHeader64::<object::Endianness>::parse(&*data).ok()?;
    let e = hdr.endian().ok()?;
    hdr.program_headers(e, &*data)
        .ok()?
        .iter()
        .find(|p| p.p_type(e) == object::elf::PT_TLS)
        .map(|p| p.p_memsz(e))
}

fn inside_sled(sleds: &[u64], a: u64) -> bool {
    let i = sleds.partition_point(|&s| s < a);
    i > 0 && a - sleds[i - 1] < 5
}

/// Holds off Ctrl-C, SIGTERM, SIGHUP and SIGQUIT while alive: this command
/// must not die with a thread of the process halfway through a call it
/// made there (the thread would return to nowhere). They are delivered
/// when it drops.
struct Uninterruptible(libc::sigset_t);

impl Uninterruptible {
    fn new() -> Uninterruptible {
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
static NO_RELOCATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
fn verbose() -> bool {
    std::env::var_os("LIVETRACE_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Reports the time since `t0` on stderr, with LIVETRACE_VERBOSE=1.
fn step_done(t0: Instant, what: &str) {
    if verbose() {
        eprintln!(
            "livetrace: attach: {what} at {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn load_and_start(p: &mut Process, staged: &Staged, lib: &Path) -> Result<String, Failure> {
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

fn read_sleds(p: &Process, l: &Library) -> Result<Vec<u64>, Error> {
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
fn convert_held(p: &mut Process, l: &Library, sleds: &[u64]) -> Result<(), Error> {
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
fn start_time(pid: i32, tid: i32) -> Option<u64> {
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
fn unblock_held(p: &mut Process, l: &Library) -> Result<(), Error> {
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
fn glibc_transient(mask: u64) -> bool {
    let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
    let setxid = 1u64 << (33 - 1);
    mask | unblockable == u64::MAX
        || (mask & setxid == 0 && mask | unblockable | setxid == u64::MAX)
}

/// With livetrace torn down: blocks again, in the threads [`unblock_held`]
/// cleared that still run, the signals it cleared, every thread held (a
/// thread found in one of glibc's transient masks is let run and tried
/// again).
fn reblock(p: &mut Process, l: &Library) -> Result<(), Error> {
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

fn already_loaded(pid: i32, m: Module, t0: Instant) -> Result<Attached, Error> {
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

// ---------------------------------------------------------------------------
// Detaching.

/// Runs `f` with the process not traced (its memory still readable), and
/// seizes it again. Tearing livetrace down stops sessions and reverts
/// patches, batches the engine refuses while the process is traced (a
/// tracer that does not pass SIGTRAP on would kill it) and while a thread
/// blocks SIGTRAP, as threads this command keeps stopped a moment after
/// their creation do (glibc's creation mask).
fn untraced<T>(
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
fn unload(p: &mut Process, l: &Library) -> Result<(), Error> {
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
fn inside_library(p: &mut Process, l: &Library) -> Result<Option<String>, Error> {
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

// ---------------------------------------------------------------------------
// ps.

/// `livetrace ps`: every process of yours that has livetrace or sites
/// (all of them with --all): whether livetrace runs there, how many sites
/// its objects have, whether it can be attached to.
pub fn ps(dir: &Path, args: &PsArgs) -> Result<(), Error> {
    let style = Style::stdout();
    // Sockets left by processes that died without removing them.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_suffix(".sock")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(|e| Error::io("cannot read /proc", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut cache: std::collections::HashMap<(String, u64), Option<usize>> = Default::default();
    let mut rows = Vec::new();
    for pid in pids {
        if pid as u32 == std::process::id() {
            continue;
        }
        let Ok(st) = procfs::status(&pid.to_string()) else {
            continue;
        };
        if st.uids[0] != me {
            continue;
        }
        let Ok(maps) = procfs::maps(pid) else {
            continue;
        };
        if maps.is_empty() {
            continue; // a kernel thread
        }
        let modules = livetrace_inject::modules(pid, &maps, &procfs::root_of(pid));
        let sites: usize = modules
            .iter()
            .filter(|m| !is_livetrace_lib(m))
            .filter_map(|m| {
                let key = (m.maps[0].dev.clone(), m.maps[0].inode);
                *cache.entry(key).or_insert_with(|| sites_in(&m.file))
            })
            .sum();
        let socket = dir.join(format!("{pid}.sock")).exists() || find_socket(pid).is_some();
        let loaded = modules.iter().any(is_livetrace_lib);
        let state = if socket {
            "serving".to_string()
        } else if loaded {
            "loaded".to_string()
        } else if sites == 0 {
            "no sites".to_string()
        } else {
            match Target::inspect(pid) {
                Ok(_) => "attachable".to_string(),
                Err(r) => short_refusal(&r),
            }
        };
        if !args.all && !socket && !loaded && sites == 0 {
            continue;
        }
        let mut cmd = procfs::cmdline(pid).unwrap_or_default();
        if cmd.chars().count() > 100 {
            cmd = cmd.chars().take(99).chain(std::iter::once('…')).collect();
        }
        rows.push((pid, state, sites, cmd));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        style.bold(&format!(
            "{:>8}  {:<12}  {:>7}  COMMAND",
            "PID", "LIVETRACE", "SITES"
        ))
    );
    for (pid, state, sites, cmd) in rows {
        let st = format!("{state:<12}");
        let st = match state.as_str() {
            "serving" => style.good(&st),
            "attachable" | "loaded" => st,
            _ => style.dim(&st),
        };
        let _ = writeln!(out, "{pid:>8}  {st}  {sites:>7}  {cmd}");
    }
    Ok(())
}

fn short_refusal(r: &livetrace_inject::Refusal) -> String {
    use livetrace_inject::Refusal::*;
    match r {
        Traced { .. } => "traced".into(),
        Static { .. } => "static".into(),
        NotRunning { .. } => "stopped".into(),
        Yama { .. } => "yama".into(),
        OtherUser { .. } | Undumpable(_) => "no access".into(),
        NoDlopen { .. } => "no dlopen".into(),
        NotX86_64 { .. } => "not x86-64".into(),
        _ => "refused".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibcs_transient_masks() {
        let kernel_all: u64 = !((1 << 8) | (1 << 18));
        assert!(glibc_transient(kernel_all));
        assert!(glibc_transient(kernel_all & !(1 << 32)));
        // A program's sigwait thread (glibc never blocks 32 and 33 for it).
        assert!(!glibc_transient(kernel_all & !(3 << 31)));
        assert!(!glibc_transient(1 << 4));
    }

    #[test]
    fn inside_sled_is_strict() {
        let sleds = [0x1000, 0x2000];
        assert!(!inside_sled(&sleds, 0x1000));
        assert!(inside_sled(&sleds, 0x1001));
        assert!(inside_sled(&sleds, 0x1004));
        assert!(!inside_sled(&sleds, 0x1005));
        assert!(!inside_sled(&sleds, 0xfff));
        assert!(inside_sled(&sleds, 0x2003));
        assert!(!inside_sled(&[], 0x1001));
    }

    #[test]
    fn counts_no_sites_in_a_plain_binary() {
        // This test binary has none of the site sections.
        assert_eq!(sites_in(Path::new("/proc/self/exe")), Some(0));
        assert_eq!(sites_in(Path::new("/nonexistent")), None);
    }
}
