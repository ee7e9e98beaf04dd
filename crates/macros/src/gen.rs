//! Expansion of one traced function, in one of three contexts.
//!
//! Every traced function becomes:
//!
//! - a public `#[inline(always)]` *wrapper* with the original signature,
//!   which calls the *site stub* with the body's exact signature;
//! - the *site stub*: a naked function nested in the wrapper whose machine
//!   code is `nop5; jmp body`. It touches no register and no stack slot, so
//!   a call to it is a call to the body, and the body returns straight to
//!   the wrapper's caller. The NOP is the first instruction the call
//!   executes, with only the caller's return address pushed;
//! - the *body*: the original code in a hidden function (nested in the
//!   wrapper for free functions, a hidden associated function for inherent
//!   methods, a method of a hidden helper trait for trait-impl methods);
//! - a *site record* in section `livetrace_sites` (see `livetrace`): site,
//!   path, file, line and the function's type as a string.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::visit_mut::VisitMut;
use syn::{Block, FnArg, GenericParam, Generics, Ident, Path, Signature, Type, Visibility};

use crate::attrs;
use crate::util::{
    compact, location, mentions_self_type, CanonicalPaths, EraseLifetimes, ReplaceSelf,
};

/// The impl block a method sits in.
pub(crate) struct ImplCtx {
    pub self_ty: Type,
    pub generics: Generics,
    /// `Some` for a trait impl: the trait as written, and the hidden helper
    /// trait that carries the bodies.
    pub trait_: Option<(Path, Ident)>,
}

pub(crate) enum Ctx<'a> {
    Free,
    Method(&'a ImplCtx),
}

/// The pieces a traced function expands to.
pub(crate) struct Expanded {
    /// Replaces the original function.
    pub wrapper: TokenStream,
    /// Methods only: the body function, to go in the same impl (inherent) or
    /// in the helper trait's impl (trait impls).
    pub body: Option<TokenStream>,
    /// Trait-impl methods only: the helper trait's declaration of the body.
    pub decl: Option<TokenStream>,
}

const NOP5: &str = ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00";

