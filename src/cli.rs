//! The `sonde` command line: `server`, `tracepoint add|get|list|edit|rm`, `agents`, `sites`,
//! `audit`, `token new|hash`, `validate`.
//!
//! Client commands talk to the HTTP API (`--server`, default `http://127.0.0.1:3300`). Output is
//! a table for people, or JSON with `-o json`. Exit codes: 0 done; 1 refused (invalid input, not
//! found, not allowed); 2 bad usage; 3 the server could not be reached or failed; with `--wait`,
//! 4 stored but bound by no agent and 5 stored but an agent reported an error (see `wait`).

mod client;
mod lines;
mod mcp;
mod output;
mod serve;
mod sites;
mod snapshots;
mod tail;
mod wait;

use std::{collections::BTreeMap, io::Read as _, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use sonde_proto::{
    common::{AnyValue, KeyValue, any_value},
    sonde::CreateTracepointRequest,
    tracepoint::{LabelExpression, Metric, MetricType, TracePointConfig, label_expression},
};

use crate::server::{Limits, ServerConfig, validate};

pub use client::Client;

/// Sonde: metrics on any line of running code, without a redeploy.
#[derive(Debug, Parser)]
#[command(name = "sonde", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: gRPC for agents, HTTP API for people, embedded durable store.
    Server(Box<ServerConfig>),
    /// Create, show, list, edit and remove tracepoints.
    #[command(subcommand, visible_alias = "tp")]
    Tracepoint(Box<TracepointCommand>),
    /// List the agents that polled recently, with the status of each tracepoint they hold.
    Agents(ClientOpts),
    /// List the probe sites agents reported: where a tracepoint can bind (FILE:LINE), and the
    /// variables captured there.
    ///
    /// Merged over the live agents (of one service with --service), with how many agents have
    /// each site; one agent's with --agent. Columns: LOCATION (FILE:LINE, as a tracepoint names
    /// it), KIND (`probe`: a `probe!` site), AGENTS (how many of the agents asked about have it),
    /// CAPTURES (the variables an expression there can read). `-o json` prints the API's answer.
    /// Deep's agents report no sites; an empty table says why on stderr.
    Sites(Box<sites::SitesArgs>),
    /// Print the latest snapshot agents sent for a tracepoint: its variables as an indented tree
    /// (redacted ones by name only), its watches, and its stack frames. Needs a token with the
    /// `capture` role (snapshots hold production values). `-o json` prints the API's answer.
    Snapshots(Box<snapshots::SnapshotsArgs>),
    /// List the source files agents can arm lines in natively (and those with probe sites).
    ///
    /// The application's own files by default (no standard library, no dependencies: --all
    /// adds them). Merged over the live agents (of one service with --service); AGENTS is how
    /// many of them have the file. Native lines need agents built with the `native` feature,
    /// run with SONDE_AGENT_NATIVE=1, and debug info.
    Files(Box<lines::FilesArgs>),
    /// List the lines of a file where a tracepoint can bind, and the variables readable at each.
    ///
    /// Every line with code (or a probe site), merged over the live agents (of one service with
    /// --service): KIND is `probe` (a `probe!` site) and/or `native` (code an agent can arm
    /// without a probe), AGENTS how many have the line, VARIABLES the names in scope. A variable
    /// that cannot be read at every address of the line is marked with why (`optimized out`,
    /// `async state`, `unsupported type`, `partly in scope`); `async state` on a readable one
    /// means its value is read from the async fn's state and may date from the last `.await`.
    /// With --line N, one row per variable with its type and the full reason. Blank lines,
    /// comments and lines the compiler left no code for are absent.
    Lines(Box<lines::LinesArgs>),
    /// Follow one tracepoint live: once a second its binding summary, hits (with their rate),
    /// fires and errors over the agents, and a line whenever an agent's state changes; until
    /// Ctrl-C, `--for DURATION`, or its deletion. `-o json`: each status answer as one line.
    Tail(Box<tail::TailArgs>),
    /// Serve Sonde's operations to an AI assistant over the Model Context Protocol (stdio).
    ///
    /// Tools: list services and agents, sites, files and lines (with the variables readable at
    /// each); create a metric or log tracepoint (validated, waiting for the agents' reports);
    /// read its live counters and snapshots; delete it; list what this session created. Every
    /// tracepoint it creates expires after --ttl and carries the argument `tag` = `mcp:SESSION`;
    /// --read-only offers only the reading tools. Talks to the server's HTTP API with
    /// SONDE_SERVER and SONDE_TOKEN like the other commands, so the token's role and the audit
    /// log apply.
    Mcp(Box<mcp::McpArgs>),
    /// Show the audit log: who created, edited and deleted which tracepoint (before and after),
    /// when, from where, and every refused request. Oldest first, one page at a time.
    Audit(Box<AuditArgs>),
    /// Make API tokens for `sonde server --token` or its --tokens-file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check a tracepoint JSON file offline, with the server's own validation.
    Validate {
        /// The file: `{"tracepoint": {...}}` or a bare tracepoint object; `-` reads stdin.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TracepointCommand {
    /// Create a tracepoint from flags or a JSON file.
    #[command(after_help = WAIT_HELP)]
    Add {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        wait: WaitArgs,
        /// Check it against the server (validation and warnings, as a create would) and store
        /// nothing: exit 0 when the server would accept it.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one tracepoint.
    Get {
        /// The tracepoint's ID.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List tracepoints.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Change a tracepoint: the flags given replace those parts, the rest stays.
    #[command(after_help = WAIT_HELP)]
    Edit {
        /// The tracepoint's ID.
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove tracepoints.
    #[command(visible_alias = "delete")]
    Rm {
        /// IDs of the tracepoints to remove.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

const WAIT_HELP: &str = "\
With --wait, after the change the command waits until every live agent the tracepoint targets has \
reported on it (default 5 s) and prints one line per agent on stderr (the ID or the tracepoint stays \
alone on stdout): `bound at FILE:LINE`, `unbound: <why, with the nearest probe lines>`, \
`error: <why>`, `disarmed: <why>`, `pending` (no report in time) or `silent` (an agent that \
reports no status, such as Deep's). With -o json the JSON gains \"status\".

Exit codes: 0 done (with --wait: at least one agent bound it and none reported an error); \
1 refused (invalid input, not found, not allowed); 2 bad usage; 3 server unreachable or failing; \
4 (--wait) stored, but no agent bound it: none connected, all unbound, or still pending; \
5 (--wait) stored, but an agent reported an error or disarmed it.";

/// `--wait[=SECS]`.
#[derive(Debug, Default, Args)]
struct WaitArgs {
    /// Wait up to SECS (default 5) for the targeted agents to report on the change, print what
    /// each made of it, and exit 0 only if one bound it and none failed (see below).
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "5"
    )]
    wait: Option<f64>,
}

impl WaitArgs {
    fn limit(&self) -> Result<Option<std::time::Duration>, CliError> {
        self.wait
            .map(|secs| {
                std::time::Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| *d <= std::time::Duration::from_secs(3600))
                    .ok_or_else(|| {
                        CliError::usage(format!("--wait={secs}: give 0 to 3600 seconds"))
                    })
            })
            .transpose()
    }
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// Entries since: an age (`30m`, `2h`, `7d`), Unix seconds or milliseconds, or RFC 3339
    /// (`2026-01-31T12:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Entries about this tracepoint ID.
    #[arg(long)]
    tracepoint: Option<String>,
    /// Entries by this token name (`anonymous` when the server has no tokens).
    #[arg(long)]
    who: Option<String>,
    /// Every tenant's entries (admin tokens only; others see their own tenant).
    #[arg(long)]
    all_tenants: bool,
    /// Entries per page (1 to 1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Start after this entry: the number a previous page printed as `--after N`.
    #[arg(long)]
    after: Option<i64>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a random secret and the tokens-file line that holds only its hash.
    New {
        /// Who the audit log will name.
        name: String,
        /// read, write, capture or admin; ROLE@TENANT binds the token to one tenant.
        role: String,
    },
    /// Hash a secret read from stdin (first line) into the tokens file's `hash:` form.
    Hash,
}

/// How to reach the server, and how to print.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The server's HTTP API.
    #[arg(long, env = "SONDE_SERVER", default_value = "http://127.0.0.1:3300")]
    pub server: String,
    /// Bearer token: the SECRET of one of the server's API tokens.
    #[arg(long, env = "SONDE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Tenant (sent as X-Scope-OrgID).
    #[arg(long, env = "SONDE_TENANT")]
    pub tenant: Option<String>,
    /// PEM CA certificate to trust for an https server with a private certificate.
    #[arg(long, env = "SONDE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (the API's own shape).
    Json,
}

/// What a tracepoint should be, from flags (or a file).
#[derive(Debug, Default, Args)]
struct SpecArgs {
    /// The line, as FILE:LINE (`src/checkout.rs:42`).
    location: Option<String>,
    /// Read the tracepoint from a JSON file (`{"tracepoint": {...}}` or bare); `-` reads stdin.
    #[arg(short = 'f', long = "file", conflicts_with = "location")]
    file: Option<PathBuf>,
    /// Act only when this expression is true (`order.total > 100`); "" removes it.
    #[arg(long)]
    condition: Option<String>,
    /// Log line template, `{expr}` interpolated; "" removes it.
    #[arg(long = "log")]
    log_msg: Option<String>,
    /// Fires allowed (-1 unlimited).
    #[arg(long, allow_hyphen_values = true)]
    fire_count: Option<i64>,
    /// Minimum milliseconds between fires.
    #[arg(long)]
    fire_period: Option<u64>,
    /// Remove it by itself after this long (`90s`, `15m`, `1h`, `7d`): sets `window_end` to now
    /// plus the TTL.
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Histogram bucket upper bounds, increasing (`1,5,10,50`; sets `args.buckets`, "" removes
    /// it). Without it a histogram's buckets follow its unit.
    #[arg(long, value_name = "BOUNDS")]
    buckets: Option<String>,
    /// Any other argument, KEY=VALUE (repeatable; KEY= removes it).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// A watch expression (repeatable; replaces all watches).
    #[arg(long = "watch", value_name = "EXPR")]
    watches: Vec<String>,
    /// Only agents whose resource has KEY=VALUE (repeatable; replaces all targeting).
    #[arg(long = "target", value_name = "KEY=VALUE")]
    targets: Vec<String>,
    /// A metric, TYPE:NAME with TYPE counter, gauge, histogram or summary (repeatable; replaces
    /// all metrics).
    #[arg(long = "metric", value_name = "TYPE:NAME")]
    metrics: Vec<String>,
    /// The metric's value expression (default 1; "" removes it). Applies to the one --metric
    /// given, or on edit without --metric to the tracepoint's only metric.
    #[arg(long, value_name = "EXPR")]
    value: Option<String>,
    /// A label from an expression, KEY=EXPR (repeatable; with --static-label, replaces the
    /// metric's labels). Applies as --value does.
    #[arg(long = "label", value_name = "KEY=EXPR")]
    labels: Vec<String>,
    /// A label with a fixed value, KEY=VALUE (repeatable). Applies as --value does.
    #[arg(long = "static-label", value_name = "KEY=VALUE")]
    static_labels: Vec<String>,
    /// The metric's namespace (default `deep`).
    #[arg(long)]
    namespace: Option<String>,
    /// The metric's unit, appended to its name (`seconds`).
    #[arg(long)]
    unit: Option<String>,
    /// The metric's help text.
    #[arg(long = "help-text")]
    help_text: Option<String>,
}

/// A failed command: its exit code and one line for stderr.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// Refused: bad input, not found, not allowed (exit 1).
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// Bad usage of the command line (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// The server could not be reached or failed (exit 3).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }
}

impl Cli {
    /// Runs the command and returns the process exit code.
    pub fn run(self) -> ExitCode {
        if let Command::Server(config) = self.command {
            return serve::run(*config);
        }
        match self.dispatch() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}", err.message);
                ExitCode::from(err.code)
            }
        }
    }

    fn dispatch(self) -> Result<(), CliError> {
        match self.command {
            Command::Server(_) => unreachable!("handled in run"),
            Command::Validate { file } => validate_file(&file),
            Command::Agents(client) => {
                let c = Client::new(&client)?;
                let agents = c.get_json("/api/agents")?;
                output::agents(&client, &agents);
                Ok(())
            }
            Command::Sites(args) => sites::run(*args),
            Command::Snapshots(args) => snapshots::run(*args),
            Command::Files(args) => lines::files(*args),
            Command::Lines(args) => lines::lines(*args),
            Command::Mcp(args) => mcp::run(*args),
            Command::Audit(args) => audit(*args),
            Command::Tail(args) => tail::run(*args),
            Command::Token(cmd) => token(cmd),
            Command::Tracepoint(cmd) => tracepoint(*cmd),
        }
    }
}

