//! [`Redaction`]: the names whose values never leave the process (snapshots, log lines, labels).
//!
//! A name is redacted when one of its words, or a run of them, spells a deny-listed entry, case
//! and separators aside: with `token` listed, `token`, `access_token`, `accessToken` and
//! `ACCESS-TOKEN` are redacted and `tokenizer` is not; with `api_key` listed, `apiKey`,
//! `API_KEY` and `my_api_key_id` are. Words are split at `_`, `-`, `.`, spaces and lower-to-upper
//! case changes.
//!
//! The list is the process's (probe sites and captures are global): the agent sets it at start
//! ([`set`]); until then, and without an agent, the default list applies. Types mark themselves
//! or single fields with `#[capture(redact)]` ([`Capture::redacted`](super::capture::Capture)),
//! whatever their names.
//!
//! Where it is enforced:
//! - at bind time, a label, value, condition or log template whose path names a redacted name
//!   is refused, with a status naming the path;
//! - at every read of a whole value ([`scrub`]): record fields and map keys with redacted names
//!   become [`REDACTED`] before an expression, a log line or a snapshot sees them;
//! - in snapshots, a redacted variable keeps its name and carries no value.

use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use sonde_expr::Value;

/// What a redacted value reads as in a log line or a label: the text, never the value.
pub const REDACTED: &str = "[redacted]";

/// The names redacted by default.
pub const DEFAULT_REDACT: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "session_id",
    "ssn",
    "credit_card",
    "card_number",
    "cvv",
    "private_key",
];

/// A deny-list of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// Each entry lower-cased with its separators removed (`api_key` is `apikey`).
    entries: Vec<String>,
}

impl Default for Redaction {
    /// The default list ([`DEFAULT_REDACT`]).
    fn default() -> Self {
        Self::new(DEFAULT_REDACT.iter().copied())
    }
}

impl Redaction {
    /// A list of exactly these names (case and separators do not matter).
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut entries: Vec<String> = names
            .into_iter()
            .map(|n| normalize(n.as_ref()))
            .filter(|n| !n.is_empty())
            .collect();
        entries.sort();
        entries.dedup();
        Self { entries }
    }

    /// This list with `names` added.
    pub fn with<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.entries
            .extend(names.into_iter().map(|n| normalize(n.as_ref())));
        self.entries.retain(|e| !e.is_empty());
        self.entries.sort();
        self.entries.dedup();
        self
    }

    /// The deny-listed entry that `name` spells (in whole words), if any.
    pub fn matches(&self, name: &str) -> Option<&str> {
        if self.entries.is_empty() || name.is_empty() {
            return None;
        }
        if name.is_ascii() {
            return self.matches_ascii(name.as_bytes());
        }
        self.matches_words(name)
    }

    /// [`Redaction::matches`] through the name's words, lower-cased (any name).
    fn matches_words(&self, name: &str) -> Option<&str> {
        let words = words(name);
        for start in 0..words.len() {
            let mut joined = String::new();
            for word in &words[start..] {
                joined.push_str(word);
                if let Some(e) = self.entries.iter().find(|e| **e == joined) {
                    return Some(e);
                }
                if !self.entries.iter().any(|e| e.starts_with(joined.as_str())) {
                    break;
                }
            }
        }
        None
    }

    /// [`Redaction::matches`] for an ASCII name, without allocating: it runs on every field
    /// name of every value a hit reads whole.
    fn matches_ascii(&self, name: &[u8]) -> Option<&str> {
        // Word spans, as `words` splits them; a name of more words than this is checked on its
        // first ones only.
        let mut spans = [(0usize, 0usize); 32];
        let mut n = 0;
        let mut start = None::<usize>;
        let mut prev_lower = false;
        for (i, &b) in name.iter().enumerate() {
            let alnum = b.is_ascii_alphanumeric();
            let boundary = !alnum || (b.is_ascii_uppercase() && prev_lower);
            if boundary && let Some(s) = start.take() {
                if n == spans.len() {
                    break;
                }
                spans[n] = (s, i);
                n += 1;
            }
            if alnum && start.is_none() {
                start = Some(i);
            }
            prev_lower = b.is_ascii_lowercase() || b.is_ascii_digit();
        }
        if let Some(s) = start
            && n < spans.len()
        {
            spans[n] = (s, name.len());
            n += 1;
        }
        let spans = &spans[..n];
        for first in 0..spans.len() {
            'entry: for entry in &self.entries {
                let e = entry.as_bytes();
                let mut at = 0;
                for &(s, end) in &spans[first..] {
                    let word = &name[s..end];
                    if e.len() - at < word.len()
                        || !e[at..at + word.len()].eq_ignore_ascii_case(word)
                    {
                        continue 'entry;
                    }
                    at += word.len();
                    if at == e.len() {
                        return Some(entry);
                    }
                }
            }
        }
        None
    }

    /// Whether `name` is redacted.
    pub fn is_redacted(&self, name: &str) -> bool {
        self.matches(name).is_some()
    }

    /// Replaces, in place, every record field and map entry with a redacted name by
    /// [`REDACTED`], at any depth.
    pub fn scrub(&self, value: &mut Value) {
        match value {
            Value::Record(fields) => {
                for (name, v) in fields {
                    if self.is_redacted(name) {
                        *v = Value::Str(REDACTED.to_owned());
                    } else {
                        self.scrub(v);
                    }
                }
            }
            Value::Map(map) => {
                for (key, v) in map.iter_mut() {
                    if self.is_redacted(key) {
                        *v = Value::Str(REDACTED.to_owned());
                    } else {
                        self.scrub(v);
                    }
                }
            }
            Value::List(items) => items.iter_mut().for_each(|v| self.scrub(v)),
            _ => {}
        }
    }

    /// This list changed by a `SONDE_AGENT_REDACT` value: comma-separated names are added, or,
    /// after `only:`, replace it (`only:` alone redacts nothing by name).
    pub fn apply_env(self, value: &str) -> Self {
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        match value.trim().strip_prefix("only:") {
            Some(rest) => Self::new(list(rest)),
            None => self.with(list(value)),
        }
    }
}

