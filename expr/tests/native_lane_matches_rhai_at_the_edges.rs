//! The native lane's new forms (string methods, indexes, `in`, `if`, concatenation, int/float
//! mixes) give the answers written here, and so does rhai alone on the same expression: unicode
//! and empty strings, indexes out of range and from the end, overflow, division by zero, NaN.

use sonde_expr::{EvalError, ExprKind, Value, compile};

fn vars() -> Vec<(&'static str, Value)> {
    vec![
        ("s", Value::from("héllo")),
        ("street", Value::from("straße")),
        ("pad", Value::from("  a b ")),
        ("e", Value::from("")),
        ("up", Value::from("NZ")),
        ("i", Value::Int(7)),
        ("z", Value::Int(0)),
        ("big", Value::Int(i64::MAX)),
        ("low", Value::Int(i64::MIN)),
        ("f", Value::Float(1.5)),
        ("fz", Value::Float(0.0)),
        ("nan", Value::Float(f64::NAN)),
        ("neg1", Value::Int(-1)),
        ("neg3", Value::Int(-3)),
        ("neg4", Value::Int(-4)),
        ("three", Value::Int(3)),
        ("yes", Value::Bool(true)),
        (
            "xs",
            Value::List(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Record(vec![("sku".into(), Value::from("A1"))]),
            ]),
        ),
        ("ns", Value::List(vec![Value::Int(1), Value::Float(2.0)])),
        (
            "words",
            Value::List(vec![Value::from("a"), Value::from("é")]),
        ),
        (
            "m",
            Value::Map(
                [
                    ("k".to_owned(), Value::Int(1)),
                    ("é".to_owned(), Value::from("v")),
                ]
                .into(),
            ),
        ),
        ("key", Value::from("é")),
        ("nokey", Value::from("zz")),
    ]
}

/// `src` is on the native lane, and it and rhai alone both answer `want`.
#[track_caller]
fn check(src: &str, want: Result<Value, EvalError>) {
    let e = compile(src, ExprKind::Any).expect("compiles");
    assert!(
        e.is_native() && !e.is_fast_path(),
        "{src} is on the native lane"
    );
    let vars = vars();
    let show = |r: Result<Value, EvalError>| r.map(|v| format!("{v:?}"));
    assert_eq!(show(e.eval(&vars)), show(want.clone()), "native: {src}");
    assert_eq!(show(e.eval_rhai_lane(&vars)), show(want), "rhai: {src}");
}

fn s(x: &str) -> Result<Value, EvalError> {
    Ok(Value::from(x))
}

fn int(i: i64) -> Result<Value, EvalError> {
    Ok(Value::Int(i))
}

fn float(f: f64) -> Result<Value, EvalError> {
    Ok(Value::Float(f))
}

fn bool(b: bool) -> Result<Value, EvalError> {
    Ok(Value::Bool(b))
}

#[test]
fn string_methods_count_and_case_unicode_characters() {
    check("s.len()", int(5)); // characters, not the 6 bytes
    check("len(s)", int(5));
    check("s.to_upper()", s("HÉLLO"));
    check("street.to_upper()", s("STRASSE")); // ß upper-cases to two letters
    check("up.to_lower()", s("nz"));
    check("up.to_upper()", s("NZ"));
    check("s.contains(\"é\")", bool(true));
    check("s.starts_with(\"hé\")", bool(true));
    check("s.ends_with(\"llo\")", bool(true));
    check("s.startswith(\"x\")", bool(false));
    check("s.endswith(\"o\")", bool(true));
    check("strip(pad)", s("a b"));
    check("s.is_empty()", bool(false));
}

#[test]
fn empty_strings() {
    check("e.len()", int(0));
    check("e.is_empty()", bool(true));
    check("e.contains(\"\")", bool(true));
    check("s.contains(\"\")", bool(true));
    check("e.starts_with(\"\")", bool(true));
    check("e.to_upper()", s(""));
    check("e + e", s(""));
    check("e[z]", Err(EvalError::IndexOutOfBounds));
}

#[test]
fn trim_is_rhai_s_in_place_method_and_fails_on_captured_values() {
    // Not native: rhai trims in place, and a captured value is a constant.
    let e = compile("pad.trim()", ExprKind::Any).expect("compiles");
    assert!(!e.is_native());
    assert_eq!(e.eval(&vars()), Err(EvalError::TypeMismatch));
}

#[test]
fn indexes_count_from_the_end_when_negative_and_fail_out_of_range() {
    check("xs[three - 3]", int(1));
    check("xs[neg1].sku", s("A1"));
    check("xs[neg3]", int(1));
    check("xs[neg4]", Err(EvalError::IndexOutOfBounds));
    check("xs[three]", Err(EvalError::IndexOutOfBounds));
    check("xs[f]", Err(EvalError::TypeMismatch));
    check("s[neg1]", s("o"));
    check("s[z + 1]", s("é"));
    check("s[three + 2]", Err(EvalError::IndexOutOfBounds));
    check("s[neg1 - 5]", Err(EvalError::IndexOutOfBounds));
    check("m[key]", s("v"));
    check("m[nokey]", Err(EvalError::MissingField));
    check("words[i - 6] + \"-\" + xs[z]", s("é-1"));
}

#[test]
fn in_looks_in_strings_maps_and_lists() {
    check("\"é\" in s", bool(true));
    check("\"x\" not in s", bool(true));
    check("\"k\" in m", bool(true));
    check("nokey in m", bool(false));
    check("2 in ns", bool(true)); // 2 == 2.0, as rhai compares an int and a float
    check("three in ns", bool(false));
    check("key in words", bool(true));
    check("m.contains(\"k\")", bool(true));
}

