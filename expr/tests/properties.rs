//! Properties: rendering rules hold for every value, conditions never turn a non-bool into
//! `false`, and the native lane agrees with rhai on every expression it evaluates.

use proptest::prelude::*;
use sonde_expr::{EvalError, ExprKind, Value, compile};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        any::<f64>().prop_map(Value::Float),
        "[a-z]{0,6}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Bytes),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            proptest::collection::btree_map("[a-z]{1,3}", inner, 0..4).prop_map(Value::Map),
        ]
    })
}

fn label(src: &str, v: &Value) -> Result<String, EvalError> {
    let e = compile(src, ExprKind::Label).expect("compiles");
    let mut out = String::new();
    e.eval_label(&[("x", v.clone())], &mut out).map(|()| out)
}

proptest! {
    #[test]
    fn integers_render_in_decimal(i in any::<i64>(), u in any::<u64>()) {
        prop_assert_eq!(label("x", &Value::Int(i))?, i.to_string());
        prop_assert_eq!(label("x", &Value::UInt(u))?, u.to_string());
    }

    #[test]
    fn finite_floats_render_to_text_that_parses_back(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let s = label("x", &Value::Float(f))?;
        prop_assert_eq!(s.parse::<f64>().ok(), Some(f), "{}", s);
        // Integral floats keep a fraction or an exponent, so they never read as integers.
        prop_assert!(s.contains('.') || s.contains('e'), "{}", s);
    }

    #[test]
    fn labels_match_value_display_on_both_lanes(v in value()) {
        let fast = label("x", &v)?;
        prop_assert_eq!(&fast, &v.to_string());
        // `str(x)` runs in rhai: same rendering (rhai has no unsigned type, so big UInts differ).
        if !matches!(v, Value::UInt(u) if u > i64::MAX as u64) && !contains_uint(&v) {
            prop_assert_eq!(label("str(x)", &v)?, fast);
        }
    }

    #[test]
    fn a_condition_of_a_non_bool_is_an_error(v in value()) {
        let e = compile("x", ExprKind::Condition).expect("compiles");
        let r = e.eval_condition(&[("x", v.clone())]);
        match v {
            Value::Bool(b) => prop_assert_eq!(r, Ok(b)),
            _ => prop_assert_eq!(r, Err(EvalError::TypeMismatch)),
        }
        let e = compile("if true { x } else { false }", ExprKind::Condition).expect("compiles");
        let r = e.eval_condition(&[("x", v.clone())]);
        match v {
            Value::Bool(b) => prop_assert_eq!(r, Ok(b)),
            _ => prop_assert_eq!(r, Err(EvalError::TypeMismatch)),
        }
    }

    #[test]
    fn native_lane_agrees_with_rhai(expr in arith(), a in scalar(), b in scalar(), c in scalar()) {
        // Variable-free expressions that fail are compile errors: nothing to compare.
        let Ok(native) = compile(&expr, ExprKind::Any) else { return Ok(()) };
        // An `if` is outside the native subset: the same expression, all in rhai.
        let rhai = compile(&format!("if true {{ {expr} }} else {{ () }}"), ExprKind::Any).expect("compiles");
        prop_assume!(native.is_native() && !rhai.is_native());
        let vars = [("a", a), ("b", b), ("c", c)];
        let render = |r: Result<Value, EvalError>| r.map(|v| v.to_string());
        // A bare variable is the fast path: the value itself, with the full unsigned range
        // (rhai, whose integers are i64, turns a UInt above i64::MAX into a float).
        if let Some((_, v)) = vars.iter().find(|(name, _)| *name == expr) {
            prop_assert_eq!(render(native.eval(&vars)), Ok(v.to_string()), "{}", expr);
            return Ok(());
        }
        prop_assert_eq!(render(native.eval(&vars)), render(rhai.eval(&vars)), "{}", expr);
    }
}

fn contains_uint(v: &Value) -> bool {
    match v {
        Value::UInt(_) => true,
        Value::List(l) => l.iter().any(contains_uint),
        Value::Map(m) => m.values().any(contains_uint),
        _ => false,
    }
}

/// Operator expressions over `a`, `b`, `c` and literals, inside the native subset.
fn arith() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("len(a)".to_owned()),
        (-5i64..5).prop_map(|i| i.to_string()),
        (0u32..40).prop_map(|i| format!("{}.5", i)),
        Just("\"x\"".to_owned()),
        Just("true".to_owned()),
        Just("None".to_owned()),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        let op = prop_oneof![
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("%"),
            Just("=="),
            Just("!="),
            Just("<"),
            Just("<="),
            Just(">"),
            Just(">="),
            Just("&&"),
            Just("||"),
            Just("and"),
            Just("or"),
        ];
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(l, o, r)| format!("({l} {o} {r})")),
            inner.clone().prop_map(|x| format!("-({x})")),
            inner.prop_map(|x| format!("not {x}")),
        ]
    })
}

