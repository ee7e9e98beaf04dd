//! The site record: what `livetrace::macro_sites` reads back about a site
//! (its address, path, file, line and type), and the statics the record
//! points at.

use proc_macro2::TokenStream;
use quote::quote;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Signature, Type};

use super::Ctx;
use crate::util::{compact, location, CanonicalPaths, ReplaceSelf};

/// What one function's record says beyond the stub's own address.
pub(super) struct Record {
    /// Line of the function's name.
    pub line: u32,
    /// Appended to `module_path!()` to make the site's path.
    pub path_suffix: String,
    /// See [`signature_string`].
    pub signature: String,
}

impl Record {
    /// `generic`: whether the stub has type or const parameters, so that
    /// one record is written per instantiation and no one type stands for
    /// them all.
    pub(super) fn of(ctx: &Ctx<'_>, sig: &Signature, generic: bool) -> Record {
        let (_file, line, _col) = location(sig.ident.span());
        Record {
            line,
            path_suffix: path_suffix(ctx, sig),
            signature: signature_string(ctx, sig, generic),
        }
    }

    /// The record layout, which `livetrace::macro_sites` reads back: five
    /// 8-byte words, 8-aligned, so records pack without padding.
    pub(super) fn lines(&self) -> Vec<String> {
        let line = self.line;
        vec![
            ".pushsection livetrace_sites,\"awR\",@progbits".into(),
            ".balign 8".into(),
            ".quad {site}".into(),
            ".quad {path}".into(),
            ".quad {file}".into(),
            format!(".quad {line}"),
            ".quad {sig}".into(),
            ".popsection".into(),
        ]
    }

    /// The strings the record points at, declared in the wrapper next to
    /// the stub, whose `asm!` names them as `path`, `file` and `sig`:
    /// statics, because a `sym` operand names only functions and statics,
    /// and the record needs one address for each.
    pub(super) fn statics(&self) -> TokenStream {
        let path_suffix = &self.path_suffix;
        let signature = &self.signature;
        quote! {
            static __LIVETRACE_PATH: &str = ::core::concat!(::core::module_path!(), #path_suffix);
            static __LIVETRACE_FILE: &str = ::core::file!();
            static __LIVETRACE_SIG: &str = #signature;
        }
    }
}

/// The site path after `module_path!()`, making `crate::module::name`,
/// `crate::module::Type::name` or `crate::module::<Type as Trait>::name`:
/// the type and trait as written in the impl header, since a macro cannot
/// resolve them.
fn path_suffix(ctx: &Ctx<'_>, sig: &Signature) -> String {
    let name = &sig.ident;
    match ctx {
        Ctx::Free => format!("::{name}"),
        Ctx::Method(c) => match &c.trait_ {
            None => format!("::{}::{name}", compact(&c.self_ty)),
            Some((tr, _)) => format!("::<{} as {}>::{name}", compact(&c.self_ty), compact(tr)),
        },
    }
}

/// The function's type as a string, `fn(&Foo, u64) -> u64`, which the
/// control socket compares before it lets one function be live-patched
/// onto another. Written tokens, compacted, with `Self` spelled out; `()`
/// returns are omitted, as in Rust. Empty (unknown, so never patchable)
/// for generic functions: one string would have to stand for every
/// instantiation, which need not share a type.
///
/// The comparison is of these strings: the standard library's primitive and
/// prelude types are spelled short first (`core::primitive::u64` and `u64`
/// match, as do `std::vec::Vec<u8>` and `Vec<u8>`); any other path must be
/// written the same way in both places, and is trusted to name the same
/// type there (a macro cannot resolve paths).
pub(super) fn signature_string(ctx: &Ctx<'_>, sig: &Signature, generic: bool) -> String {
    if generic {
        return String::new();
    }
    let mut self_ctx = None;
    if let Ctx::Method(c) = ctx {
        self_ctx = Some(ReplaceSelf {
            self_ty: &c.self_ty,
            trait_path: c.trait_.as_ref().map(|(p, _)| p),
        });
    }
    let mut spell = |ty: &Type| -> String {
        let mut ty = ty.clone();
        if let Some(rs) = self_ctx.as_mut() {
            rs.visit_type_mut(&mut ty);
        }
        CanonicalPaths.visit_type_mut(&mut ty);
        compact(&ty)
    };
    let args: Vec<String> = sig
        .inputs
        .iter()
        .map(|a| match a {
            FnArg::Receiver(r) => spell(&r.ty),
            FnArg::Typed(t) => spell(&t.ty),
        })
        .collect();
    let ret = match &sig.output {
        syn::ReturnType::Default => String::new(),
        syn::ReturnType::Type(_, ty) => format!(" -> {}", spell(ty)),
    };
    let unsafety = if sig.unsafety.is_some() {
        "unsafe "
    } else {
        ""
    };
    format!("{unsafety}fn({}){ret}", args.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::ImplCtx;
    use super::*;
    use syn::Generics;

    fn sig_of(ctx: Ctx<'_>, f: &str, generic: bool) -> String {
        let f: syn::ItemFn = syn::parse_str(f).unwrap();
        signature_string(&ctx, &f.sig, generic)
    }

    #[test]
    fn signatures_spell_types_and_self() {
        assert_eq!(
            sig_of(Ctx::Free, "fn f(a: u64, b: &str) -> u64 {}", false),
            "fn(u64, &str) -> u64"
        );
        assert_eq!(
            sig_of(Ctx::Free, "unsafe fn f(p: *const u8) {}", false),
            "unsafe fn(*const u8)"
        );
        assert_eq!(sig_of(Ctx::Free, "fn f<T>(t: T) -> T {}", true), "");
        assert_eq!(
            sig_of(
                Ctx::Free,
                "fn f(a: core::primitive::u64, v: std::vec::Vec<u8>) -> ::std::primitive::u64 {}",
                false
            ),
            "fn(u64, Vec<u8>) -> u64"
        );
        let c = ImplCtx {
            self_ty: syn::parse_str("Counter").unwrap(),
            generics: Generics::default(),
            trait_: None,
        };
        assert_eq!(
            sig_of(
                Ctx::Method(&c),
                "fn get(&mut self, n: u32) -> Self {}",
                false
            ),
            "fn(&mut Counter, u32) -> Counter"
        );
    }
}
