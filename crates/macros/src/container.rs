//! `#[traced]` on an `impl` block or an inline `mod`: every function in it
//! is traced unless marked `#[traced(skip)]`; anything that may hide a
//! function the macro cannot see must be marked `#[traced(skip)]` too.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::{Ident, ImplItem, Item, ItemImpl, ItemMod, Path};

use crate::attrs::{self, Mode};
use crate::gen::{self, Ctx, ImplCtx};

fn combine(errs: &mut Option<syn::Error>, e: syn::Error) {
    match errs {
        Some(prev) => prev.combine(e),
        None => *errs = Some(e),
    }
}

/// Expands a traced impl block into the rewritten impl plus, for a trait
/// impl, the helper trait and its impl that hold the bodies.
pub(crate) fn expand_impl(mut imp: ItemImpl) -> syn::Result<TokenStream> {
    let ctx = impl_ctx(&imp)?;
    let out = expand_items(&ctx, std::mem::take(&mut imp.items))?;
    match &ctx.trait_ {
        None => Ok(emit_impl(&imp, &out.items, &out.bodies)),
        Some(_) if out.bodies.is_empty() => Ok(emit_impl(&imp, &out.items, &[])),
        Some((path, helper)) => {
            let main = emit_impl(&imp, &out.items, &[]);
            let helper = emit_helper(&imp, path, helper, &out.decls, &out.bodies);
            Ok(quote! {
                #main
                #helper
            })
        }
    }
}

/// What the methods see of their impl. Refuses `default impl`
/// (specialisation, which the expansion does not handle) and negative
/// impls (nothing to trace). A trait impl gets its helper trait's name
/// here, hashed from the impl's tokens before any item is rewritten.
fn impl_ctx(imp: &ItemImpl) -> syn::Result<ImplCtx> {
    if let Some(d) = &imp.defaultness {
        return Err(syn::Error::new_spanned(
            d,
            "`#[traced]` does not support `default impl` (specialization)",
        ));
    }
    let impl_tokens = imp.to_token_stream().to_string();
    let trait_ = match &imp.trait_ {
        Some((Some(bang), _, _)) => {
            return Err(syn::Error::new_spanned(
                bang,
                "`#[traced]` on a negative impl: there is nothing to trace",
            ))
        }
        Some((None, path, _)) => Some((
            path.clone(),
            gen::helper_ident(imp.impl_token.span, &impl_tokens),
        )),
        None => None,
    };
    Ok(ImplCtx {
        self_ty: (*imp.self_ty).clone(),
        generics: imp.generics.clone(),
        trait_,
    })
}

/// A traced impl's items, rewritten.
#[derive(Default)]
struct ImplItems {
    /// What stays in the impl: wrappers, skipped and untouched items.
    items: Vec<TokenStream>,
    /// The methods' bodies.
    bodies: Vec<TokenStream>,
    /// Trait impls: the helper trait's declarations of the bodies.
    decls: Vec<TokenStream>,
}

