//! [`OtlpExporter`]: metrics exported over OTLP/gRPC to an OpenTelemetry collector (feature
//! `otlp`): endpoint, headers, export interval, timeout, TLS or (explicitly) plaintext.
//!
//! ```no_run
//! use std::time::Duration;
//! use sonde_agent::{OtlpExporter, metrics::Metrics};
//!
//! let exporter = OtlpExporter::builder()
//!     .endpoint("https://collector.example:4317")
//!     .header("x-api-key", "secret")
//!     .interval(Duration::from_secs(15))
//!     .service_name("shop")
//!     .build()?;
//! let metrics = Metrics::builder().provider(exporter.provider()).build();
//! metrics.counter("orders_total", "Orders placed.").inc();
//! exporter.shutdown()?; // exports what is left
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The exporter runs on a small tokio runtime of its own (one worker thread), so it works in
//! applications with or without tokio. [`OtlpExporterBuilder::from_env`] reads the standard
//! `OTEL_EXPORTER_OTLP_*` variables.

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{MetricExporter, WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
};
use tonic::{metadata::MetadataMap, transport::ClientTlsConfig};

use crate::metrics::otel::OtelProvider;

/// Why the exporter could not be built or shut down.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A setting is not valid; the message names it.
    #[error("OTLP exporter: {0}")]
    Config(String),
    /// The OpenTelemetry SDK or exporter failed.
    #[error("OTLP exporter: {0}")]
    Export(String),
}

/// Settings of an [`OtlpExporter`].
#[derive(Debug, Clone)]
pub struct OtlpExporterBuilder {
    endpoint: String,
    headers: Vec<(String, String)>,
    interval: Duration,
    timeout: Duration,
    insecure: bool,
    service_name: Option<String>,
}

impl Default for OtlpExporterBuilder {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4317".to_owned(),
            headers: Vec::new(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            insecure: false,
            service_name: None,
        }
    }
}

impl OtlpExporterBuilder {
    /// The collector's OTLP/gRPC endpoint (default `http://127.0.0.1:4317`). `https://` uses TLS
    /// with the system's roots; `http://` is plaintext and needs [`OtlpExporterBuilder::insecure`]
    /// unless the host is loopback.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// A header (gRPC metadata) sent with every export, e.g. an API key.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// How often metrics are exported (default 60 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long one export may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Allows a plaintext `http://` endpoint that is not on loopback.
    pub fn insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// `service.name` of the exported resource.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k=v`),
    /// `OTEL_EXPORTER_OTLP_INSECURE` (`true`/`false`), `OTEL_EXPORTER_OTLP_TIMEOUT` (ms),
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms) and `OTEL_SERVICE_NAME`, over what was set before.
    /// A malformed value makes [`OtlpExporterBuilder::build`] fail, naming it.
    pub fn from_env(mut self) -> Result<Self, OtlpError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let millis = |k: &str, v: String| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    OtlpError::Config(format!("{k}: {v:?} is not a number of milliseconds"))
                })
        };
        if let Some(e) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.endpoint = e;
        }
        if let Some(h) = var("OTEL_EXPORTER_OTLP_HEADERS") {
            for pair in h.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    OtlpError::Config(format!(
                        "OTEL_EXPORTER_OTLP_HEADERS: {pair:?} is not key=value"
                    ))
                })?;
                self.headers
                    .push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        if let Some(i) = var("OTEL_EXPORTER_OTLP_INSECURE") {
            self.insecure = match i.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(OtlpError::Config(format!(
                        "OTEL_EXPORTER_OTLP_INSECURE: {other:?} is not true or false"
                    )));
                }
            };
        }
        if let Some(t) = var("OTEL_EXPORTER_OTLP_TIMEOUT") {
            self.timeout = millis("OTEL_EXPORTER_OTLP_TIMEOUT", t)?;
        }
        if let Some(i) = var("OTEL_METRIC_EXPORT_INTERVAL") {
            self.interval = millis("OTEL_METRIC_EXPORT_INTERVAL", i)?;
        }
        if let Some(n) = var("OTEL_SERVICE_NAME") {
            self.service_name = Some(n);
        }
        Ok(self)
    }

    /// Starts exporting.
    pub fn build(self) -> Result<OtlpExporter, OtlpError> {
        let tls = if let Some(rest) = self.endpoint.strip_prefix("https://") {
            let _ = rest;
            true
        } else if let Some(rest) = self.endpoint.strip_prefix("http://") {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            let loopback = host == "localhost" || host == "127.0.0.1" || rest.starts_with("[::1]");
            if !loopback && !self.insecure {
                return Err(OtlpError::Config(format!(
                    "endpoint {:?} is plaintext: use https://, or allow it with .insecure(true)",
                    self.endpoint
                )));
            }
            false
        } else {
            return Err(OtlpError::Config(format!(
                "endpoint {:?}: expected an http:// or https:// URL",
                self.endpoint
            )));
        };
        if self.interval.is_zero() {
            return Err(OtlpError::Config(
                "the export interval must not be zero".into(),
            ));
        }
        let mut metadata = MetadataMap::new();
        for (k, v) in &self.headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                OtlpError::Config(format!("header {k:?}: not a valid gRPC metadata key"))
            })?;
            let value = v.parse().map_err(|_| {
                OtlpError::Config(format!("header {k:?}: the value is not valid ASCII"))
            })?;
            metadata.insert(key, value);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sonde-otlp")
            .enable_all()
            .build()
            .map_err(|e| OtlpError::Export(format!("starting its runtime: {e}")))?;
        let exporter = {
            // The tonic channel is created on (and lives with) the exporter's own runtime.
            let _entered = runtime.enter();
            let mut builder = MetricExporter::builder()
                .with_tonic()
                .with_endpoint(&self.endpoint)
                .with_timeout(self.timeout)
                .with_metadata(metadata);
            if tls {
                builder = builder.with_tls_config(ClientTlsConfig::new().with_native_roots());
            }
            builder
                .build()
                .map_err(|e| OtlpError::Export(e.to_string()))?
        };
        let mut resource = Resource::builder();
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.build())
            .with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(self.interval)
                    .build(),
            )
            .build();
        Ok(OtlpExporter {
            meter_provider,
            runtime: Some(runtime),
        })
    }
}

/// A running OTLP/gRPC metrics exporter. Dropping it exports what is left and stops.
pub struct OtlpExporter {
    meter_provider: SdkMeterProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter").finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Settings, starting from the defaults.
    pub fn builder() -> OtlpExporterBuilder {
        OtlpExporterBuilder::default()
    }

    /// A provider that records into this exporter (for `Metrics` or the agent's tracepoints).
    pub fn provider(&self) -> OtelProvider {
        OtelProvider::new(self.meter_provider.meter("sonde"))
    }

    /// Exports now.
    pub fn force_flush(&self) -> Result<(), OtlpError> {
        let _entered = self.runtime.as_ref().map(|r| r.enter());
        self.meter_provider
            .force_flush()
            .map_err(|e| OtlpError::Export(e.to_string()))
    }

    /// Exports what is left and stops.
    pub fn shutdown(mut self) -> Result<(), OtlpError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), OtlpError> {
        let Some(runtime) = self.runtime.take() else {
            return Ok(());
        };
        let result = {
            let _entered = runtime.enter();
            self.meter_provider
                .shutdown()
                .map_err(|e| OtlpError::Export(e.to_string()))
        };
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::debug!(%err, "OTLP exporter shutdown");
        }
    }
}
