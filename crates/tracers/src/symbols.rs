//! Names and process facts for the outputs.
//!
//! Traced functions are named from the record table (full Rust paths,
//! demangled C++). Callers are arbitrary return addresses: they are named by
//! the traced function containing them when there is one, else by the
//! dynamic linker's symbol (`dladdr`), else left as an address.

use livetrace_output::{Event, Mapping, Symbols, Trace};

/// This process's executable path and command line, as `/proc/self` tells.
pub fn process_identity() -> (String, Vec<String>) {
    let program = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cmdline = std::fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    (program, cmdline)
}

/// A trace with this process's identity and mappings, and no threads yet.
pub(crate) fn process_trace() -> Trace {
    let (program, cmdline) = process_identity();
    Trace {
        pid: std::process::id(),
        program,
        cmdline,
        start_ns: 0,
        threads: Vec::new(),
        symbols: Symbols::default(),
        maps: mappings(),
    }
}

/// Executable mappings, from /proc/self/maps.
fn mappings() -> Vec<Mapping> {
    Mapping::executable(&std::fs::read_to_string("/proc/self/maps").unwrap_or_default())
}

/// The name of the function at or containing `addr`.
pub(crate) fn name_of(addr: usize) -> String {
    if let Some(n) = table_name(addr) {
        return n;
    }
    match symbol(addr) {
        Some(s) if s.addr == addr => s.name,
        Some(s) => format!("{}+{:#x}", s.name, addr - s.addr),
        None => dladdr_name(addr).unwrap_or_else(|| format!("{addr:#x}")),
    }
}

fn table_name(addr: usize) -> Option<String> {
    livetrace_ftrace::name_of(addr).ok().flatten()
}

/// The function symbol containing `addr`, from the loaded objects' symbol
/// tables (read once per object).
fn symbol(addr: usize) -> Option<livetrace_sites::Symbol> {
    use std::sync::Mutex;
    static SYMBOLIZER: Mutex<Option<(usize, livetrace_sites::Symbolizer)>> = Mutex::new(None);
    let mut g = SYMBOLIZER.lock().unwrap_or_else(|e| e.into_inner());
    // Rebuilt when the set of objects changes (a library was loaded).
    let n = livetrace_ftrace::inspect(|t| t.objects().len()).ok()?;
    if g.as_ref().is_none_or(|(k, _)| *k != n) {
        let s = livetrace_ftrace::inspect(livetrace_sites::Symbolizer::new).ok()?;
        *g = Some((n, s));
    }
    g.as_ref()?.1.lookup(addr).map(|mut s| {
        s.name = livetrace_format::display_symbol(&s.name);
        s
    })
}

fn dladdr_name(addr: usize) -> Option<String> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let ok = unsafe { libc::dladdr(addr as *const _, info.as_mut_ptr()) };
    // SAFETY: dladdr succeeded, so the struct is initialised.
    let info = unsafe { info.assume_init() };
    if ok == 0 || info.dli_sname.is_null() {
        return None;
    }
    // SAFETY: dli_sname is a NUL-terminated string owned by the loader.
    let raw = unsafe { std::ffi::CStr::from_ptr(info.dli_sname) }.to_string_lossy();
    let name = livetrace_sites::demangle(&raw).unwrap_or_else(|| raw.into_owned());
    let off = addr - info.dli_saddr as usize;
    Some(if off == 0 {
        name
    } else {
        format!("{name}+{off:#x}")
    })
}

/// Names every function and caller address the trace's events mention.
pub(crate) fn name_events(trace: &mut Trace) {
    let mut addrs: Vec<u64> = Vec::new();
    for t in &trace.threads {
        for e in &t.events {
            match *e {
                Event::Call { func, caller, .. } => {
                    addrs.push(func);
                    addrs.push(caller);
                }
                Event::Entry { func, .. } | Event::Exit { func, .. } => addrs.push(func),
            }
        }
    }
    for (addr, size, name) in name_addrs(addrs) {
        trace.symbols.insert(addr, size, name);
    }
}

/// Names for `addrs` (functions and callers): `(address, size, name)`,
/// sorted. A traced function by the record table's name; another address
/// by the whole function symbol around it, so every address inside it (each
/// call site of a caller) resolves to the same plain name.
pub(crate) fn name_addrs(mut addrs: Vec<u64>) -> Vec<(u64, u64, String)> {
    addrs.sort_unstable();
    addrs.dedup();
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let a = a as usize;
        if let Some(n) = table_name(a) {
            out.push((a as u64, 0, n));
        } else if let Some(s) = symbol(a) {
            out.push((s.addr as u64, s.size as u64, s.name));
        } else {
            out.push((a as u64, 0, name_of(a)));
        }
    }
    // One symbol per address: a traced function's table name (pushed for
    // its site) with the size of the ELF symbol there (pushed for a call
    // site inside it), so callers inside it resolve to it too.
    out.sort_by_key(|s| s.0);
    let mut merged: Vec<(u64, u64, String)> = Vec::with_capacity(out.len());
    for (addr, size, name) in out {
        match merged.last_mut() {
            Some(last) if last.0 == addr => last.1 = last.1.max(size),
            _ => merged.push((addr, size, name)),
        }
    }
    merged
}
