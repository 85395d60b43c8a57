//! [`ServerConfig`]: every setting of `sonde server`, each a flag and a `SONDE_*` variable.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::validate::Limits;

/// Settings of `sonde server`. Every flag can also be given as the environment variable named in
/// its help (flags win).
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on. The default keeps the server on this machine; `0.0.0.0` exposes it.
    #[arg(long, env = "SONDE_LISTEN", default_value = "127.0.0.1")]
    pub listen: IpAddr,

    /// Port of the gRPC API for agents (Deep's poll, Sonde's watch and status). 0 picks a free one.
    #[arg(long, env = "SONDE_GRPC_PORT", default_value_t = 43315)]
    pub grpc_port: u16,

    /// Port of the HTTP API for people and tools (Deep's routes and Sonde's). 0 picks a free one.
    #[arg(long, env = "SONDE_HTTP_PORT", default_value_t = 3300)]
    pub http_port: u16,

    /// Directory of the durable store (created if missing). Unused with --database-url.
    #[arg(long, env = "SONDE_DATA_DIR", default_value = "./sonde-data")]
    pub data_dir: PathBuf,

    /// PostgreSQL to keep tracepoints, the audit log and the agents list in instead of SQLite
    /// (`postgres://USER:PASSWORD@HOST:PORT/DBNAME`), so that several replicas serve as one
    /// server. Plain connections (no TLS to the database).
    #[arg(
        long,
        env = "SONDE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// An API token, `NAME:ROLE[@TENANT]:SECRET` (repeatable). ROLE is `read` (tracepoints, agents,
    /// the tenant's audit log), `write` (read + create, edit, delete), `capture` (read +
    /// snapshots, which hold production values) or `admin` (everything, and every tenant's audit
    /// log); @TENANT binds the token to one tenant. NAME is who the audit log names. When any
    /// token is set (here, in --tokens-file, --admin-token or --read-token), every API request
    /// needs one. In the environment variable, separate tokens with `,`.
    #[arg(
        long = "token",
        env = "SONDE_API_TOKENS",
        value_name = "NAME:ROLE[@TENANT]:SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub tokens: Vec<String>,

    /// A file of API tokens, one `NAME:ROLE[@TENANT]:SECRET` per line (`#` starts a comment). SECRET
    /// may be `hash:sha256:SALT:DIGEST` (`sonde token hash` makes it), so the file need not hold
    /// secrets. Re-read on SIGHUP; a bad file keeps the tokens in force and logs why. Its
    /// presence alone closes the API: an empty file refuses every request.
    #[arg(long, env = "SONDE_TOKENS_FILE", value_name = "PATH")]
    pub tokens_file: Option<PathBuf>,

    /// An unnamed token of role `admin` (the audit log calls it `(admin-token)`); also accepted
    /// from agents.
    #[arg(long, env = "SONDE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// An unnamed token of role `read` (the audit log calls it `(read-token)`).
    #[arg(long, env = "SONDE_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Bearer token agents must send in `authorization` metadata. Unset (and no --agent-basic):
    /// agents need no credential.
    #[arg(long, env = "SONDE_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// `user:password` agents may send as HTTP basic credentials (Deep's agents send
    /// `Basic%20<base64>`).
    #[arg(long, env = "SONDE_AGENT_BASIC", hide_env_values = true)]
    pub agent_basic: Option<String>,

    /// PEM certificate chain; with --tls-key, both ports serve TLS.
    #[arg(long, env = "SONDE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching --tls-cert.
    #[arg(long, env = "SONDE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest HTTP request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "SONDE_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Most tracepoints one tenant may hold.
    #[arg(long, env = "SONDE_MAX_TRACEPOINTS_PER_TENANT", default_value_t = 1000)]
    pub max_tracepoints_per_tenant: usize,

    /// Snapshots kept per tracepoint (the latest ones).
    #[arg(long, env = "SONDE_SNAPSHOTS_PER_TRACEPOINT", default_value_t = 10)]
    pub snapshots_per_tracepoint: usize,

    /// An agent is listed while it polled within this many seconds (or holds a watch).
    #[arg(long, env = "SONDE_AGENT_TTL_SECS", default_value_t = 60)]
    pub agent_ttl_secs: u64,

    /// Seconds between keep-alive messages on an idle watch stream.
    #[arg(long, env = "SONDE_WATCH_HEARTBEAT_SECS", default_value_t = 30)]
    pub watch_heartbeat_secs: u64,

    /// Days the audit log keeps an entry (every create, edit, delete and refused API request).
    #[arg(long, env = "SONDE_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u64,

    /// Log format.
    #[arg(long, env = "SONDE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the server writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServerConfig {
    /// A configuration for tests and embedding: loopback, ephemeral ports, the given data
    /// directory, no tokens, no TLS, default limits.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: IpAddr::from([127, 0, 0, 1]),
            grpc_port: 0,
            http_port: 0,
            data_dir: data_dir.into(),
            database_url: None,
            tokens: Vec::new(),
            tokens_file: None,
            admin_token: None,
            read_token: None,
            agent_token: None,
            agent_basic: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 64 * 1024,
            max_tracepoints_per_tenant: 1000,
            snapshots_per_tracepoint: 10,
            agent_ttl_secs: 60,
            watch_heartbeat_secs: 30,
            audit_retention_days: 90,
            log_format: LogFormat::Text,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_tracepoints_per_tenant: self.max_tracepoints_per_tenant,
            ..Limits::default()
        }
    }

    pub(crate) fn agent_ttl(&self) -> Duration {
        Duration::from_secs(self.agent_ttl_secs.max(1))
    }

    pub(crate) fn any_api_token(&self) -> bool {
        self.admin_token.is_some()
            || self.read_token.is_some()
            || !self.tokens.is_empty()
            || self.tokens_file.is_some()
    }

    pub(crate) fn audit_retention(&self) -> Duration {
        Duration::from_secs(self.audit_retention_days.max(1).saturating_mul(86_400))
    }

    pub(crate) fn any_agent_credential(&self) -> bool {
        self.agent_token.is_some() || self.agent_basic.is_some()
    }
}
