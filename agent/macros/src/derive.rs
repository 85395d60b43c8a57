//! `#[derive(Capture)]`: a type's `capture()` (its whole value) and `field()` (one field without
//! converting the others), from its fields and their `#[capture(...)]` attributes.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{
    Attribute, Data, DeriveInput, Fields, GenericParam, LitStr, Member, parse_quote,
    spanned::Spanned,
};

/// The key under which an enum variant with fields records its name.
const VARIANT_KEY: &str = "variant";

/// What `#[capture(...)]` says about one field.
#[derive(Default)]
struct FieldOpts {
    skip: bool,
    debug: bool,
    redact: bool,
    rename: Option<String>,
}

fn field_opts(attrs: &[Attribute], named: bool) -> syn::Result<FieldOpts> {
    let mut opts = FieldOpts::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("capture")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                opts.skip = true;
            } else if meta.path.is_ident("debug") {
                opts.debug = true;
            } else if meta.path.is_ident("redact") {
                opts.redact = true;
            } else if meta.path.is_ident("rename") {
                if !named {
                    return Err(meta.error("`rename` applies to named fields only"));
                }
                let name: LitStr = meta.value()?.parse()?;
                opts.rename = Some(name.value());
            } else {
                return Err(meta.error(
                    "unknown `capture` option; expected `skip`, `debug`, `redact` or `rename = \"...\"`",
                ));
            }
            Ok(())
        })?;
        if opts.skip && (opts.debug || opts.redact || opts.rename.is_some()) {
            return Err(syn::Error::new_spanned(
                attr,
                "a skipped field is never captured: `skip` goes alone",
            ));
        }
    }
    Ok(opts)
}

/// The `rename` of a variant, if any (`skip` and `debug` make no sense there).
fn variant_name(attrs: &[Attribute], ident: &syn::Ident) -> syn::Result<String> {
    let mut name = ident_name(ident);
    for attr in attrs.iter().filter(|a| a.path().is_ident("capture")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let lit: LitStr = meta.value()?.parse()?;
                name = lit.value();
                Ok(())
            } else {
                Err(meta.error("a variant takes only `rename = \"...\"`"))
            }
        })?;
    }
    Ok(name)
}

fn ident_name(ident: &syn::Ident) -> String {
    let s = ident.to_string();
    s.strip_prefix("r#").map(str::to_owned).unwrap_or(s)
}

/// One captured field: its key in the record, how to reach it, and how to convert it.
struct CapturedField {
    key: String,
    /// The field as a pattern member binding it alone (`x: __sonde_field_0`), for variants.
    bind: TokenStream,
    /// `self.x` for a struct, the binding for an enum variant.
    access: TokenStream,
    debug: bool,
    /// Captured as redacted: the value is never read.
    redact: bool,
    span: Span,
}

