//! [`Auth`]: who may do what. API tokens for people and tools, agent credentials for agents.
//!
//! - API (HTTP and `sonde.v1.TracepointService`): with no token configured, everything is open.
//!   With `--admin-token` and/or `--read-token`, every request needs `Authorization: Bearer <t>`:
//!   the admin token allows reads and writes, the read token reads only.
//! - Agents (poll, watch, status, snapshots): with `--agent-token`, `authorization: Bearer <t>`;
//!   with `--agent-basic user:pass`, HTTP basic (`Basic <b64>`, and Deep's `Basic%20<b64>` /
//!   `basic%20<b64>`). Admin tokens are accepted from agents too. With neither, agents are open.
//!
//! Tokens are compared in constant time.

use base64::Engine as _;

use super::config::ServerConfig;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read tracepoints, agents, snapshots.
    Read,
    /// Create, edit or delete tracepoints.
    Write,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential, or one that is not valid here.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// A valid credential that does not allow this (a read token used to write).
    #[error("this token may only read")]
    Forbidden,
}

/// The configured credentials.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    admin: Option<String>,
    read: Option<String>,
    agent: Option<String>,
    /// `base64(user:pass)`, as sent after `Basic `.
    agent_basic: Option<String>,
}

impl Auth {
    /// From the server's flags.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            admin: config.admin_token.clone().filter(|t| !t.is_empty()),
            read: config.read_token.clone().filter(|t| !t.is_empty()),
            agent: config.agent_token.clone().filter(|t| !t.is_empty()),
            agent_basic: config
                .agent_basic
                .as_deref()
                .filter(|b| !b.is_empty())
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }

    /// Checks an API request's `Authorization` header value.
    pub fn api(&self, authorization: Option<&str>, access: Access) -> Result<(), Denied> {
        if self.admin.is_none() && self.read.is_none() {
            return Ok(());
        }
        let token = authorization
            .and_then(bearer)
            .ok_or(Denied::Unauthenticated)?;
        if self.admin.as_deref().is_some_and(|a| ct_eq(a, token)) {
            return Ok(());
        }
        if self.read.as_deref().is_some_and(|r| ct_eq(r, token)) {
            return match access {
                Access::Read => Ok(()),
                Access::Write => Err(Denied::Forbidden),
            };
        }
        Err(Denied::Unauthenticated)
    }

    /// Checks an agent's `authorization` metadata.
    pub fn agent(&self, authorization: Option<&str>) -> Result<(), Denied> {
        if self.agent.is_none() && self.agent_basic.is_none() {
            return Ok(());
        }
        let value = authorization.ok_or(Denied::Unauthenticated)?;
        if let Some(token) = bearer(value) {
            let ok = [self.agent.as_deref(), self.admin.as_deref()]
                .into_iter()
                .flatten()
                .any(|t| ct_eq(t, token));
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
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
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
        Auth::from_config(&config)
    }

    #[test]
    fn no_tokens_means_open() {
        let a = auth(None, None, None, None);
        assert_eq!(a.api(None, Access::Write), Ok(()));
        assert_eq!(a.agent(None), Ok(()));
    }

    #[test]
    fn admin_writes_read_token_only_reads() {
        let a = auth(Some("adm"), Some("rd"), None, None);
        assert_eq!(a.api(Some("Bearer adm"), Access::Write), Ok(()));
        assert_eq!(a.api(Some("bearer rd"), Access::Read), Ok(()));
        assert_eq!(
            a.api(Some("Bearer rd"), Access::Write),
            Err(Denied::Forbidden)
        );
        assert_eq!(a.api(None, Access::Read), Err(Denied::Unauthenticated));
        assert_eq!(
            a.api(Some("Bearer nope"), Access::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            a.api(Some("adm"), Access::Read),
            Err(Denied::Unauthenticated),
            "scheme required"
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