/// The record layout, which `livetrace::macro_sites` reads back: five
/// 8-byte words, 8-aligned, so records pack without padding.
fn record_lines(line: u32) -> Vec<String> {
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
fn signature_string(ctx: &Ctx<'_>, sig: &Signature, generic: bool) -> String {
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

fn type_const_args(g: &Generics) -> Vec<TokenStream> {
    g.params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => {
                let i = &t.ident;
                Some(quote!(#i))
            }
            GenericParam::Const(c) => {
                let i = &c.ident;
                Some(quote!(#i))
            }
            GenericParam::Lifetime(_) => None,
        })
        .collect()
}

fn turbofish(args: &[TokenStream]) -> TokenStream {
    if args.is_empty() {
        quote!()
    } else {
        quote!(::<#(#args),*>)
    }
}

/// Generic parameters as declared on a fn (no defaults, which fns refuse).
fn strip_defaults(p: &GenericParam) -> GenericParam {
    let mut p = p.clone();
    match &mut p {
        GenericParam::Type(t) => {
            t.eq_token = None;
            t.default = None;
        }
        GenericParam::Const(c) => {
            c.eq_token = None;
            c.default = None;
        }
        GenericParam::Lifetime(_) => {}
    }
    p
}

pub(crate) fn body_name(fn_name: &Ident) -> Ident {
    format_ident!("__livetrace_body_{}", fn_name)
}

/// Expands one function. `attrs` are the user's attributes, without any
/// `#[traced]`.
pub(crate) fn expand(
    ctx: Ctx<'_>,
    attrs: &[syn::Attribute],
    vis: &Visibility,
    sig: &Signature,
    block: &Block,
) -> syn::Result<Expanded> {
    crate::check::signature(sig)?;
    let split = attrs::split(attrs)?;
    if let Ctx::Free = ctx {
        let has_receiver = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
        let self_span = if has_receiver {
            Some(sig.ident.span())
        } else {
            mentions_self_type(quote!(#sig #block))
        };
        if let Some(span) = self_span {
            return Err(syn::Error::new(
                span,
                "`#[traced]` on a method or an associated fn that uses `Self`: put `#[traced]` on \
                 the enclosing `impl` block instead (it instruments every fn in it; opt one out \
                 with `#[traced(skip)]`)",
            ));
        }
    }

    let name = &sig.ident;
    let unsafety = &sig.unsafety;
    let output = &sig.output;
    let generics = &sig.generics;
    let where_clause = &generics.where_clause;
    let (_file, line, _col) = location(name.span());

    // Wrapper parameters: patterns become plain names so they can be
    // forwarded; `mut self` loses a `mut` it no longer needs.
    let mut w_inputs = Vec::new();
    let mut decl_inputs = Vec::new();
    let mut call_args = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => {
                let mut r = r.clone();
                if r.reference.is_none() {
                    r.mutability = None;
                }
                w_inputs.push(quote!(#r));
                decl_inputs.push(quote!(#r));
                call_args.push(quote!(self));
            }
            FnArg::Typed(t) => {
                let id = format_ident!("__livetrace_arg{}", i);
                let ty = &t.ty;
                w_inputs.push(quote!(#id: #ty));
                decl_inputs.push(quote!(_: #ty));
                call_args.push(quote!(#id));
            }
        }
    }
    let holes = sig.inputs.iter().map(|_| quote!(_));
    let fn_ptr = quote!(#unsafety fn(#(#holes),*) -> _);

    let mg_args = type_const_args(generics);
    let mg_fish = turbofish(&mg_args);

    // Stub generics: what the body's path needs, with `Self` spelled out.
    let (impl_generics, self_ty, trait_) = match &ctx {
        Ctx::Free => (None, None, None),
        Ctx::Method(c) => (Some(&c.generics), Some(&c.self_ty), c.trait_.as_ref()),
    };
    let mut stub_lifetimes = Vec::new();
    let mut stub_others = Vec::new();
    let mut stub_preds = Vec::new();
    let mut stub_args = Vec::new();
    for g in impl_generics.into_iter().chain([generics]) {
        for p in &g.params {
            let p = strip_defaults(p);
            match p {
                GenericParam::Lifetime(_) => stub_lifetimes.push(p),
                _ => stub_others.push(p),
            }
        }
        stub_args.extend(type_const_args(g));
        if let Some(w) = &g.where_clause {
            stub_preds.extend(w.predicates.iter().cloned());
        }
    }
    let generic = !stub_others.is_empty();

    let body_ident = match ctx {
        Ctx::Free => format_ident!("__livetrace_body"),
        Ctx::Method(_) => body_name(name),
    };

    // How the wrapper names the body, and how the stub names it.
    let (wrapper_body_path, mut stub_self_ty, mut stub_helper_args) = match (&ctx, trait_) {
        (Ctx::Free, _) => (quote!(#body_ident #mg_fish), None, None),
        (Ctx::Method(c), None) => (
            quote!(Self::#body_ident #mg_fish),
            Some(c.self_ty.clone()),
            None,
        ),
        (Ctx::Method(c), Some((_, helper))) => {
            let (_, ty_generics, _) = c.generics.split_for_impl();
            let args: Type = syn::parse2(quote!(#helper #ty_generics))?;
            (
                quote!(<Self as #helper #ty_generics>::#body_ident #mg_fish),
                Some(c.self_ty.clone()),
                Some(args),
            )
        }
    };

    let mut stub_generics_ts = quote!();
    let mut stub_where_ts = quote!();
    if generic {
        let mut params: Vec<GenericParam> = stub_lifetimes.into_iter().chain(stub_others).collect();
        if let Some(st) = self_ty {
            let mut rs = ReplaceSelf {
                self_ty: st,
                trait_path: trait_.map(|(p, _)| p),
            };
            for p in &mut params {
                rs.visit_generic_param_mut(p);
            }
            for w in &mut stub_preds {
                rs.visit_where_predicate_mut(w);
            }
        }
        stub_generics_ts = quote!(<#(#params),*>);
        if !stub_preds.is_empty() {
            stub_where_ts = quote!(where #(#stub_preds),*);
        }
        if let Some(span) = mentions_self_type(quote!(#stub_generics_ts #stub_where_ts)) {
            return Err(syn::Error::new(
                span,
                "`#[traced]` cannot copy this use of `Self` in generic bounds onto the site stub; \
                 spell out the type",
            ));
        }
    } else {
        // Only lifetimes (or nothing): one body, named with `'static`.
        if let Some(t) = &mut stub_self_ty {
            EraseLifetimes.visit_type_mut(t);
        }
        if let Some(t) = &mut stub_helper_args {
            EraseLifetimes.visit_type_mut(t);
        }
    }
    let stub_body_path = match (&stub_self_ty, &stub_helper_args) {
        (None, _) => quote!(#body_ident #mg_fish),
        (Some(st), None) => quote!(<#st>::#body_ident #mg_fish),
        (Some(st), Some(h)) => quote!(<#st as #h>::#body_ident #mg_fish),
    };
    let stub_fish = turbofish(&stub_args);

    // The site path, as `crate::module::name`, `crate::module::Type::name`
    // or `crate::module::<Type as Trait>::name`.
    let path_suffix = match (&ctx, trait_) {
        (Ctx::Free, _) => format!("::{name}"),
        (Ctx::Method(c), None) => format!("::{}::{name}", compact(&c.self_ty)),
        (Ctx::Method(c), Some((tr, _))) => {
            format!("::<{} as {}>::{name}", compact(&c.self_ty), compact(tr))
        }
    };

    // The record is emitted with the stub, so it exists exactly when the
    // stub does: once for a plain fn, once per instantiation of a generic
    // one (each is its own machine code, hence its own site).
    let records = record_lines(line);
    let signature = signature_string(&ctx, sig, generic);
    // `C-unwind`, not `C`: the optimiser sees the wrapper's call land on
    // this function and would give the call site the callee's `nounwind`,
    // dropping the caller's landing pads, so a panic in the body would skip
    // the caller's drops and escape `catch_unwind`. The stub itself needs no
    // unwind info: it has no frame, and the body's return address is the
    // caller's.
    // All stubs share one section and each is padded to 16 bytes, so the
    // assembler gives the section 16-byte alignment and every stub starts on
    // a 16-byte boundary: `nop5; jmp` then sits in one fetch block (stable
    // Rust cannot align a function any other way; at rustc's default 4-byte
    // alignment the disabled site cost up to three times as much).
    let stub = quote! {
        #[allow(unsafe_code)]
        #[unsafe(naked)]
        #[unsafe(link_section = ".text.livetrace_stubs")]
        extern "C-unwind" fn __livetrace_site #stub_generics_ts () #stub_where_ts {
            ::livetrace::__private::naked_asm!(
                #NOP5,
                "jmp {body}",
                #(#records,)*
                ".balign 16, 0xcc",
                body = sym #stub_body_path,
                site = sym __livetrace_site #stub_fish,
                path = sym __LIVETRACE_PATH,
                file = sym __LIVETRACE_FILE,
                sig = sym __LIVETRACE_SIG,
            )
        }
    };

    let call = if unsafety.is_some() {
        quote! {
            #[allow(unsafe_code)]
            // SAFETY: this fn is `unsafe` with the body's own contract, which
            // our caller upholds; the entry is the body (see above).
            unsafe { __livetrace_entry(#(#call_args),*) }
        }
    } else {
        quote!(__livetrace_entry(#(#call_args),*))
    };

    let free_body = match ctx {
        Ctx::Free => {
            let inputs = &sig.inputs;
            let body_attrs = &split.body;
            quote! {
                #(#body_attrs)*
                #unsafety fn #body_ident #generics (#inputs) #output #where_clause #block
            }
        }
        Ctx::Method(_) => quote!(),
    };

    let wrapper_attrs = &split.wrapper;
    let wrapper = quote! {
        #(#wrapper_attrs)*
        #[inline(always)]
        #vis #unsafety fn #name #generics (#(#w_inputs),*) #output #where_clause {
            #free_body
            #stub
            static __LIVETRACE_PATH: &str = ::core::concat!(::core::module_path!(), #path_suffix);
            static __LIVETRACE_FILE: &str = ::core::file!();
            static __LIVETRACE_SIG: &str = #signature;
            let __livetrace_body: #fn_ptr = #wrapper_body_path;
            #[allow(unsafe_code)]
            // SAFETY: `__livetrace_site` is `nop5; jmp body` and touches no
            // register, flag or stack slot, so calling it with the body's
            // signature is calling the body; a patched site calls a handler
            // that preserves all of them too.
            let __livetrace_entry = unsafe {
                ::livetrace::__private::retarget(
                    __livetrace_body,
                    __livetrace_site #stub_fish as *const (),
                )
            };
            #call
        }
    };

    let (body, decl) = match &ctx {
        Ctx::Free => (None, None),
        Ctx::Method(c) => {
            let inputs = &sig.inputs;
            let body_attrs = &split.body;
            let body = quote! {
                #[doc(hidden)]
                #(#body_attrs)*
                #unsafety fn #body_ident #generics (#inputs) #output #where_clause #block
            };
            let decl = c.trait_.as_ref().map(|_| {
                let cfg = &split.cfg;
                quote! {
                    #(#cfg)*
                    #unsafety fn #body_ident #generics (#(#decl_inputs),*) #output #where_clause;
                }
            });
            (Some(body), decl)
        }
    };
    Ok(Expanded {
        wrapper,
        body,
        decl,
    })
}

/// A hidden helper trait's name for the trait impl at `span`; unique per
/// impl because it hashes the impl's tokens and position.
pub(crate) fn helper_ident(span: Span, impl_tokens: &str) -> Ident {
    let (file, line, col) = location(span);
    let h = crate::util::fnv1a(&[&file, &line.to_string(), &col.to_string(), impl_tokens]);
    format_ident!("__livetrace_bodies_{:016x}", h)
}

#[cfg(test)]
mod tests {
    use super::*;

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
