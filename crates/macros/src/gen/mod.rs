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
//!
//! [`expand`] is the sequence; each step is in the module of what it
//! builds: `params` (refusing `Self` in a free fn, and the parameters as
//! the wrapper forwards them), `stub` (how the stub is declared and names
//! the body, and the stub itself), `record`, `wrapper` and `body`.

mod body;
mod params;
mod record;
mod stub;
mod wrapper;

use proc_macro2::{Span, TokenStream};
use quote::format_ident;
use syn::{Block, Generics, Ident, Path, Signature, Type, Visibility};

use crate::attrs;
use crate::util::location;

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
        params::refuse_self_in_free_fn(sig, block)?;
    }
    let params = params::Params::of(sig);
    let plan = stub::Plan::new(&ctx, sig)?;
    let record = record::Record::of(&ctx, sig, plan.generic);
    let stub = stub::emit(&plan, &record);

    // A free fn's body is nested in its wrapper; a method's goes in an impl
    // (the type's own, or the helper trait's for a trait impl).
    let body = body::emit(
        sig,
        block,
        &plan.body_ident,
        &split.body,
        matches!(ctx, Ctx::Method(_)),
    );
    let (free_body, body, decl) = match &ctx {
        Ctx::Free => (Some(body), None, None),
        Ctx::Method(c) => {
            let decl = c
                .trait_
                .as_ref()
                .map(|_| body::emit_decl(sig, &plan.body_ident, &split.cfg, &params.decl_inputs));
            (None, Some(body), decl)
        }
    };

    let inside = wrapper::Inside {
        free_body,
        stub,
        record: &record,
        params: &params,
        plan: &plan,
    };
    Ok(Expanded {
        wrapper: wrapper::emit(&split.wrapper, vis, sig, inside),
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
