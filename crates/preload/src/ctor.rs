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
    if let Err(e) = livetrace_ftrace::with_table(|_| ()) {
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

/// Waits (briefly) until this is the only thread: a thread that was just
/// joined can still be listed in `/proc/self/task` for a moment.
fn wait_single_threaded(limit: Duration) {
    let t0 = Instant::now();
    while livetrace::sites::thread_count().is_ok_and(|n| n > 1) && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Whether the executable has livetrace linked in: every program that
/// links the `livetrace` crate has its `livetrace_sites` section (the crate
/// always contributes one), and section headers survive `strip`.
fn main_links_livetrace() -> bool {
    elf_section_names("/proc/self/exe")
        .is_some_and(|names| names.iter().any(|n| n == "livetrace_sites"))
}

/// The section names of an ELF64 file, read from its headers only.
fn elf_section_names(path: &str) -> Option<Vec<String>> {
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
                let name = u32_at(&sh[i * shentsize..], 0);
                let rest = strtab.get(name..)?;
                let end = rest.iter().position(|&b| b == 0)?;
                Some(String::from_utf8_lossy(&rest[..end]).into_owned())
            })
            .collect(),
    )
}
