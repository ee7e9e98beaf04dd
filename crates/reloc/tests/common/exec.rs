//! Running relocated code for real: a shared object loaded twice, one copy
//! with every relocatable function jumping through a detour whose site
//! counts calls, the other untouched as the reference.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use livetrace_reloc::{Image, NOP5};

/// One `dlopen`ed copy of an object.
pub struct Loaded {
    pub handle: *mut c_void,
    pub bias: u64,
    pub path: PathBuf,
}

impl Loaded {
    /// Loads `path` (RTLD_NOW | RTLD_LOCAL, so two copies resolve their own
    /// symbols); `anchor` is an exported symbol of `image` used to compute
    /// the load bias.
    pub fn open(path: &Path, image: &Image, anchor: &str) -> Loaded {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: loading a test object we just built; its constructors are
        // the compiler's.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen {}", path.display());
        let mut l = Loaded {
            handle,
            bias: 0,
            path: path.to_owned(),
        };
        let at = l.sym(anchor).expect("anchor symbol") as u64;
        l.bias = at - image.find(anchor).expect("anchor in image").addr;
        l
    }

    pub fn sym(&self, name: &str) -> Option<usize> {
        let c = CString::new(name).unwrap();
        // SAFETY: handle is a live dlopen handle.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        (!p.is_null()).then_some(p as usize)
    }

    /// The function `name` as `long f(long, long)`.
    pub fn f2(&self, name: &str) -> extern "C" fn(i64, i64) -> i64 {
        let p = self
            .sym(name)
            .unwrap_or_else(|| panic!("{name} not exported"));
        // SAFETY: every callable test function has this C signature.
        unsafe { std::mem::transmute::<usize, extern "C" fn(i64, i64) -> i64>(p) }
    }
}

