//! The body: the user's code, unchanged, in a function of its own, and the
//! helper trait's declaration of it for trait-impl methods.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Block, Ident, Signature};

/// The body function: the original signature and block under `body_ident`,
/// so parameter patterns, `mut` bindings and `Self` keep their meaning. A
/// method's body is an item of an impl, so it is `hidden` from docs; a free
/// fn's is nested in the wrapper and cannot show anyway.
pub(super) fn emit(
    sig: &Signature,
    block: &Block,
    body_ident: &Ident,
    attrs: &[TokenStream],
    hidden: bool,
) -> TokenStream {
    let Signature {
        unsafety,
        generics,
        inputs,
        output,
        ..
    } = sig;
    let where_clause = &generics.where_clause;
    let doc_hidden = hidden.then(|| quote!(#[doc(hidden)]));
    quote! {
        #doc_hidden
        #(#attrs)*
        #unsafety fn #body_ident #generics (#inputs) #output #where_clause #block
    }
}

/// The helper trait's declaration of a trait-impl method's body: the
/// bodies cannot be extra items of the trait impl itself, so they are
/// methods of a hidden trait. It carries only the function's `cfg`s (`cfg`
/// attrs), so that it exists exactly when the body does, and unnamed
/// parameters (`decl_inputs`), as declarations allow.
pub(super) fn emit_decl(
    sig: &Signature,
    body_ident: &Ident,
    cfg: &[TokenStream],
    decl_inputs: &[TokenStream],
) -> TokenStream {
    let Signature {
        unsafety,
        generics,
        output,
        ..
    } = sig;
    let where_clause = &generics.where_clause;
    quote! {
        #(#cfg)*
        #unsafety fn #body_ident #generics (#(#decl_inputs),*) #output #where_clause;
    }
}