/// rhai compares floats within an epsilon (absolutely when one side is zero, and NaN is neither
/// equal nor unequal): the native lane must give the same answers at those edges.
#[test]
fn float_comparisons_agree_with_rhai_at_the_edges() {
    let edges = [
        Value::Float(0.0),
        Value::Float(-0.0),
        Value::Float(5.785_905_810_684_302e-268),
        Value::Float(1e-16),
        Value::Float(1.0),
        Value::Float(1.0 + f64::EPSILON),
        Value::Float(1e16),
        Value::Float(f64::NAN),
        Value::Float(f64::INFINITY),
        Value::Float(f64::NEG_INFINITY),
        Value::Int(0),
        Value::Int(1),
        Value::Int(10_000_000_000_000_001),
    ];
    let mut compared = 0;
    for op in ["==", "!=", "<", "<=", ">", ">="] {
        let native = compile(&format!("a {op} b"), ExprKind::Any).expect("compiles");
        let rhai = compile(
            &format!("if true {{ a {op} b }} else {{ () }}"),
            ExprKind::Any,
        )
        .expect("compiles");
        assert!(native.is_native() && !rhai.is_native());
        for a in &edges {
            for b in &edges {
                let vars = [("a", a.clone()), ("b", b.clone())];
                assert_eq!(native.eval(&vars), rhai.eval(&vars), "{a:?} {op} {b:?}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 6 * 13 * 13);
}

/// Label rendering at its edges, against strings written out by hand (not the crate's own
/// `Display`): floats at the exponent thresholds and the special values, unicode and control
/// characters, escapes inside lists and maps, on the fast path and through `str(x)` in rhai.
#[test]
fn label_rendering_edge_cases_match_hand_written_text() {
    use std::collections::BTreeMap;
    let map = |pairs: &[(&str, Value)]| {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let cases: Vec<(Value, &str)> = vec![
        (Value::Float(0.0), "0.0"),
        (Value::Float(-0.0), "-0.0"),
        (Value::Float(2.0), "2.0"),
        (Value::Float(-7.0), "-7.0"),
        (Value::Float(0.1), "0.1"),
        (Value::Float(1e-4), "0.0001"),
        (Value::Float(9.9e-5), "9.9e-5"),
        (Value::Float(9_999_999_999_999_998.0), "9999999999999998.0"),
        (Value::Float(1e16), "1e16"),
        (Value::Float(-2.5e20), "-2.5e20"),
        (Value::Float(f64::MAX), "1.7976931348623157e308"),
        (Value::Float(f64::MIN_POSITIVE), "2.2250738585072014e-308"),
        (Value::Float(f64::NAN), "NaN"),
        (Value::Float(f64::INFINITY), "+Inf"),
        (Value::Float(f64::NEG_INFINITY), "-Inf"),
        (Value::Int(i64::MIN), "-9223372036854775808"),
        (Value::UInt(u64::MAX), "18446744073709551615"),
        (Value::Bool(false), "false"),
        (Value::None, "none"),
        (Value::Bytes(vec![0x00, 0xab, 0xff]), "00abff"),
        (Value::Bytes(vec![]), ""),
        // Top-level strings go out as they are, whatever they hold.
        (Value::from("Zürich 東京 🦀"), "Zürich 東京 🦀"),
        (
            Value::from("tab\tquote\"back\\slash"),
            "tab\tquote\"back\\slash",
        ),
        (Value::from(""), ""),
        // Nested strings are quoted, with quote, backslash and control characters escaped and
        // other unicode kept.
        (
            Value::List(vec![
                Value::from("a\"b"),
                Value::from("c\\d"),
                Value::from("line\nnext\r\tend"),
                Value::from("bell\u{7}nul\u{0}del\u{7f}"),
                Value::from("é🦀"),
            ]),
            r#"["a\"b", "c\\d", "line\nnext\r\tend", "bell\u{7}nul\u{0}del\u{7f}", "é🦀"]"#,
        ),
        (
            Value::List(vec![
                Value::Float(1.0),
                Value::Float(f64::NAN),
                Value::None,
                Value::Bool(true),
                Value::Bytes(vec![0x0f]),
                Value::List(vec![]),
            ]),
            "[1.0, NaN, none, true, 0f, []]",
        ),
        // Maps in key order, keys quoted and escaped like strings.
        (
            map(&[
                ("z", Value::Int(1)),
                ("a\"k", Value::from("v")),
                ("ü", Value::Float(0.5)),
            ]),
            r#"{"a\"k": "v", "z": 1, "ü": 0.5}"#,
        ),
        (map(&[]), "{}"),
        // Records in field order.
        (
            Value::Record(vec![
                ("zeta".into(), Value::Float(1e-7)),
                ("alpha".into(), Value::List(vec![Value::from("x")])),
            ]),
            r#"{"zeta": 1e-7, "alpha": ["x"]}"#,
        ),
    ];
    for (value, expected) in &cases {
        assert_eq!(label("x", value).as_deref(), Ok(*expected), "{value:?}");
        // `str(x)` renders in rhai; it has no unsigned type and turns records into maps, so
        // those two cases are compared on the fast path only.
        if !contains_uint(value) && !matches!(value, Value::Record(_)) {
            assert_eq!(
                label("str(x)", value).as_deref(),
                Ok(*expected),
                "str({value:?})"
            );
        }
    }
}
