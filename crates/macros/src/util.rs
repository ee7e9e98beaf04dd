//! Small helpers: stable hashing, readable type strings, and the two type
//! rewrites that let a nested item (which cannot name `Self` or capture
//! outer lifetimes) refer to a method body.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::visit_mut::{self, VisitMut};
use syn::{Lifetime, Path, Type};

/// FNV-1a: deterministic across runs and platforms, unlike `DefaultHasher`.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Where `span` starts in the user's source: (file, line, column). The
/// line is what a site record carries; all three feed identifier hashes.
pub(crate) fn location(span: Span) -> (String, u32, u32) {
    let s = span.unwrap();
    (s.file(), s.line() as u32, s.column() as u32)
}

/// Renders tokens the way a person writes them (`Foo<'a, T>`, `&mut [u8; 4]`)
/// rather than `TokenStream`'s spaced-out form, for site paths.
pub(crate) fn compact(tokens: impl ToTokens) -> String {
    let mut out = String::new();
    write_compact(tokens.into_token_stream(), &mut out);
    out
}

fn write_compact(ts: TokenStream, out: &mut String) {
    // A space is needed only between two word-like tokens (`dyn Trait`,
    // `T as U`), between `>` and `as`, between a keyword and a group
    // (`mut [u8]`), and after separators.
    #[derive(PartialEq)]
    enum Prev {
        Word,
        Keyword,
        CloseAngle,
        Other,
    }
    const SPACED_KEYWORDS: &[&str] = &["mut", "dyn", "impl", "as", "const", "unsafe", "for"];
    let mut prev = Prev::Other;
    for tt in ts {
        match tt {
            TokenTree::Ident(i) => {
                let s = i.to_string();
                if matches!(prev, Prev::Word | Prev::Keyword)
                    || (prev == Prev::CloseAngle && s == "as")
                {
                    out.push(' ');
                }
                prev = if SPACED_KEYWORDS.contains(&s.as_str()) {
                    Prev::Keyword
                } else {
                    Prev::Word
                };
                out.push_str(&s);
            }
            TokenTree::Literal(l) => {
                if matches!(prev, Prev::Word | Prev::Keyword) {
                    out.push(' ');
                }
                out.push_str(&l.to_string());
                prev = Prev::Word;
            }
            TokenTree::Punct(p) => {
                let c = p.as_char();
                match c {
                    ',' | ';' => out.push_str(&format!("{c} ")),
                    '+' | '=' => {
                        if !out.ends_with(' ') {
                            out.push(' ');
                        }
                        out.push_str(&format!("{c} "));
                    }
                    _ => out.push(c),
                }
                prev = if c == '>' {
                    Prev::CloseAngle
                } else {
                    Prev::Other
                };
            }
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                if prev == Prev::Keyword {
                    out.push(' ');
                }
                out.push_str(open);
                write_compact(g.stream(), out);
                out.push_str(close);
                prev = Prev::Other;
            }
        }
    }
}

/// Whether the token `Self` occurs anywhere in `tokens`.
pub(crate) fn mentions_self_type(tokens: TokenStream) -> Option<Span> {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) if i == "Self" => return Some(i.span()),
            TokenTree::Group(g) => {
                if let Some(s) = mentions_self_type(g.stream()) {
                    return Some(s);
                }
            }
            _ => {}
        }
    }
    None
}

/// Rewrites `Self` to the impl's self type, and `Self::Assoc` to
/// `<SelfTy as Trait>::Assoc` (trait impls) or `<SelfTy>::Assoc`, so that
/// bounds can be copied onto an item nested in a method, where `Self` does
/// not exist.
pub(crate) struct ReplaceSelf<'a> {
    pub self_ty: &'a Type,
    pub trait_path: Option<&'a Path>,
}

impl VisitMut for ReplaceSelf<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::Path(tp) = ty {
            let starts_with_self = tp.qself.is_none()
                && tp.path.leading_colon.is_none()
                && tp.path.segments.first().is_some_and(|s| s.ident == "Self");
            if starts_with_self {
                let self_ty = self.self_ty;
                let rest: Vec<_> = tp.path.segments.iter().skip(1).collect();
                *ty = if rest.is_empty() {
                    self_ty.clone()
                } else if let Some(tr) = self.trait_path {
                    syn::parse_quote!(<#self_ty as #tr>::#(#rest)::*)
                } else {
                    syn::parse_quote!(<#self_ty>::#(#rest)::*)
                };
                return;
            }
        }
        visit_mut::visit_type_mut(self, ty);
    }
}

/// Spells the standard library's primitive and prelude types by their
/// short names (`core::primitive::u64` → `u64`, `std::vec::Vec<u8>` →
/// `Vec<u8>`), so that a live patch's signature check compares types, not
/// the way they happened to be written. Only paths that name exactly these
/// items are shortened; any other path is kept whole.
pub(crate) struct CanonicalPaths;