/// Rewrites every item, reporting the errors of all of them at once, so
/// that one build shows every form to fix.
fn expand_items(ctx: &ImplCtx, items: Vec<ImplItem>) -> syn::Result<ImplItems> {
    let mut errs = None;
    let mut out = ImplItems::default();
    for item in items {
        if let Err(e) = expand_item_of_impl(ctx, item, &mut out) {
            combine(&mut errs, e);
        }
    }
    match errs {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// One item of a traced impl: a fn is traced unless `#[traced(skip)]`; a
/// macro invocation must be skipped (the macro cannot see the fns it
/// makes); anything else (consts, types) stays as it is.
fn expand_item_of_impl(ctx: &ImplCtx, item: ImplItem, out: &mut ImplItems) -> syn::Result<()> {
    match item {
        ImplItem::Fn(mut f) => {
            if attrs::take_mode(&mut f.attrs)? == Mode::Skip {
                out.items.push(f.to_token_stream());
                return Ok(());
            }
            if let Some(d) = &f.defaultness {
                return Err(syn::Error::new_spanned(
                    d,
                    "`#[traced]` does not support `default fn`",
                ));
            }
            let x = gen::expand(Ctx::Method(ctx), &f.attrs, &f.vis, &f.sig, &f.block)?;
            out.items.push(x.wrapper);
            out.bodies.extend(x.body);
            out.decls.extend(x.decl);
        }
        ImplItem::Macro(mut m) => match attrs::take_mode(&mut m.attrs)? {
            Mode::Skip => out.items.push(m.to_token_stream()),
            Mode::Trace => {
                return Err(syn::Error::new_spanned(
                    &m.mac.path,
                    "`#[traced]` cannot see the functions a macro invocation expands to: \
                     mark it `#[traced(skip)]` (and put `#[traced]` on an impl inside the \
                     macro if its functions should be traced)",
                ))
            }
        },
        other => out.items.push(other.to_token_stream()),
    }
    Ok(())
}

/// The impl block as written, with `items` (and, for an inherent impl, the
/// `bodies` as hidden associated fns) in place of its original items.
fn emit_impl(imp: &ItemImpl, items: &[TokenStream], bodies: &[TokenStream]) -> TokenStream {
    let attrs = &imp.attrs;
    let unsafety = &imp.unsafety;
    let (impl_generics, _, where_clause) = imp.generics.split_for_impl();
    let self_ty = &imp.self_ty;
    let head = match &imp.trait_ {
        Some((_, path, for_)) => quote!(#path #for_ #self_ty),
        None => quote!(#self_ty),
    };
    quote! {
        #(#attrs)*
        #unsafety impl #impl_generics #head #where_clause {
            #(#items)*
            #(#bodies)*
        }
    }
}

/// The helper trait that holds a trait impl's bodies, and its impl. The
/// bodies of trait-impl methods cannot be extra items of the trait impl; a
/// helper trait with the implemented trait as supertrait keeps `Self`,
/// `self` and `Self::Assoc` meaning what they meant in the original impl.
fn emit_helper(
    imp: &ItemImpl,
    path: &Path,
    helper: &Ident,
    decls: &[TokenStream],
    bodies: &[TokenStream],
) -> TokenStream {
    let (impl_generics, ty_generics, where_clause) = imp.generics.split_for_impl();
    let self_ty = &imp.self_ty;
    // The helper exists exactly when the impl does.
    let cfg: Vec<_> = imp
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"))
        .collect();
    quote! {
        #(#cfg)*
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        trait #helper #impl_generics : #path #where_clause {
            #(#decls)*
        }
        #(#cfg)*
        impl #impl_generics #helper #ty_generics for #self_ty #where_clause {
            #(#bodies)*
        }
    }
}

/// Expands a traced inline module, recursively.
pub(crate) fn expand_mod(mut m: ItemMod) -> syn::Result<TokenStream> {
    let Some((brace, items)) = m.content.take() else {
        return Err(syn::Error::new_spanned(
            &m,
            "`#[traced]` cannot see into an out-of-line `mod name;`: put `#[traced]` on the items \
             inside its file",
        ));
    };
    let _ = brace;
    let mut errs = None;
    let mut out = Vec::new();
    for item in items {
        match expand_item(item) {
            Ok(ts) => out.push(ts),
            Err(e) => combine(&mut errs, e),
        }
    }
    if let Some(e) = errs {
        return Err(e);
    }
    let attrs = &m.attrs;
    let vis = &m.vis;
    let unsafety = &m.unsafety;
    let ident = &m.ident;
    Ok(quote! {
        #(#attrs)*
        #vis #unsafety mod #ident {
            #(#out)*
        }
    })
}

fn skip_error(tokens: impl ToTokens, what: &str) -> syn::Error {
    syn::Error::new_spanned(
        tokens,
        format!(
            "`#[traced]` cannot instrument {what}; mark it `#[traced(skip)]` to leave it as is"
        ),
    )
}

/// One item of a traced module.
fn expand_item(mut item: Item) -> syn::Result<TokenStream> {
    let Some(attrs) = item_attrs(&mut item) else {
        return Ok(item.to_token_stream());
    };
    if attrs::take_mode(attrs)? == Mode::Skip {
        return Ok(item.to_token_stream());
    }
    match item {
        Item::Fn(f) => {
            let x = gen::expand(Ctx::Free, &f.attrs, &f.vis, &f.sig, &f.block)?;
            Ok(x.wrapper)
        }
        Item::Impl(i) => expand_impl(i),
        Item::Mod(m) => expand_mod(m),
        Item::Trait(t) => {
            let has_default_body = t
                .items
                .iter()
                .any(|i| matches!(i, syn::TraitItem::Fn(f) if f.default.is_some()));
            if has_default_body {
                Err(skip_error(
                    &t.ident,
                    "a trait's default method bodies (they are generic over `Self`)",
                ))
            } else {
                Ok(t.to_token_stream())
            }
        }
        Item::Macro(m) if m.mac.path.is_ident("macro_rules") => Ok(m.to_token_stream()),
        Item::Macro(m) => Err(skip_error(
            &m.mac.path,
            "the functions a macro invocation expands to (it cannot see them)",
        )),
        other => Ok(other.to_token_stream()),
    }
}

/// The attributes of the item kinds a traced module looks at.
fn item_attrs(item: &mut Item) -> Option<&mut Vec<syn::Attribute>> {
    match item {
        Item::Fn(i) => Some(&mut i.attrs),
        Item::Impl(i) => Some(&mut i.attrs),
        Item::Mod(i) => Some(&mut i.attrs),
        Item::Trait(i) => Some(&mut i.attrs),
        Item::Macro(i) => Some(&mut i.attrs),
        _ => None,
    }
}
