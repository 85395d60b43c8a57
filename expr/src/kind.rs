//! `ExprKind`: what an expression is for, which decides how it is parsed and what it must yield.

use std::fmt;

/// What an expression is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExprKind {
    /// A tracepoint condition: must yield a bool (anything else is an error, never `false`).
    Condition,
    /// A metric value: must yield a number (int, uint or float).
    Value,
    /// A metric label value: any value, rendered as a string.
    Label,
    /// A log template: text with `{expression}` holes, `{{` and `}}` for literal braces.
    Template,
    /// A Deep "watch": any value, returned as is.
    Any,
}

impl fmt::Display for ExprKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExprKind::Condition => "condition",
            ExprKind::Value => "value",
            ExprKind::Label => "label",
            ExprKind::Template => "template",
            ExprKind::Any => "watch",
        })
    }
}
