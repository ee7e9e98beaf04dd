//! Building and loading the C test libraries.

#![allow(dead_code)]

use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PATCH: &[&str] = &["-O2", "-fPIC", "-shared", "-fpatchable-function-entry=5"];

/// Whether `cmd` runs.
pub fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a clang test should run: always in CI (which installs clang via
/// .ci/setup-packages, so a missing clang there is a failure), otherwise only
/// when clang is installed.
pub fn want_clang() -> bool {
    if have("clang") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "clang is missing in CI: .ci/setup-packages should have installed it"
    );
    eprintln!("SKIPPED: clang not installed (run .ci/setup-packages)");
    false
}

fn src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(name)
}

/// Compiles `sources` (under tests/c) with `cc` and `flags` into
/// `lib<name>.so` in the target's temporary directory; `name` must be unique
/// per test so each test loads its own copy.
pub fn build_so(cc: &str, flags: &[&str], sources: &[&str], name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lib{name}.so"));
    let mut cmd = Command::new(cc);
    cmd.args(flags);
    for s in sources {
        cmd.arg(src(s));
    }
    cmd.arg("-o").arg(&out);
    let o = cmd.output().unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        o.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A `dlopen`ed library, closed on drop unless `leak`ed.
pub struct Lib {
    pub handle: *mut c_void,
    pub path: PathBuf,
}

impl Lib {
    pub fn open(path: &Path) -> Lib {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: loading a test library whose constructors do nothing.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen {}", path.display());
        Lib {
            handle,
            path: path.to_owned(),
        }
    }

    pub fn sym(&self, name: &str) -> usize {
        let c = CString::new(name).unwrap();
        // SAFETY: live handle, NUL-terminated name.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        assert!(!p.is_null(), "dlsym {name}");
        p as usize
    }

    /// Closes the program's reference (the library may stay loaded if the
    /// table pins it).
    pub fn close(mut self) {
        let h = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        // SAFETY: the handle came from dlopen and is closed once.
        assert_eq!(unsafe { libc::dlclose(h) }, 0);
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        // A failed test still unloads its library, so later tests in the
        // same process see only their own.
        if !self.handle.is_null() {
            // SAFETY: as in close.
            unsafe { libc::dlclose(self.handle) };
        }
    }
}

/// The one record named `name` in the object loaded from `path`.
pub fn site_in(table: &livetrace_sites::Table, name: &str, path: &Path) -> usize {
    let p = path.to_str().unwrap();
    let v: Vec<usize> = table
        .lookup_name(name)
        .into_iter()
        .filter(|&i| table.info(i).object == p)
        .collect();
    assert_eq!(v.len(), 1, "{name} in {p}: {v:?}");
    v[0]
}

/// Whether a file is mapped in this process.
pub fn is_mapped(path: &Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let p = path.to_str().unwrap();
    maps.lines().any(|l| l.ends_with(p))
}

/// Whether the library is still loaded, asked the loader without loading it.
pub fn is_loaded(path: &Path) -> bool {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: RTLD_NOLOAD loads nothing; the reference taken is dropped.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_NOW);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
        true
    }
}

/// Reads five bytes of mapped text.
pub fn bytes(addr: usize) -> [u8; 5] {
    livetrace_poke::read_site(addr).unwrap()
}

pub type Fn2 = unsafe extern "C" fn(i32, i32) -> i32;
pub type Fn1 = unsafe extern "C" fn(i32) -> i32;
pub type Count = unsafe extern "C" fn() -> i64;

/// # Safety
/// `addr` must be a function of that signature.
pub unsafe fn as_fn<F: Copy>(addr: usize) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    // SAFETY: per the caller.
    unsafe { std::mem::transmute_copy(&addr) }
}

/// The C functions of a library built from funcs.c and tramp.c, callable
/// safely by the tests.
#[derive(Clone, Copy)]
pub struct Funcs {
    add: Fn2,
    count: Count,
}

impl Funcs {
    pub fn of(lib: &Lib) -> Funcs {
        // SAFETY: funcs.c defines `int lt_add(int, int)` and tramp.c
        // `long lt_tramp_count(void)`.
        unsafe {
            Funcs {
                add: as_fn(lib.sym("lt_add")),
                count: as_fn(lib.sym("lt_tramp_count")),
            }
        }
    }

    /// Calls lt_add. The tests call it only while the library is mapped
    /// (still open, or pinned by the table).
    pub fn add(&self, a: i32, b: i32) -> i32 {
        // SAFETY: a C function of this signature, in a mapped library (see
        // above); it is safe for any arguments.
        unsafe { (self.add)(a, b) }
    }

    /// How many times lt_tramp ran.
    pub fn hits(&self) -> i64 {
        // SAFETY: as for `add`.
        unsafe { (self.count)() }
    }
}
