//! The sandbox: every forbidden construct is refused at compile time, or stopped at run time
//! with the right error; nothing an expression does reaches the caller's values.

use sonde_expr::{EvalError, ExprKind, Value, compile};

fn refused(src: &str, wanted: &str) {
    let err = compile(src, ExprKind::Any).expect_err(src);
    assert!(err.message().contains(wanted), "{src}: {err}");
    assert!(err.position().is_some(), "{src}: {err}");
}

#[test]
fn loops_are_refused() {
    for src in [
        "while true { 1 }",
        "loop { 1 }",
        "for x in [1] { x }",
        "do { 1 } while true",
    ] {
        refused(src, "loops are not allowed");
    }
}

#[test]
fn assignment_and_declarations_are_refused() {
    for src in ["x = 1", "x += 1", "x -= 1", "x *= 2", "x.y = 1", "x[0] = 1"] {
        refused(src, "assignment is not allowed");
    }
    refused("let y = 1", "declaring variables");
    refused("const y = 1", "declaring variables");
}

#[test]
fn eval_printing_modules_and_functions_are_refused() {
    refused("eval(\"1\")", "`eval` is not allowed");
    refused("print(x)", "printing is not allowed");
    refused("debug(x)", "printing is not allowed");
    refused("import \"m\" as m", "modules are not allowed");
    refused("fn f() { 1 }", "defining functions");
    refused("|x| x + 1", "defining functions");
    refused("`${x}`", "back-tick strings");
    assert!(compile("{ 1 }", ExprKind::Any).is_err());
    assert!(compile("1; 2", ExprKind::Any).is_err());
}

#[test]
fn mutating_methods_cannot_change_captured_values() {
    let vars = [
        ("items", Value::List(vec![Value::Int(1)])),
        ("s", Value::from("ab")),
    ];
    for src in [
        "items.push(2)",
        "items.clear()",
        "s.clear()",
        "s.trim()",
        "items.pop()",
    ] {
        let e = compile(src, ExprKind::Any).expect("compiles");
        assert_eq!(e.eval(&vars), Err(EvalError::TypeMismatch), "{src}");
    }
    assert_eq!(vars[0].1, Value::List(vec![Value::Int(1)]));
}

#[test]
fn unknown_variables_are_missing_at_run_time() {
    let e = compile("nope + 1", ExprKind::Value).expect("compiles");
    assert_eq!(e.eval_f64(&()), Err(EvalError::MissingVariable));
}

#[test]
fn panics_in_the_lookup_are_caught() {
    let e = compile("x + 1", ExprKind::Value).expect("compiles");
    let vars = sonde_expr::FnLookup(|_: &str| -> Option<Value> { panic!("lookup exploded") });
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = e.eval_f64(&vars);
    std::panic::set_hook(prev);
    assert_eq!(r, Err(EvalError::Panicked));
    // The thread's evaluation state is still usable.
    assert_eq!(e.eval_f64(&[("x", Value::Int(1))]), Ok(2.0));
}
