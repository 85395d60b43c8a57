//! Hostile expressions (deep nesting, huge strings, long operator chains, size blow-ups) are
//! refused at compile time or stopped by their budget; none runs away.

use std::time::{Duration, Instant};

use sonde_expr::{
    CompileOptions, EvalError, ExprKind, MAX_SOURCE_LEN, Value, compile, compile_with,
};

#[test]
fn overlong_sources_are_refused() {
    let src = "1 + ".repeat(MAX_SOURCE_LEN / 4) + "1";
    let err = compile(&src, ExprKind::Value).expect_err("too long");
    assert!(err.message().contains("limit is 4096"), "{err}");
    let opts = CompileOptions {
        max_source_len: Some(8),
        ..CompileOptions::default()
    };
    assert!(compile_with("123456789", ExprKind::Value, &opts).is_err());
}

#[test]
fn deep_nesting_is_refused() {
    for src in [
        format!("{}1{}", "(".repeat(500), ")".repeat(500)),
        format!("{}x", "not ".repeat(500)),
        format!("{}x", "!".repeat(1000)),
        format!("{}1{}", "[".repeat(300), "]".repeat(300)),
        vec!["x"; 1000].join(" + "),
        vec!["a == b"; 300].join(" && "),
        format!("{}1{}", "abs(".repeat(400), ")".repeat(400)),
    ] {
        let err = compile(&src, ExprKind::Any).expect_err("too deep");
        assert!(err.position().is_some(), "{err}");
    }
}

#[test]
fn data_blow_ups_exceed_the_budget() {
    let vars = [
        ("s", Value::from("abcdefgh")),
        ("xs", Value::List(vec![Value::Int(1); 100])),
    ];
    for src in [
        "s.pad(100000000, \"x\")",
        "(s + s + s + s + s + s + s + s + s + s).pad(70000, \"y\")",
        "xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs + xs",
        "[0].pad(1000000, 0)",
        "range(0, 100000000).map(|x| x)",
    ] {
        let Ok(e) = compile(src, ExprKind::Any) else {
            continue;
        };
        let start = Instant::now();
        let r = e.eval(&vars);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{src} took {:?}",
            start.elapsed()
        );
        assert!(
            matches!(r, Err(EvalError::BudgetExceeded | EvalError::TypeMismatch)),
            "{src}: {r:?}"
        );
    }
    let e = compile("(s + \"\").pad(100000000, \"x\")", ExprKind::Any).expect("compiles");
    assert_eq!(e.eval(&vars), Err(EvalError::BudgetExceeded));
}

#[test]
fn long_but_flat_expressions_stay_fast() {
    // The longest chain the depth limit allows, evaluated many times, stays well below a millisecond each.
    let src = vec!["x"; 40].join(" + ");
    let e = compile(&src, ExprKind::Value).expect("compiles");
    let vars = [("x", Value::Int(1))];
    assert_eq!(e.eval_f64(&vars), Ok(40.0));
    let start = Instant::now();
    for _ in 0..1000 {
        assert_eq!(e.eval_f64(&vars), Ok(40.0));
    }
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn huge_captured_values_are_bounded() {
    let mut v = Value::None;
    for _ in 0..100 {
        v = Value::List(vec![v]);
    }
    let e = compile("str(x) + \"\"", ExprKind::Any).expect("compiles");
    assert_eq!(e.eval(&[("x", v)]), Err(EvalError::BudgetExceeded));
}
