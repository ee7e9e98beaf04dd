//! Attributes: the macro's own (`#[traced]`, `#[traced(skip)]`) and the
//! user's attributes on a traced function, which must be split between the
//! public wrapper and the body.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, Meta};

/// What a `#[traced]` attribute asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Trace,
    Skip,
}

/// Parses the attribute's arguments: nothing, or `skip`.
pub(crate) fn parse_args(args: TokenStream) -> syn::Result<Mode> {
    if args.is_empty() {
        return Ok(Mode::Trace);
    }
    let id: syn::Ident = syn::parse2(args.clone())
        .map_err(|_| syn::Error::new_spanned(&args, "expected `#[traced]` or `#[traced(skip)]`"))?;
    if id == "skip" {
        Ok(Mode::Skip)
    } else {
        Err(syn::Error::new_spanned(
            id,
            "unknown argument: expected `#[traced]` or `#[traced(skip)]`",
        ))
    }
}

/// Whether `attr` is this macro (`traced`, `livetrace::traced`,
/// `::livetrace::traced`). A renamed import is not recognised; it then
/// reaches the macro a second time and is refused there, so never silently.
fn is_traced(attr: &Attribute) -> bool {
    let p = attr.path();
    let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
    match segs.as_slice() {
        [one] => one == "traced" && p.leading_colon.is_none(),
        [krate, name] => krate == "livetrace" && name == "traced",
        _ => false,
    }
}

/// Removes any `#[traced]` / `#[traced(skip)]` from `attrs` and returns the
/// mode they ask for (`Trace` when there is none: inside a traced container
/// everything is traced by default).
pub(crate) fn take_mode(attrs: &mut Vec<Attribute>) -> syn::Result<Mode> {
    let mut mode = Mode::Trace;
    let mut err: Option<syn::Error> = None;
    attrs.retain(|a| {
        if !is_traced(a) {
            return true;
        }
        let args = match &a.meta {
            Meta::Path(_) => Ok(TokenStream::new()),
            Meta::List(l) => Ok(l.tokens.clone()),
            Meta::NameValue(nv) => Err(syn::Error::new_spanned(
                nv,
                "expected `#[traced]` or `#[traced(skip)]`",
            )),
        };
        match args.and_then(parse_args) {
            Ok(Mode::Skip) => mode = Mode::Skip,
            Ok(Mode::Trace) => {}
            Err(e) => match &mut err {
                Some(prev) => prev.combine(e),
                None => err = Some(e),
            },
        }
        false
    });
    match err {
        Some(e) => Err(e),
        None => Ok(mode),
    }
}

/// A traced function's attributes, sorted by where they belong.
#[derive(Default)]
pub(crate) struct Split {
    /// On the public wrapper (docs, `must_use`, `deprecated`, lints, cfg,
    /// attributes of other macros).
    pub wrapper: Vec<TokenStream>,
    /// On the body (lints as written, cfg, `cold`).
    pub body: Vec<TokenStream>,
    /// `cfg`/`cfg_attr` alone, for declarations that must exist exactly
    /// when the function does.
    pub cfg: Vec<TokenStream>,
}

/// Attribute names that would defeat the site: the wrapper must be
/// `#[inline(always)]` and the exported, callable entry must be the stub.
const REFUSED: &[(&str, &str)] = &[
    ("inline", "the wrapper of a traced fn is always `#[inline(always)]`; the site stub is what stays out of line"),
    ("no_mangle", "a traced fn's callable entry is its site stub, so exporting the Rust wrapper under a fixed symbol would bypass the site"),
    ("export_name", "a traced fn's callable entry is its site stub, so exporting the Rust wrapper under a fixed symbol would bypass the site"),
    ("link_section", "the site stub and body are placed by livetrace"),
    ("track_caller", "`#[track_caller]` adds a hidden argument that the site stub cannot forward"),
    ("target_feature", "`#[target_feature]` functions cannot be `#[inline(always)]`, which the wrapper must be"),
    ("naked", "a naked function has no body to trace"),
    ("used", "`#[used]` does not apply to functions"),
];

fn meta_name(meta: &Meta) -> Option<String> {
    meta.path().get_ident().map(|i| i.to_string())
}

/// Sorts a traced function's attributes, refusing those that cannot work.
pub(crate) fn split(attrs: &[Attribute]) -> syn::Result<Split> {
    let mut out = Split::default();
    for attr in attrs {
        // `#[unsafe(no_mangle)]` and friends: judge the inner attribute.
        let mut name = meta_name(&attr.meta);
        if name.as_deref() == Some("unsafe") {
            if let Meta::List(l) = &attr.meta {
                if let Ok(inner) = l.parse_args::<Meta>() {
                    name = meta_name(&inner);
                }
            }
        }
        let name = name.unwrap_or_default();
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
            return Err(syn::Error::new_spanned(
                attr,
                format!("`#[traced]` cannot keep `#[{name}]`: {why}"),
            ));
        }
        match name.as_str() {
            "cfg" | "cfg_attr" => {
                out.wrapper.push(quote!(#attr));
                out.body.push(quote!(#attr));
                out.cfg.push(quote!(#attr));
            }
            "allow" | "warn" | "deny" | "forbid" => {
                out.wrapper.push(quote!(#attr));
                out.body.push(quote!(#attr));
            }
            "expect" => {
                // The body is the user's code and fulfils the expectation;
                // the wrapper only needs the lint quiet.
                out.body.push(quote!(#attr));
                if let Meta::List(l) = &attr.meta {
                    let t = &l.tokens;
                    out.wrapper.push(quote!(#[allow(#t)]));
                }
            }
            "cold" => {
                out.wrapper.push(quote!(#attr));
                out.body.push(quote!(#attr));
            }
            _ => out.wrapper.push(quote!(#attr)),
        }
    }
    Ok(out)
}
