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
    let eval = |src: &str| compile(src, ExprKind::Any).expect(src).eval(&vars);
    for (captured, temporary) in [
        ("items.push(2)", "[1].push(2)"),
        ("items.clear()", "[1].clear()"),
        ("items.pop()", "[1].pop()"),
        ("items.insert(0, 5)", "[1].insert(0, 5)"),
        ("items.truncate(0)", "[1].truncate(0)"),
        ("items.reverse()", "[1].reverse()"),
        ("s.clear()", "\"ab\".clear()"),
        ("s.trim()", "\"ab\".trim()"),
        ("s.make_upper()", "\"ab\".make_upper()"),
    ] {
        // On a captured value the method is refused at run time ...
        assert_eq!(eval(captured), Err(EvalError::TypeMismatch), "{captured}");
        // ... while on a temporary it runs: what stops it is that captured values are constants.
        assert!(
            eval(temporary).is_ok(),
            "{temporary}: {:?}",
            eval(temporary)
        );
    }
    // A read after a mutation in the same expression never sees a changed value: the whole
    // expression fails instead.
    assert_eq!(
        eval("[items.pop(), len(items), s.make_upper(), s]"),
        Err(EvalError::TypeMismatch)
    );
    // Methods that make a new value work on captured values and leave them as they were, also
    // for the next evaluation on this thread (whose scope is reused).
    assert_eq!(
        eval("[items + [2], s.to_upper()]"),
        Ok(Value::List(vec![
            Value::List(vec![Value::Int(1), Value::Int(2)]),
            Value::from("AB"),
        ]))
    );
    assert_eq!(
        eval("[len(items), s]"),
        Ok(Value::List(vec![Value::Int(1), Value::from("ab")]))
    );
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
