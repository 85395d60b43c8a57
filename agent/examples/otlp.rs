//! Tracepoint metrics exported over OTLP/gRPC: an instrumented request loop whose agent takes its
//! tracepoints from `sonde server` and records them through an OpenTelemetry meter, which exports
//! every 5 s to the collector at `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://127.0.0.1:4317`).
//!
//! Run it beside a server and a collector:
//!
//! ```sh
//! cargo run --release -- server &        # the control plane, gRPC on 127.0.0.1:43315
//! otelcol --config collector.yaml &     # any OTLP/gRPC receiver on 4317, e.g. a collector
//!                                        # with the `otlp` receiver and the `debug` exporter
//! cargo run -p sonde-agent --features opentelemetry --example otlp
//! ```
//!
//! The example prints its probe site's `file:line` and the `sonde tracepoint add` command that
//! turns it into a histogram of request durations by route, for example
//!
//! ```sh
//! sonde tracepoint add agent/examples/otlp.rs:LINE --metric histogram:request_duration \
//!     --unit ms --value elapsed_ms --label route=route
//! ```
//!
//! Within a second the agent installs it, and the next export carries `deep_request_duration_ms`
//! with a `route` attribute; `sonde tracepoint rm ID` stops the data (OpenTelemetry instruments
//! cannot be removed: the metric stops receiving values). The agent reads the `SONDE_*`
//! variables (`SONDE_AGENT_SERVER`, ...). Ctrl-C exports what is left and stops.

use std::{error::Error, time::Duration};

use opentelemetry::metrics::MeterProvider;
use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
};
use sonde_agent::{Agent, OtelProvider, probe};

/// The instrumented code: one probe site capturing the route, the status and the duration.
fn handle(route: &str, status: u16, elapsed_ms: f64) {
    probe!(route, status, elapsed_ms);
}

fn main() -> Result<(), Box<dyn Error>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4317".to_owned());

    // The tonic exporter needs a tokio runtime, alive for as long as the meter provider exports.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let exporter = {
        let _entered = runtime.enter();
        MetricExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .build()?
    };
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("otlp-example")
                .build(),
        )
        .with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(Duration::from_secs(5))
                .build(),
        )
        .build();

    let agent = Agent::builder()
        .service_name("otlp-example")
        .provider(OtelProvider::new(meter_provider.meter("sonde")))
        .from_env()
        .start()?;

    let site = sonde_agent::sites()
        .find(|s| s.file().ends_with("otlp.rs") && s.names() == ["route", "status", "elapsed_ms"])
        .ok_or("the example's probe site is missing")?;
    println!(
        "exporting to {endpoint}; probe site at {}:{}\n\
         try: sonde tracepoint add {}:{} --metric histogram:request_duration --unit ms \
         --value elapsed_ms --label route=route",
        site.file(),
        site.line(),
        site.file(),
        site.line()
    );

    runtime.block_on(async {
        let routes = ["/", "/cart", "/checkout"];
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tick.tick() => {
                    let route = routes[fastrand::usize(..routes.len())];
                    let status = if fastrand::u8(..) < 5 { 500 } else { 200 };
                    handle(route, status, 5.0 + fastrand::f64() * 120.0);
                }
            }
        }
    });

    agent.shutdown();
    // The last export.
    if let Err(e) = meter_provider.shutdown() {
        eprintln!("the last export to {endpoint} failed: {e}");
    }
    Ok(())
}
