//! Each kind yields its type: conditions bools (a non-bool is an error, never `false`), values
//! numbers, labels and templates rendered text, watches any value.

use sonde_expr::{EvalError, ExprKind, Number, Value, compile};

fn vars() -> Vec<(&'static str, Value)> {
    vec![
        ("i", Value::Int(-3)),
        ("u", Value::UInt(u64::MAX)),
        ("f", Value::Float(2.0)),
        ("b", Value::Bool(true)),
        ("s", Value::from("héllo")),
        ("raw", Value::Bytes(vec![0xca, 0xfe])),
        ("none", Value::None),
        ("list", Value::List(vec![Value::Int(1), Value::from("a")])),
        ("map", Value::Map([("k".to_owned(), Value::Int(1))].into())),
        (
            "order",
            Value::Record(vec![
                ("total".into(), Value::Float(12.5)),
                (
                    "customer".into(),
                    Value::Record(vec![("country".into(), Value::from("NZ"))]),
                ),
            ]),
        ),
    ]
}

fn label(src: &str) -> Result<String, EvalError> {
    let e = compile(src, ExprKind::Label).expect("compiles");
    let mut out = String::from("keep:");
    e.eval_label(&vars(), &mut out)
        .map(|()| out["keep:".len()..].to_owned())
}

#[test]
fn conditions_are_bools_and_anything_else_is_an_error() {
    let v = vars();
    let t = |src: &str| {
        compile(src, ExprKind::Condition)
            .expect("compiles")
            .eval_condition(&v)
    };
    assert_eq!(t("b"), Ok(true));
    assert_eq!(t("i < 0 && s == \"héllo\""), Ok(true));
    assert_eq!(t("not b or f > 1"), Ok(true));
    assert_eq!(t("len(list) == 2 and s.contains(\"ll\")"), Ok(true));
    assert_eq!(t("i"), Err(EvalError::TypeMismatch));
    assert_eq!(t("s"), Err(EvalError::TypeMismatch));
    assert_eq!(t("none"), Err(EvalError::TypeMismatch));
    assert_eq!(t("i + 1"), Err(EvalError::TypeMismatch));
    assert_eq!(t("s.len()"), Err(EvalError::TypeMismatch));
}

#[test]
fn values_are_numbers() {
    let v = vars();
    let n = |src: &str| {
        compile(src, ExprKind::Value)
            .expect("compiles")
            .eval_number(&v)
    };
    assert_eq!(n("i"), Ok(Number::Int(-3)));
    assert_eq!(n("u"), Ok(Number::UInt(u64::MAX)));
    assert_eq!(n("f * 2"), Ok(Number::Float(4.0)));
    assert_eq!(n("order.total * 2"), Ok(Number::Float(25.0)));
    assert_eq!(n("len(s)"), Ok(Number::Int(5)));
    assert_eq!(n("s"), Err(EvalError::TypeMismatch));
    assert_eq!(n("b"), Err(EvalError::TypeMismatch));
    assert_eq!(n("i / 0"), Err(EvalError::Arithmetic));
    let e = compile("i * 2", ExprKind::Value).expect("compiles");
    assert_eq!(e.eval_f64(&v), Ok(-6.0));
}

#[test]
fn labels_render_every_value_type() {
    assert_eq!(label("s").as_deref(), Ok("héllo"));
    assert_eq!(label("i").as_deref(), Ok("-3"));
    assert_eq!(label("u").as_deref(), Ok("18446744073709551615"));
    assert_eq!(label("f").as_deref(), Ok("2.0"));
    assert_eq!(label("f / 8").as_deref(), Ok("0.25"));
    assert_eq!(label("b").as_deref(), Ok("true"));
    assert_eq!(label("!b").as_deref(), Ok("false"));
    assert_eq!(label("none").as_deref(), Ok("none"));
    assert_eq!(label("raw").as_deref(), Ok("cafe"));
    assert_eq!(label("list").as_deref(), Ok("[1, \"a\"]"));
    assert_eq!(label("map").as_deref(), Ok("{\"k\": 1}"));
    assert_eq!(
        label("order.customer").as_deref(),
        Ok("{\"country\": \"NZ\"}")
    );
    assert_eq!(label("order.customer.country").as_deref(), Ok("NZ"));
    assert_eq!(
        label("str(f) + \"/\" + str(none)").as_deref(),
        Ok("2.0/none")
    );
    assert_eq!(label("1e20 * 1.0").as_deref(), Ok("1e20"));
    assert_eq!(label("\"checkout\"").as_deref(), Ok("checkout"));
    assert_eq!(label("list[-1]").as_deref(), Ok("a"));
    assert_eq!(label("map[\"k\"]").as_deref(), Ok("1"));
}

