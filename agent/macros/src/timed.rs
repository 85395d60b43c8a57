//! `#[timed("name")]`: a function's duration, in seconds, into a timer of that name from
//! `sonde_agent::metrics::global()`.
//!
//! # Shape of the expansion
//! ```text
//! fn f(a: A) -> R {
//!     static SITE: TimedSite = TimedSite::new("name", "help", &["key"], &["value"]);
//!     let guard = SITE.start();   // resolves the timer on the first call, then reads the clock
//!     <body>                      // unchanged: `return`, `?` and panics all drop the guard
//! }                               // the guard records here
//! ```
//! The body stays where it was (no closure, no extra `async` block), so nothing about how it
//! borrows, returns or converts errors changes. The guard's name is hygienic (mixed-site), so
//! the body cannot see it.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Ident, ItemFn, ext::IdentExt};

use crate::metric_args::{Accepts, MetricArgs, split_attrs};

const ACCEPTS: Accepts = Accepts {
    macro_name: "timed",
    tags: true,
    flags: &[],
    expected: "`help = \"...\"` or `tags(key = \"value\", ...)`",
};

pub(crate) fn expand(args: TokenStream, item: ItemFn) -> syn::Result<TokenStream> {
    let args = MetricArgs::parse(args, &ACCEPTS)?;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let Some(name) = args.name else {
        return Err(syn::Error::new(
            Span::call_site(),
            "`#[timed]` needs the timer's name first: `#[timed(\"checkout_duration_seconds\")]`",
        ));
    };
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span,
            "`#[timed]` cannot go on a `const fn`",
        ));
    }
    let help = match args.help {
        Some(help) => help.value(),
        None => format!("Duration of `{}`, in seconds.", sig.ident.unraw()),
    };
    let keys = args.tags.iter().map(|(k, _)| k);
    let values = args.tags.iter().map(|(_, v)| v);

    let ms = quote! { ::sonde_agent::__macro_support };
    let site = Ident::new("__SONDE_TIMED", Span::mixed_site());
    let guard = Ident::new("__sonde_timed", Span::mixed_site());
    let stmts = &block.stmts;
    let (outer, inner) = split_attrs(attrs);
    Ok(quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            static #site: #ms::TimedSite =
                #ms::TimedSite::new(#name, #help, &[#(#keys),*], &[#(#values),*]);
            let #guard = #site.start();
            #(#stmts)*
        }
    })
}
