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

/// What a hostile expression must come to: refused at compile time for a stated reason, or
/// compiled and stopped at run time with a given error, within a second.
enum Outcome {
    Refused(&'static str),
    Stopped(EvalError),
}

#[test]
fn data_blow_ups_are_refused_or_exceed_the_budget() {
    let vars = [
        ("s", Value::from("abcdefgh")),
        ("xs", Value::List(vec![Value::Int(1); 100])),
    ];
    let xs_chain = |n: usize| vec!["xs"; n].join(" + ");
    let cases = [
        // `pad` grows its receiver in place, and a captured value is a constant.
        (
            "s.pad(100000000, \"x\")".to_owned(),
            Outcome::Stopped(EvalError::TypeMismatch),
        ),
        // On a temporary the growth itself is stopped: 80 bytes padded past the string limit.
        (
            "(s + s + s + s + s + s + s + s + s + s).pad(70000, \"y\")".to_owned(),
            Outcome::Stopped(EvalError::BudgetExceeded),
        ),
        (
            "(s + \"\").pad(100000000, \"x\")".to_owned(),
            Outcome::Stopped(EvalError::BudgetExceeded),
        ),
        // A list grown past the collection limit at run time, within the depth limit.
        (
            "(xs + xs).pad(1000000, 0)".to_owned(),
            Outcome::Stopped(EvalError::BudgetExceeded),
        ),
        (
            format!("({}).pad(20000, 0)", xs_chain(40)),
            Outcome::Stopped(EvalError::BudgetExceeded),
        ),
        // 102 chained operators: past the depth limit before anything runs.
        (xs_chain(102), Outcome::Refused("nested too deeply")),
        // Constant-only: rhai's optimiser folds it while compiling and hits the size limit there.
        (
            "[0].pad(1000000, 0)".to_owned(),
            Outcome::Refused("too large"),
        ),
        // An unbounded range driven through a closure: closures are not in the language.
        (
            "range(0, 100000000).map(|x| x)".to_owned(),
            Outcome::Refused("defining functions is not allowed"),
        ),
    ];
    for (src, outcome) in cases {
        let compiled = compile(&src, ExprKind::Any);
        match outcome {
            Outcome::Refused(reason) => {
                let err = compiled.err().unwrap_or_else(|| panic!("{src}: compiled"));
                assert!(err.message().contains(reason), "{src}: {err}");
                assert!(err.position().is_some(), "{src}: {err}");
            }
            Outcome::Stopped(wanted) => {
                let e = compiled.unwrap_or_else(|err| panic!("{src}: {err}"));
                let start = Instant::now();
                let r = e.eval(&vars);
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "{src} took {:?}",
                    start.elapsed()
                );
                assert_eq!(r, Err(wanted), "{src}");
            }
        }
    }
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