/// `(modules, item names)`: an item of the list reached through one of the
/// module paths (after `std`, `core` or `alloc`, with or without `::`) is
/// the prelude's or the language's own.
const CANONICAL: &[(&[&str], &[&str])] = &[
    (
        &["primitive"],
        &[
            "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
            "f32", "f64", "bool", "char", "str",
        ],
    ),
    (&["string"], &["String"]),
    (&["vec"], &["Vec"]),
    (&["boxed"], &["Box"]),
    (&["option"], &["Option"]),
    (&["result"], &["Result"]),
];

impl VisitMut for CanonicalPaths {
    fn visit_type_path_mut(&mut self, tp: &mut syn::TypePath) {
        visit_mut::visit_type_path_mut(self, tp);
        if tp.qself.is_some() || tp.path.segments.len() != 3 {
            return;
        }
        let seg: Vec<String> = tp
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        let root_ok = matches!(seg[0].as_str(), "std" | "core" | "alloc");
        let prefix_args_empty = tp
            .path
            .segments
            .iter()
            .take(2)
            .all(|s| s.arguments.is_none());
        let known = CANONICAL
            .iter()
            .any(|(m, items)| m.contains(&seg[1].as_str()) && items.contains(&seg[2].as_str()));
        if root_ok && prefix_args_empty && known {
            let last = tp.path.segments.pop().unwrap().into_value();
            tp.path.segments.clear();
            tp.path.leading_colon = None;
            tp.path.segments.push(last);
        }
    }
}

/// Turns every lifetime into `'static`. A non-generic site stub names the
/// body with a concrete path; lifetimes are erased in machine code, so any
/// lifetime names the same body, and `'static` satisfies every outlives bound
/// among lifetimes.
pub(crate) struct EraseLifetimes;

impl VisitMut for EraseLifetimes {
    fn visit_lifetime_mut(&mut self, lt: &mut Lifetime) {
        *lt = Lifetime::new("'static", lt.apostrophe);
    }
    fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
        if r.lifetime.is_none() {
            r.lifetime = Some(Lifetime::new("'static", r.and_token.span));
        }
        visit_mut::visit_type_reference_mut(self, r);
    }
    // Higher-ranked binders declare their own lifetimes: leave them alone.
    fn visit_bound_lifetimes_mut(&mut self, _: &mut syn::BoundLifetimes) {}
    fn visit_type_bare_fn_mut(&mut self, _: &mut syn::TypeBareFn) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn compact_types() {
        assert_eq!(compact(quote!(Foo<'a, T>)), "Foo<'a, T>");
        assert_eq!(compact(quote!(&'a mut [u8; 4])), "&'a mut [u8; 4]");
        assert_eq!(compact(quote!(core::fmt::Display)), "core::fmt::Display");
        assert_eq!(
            compact(quote!(Box<dyn Fn(u32) -> u32 + Send>)),
            "Box<dyn Fn(u32)->u32 + Send>"
        );
    }

    #[test]
    fn std_paths_are_spelled_short() {
        let canon = |t: &str| {
            let mut ty: Type = syn::parse_str(t).unwrap();
            CanonicalPaths.visit_type_mut(&mut ty);
            compact(&ty)
        };
        assert_eq!(canon("core::primitive::u64"), "u64");
        assert_eq!(canon("::std::primitive::str"), "str");
        assert_eq!(
            canon("std::result::Result<alloc::vec::Vec<core::primitive::u8>, String>"),
            "Result<Vec<u8>, String>"
        );
        assert_eq!(canon("&mut std::string::String"), "&mut String");
        // Anything else is kept as written.
        assert_eq!(canon("core::fmt::Display"), "core::fmt::Display");
        assert_eq!(canon("mycrate::primitive::u64"), "mycrate::primitive::u64");
        assert_eq!(
            canon("std::collections::HashMap<u8, u8>"),
            "std::collections::HashMap<u8, u8>"
        );
    }

    #[test]
    fn fnv_is_stable_and_separates_parts() {
        assert_eq!(fnv1a(&["a", "b"]), fnv1a(&["a", "b"]));
        assert_ne!(fnv1a(&["ab", ""]), fnv1a(&["a", "b"]));
    }

    #[test]
    fn self_is_spelled_out() {
        let self_ty: Type = syn::parse_quote!(Foo<T>);
        let tr: Path = syn::parse_quote!(Tr);
        let mut ty: Type = syn::parse_quote!(Vec<Self::Out>);
        ReplaceSelf {
            self_ty: &self_ty,
            trait_path: Some(&tr),
        }
        .visit_type_mut(&mut ty);
        assert_eq!(compact(&ty), "Vec<<Foo<T> as Tr>::Out>");
        let mut ty: Type = syn::parse_quote!(&Self);
        ReplaceSelf {
            self_ty: &self_ty,
            trait_path: None,
        }
        .visit_type_mut(&mut ty);
        assert_eq!(compact(&ty), "&Foo<T>");
        assert!(mentions_self_type(quote!(a::<Self>)).is_some());
        assert!(mentions_self_type(quote!(a::<T>)).is_none());
    }

    #[test]
    fn lifetimes_are_erased() {
        let mut ty: Type = syn::parse_quote!(&Foo<'a, &'_ u8>);
        EraseLifetimes.visit_type_mut(&mut ty);
        assert_eq!(compact(&ty), "&'static Foo<'static, &'static u8>");
    }
}
