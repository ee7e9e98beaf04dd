//! The constructor: livetrace set up before the program's first instruction
//! of its own.
//!
//! It is an `.init_array.00200` entry: the loader runs a library's
//! initialisers before those of the objects that depend on it, and a
//! preloaded library's before the executable's, so this runs before the
//! program's constructors and `main`, normally while the process has one
//! thread. Within this library the priority suffix puts it after Rust's
//! own start-up entry (`.init_array.00099`) and before plain `.init_array`
//! entries (the control-socket crate's, which reads `LIVETRACE=1` /
//! `LIVETRACE_RECORD` for `livetrace record`).
//!
//! A library loaded late, with `dlopen` (by `livetrace attach`, or by the
//! program), is not at start-up: its constructor does nothing, and
//! livetrace starts only when asked ([`crate::attach`]). See
//! [`loaded_late`].
//!
//! Environment:
//! - `LIVETRACE_PRELOAD=0`: do nothing (interposers pass through).
//! - `LIVETRACE_SERVE=0`: no control socket.
//! - `LIVETRACE_VERBOSE=1`: say what was found on stderr.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

#[used]
#[unsafe(link_section = ".init_array.00200")]
static CONSTRUCTOR: extern "C" fn() = constructor;

extern "C" fn constructor() {
    if std::panic::catch_unwind(start).is_err() {
        crate::turn_off("internal error while starting".into());
    }
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == value)
}

fn start() {
    if loaded_late() {
        // Another thread may be anywhere, even inside a sled, and nothing
        // here is to start behind the back of whoever loaded us.
        crate::tls::set_loaded_late(true);
        return;
    }
    crate::tls::set_loaded_late(false);
    crate::attach::mark_startup();
    if env_is("LIVETRACE_PRELOAD", "0") {
        crate::turn_off("turned off by LIVETRACE_PRELOAD=0".into());
        return;
    }
    if main_links_livetrace() {
        // Two livetraces would patch the same sites and bind the same
        // control socket. The program's own wins.
        crate::turn_off("the program links livetrace itself; liblivetrace.so stands down".into());
        if crate::verbose() {
            eprintln!("livetrace: the program links livetrace itself; liblivetrace.so stands down");
        }
        return;
    }
    crate::interpose::resolve();
    // Creating the tracing core checks that its thread state is in static
    // TLS, which spawns and joins a thread. Let it be gone before the table
    // is built, so gcc's sleds are converted the cheap way (one thread).
    if let Err(e) = livetrace_ftrace::inspect(|_| ()) {
        eprintln!("livetrace: {e}");
        crate::turn_off(e.to_string());
        return;
    }
    wait_single_threaded(Duration::from_millis(200));
    let report = {
        let _serial = crate::interpose::serialize();
        livetrace::init()
    };
    match report {
        Ok(r) => {
            if crate::verbose() {
                eprintln!(
                    "livetrace: {} compiler site(s), {} converted{}{}",
                    r.compiler_sites,
                    r.converted,
                    r.conversion_error
                        .as_deref()
                        .map(|e| format!(", conversion failed: {e}"))
                        .unwrap_or_default(),
                    if r.rejected.is_empty() {
                        String::new()
                    } else {
                        format!(", {} rejected", r.rejected.len())
                    }
                );
            }
        }
        Err(e) => {
            eprintln!("livetrace: {e}");
            crate::turn_off(e.to_string());
            return;
        }
    }
    crate::STATE.store(crate::ACTIVE, std::sync::atomic::Ordering::Release);
    if !env_is("LIVETRACE_SERVE", "0") {
        match livetrace_server::serve() {
            Ok(path) if crate::verbose() => {
                eprintln!("livetrace: control socket {}", path.display())
            }
            Ok(_) => {}
            Err(e) => eprintln!("livetrace: cannot start the control socket: {e}"),
        }
    }
}

