//! [`Auth`]: who may do what. Named API tokens with roles for people and tools, agent credentials
//! for agents.
//!
//! - API (HTTP and `sonde.v1.TracepointService`): with no token configured (no `--token`,
//!   `--admin-token`, `--read-token` or `--tokens-file`), everything is open and the audit log says
//!   `anonymous`. Otherwise every request needs `Authorization: Bearer <secret>` of a known token
//!   (401 without), whose [`Role`] must grant what the request needs (403 naming the role it
//!   lacks), and a token bound to a tenant acts only there (403 elsewhere; its tenant is the
//!   default when the request names none). `--admin-token` and `--read-token` are the unnamed
//!   tokens `(admin-token)` and `(read-token)` of roles `admin` and `read`.
//! - A tokens file keeps auth on even when it is empty: revoking every token must not open the
//!   API. [`Auth::reload`] re-reads it (SIGHUP); a bad file leaves the tokens in force.
//! - Agents (poll, watch, status, snapshots): with `--agent-token`, `authorization: Bearer <t>`;
//!   with `--agent-basic user:pass`, HTTP basic (`Basic <b64>`, and Deep's `Basic%20<b64>` /
//!   `basic%20<b64>`). `--admin-token` is accepted from agents too. With neither, agents are open.
//!   Agent credentials are separate from API tokens, so reloading the tokens file never touches
//!   a connected agent.
//!
//! Secrets are compared in constant time (see [`super::tokens`]).

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::{
    DEFAULT_TENANT,
    config::ServerConfig,
    tokens::{self, ApiToken, BadToken, Role, SecretHash, TokensFileError},
};

/// Who the audit log names when the API has no tokens.
pub const ANONYMOUS: &str = "anonymous";
/// Who the audit log names for a refused request that sent no token.
pub const NO_TOKEN: &str = "(no token)";
/// Who the audit log names for a refused request whose token is not known.
pub const UNKNOWN_TOKEN: &str = "(unknown token)";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential, or one that is not valid here.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// A valid token whose role does not grant what the request needs.
    #[error("token {who:?} has role {role}; this needs role {needs}")]
    Forbidden {
        /// The token's name.
        who: String,
        /// Its role.
        role: Role,
        /// The role the request needs.
        needs: Role,
    },
    /// A token bound to one tenant used in another.
    #[error("token {who:?} is bound to tenant {bound:?} and cannot act in {requested:?}")]
    OtherTenant {
        /// The token's name.
        who: String,
        /// Its tenant.
        bound: String,
        /// The tenant the request named.
        requested: String,
    },
}

/// A refused API request: why, and what the audit log records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub denied: Denied,
    /// The token's name, or [`NO_TOKEN`] / [`UNKNOWN_TOKEN`].
    pub who: String,
    /// The tenant the request was for.
    pub tenant: String,
}

/// An allowed API request's caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or [`ANONYMOUS`].
    pub who: String,
    /// The token's role; `None` when the API has no tokens (everything is allowed).
    pub role: Option<Role>,
    /// The tenant the request acts in.
    pub tenant: String,
}

impl Caller {
    /// Whether the caller holds every permission (an admin token, or no tokens at all).
    pub fn is_admin(&self) -> bool {
        self.role.is_none_or(|r| r == Role::Admin)
    }
}

/// Why the configured tokens are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// A `--token` value.
    #[error("--token #{index}{}: {error}", name.as_deref().map(|n| format!(" ({n:?})")).unwrap_or_default())]
    Flag {
        /// 1-based position among the `--token` values.
        index: usize,
        /// The token's name, when it could be read.
        name: Option<String>,
        /// What is wrong.
        error: BadToken,
    },
    /// The tokens file.
    #[error(transparent)]
    File(#[from] TokensFileError),
    /// Two tokens share a name.
    #[error(
        "token name {0:?} is used twice (names are unique over --token, --admin-token, --read-token and the tokens file)"
    )]
    Duplicate(String),
    /// SIGHUP without `--tokens-file`.
    #[error("no --tokens-file to reload")]
    NoFile,
}

