//! Reading the site records that `#[traced]` leaves in section
//! `livetrace_sites`.
//!
//! Each record is five 8-byte words, written by assembler directives next
//! to its site stub (see `livetrace-macros`):
//!
//! | word | meaning                                        |
//! |------|------------------------------------------------|
//! | 0    | site address (the stub's first byte, a NOP5)    |
//! | 1    | address of a `static _: &'static str`: path     |
//! | 2    | address of a `static _: &'static str`: file     |
//! | 3    | line of the function's name                     |
//! | 4    | address of a `static _: &'static str`: signature |
//!
//! The linker gathers every object's records into one array bounded by
//! `__start_livetrace_sites` and `__stop_livetrace_sites`. It defines those
//! symbols only if the section exists, so this crate always contributes one
//! sentinel record (site address 0), and refers to it by name so that the
//! object holding it is always linked in with `macro_sites`.

use std::arch::global_asm;

/// One `#[traced]` site, as recorded at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacroSite {
    /// Address of the site: five bytes that are a NOP (`0f 1f 44 00 00`)
    /// while tracing is off, and the first instruction every call executes.
    pub addr: usize,
    /// Path of the function: `crate::module::name`,
    /// `crate::module::Type::name` or `crate::module::<Type as Trait>::name`.
    pub path: &'static str,
    /// Source file, as `file!()` gives it.
    pub file: &'static str,
    /// Line of the function's name.
    pub line: u32,
    /// The function's type as written, `Self` spelled out:
    /// `fn(u64) -> u64`, `fn(&app::Parser, &str) -> bool`. Empty when
    /// unknown (generic functions: their instantiations need not share
    /// one). The control socket lets one function be live-patched onto
    /// another only when both are known and equal.
    pub signature: &'static str,
}

/// The in-section layout; must match `record_lines` in `livetrace-macros`.
#[repr(C)]
struct RawRecord {
    addr: usize,
    path: *const &'static str,
    file: *const &'static str,
    line: u64,
    signature: *const &'static str,
}

static SENTINEL_STR: &str = "";

// `.weak`: two versions of this crate in one program would each bring a
// sentinel; any one of them satisfies the reference below.
global_asm!(
    ".pushsection livetrace_sites,\"awR\",@progbits",
    ".balign 8",
    ".weak livetrace_sites_sentinel",
    "livetrace_sites_sentinel:",
    ".quad 0",
    ".quad {s}",
    ".quad {s}",
    ".quad 0",
    ".quad {s}",
    ".popsection",
    s = sym SENTINEL_STR,
);

// Declared as bytes: only their addresses are used, as `RawRecord` pointers.
unsafe extern "C" {
    static livetrace_sites_sentinel: u8;
    static __start_livetrace_sites: u8;
    static __stop_livetrace_sites: u8;
}

/// Every `#[traced]` site linked into the same executable or shared object
/// as this crate, in link order (each linked image has its own section). The iterator is cheap:
/// it walks a static array and allocates nothing.
pub fn macro_sites() -> impl Iterator<Item = MacroSite> {
    let start = (&raw const __start_livetrace_sites).cast::<RawRecord>();
    let stop = (&raw const __stop_livetrace_sites).cast::<RawRecord>();
    // Naming the sentinel is what links its object in; it is never read.
    let sentinel = (&raw const livetrace_sites_sentinel).cast::<RawRecord>();
    debug_assert!(start <= sentinel && sentinel < stop);
    let n = (stop as usize - start as usize) / size_of::<RawRecord>();
    (0..n).filter_map(move |i| {
        // The section holds only whole 8-aligned 40-byte records (macro
        // output and the sentinel above), and is never written after
        // relocation.
        // SAFETY: record `i < n` of the linker-gathered section is in bounds.
        let r = unsafe { &*start.add(i) };
        if r.addr == 0 {
            return None;
        }
        // SAFETY: words 1, 2 and 4 of a non-sentinel record are `sym`
        // operands naming `static _: &'static str` items, which live for
        // the whole program.
        let (path, file, signature) = unsafe { (*r.path, *r.file, *r.signature) };
        Some(MacroSite {
            addr: r.addr,
            path,
            file,
            line: r.line as u32,
            signature,
        })
    })
}
