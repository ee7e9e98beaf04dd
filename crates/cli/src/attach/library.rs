//! The library being loaded: finding `liblivetrace.so`, staging a copy
//! the target can open, reading its attach words, counting sites in the
//! process's objects.

use super::*;

/// Sites the compilers and `#[traced]` left in an object, from its section
/// headers: `__patchable_function_entries` and `__mcount_loc` (8 bytes
/// each), `livetrace_sites` (40 bytes each, one of them a sentinel).
pub(super) fn sites_in(file: &Path) -> Option<usize> {
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
pub(super) fn count_sites(modules: &[Module]) -> usize {
    modules
        .iter()
        .filter(|m| !is_livetrace_lib(m))
        .filter_map(|m| sites_in(&m.file))
        .sum()
}

/// Whether `m` is a liblivetrace.so (ours, or a copy we made).
pub(super) fn is_livetrace_lib(m: &Module) -> bool {
    let n = m.file_name();
    n.starts_with("liblivetrace") || n.starts_with(".livetrace-attach-")
}

/// The loaded liblivetrace.so of a process, with its attach protocol.
pub(super) struct Library {
    pub(super) module: Module,
    pub(super) state: u64,
    pub(super) message: u64,
    pub(super) sleds: u64,
    pub(super) start: u64,
    pub(super) convert: u64,
    pub(super) detach: u64,
    pub(super) unload: u64,
    pub(super) code: u64,
    pub(super) signals: u64,
    pub(super) masks: u64,
}

impl Library {
    pub(super) fn of(module: Module) -> Result<Library, Error> {
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

    pub(super) fn find(modules: &[Module]) -> Option<Module> {
        modules.iter().find(|m| is_livetrace_lib(m)).cloned()
    }

    pub(super) fn state(&self, p: &Process) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        p.read(self.state, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(super) fn message(&self, p: &Process) -> String {
        p.read_cstr(self.message, 1024).unwrap_or_default()
    }

    /// Waits (the process running) until the state is one of `want` (or
    /// failed); returns it.
    pub(super) fn wait_any(
        &self,
        p: &mut Process,
        want: &[u32],
        what: &'static str,
    ) -> Result<u32, Error> {
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
    pub(super) fn wait_for(
        &self,
        p: &mut Process,
        want: &[u32],
        what: &'static str,
    ) -> Result<u32, Error> {
        let s = self.wait_any(p, want, what)?;
        if s == protocol::FAILED {
            return Err(Error::LibraryFailed(self.message(p)));
        }
        Ok(s)
    }
}

/// The library to load: `--lib`, `$LIVETRACE_PRELOAD_LIB`, or the one
/// next to this command.
pub(super) fn library_file(lib: Option<&Path>) -> Result<PathBuf, Error> {
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
pub(super) struct Staged {
    /// The path the process opens.
    pub(super) path: String,
    /// A copy to remove, as we reach it.
    pub(super) copy: Option<PathBuf>,
}

impl Staged {
    pub(super) fn new(pid: i32, target_uid: u32, lib: &Path) -> Result<Staged, Error> {
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
pub(super) fn readable_by_all(path: &Path) -> bool {
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
pub(super) fn explain_load(msg: String, lib: &Path) -> Error {
    if msg.contains("static TLS") {
        return Error::StaticTls {
            message: msg,
            need: tls_size(lib),
        };
    }
    Error::Load(msg)
}

/// The size of a library's TLS segment.
pub(super) fn tls_size(lib: &Path) -> Option<u64> {
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
