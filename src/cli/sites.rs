//! `sonde sites`: the probe sites agents reported (their catalogs), to find the line before a
//! tracepoint arms it.

use clap::Args;

use super::{CliError, Client, ClientOpts, Output, client::path_segment, output};

/// Arguments of `sonde sites`.
#[derive(Debug, Args)]
pub struct SitesArgs {
    /// Only sites whose FILE:LINE, module or a captured name contains FILTER (`checkout.rs`,
    /// `shop.rs:22`, `order`).
    pub filter: Option<String>,
    /// Only agents of this service (`service.name`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only this agent (an ID `sonde agents` lists).
    #[arg(long, conflicts_with = "service")]
    pub agent: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Runs `sonde sites`.
pub fn run(args: SitesArgs) -> Result<(), CliError> {
    let c = Client::new(&args.client)?;
    let path = match (&args.agent, &args.service) {
        (Some(agent), _) => format!("/api/agents/{}/sites", path_segment(agent)),
        (None, Some(service)) => format!("/api/sites?service.name={}", path_segment(service)),
        (None, None) => "/api/sites".to_owned(),
    };
    let mut answer = c.get_json(&path)?;
    if let Some(filter) = &args.filter
        && let Some(sites) = answer.get_mut("sites").and_then(|s| s.as_array_mut())
    {
        sites.retain(|s| matches(s, filter));
    }
    let sites = answer
        .get("sites")
        .and_then(|s| s.as_array())
        .map_or(0, Vec::len);
    output::sites(&args.client, &answer);
    if args.client.output == Output::Table && sites == 0 {
        eprintln!("{}", why_empty(&answer, &args));
    }
    Ok(())
}

fn matches(site: &serde_json::Value, filter: &str) -> bool {
    let s = |k: &str| site.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let location = format!("{}:{}", s("file"), site["line"]);
    location.contains(filter)
        || s("module").contains(filter)
        || site["names"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n.as_str().is_some_and(|n| n.contains(filter)))
}

/// Why the table is empty, on stderr: no agents, agents without catalogs, or the filter.
fn why_empty(answer: &serde_json::Value, args: &SitesArgs) -> String {
    let of = args
        .service
        .as_deref()
        .map(|s| format!(" of service {s:?}"))
        .unwrap_or_default();
    if answer.get("reported").and_then(|r| r.as_bool()) == Some(false) {
        return "this agent reported no probe sites (Deep's agents and older Sonde agents report none)"
            .into();
    }
    match (
        answer.get("agents").and_then(|a| a.as_u64()),
        answer.get("reporting").and_then(|a| a.as_u64()),
    ) {
        (Some(0), _) => format!("no live agent{of}: `sonde agents` lists who is connected"),
        (Some(n), Some(0)) => {
            format!("{n} live agent(s){of}, none reported probe sites (Deep's agents report none)")
        }
        _ if args.filter.is_some() => "no probe site matches the filter".into(),
        _ => "no probe sites".into(),
    }
}
