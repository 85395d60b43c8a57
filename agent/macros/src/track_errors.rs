//! `#[track_errors]`: counts the `Err`s a function returns in a counter from
//! `sonde_agent::metrics::global()`, tagged with the function and the error.
//!
//! # Shape of the expansion
//! ```text
//! fn f(a: A) -> Result<T, E> {
//!     static SITE: ErrorSite = ErrorSite::new("errors_total", "help", "f");
//!     let ret = call_once::<Result<T, E>, _>(move || <body>);  // every `return` and `?` land here
//!     SITE.by_type(&ret);                                      // `Err`: counter{function, error} += 1
//!     ret
//! }
//! ```
//! An `async fn` runs its body as `typed_future::<Result<T, E>, _>(async move <body>).await`
//! instead. Naming the return type in the turbofish makes `?` in the body convert errors as it
//! did in the function. The error type is never named by the macro: `by_type` takes
//! `&Result<T, E>` and infers `E`, so `io::Result<T>` and other aliases work, and a function
//! that does not return a `Result` is refused by the type checker at its return type.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{Ident, ItemFn, ReturnType, Type, ext::IdentExt, spanned::Spanned};

use crate::{
    instrument::mentions_impl,
    metric_args::{Accepts, MetricArgs, split_attrs},
};

const ACCEPTS: Accepts = Accepts {
    macro_name: "track_errors",
    tags: false,
    flags: &["variant"],
    expected: "`help = \"...\"` or `variant`",
};

/// The counter's name when none is given.
const DEFAULT_NAME: &str = "errors_total";

pub(crate) fn expand(args: TokenStream, item: ItemFn) -> syn::Result<TokenStream> {
    let args = MetricArgs::parse(args, &ACCEPTS)?;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span,
            "`#[track_errors]` cannot go on a `const fn`",
        ));
    }
    let ret_ty = match &sig.output {
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.paren_token.span.close(),
                "`#[track_errors]` needs a function that returns a `Result`",
            ));
        }
        ReturnType::Type(_, ty) if matches!(**ty, Type::Never(_)) => {
            return Err(syn::Error::new_spanned(
                ty,
                "`#[track_errors]` needs a function that returns a `Result`: this one never returns",
            ));
        }
        ReturnType::Type(_, ty) => ty,
    };

    let name = args
        .name
        .as_ref()
        .map_or_else(|| DEFAULT_NAME.to_owned(), syn::LitStr::value);
    let help = args.help.as_ref().map_or_else(
        || "Errors returned, by function and error.".to_owned(),
        syn::LitStr::value,
    );
    let function = sig.ident.unraw().to_string();
    let record = if args.has_flag("variant") {
        "by_variant"
    } else {
        "by_type"
    };

    let ms = quote! { ::sonde_agent::__macro_support };
    // Mixed-site names, which the body cannot see, located at the return type so that type
    // errors (a function that does not return a `Result`, an error type without `Debug` under
    // `variant`) point there.
    let at_ty = Span::mixed_site().located_at(ret_ty.span());
    let site = Ident::new("__SONDE_ERRORS", at_ty);
    let ret = Ident::new("__sonde_ret", at_ty);
    let record = Ident::new(record, ret_ty.span());
    // `impl Trait` cannot be named in the body; then the body's type is left to inference.
    let typed = (!mentions_impl(quote! { #ret_ty })).then(|| quote! { ::<#ret_ty, _> });
    let body = if sig.asyncness.is_some() {
        quote! { #ms::typed_future #typed (async move #block).await }
    } else {
        quote! { #ms::call_once #typed (move || #block) }
    };
    let count = quote_spanned! {ret_ty.span()=> #site.#record(&#ret); };
    let (outer, inner) = split_attrs(attrs);
    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            static #site: #ms::ErrorSite = #ms::ErrorSite::new(#name, #help, #function);
            let #ret = #body;
            #count
            #ret
        }
    })
}