/// Whether this library was loaded after start-up, with `dlopen`. Loaded
/// at start-up (`LD_PRELOAD`, or as a dependency of the program) it is in
/// the loader's global scope ahead of the C library, so `dlopen` resolves
/// to its interposer, and it was loaded before the C library; loaded with
/// `dlopen` (`RTLD_LOCAL`, as `livetrace attach` does) neither holds.
pub(crate) fn loaded_late() -> bool {
    // SAFETY: RTLD_DEFAULT lookup of a NUL-terminated name.
    let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dlopen".as_ptr()) } as usize;
    // (Not `global == interpose::dlopen as usize`: taking the address of an
    // exported function goes through the GOT, which gives the global
    // definition, whoever's it is.)
    if crate::interpose::is_own(global) {
        return false;
    }
    !loaded_before_libc()
}

/// Whether this library comes before the C library in load order.
fn loaded_before_libc() -> bool {
    struct Find {
        me: usize,
        seen_me: bool,
        seen_libc: bool,
        before: bool,
    }
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut std::ffi::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info; `data` is our Find.
        let (info, f) = unsafe { (&*info, &mut *(data as *mut Find)) };
        let name = if info.dlpi_name.is_null() {
            &b""[..]
        } else {
            // SAFETY: the loader's NUL-terminated object name.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
        };
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
        if base.starts_with(b"libc.so") {
            f.seen_libc = true;
        }
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader's program headers of this object.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let mine = phdrs.iter().any(|p| {
            let lo = (info.dlpi_addr as usize).wrapping_add(p.p_vaddr as usize);
            p.p_type == libc::PT_LOAD && lo <= f.me && f.me < lo.wrapping_add(p.p_memsz as usize)
        });
        if mine {
            f.seen_me = true;
            f.before = !f.seen_libc;
            return 1;
        }
        0
    }
    let mut f = Find {
        me: loaded_before_libc as *const () as usize,
        seen_me: false,
        seen_libc: false,
        before: false,
    };
    // SAFETY: the callback only reads the loader's data and writes `f`.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut f as *mut Find as *mut std::ffi::c_void) };
    f.seen_me && f.before
}

/// Waits (briefly) until this is the only thread: a thread that was just
/// joined can still be listed in `/proc/self/task` for a moment.
fn wait_single_threaded(limit: Duration) {
    let t0 = Instant::now();
    while livetrace::raw::sites::thread_count().is_ok_and(|n| n > 1) && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Whether the executable has livetrace linked in: every program that
/// links the `livetrace` crate has its `livetrace_sites` section (the crate
/// always contributes one), and section headers survive `strip`.
fn main_links_livetrace() -> bool {
    elf_sections("/proc/self/exe").is_some_and(|s| s.iter().any(|s| s.name == "livetrace_sites"))
}

/// One section header's name, address and size.
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// The sections of an ELF64 file, read from its headers only.
pub(crate) fn elf_sections(path: &str) -> Option<Vec<Section>> {
    let f = std::fs::File::open(path).ok()?;
    let mut eh = [0u8; 64];
    (&f).read_exact(&mut eh).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3a);
    let shnum = u16_at(&eh, 0x3c);
    let shstrndx = u16_at(&eh, 0x3e);
    if shoff == 0 || shentsize < 64 || shnum == 0 || shstrndx >= shnum || shnum > 1 << 14 {
        return None;
    }
    let mut sh = vec![0u8; shentsize * shnum];
    f.read_exact_at(&mut sh, shoff as u64).ok()?;
    let strhdr = &sh[shstrndx * shentsize..];
    let (stroff, strsize) = (u64_at(strhdr, 0x18), u64_at(strhdr, 0x20));
    if strsize > 1 << 24 {
        return None;
    }
    let mut strtab = vec![0u8; strsize];
    f.read_exact_at(&mut strtab, stroff as u64).ok()?;
    Some(
        (0..shnum)
            .filter_map(|i| {
                let h = &sh[i * shentsize..];
                let rest = strtab.get(u32_at(h, 0)..)?;
                let end = rest.iter().position(|&b| b == 0)?;
                Some(Section {
                    name: String::from_utf8_lossy(&rest[..end]).into_owned(),
                    addr: u64_at(h, 0x10) as u64,
                    size: u64_at(h, 0x20) as u64,
                })
            })
            .collect(),
    )
}
