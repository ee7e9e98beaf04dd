//! Telling same-named functions apart. Demangled names drop what made the
//! symbols unique (the legacy Rust hash; the address of a C `static`), so
//! several records may share one: a generic instantiated twice in different
//! crates, two `static` helpers, a function compiled into two objects. A
//! name may end in a [`Disambiguator`] that picks among them:
//! `NAME[h0123456789abcdef]` (the hash as `rustc-demangle`'s full format
//! prints it, `NAME::h0123…`) or `NAME@0xADDR` (the function's site or
//! entry, as `livetrace ls` shows it).

use std::fmt;

/// What picks one function among several of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disambiguator {
    /// The legacy Rust mangling's hash (`_ZN…17h<16 hex digits>E`).
    Hash(u64),
    /// The function's site or entry address.
    Addr(usize),
}

impl Disambiguator {
    /// Splits `NAME[hHASH]` or `NAME@0xADDR` into the name and what picks
    /// among functions of that name; `None` when `s` ends in neither (or
    /// the name before it is empty).
    pub fn split(s: &str) -> Option<(&str, Disambiguator)> {
        if let Some(body) = s.strip_suffix(']') {
            let (name, hash) = body.rsplit_once("[h")?;
            if name.is_empty() || hash.len() != 16 {
                return None;
            }
            return Some((name, Disambiguator::Hash(parse_hex(hash)?)));
        }
        let (name, addr) = s.rsplit_once("@0x")?;
        if name.is_empty() || addr.is_empty() {
            return None;
        }
        Some((name, Disambiguator::Addr(parse_hex(addr)? as usize)))
    }

    /// The hash of a legacy-mangled Rust symbol (`.llvm.` suffixes
    /// ignored), the disambiguator that survives rebuilding nothing else;
    /// `None` for v0, C and C++ symbols.
    pub fn hash_of(raw: &str) -> Option<Disambiguator> {
        let base = raw.split_once(".llvm.").map_or(raw, |(b, _)| b);
        if !base.starts_with("_ZN") {
            return None;
        }
        let body = base.strip_suffix('E')?;
        let tail = body.get(body.len().checked_sub(19)?..)?;
        let hex = tail.strip_prefix("17h")?;
        Some(Disambiguator::Hash(parse_hex(hex)?))
    }
}

/// Hex digits only (no sign, no `0x`), at most 16 of them.
fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The suffix as a filter writes it: `[h0123456789abcdef]` or `@0x5612…`.
impl fmt::Display for Disambiguator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disambiguator::Hash(h) => write!(f, "[h{h:016x}]"),
            Disambiguator::Addr(a) => write!(f, "@{a:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Disambiguator::{self, *};

    #[test]
    fn splits_hash_and_address_suffixes() {
        assert_eq!(
            Disambiguator::split("core::ptr::drop_in_place<foo::Bar>[h1a2b3c4d5e6f7a8b]"),
            Some((
                "core::ptr::drop_in_place<foo::Bar>",
                Hash(0x1a2b3c4d5e6f7a8b)
            ))
        );
        assert_eq!(
            Disambiguator::split("helper@0x55d0c0de1130"),
            Some(("helper", Addr(0x55d0_c0de_1130)))
        );
        // Brackets inside the name are the name's.
        assert_eq!(
            Disambiguator::split("<[u8] as x::Y>::f[h0000000000000001]"),
            Some(("<[u8] as x::Y>::f", Hash(1)))
        );
        for plain in [
            "helper",
            "<[u8] as x::Y>::f",
            "foo[abi:cxx11]",
            "f[h0123]",
            "f[h0123456789abcdeg]",
            "f[h0123456789abcdef0]",
            "[h0123456789abcdef]",
            "@0x10",
            "f@0x",
            "f@0xzz",
            "memcpy@GLIBC_2.14",
            "f@0x12345678901234567",
        ] {
            assert_eq!(Disambiguator::split(plain), None, "{plain}");
        }
    }

    #[test]
    fn prints_what_split_reads() {
        for d in [Hash(0x1a2b3c4d5e6f7a8b), Hash(7), Addr(0x4011d0)] {
            let s = format!("a::b{d}");
            assert_eq!(Disambiguator::split(&s), Some(("a::b", d)), "{s}");
        }
        assert_eq!(Hash(7).to_string(), "[h0000000000000007]");
        assert_eq!(Addr(0x4011d0).to_string(), "@0x4011d0");
    }

    #[test]
    fn hash_of_legacy_rust_symbols_only() {
        assert_eq!(
            Disambiguator::hash_of("_ZN4core3fmt5write17h0123456789abcdefE"),
            Some(Hash(0x0123_4567_89ab_cdef))
        );
        assert_eq!(
            Disambiguator::hash_of("_ZN6parser10parse_expr17hfedcba9876543210E.llvm.1234"),
            Some(Hash(0xfedc_ba98_7654_3210))
        );
        for none in [
            "main",
            "_ZN5shape4areaEv",
            "_RNvCs1234_7mycrate3foo",
            "_ZN3foo3barE",
        ] {
            assert_eq!(Disambiguator::hash_of(none), None, "{none}");
        }
    }
}