/// The configured credentials.
#[derive(Debug)]
pub struct Auth {
    /// Tokens from flags; they do not change.
    fixed: Vec<ApiToken>,
    file: Option<PathBuf>,
    /// `fixed` followed by the file's tokens, swapped whole on reload.
    api: RwLock<Arc<[ApiToken]>>,
    /// Whether the API needs a token at all.
    enabled: bool,
    /// `--admin-token`, also accepted from agents.
    legacy_admin: Option<SecretHash>,
    agent: Option<String>,
    /// `base64(user:pass)`, as sent after `Basic `.
    agent_basic: Option<String>,
}

impl Auth {
    /// From the server's flags (and the tokens file they name).
    pub fn from_config(config: &ServerConfig) -> Result<Self, TokensError> {
        let mut fixed = Vec::new();
        let mut legacy_admin = None;
        if let Some(secret) = config.admin_token.as_deref().filter(|t| !t.is_empty()) {
            let hash = SecretHash::new(secret);
            legacy_admin = Some(hash.clone());
            fixed.push(ApiToken {
                name: "(admin-token)".into(),
                role: Role::Admin,
                tenant: None,
                secret: hash,
            });
        }
        if let Some(secret) = config.read_token.as_deref().filter(|t| !t.is_empty()) {
            fixed.push(ApiToken {
                name: "(read-token)".into(),
                role: Role::Read,
                tenant: None,
                secret: SecretHash::new(secret),
            });
        }
        for (i, spec) in config.tokens.iter().enumerate() {
            let token = tokens::parse_token(spec, false).map_err(|error| TokensError::Flag {
                index: i + 1,
                name: spec
                    .split_once(':')
                    .map(|(n, _)| n.to_owned())
                    .filter(|n| !n.is_empty() && error.field != "name"),
                error,
            })?;
            if fixed.iter().any(|t| t.name == token.name) {
                return Err(TokensError::Duplicate(token.name));
            }
            fixed.push(token);
        }
        let mut auth = Self {
            enabled: !fixed.is_empty() || config.tokens_file.is_some(),
            api: RwLock::new(Arc::from(fixed.clone())),
            fixed,
            file: config.tokens_file.clone(),
            legacy_admin,
            agent: config.agent_token.clone().filter(|t| !t.is_empty()),
            agent_basic: config
                .agent_basic
                .as_deref()
                .filter(|b| !b.is_empty())
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        };
        if auth.file.is_some() {
            let all = auth.read_file()?;
            auth.api = RwLock::new(all);
        }
        Ok(auth)
    }

    fn read_file(&self) -> Result<Arc<[ApiToken]>, TokensError> {
        let path = self.file.as_ref().ok_or(TokensError::NoFile)?;
        let from_file = tokens::read_tokens_file(path)?;
        if let Some(dup) = from_file
            .iter()
            .find(|t| self.fixed.iter().any(|f| f.name == t.name))
        {
            return Err(TokensError::Duplicate(dup.name.clone()));
        }
        Ok(self.fixed.iter().cloned().chain(from_file).collect())
    }