impl CapturedField {
    /// `Value` of the field.
    fn value(&self) -> TokenStream {
        let access = &self.access;
        if self.redact {
            quote_spanned! {self.span=>
                ::sonde_agent::__macro_support::Capture::capture(&::sonde_agent::__macro_support::Redacted)
            }
        } else if self.debug {
            quote_spanned! {self.span=>
                ::sonde_agent::__macro_support::Capture::capture(
                    &::sonde_agent::__macro_support::DebugCapture(#access)
                )
            }
        } else {
            quote_spanned! {self.span=> ::sonde_agent::__macro_support::Capture::capture(#access) }
        }
    }

    /// `(key, value)` record entry.
    fn entry(&self) -> TokenStream {
        let key = &self.key;
        let value = self.value();
        quote! { (::sonde_agent::__macro_support::Cow::Borrowed(#key), #value) }
    }

    /// A `field()` match arm body, or `None` when the field is captured as a rendering (then
    /// `field()` declines and the whole value is converted, which renders it).
    fn as_dyn(&self) -> Option<TokenStream> {
        if self.redact {
            return Some(quote_spanned! {self.span=>
                ::core::option::Option::Some(
                    &::sonde_agent::__macro_support::Redacted as &dyn ::sonde_agent::__macro_support::Capture
                )
            });
        }
        if self.debug {
            return None;
        }
        let access = &self.access;
        Some(quote_spanned! {self.span=>
            ::core::option::Option::Some(#access as &dyn ::sonde_agent::__macro_support::Capture)
        })
    }
}

/// The captured fields of a struct (reached as `self.x`) or a variant (reached through bindings),
/// and the pattern that binds them all (for variants).
fn collect(fields: &Fields, in_struct: bool) -> syn::Result<(Vec<CapturedField>, TokenStream)> {
    let mut out = Vec::new();
    let mut pattern = Vec::new();
    let named = matches!(fields, Fields::Named(_));
    for (i, field) in fields.iter().enumerate() {
        let opts = field_opts(&field.attrs, named)?;
        let member = match &field.ident {
            Some(ident) => Member::Named(ident.clone()),
            None => Member::Unnamed(syn::Index {
                index: i as u32,
                span: field.span(),
            }),
        };
        let binding = format_ident!("__sonde_field_{}", i);
        if opts.skip {
            continue;
        }
        let bind = quote! { #member: #binding };
        pattern.push(bind.clone());
        let key = opts.rename.unwrap_or_else(|| match &field.ident {
            Some(ident) => ident_name(ident),
            None => i.to_string(),
        });
        if out.iter().any(|f: &CapturedField| f.key == key) {
            return Err(syn::Error::new(
                field.span(),
                format!("two fields are captured as `{key}`"),
            ));
        }
        let access = if in_struct {
            quote! { &self.#member }
        } else {
            quote! { #binding }
        };
        out.push(CapturedField {
            key,
            bind,
            access,
            debug: opts.debug,
            redact: opts.redact,
            span: field.ty.span(),
        });
    }
    Ok((out, quote! { { #(#pattern,)* .. } }))
}

/// Whether the type says `#[capture(redact)]` (the only option a type takes).
fn type_redacted(attrs: &[Attribute]) -> syn::Result<bool> {
    let mut redact = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("capture")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("redact") {
                redact = true;
                Ok(())
            } else {
                Err(meta.error(
                    "a type takes only `redact`; `skip`, `debug` and `rename` go on fields \
                     (and `rename` on variants)",
                ))
            }
        })?;
    }
    Ok(redact)
}

pub(crate) fn expand(mut input: DeriveInput) -> syn::Result<TokenStream> {
    let redact = type_redacted(&input.attrs)?;
    for param in &mut input.generics.params {
        if let GenericParam::Type(ty) = param {
            ty.bounds
                .push(parse_quote!(::sonde_agent::__macro_support::Capture));
        }
    }
    let (capture, field) = match &input.data {
        // A redacted type is never read: no field of it is named in the generated code.
        _ if redact => (
            quote! {
                ::sonde_agent::__macro_support::Capture::capture(&::sonde_agent::__macro_support::Redacted)
            },
            quote! {
                let _ = name;
                ::core::option::Option::None
            },
        ),
        Data::Struct(data) => struct_body(&data.fields)?,
        Data::Enum(data) => enum_body(data)?,
        Data::Union(u) => {
            return Err(syn::Error::new_spanned(
                u.union_token,
                "`Capture` cannot be derived for a union",
            ));
        }
    };
    let names = if redact {
        Vec::new()
    } else {
        field_names(&input.data)?
    };
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::sonde_agent::__macro_support::Capture for #ident #ty_generics
            #where_clause
        {
            fn capture(&self) -> ::sonde_agent::__macro_support::Value {
                #capture
            }

            fn field(&self, name: &str) -> ::core::option::Option<&dyn ::sonde_agent::__macro_support::Capture> {
                #field
            }

            fn redacted(&self) -> bool {
                #redact
            }

            fn field_names(&self) -> &'static [&'static str] {
                &[#(#names),*]
            }
        }
    })
}

/// The names a path can take one step into a value of the type: a struct's named fields (as
/// captured: renamed, neither skipped nor redacted); for an enum with fields, `variant` and every
/// variant's named fields, each once. Tuple structs and unit-only enums have none.
fn field_names(data: &Data) -> syn::Result<Vec<String>> {
    let named = |fields: &Fields| -> syn::Result<Vec<String>> {
        if !matches!(fields, Fields::Named(_)) {
            return Ok(Vec::new());
        }
        let (captured, _) = collect(fields, false)?;
        Ok(captured
            .into_iter()
            .filter(|f| !f.redact)
            .map(|f| f.key)
            .collect())
    };
    Ok(match data {
        Data::Struct(data) => named(&data.fields)?,
        Data::Enum(data) if data.variants.iter().any(|v| !v.fields.is_empty()) => {
            let mut out = vec![VARIANT_KEY.to_owned()];
            for variant in &data.variants {
                for key in named(&variant.fields)? {
                    if !out.contains(&key) {
                        out.push(key);
                    }
                }
            }
            out
        }
        Data::Enum(_) | Data::Union(_) => Vec::new(),
    })
}

fn struct_body(fields: &Fields) -> syn::Result<(TokenStream, TokenStream)> {
    let (captured, _) = collect(fields, true)?;
    let capture = match fields {
        Fields::Named(_) => {
            let entries = captured.iter().map(CapturedField::entry);
            quote! { ::sonde_agent::__macro_support::Value::Record(::std::vec![#(#entries),*]) }
        }
        Fields::Unnamed(unnamed) => {
            // Skipped elements keep their place (as `None`) so indexes stay the field numbers.
            let mut it = captured.iter().peekable();
            let values =
                (0..unnamed.unnamed.len()).map(|i| match it.next_if(|f| f.key == i.to_string()) {
                    Some(f) => f.value(),
                    None => quote! { ::sonde_agent::__macro_support::Value::None },
                });
            quote! { ::sonde_agent::__macro_support::Value::List(::std::vec![#(#values),*]) }
        }
        Fields::Unit => quote! { ::sonde_agent::__macro_support::Value::None },
    };
    let arms = captured.iter().filter_map(|f| {
        let key = &f.key;
        f.as_dyn().map(|body| quote! { #key => #body, })
    });
    let field = if matches!(fields, Fields::Named(_)) {
        quote! {
            match name {
                #(#arms)*
                _ => ::core::option::Option::None,
            }
        }
    } else {
        // Tuple structs are lists: paths index them (`pair[0]`) through the whole value.
        quote! {
            let _ = name;
            ::core::option::Option::None
        }
    };
    Ok((capture, field))
}

fn enum_body(data: &syn::DataEnum) -> syn::Result<(TokenStream, TokenStream)> {
    let mut capture_arms = Vec::new();
    let mut field_arms = Vec::new();
    for variant in &data.variants {
        let ident = &variant.ident;
        let name = variant_name(&variant.attrs, ident)?;
        if let Fields::Unit = variant.fields {
            capture_arms.push(quote! {
                Self::#ident => ::sonde_agent::__macro_support::Value::Str(
                    ::std::string::String::from(#name)
                ),
            });
            continue;
        }
        let (captured, pattern) = collect(&variant.fields, false)?;
        if let Some(clash) = captured.iter().find(|f| f.key == VARIANT_KEY) {
            return Err(syn::Error::new(
                clash.span,
                "a variant's record names the variant under `variant`: rename this field \
                 (`#[capture(rename = \"...\")]`)",
            ));
        }
        let entries = captured.iter().map(CapturedField::entry);
        capture_arms.push(quote! {
            Self::#ident #pattern => ::sonde_agent::__macro_support::Value::Record(::std::vec![
                (
                    ::sonde_agent::__macro_support::Cow::Borrowed(#VARIANT_KEY),
                    ::sonde_agent::__macro_support::Value::Str(::std::string::String::from(#name)),
                ),
                #(#entries),*
            ]),
        });
        for f in &captured {
            let key = &f.key;
            if let Some(body) = f.as_dyn() {
                let bind = &f.bind;
                field_arms.push(quote! { (Self::#ident { #bind, .. }, #key) => #body, });
            }
        }
    }
    let capture = if capture_arms.is_empty() {
        quote! { match *self {} }
    } else {
        quote! {
            match self {
                #(#capture_arms)*
            }
        }
    };
    let field = quote! {
        match (self, name) {
            #(#field_arms)*
            _ => ::core::option::Option::None,
        }
    };
    Ok((capture, field))
}
