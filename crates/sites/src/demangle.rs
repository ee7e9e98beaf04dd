//! Symbol names as people write them: Rust (legacy `_ZN..17h<hash>E` and v0
//! `_R`) via `rustc-demangle`, C++ (Itanium `_Z`) via `cpp_demangle`.

/// The readable form of `raw`, or `None` when it is not mangled (C names)
/// or does not demangle.
///
/// Rust is tried first because legacy Rust names are valid Itanium names
/// too, and the C++ demangler would render them with the hash. A legacy
/// name is taken as Rust only when `rustc-demangle` accepts it *and* it ends
/// in the hash element Rust always emits, since plain `_ZN3foo3barE` forms
/// (no parameters) are C++ data symbols.
pub fn demangle(raw: &str) -> Option<String> {
    // LLVM's ThinLTO/promotion suffixes (`.llvm.123`) are not part of the
    // mangled name; both demanglers would fail or print them.
    let base = raw.split_once(".llvm.").map_or(raw, |(b, _)| b);
    if base.starts_with("_R") || (base.starts_with("_ZN") && has_rust_hash(base)) {
        if let Ok(d) = rustc_demangle::try_demangle(base) {
            // `{:#}` drops the `::h<hash>` element.
            return Some(format!("{d:#}"));
        }
    }
    if base.starts_with("_Z") {
        let sym = cpp_demangle::Symbol::new(base.as_bytes()).ok()?;
        return sym.demangle(&cpp_demangle::DemangleOptions::default()).ok();
    }
    None
}

/// Whether a legacy mangled name ends in `17h` + 16 hex digits + `E`.
fn has_rust_hash(name: &str) -> bool {
    let Some(body) = name.strip_suffix('E') else {
        return false;
    };
    let Some(i) = body.len().checked_sub(19) else {
        return false;
    };
    let tail = &body.as_bytes()[i..];
    tail.starts_with(b"17h") && tail[3..].iter().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_drops_hash() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE").as_deref(),
            Some("core::fmt::write")
        );
        assert_eq!(
            demangle("_ZN6parser10parse_expr17hfedcba9876543210E.llvm.1234").as_deref(),
            Some("parser::parse_expr")
        );
    }

    #[test]
    fn rust_v0() {
        // From the v0 mangling RFC's examples.
        assert_eq!(
            demangle("_RNvCs1234_7mycrate3foo").as_deref(),
            Some("mycrate::foo")
        );
    }

    #[test]
    fn cpp() {
        assert_eq!(
            demangle("_ZN5shape4areaEv").as_deref(),
            Some("shape::area()")
        );
        assert_eq!(demangle("_Z3addii").as_deref(), Some("add(int, int)"));
        // No hash: C++, not Rust.
        assert_eq!(demangle("_ZN3foo3barE").as_deref(), Some("foo::bar"));
    }

    #[test]
    fn c_names_are_left_alone() {
        assert_eq!(demangle("main"), None);
        assert_eq!(demangle("_start"), None);
        assert_eq!(demangle("_Zgarbage"), None);
    }
}