#[test]
fn a_failing_label_leaves_the_buffer_as_it_was() {
    let e = compile("order.nope", ExprKind::Label).expect("compiles");
    let mut out = String::from("before");
    assert_eq!(
        e.eval_label(&vars(), &mut out),
        Err(EvalError::MissingField)
    );
    assert_eq!(out, "before");
}

#[test]
fn templates_interpolate_and_escape_braces() {
    let e = compile(
        "basket {len(list)} for {order.customer.country} {{literal}} {1 + 1}",
        ExprKind::Template,
    )
    .expect("compiles");
    let mut out = String::new();
    e.render(&vars(), &mut out).expect("renders");
    assert_eq!(out, "basket 2 for NZ {literal} 2");
    assert_eq!(e.variables(), ["list", "order"]);
    assert_eq!(e.eval(&vars()), Ok(Value::Str(out)));
    assert_eq!(e.eval_condition(&vars()), Err(EvalError::TypeMismatch));
    let plain = compile("no holes", ExprKind::Template).expect("compiles");
    assert!(plain.is_fast_path());
}

#[test]
fn watches_return_any_value() {
    let v = vars();
    let any = |src: &str| compile(src, ExprKind::Any).expect("compiles").eval(&v);
    assert_eq!(
        any("list"),
        Ok(Value::List(vec![Value::Int(1), Value::from("a")]))
    );
    assert_eq!(any("raw"), Ok(Value::Bytes(vec![0xca, 0xfe])));
    assert_eq!(
        any("[i, b]"),
        Ok(Value::List(vec![Value::Int(-3), Value::Bool(true)]))
    );
    assert_eq!(
        any("#{a: 1}"),
        Ok(Value::Map([("a".to_owned(), Value::Int(1))].into()))
    );
    assert_eq!(any("none"), Ok(Value::None));
    assert_eq!(any("missing"), Err(EvalError::MissingVariable));
}

#[test]
fn python_forms_work() {
    let v = vars();
    let any = |src: &str| compile(src, ExprKind::Any).expect("compiles").eval(&v);
    assert_eq!(any("str(i)"), Ok(Value::from("-3")));
    assert_eq!(any("int(\"42\") + int(f) + int(b)"), Ok(Value::Int(45)));
    assert_eq!(any("float(i)"), Ok(Value::Float(-3.0)));
    assert_eq!(
        any("upper(s) + lower(\"AB\") + strip(\"  x \")"),
        Ok(Value::from("HÉLLOabx"))
    );
    assert_eq!(
        any("s.startswith(\"h\") and s.endswith(\"o\")"),
        Ok(Value::Bool(true))
    );
    assert_eq!(any("1 not in list"), Ok(Value::Bool(false)));
    assert_eq!(any("none == None and True != False"), Ok(Value::Bool(true)));
    assert_eq!(any("int(s)"), Err(EvalError::Arithmetic));
    // A constant that cannot convert is caught at compile time.
    assert!(compile("int(\"x\")", ExprKind::Any).is_err());
}

#[test]
fn variables_and_paths_are_reported() {
    let e = compile("order.total * 2 + order.total + i", ExprKind::Value).expect("compiles");
    assert_eq!(e.variables(), ["order", "i"]);
    let paths: Vec<String> = e.paths().iter().map(ToString::to_string).collect();
    assert_eq!(paths, ["order.total", "i"]);
    assert_eq!(e.source(), "order.total * 2 + order.total + i");
    assert_eq!(e.kind(), ExprKind::Value);
}

#[test]
fn fast_path_shapes() {
    for src in [
        "user.id",
        "(order.customer.country)",
        "items[0].sku",
        "headers[\"x-id\"]",
        "42",
        "\"checkout\"",
        "true",
        "60 * 1000",
    ] {
        assert!(
            compile(src, ExprKind::Any)
                .expect("compiles")
                .is_fast_path(),
            "{src}"
        );
    }
    for src in ["user.id + 1", "s.len()", "-x", "items[i]"] {
        assert!(
            !compile(src, ExprKind::Any)
                .expect("compiles")
                .is_fast_path(),
            "{src}"
        );
    }
    for src in [
        "order.total * 2",
        "len > 3 && name == \"x\"",
        "not a or len(xs) > 1",
    ] {
        assert!(
            compile(src, ExprKind::Any).expect("compiles").is_native(),
            "{src}"
        );
    }
}

#[test]
fn expressions_are_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<sonde_expr::Expr>();
    let e = compile("i + 1", ExprKind::Value).expect("compiles");
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || e.eval_f64(&vars()))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread"), Ok(-2.0));
    }
}
