//! What a free fn may not use, and the function's parameters as the
//! wrapper, the helper trait and the call to the site stub need them.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Block, FnArg, Signature};

use crate::util::mentions_self_type;

/// Refuses a receiver or `Self` in a function traced on its own. The macro
/// sees it without its `impl`, so it would nest the body in the wrapper,
/// where `Self` does not exist, and record a path without the type; the
/// impl block is where `#[traced]` can do it right.
pub(super) fn refuse_self_in_free_fn(sig: &Signature, block: &Block) -> syn::Result<()> {
    let has_receiver = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
    let self_span = if has_receiver {
        Some(sig.ident.span())
    } else {
        mentions_self_type(quote!(#sig #block))
    };
    match self_span {
        Some(span) => Err(syn::Error::new(
            span,
            "`#[traced]` on a method or an associated fn that uses `Self`: put `#[traced]` on \
             the enclosing `impl` block instead (it instruments every fn in it; opt one out \
             with `#[traced(skip)]`)",
        )),
        None => Ok(()),
    }
}

/// The parameters, three ways. The wrapper keeps the signature but must
/// forward every argument, so patterns (`(a, b): (u32, u32)`, `mut x`, `_`)
/// become plain names, which the body then destructures as the user wrote;
/// `mut self` loses a `mut` it no longer needs. The helper trait declares
/// the body with unnamed parameters, as a declaration may.
pub(super) struct Params {
    /// The wrapper's parameter list.
    pub wrapper_inputs: Vec<TokenStream>,
    /// The helper trait's declaration of the body.
    pub decl_inputs: Vec<TokenStream>,
    /// The wrapper's arguments to the entry (the stub, typed as the body).
    pub call_args: Vec<TokenStream>,
    /// The body's type with every parameter and the return type left to
    /// inference (`unsafe fn(_, _) -> _`): all the wrapper writes to coerce
    /// the body to a function pointer, with no type spelled twice.
    pub fn_ptr: TokenStream,
}

impl Params {
    pub(super) fn of(sig: &Signature) -> Params {
        let mut wrapper_inputs = Vec::new();
        let mut decl_inputs = Vec::new();
        let mut call_args = Vec::new();
        for (i, arg) in sig.inputs.iter().enumerate() {
            match arg {
                FnArg::Receiver(r) => {
                    let mut r = r.clone();
                    if r.reference.is_none() {
                        r.mutability = None;
                    }
                    wrapper_inputs.push(quote!(#r));
                    decl_inputs.push(quote!(#r));
                    call_args.push(quote!(self));
                }
                FnArg::Typed(t) => {
                    let id = format_ident!("__livetrace_arg{}", i);
                    let ty = &t.ty;
                    wrapper_inputs.push(quote!(#id: #ty));
                    decl_inputs.push(quote!(_: #ty));
                    call_args.push(quote!(#id));
                }
            }
        }
        let unsafety = &sig.unsafety;
        let holes = sig.inputs.iter().map(|_| quote!(_));
        let fn_ptr = quote!(#unsafety fn(#(#holes),*) -> _);
        Params {
            wrapper_inputs,
            decl_inputs,
            call_args,
            fn_ptr,
        }
    }
}
