//! Properties: rendering rules hold for every value, conditions never turn a non-bool into
//! `false`, and the native lane agrees with rhai on every expression it evaluates.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::borrow::Cow;

use sonde_expr::{EvalError, ExprKind, Lent, Lookup, Number, Path, Value, compile};

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
        let vars = [("a", a), ("b", b), ("c", c)];
        check_lanes(&expr, &vars)?;
    }

    #[test]
    fn native_lane_agrees_with_rhai_on_methods_indexes_in_and_if(
        expr in general(),
        a in scalar(),
        s in text(),
        t in text(),
        xs in proptest::collection::vec(scalar(), 0..4),
        m in proptest::collection::btree_map(key(), scalar(), 0..4),
        i in -5i64..5,
    ) {
        let vars = [
            ("a", a),
            ("s", Value::Str(s)),
            ("t", Value::Str(t)),
            ("xs", Value::List(xs)),
            ("m", Value::Map(m)),
            ("i", Value::Int(i)),
        ];
        check_lanes(&expr, &vars)?;
    }
}

/// Compiles `expr` and, when it is on the native lane, checks that its value, its label rendering
/// and its typed reads are rhai's (the same compiled expression, evaluated by rhai alone).
fn check_lanes(expr: &str, vars: &[(&str, Value)]) -> Result<(), TestCaseError> {
    // Variable-free expressions that fail are compile errors: nothing to compare.
    let Ok(e) = compile(expr, ExprKind::Any) else {
        return Ok(());
    };
    // Counted by `most_generated_expressions_are_on_the_native_lane`, not rejected: rejecting
    // would stop a long run at proptest's reject limit.
    if !e.is_native() || e.is_fast_path() {
        return Ok(());
    }
    let rhai = e.eval_rhai_lane(vars);
    let render = |r: &Result<Value, EvalError>| r.clone().map(|v| v.to_string());
    prop_assert_eq!(render(&e.eval(vars)), render(&rhai), "value of {}", expr);
    // A lookup that lends its strings (as Sonde's agent does) gets the same answers.
    let lending = Lending(vars);
    prop_assert_eq!(
        render(&e.eval(&lending)),
        render(&rhai),
        "lent value of {}",
        expr
    );
    prop_assert_eq!(
        render(&e.eval_rhai_lane(&lending)),
        render(&rhai),
        "lent rhai value of {}",
        expr
    );
    let mut lent = String::new();
    let lent = e.render(&lending, &mut lent).map(|()| lent);
    prop_assert_eq!(lent, render(&rhai), "lent label of {}", expr);
    let mut out = String::from("<");
    let label = e.render(vars, &mut out).map(|()| out);
    prop_assert_eq!(
        label,
        render(&rhai).map(|s| format!("<{s}")),
        "label of {}",
        expr
    );
    let cond = compile(expr, ExprKind::Condition).expect("compiles as a condition");
    let want = rhai.clone().and_then(|v| match v {
        Value::Bool(b) => Ok(b),
        _ => Err(EvalError::TypeMismatch),
    });
    prop_assert_eq!(cond.eval_condition(vars), want, "condition {}", expr);
    let number = compile(expr, ExprKind::Value).expect("compiles as a value");
    let want = rhai.and_then(|v| match v {
        Value::Int(i) => Ok(Number::Int(i)),
        Value::Float(f) => Ok(Number::Float(f)),
        _ => Err(EvalError::TypeMismatch),
    });
    let got = number.eval_number(vars);
    // NaN != NaN: compare the renderings.
    prop_assert_eq!(
        got.map(|n| n.to_string()),
        want.map(|n| n.to_string()),
        "value {}",
        expr
    );
    Ok(())
}

/// A lookup that lends the strings it holds as [`Lent::Str`], numbers and bools by value (as
/// Sonde's agent does), the rest as values.
struct Lending<'a>(&'a [(&'a str, Value)]);

impl Lookup for Lending<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        Lookup::get(self.0, name)
    }

    fn lend_path(&self, path: &Path) -> Result<Lent<'_>, EvalError> {
        Ok(match self.0.get_path(path)? {
            Cow::Borrowed(Value::Str(s)) => Lent::Str(s),
            Cow::Borrowed(Value::Int(i)) => Lent::Number(Number::Int(*i)),
            Cow::Borrowed(Value::UInt(u)) => Lent::Number(Number::UInt(*u)),
            Cow::Borrowed(Value::Float(f)) => Lent::Number(Number::Float(*f)),
            Cow::Borrowed(Value::Bool(b)) => Lent::Bool(*b),
            v => Lent::Value(v),
        })
    }
}

