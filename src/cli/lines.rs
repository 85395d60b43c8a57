//! `sonde files` and `sonde lines`: the source files agents can arm lines in, and per file the
//! lines with code and the variables readable at each, to pick a line and the names to read
//! before a tracepoint arms it.

use clap::Args;

use super::{CliError, Client, ClientOpts, Output, client::path_segment, output};

/// Arguments of `sonde files`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Only files whose path contains FILTER.
    pub filter: Option<String>,
    /// Only agents of this service (`service.name`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only this agent (an ID `sonde agents` lists).
    #[arg(long, conflicts_with = "service")]
    pub agent: Option<String>,
    /// Every file of the debug info, not only the application's own (adds the standard library
    /// and the crates the application depends on).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Arguments of `sonde lines`.
#[derive(Debug, Args)]
pub struct LinesArgs {
    /// The file, as a tracepoint's path names it (`examples/shop.rs`, `checkout.rs`).
    pub file: String,
    /// Only agents of this service (`service.name`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only this agent (an ID `sonde agents` lists).
    #[arg(long, conflicts_with = "service")]
    pub agent: Option<String>,
    /// Only this line, with each variable's type and, where it cannot be read everywhere, why.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub line: Option<u32>,
    #[command(flatten)]
    pub client: ClientOpts,
}

fn base(agent: &Option<String>, what: &str) -> String {
    match agent {
        Some(agent) => format!("/api/agents/{}/{what}?", path_segment(agent)),
        None => format!("/api/{what}?"),
    }
}

fn service_param(service: &Option<String>) -> String {
    service
        .as_deref()
        .map(|s| format!("&service.name={}", path_segment(s)))
        .unwrap_or_default()
}

/// Runs `sonde files`.
pub fn files(args: FilesArgs) -> Result<(), CliError> {
    let c = Client::new(&args.client)?;
    let path = format!(
        "{}all={}{}",
        base(&args.agent, "files"),
        args.all,
        service_param(&args.service)
    );
    let mut answer = c.get_json(&path)?;
    if let Some(filter) = &args.filter
        && let Some(files) = answer.get_mut("files").and_then(|s| s.as_array_mut())
    {
        files.retain(|f| {
            f["file"]
                .as_str()
                .is_some_and(|f| f.contains(filter.as_str()))
        });
    }
    output::files(&args.client, &answer);
    if args.client.output == Output::Table {
        errors(&answer);
        if answer["files"].as_array().is_none_or(|f| f.is_empty()) {
            eprintln!("{}", why_empty(&answer, &args.service, "files"));
        }
    }
    Ok(())
}

/// Runs `sonde lines`.
pub fn lines(args: LinesArgs) -> Result<(), CliError> {
    let c = Client::new(&args.client)?;
    let mut path = format!(
        "{}file={}{}",
        base(&args.agent, "lines"),
        path_segment(&args.file),
        service_param(&args.service)
    );
    if let Some(line) = args.line {
        path.push_str(&format!("&line={line}"));
    }
    let answer = c.get_json(&path)?;
    output::lines(&args.client, &answer, args.line.is_some());
    if args.client.output == Output::Table {
        errors(&answer);
        if answer["lines"].as_array().is_none_or(|l| l.is_empty()) {
            eprintln!("{}", why_empty(&answer, &args.service, "lines"));
        }
    }
    Ok(())
}

/// The agents that could not answer, one line each on stderr.
fn errors(answer: &serde_json::Value) {
    for e in answer["errors"].as_array().into_iter().flatten() {
        eprintln!(
            "agent {}: {}",
            e["agent"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or_default()
        );
    }
}

fn why_empty(answer: &serde_json::Value, service: &Option<String>, what: &str) -> String {
    let of = service
        .as_deref()
        .map(|s| format!(" of service {s:?}"))
        .unwrap_or_default();
    match (
        answer["agents"].as_u64(),
        answer["reporting"].as_u64(),
        answer["asked"].as_u64(),
    ) {
        (Some(0), _, _) => format!("no live agent{of}: `sonde agents` lists who is connected"),
        (Some(n), Some(0), _) => format!(
            "{n} live agent(s){of}, none reported a catalog (Deep's agents and older Sonde agents \
             report none)"
        ),
        (_, _, Some(0)) => format!(
            "no {what} from probe sites, and no agent{of} arms lines natively: native lines \
             need the agent's `native` feature, SONDE_AGENT_NATIVE=1 and debug info (see \
             docs/native.md)"
        ),
        _ => format!("no {what}"),
    }
}
