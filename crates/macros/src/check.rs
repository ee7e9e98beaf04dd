//! Which function forms can carry a site. Everything refused here is
//! refused with a `compile_error!` naming the reason, never skipped.

use syn::visit::Visit;
use syn::{FnArg, ReturnType, Signature};

struct FindImplTrait(Option<proc_macro2::Span>);

impl<'ast> Visit<'ast> for FindImplTrait {
    fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
        if self.0.is_none() {
            self.0 = Some(t.impl_token.span);
        }
    }
}

fn err(span: proc_macro2::Span, msg: &str) -> syn::Error {
    syn::Error::new(span, msg)
}

/// Checks that `sig` is a form the site stub can forward: a Rust-ABI,
/// non-`const`, non-`async`, non-variadic function whose every parameter
/// and return type is nameable (no `impl Trait`).
pub(crate) fn signature(sig: &Signature) -> syn::Result<()> {
    if let Some(c) = &sig.constness {
        return Err(err(
            c.span,
            "`#[traced]` cannot instrument a `const fn`: it may run at compile time, where there \
             is no site to patch. Drop `const`, or mark it `#[traced(skip)]` inside a traced impl/mod",
        ));
    }
    if let Some(a) = &sig.asyncness {
        return Err(err(
            a.span,
            "`#[traced]` cannot instrument an `async fn`: calling it only builds a future, and the \
             body runs later from `poll`. Trace a plain fn that the async fn calls, or mark it \
             `#[traced(skip)]` inside a traced impl/mod",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "`#[traced]` cannot instrument an `extern` fn: the site stub forwards the Rust ABI only. \
             Trace a Rust fn that it calls, or mark it `#[traced(skip)]` inside a traced impl/mod",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            "`#[traced]` cannot instrument a variadic fn",
        ));
    }
    for arg in &sig.inputs {
        let attrs = match arg {
            FnArg::Receiver(r) => &r.attrs,
            FnArg::Typed(t) => &t.attrs,
        };
        if let Some(a) = attrs.first() {
            return Err(syn::Error::new_spanned(
                a,
                "`#[traced]` does not support attributes on parameters",
            ));
        }
        if let FnArg::Typed(t) = arg {
            let mut f = FindImplTrait(None);
            f.visit_type(&t.ty);
            if let Some(s) = f.0 {
                return Err(err(
                    s,
                    "`#[traced]` does not support `impl Trait` parameters: each would be a hidden \
                     generic parameter that the site stub cannot name. Use a named type parameter",
                ));
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        let mut f = FindImplTrait(None);
        f.visit_type(ty);
        if let Some(s) = f.0 {
            return Err(err(
                s,
                "`#[traced]` does not support a return-position `impl Trait`: the site stub's \
                 signature must name the returned type",
            ));
        }
    }
    Ok(())
}
