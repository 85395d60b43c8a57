//! `#[instrument]`: two probe sites on a function, one at entry (the arguments) and one at exit
//! (the arguments, the return value, whether it was `Ok`, and the time taken).
//!
//! # Shape of the expansion
//! ```text
//! fn f(a: A, b: &B) -> R {
//!     static ENTRY: Site = Site::new(file!(), <line of `fn`>, module_path!(), &["a", "b"]);
//!     static EXIT: Site = Site::new(file!(), <line of the closing `}`>, module_path!(),
//!                                   &["a", "b", "ret", "ok", "elapsed"]);
//!     if ENTRY.wants_hit() { ENTRY.hit(&[&a, &b]) }        // one relaxed load
//!     let b_at_entry = b;                                    // a shared reference: a copy
//!     let exit = if EXIT.wants_hit() {                       // one relaxed load
//!         Some(([a.capture()], Instant::now()))              // owned arguments: converted now
//!     } else { None };
//!     let ret = call_once::<R, _>(move || { <body> });       // every `return` and `?` land here
//!     if let Some((args, start)) = exit { if EXIT.wants_hit() { EXIT.hit(..) } }
//!     ret
//! }
//! ```
//! An `async fn` runs its body as `async move { <body> }.await` instead of the closure.
//!
//! The lines come from spans: `line!()` expanded with the span of the `fn` token gives that
//! token's line, and with the span of the body's closing brace that brace's line (proc-macro
//! `Span::line` is not stable; this is). The body may move its arguments, so the exit site cannot
//! borrow them after it: arguments passed as shared references are kept (copied) and converted
//! only if an expression reads them; the others are converted to values at entry, and only when
//! the exit site is armed.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::{
    FnArg, Ident, ItemFn, Pat, ReturnType, Type, meta::ParseNestedMeta, punctuated::Punctuated,
    spanned::Spanned, token::Comma,
};

/// Names the exit site captures besides the arguments.
const RET: &str = "ret";
const OK: &str = "ok";
const ELAPSED: &str = "elapsed";

/// `#[instrument(skip(a, b), skip_ret)]`.
#[derive(Default)]
pub(crate) struct Args {
    skip: Vec<Ident>,
    skip_ret: bool,
}

impl Args {
    pub(crate) fn parse(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        if meta.path.is_ident("skip") {
            let content;
            syn::parenthesized!(content in meta.input);
            let names: Punctuated<Ident, Comma> =
                content.parse_terminated(syn::ext::IdentExt::parse_any, Comma)?;
            self.skip.extend(names);
            Ok(())
        } else if meta.path.is_ident("skip_ret") {
            self.skip_ret = true;
            Ok(())
        } else {
            Err(meta.error("unknown `instrument` option; expected `skip(arg, ...)` or `skip_ret`"))
        }
    }
}

/// One captured argument.
struct Arg {
    ident: Ident,
    name: String,
    span: Span,
    /// Declared as `&T`: copied before the body and converted at exit only if read.
    shared_ref: bool,
}

pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span,
            "`#[instrument]` cannot go on a `const fn`",
        ));
    }
    if let ReturnType::Type(_, ty) = &sig.output
        && matches!(**ty, Type::Never(_))
    {
        return Err(syn::Error::new_spanned(
            ty,
            "`#[instrument]` needs a function that returns: this one never does",
        ));
    }

    let captured = arguments(&sig.inputs, &args)?;
    for arg in &captured {
        let reserved = arg.name == OK || arg.name == ELAPSED || (!args.skip_ret && arg.name == RET);
        if reserved {
            return Err(syn::Error::new(
                arg.span,
                format!(
                    "the exit site captures `{}` itself: skip this argument \
                     (`#[instrument(skip({}))]`) or rename it",
                    arg.name, arg.name
                ),
            ));
        }
    }

    let fn_span = sig.fn_token.span;
    let close_span = block.brace_token.span.close();
    let file = quote_spanned! {fn_span=> ::core::file!() };
    let entry_line = quote_spanned! {fn_span=> ::core::line!() };
    let exit_line = quote_spanned! {close_span=> ::core::line!() };

    let ms = quote! { ::sonde_agent::__macro_support };
    let entry_names: Vec<&str> = captured.iter().map(|a| a.name.as_str()).collect();
    let mut exit_names = entry_names.clone();
    if !args.skip_ret {
        exit_names.push(RET);
    }
    exit_names.extend([OK, ELAPSED]);

    let site = |name: &Ident, line: &TokenStream, names: &[&str]| {
        let reference = format_ident!("{}_REF", name);
        let fields = format_ident!("{}_FIELDS", name);
        let n = names.len();
        quote! {
            static #fields: [#ms::FieldSlot; #n] = [const { #ms::FieldSlot::new() }; #n];
            static #name: #ms::Site = #ms::Site::new(#file, #line, ::core::module_path!(), &[#(#names),*], &#fields);
            #[#ms::linkme::distributed_slice(#ms::SITES)]
            #[linkme(crate = #ms::linkme)]
            static #reference: &'static #ms::Site = &#name;
        }
    };
    let entry_site = site(&format_ident!("__SONDE_ENTRY"), &entry_line, &entry_names);
    let exit_site = site(&format_ident!("__SONDE_EXIT"), &exit_line, &exit_names);

    let entry_values: Vec<TokenStream> = captured
        .iter()
        .map(|a| {
            let ident = &a.ident;
            quote_spanned! {a.span=> &#ident as &dyn #ms::Capture }
        })
        .collect();

    // What the exit site keeps of each argument: a copy of a shared reference, or its value.
    let mut keep = Vec::new();
    let mut snapshot = Vec::new();
    let mut exit_values = Vec::new();
    for arg in &captured {
        let ident = &arg.ident;
        if arg.shared_ref {
            let copy = format_ident!("__sonde_arg_{}", ident);
            keep.push(quote! { let #copy = #ident; });
            exit_values.push(quote! { &#copy as &dyn #ms::Capture });
        } else {
            let i = snapshot.len();
            snapshot.push(quote_spanned! {arg.span=> #ms::Capture::capture(&#ident) });
            exit_values.push(quote! { &__sonde_args[#i] as &dyn #ms::Capture });
        }
    }
    if !args.skip_ret {
        exit_values.push(quote! { __sonde_ret_ref });
    }
    exit_values.push(quote! { &__sonde_ok as &dyn #ms::Capture });
    exit_values.push(quote! { &__sonde_elapsed as &dyn #ms::Capture });
    let n_snapshot = snapshot.len();

    // The declared return type, when it can be named in the body (not `impl Trait`).
    let ret_ty = match &sig.output {
        ReturnType::Default => Some(quote! { () }),
        ReturnType::Type(_, ty) if !mentions_impl(quote! { #ty }) => Some(quote! { #ty }),
        ReturnType::Type(..) => None,
    };
    let body = if sig.asyncness.is_some() {
        let typed = ret_ty.map(|ty| quote! { ::<#ty, _> });
        quote! { #ms::typed_future #typed (async move #block).await }
    } else {
        let typed = ret_ty.map(|ty| quote! { ::<#ty, _> });
        quote! { #ms::call_once #typed (move || #block) }
    };

    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #entry_site
            #exit_site
            if __SONDE_ENTRY.wants_hit() {
                if __SONDE_ENTRY.is_armed() {
                    __SONDE_ENTRY.hit(&[#(#entry_values),*]);
                } else {
                    __SONDE_ENTRY.first_run(&[#(#entry_values),*]);
                }
            }
            #(#keep)*
            let __sonde_exit: ::core::option::Option<([#ms::Value; #n_snapshot], #ms::Instant)> =
                if __SONDE_EXIT.wants_hit() {
                    if __SONDE_EXIT.is_armed() {
                        ::core::option::Option::Some(([#(#snapshot),*], #ms::Instant::now()))
                    } else {
                        // First run, disarmed: nothing converted (the entry site lists the
                        // arguments' fields).
                        __SONDE_EXIT.first_run(&[]);
                        ::core::option::Option::None
                    }
                } else {
                    ::core::option::Option::None
                };
            let __sonde_ret = #body;
            if let ::core::option::Option::Some((__sonde_args, __sonde_start)) = __sonde_exit {
                if __SONDE_EXIT.wants_hit() {
                let __sonde_elapsed: f64 = __sonde_start.elapsed().as_secs_f64();
                #[allow(unused_variables)]
                let (__sonde_ret_ref, __sonde_ok): (&dyn #ms::Capture, bool) = {
                    #[allow(unused_imports)]
                    use #ms::{RetAny as _, RetCapture as _, RetResult as _, RetResultAny as _};
                    (&&&&#ms::Ret(&__sonde_ret)).__sonde_ret()
                };
                let _ = &__sonde_args;
                __SONDE_EXIT.hit(&[#(#exit_values),*]);
                }
            }
            __sonde_ret
        }
    })
}

/// The arguments the sites capture: plain identifiers (`x: T`, `mut x: T`) not skipped.
/// `self` and destructuring patterns are not captured.
fn arguments(inputs: &Punctuated<FnArg, Comma>, args: &Args) -> syn::Result<Vec<Arg>> {
    let mut out = Vec::new();
    let mut found = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        let Pat::Ident(pat) = &*typed.pat else {
            continue;
        };
        if pat.subpat.is_some() {
            continue;
        }
        found.push(pat.ident.clone());
        if args.skip.contains(&pat.ident) {
            continue;
        }
        let name = pat.ident.to_string();
        let name = name.strip_prefix("r#").map(str::to_owned).unwrap_or(name);
        let shared_ref = pat.by_ref.is_none()
            && matches!(&*typed.ty, Type::Reference(r) if r.mutability.is_none());
        out.push(Arg {
            ident: pat.ident.clone(),
            name,
            span: typed.span(),
            shared_ref,
        });
    }
    for skipped in &args.skip {
        if skipped != "self" && !found.contains(skipped) {
            return Err(syn::Error::new(
                skipped.span(),
                format!("no argument named `{skipped}` to skip"),
            ));
        }
    }
    Ok(out)
}

/// Whether a type mentions `impl Trait` (which cannot be named inside the body).
pub(crate) fn mentions_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => ident == "impl",
        TokenTree::Group(group) => mentions_impl(group.stream()),
        _ => false,
    })
}