fn audit(args: AuditArgs) -> Result<(), CliError> {
    let mut query = vec![format!("limit={}", args.limit)];
    let mut add = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            query.push(format!("{key}={}", client::path_segment(v)));
        }
    };
    add("since", args.since.as_deref());
    add("tracepoint", args.tracepoint.as_deref());
    add("who", args.who.as_deref());
    add("after", args.after.map(|a| a.to_string()).as_deref());
    add("tenant", args.all_tenants.then_some("*"));
    let c = Client::new(&args.client)?;
    let page = c.get_json(&format!("/api/audit?{}", query.join("&")))?;
    output::audit(&args.client, &page);
    Ok(())
}

fn token(cmd: TokenCommand) -> Result<(), CliError> {
    use crate::server::SecretHash;
    match cmd {
        TokenCommand::New { name, role } => {
            let mut bytes = [0u8; 32];
            crate::server::random_bytes(&mut bytes);
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let line = format!("{name}:{role}:{}", SecretHash::new(&secret).encode());
            // Parse the line as the server will, so a bad name or role is caught here.
            crate::server::parse_token_line(&line)
                .map_err(|e| CliError::usage(format!("{name}:{role}: {e}")))?;
            println!("secret: {secret}");
            println!("line:   {line}");
            Ok(())
        }
        TokenCommand::Hash => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .map_err(|e| CliError::refused(format!("reading stdin: {e}")))?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(CliError::usage("give the secret on stdin"));
            }
            println!("{}", SecretHash::new(secret).encode());
            Ok(())
        }
    }
}

