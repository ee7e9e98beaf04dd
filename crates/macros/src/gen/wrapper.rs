//! The wrapper: the user-visible function, `#[inline(always)]` with the
//! original signature, which calls the site stub as if it were the body.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Signature, Visibility};

use super::params::Params;
use super::record::Record;
use super::stub::Plan;

/// What goes in the wrapper besides its own signature.
pub(super) struct Inside<'a> {
    /// The body itself for a free fn (a nested item, private to the
    /// wrapper); `None` for a method, whose body sits in an impl.
    pub free_body: Option<TokenStream>,
    /// The site stub (see `stub::emit`).
    pub stub: TokenStream,
    pub record: &'a Record,
    pub params: &'a Params,
    pub plan: &'a Plan,
}

/// The wrapper, with the user's attributes that belong on it (`attrs`).
/// Inlined into every caller, it leaves a single `call` of the stub; its
/// out-of-line copy (reached through pointers and vtables) is a `jmp` to
/// the stub, so every call passes the site.
pub(super) fn emit(
    attrs: &[TokenStream],
    vis: &Visibility,
    sig: &Signature,
    inside: Inside<'_>,
) -> TokenStream {
    let Signature {
        unsafety,
        ident: name,
        generics,
        output,
        ..
    } = sig;
    let where_clause = &generics.where_clause;
    let Inside {
        free_body,
        stub,
        record,
        params,
        plan,
    } = inside;
    let inputs = &params.wrapper_inputs;
    let statics = record.statics();
    let fn_ptr = &params.fn_ptr;
    let wrapper_body_path = &plan.wrapper_body_path;
    let stub_fish = &plan.stub_fish;
    let call = emit_call(sig, params);
    quote! {
        #(#attrs)*
        #[inline(always)]
        #vis #unsafety fn #name #generics (#(#inputs),*) #output #where_clause {
            #free_body
            #stub
            #statics
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
    }
}

/// The wrapper's tail call of the entry: the stub, typed as the body, so
/// that an `unsafe fn` needs an `unsafe` block around it, whose contract is
/// the one the wrapper's own caller accepted.
fn emit_call(sig: &Signature, params: &Params) -> TokenStream {
    let call_args = &params.call_args;
    if sig.unsafety.is_some() {
        quote! {
            #[allow(unsafe_code)]
            // SAFETY: this fn is `unsafe` with the body's own contract, which
            // our caller upholds; the entry is the body (see above).
            unsafe { __livetrace_entry(#(#call_args),*) }
        }
    } else {
        quote!(__livetrace_entry(#(#call_args),*))
    }
}
