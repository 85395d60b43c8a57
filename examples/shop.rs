//! `shop`: a small instrumented HTTP service, to watch a tracepoint become a metric.
//!
//! The shop is an ordinary axum service with three probe sites (`sonde_agent::probe!`) in its
//! handlers, its own Prometheus registry served on `/metrics` (two metrics of its own,
//! `shop_requests_total` and `shop_orders_total`), and a Sonde agent that follows the control plane
//! and registers tracepoint metrics into that same registry. Nothing here knows in advance which
//! metrics an operator will ask for: create a tracepoint on one of the probe lines and, within a
//! second, `/metrics` has a `deep_...` series computed from the variables captured there; delete it
//! and the series is gone.
//!
//! Routes:
//! - `POST /checkout` takes a JSON order
//!   `{"country": "NZ", "items": [{"sku": "tea", "qty": 2}], "total": 42.5, "user": {"id": "u1", "tier": "gold"}}`
//!   and answers with a receipt; its probe captures `order` (fields `order.country`,
//!   `order.total`, `order.items`, `order.user.id`, `order.user.tier`), `discount`, `charged` and
//!   `took` (seconds). A rejected order (no items, or a total not above 0) hits a second probe
//!   with `reason` and `order`.
//! - `GET /products/{id}` looks a product up; its probe captures `id`, `found`, `name` and `price`.
//! - `GET /metrics` is the Prometheus exposition of the shop's registry.
//!
//! Run it beside the control plane:
//!
//! ```text
//! cargo run -- server                      # terminal 1: gRPC 127.0.0.1:43315, HTTP 127.0.0.1:3300
//! cargo run --example shop                 # terminal 2: prints its probe sites as FILE:LINE
//! ```
//!
//! then create a tracepoint on a printed FILE:LINE (the README walks through it with curl and
//! `sonde tracepoint add`). The shop listens on `127.0.0.1:8080`; `--listen ADDR` or
//! `SHOP_LISTEN=ADDR` changes that. The agent is configured by the `SONDE_*` variables of
//! `AgentBuilder::from_env` (`SONDE_AGENT_SERVER` is the gRPC URL, default `http://127.0.0.1:43315`);
//! its logs go to stderr (level from `RUST_LOG`, default `info`). Ctrl-C or SIGTERM stops the shop
//! and the agent.

use std::{net::SocketAddr, time::Instant};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use sonde_agent::{Agent, Capture, PrometheusProvider, probe};
use sonde_expr::Value;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// An order as `POST /checkout` receives it.
#[derive(Debug, Deserialize)]
struct Order {
    country: String,
    items: Vec<Item>,
    total: f64,
    user: User,
}

#[derive(Debug, Deserialize)]
struct Item {
    sku: String,
    qty: u32,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    tier: String,
}

// What a probe site may read of these types, by hand to show what `Capture` asks for (or derive
// it). `field` lets `order.user.tier` convert only the string it reaches, while armed; `capture`
// converts the whole value (`len(order.items)`); `field_names` lists fields in `sonde sites`.
impl Capture for Order {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("country".into(), self.country.capture()),
            ("items".into(), self.items.capture()),
            ("total".into(), self.total.capture()),
            ("user".into(), self.user.capture()),
        ])
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        match name {
            "country" => Some(&self.country),
            "items" => Some(&self.items),
            "total" => Some(&self.total),
            "user" => Some(&self.user),
            _ => None,
        }
    }
    fn field_names(&self) -> &'static [&'static str] {
        &["country", "items", "total", "user"]
    }
}

impl Capture for Item {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("sku".into(), self.sku.capture()),
            ("qty".into(), self.qty.capture()),
        ])
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        match name {
            "sku" => Some(&self.sku),
            "qty" => Some(&self.qty),
            _ => None,
        }
    }
}

impl Capture for User {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("id".into(), self.id.capture()),
            ("tier".into(), self.tier.capture()),
        ])
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        match name {
            "id" => Some(&self.id),
            "tier" => Some(&self.tier),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Receipt {
    order_id: u64,
    items: usize,
    discount: f64,
    charged: f64,
}

#[derive(Debug, Serialize)]
struct Product {
    id: u32,
    name: &'static str,
    price: f64,
}

static CATALOG: [Product; 3] = [
    Product {
        id: 1,
        name: "green tea",
        price: 8.5,
    },
    Product {
        id: 2,
        name: "teapot",
        price: 42.0,
    },
    Product {
        id: 3,
        name: "cups (4)",
        price: 19.9,
    },
];

/// The shop's state: its registry and its own metrics.
#[derive(Clone, Debug)]
pub struct Shop {
    registry: Registry,
    requests: IntCounterVec,
    orders: IntCounterVec,
}

impl Shop {
    /// The shop's own metrics, registered into `registry` (which the agent shares).
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("shop_requests_total", "HTTP requests by route"),
            &["route"],
        )?;
        let orders = IntCounterVec::new(
            Opts::new("shop_orders_total", "Accepted orders by country"),
            &["country"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(orders.clone()))?;
        Ok(Self {
            registry,
            requests,
            orders,
        })
    }
}

