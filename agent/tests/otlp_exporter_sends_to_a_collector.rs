//! `OtlpExporter` exports to a real OTLP/gRPC endpoint (a collector stand-in built from the
//! published OTLP protos, on 127.0.0.1): metric names, attributes and values arrive, with the
//! configured headers; bad settings are refused at build time, naming them.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    common::v1::any_value,
    metrics::v1::{metric, number_data_point},
};
use sonde_agent::{OtlpExporter, metrics::Metrics};

/// `(metric name, attributes, value, api-key header)` of one sum data point received.
type Point = (String, Vec<(String, String)>, f64, Option<String>);

#[derive(Default, Clone)]
struct Collector {
    points: Arc<Mutex<Vec<Point>>>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let key = request
            .metadata()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut points = self.points.lock().unwrap();
        for rm in &request.get_ref().resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    if let Some(metric::Data::Sum(sum)) = &m.data {
                        for p in &sum.data_points {
                            let attrs = p
                                .attributes
                                .iter()
                                .map(|kv| {
                                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                        Some(any_value::Value::StringValue(s)) => s.clone(),
                                        other => format!("{other:?}"),
                                    };
                                    (kv.key.clone(), v)
                                })
                                .collect();
                            let value = match p.value {
                                Some(number_data_point::Value::AsDouble(d)) => d,
                                Some(number_data_point::Value::AsInt(i)) => i as f64,
                                None => f64::NAN,
                            };
                            points.push((m.name.clone(), attrs, value, key.clone()));
                        }
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[test]
fn metrics_arrive_at_the_collector_with_headers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = MetricsServiceServer::new(collector.clone());
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let exporter = OtlpExporter::builder()
        .endpoint(format!("http://{addr}"))
        .header("x-api-key", "k-123")
        .interval(Duration::from_millis(200))
        .service_name("otlp-test")
        .build()
        .unwrap();
    let metrics = Metrics::builder()
        .provider(exporter.provider())
        .global_tag("env", "test")
        .build();
    metrics
        .counter_vec("orders_total", "Orders.", &["country"])
        .add(&["NZ"], 3.0);

    let start = Instant::now();
    let found = loop {
        let points = collector.points.lock().unwrap().clone();
        if let Some(p) = points.iter().find(|(name, ..)| name == "orders") {
            break p.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing exported: {points:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut attrs = found.1.clone();
    attrs.sort();
    assert_eq!(
        attrs,
        vec![
            ("country".into(), "NZ".into()),
            ("env".into(), "test".into())
        ]
    );
    assert_eq!(found.2, 3.0);
    assert_eq!(
        found.3.as_deref(),
        Some("k-123"),
        "the header reached the collector"
    );
    exporter.shutdown().unwrap();
}

#[test]
fn bad_settings_are_refused_naming_them() {
    let err = |b: sonde_agent::OtlpExporterBuilder| b.build().unwrap_err().to_string();
    assert!(err(OtlpExporter::builder().endpoint("collector:4317")).contains("http://"));
    assert!(err(OtlpExporter::builder().endpoint("http://10.1.2.3:4317")).contains("insecure"));
    assert!(
        err(OtlpExporter::builder()
            .endpoint("http://127.0.0.1:4317")
            .header("bad key", "v"))
        .contains("bad key")
    );
    assert!(
        err(OtlpExporter::builder().interval(Duration::ZERO)).contains("interval"),
        "a zero interval"
    );
}
