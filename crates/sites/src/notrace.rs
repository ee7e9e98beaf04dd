//! Functions that are never traced, whatever the filter: livetrace's own
//! code and the runtime it runs on.
//!
//! A program built so that every function has a site (rustc's
//! `-Zpatchable-function-entry`, or C code linking livetrace's library)
//! also gives sites to livetrace's own functions, and to the instances of
//! `core`, `alloc` and `std` generics compiled into it. Tracing those
//! would have livetrace trace itself: the trap handler, the probe handler,
//! the batch writer and the recording paths call them, and a site of the
//! trap handler mid-batch would trap inside the trap handler. So, like the
//! kernel's `notrace` functions, they are kept out of the record table by
//! name, recognised by the crate their path starts with (or, for an
//! `impl` of a trait on a type without a path of its own, the trait's
//! crate), or by being one of the C-level symbols livetrace and the Rust
//! runtime define.

/// Crates whose functions are never traced.
const CRATES: &[&str] = &[
    "core",
    "alloc",
    "std",
    "proc_macro",
    "panic_unwind",
    "panic_abort",
    "unwind",
    "compiler_builtins",
    "std_detect",
    "rustc_demangle",
    "libc",
];

/// C-level symbols defined by livetrace (interposers, its C API) or by the
/// Rust runtime (allocator shims, panic entry points).
const SYMBOLS: &[&str] = &[
    "sigaction",
    "pthread_sigmask",
    "sigprocmask",
    "signal",
    "bsd_signal",
    "sysv_signal",
    "sigsuspend",
    "ppoll",
    "pselect",
    "epoll_pwait",
    "epoll_pwait2",
    "swapcontext",
    "setcontext",
    "dlopen",
    "dlclose",
    "fork",
    "_Unwind_RaiseException",
    "_Unwind_ForcedUnwind",
    "_Unwind_Backtrace",
    "rust_begin_unwind",
    "rust_panic",
    "rust_eh_personality",
];

/// C-level symbol prefixes, as [`SYMBOLS`]. (livetrace's C API, `lt_*`, is
/// only in `liblivetrace.so`, whose sites are all left out: see
/// [`is_notrace_object`].)
const PREFIXES: &[&str] = &["__rust", "__rdl_", "__rg_", "livetrace"];

/// Whether every site of the object at `path` is notrace: livetrace's own
/// shared library.
pub fn is_notrace_object(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with("liblivetrace"))
}

/// The crate a demangled Rust path belongs to: the first path segment, or
/// for `<Type as Trait>::f` / `<Type>::f` the type's crate, or the trait's
/// when the type has no path of its own (`<[u8] as core::fmt::Debug>`).
fn first_segment(s: &str) -> Option<&str> {
    let s = s.trim_start_matches(['&', '*', '(', '[']);
    let s = s.strip_prefix("mut ").unwrap_or(s);
    let s = s.strip_prefix("const ").unwrap_or(s);
    let s = s.strip_prefix("dyn ").unwrap_or(s);
    let end = s.find("::")?;
    let seg = &s[..end];
    (!seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(seg)
}

fn crate_of(name: &str) -> Option<&str> {
    let Some(inner) = name.strip_prefix('<') else {
        return first_segment(name);
    };
    if let Some(c) = first_segment(inner) {
        return Some(c);
    }
    // `<T as Trait>`: the trait's crate.
    let as_at = inner.find(" as ")?;
    first_segment(&inner[as_at + 4..])
}

/// Whether the function named `raw` (as in the symbol table) and `name`
/// (demangled) is livetrace's own or the runtime's, and so never traced.
pub fn is_notrace(raw: &str, name: &str) -> bool {
    if SYMBOLS.contains(&raw) || PREFIXES.iter().any(|p| raw.starts_with(p)) {
        return true;
    }
    match crate_of(name) {
        Some(c) => c.starts_with("livetrace") || CRATES.contains(&c),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livetrace_and_the_runtime_are_notrace() {
        for (raw, name) in [
            ("x", "livetrace_poke::trap::on_sigtrap"),
            (
                "x",
                "<livetrace_ring::ring::Rings as core::ops::drop::Drop>::drop",
            ),
            ("x", "<livetrace_ring::ring::Rings>::write"),
            ("x", "core::ptr::drop_in_place<myapp::Foo>"),
            ("x", "alloc::raw_vec::finish_grow"),
            ("x", "std::rt::lang_start::{{closure}}"),
            ("x", "<[u8] as core::fmt::Debug>::fmt"),
            ("x", "<&mut alloc::vec::Vec<u8> as core::fmt::Debug>::fmt"),
            ("sigaction", "sigaction"),
            ("__rust_alloc", "__rust_alloc"),
            ("x", "livetrace::trace"),
        ] {
            assert!(is_notrace(raw, name), "{name}");
        }
    }

    #[test]
    fn program_code_is_traced() {
        for (raw, name) in [
            ("x", "myapp::work"),
            ("x", "<myapp::Foo as core::fmt::Debug>::fmt"),
            ("x", "<&myapp::Foo as core::fmt::Debug>::fmt"),
            ("x", "<myapp::Foo>::new"),
            ("x", "regex_automata::meta::Regex::search"),
            ("ZSTD_compress", "ZSTD_compress"),
            ("inflate", "inflate"),
            ("x", "stdx::thing"),
            ("x", "core_affinity::set"),
            ("lt_dlopen", "lt_dlopen"),
        ] {
            assert!(!is_notrace(raw, name), "{name}");
        }
        assert!(is_notrace_object("/x/target/release/liblivetrace.so"));
        assert!(!is_notrace_object("/usr/lib/libz.so.1"));
    }
}