/// Strings with what trips up string code: empty, spaces, case, multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-cA-C ]{0,5}",
        "[aé😀ß İ]{0,4}",
        Just("NZ".to_owned()),
    ]
}

/// Well-typed expressions (strings, integers, bools) mixed with `wild()` ones: most evaluate
/// without error, so the lanes' values are compared, not just their errors.
fn general() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => str_e(3),
        3 => int_e(3),
        3 => bool_e(3),
        1 => wild(),
    ]
}

fn lits(items: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(items)
        .prop_map(str::to_owned)
        .boxed()
}

/// A string-valued expression (when `a` is one).
fn str_e(depth: u32) -> BoxedStrategy<String> {
    let leaf = lits(&["s", "t", "\"\"", "\"a\"", "\"É\"", "\" x \"", "\"k\"", "a"]);
    if depth == 0 {
        return leaf;
    }
    let s = || str_e(depth - 1);
    let i = || int_e(depth - 1);
    prop_oneof![
        3 => leaf,
        1 => (s(), lits(&["to_upper", "to_lower", "to_upper", "strip"]))
            .prop_map(|(x, f)| if f == "strip" { format!("strip({x})") } else { format!("({x}).{f}()") }),
        2 => (s(), s()).prop_map(|(x, y)| format!("({x} + {y})")),
        1 => (s(), i()).prop_map(|(x, y)| format!("({x} + {y})")),
        1 => (i(), s()).prop_map(|(x, y)| format!("({x} + {y})")),
        1 => (bool_e(depth - 1), s(), s())
            .prop_map(|(c, x, y)| format!("(if {c} {{ {x} }} else {{ {y} }})")),
        1 => (s(), i()).prop_map(|(x, n)| format!("({x})[{n}]")),
        1 => i().prop_map(|n| format!("xs[{n}]")),
        1 => s().prop_map(|k| format!("m[{k}]")),
    ]
    .boxed()
}

/// An integer-valued expression (floats where a float literal or `a` enters).
fn int_e(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        lits(&[
            "i",
            "a",
            "len(xs)",
            "m.len()",
            "9223372036854775807",
            "2.5",
            "0.0"
        ]),
        (-3i64..10).prop_map(|n| n.to_string()),
    ]
    .boxed();
    if depth == 0 {
        return leaf;
    }
    let i = || int_e(depth - 1);
    prop_oneof![
        3 => leaf,
        2 => str_e(depth - 1).prop_map(|x| format!("len({x})")),
        1 => str_e(depth - 1).prop_map(|x| format!("({x}).len()")),
        3 => (i(), lits(&["+", "-", "*", "/", "%"]), i()).prop_map(|(x, o, y)| format!("({x} {o} {y})")),
        1 => i().prop_map(|x| format!("-({x})")),
        1 => (bool_e(depth - 1), i(), i())
            .prop_map(|(c, x, y)| format!("(if {c} {{ {x} }} else {{ {y} }})")),
        1 => i().prop_map(|n| format!("xs[{n}]")),
    ]
    .boxed()
}

/// A bool-valued expression.
fn bool_e(depth: u32) -> BoxedStrategy<String> {
    let leaf = lits(&["true", "False", "a", "s.is_empty()", "\"k\" in m"]);
    if depth == 0 {
        return leaf;
    }
    let s = || str_e(depth - 1);
    let i = || int_e(depth - 1);
    let b = || bool_e(depth - 1);
    prop_oneof![
        2 => leaf,
        3 => (s(), lits(&["contains", "starts_with", "ends_with", "startswith", "endswith"]), s())
            .prop_map(|(x, f, y)| format!("({x}).{f}({y})")),
        2 => (s(), lits(&["in", "not in"]), s()).prop_map(|(x, o, y)| format!("({x} {o} {y})")),
        1 => (s(), lits(&["in", "not in"])).prop_map(|(x, o)| format!("({x} {o} m)")),
        1 => (i(), lits(&["in", "not in"])).prop_map(|(x, o)| format!("({x} {o} xs)")),
        1 => s().prop_map(|x| format!("({x} in xs)")),
        1 => b().prop_map(|x| format!("not {x}")),
        2 => (b(), lits(&["and", "or", "&&", "||"]), b()).prop_map(|(x, o, y)| format!("({x} {o} {y})")),
        2 => (i(), lits(&["<", "<=", ">", ">=", "==", "!="]), i()).prop_map(|(x, o, y)| format!("({x} {o} {y})")),
        1 => (s(), lits(&["<", "==", "!="]), s()).prop_map(|(x, o, y)| format!("({x} {o} {y})")),
        1 => s().prop_map(|x| format!("is_empty({x})")),
        1 => (b(), b(), b()).prop_map(|(c, x, y)| format!("(if {c} {{ {x} }} else {{ {y} }})")),
    ]
    .boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("k".to_owned()), Just("é".to_owned()), "[a-c]{1,2}"]
}

