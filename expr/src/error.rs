//! `CompileError` (cold path, carries a message and a position) and `EvalError` (hot path, `Copy`).

use std::fmt;

/// A place in the source the user wrote: 1-based line and column (columns count characters).
///
/// For templates the position is inside the whole template string, not inside one `{…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl Position {
    /// The position of byte `offset` in `source` (clamped to the end).
    pub(crate) fn at(source: &str, offset: usize) -> Position {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &source[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        Position {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why an expression does not compile: a message a person can act on, and where.
///
/// `Display` gives one line: the message, then the position when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .position.map(|p| format!(" (at {p})")).unwrap_or_default())]
pub struct CompileError {
    message: String,
    position: Option<Position>,
}

impl CompileError {
    pub(crate) fn new(message: impl Into<String>, position: Option<Position>) -> Self {
        CompileError {
            message: message.into(),
            position,
        }
    }

    /// The message, without the position.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where in the source the problem is, when it is known.
    #[must_use]
    pub fn position(&self) -> Option<Position> {
        self.position
    }
}

/// Why an evaluation failed: small, `Copy`, allocation-free; formatted only when reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A variable the expression reads is not captured (the lookup returned nothing).
    #[error("a variable the expression reads is not captured")]
    MissingVariable,
    /// A field or map key the expression reads does not exist.
    #[error("a field the expression reads does not exist")]
    MissingField,
    /// An index is past the end of a list or string.
    #[error("an index is out of bounds")]
    IndexOutOfBounds,
    /// A value has the wrong type: a condition that is not a bool, a value that is not a
    /// number, an operator or function applied to types it does not take.
    #[error("a value has the wrong type")]
    TypeMismatch,
    /// Arithmetic failed: division by zero, overflow, a number that does not parse.
    #[error("arithmetic error (division by zero, overflow, or a number that does not parse)")]
    Arithmetic,
    /// The expression used up its budget: operations, call depth, or string/list/map size.
    #[error("the expression exceeded its budget (operations, depth or data size)")]
    BudgetExceeded,
    /// A panic inside evaluation (or inside the caller's lookup) was caught.
    #[error("evaluation panicked (the panic was caught)")]
    Panicked,
    /// Any other runtime error raised by the interpreter.
    #[error("runtime error in the expression")]
    Runtime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let src = "ab\ncdé\nf";
        assert_eq!(Position::at(src, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::at(src, 3), Position { line: 2, column: 1 });
        // 'é' is two bytes; the 'f' after the newline is on line 3.
        assert_eq!(Position::at(src, 8), Position { line: 3, column: 1 });
        assert_eq!(Position::at(src, 7), Position { line: 2, column: 4 });
        assert_eq!(Position::at(src, 999), Position { line: 3, column: 2 });
    }

    #[test]
    fn compile_error_display_is_one_line_with_position() {
        let e = CompileError::new(
            "unknown variable `x`",
            Some(Position { line: 1, column: 4 }),
        );
        assert_eq!(e.to_string(), "unknown variable `x` (at line 1, column 4)");
        let e = CompileError::new("too long", None);
        assert_eq!(e.to_string(), "too long");
    }

    #[test]
    fn eval_error_is_copy_and_small() {
        fn is_copy<T: Copy>() {}
        is_copy::<EvalError>();
        assert_eq!(std::mem::size_of::<EvalError>(), 1);
    }
}
