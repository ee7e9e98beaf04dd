//! The site stub: a naked function nested in the wrapper whose machine code
//! is `nop5; jmp body`, and the plan of how it and the wrapper name the
//! body.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::visit_mut::VisitMut;
use syn::{GenericParam, Generics, Ident, Signature, Type, WherePredicate};

use super::record::Record;
use super::{body_name, Ctx};
use crate::util::{mentions_self_type, EraseLifetimes, ReplaceSelf};

const NOP5: &str = ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00";

/// How the stub is declared and how it and the wrapper name the body. The
/// stub is an item nested in the wrapper, so it cannot name `Self` or use
/// the impl's and the function's generic parameters: it declares copies of
/// them, and names the body through the self type spelled out.
pub(super) struct Plan {
    /// The body's name: nested in the wrapper for a free fn, an associated
    /// fn of the type or of the helper trait for a method.
    pub body_ident: Ident,
    /// Whether the stub has type or const parameters, so that it is
    /// instantiated once per instantiation of the function.
    pub generic: bool,
    /// The stub's `<…>`: empty unless `generic`.
    pub generics: TokenStream,
    /// The stub's `where …`: empty unless `generic` and there are bounds.
    pub where_clause: TokenStream,
    /// The body as the stub's `jmp` names it.
    pub stub_body_path: TokenStream,
    /// The body as the wrapper names it (where `Self` exists).
    pub wrapper_body_path: TokenStream,
    /// The turbofish that names the stub's instantiation for this
    /// instantiation of the wrapper.
    pub stub_fish: TokenStream,
}

impl Plan {
    pub(super) fn new(ctx: &Ctx<'_>, sig: &Signature) -> syn::Result<Plan> {
        let fn_fish = turbofish(&type_const_args(&sig.generics));
        let impl_generics = match ctx {
            Ctx::Free => None,
            Ctx::Method(c) => Some(&c.generics),
        };
        let copied = CopiedGenerics::of(impl_generics.into_iter().chain([&sig.generics]));
        let generic = !copied.others.is_empty();
        let stub_fish = turbofish(&copied.args);
        let body_ident = match ctx {
            Ctx::Free => format_ident!("__livetrace_body"),
            Ctx::Method(_) => body_name(&sig.ident),
        };
        let mut paths = BodyPaths::new(ctx, &body_ident, &fn_fish)?;
        let (generics, where_clause) = if generic {
            copied.spell(ctx)?
        } else {
            // Only lifetimes (or nothing): one body, named with `'static`.
            paths.erase_lifetimes();
            (quote!(), quote!())
        };
        Ok(Plan {
            stub_body_path: paths.stub_path(&body_ident, &fn_fish),
            wrapper_body_path: paths.wrapper,
            body_ident,
            generic,
            generics,
            where_clause,
            stub_fish,
        })
    }
}

/// Stub generics: what the body's path needs, the impl's parameters then
/// the function's, lifetimes first as Rust requires.
struct CopiedGenerics {
    lifetimes: Vec<GenericParam>,
    /// Type and const parameters.
    others: Vec<GenericParam>,
    preds: Vec<WherePredicate>,
    /// The type and const parameters as arguments, for the turbofish.
    args: Vec<TokenStream>,
}