fn tracepoint(cmd: TracepointCommand) -> Result<(), CliError> {
    match cmd {
        TracepointCommand::Add {
            spec,
            wait,
            dry_run,
            client,
        } => {
            let limit = wait.limit()?;
            let tp = match &spec.file {
                Some(file) => {
                    let mut tp = read_tracepoint_file(file)?;
                    spec.apply(&mut tp)?;
                    tp
                }
                None => {
                    if spec.location.is_none() {
                        return Err(CliError::usage(
                            "give the line as FILE:LINE (e.g. src/checkout.rs:42) or a file with -f",
                        ));
                    }
                    let mut tp = TracePointConfig::default();
                    spec.apply(&mut tp)?;
                    tp
                }
            };
            if let Some(warning) = spec.fire_count_warning(&tp) {
                eprintln!("{warning}");
            }
            let c = Client::new(&client)?;
            if dry_run {
                let (checked, warnings) =
                    c.send_tracepoint("POST", "/api/tracepoints?dry_run=true", &tp)?;
                warn(&warnings);
                output::checked(&client, &checked);
                return Ok(());
            }
            let (created, warnings) = c.send_tracepoint("POST", "/api/tracepoints", &tp)?;
            warn(&warnings);
            let Some(limit) = limit else {
                output::created(&client, &created, None);
                return Ok(());
            };
            let status = wait::wait(&c, &created.id, limit)?;
            output::created(&client, &created, Some(&status));
            report_wait(&client, &created.id, &status, limit)
        }
        TracepointCommand::Get { id, client } => {
            let c = Client::new(&client)?;
            let tp = c.get_tracepoint(&id)?;
            let status = c.get_json(&format!(
                "/api/tracepoints/{}/status",
                client::path_segment(&id)
            ))?;
            output::tracepoint(&client, &tp, Some(&status));
            Ok(())
        }
        TracepointCommand::List { client } => {
            let c = Client::new(&client)?;
            let list = c.list_tracepoints()?;
            let status = c.get_json("/api/status")?;
            output::tracepoints(&client, &list, &status);
            Ok(())
        }
        TracepointCommand::Edit {
            id,
            spec,
            wait,
            client,
        } => {
            let limit = wait.limit()?;
            let c = Client::new(&client)?;
            let mut tp = match &spec.file {
                Some(file) => read_tracepoint_file(file)?,
                None => c.get_tracepoint(&id)?,
            };
            spec.apply(&mut tp)?;
            if let Some(warning) = spec.fire_count_warning(&tp) {
                eprintln!("{warning}");
            }
            tp.id.clear();
            let (edited, warnings) = c.send_tracepoint(
                "PUT",
                &format!("/api/tracepoints/{}", client::path_segment(&id)),
                &tp,
            )?;
            warn(&warnings);
            let Some(limit) = limit else {
                output::tracepoint(&client, &edited, None);
                return Ok(());
            };
            let status = wait::wait(&c, &edited.id, limit)?;
            output::tracepoint(&client, &edited, Some(&status));
            report_wait(&client, &edited.id, &status, limit)
        }
        TracepointCommand::Rm { ids, client } => {
            let c = Client::new(&client)?;
            let mut failed: Option<CliError> = None;
            let mut count = 0;
            let mut removed = Vec::new();
            for id in &ids {
                match c.delete_tracepoint(id) {
                    Ok(tp) if client.output == Output::Json => removed.push(tp),
                    Ok(tp) => output::removed(&client, &tp),
                    Err(err) => {
                        eprintln!("error: {}", err.message);
                        count += 1;
                        // The worst outcome decides the exit code (unreachable over refused).
                        if failed.as_ref().is_none_or(|f| err.code > f.code) {
                            failed = Some(err);
                        }
                    }
                }
            }
            // One JSON document per command: the one removed, or an array for several IDs.
            if client.output == Output::Json {
                output::removed_json(&removed, ids.len() > 1);
            }
            match failed {
                Some(err) => Err(CliError {
                    code: err.code,
                    message: format!("{count} of {} tracepoints not removed", ids.len()),
                }),
                None => Ok(()),
            }
        }
    }
}

