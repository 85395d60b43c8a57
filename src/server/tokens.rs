//! [`ApiToken`]: a named API credential with a [`Role`], perhaps bound to one tenant, and the
//! parsers of its two spellings (`--token NAME:ROLE[@TENANT]:SECRET` and a tokens file).
//!
//! # Secrets are kept as salted SHA-256
//! Every secret, whether given in clear (flags, or a file line) or as the file's
//! `hash:sha256:<salt>:<digest>` form, is held in memory only as `SHA-256(salt ‖ secret)` with a
//! 16-byte random salt; a request's token is hashed with each salt and the digests compared in
//! constant time (`subtle`). A fast salted hash rather than argon2 because API tokens are random
//! machine secrets (`sonde token new` makes 256-bit ones), not passwords people choose: nobody can
//! search a 2^128 space however fast the hash, so a slow KDF would buy nothing but a few
//! milliseconds of CPU on every API request and a new crate to build. The salt keeps equal secrets
//! from having equal hashes and defeats precomputed tables for the weak secrets someone may still
//! type in. SHA-256 comes from `ring`, already in the graph for rustls.
//!
//! # Tokens file
//! One token per line, `NAME:ROLE[@TENANT]:SECRET` or `NAME:ROLE[@TENANT]:hash:sha256:SALT:DIGEST`
//! (hex); blank lines and lines starting with `#` are ignored. Names are unique over the flags and
//! the file. A bad line refuses the whole file, naming the line and the field.

use std::{fmt, path::Path};

use subtle::ConstantTimeEq as _;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read tracepoints, agents and the tenant's audit log.
    Read,
    /// Read, and create, edit and delete tracepoints.
    Write,
    /// Read, and read snapshots (which hold production values).
    Capture,
    /// Everything, in every tenant's audit log too.
    Admin,
}

impl Role {
    /// Every role, in the order the help text lists them.
    pub const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Capture, Role::Admin];

    /// The role's name, as written in `--token` and the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Capture => "capture",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role holds the permissions of `needed`.
    pub fn grants(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Write => matches!(needed, Role::Read | Role::Write),
            Role::Capture => matches!(needed, Role::Read | Role::Capture),
            Role::Read => needed == Role::Read,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: use read, write, capture or admin"))
    }
}

/// `SHA-256(salt ‖ secret)` and its salt.
#[derive(Clone)]
pub struct SecretHash {
    salt: [u8; 16],
    digest: [u8; 32],
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

const HASH_PREFIX: &str = "hash:sha256:";

impl SecretHash {
    /// Hashes a secret under a fresh random salt.
    pub fn new(secret: &str) -> Self {
        let mut salt = [0u8; 16];
        random(&mut salt);
        Self {
            digest: digest(&salt, secret),
            salt,
        }
    }

    /// Parses `hash:sha256:<32 hex salt>:<64 hex digest>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix(HASH_PREFIX).ok_or_else(|| {
            "a hashed secret is hash:sha256:SALT:DIGEST (make one with `sonde token hash`)"
                .to_owned()
        })?;
        let (salt, digest) = rest
            .split_once(':')
            .ok_or_else(|| "hash:sha256: needs SALT:DIGEST, both hex".to_owned())?;
        Ok(Self {
            salt: unhex(salt).ok_or_else(|| "the salt is not 32 hex digits".to_owned())?,
            digest: unhex(digest).ok_or_else(|| "the digest is not 64 hex digits".to_owned())?,
        })
    }

    /// The `hash:sha256:SALT:DIGEST` form, for a tokens file.
    pub fn encode(&self) -> String {
        format!("{HASH_PREFIX}{}:{}", hex(&self.salt), hex(&self.digest))
    }

    /// Whether `secret` hashes to this digest (constant time in the digest).
    pub fn matches(&self, secret: &str) -> bool {
        bool::from(digest(&self.salt, secret).ct_eq(&self.digest))
    }
}

fn digest(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Fills `buf` from the operating system's generator.
pub fn random(buf: &mut [u8]) {
    use ring::rand::SecureRandom as _;
    // The system generator failing is not something the server can work around.
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random generator works");
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// One API credential.
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// Who, in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The only tenant it may act in, if bound.
    pub tenant: Option<String>,
    /// The secret, hashed.
    pub secret: SecretHash,
}

/// A token spelling that could not be read: which field, and why. It never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadToken {
    /// `name`, `role`, `tenant` or `secret`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> BadToken {
    BadToken {
        field,
        message: message.into(),
    }
}

/// Longest token name.
const MAX_NAME: usize = 64;

/// Whether `name` is a legal token name: 1 to 64 of `[A-Za-z0-9_.-]`, and not `anonymous` (the
/// name the audit log gives requests when the API has no tokens).
fn check_name(name: &str) -> Result<(), BadToken> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("name", "must be 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return Err(bad(
            "name",
            format!("{name:?} contains {c:?}: use letters, digits, '_', '.' and '-'"),
        ));
    }
    if name == super::auth::ANONYMOUS {
        return Err(bad(
            "name",
            "\"anonymous\" is reserved for requests without a token",
        ));
    }
    Ok(())
}

