//! [`Client`]: the CLI's blocking HTTP client of the server's API.

use std::time::Duration;

use sonde_proto::{
    poll::PollResponse,
    sonde::{CreateTracepointRequest, TracepointResponse},
    tracepoint::TracePointConfig,
};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::{CliError, ClientOpts};

/// A connection to one server, with the caller's token and tenant.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    tenant: Option<String>,
}

/// Percent-encodes one path segment (IDs are UUIDs, but a typo must not change the route).
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of `opts.server`.
    pub fn new(opts: &ClientOpts) -> Result<Self, CliError> {
        let base = opts.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "--server {:?}: expected an http:// or https:// URL",
                opts.server
            )));
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)));
        if let Some(ca) = &opts.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| CliError::usage(format!("reading --ca-cert {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| CliError::usage(format!("--ca-cert {}: {e}", ca.display())))?;
            config = config.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&[cert]))
                    .build(),
            );
        }
        Ok(Self {
            agent: config.build().into(),
            base,
            token: opts.token.clone(),
            tenant: opts.tenant.clone(),
        })
    }

    fn send(&self, method: &str, path: &str, body: Option<String>) -> Result<String, CliError> {
        let url = format!("{}{path}", self.base);
        let builder = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json")
            .header(
                "user-agent",
                concat!("sonde-cli/", env!("CARGO_PKG_VERSION")),
            );
        let builder = match &self.token {
            Some(t) => builder.header("authorization", format!("Bearer {t}")),
            None => builder,
        };
        let builder = match &self.tenant {
            Some(t) => builder.header("x-scope-orgid", t),
            None => builder,
        };
        let result = match body {
            Some(body) => {
                let req = builder
                    .header("content-type", "application/json")
                    .body(body)
                    .map_err(|e| CliError::usage(format!("{url}: {e}")))?;
                self.agent.run(req)
            }
            None => {
                let req = builder
                    .body(())
                    .map_err(|e| CliError::usage(format!("{url}: {e}")))?;
                self.agent.run(req)
            }
        };
        let mut resp = result.map_err(|e| {
            CliError::unavailable(format!("cannot reach the server at {}: {e}", self.base))
        })?;
        let status = resp.status();
        if let Some(mixup) = grpc_port_mixup(&self.base, resp.headers()) {
            return Err(CliError::usage(mixup));
        }
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::unavailable(format!("reading the answer from {url}: {e}")))?;
        if status.is_success() {
            return Ok(text);
        }
        let message = api_error_message(&text).unwrap_or_else(|| text.trim().to_owned());
        let message = format!("{} ({})", message, status.as_u16());
        if status.is_server_error() {
            Err(CliError::unavailable(message))
        } else {
            Err(CliError::refused(message))
        }
    }

    /// GET a JSON document.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, CliError> {
        let text = self.send("GET", path, None)?;
        serde_json::from_str(&text)
            .map_err(|e| CliError::unavailable(format!("the server answered with bad JSON: {e}")))
    }

    /// One tracepoint.
    pub fn get_tracepoint(&self, id: &str) -> Result<TracePointConfig, CliError> {
        let text = self.send(
            "GET",
            &format!("/api/tracepoints/{}", path_segment(id)),
            None,
        )?;
        unwrap_tracepoint(&text)
    }

    /// Every tracepoint of the tenant.
    pub fn list_tracepoints(&self) -> Result<Vec<TracePointConfig>, CliError> {
        let text = self.send("GET", "/api/tracepoints", None)?;
        let resp: PollResponse = serde_json::from_str(&text).map_err(|e| {
            CliError::unavailable(format!("the server answered with bad JSON: {e}"))
        })?;
        Ok(resp.response)
    }

    /// POST or PUT a tracepoint; returns it as the server stored it, and the server's warnings
    /// (a line that is no probe site for the agents it targets).
    pub fn send_tracepoint(
        &self,
        method: &str,
        path: &str,
        tp: &TracePointConfig,
    ) -> Result<(TracePointConfig, Vec<String>), CliError> {
        let body = serde_json::to_string(&CreateTracepointRequest {
            tracepoint: Some(tp.clone()),
        })
        .map_err(|e| CliError::usage(e.to_string()))?;
        let text = self.send(method, path, Some(body))?;
        let resp = parse_response(&text)?;
        let warnings = resp.warnings;
        resp.tracepoint
            .map(|tp| (tp, warnings))
            .ok_or_else(|| CliError::unavailable("the server answered without a tracepoint"))
    }

    /// DELETE a tracepoint; returns what was removed.
    pub fn delete_tracepoint(&self, id: &str) -> Result<TracePointConfig, CliError> {
        let text = self.send(
            "DELETE",
            &format!("/api/tracepoints/{}", path_segment(id)),
            None,
        )?;
        unwrap_tracepoint(&text)
    }
}

/// When the answer is gRPC's (`content-type: application/grpc`, or a `grpc-status` header), the
/// CLI was pointed at the gRPC port, where agents connect: the error says so and names the port
/// the CLI wants.
fn grpc_port_mixup(base: &str, headers: &http::HeaderMap) -> Option<String> {
    let grpc_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    (grpc_type || headers.contains_key("grpc-status")).then(|| {
        format!(
            "{base} answered with gRPC: that is the control plane's gRPC port (default 43315), \
             where agents connect; the CLI talks to its HTTP API (default port 3300): \
             --server/SONDE_SERVER http://HOST:3300"
        )
    })
}

fn parse_response(text: &str) -> Result<TracepointResponse, CliError> {
    serde_json::from_str(text)
        .map_err(|e| CliError::unavailable(format!("the server answered with bad JSON: {e}")))
}

fn unwrap_tracepoint(text: &str) -> Result<TracePointConfig, CliError> {
    parse_response(text)?
        .tracepoint
        .ok_or_else(|| CliError::unavailable("the server answered without a tracepoint"))
}

/// `field: message (line L, column C)` from an API error body.
fn api_error_message(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let e = v.get("error")?;
    let message = e.get("message")?.as_str()?;
    let mut out = match e.get("field").and_then(|f| f.as_str()) {
        Some(field) => format!("{field}: {message}"),
        None => message.to_owned(),
    };
    if let Some(p) = e.get("position") {
        out.push_str(&format!(
            " (line {}, column {})",
            p.get("line").and_then(|l| l.as_u64()).unwrap_or(0),
            p.get("column").and_then(|c| c.as_u64()).unwrap_or(0)
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_one_line() {
        let body = r#"{"error":{"code":"invalid_argument","field":"args.condition","message":"unexpected ')'","position":{"line":1,"column":7}}}"#;
        assert_eq!(
            api_error_message(body).unwrap(),
            "args.condition: unexpected ')' (line 1, column 7)"
        );
        assert_eq!(api_error_message("not json"), None);
    }

    #[test]
    fn a_grpc_answer_names_the_port_mixup() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_port_mixup("http://h:43315", &headers), None);
        headers.insert("content-type", "application/grpc".parse().unwrap());
        let message = grpc_port_mixup("http://h:43315", &headers).unwrap();
        assert!(message.contains("gRPC port (default 43315)"), "{message}");
        assert!(
            message.contains("HTTP API (default port 3300)"),
            "{message}"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("abc-1"), "abc-1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
