//! The `#[traced]` attribute: a patchable 5-byte NOP at the true entry of a
//! Rust function, on stable Rust. Use it through the `livetrace` crate
//! (`livetrace::traced`); the generated code names runtime items only as
//! `::livetrace::__private::…`.
//!
//! # What a traced function becomes
//!
//! ```text
//! caller:  call __livetrace_site      ; the wrapper was inlined here
//! __livetrace_site:                   ; naked, 16-byte aligned
//!          nop5                       ; <- the site: 0f 1f 44 00 00
//!          jmp  body                  ; the original code
//! body:    ...  ret                   ; returns straight to the caller
//! ```
//!
//! The user-visible function becomes an `#[inline(always)]` wrapper with
//! the original signature. It calls the *site stub*, a naked
//! `extern "C-unwind"` function (naked functions are stable only with a
//! non-Rust ABI; `-unwind` so that panics in the body still unwind through
//! the caller) whose whole code is `nop5; jmp body`, through a function pointer of the body's
//! exact type (`livetrace::__private::retarget`), which optimised builds
//! fold into a direct `call`. The stub touches no register, flag or stack
//! slot, so when its NOP runs the stack holds exactly the caller's return
//! address and the arguments are where the body expects them, whatever they
//! are (more than six, floats, structs passed or returned through memory).
//! Patching the NOP into `call handler` runs the handler first; a handler
//! that preserves every register then returns to the `jmp`.
//!
//! Calls through a function pointer or a `dyn Trait` vtable reach the
//! wrapper's out-of-line copy, which in optimised builds is a single
//! `jmp stub`, so the stack again holds only the caller's return address;
//! unoptimised builds add that copy's own frame. Either way every call of a
//! traced function passes its site, and no site is ever inside a body.
//!
//! Each site has a record in section `livetrace_sites` (flags `awR`: the
//! retain flag keeps it through `--gc-sections`), written by assembler
//! directives next to the stub, so no constructor runs to register it.
//! `livetrace::macro_sites()` reads them: address, path, file and line of
//! the function's name, and its type as a string (`fn(u64) -> u64`; empty
//! for generic functions), which the control socket checks before a live
//! patch.
//!
//! # Supported forms
//!
//! `#[traced]` goes on:
//!
//! - a free `fn` (in a module or a block);
//! - an `impl` block, inherent or of a trait: every `fn` in it is traced;
//! - an inline `mod name { … }`: every `fn` and every `impl` in it, and in
//!   its inline submodules, is traced.
//!
//! Inside a traced `impl` or `mod`, `#[traced(skip)]` leaves one item as it
//! is, and a redundant `#[traced]` is accepted.
//!
//! Traced functions may have:
//!
//! - any receiver: `self`, `mut self`, `&self`, `&mut self`, `self: Box<Self>`,
//!   `self: Pin<&mut Self>`, …;
//! - any number of parameters of any nameable type, with any patterns
//!   (`(a, b): (u32, u32)`, `mut x`, `_`), and any return type, `!` included;
//! - lifetime parameters and elided lifetimes;
//! - type and const parameters, on the function or on the impl. Each
//!   instantiation is separate machine code, so it gets its own stub and
//!   record when it is instantiated; its records share the generic path.
//!   A generic function that is never instantiated has no site;
//! - `unsafe`, visibility, docs, `#[must_use]`, `#[cfg]`, lint attributes,
//!   `#[cold]`.
//!
//! Trait-impl methods called through `dyn Trait` and functions called
//! through pointers are traced, as explained above.
//!
//! # Refused forms (each a compile error with the reason)
//!
//! - `const fn` (it may run at compile time), `async fn` (the call only
//!   builds a future), `extern "ABI" fn`, variadic functions;
//! - `impl Trait` in argument or return position;
//! - `#[inline]`, `#[no_mangle]`, `#[export_name]`, `#[link_section]`,
//!   `#[track_caller]`, `#[target_feature]` on a traced function;
//! - attributes on parameters;
//! - `#[traced]` on a single method or associated function: put it on the
//!   `impl` block (a nested item cannot name `Self`, and a trait impl cannot
//!   take the extra items a method needs). A method with a receiver or any
//!   `Self` is refused by the macro itself; an associated function without
//!   `Self` is refused by the compiler, because the expansion includes a
//!   `macro_rules!` item named
//!   `__livetrace_error_associated_fn_needs_traced_on_its_impl_block`,
//!   which is not allowed in an `impl`;
//! - trait definitions with default method bodies, macro invocations and
//!   out-of-line `mod name;` inside a traced `mod`/`impl`, unless marked
//!   `#[traced(skip)]`: the macro cannot see the functions they contain;
//! - `default fn`/`default impl`, and `Self` inside generic bounds where it
//!   cannot be spelled out.
//!
//! Crate types: sites of functions that a `dylib` crate exposes for
//! inlining into other shared objects are not supported (the stub is a
//! private symbol of the object that defines it); rlibs, binaries and
//! `cdylib`s are fine.
//!
//! # Paths
//!
//! A record's path is `module_path!()` of the function's module followed by
//! `::name` (free functions), `::Type::name` (inherent methods) or
//! `::<Type as Trait>::name` (trait methods), with `Type` and `Trait` as
//! written in the impl header. A free function declared inside another
//! function's body gets the enclosing module's path.

mod attrs;
mod check;
mod container;
mod gen;
mod util;

use proc_macro::TokenStream;
use quote::quote;
use syn::Item;

/// Puts a patchable NOP site at the entry of a function, or of every
/// function in an `impl` block or inline `mod`. See the crate docs for the
/// supported forms.
#[proc_macro_attribute]
pub fn traced(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    if attrs::parse_args(attr.clone())? == attrs::Mode::Skip {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[traced(skip)]` only means something on an item inside a `#[traced]` impl or mod",
        ));
    }
    let item: Item = syn::parse2(item)?;
    match item {
        Item::Fn(mut f) => {
            attrs::take_mode(&mut f.attrs)?;
            let x = gen::expand(gen::Ctx::Free, &f.attrs, &f.vis, &f.sig, &f.block)?;
            let wrapper = x.wrapper;
            // Allowed in modules and blocks, refused by the compiler inside an
            // `impl` or trait: an associated fn without `Self` looks like a
            // free fn to the macro, and would get a wrong path.
            Ok(quote! {
                #wrapper
                #[allow(unused_macros)]
                macro_rules! __livetrace_error_associated_fn_needs_traced_on_its_impl_block {
                    () => {};
                }
            })
        }
        Item::Impl(i) => container::expand_impl(i),
        Item::Mod(m) => container::expand_mod(m),
        Item::Trait(t) => Err(syn::Error::new_spanned(
            t.ident,
            "`#[traced]` on a trait definition: default method bodies are generic over `Self` \
             and cannot have one site; put `#[traced]` on the impls instead",
        )),
        other => Err(syn::Error::new_spanned(
            other,
            "`#[traced]` goes on a fn, an impl block or an inline mod",
        )),
    }
}