/// Parses `NAME:ROLE[@TENANT]:SECRET`; with `allow_hash`, SECRET may be the
/// `hash:sha256:SALT:DIGEST` form (the tokens file's).
pub fn parse_token(spec: &str, allow_hash: bool) -> Result<ApiToken, BadToken> {
    let mut parts = spec.splitn(3, ':');
    let name = parts.next().unwrap_or_default().trim();
    let (Some(role), Some(secret)) = (parts.next(), parts.next()) else {
        return Err(bad(
            "format",
            "expected NAME:ROLE[@TENANT]:SECRET (e.g. alice:write@team-a:s3cret)",
        ));
    };
    check_name(name)?;
    let (role, tenant) = match role.trim().split_once('@') {
        Some((role, tenant)) => {
            let tenant = super::tenant_from(Some(tenant))
                .ok()
                .filter(|t| !tenant.trim().is_empty() && t == tenant.trim())
                .ok_or_else(|| {
                    bad(
                        "tenant",
                        format!("{tenant:?} is not a tenant name (1 to 150 of letters, digits and !-_.*'())"),
                    )
                })?;
            (role, Some(tenant))
        }
        None => (role.trim(), None),
    };
    let role: Role = role.parse().map_err(|m: String| bad("role", m))?;
    let secret = secret.trim();
    let secret = if secret.starts_with("hash:") {
        if !allow_hash {
            return Err(bad(
                "secret",
                "the hash: form is for the tokens file; on the command line give the secret",
            ));
        }
        SecretHash::parse(secret).map_err(|m| bad("secret", m))?
    } else if secret.is_empty() {
        return Err(bad("secret", "is empty"));
    } else {
        SecretHash::new(secret)
    };
    Ok(ApiToken {
        name: name.to_owned(),
        role,
        tenant,
        secret,
    })
}

/// Why a tokens file was refused; the tokens in force stay as they were.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// The file could not be read.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a token.
    #[error("tokens file {path} line {line}: {error}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        error: BadToken,
    },
}

/// Reads a tokens file.
pub fn read_tokens_file(path: &Path) -> Result<Vec<ApiToken>, TokensFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokensFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_tokens_file(&text).map_err(|(line, error)| TokensFileError::Line {
        path: path.display().to_string(),
        line,
        error,
    })
}

/// Parses the text of a tokens file; a bad line gives its 1-based number.
pub fn parse_tokens_file(text: &str) -> Result<Vec<ApiToken>, (usize, BadToken)> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = parse_token(line, true).map_err(|e| (i + 1, e))?;
        if tokens.iter().any(|t| t.name == token.name) {
            return Err((
                i + 1,
                bad("name", format!("{:?} is named twice", token.name)),
            ));
        }
        tokens.push(token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_spec_parses_with_and_without_a_tenant() {
        let t = parse_token("alice:write@team-a:s3c:ret", false).unwrap();
        assert_eq!(
            (t.name.as_str(), t.role, t.tenant.as_deref()),
            ("alice", Role::Write, Some("team-a"))
        );
        assert!(t.secret.matches("s3c:ret"), "the secret may hold ':'");
        assert!(!t.secret.matches("s3c:ret "));
        let t = parse_token("ops:admin:x", false).unwrap();
        assert_eq!((t.role, t.tenant), (Role::Admin, None));
    }

    #[test]
    fn bad_specs_name_the_field_and_not_the_secret() {
        for (spec, field) in [
            ("alice", "format"),
            ("alice:write", "format"),
            (":write:x", "name"),
            ("al ice:write:x", "name"),
            ("anonymous:read:x", "name"),
            ("alice:reed:x", "role"),
            ("alice:write@:x", "tenant"),
            ("alice:write@a/b:x", "tenant"),
            ("alice:write:", "secret"),
            ("alice:write:hash:sha256:00:00", "secret"),
        ] {
            let err = parse_token(spec, false).unwrap_err();
            assert_eq!(err.field, field, "{spec}: {err}");
        }
        for spec in [
            "bob:boss:topsecret",
            "b b:read:topsecret",
            "bob:read@/:topsecret",
        ] {
            let err = parse_token(spec, false).unwrap_err().to_string();
            assert!(!err.contains("topsecret"), "{err}");
        }
    }

    #[test]
    fn hashed_secrets_round_trip_and_compare() {
        let h = SecretHash::new("correct horse");
        let line = format!("bob:capture:{}", h.encode());
        let t = parse_token(&line, true).unwrap();
        assert!(t.secret.matches("correct horse"));
        assert!(!t.secret.matches("correct hors"));
        assert_ne!(
            SecretHash::new("same").encode(),
            SecretHash::new("same").encode(),
            "salted"
        );
        let err = parse_token("bob:read:hash:sha256:zz:00", true).unwrap_err();
        assert_eq!(err.field, "secret");
    }

    #[test]
    fn a_file_skips_comments_and_names_the_bad_line() {
        let tokens = parse_tokens_file("# team\n\nalice:read:a\n  bob:write@t:b  \n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].tenant.as_deref(), Some("t"));
        let (line, err) = parse_tokens_file("alice:read:a\n\nbob:boss:b\n").unwrap_err();
        assert_eq!((line, err.field), (3, "role"));
        let (line, err) = parse_tokens_file("alice:read:a\nalice:write:b\n").unwrap_err();
        assert_eq!((line, err.field), (2, "name"));
    }

    #[test]
    fn roles_grant_what_the_issue_says() {
        use Role::*;
        assert!(Write.grants(Read) && Write.grants(Write) && !Write.grants(Capture));
        assert!(Capture.grants(Read) && Capture.grants(Capture) && !Capture.grants(Write));
        assert!(!Read.grants(Write) && !Read.grants(Capture) && !Read.grants(Admin));
        assert!(Role::ALL.iter().all(|r| Admin.grants(*r)));
    }
}