    /// Re-reads the tokens file; on success the new tokens apply to the next request, and the
    /// number of tokens now in force is returned. On error nothing changes.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let all = self.read_file()?;
        let count = all.len();
        *self.api.write().unwrap_or_else(|p| p.into_inner()) = all;
        Ok(count)
    }

    /// Checks an API request: its `Authorization` header value, the tenant it names (already
    /// validated; `None` when it names none), and the role it needs.
    pub fn api(
        &self,
        authorization: Option<&str>,
        requested: Option<&str>,
        needs: Role,
    ) -> Result<Caller, Refusal> {
        let requested_or_default = || requested.unwrap_or(DEFAULT_TENANT).to_owned();
        if !self.enabled {
            return Ok(Caller {
                who: ANONYMOUS.into(),
                role: None,
                tenant: requested_or_default(),
            });
        }
        let refuse = |denied, who: &str, tenant: String| Refusal {
            denied,
            who: who.to_owned(),
            tenant,
        };
        let Some(secret) = authorization.and_then(bearer) else {
            return Err(refuse(
                Denied::Unauthenticated,
                NO_TOKEN,
                requested_or_default(),
            ));
        };
        let tokens = self.api.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Every token is checked, so the time taken does not say which one matched.
        let mut found: Option<&ApiToken> = None;
        for t in tokens.iter() {
            if t.secret.matches(secret) && found.is_none() {
                found = Some(t);
            }
        }
        let Some(token) = found else {
            return Err(refuse(
                Denied::Unauthenticated,
                UNKNOWN_TOKEN,
                requested_or_default(),
            ));
        };
        let tenant = match (&token.tenant, requested) {
            (Some(bound), Some(asked)) if bound != asked => {
                return Err(refuse(
                    Denied::OtherTenant {
                        who: token.name.clone(),
                        bound: bound.clone(),
                        requested: asked.to_owned(),
                    },
                    &token.name,
                    asked.to_owned(),
                ));
            }
            (Some(bound), _) => bound.clone(),
            (None, _) => requested_or_default(),
        };
        if !token.role.grants(needs) {
            return Err(refuse(
                Denied::Forbidden {
                    who: token.name.clone(),
                    role: token.role,
                    needs,
                },
                &token.name,
                tenant,
            ));
        }
        Ok(Caller {
            who: token.name.clone(),
            role: Some(token.role),
            tenant,
        })
    }

    /// Checks an agent's `authorization` metadata.
    pub fn agent(&self, authorization: Option<&str>) -> Result<(), Denied> {
        if self.agent.is_none() && self.agent_basic.is_none() {
            return Ok(());
        }
        let value = authorization.ok_or(Denied::Unauthenticated)?;
        if let Some(token) = bearer(value) {
            let ok = self.agent.as_deref().is_some_and(|t| ct_eq(t, token))
                | self.legacy_admin.as_ref().is_some_and(|h| h.matches(token));
            return if ok {
                Ok(())
            } else {
                Err(Denied::Unauthenticated)
            };
        }
        if let (Some(expected), Some(given)) = (self.agent_basic.as_deref(), basic(value))
            && ct_eq(expected, given)
        {
            return Ok(());
        }
        Err(Denied::Unauthenticated)
    }
}

fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let value = value.trim();
    let head = value.get(..scheme.len())?;
    if !head.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = &value[scheme.len()..];
    rest.strip_prefix(' ')
        .or_else(|| rest.strip_prefix("%20"))
        .map(str::trim)
}

fn bearer(value: &str) -> Option<&str> {
    strip_scheme(value, "bearer").filter(|t| !t.is_empty())
}

fn basic(value: &str) -> Option<&str> {
    strip_scheme(value, "basic").filter(|t| !t.is_empty())
}

