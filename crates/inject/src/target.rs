//! Looking at a process before touching it: may we attach, can it load a
//! library, and where are the loader's entry points. Every refusal is
//! decided here, from `/proc` and the object files, with nothing changed
//! in the process.

use std::fmt;
use std::path::PathBuf;

use crate::elf::{self, Module, Symbol};
use crate::procfs::{self, Mapping, Status};

/// `CAP_SYS_PTRACE`.
const CAP_SYS_PTRACE: u64 = 1 << 19;
/// `EM_X86_64`.
const EM_X86_64: u16 = 62;

/// Why a process cannot be attached to. Nothing was changed in it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No such process (or it exited).
    NoSuchProcess(i32),
    /// It is this very process.
    Ourselves,
    /// It belongs to another user and we are not privileged.
    OtherUser {
        /// The process.
        pid: i32,
        /// Its owner (real, effective, saved uid; the first that differs).
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// It changed credentials at exec (set-user-ID, capabilities): the
    /// kernel makes it undumpable, and only a privileged tracer may attach.
    Undumpable(i32),
    /// `kernel.yama.ptrace_scope` forbids it.
    Yama {
        /// The setting.
        scope: u32,
    },
    /// It is already traced by a debugger.
    Traced {
        /// The process.
        pid: i32,
        /// The tracer.
        tracer: i32,
        /// The tracer's command name.
        tracer_name: String,
    },
    /// It is stopped (`SIGSTOP`, job control) or exiting.
    NotRunning {
        /// The process.
        pid: i32,
        /// Its state letter.
        state: char,
    },
    /// Its executable is not x86-64 (or is an x32 program).
    NotX86_64 {
        /// What it is.
        what: String,
    },
    /// It is statically linked: no dynamic loader to load a library.
    Static {
        /// The executable.
        exe: String,
    },
    /// Its C library exports no `dlopen` (not glibc, or too old).
    NoDlopen {
        /// What was looked at.
        looked: String,
    },
    /// It runs with a CET shadow stack, on which an injected call's
    /// return would fault.
    ShadowStack(i32),
    /// Something needed could not be read.
    Unreadable {
        /// What.
        what: String,
        /// Why.
        why: String,
    },
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .map_or_else(|| format!("uid {uid}"), |n| format!("{n} (uid {uid})"))
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSuchProcess(pid) => write!(f, "no process {pid}"),
            Refusal::Ourselves => f.write_str("cannot attach to this very process"),
            Refusal::OtherUser { pid, owner, me: 0 } => write!(
                f,
                "process {pid} belongs to {}, and you are root without CAP_SYS_PTRACE (in a \
                 container?): attaching to another user's process needs that capability",
                user_name(*owner)
            ),
            Refusal::OtherUser { pid, owner, me } => write!(
                f,
                "process {pid} belongs to {}, and you are {}: attaching needs the same user, or \
                 root (sudo)",
                user_name(*owner),
                user_name(*me)
            ),
            Refusal::Undumpable(pid) => write!(
                f,
                "process {pid} changed credentials when it started (set-user-ID or file \
                 capabilities), so the kernel lets only root attach to it"
            ),
            Refusal::Yama { scope } => match scope {
                1 => write!(
                    f,
                    "kernel.yama.ptrace_scope is 1: only a process's ancestors may attach to it. \
                     Run as root (sudo), or allow it for everyone with \
                     `sudo sysctl kernel.yama.ptrace_scope=0`"
                ),
                2 => write!(
                    f,
                    "kernel.yama.ptrace_scope is 2: only root (CAP_SYS_PTRACE) may attach. Run \
                     as root (sudo)"
                ),
                _ => write!(
                    f,
                    "kernel.yama.ptrace_scope is {scope}: attaching is disabled until reboot"
                ),
            },
            Refusal::Traced {
                pid,
                tracer,
                tracer_name,
            } => write!(
                f,
                "process {pid} is already traced by process {tracer} ({tracer_name}); detach \
                 that debugger first"
            ),
            Refusal::NotRunning { pid, state } => match state {
                'T' | 't' => write!(
                    f,
                    "process {pid} is stopped; continue it first (kill -CONT {pid})"
                ),
                _ => write!(f, "process {pid} is exiting (state {state})"),
            },
            Refusal::NotX86_64 { what } => write!(f, "not an x86-64 process: {what}"),
            Refusal::Static { exe } => write!(
                f,
                "{exe} is statically linked: it has no dynamic loader, so no library can be \
                 loaded into it"
            ),
            Refusal::NoDlopen { looked } => write!(
                f,
                "no dlopen in the process ({looked}); it needs glibc's dynamic loader"
            ),
            Refusal::ShadowStack(pid) => write!(
                f,
                "process {pid} runs with a CET shadow stack; calls cannot be injected into it"
            ),
            Refusal::Unreadable { what, why } => write!(f, "cannot read {what}: {why}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// The loader entry points a load needs, at their addresses in the target.
#[derive(Clone, Copy, Debug)]
pub struct LoaderCalls {
    /// `dlopen`.
    pub dlopen: u64,
    /// `dlclose`.
    pub dlclose: u64,
    /// `dlerror`.
    pub dlerror: u64,
    /// `__errno_location`.
    pub errno_location: u64,
}

/// A process inspected for attaching.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its pid.
    pub pid: i32,
    /// Its `/proc/PID/status` when inspected.
    pub status: Status,
    /// Its executable, as it sees it.
    pub exe: String,
    /// Where its files are from here: `/` or `/proc/PID/root`.
    pub root: PathBuf,
    /// The mapped objects.
    pub modules: Vec<Module>,
    /// The C library.
    pub libc: Module,
    /// The loader's entry points.
    pub calls: LoaderCalls,
    /// Code a thread must not be inside (nor return into) when it is made
    /// to call into the C library: the dynamic loader's text, `malloc` and
    /// its internals, thread creation and exit; sorted ranges.
    pub(crate) unsafe_code: Vec<(u64, u64)>,
}

fn unreadable(what: impl Into<String>, e: impl fmt::Display) -> Refusal {
    Refusal::Unreadable {
        what: what.into(),
        why: e.to_string(),
    }
}

/// Whether this process may ptrace anything (`CAP_SYS_PTRACE`).
pub fn privileged() -> bool {
    procfs::status("self").is_ok_and(|s| s.cap_eff & CAP_SYS_PTRACE != 0)
}

/// malloc and its internals (one object file of the C library): from the
/// end of the exported function before the first malloc entry point to
/// the start of the one after the last, which takes in its static
/// functions (`_int_malloc`, `sysmalloc`, arena code).
fn malloc_region(libc: &Module) -> Vec<(u64, u64)> {
    const FAMILY: &[&str] = &[
        "malloc",
        "free",
        "calloc",
        "realloc",
        "reallocarray",
        "memalign",
        "aligned_alloc",
        "posix_memalign",
        "valloc",
        "pvalloc",
        "malloc_usable_size",
        "malloc_trim",
        "mallopt",
        "mallinfo",
        "mallinfo2",
        "malloc_stats",
        "malloc_info",
        "cfree",
        "__libc_malloc",
        "__libc_free",
        "__libc_calloc",
        "__libc_realloc",
        "__libc_memalign",
        "__libc_valloc",
        "__libc_pvalloc",
        "__libc_mallopt",
        "__libc_mallinfo",
        "__default_morecore",
    ];
    let Ok(all) = libc.functions(|_| true) else {
        return Vec::new();
    };
    let family: Vec<&Symbol> = all
        .iter()
        .filter(|(n, _)| FAMILY.contains(&n.as_str()))
        .map(|(_, s)| s)
        .collect();
    let (Some(lo), Some(hi)) = (
        family.iter().map(|s| s.addr).min(),
        family.iter().map(|s| s.addr + s.size.max(1)).max(),
    ) else {
        return Vec::new();
    };
    let others = all
        .iter()
        .filter(|(n, _)| !FAMILY.contains(&n.as_str()))
        .map(|(_, s)| s);
    let start = others
        .clone()
        .filter(|s| s.addr + s.size <= lo)
        .map(|s| s.addr + s.size)
        .max()
        .unwrap_or(lo);
    let end = others
        .filter(|s| s.addr >= hi)
        .map(|s| s.addr)
        .min()
        .unwrap_or(hi);
    if end - start <= 1 << 20 {
        vec![(start, end)]
    } else {
        family
            .iter()
            .map(|s| (s.addr, s.addr + s.size.max(1)))
            .collect()
    }
}

/// Single functions a hijacked thread must not be inside: thread creation
/// and exit (the stack cache lock), fork, the loader's own entry points.
fn risky_functions(libc: &Module) -> Vec<(u64, u64)> {
    const RISKY: &[&str] = &[
        "pthread_create",
        "pthread_exit",
        "pthread_join",
        "pthread_detach",
        "fork",
        "_Fork",
        "vfork",
        "__libc_fork",
        "dlopen",
        "dlmopen",
        "dlclose",
        "dlsym",
        "dlvsym",
        "dl_iterate_phdr",
        "exit",
        "__cxa_thread_atexit_impl",
        "__call_tls_dtors",
        "__libc_dlopen_mode",
        "__libc_dlclose",
        "__libc_dlsym",
    ];
    libc.functions(|n| RISKY.contains(&n) || n.starts_with("__nptl_"))
        .unwrap_or_default()
        .into_iter()
        .map(|(_, s)| (s.addr, s.addr + s.size.max(1)))
        .collect()
}

impl Target {
    /// Inspects `pid`: refuses (changing nothing) when it cannot be
    /// attached to, else finds its C library and loader entry points.
    pub fn inspect(pid: i32) -> Result<Target, Refusal> {
        if pid <= 0 {
            return Err(Refusal::NoSuchProcess(pid));
        }
        if pid as u32 == std::process::id() {
            return Err(Refusal::Ourselves);
        }
        let status = procfs::status(&pid.to_string()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Refusal::NoSuchProcess(pid)
            } else {
                unreadable(format!("/proc/{pid}/status"), e)
            }
        })?;
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        let privileged = privileged();
        if !privileged {
            if let Some(&owner) = status.uids[..3].iter().find(|&&u| u != me) {
                return Err(Refusal::OtherUser { pid, owner, me });
            }
            use std::os::unix::fs::MetadataExt;
            // An undumpable process's /proc files belong to root.
            if std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() != me) {
                return Err(Refusal::Undumpable(pid));
            }
            match procfs::yama_scope() {
                Some(s @ 2..) => return Err(Refusal::Yama { scope: s }),
                Some(1) if !descends_from_us(pid) => return Err(Refusal::Yama { scope: 1 }),
                _ => {}
            }
        } else if procfs::yama_scope().is_some_and(|s| s >= 3) {
            return Err(Refusal::Yama { scope: 3 });
        }
        if status.tracer != 0 {
            let tracer_name = procfs::status(&status.tracer.to_string())
                .map(|s| s.name)
                .unwrap_or_else(|_| "?".into());
            return Err(Refusal::Traced {
                pid,
                tracer: status.tracer,
                tracer_name,
            });
        }
        if matches!(status.state, 'T' | 't' | 'Z' | 'X' | 'x') {
            return Err(Refusal::NotRunning {
                pid,
                state: status.state,
            });
        }
        if status.x86_features.split_whitespace().any(|f| f == "shstk") {
            return Err(Refusal::ShadowStack(pid));
        }
        let exe_link = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| unreadable(format!("/proc/{pid}/exe"), e))?;
        let exe = exe_link.display().to_string();
        let kind = elf::kind(std::path::Path::new(&format!("/proc/{pid}/exe")))
            .map_err(|e| unreadable(&exe, e))?;
        if !kind.class64 || kind.machine != EM_X86_64 {
            return Err(Refusal::NotX86_64 {
                what: format!(
                    "{exe} is a {}-bit ELF for machine {}",
                    if kind.class64 { 64 } else { 32 },
                    kind.machine
                ),
            });
        }
        if kind.interp.is_none() {
            return Err(Refusal::Static { exe });
        }
        let root = procfs::root_of(pid);
        let maps: Vec<Mapping> =
            procfs::maps(pid).map_err(|e| unreadable(format!("/proc/{pid}/maps"), e))?;
        let modules = elf::modules(pid, &maps, &root);
        // The C library: the object exporting dlopen (glibc 2.34 and later
        // have it in libc.so.6; before, in libdl.so.2).
        let mut found = None;
        for m in modules
            .iter()
            .filter(|m| m.file_name().starts_with("libc.so") || m.file_name().starts_with("libdl"))
        {
            if let Ok(Some(s)) = m.symbol("dlopen") {
                found = Some((m.clone(), s));
                break;
            }
        }
        let Some((dl_module, dlopen)) = found else {
            let looked: Vec<&str> = modules
                .iter()
                .filter(|m| m.file_name().starts_with("lib"))
                .map(|m| m.file_name())
                .take(8)
                .collect();
            return Err(Refusal::NoDlopen {
                looked: if looked.is_empty() {
                    "no libc mapped".into()
                } else {
                    format!("looked in {}", looked.join(", "))
                },
            });
        };
        let libc_mod = modules
            .iter()
            .find(|m| m.file_name().starts_with("libc.so"))
            .cloned()
            .unwrap_or_else(|| dl_module.clone());
        let sym = |m: &Module, n: &str| -> Result<u64, Refusal> {
            m.symbol(n)
                .map_err(|e| unreadable(&m.path, e))?
                .map(|s| s.addr)
                .ok_or_else(|| Refusal::NoDlopen {
                    looked: format!("{} has no {n}", m.path),
                })
        };
        let calls = LoaderCalls {
            dlopen: dlopen.addr,
            dlclose: sym(&dl_module, "dlclose")?,
            dlerror: sym(&dl_module, "dlerror")?,
            errno_location: sym(&libc_mod, "__errno_location")?,
        };
        let mut unsafe_code: Vec<(u64, u64)> = Vec::new();
        if let Some(interp) = &kind.interp {
            let base = interp.rsplit('/').next().unwrap_or(interp);
            for m in modules
                .iter()
                .filter(|m| m.file_name() == base || m.path == *interp)
            {
                unsafe_code.extend(m.text());
            }
        }
        unsafe_code.extend(malloc_region(&libc_mod));
        unsafe_code.extend(risky_functions(&libc_mod));
        if dl_module.path != libc_mod.path {
            unsafe_code.extend(risky_functions(&dl_module));
        }
        unsafe_code.sort_unstable();
        Ok(Target {
            pid,
            status,
            exe,
            root,
            modules,
            libc: libc_mod,
            calls,
            unsafe_code,
        })
    }

    /// Whether `addr` is in code a thread must not be in when made to call
    /// into the C library.
    pub fn in_unsafe_code(&self, addr: u64) -> bool {
        let i = self.unsafe_code.partition_point(|r| r.0 <= addr);
        self.unsafe_code[..i]
            .iter()
            .rev()
            .take(64)
            .any(|r| addr < r.1)
    }

    /// The module containing `addr`, if any.
    pub fn module_at(&self, addr: u64) -> Option<&Module> {
        self.modules.iter().find(|m| m.contains(addr))
    }
}

/// Whether `pid` is a descendant of this process.
fn descends_from_us(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..64 {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            return false;
        };
        let Some(after) = text.rfind(')').map(|i| &text[i + 1..]) else {
            return false;
        };
        let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<i32>().ok())
        else {
            return false;
        };
        if ppid == me {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        p = ppid;
    }
    false
}