#[test]
fn if_takes_a_branch_and_wants_a_bool() {
    check("if i > 5 { \"big\" } else { \"small\" }", s("big"));
    check("if i > 50 { 1 } else if i > 5 { 2 } else { 3 }", int(2));
    check("if i > 50 { 1 }", Ok(Value::None));
    check("if yes { s.len() } else { 0 }", int(5));
    check("if i { 1 } else { 2 }", Err(EvalError::TypeMismatch));
}

#[test]
fn concatenation_renders_ints_bools_and_nothing_for_none() {
    check("s + \"-\" + i", s("héllo-7"));
    check("i + \"/\" + i", s("7/7"));
    check("i + i + \"/\"", s("14/")); // left to right: 7 + 7 first
    check("\"on:\" + yes", s("on:true"));
    check("s + None", s("héllo"));
    check("s[z] + \"!\"", s("h!"));
    check("s + 1.5", s("héllo1.5")); // floats: rhai's own rendering (the native lane hands over)
    check("s[z] + s[z + 1]", s("hé")); // char + char: rhai makes a string
}

#[test]
fn int_and_float_arithmetic_mix_and_fail_like_rhai() {
    check("i / 2", int(3));
    check("i / 2.0", float(3.5));
    check("i * f", float(10.5));
    check("i + f - 0.5", float(8.0));
    check("i % 4", int(3));
    check("big + 1", Err(EvalError::Arithmetic));
    check("big * 2", Err(EvalError::Arithmetic));
    check("-low", Err(EvalError::Arithmetic));
    check("low / neg1", Err(EvalError::Arithmetic));
    check("i / z", Err(EvalError::Arithmetic));
    check("i % z", Err(EvalError::Arithmetic));
    check("f / fz", float(f64::INFINITY)); // floats do not fail: rhai gives infinity
}

#[test]
fn nan_is_neither_equal_nor_unequal() {
    check("nan == nan", bool(false));
    check("nan != nan", bool(false));
    check("nan < 1", bool(false));
    check("nan == 0", bool(true)); // rhai's comparison against zero is absolute
}

#[test]
fn labels_render_the_same_on_both_lanes() {
    let vars = vars();
    for src in [
        "s + \"-\" + i",
        "xs[neg1].sku + \"/\" + up.to_lower()",
        "if i > 5 { up } else { s }",
        "i * f",
        "nan + 1.0",
        "s[z]",
    ] {
        let e = compile(src, ExprKind::Label).expect("compiles");
        let mut native = String::from("x=");
        e.eval_label(&vars, &mut native).expect("renders");
        let rhai = e.eval_rhai_lane(&vars).expect("evaluates").to_string();
        assert_eq!(native, format!("x={rhai}"), "{src}");
    }
}

#[test]
fn strings_over_the_size_limit_are_rhai_s_errors() {
    let big = Value::Str("x".repeat(sonde_expr::MAX_STRING_SIZE + 1));
    let vars = [("big", big.clone()), ("yes", Value::Bool(true))];
    // Producing a string over the limit is a budget error; reading or passing one on is not.
    for (src, want) in [
        ("big + \"y\"", Err(EvalError::BudgetExceeded)),
        ("big.to_upper()", Err(EvalError::BudgetExceeded)),
        (
            "big.len()",
            Ok(Value::Int(
                i64::try_from(sonde_expr::MAX_STRING_SIZE + 1).expect("fits"),
            )),
        ),
        ("big.contains(\"y\")", Ok(Value::Bool(false))),
        ("if yes { big } else { \"\" }", Ok(big.clone())),
    ] {
        let e = compile(src, ExprKind::Any).expect("compiles");
        assert!(e.is_native(), "{src}");
        assert_eq!(e.eval(&vars), want, "native: {src}");
        assert_eq!(e.eval_rhai_lane(&vars), want, "rhai: {src}");
    }
}

#[test]
fn in_over_a_list_at_the_size_limit_agrees() {
    // The native lane tallies rhai's operations conservatively and hands long lists over; either
    // way the answer is the same.
    let n = i64::try_from(sonde_expr::MAX_COLLECTION_SIZE).expect("fits");
    let vars = [("xs", Value::List((0..n).map(Value::Int).collect()))];
    let last = format!("{} in xs", n - 1);
    for (src, want) in [("-1 in xs", false), (last.as_str(), true)] {
        let e = compile(src, ExprKind::Any).expect("compiles");
        assert!(e.is_native(), "{src}");
        assert_eq!(e.eval(&vars), Ok(Value::Bool(want)), "native: {src}");
        assert_eq!(
            e.eval_rhai_lane(&vars),
            Ok(Value::Bool(want)),
            "rhai: {src}"
        );
    }
}

#[test]
fn template_holes_on_the_native_lane_render_as_rhai_does() {
    let vars = vars();
    let t = compile(
        "{s + \"-\" + i} | {if i > 5 { up.to_lower() } else { s }} | {xs[neg1].sku} | {i * f}",
        ExprKind::Template,
    )
    .expect("compiles");
    assert!(t.is_native());
    let mut out = String::new();
    t.render(&vars, &mut out).expect("renders");
    assert_eq!(out, "héllo-7 | nz | A1 | 10.5");
    assert_eq!(t.eval_rhai_lane(&vars), Ok(Value::Str(out)));
}
