//! Shared fixtures for the benches: captured variables like an agent's probe would hand over.

use std::time::Duration;

use criterion::Criterion;
use sonde_expr::Value;

/// Short runs: enough for stable figures on a 2-core machine.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// `user`, `order` (with a nested `customer`), `len`, `name`: values already captured.
// Each bench binary compiles this module; the compile bench does not evaluate anything.
#[allow(dead_code)]
pub fn vars() -> Vec<(&'static str, Value)> {
    vec![
        (
            "user",
            Value::Record(vec![
                ("id".into(), Value::Int(4711)),
                ("name".into(), Value::from("ada")),
                ("active".into(), Value::Bool(true)),
            ]),
        ),
        (
            "order",
            Value::Record(vec![
                ("id".into(), Value::UInt(99)),
                ("total".into(), Value::Float(12.5)),
                ("country".into(), Value::from("NZ")),
                (
                    "customer".into(),
                    Value::Record(vec![
                        ("country".into(), Value::from("NZ")),
                        ("tier".into(), Value::from("gold")),
                    ]),
                ),
                (
                    "items".into(),
                    Value::List(vec![Value::from("a"), Value::from("b")]),
                ),
            ]),
        ),
        ("len", Value::Int(5)),
        ("name", Value::from("x")),
    ]
}