impl CopiedGenerics {
    fn of<'g>(all: impl IntoIterator<Item = &'g Generics>) -> CopiedGenerics {
        let mut out = CopiedGenerics {
            lifetimes: Vec::new(),
            others: Vec::new(),
            preds: Vec::new(),
            args: Vec::new(),
        };
        for g in all {
            for p in &g.params {
                let p = strip_defaults(p);
                match p {
                    GenericParam::Lifetime(_) => out.lifetimes.push(p),
                    _ => out.others.push(p),
                }
            }
            out.args.extend(type_const_args(g));
            if let Some(w) = &g.where_clause {
                out.preds.extend(w.predicates.iter().cloned());
            }
        }
        out
    }

    /// The stub's `<…>` and `where …`, with `Self` spelled out (it does not
    /// exist in a nested item). A `Self` that cannot be spelled out is
    /// refused here rather than left to a confusing error in the stub.
    fn spell(self, ctx: &Ctx<'_>) -> syn::Result<(TokenStream, TokenStream)> {
        let mut params: Vec<GenericParam> = self.lifetimes.into_iter().chain(self.others).collect();
        let mut preds = self.preds;
        if let Ctx::Method(c) = ctx {
            let mut rs = ReplaceSelf {
                self_ty: &c.self_ty,
                trait_path: c.trait_.as_ref().map(|(p, _)| p),
            };
            for p in &mut params {
                rs.visit_generic_param_mut(p);
            }
            for w in &mut preds {
                rs.visit_where_predicate_mut(w);
            }
        }
        let generics = quote!(<#(#params),*>);
        let mut where_clause = quote!();
        if !preds.is_empty() {
            where_clause = quote!(where #(#preds),*);
        }
        if let Some(span) = mentions_self_type(quote!(#generics #where_clause)) {
            return Err(syn::Error::new(
                span,
                "`#[traced]` cannot copy this use of `Self` in generic bounds onto the site stub; \
                 spell out the type",
            ));
        }
        Ok((generics, where_clause))
    }
}

/// How the wrapper names the body, and how the stub names it: the wrapper
/// may say `Self`; the stub needs the self type (and, for a trait impl, the
/// helper trait with its arguments) spelled out.
struct BodyPaths {
    wrapper: TokenStream,
    self_ty: Option<Type>,
    helper: Option<Type>,
}

impl BodyPaths {
    fn new(ctx: &Ctx<'_>, body_ident: &Ident, fn_fish: &TokenStream) -> syn::Result<BodyPaths> {
        Ok(match ctx {
            Ctx::Free => BodyPaths {
                wrapper: quote!(#body_ident #fn_fish),
                self_ty: None,
                helper: None,
            },
            Ctx::Method(c) => match &c.trait_ {
                None => BodyPaths {
                    wrapper: quote!(Self::#body_ident #fn_fish),
                    self_ty: Some(c.self_ty.clone()),
                    helper: None,
                },
                Some((_, helper)) => {
                    let (_, ty_generics, _) = c.generics.split_for_impl();
                    let args: Type = syn::parse2(quote!(#helper #ty_generics))?;
                    BodyPaths {
                        wrapper: quote!(<Self as #helper #ty_generics>::#body_ident #fn_fish),
                        self_ty: Some(c.self_ty.clone()),
                        helper: Some(args),
                    }
                }
            },
        })
    }

    /// A stub without generic parameters cannot name the impl's lifetimes;
    /// lifetimes do not change machine code, so `'static` names the same
    /// body.
    fn erase_lifetimes(&mut self) {
        if let Some(t) = &mut self.self_ty {
            EraseLifetimes.visit_type_mut(t);
        }
        if let Some(t) = &mut self.helper {
            EraseLifetimes.visit_type_mut(t);
        }
    }

    fn stub_path(&self, body_ident: &Ident, fn_fish: &TokenStream) -> TokenStream {
        match (&self.self_ty, &self.helper) {
            (None, _) => quote!(#body_ident #fn_fish),
            (Some(st), None) => quote!(<#st>::#body_ident #fn_fish),
            (Some(st), Some(h)) => quote!(<#st as #h>::#body_ident #fn_fish),
        }
    }
}

/// The stub, with the site's record beside it.
pub(super) fn emit(plan: &Plan, record: &Record) -> TokenStream {
    let Plan {
        generics,
        where_clause,
        stub_body_path,
        stub_fish,
        ..
    } = plan;
    // The record is emitted with the stub, so it exists exactly when the
    // stub does: once for a plain fn, once per instantiation of a generic
    // one (each is its own machine code, hence its own site).
    let records = record.lines();
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
    quote! {
        #[allow(unsafe_code)]
        #[unsafe(naked)]
        #[unsafe(link_section = ".text.livetrace_stubs")]
        extern "C-unwind" fn __livetrace_site #generics () #where_clause {
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
    }
}

/// The type and const parameters of `g` as arguments (lifetimes are never
/// needed to name a fn item and may be late-bound, so they are left out).
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
