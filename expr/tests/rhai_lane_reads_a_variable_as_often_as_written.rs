//! The rhai lane hands each variable to rhai once per evaluation and moves it out on its last
//! read: a variable read several times, in branches, or beside ten others (`_v1` beside `_v10`)
//! must read the same every time, on every evaluation.

use sonde_expr::{ExprKind, Value, compile};

fn vars() -> Vec<(&'static str, Value)> {
    let mut v: Vec<(&'static str, Value)> = vec![
        ("name", Value::from("ada")),
        ("n", Value::Int(4)),
        ("items", Value::List(vec![Value::Int(1), Value::Int(2)])),
    ];
    for (i, k) in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
        .into_iter()
        .enumerate()
    {
        v.push((k, Value::Int(i as i64)));
    }
    v
}

#[test]
fn repeated_reads_see_the_same_value_on_every_evaluation() {
    let vars = vars();
    // `upper` and `str` are not native: these run in rhai.
    let cases: &[(&str, Value)] = &[
        (
            r#"upper(name) + upper(name) + str(name)"#,
            Value::from("ADAADAada"),
        ),
        ("str(n) + str(n * n) + str(n)", Value::from("4164")),
        (
            r#"if n > 3 { str(n) + str(n) } else { str(n) }"#,
            Value::from("44"),
        ),
        (
            r#"if n > 9 { str(n) } else { upper(name) + str(n) + str(n) }"#,
            Value::from("ADA44"),
        ),
        (
            "str(items) + str(items.len()) + str(items[0])",
            Value::from("[1, 2]21"),
        ),
        // Eleven variables: `b` is `_v1`, `k` is `_v10`.
        (
            "str(a + b + c + d + e + f + g + h + i + j + k) + str(b) + str(k) + str(b)",
            Value::from("551101"),
        ),
    ];
    for (src, want) in cases {
        let e = compile(src, ExprKind::Any).unwrap_or_else(|err| panic!("{src}: {err}"));
        assert!(!e.is_native(), "{src} should need rhai");
        for round in 0..3 {
            assert_eq!(
                &e.eval(vars.as_slice()).expect(src),
                want,
                "{src}, round {round}"
            );
        }
    }
}

#[test]
fn a_captured_value_stays_read_only() {
    let vars = vars();
    let e = compile("items.push(3)", ExprKind::Any).expect("compiles");
    assert!(
        e.eval(vars.as_slice()).is_err(),
        "a captured list is a constant"
    );
    let e = compile("len(items)", ExprKind::Any).expect("compiles");
    assert_eq!(
        e.eval(vars.as_slice()),
        Ok(Value::Int(2)),
        "and is unchanged"
    );
}