/// Lower case without separators.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The lower-cased words of a name: split at non-alphanumerics and at a lower-case letter or
/// digit followed by an upper-case one.
fn words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

static CURRENT: LazyLock<ArcSwap<Redaction>> =
    LazyLock::new(|| ArcSwap::from_pointee(Redaction::default()));

/// The process's list.
pub(crate) fn current() -> Arc<Redaction> {
    CURRENT.load_full()
}

/// Sets the process's list (the agent does, at start).
pub(crate) fn set(redaction: Redaction) {
    CURRENT.store(Arc::new(redaction));
}

/// Whether `name` is redacted by the process's list.
pub(crate) fn is_redacted(name: &str) -> bool {
    CURRENT.load().is_redacted(name)
}

/// Scrubs a value read whole, with the process's list (see [`Redaction::scrub`]).
#[inline]
pub(crate) fn scrub(value: &mut Value) {
    if matches!(value, Value::Record(_) | Value::Map(_) | Value::List(_)) {
        CURRENT.load().scrub(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_case_and_separators_aside() {
        let r = Redaction::default();
        for name in [
            "password",
            "PASSWORD",
            "user_password",
            "accessToken",
            "ACCESS-TOKEN",
            "apiKey",
            "API_KEY",
            "my_api_key_id",
            "sessionId",
            "Authorization",
            "creditCardNumber",
            "x.cvv",
        ] {
            assert!(r.is_redacted(name), "{name}");
        }
        for name in [
            "tokenizer",
            "passwords_count",
            "user",
            "country",
            "sessions",
            "",
        ] {
            assert!(!r.is_redacted(name), "{name}");
        }
        assert_eq!(r.matches("my_api_key"), Some("apikey"));
    }

    #[test]
    fn the_ascii_path_agrees_with_the_general_one() {
        let r = Redaction::default().with(["pin", "date_of_birth"]);
        for name in [
            "password",
            "user_password",
            "accessToken",
            "ACCESS_TOKEN",
            "XMLToken",
            "token2",
            "my_api_key_id",
            "apikeys",
            "api",
            "key",
            "dateOfBirth",
            "date-of-birth-x",
            "pinCode",
            "spin",
            "__cvv__",
            "a.b.c",
            "",
            "_",
            "CreditCard",
            "credit_cards",
            "ssn1",
        ] {
            assert_eq!(r.matches(name), r.matches_words(name), "{name}");
        }
    }

    #[test]
    fn env_value_extends_or_replaces() {
        let r = Redaction::default().apply_env("pin, date-of-birth");
        assert!(r.is_redacted("pin") && r.is_redacted("dateOfBirth") && r.is_redacted("token"));
        let r = Redaction::default().apply_env("only:pin");
        assert!(r.is_redacted("PIN") && !r.is_redacted("password"));
        assert!(
            !Redaction::default()
                .apply_env("only:")
                .is_redacted("password")
        );
    }

    #[test]
    fn scrub_replaces_at_any_depth() {
        let mut v = Value::Record(vec![
            ("name".into(), Value::Str("ann".into())),
            ("password".into(), Value::Str("hunter2".into())),
            (
                "headers".into(),
                Value::Map(
                    [
                        ("Cookie".to_owned(), Value::Str("c=1".into())),
                        ("accept".to_owned(), Value::Str("*/*".into())),
                    ]
                    .into(),
                ),
            ),
        ]);
        Redaction::default().scrub(&mut v);
        let text = format!("{v:?}");
        assert!(!text.contains("hunter2") && !text.contains("c=1"), "{text}");
        assert!(text.contains("ann") && text.contains("*/*"), "{text}");
    }
}
