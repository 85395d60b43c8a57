//! Finding a test's own lines by marker comments, so editing a file does not break its tests.

/// The 1-based number of the first line of `text` holding `marker` (a line that calls a
/// `line_of(…)` helper with it is not the marked line).
pub fn line(text: &str, marker: &str) -> u32 {
    let at = text
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of("))
        .unwrap_or_else(|| panic!("no line holds {marker:?}"));
    u32::try_from(at + 1).expect("a file of fewer than 4 billion lines")
}
