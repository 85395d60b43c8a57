//! [`MetricArgs`]: what `#[timed]` and `#[track_errors]` take — a metric name, then options —
//! checked at compile time against the exposition format's rules for names and tag keys.

use proc_macro2::TokenStream;
use syn::{
    AttrStyle, Attribute, Ident, LitStr, Token,
    ext::IdentExt,
    meta::ParseNestedMeta,
    parse::{ParseStream, Parser},
    punctuated::Punctuated,
};

/// `"name", help = "...", tags(key = "value", ...)` and any flags the macro accepts.
#[derive(Default)]
pub(crate) struct MetricArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) help: Option<LitStr>,
    /// Tag keys (as written, `r#` stripped) and values, in the order written.
    pub(crate) tags: Vec<(String, LitStr)>,
    /// The flags named in `flags` that were given.
    pub(crate) flags: Vec<Ident>,
}

/// What a macro accepts besides the name.
pub(crate) struct Accepts {
    /// The macro's name, for messages.
    pub(crate) macro_name: &'static str,
    pub(crate) tags: bool,
    pub(crate) flags: &'static [&'static str],
    /// The options, for the message about an unknown one.
    pub(crate) expected: &'static str,
}

impl MetricArgs {
    pub(crate) fn parse(args: TokenStream, accepts: &Accepts) -> syn::Result<Self> {
        let mut out = MetricArgs::default();
        let (name, rest) = split_name.parse2(args)?;
        if let Some(name) = &name {
            check_name(name)?;
        }
        out.name = name;
        let parser = syn::meta::parser(|meta| out.option(meta, accepts));
        parser.parse2(rest)?;
        Ok(out)
    }

    fn option(&mut self, meta: ParseNestedMeta<'_>, accepts: &Accepts) -> syn::Result<()> {
        if meta.path.is_ident("help") {
            if self.help.is_some() {
                return Err(meta.error("`help` given twice"));
            }
            self.help = Some(meta.value()?.parse()?);
            Ok(())
        } else if accepts.tags && meta.path.is_ident("tags") {
            let content;
            syn::parenthesized!(content in meta.input);
            let tags: Punctuated<Tag, Token![,]> =
                content.parse_terminated(Tag::parse, Token![,])?;
            for tag in tags {
                let key = tag.key.unraw().to_string();
                check_tag_key(&tag.key, &key)?;
                if self.tags.iter().any(|(k, _)| *k == key) {
                    return Err(syn::Error::new(
                        tag.key.span(),
                        format!("tag `{key}` given twice"),
                    ));
                }
                self.tags.push((key, tag.value));
            }
            Ok(())
        } else if let Some(flag) = accepts
            .flags
            .iter()
            .find(|f| meta.path.is_ident(f))
            .and_then(|_| meta.path.get_ident())
        {
            self.flags.push(flag.clone());
            Ok(())
        } else {
            Err(meta.error(format!(
                "unknown `{}` option; expected {}",
                accepts.macro_name, accepts.expected
            )))
        }
    }

    pub(crate) fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// A function's outer attributes (kept on it) and inner ones (`#![...]`, which syn lifts out
/// of the body and which go back at the top of the new body).
pub(crate) fn split_attrs(attrs: Vec<Attribute>) -> (Vec<Attribute>, Vec<Attribute>) {
    attrs
        .into_iter()
        .partition(|a| matches!(a.style, AttrStyle::Outer))
}

/// `key = "value"`.
struct Tag {
    key: Ident,
    value: LitStr,
}

impl Tag {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key = input.call(Ident::parse_any)?;
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Tag { key, value })
    }
}

/// The leading string literal (the metric's name), if any, and the options after it.
fn split_name(input: ParseStream<'_>) -> syn::Result<(Option<LitStr>, TokenStream)> {
    let name = if input.peek(LitStr) {
        let name: LitStr = input.parse()?;
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
        Some(name)
    } else {
        None
    };
    Ok((name, input.parse()?))
}

/// A metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn check_name(name: &LitStr) -> syn::Result<()> {
    let value = name.value();
    let mut chars = value.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            name.span(),
            format!(
                "`{value}` is not a metric name: use ASCII letters, digits, `_` and `:`, \
                 not starting with a digit (e.g. \"checkout_duration_seconds\")"
            ),
        ))
    }
}

/// A tag key: an identifier, not starting with `__` (reserved by Prometheus).
fn check_tag_key(ident: &Ident, key: &str) -> syn::Result<()> {
    if key.starts_with("__") {
        return Err(syn::Error::new(
            ident.span(),
            format!("tag `{key}`: keys starting with `__` are reserved"),
        ));
    }
    if !key.is_ascii() {
        return Err(syn::Error::new(
            ident.span(),
            format!("tag `{key}`: keys are ASCII"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    const ACCEPTS: Accepts = Accepts {
        macro_name: "timed",
        tags: true,
        flags: &["variant"],
        expected: "`help = \"...\"`, `tags(key = \"value\", ...)` or `variant`",
    };

    fn parse(args: TokenStream) -> syn::Result<MetricArgs> {
        MetricArgs::parse(args, &ACCEPTS)
    }

    fn error(args: TokenStream) -> String {
        match parse(args) {
            Ok(_) => panic!("parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn name_help_tags_and_flags() {
        let args = parse(quote!(
            "a_seconds",
            help = "A.",
            tags(route = "/a", r#type = "x"),
            variant
        ))
        .unwrap();
        assert_eq!(args.name.unwrap().value(), "a_seconds");
        assert_eq!(args.help.unwrap().value(), "A.");
        let tags: Vec<(String, String)> =
            args.tags.into_iter().map(|(k, v)| (k, v.value())).collect();
        assert_eq!(
            tags,
            [("route".into(), "/a".into()), ("type".into(), "x".into())]
        );
        assert_eq!(args.flags.len(), 1);
        assert!(parse(quote!()).unwrap().name.is_none());
        assert!(parse(quote!(variant)).unwrap().name.is_none());
        assert!(parse(quote!("a",)).unwrap().name.is_some());
    }

    #[test]
    fn bad_names_keys_and_options_are_refused() {
        assert!(error(quote!("1st")).contains("not a metric name"));
        assert!(error(quote!("a-b")).contains("not a metric name"));
        assert!(error(quote!("")).contains("not a metric name"));
        assert!(error(quote!("a", tags(__name = "x"))).contains("reserved"));
        assert!(error(quote!("a", tags(k = "x", k = "y"))).contains("twice"));
        assert!(error(quote!("a", help = "x", help = "y")).contains("twice"));
        assert!(error(quote!("a", bucket = "x")).contains("unknown `timed` option"));
        assert!(error(quote!("a", tags(k = 1))).contains("expected string literal"));
    }
}
