//! Compile errors carry a message a person can act on and the position in what they wrote.

use sonde_expr::{CompileOptions, ExprKind, Position, compile, compile_with};

fn pos(line: u32, column: u32) -> Option<Position> {
    Some(Position { line, column })
}

#[test]
fn syntax_errors_point_at_the_user_s_source_not_the_rewritten_one() {
    let e = compile("order.total + \n   * 2", ExprKind::Value).expect_err("bad");
    assert_eq!(e.position(), pos(2, 4));
    let e = compile(
        "order.customer.country == \"x\" and and",
        ExprKind::Condition,
    )
    .expect_err("bad");
    assert_eq!(e.position(), pos(1, 35));
    let e = compile("len(xs) > ", ExprKind::Condition).expect_err("bad");
    assert!(e.position().is_some());
}

#[test]
fn unknown_variables_list_the_available_ones() {
    let opts = CompileOptions::with_variables(["order", "user"]);
    let e = compile_with("order.total + usr.id", ExprKind::Value, &opts).expect_err("unknown");
    assert_eq!(
        e.message(),
        "unknown variable `usr`; available: order, user"
    );
    assert_eq!(e.position(), pos(1, 15));
    assert_eq!(
        e.to_string(),
        "unknown variable `usr`; available: order, user (at line 1, column 15)"
    );
    let none = CompileOptions::with_variables(Vec::<String>::new());
    let e = compile_with("x", ExprKind::Label, &none).expect_err("unknown");
    assert!(e.message().contains("no variables are captured"), "{e}");
    assert!(compile_with("order.total * 2 and user.id", ExprKind::Any, &opts).is_ok());
}

#[test]
fn template_errors_point_into_the_whole_template() {
    let opts = CompileOptions::with_variables(["user"]);
    let e = compile_with(
        "hello {user.name}\nbasket {basket}",
        ExprKind::Template,
        &opts,
    )
    .expect_err("unknown");
    assert_eq!(e.position(), pos(2, 9));
    let e = compile("a {1 +} b", ExprKind::Template).expect_err("bad");
    assert_eq!(e.position(), pos(1, 7));
    let e = compile("a } b", ExprKind::Template).expect_err("single brace");
    assert_eq!(e.position(), pos(1, 3));
    assert!(e.message().contains("}}"));
    let e = compile("a {x", ExprKind::Template).expect_err("unclosed");
    assert_eq!(e.position(), pos(1, 3));
    let e = compile("a {  } b", ExprKind::Template).expect_err("empty");
    assert!(e.message().contains("empty"));
}

#[test]
fn constants_of_the_wrong_type_or_failing_are_compile_errors() {
    let e = compile("\"yes\"", ExprKind::Condition).expect_err("not a bool");
    assert_eq!(
        e.message(),
        "a condition must be true or false, but this is always the string `yes`"
    );
    let e = compile("true", ExprKind::Value).expect_err("not a number");
    assert!(e.message().contains("must be a number"));
    let e = compile("1 / 0", ExprKind::Value).expect_err("fails");
    assert!(e.message().contains("Division by zero"), "{e}");
    assert!(compile("", ExprKind::Value).is_err());
    assert!(compile("   ", ExprKind::Label).is_err());
}

#[test]
fn messages_name_paths_as_written() {
    let e = compile("order.total +* 2", ExprKind::Value).expect_err("bad");
    assert!(!e.message().contains("_v0"), "{e}");
}