/// Methods, calls, indexes, `in`, `if` and concatenation over `a`, `s`, `t`, `xs`, `m`, `i`,
/// with no regard for types: mostly the errors and hand-overs.
fn wild() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("a".to_owned()),
        Just("s".to_owned()),
        Just("t".to_owned()),
        Just("xs".to_owned()),
        Just("m".to_owned()),
        Just("i".to_owned()),
        (-6i64..6).prop_map(|i| i.to_string()),
        (0u32..4).prop_map(|i| format!("{i}.5")),
        prop_oneof![
            Just("\"\""),
            Just("\"a\""),
            Just("\"A\""),
            Just("\"é\""),
            Just("\"k\""),
            Just("\" \""),
        ]
        .prop_map(str::to_owned),
        Just("true".to_owned()),
        Just("False".to_owned()),
        Just("None".to_owned()),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        let method = prop_oneof![
            Just("len"),
            Just("is_empty"),
            Just("to_upper"),
            Just("to_lower"),
        ];
        let method2 = prop_oneof![
            Just("contains"),
            Just("starts_with"),
            Just("ends_with"),
            Just("startswith"),
            Just("endswith"),
        ];
        let op = prop_oneof![
            Just("+"),
            Just("*"),
            Just("/"),
            Just("-"),
            Just("=="),
            Just("<"),
            Just("in"),
            Just("not in"),
            Just("&&"),
            Just("or"),
        ];
        prop_oneof![
            (inner.clone(), method.clone()).prop_map(|(x, f)| format!("({x}).{f}()")),
            (inner.clone(), method).prop_map(|(x, f)| format!("{f}({x})")),
            inner.clone().prop_map(|x| format!("strip({x})")),
            (inner.clone(), method2, inner.clone()).prop_map(|(x, f, y)| format!("({x}).{f}({y})")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x})[{y}]")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("{x}[{y}]")),
            (inner.clone(), op, inner.clone()).prop_map(|(l, o, r)| format!("({l} {o} {r})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, x, y)| format!("(if {c} {{ {x} }} else {{ {y} }})")),
            (inner.clone(), inner.clone()).prop_map(|(c, x)| format!("(if {c} {{ {x} }})")),
            inner.prop_map(|x| format!("not {x}")),
        ]
    })
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
        let e = compile(&format!("a {op} b"), ExprKind::Any).expect("compiles");
        assert!(e.is_native());
        for a in &edges {
            for b in &edges {
                let vars = [("a", a.clone()), ("b", b.clone())];
                assert_eq!(e.eval(&vars), e.eval_rhai_lane(&vars), "{a:?} {op} {b:?}");
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

/// The lane comparisons above skip expressions that are not native: most of what the generators
/// make must be, or they would compare little.
#[test]
fn most_generated_expressions_are_on_the_native_lane() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for (name, strategy) in [
        ("arith", arith().boxed()),
        ("general", general().boxed()),
        ("wild", wild().boxed()),
    ] {
        let (mut native, mut total) = (0, 0);
        for _ in 0..2000 {
            let expr = strategy.new_tree(&mut runner).expect("generates").current();
            // Constants and bare variables never reach either lane; count the rest.
            let Ok(e) = compile(&expr, ExprKind::Any) else {
                continue;
            };
            if e.is_fast_path() {
                continue;
            }
            total += 1;
            if e.is_native() {
                native += 1;
            } else {
                eprintln!("{name}: not native: {expr}");
            }
        }
        assert!(
            total >= 1000,
            "{name}: only {total} expressions read variables"
        );
        assert!(
            native * 10 >= total * 9,
            "{name}: {native} of {total} native"
        );
    }
}