/// The server's warnings about a change it made (a line no targeted agent can bind), on stderr.
fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// After `--wait`: one line per agent on stderr (table mode; JSON carries them), and the exit
/// code the outcome means.
fn report_wait(
    client: &ClientOpts,
    id: &str,
    status: &serde_json::Value,
    limit: std::time::Duration,
) -> Result<(), CliError> {
    if client.output == Output::Table {
        for line in wait::lines(status, limit) {
            eprintln!("{line}");
        }
    }
    wait::outcome(id, status)
}

fn read_source(file: &PathBuf) -> Result<String, CliError> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::refused(format!("reading stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CliError::refused(format!("reading {}: {e}", file.display())))
    }
}

/// Parses `{"tracepoint": {...}}` or a bare tracepoint object.
pub fn parse_tracepoint_json(text: &str) -> Result<TracePointConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("tracepoint").is_some() {
        let req: CreateTracepointRequest =
            serde_json::from_value(value).map_err(|e| e.to_string())?;
        req.tracepoint
            .ok_or_else(|| "tracepoint: is null".to_owned())
    } else {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

fn read_tracepoint_file(file: &PathBuf) -> Result<TracePointConfig, CliError> {
    let text = read_source(file)?;
    parse_tracepoint_json(&text).map_err(|e| CliError::refused(format!("{}: {e}", file.display())))
}

fn validate_file(file: &PathBuf) -> Result<(), CliError> {
    let tp = read_tracepoint_file(file)?;
    validate(&tp, &Limits::default())
        .map_err(|e| CliError::refused(format!("{}: {e}", file.display())))?;
    println!(
        "ok: {} is a valid tracepoint at {}:{}",
        file.display(),
        tp.path,
        tp.line_number
    );
    Ok(())
}

fn split_pair<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str), CliError> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::usage(format!("{flag} {s:?}: expected KEY=VALUE")))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// `--ttl`: a positive whole number of seconds, minutes, hours or days (`90s`, `15m`, `1h`, `7d`),
/// in seconds.
fn parse_ttl(text: &str) -> Result<u64, CliError> {
    let bad = || {
        CliError::usage(format!(
            "--ttl {text:?}: expected a number and a unit s, m, h or d (e.g. 90s, 15m, 1h, 7d)"
        ))
    };
    let text = text.trim();
    let unit = text.chars().last().ok_or_else(bad)?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    match text[..text.len() - 1].parse::<u64>() {
        Ok(n) if n > 0 => Ok(n.saturating_mul(scale)),
        _ => Err(bad()),
    }
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

impl SpecArgs {
    /// Applies the flags given to `tp`; flags not given leave it as it is.
    fn apply(&self, tp: &mut TracePointConfig) -> Result<(), CliError> {
        if let Some(location) = &self.location {
            let (path, line) = location
                .rsplit_once(':')
                .and_then(|(p, l)| Some((p, l.parse::<u32>().ok()?)))
                .filter(|(p, l)| !p.is_empty() && *l > 0)
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "{location:?} is not FILE:LINE (e.g. src/checkout.rs:42)"
                    ))
                })?;
            tp.path = path.to_owned();
            tp.line_number = line;
        }
        let mut set_arg = |key: &str, value: &str| {
            if value.is_empty() {
                tp.args.remove(key);
            } else {
                tp.args.insert(key.to_owned(), value.to_owned());
            }
        };
        if let Some(c) = &self.condition {
            set_arg("condition", c);
        }
        if let Some(l) = &self.log_msg {
            set_arg("log_msg", l);
        }
        if let Some(n) = self.fire_count {
            set_arg("fire_count", &n.to_string());
        }
        if let Some(p) = self.fire_period {
            set_arg("fire_period", &p.to_string());
        }
        if let Some(ttl) = &self.ttl {
            let end = unix_secs().saturating_add(parse_ttl(ttl)?);
            set_arg("window_end", &end.to_string());
        }
        if let Some(b) = &self.buckets {
            set_arg("buckets", b);
        }
        for pair in &self.args {
            let (k, v) = split_pair("--arg", pair)?;
            set_arg(k, v);
        }
        if !self.watches.is_empty() {
            tp.watches = self.watches.clone();
        }
        if !self.targets.is_empty() {
            tp.targeting = self
                .targets
                .iter()
                .map(|pair| {
                    let (k, v) = split_pair("--target", pair)?;
                    Ok(KeyValue {
                        key: k.to_owned(),
                        value: Some(string_value(v)),
                    })
                })
                .collect::<Result<_, CliError>>()?;
        }
        let per_metric = self.value.is_some()
            || !self.labels.is_empty()
            || !self.static_labels.is_empty()
            || self.namespace.is_some()
            || self.unit.is_some()
            || self.help_text.is_some();
        if self.metrics.is_empty() && per_metric {
            // An edit of the tracepoint's one metric, without restating it.
            let [metric] = tp.metrics.as_mut_slice() else {
                return Err(CliError::usage(format!(
                    "--value, --label, --static-label, --namespace, --unit and --help-text change a metric, and this tracepoint has {}: give --metric TYPE:NAME",
                    tp.metrics.len()
                )));
            };
            self.edit_metric(metric)?;
        }
        if !self.metrics.is_empty() {
            if per_metric && self.metrics.len() > 1 {
                return Err(CliError::usage(
                    "--value, --label, --static-label, --namespace, --unit and --help-text apply to one metric: give one --metric, or use -f with a JSON file for several",
                ));
            }
            tp.metrics = self
                .metrics
                .iter()
                .map(|spec| self.metric(spec))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// A warning for stderr when the flags cap a metric's hits: a metric-only tracepoint counts
    /// every hit, but an explicit `fire_count` stops it after that many.
    fn fire_count_warning(&self, tp: &TracePointConfig) -> Option<String> {
        let n = self.fire_count.filter(|n| *n != -1)?;
        (!tp.metrics.is_empty()).then(|| {
            format!(
                "warning: --fire-count {n} caps the metric: it records only the first {n} hits, then stops (leave --fire-count out, or use -1, to count every hit)"
            )
        })
    }

    /// Applies the per-metric flags given to an existing metric: each replaces its part (the
    /// labels all together), "" removes a value expression, namespace, unit or help text.
    fn edit_metric(&self, metric: &mut Metric) -> Result<(), CliError> {
        let set = |slot: &mut Option<String>, given: &Option<String>| {
            if let Some(v) = given {
                *slot = (!v.is_empty()).then(|| v.clone());
            }
        };
        set(&mut metric.expression, &self.value);
        set(&mut metric.namespace, &self.namespace);
        set(&mut metric.unit, &self.unit);
        set(&mut metric.help, &self.help_text);
        if !self.labels.is_empty() || !self.static_labels.is_empty() {
            metric.label_expressions = self.label_expressions()?;
        }
        Ok(())
    }

    fn label_expressions(&self) -> Result<Vec<LabelExpression>, CliError> {
        let mut labels = Vec::new();
        for pair in &self.labels {
            let (k, v) = split_pair("--label", pair)?;
            labels.push(LabelExpression {
                key: k.to_owned(),
                value: Some(label_expression::Value::Expression(v.to_owned())),
            });
        }
        for pair in &self.static_labels {
            let (k, v) = split_pair("--static-label", pair)?;
            labels.push(LabelExpression {
                key: k.to_owned(),
                value: Some(label_expression::Value::Static(string_value(v))),
            });
        }
        Ok(labels)
    }

    fn metric(&self, spec: &str) -> Result<Metric, CliError> {
        let (kind, name) = spec.split_once(':').ok_or_else(|| {
            CliError::usage(format!(
                "--metric {spec:?}: expected TYPE:NAME, e.g. counter:orders"
            ))
        })?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            other => {
                return Err(CliError::usage(format!(
                    "--metric {spec:?}: unknown type {other:?} (counter, gauge, histogram or summary)"
                )));
            }
        };
        let labels = self.label_expressions()?;
        Ok(Metric {
            name: name.to_owned(),
            label_expressions: labels,
            r#type: kind as i32,
            expression: self.value.clone(),
            namespace: self.namespace.clone(),
            help: self.help_text.clone(),
            unit: self.unit.clone(),
        })
    }
}