/// Copies `src` to a new file (a second `dlopen` of the same path would
/// return the same handle).
pub fn copy_of(src: &Path, suffix: &str) -> PathBuf {
    let dst = src.with_extension(format!("{suffix}.so"));
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// An anonymous mapping within ±1 GiB of `near`.
struct Near {
    addr: usize,
    len: usize,
}

impl Near {
    fn map(near: u64, len: usize) -> Near {
        let len = len.next_multiple_of(4096);
        for k in 1..4096u64 {
            for sign in [-1i64, 1] {
                let hint = (near as i64 + sign * (k as i64) * (1 << 21)) as u64 & !0xfff;
                // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing
                // mapping; failure is checked.
                let p = unsafe {
                    libc::mmap(
                        hint as *mut c_void,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED && p as u64 == hint {
                    return Near {
                        addr: p as usize,
                        len,
                    };
                }
                if p != libc::MAP_FAILED {
                    // SAFETY: we just mapped it.
                    unsafe { libc::munmap(p, len) };
                }
            }
        }
        panic!("no free memory near {near:#x}");
    }
}

impl Drop for Near {
    fn drop(&mut self) {
        // SAFETY: our own mapping; callers drop it only after the code that
        // could run in it (the patched object) is gone.
        unsafe { libc::munmap(self.addr as *mut c_void, self.len) };
    }
}

/// Detours installed in one loaded copy, with a call counter per function.
pub struct Patched {
    code: Near,
    counters: Near,
    /// Counter index by every name of each relocated function.
    index: HashMap<String, usize>,
    pub relocated: usize,
}

impl Patched {
    /// How many times the relocated function `name` was entered, or `None`
    /// if it was not relocated.
    pub fn count(&self, name: &str) -> Option<u64> {
        let i = *self.index.get(name)?;
        // SAFETY: counters hold one u64 per relocated function; they are
        // written by the stubs with `lock inc`.
        Some(unsafe { std::ptr::read_volatile((self.counters.addr as *const u64).add(i)) })
    }

    /// Keeps the detours mapped for good (for copies that are never closed).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

/// `pushfq; lock inc qword [rip+counter]; popfq; ret`
const STUB_LEN: usize = 16;

fn rel32(from_end: u64, to: u64) -> [u8; 4] {
    i32::try_from(to as i64 - from_end as i64)
        .expect("rel32 reach")
        .to_le_bytes()
}

fn protect(addr: u64, len: usize, prot: i32) {
    let page = addr & !0xfff;
    let end = (addr + len as u64).next_multiple_of(4096);
    // SAFETY: the pages are the loaded object's text (or our own mapping);
    // the test process is the only one executing the patched copy.
    let r = unsafe { libc::mprotect(page as *mut c_void, (end - page) as usize, prot) };
    assert_eq!(r, 0, "mprotect {addr:#x}");
}

/// Relocates every relocatable candidate of `image` in the loaded copy
/// `lib`: builds each detour near it, makes the detour's own NOP site call a
/// counting stub, and writes the jump at the function's site. The copy must
/// not be executing on any other thread meanwhile.
pub fn patch_all(image: &Image, lib: &Loaded) -> Patched {
    let cands: Vec<_> = image
        .candidates()
        .iter()
        .filter(|c| c.is_relocatable())
        .collect();
    let code_len: usize = cands
        .iter()
        .map(|c| {
            c.verdict
                .as_ref()
                .unwrap()
                .detour_len()
                .next_multiple_of(16)
                + STUB_LEN
        })
        .sum();
    let code = Near::map(lib.bias, code_len.max(1));
    let counters = Near::map(lib.bias, (cands.len() * 8).max(1));
    let mut index = HashMap::new();
    let mut at = code.addr as u64;
    let mut jumps = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        let p = c.verdict.as_ref().unwrap();
        let mut d = p
            .relocate(lib.bias, at)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name()));
        let stub = at + p.detour_len().next_multiple_of(16) as u64;
        let counter = counters.addr as u64 + 8 * i as u64;
        assert_eq!(&d.bytes[..5], &NOP5);
        d.bytes[0] = 0xe8;
        d.bytes[1..5].copy_from_slice(&rel32(at + 5, stub));
        let mut s = vec![0x9c, 0xf0, 0x48, 0xff, 0x05];
        s.extend(rel32(stub + 9, counter));
        s.extend([0x9d, 0xc3]);
        s.resize(STUB_LEN, 0xcc);
        // SAFETY: both ranges lie in `code`, mapped writable.
        unsafe {
            std::ptr::copy_nonoverlapping(d.bytes.as_ptr(), at as *mut u8, d.bytes.len());
            std::ptr::copy_nonoverlapping(s.as_ptr(), stub as *mut u8, s.len());
        }
        for n in &c.names {
            index.insert(n.clone(), i);
        }
        jumps.push(d);
        at = stub + STUB_LEN as u64;
    }
    protect(
        code.addr as u64,
        code.len,
        libc::PROT_READ | libc::PROT_EXEC,
    );
    for d in &jumps {
        // SAFETY: the site lies in the loaded object's text, N bytes long.
        let now = unsafe { std::slice::from_raw_parts(d.site as *const u8, d.original.len()) };
        assert_eq!(
            now,
            &d.original[..],
            "text at {:#x} is what the file says",
            d.site
        );
        protect(
            d.site,
            5,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        );
        // SAFETY: made writable just above; nothing else runs this copy.
        unsafe { std::ptr::copy_nonoverlapping(d.jump.as_ptr(), d.site as *mut u8, 5) };
        protect(d.site, 5, libc::PROT_READ | libc::PROT_EXEC);
    }
    Patched {
        code,
        counters,
        index,
        relocated: cands.len(),
    }
}

/// Direct branches objdump sees in `path`: (from, target, is a call), and
/// every instruction boundary.
pub struct Objdump {
    pub branches: Vec<(u64, u64, bool)>,
    pub boundaries: std::collections::BTreeSet<u64>,
}

pub fn objdump(path: &Path) -> Objdump {
    let out = Command::new("objdump")
        .args(["-d", "-z", "--no-show-raw-insn", "-w"])
        .arg(path)
        .output()
        .expect("objdump runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut branches = Vec::new();
    let mut boundaries = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        boundaries.insert(addr);
        let mut tokens = rest.split_whitespace();
        let mut mnemonic = tokens.next().unwrap_or("");
        while matches!(
            mnemonic,
            "bnd" | "notrack" | "rex.W" | "data16" | "cs" | "ds"
        ) {
            mnemonic = tokens.next().unwrap_or("");
        }
        let is_branch = mnemonic.starts_with('j')
            || mnemonic.starts_with("call")
            || mnemonic.starts_with("loop")
            || mnemonic.starts_with("xbegin");
        if !is_branch {
            continue;
        }
        if let Some(t) = tokens.next().and_then(|t| u64::from_str_radix(t, 16).ok()) {
            branches.push((addr, t, mnemonic.starts_with("call")));
        }
    }
    Objdump {
        branches,
        boundaries,
    }
}