/// The shop's routes.
pub fn app(shop: Shop) -> Router {
    Router::new()
        .route("/checkout", post(checkout))
        .route("/products/{id}", get(product))
        .route("/metrics", get(metrics))
        .with_state(shop)
}

fn discount_for(tier: &str) -> f64 {
    match tier {
        "gold" => 0.10,
        "silver" => 0.05,
        _ => 0.0,
    }
}

async fn checkout(
    State(shop): State<Shop>,
    Json(order): Json<Order>,
) -> Result<Json<Receipt>, (StatusCode, String)> {
    let started = Instant::now();
    shop.requests.with_label_values(&["/checkout"]).inc();
    let rejected = if order.items.is_empty() {
        Some("no items")
    } else if order.total.is_nan() || order.total <= 0.0 {
        Some("total not above 0")
    } else {
        None
    };
    if let Some(reason) = rejected {
        probe!(reason, order);
        return Err((StatusCode::BAD_REQUEST, format!("{reason}\n")));
    }
    let discount = discount_for(&order.user.tier);
    let charged = ((order.total * (1.0 - discount)) * 100.0).round() / 100.0;
    let order_id = order_number();
    shop.orders.with_label_values(&[&order.country]).inc();
    let took = started.elapsed();
    probe!(order, discount, charged, took);
    Ok(Json(Receipt {
        order_id,
        items: order.items.len(),
        discount,
        charged,
    }))
}

async fn product(
    State(shop): State<Shop>,
    Path(id): Path<u32>,
) -> Result<Json<&'static Product>, StatusCode> {
    shop.requests.with_label_values(&["/products/{id}"]).inc();
    let product = CATALOG.iter().find(|p| p.id == id);
    let found = product.is_some();
    probe!(
        id,
        found,
        name = product.map_or("", |p| p.name),
        price = product.map(|p| p.price)
    );
    product.map(Json).ok_or(StatusCode::NOT_FOUND)
}

async fn metrics(State(shop): State<Shop>) -> impl IntoResponse {
    match TextEncoder::new().encode_to_string(&shop.registry.gather()) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// An order number: milliseconds since the epoch, good enough for a demo.
fn order_number() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `--listen ADDR`, else `SHOP_LISTEN`, else 127.0.0.1:8080.
fn listen_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = std::env::var("SHOP_LISTEN")
        .ok()
        .filter(|v| !v.trim().is_empty());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().ok_or("--listen needs an address")?),
            s if s.starts_with("--listen=") => listen = Some(s["--listen=".len()..].to_owned()),
            "-h" | "--help" => {
                println!(
                    "usage: shop [--listen ADDR]   (default {DEFAULT_LISTEN}; env SHOP_LISTEN)\n\
                     The agent reads SONDE_AGENT_SERVER (gRPC URL, default http://127.0.0.1:43315) and \
                     the other SONDE_* variables."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let listen = listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}"))
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let addr = listen_addr().map_err(anyhow::Error::msg)?;

    let registry = Registry::new();
    let shop = Shop::new(registry.clone())?;
    // One provider per registry: the same one feeds tracepoint metrics and the agent's own.
    let prometheus = PrometheusProvider::new(registry);
    let agent = Agent::builder()
        .service_name("shop")
        .service_version(sonde_agent::service_version!())
        .provider(prometheus.clone())
        .self_metrics(prometheus)
        .from_env()
        .start()?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Every probe site of the binary, as a tracepoint would name it (`path` and `line_number`).
    let mut sites: Vec<_> = sonde_agent::sites().collect();
    sites.sort_by_key(|s| (s.file(), s.line()));
    println!("shop: probe sites (a tracepoint's location is FILE:LINE):");
    for site in sites {
        let location = format!("{}:{}", site.file(), site.line());
        println!("  {location:<22} captures {}", site.names().join(", "));
    }
    let server =
        std::env::var("SONDE_AGENT_SERVER").unwrap_or_else(|_| "http://127.0.0.1:43315".into());
    println!(
        "shop: agent {} follows {server} as service.name=shop (SONDE_SERVICE_NAME overrides)",
        agent.agent_id()
    );
    println!(
        "shop: listening on http://{} (POST /checkout, GET /products/{{id}}, GET /metrics)",
        listener.local_addr()?
    );

    axum::serve(listener, app(shop))
        .with_graceful_shutdown(stop_signal())
        .await?;
    agent.shutdown();
    println!("shop: stopped");
    Ok(())
}