/// Resource attributes as a sorted map, for display.
pub(crate) fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> SpecArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            spec: SpecArgs,
        }
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .spec
    }

    #[test]
    fn flags_build_a_tracepoint() {
        let spec = parse(&[
            "src/checkout.rs:42",
            "--condition",
            "order.total > 100",
            "--metric",
            "histogram:order_total",
            "--value",
            "order.total",
            "--label",
            "country=order.country",
            "--static-label",
            "team=shop",
            "--target",
            "service.name=checkout",
            "--fire-count",
            "-1",
        ]);
        let mut tp = TracePointConfig::default();
        spec.apply(&mut tp).unwrap();
        assert_eq!(tp.path, "src/checkout.rs");
        assert_eq!(tp.line_number, 42);
        assert_eq!(tp.args["condition"], "order.total > 100");
        assert_eq!(tp.args["fire_count"], "-1");
        assert_eq!(tp.metrics.len(), 1);
        assert_eq!(tp.metrics[0].r#type, MetricType::Histogram as i32);
        assert_eq!(tp.metrics[0].label_expressions.len(), 2);
        assert_eq!(tp.targeting[0].key, "service.name");
        validate(&tp, &Limits::default()).unwrap();
    }

    #[test]
    fn an_edit_keeps_what_is_not_given_and_removes_empty_args() {
        let mut tp = TracePointConfig {
            path: "a.rs".into(),
            line_number: 3,
            ..Default::default()
        };
        tp.args.insert("condition".into(), "x > 1".into());
        tp.args.insert("log_msg".into(), "hi".into());
        parse(&["--condition", ""]).apply(&mut tp).unwrap();
        assert_eq!(tp.path, "a.rs");
        assert!(!tp.args.contains_key("condition"));
        assert_eq!(tp.args["log_msg"], "hi");
    }

    #[test]
    fn ttls_have_a_unit() {
        for (text, secs) in [("90s", 90), ("15m", 900), ("1h", 3600), (" 7d", 604_800)] {
            assert_eq!(parse_ttl(text).map_err(|e| e.message), Ok(secs), "{text}");
        }
        for text in ["", "1", "h", "0h", "1.5h", "-1h", "1w", "1H"] {
            assert_eq!(parse_ttl(text).map_err(|e| e.code), Err(2), "{text:?}");
        }
    }

    #[test]
    fn bad_locations_and_specs_are_usage_errors() {
        for args in [
            &["a.rs"][..],
            &["a.rs:0"],
            &[":3"],
            &["a.rs:3", "--metric", "timer:x"],
        ] {
            let err = parse(args)
                .apply(&mut TracePointConfig::default())
                .unwrap_err();
            assert_eq!(err.code, 2, "{args:?}: {}", err.message);
        }
        let err = parse(&[
            "a.rs:3",
            "--metric",
            "counter:a",
            "--metric",
            "counter:b",
            "--value",
            "x",
        ])
        .apply(&mut TracePointConfig::default())
        .unwrap_err();
        assert_eq!(err.code, 2);
    }

    #[test]
    fn files_may_hold_the_wrapper_or_a_bare_tracepoint() {
        let a =
            parse_tracepoint_json(r#"{"tracepoint": {"path": "a.py", "line_number": 3}}"#).unwrap();
        let b = parse_tracepoint_json(r#"{"path": "a.py", "lineNumber": 3}"#).unwrap();
        assert_eq!(a, b);
        assert!(parse_tracepoint_json(r#"{"path": "a.py", "lineNumbr": 3}"#).is_err());
    }
}