/// Constant-time comparison (for equal lengths; the length itself is not secret here).
fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(
        admin: Option<&str>,
        read: Option<&str>,
        agent: Option<&str>,
        basic: Option<&str>,
    ) -> Auth {
        let mut config = ServerConfig::ephemeral("unused");
        config.admin_token = admin.map(Into::into);
        config.read_token = read.map(Into::into);
        config.agent_token = agent.map(Into::into);
        config.agent_basic = basic.map(Into::into);
        Auth::from_config(&config).unwrap()
    }

    fn named(tokens: &[&str]) -> Auth {
        let mut config = ServerConfig::ephemeral("unused");
        config.tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
        Auth::from_config(&config).unwrap()
    }

    #[test]
    fn no_tokens_means_open_and_anonymous() {
        let a = auth(None, None, None, None);
        let caller = a.api(None, None, Role::Admin).unwrap();
        assert_eq!(caller.who, ANONYMOUS);
        assert_eq!(caller.tenant, DEFAULT_TENANT);
        assert!(caller.is_admin());
        assert_eq!(a.agent(None), Ok(()));
    }

    #[test]
    fn admin_writes_read_token_only_reads() {
        let a = auth(Some("adm"), Some("rd"), None, None);
        assert_eq!(
            a.api(Some("Bearer adm"), None, Role::Write).unwrap().who,
            "(admin-token)"
        );
        assert_eq!(
            a.api(Some("bearer rd"), None, Role::Read).unwrap().who,
            "(read-token)"
        );
        let refused = a.api(Some("Bearer rd"), None, Role::Write).unwrap_err();
        assert!(matches!(
            refused.denied,
            Denied::Forbidden {
                needs: Role::Write,
                ..
            }
        ));
        assert_eq!(refused.who, "(read-token)");
        let refused = a.api(None, None, Role::Read).unwrap_err();
        assert_eq!(
            (refused.denied, refused.who.as_str()),
            (Denied::Unauthenticated, NO_TOKEN)
        );
        let refused = a.api(Some("Bearer nope"), None, Role::Read).unwrap_err();
        assert_eq!(refused.who, UNKNOWN_TOKEN);
        assert_eq!(
            a.api(Some("adm"), None, Role::Read).unwrap_err().denied,
            Denied::Unauthenticated,
            "scheme required"
        );
    }

    #[test]
    fn named_tokens_have_roles_and_tenants() {
        let a = named(&["w:write:ws", "c:capture:cs", "t:write@team-a:ts"]);
        let err = a.api(Some("Bearer ws"), None, Role::Capture).unwrap_err();
        assert_eq!(
            err.denied.to_string(),
            "token \"w\" has role write; this needs role capture"
        );
        assert!(a.api(Some("Bearer cs"), None, Role::Capture).is_ok());
        assert!(a.api(Some("Bearer cs"), None, Role::Write).is_err());
        let caller = a.api(Some("Bearer ts"), None, Role::Write).unwrap();
        assert_eq!(
            caller.tenant, "team-a",
            "a bound token's tenant is its default"
        );
        assert!(
            a.api(Some("Bearer ts"), Some("team-a"), Role::Write)
                .is_ok()
        );
        let err = a
            .api(Some("Bearer ts"), Some("team-b"), Role::Read)
            .unwrap_err();
        assert!(matches!(err.denied, Denied::OtherTenant { .. }));
        assert_eq!(err.tenant, "team-b");
    }

    #[test]
    fn bad_flags_name_the_token_and_duplicates_are_refused() {
        let mut config = ServerConfig::ephemeral("unused");
        config.tokens = vec!["a:read:x".into(), "bob:boss:secret-value".into()];
        let err = Auth::from_config(&config).unwrap_err().to_string();
        assert!(err.starts_with("--token #2 (\"bob\"): role:"), "{err}");
        assert!(!err.contains("secret-value"), "{err}");
        config.tokens = vec!["a:read:x".into(), "a:write:y".into()];
        assert!(matches!(
            Auth::from_config(&config),
            Err(TokensError::Duplicate(_))
        ));
    }

    #[test]
    fn an_empty_tokens_file_keeps_the_api_closed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# nobody yet\n").unwrap();
        let mut config = ServerConfig::ephemeral("unused");
        config.tokens_file = Some(file.clone());
        let a = Auth::from_config(&config).unwrap();
        assert!(a.api(None, None, Role::Read).is_err());
        std::fs::write(&file, "x:read:s\n").unwrap();
        assert_eq!(a.reload().unwrap(), 1);
        assert!(a.api(Some("Bearer s"), None, Role::Read).is_ok());
        std::fs::write(&file, "x:read:s\ny:reed:t\n").unwrap();
        let err = a.reload().unwrap_err().to_string();
        assert!(err.contains("line 2: role"), "{err}");
        assert!(
            a.api(Some("Bearer s"), None, Role::Read).is_ok(),
            "a bad file keeps the old tokens"
        );
    }

    #[test]
    fn deep_basic_forms_are_accepted() {
        let a = auth(None, None, None, Some("user:pass"));
        let b64 = base64::engine::general_purpose::STANDARD.encode("user:pass");
        for header in [
            format!("Basic {b64}"),
            format!("Basic%20{b64}"),
            format!("basic%20{b64}"),
        ] {
            assert_eq!(a.agent(Some(&header)), Ok(()), "{header}");
        }
        let wrong = base64::engine::general_purpose::STANDARD.encode("user:nope");
        assert_eq!(
            a.agent(Some(&format!("Basic%20{wrong}"))),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(a.agent(None), Err(Denied::Unauthenticated));
    }

    #[test]
    fn agent_tokens_are_bearer() {
        let a = auth(Some("adm"), None, Some("agt"), None);
        assert_eq!(a.agent(Some("Bearer agt")), Ok(()));
        assert_eq!(a.agent(Some("Bearer adm")), Ok(()));
        assert_eq!(a.agent(Some("Bearer x")), Err(Denied::Unauthenticated));
    }
}
