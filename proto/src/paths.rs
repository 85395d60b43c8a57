//! [`path_matches`]: how a tracepoint's `path` names a source file. Part of the tracepoint
//! contract, so it lives beside the wire types: agents bind by it, and the server warns by it.

/// Whether a tracepoint's `path` names a site's `file`: one is a suffix of the other by whole
/// path components (so `checkout.rs`, `src/checkout.rs` and `/abs/proj/src/checkout.rs` all name
/// the site file `src/checkout.rs`). Backslashes count as separators; `.` components are ignored.
///
/// ```
/// use sonde_proto::path_matches;
///
/// assert!(path_matches("checkout.rs", "src/checkout.rs"));
/// assert!(path_matches("src/checkout.rs", "/build/shop/src/checkout.rs"));
/// assert!(!path_matches("out.rs", "src/checkout.rs"), "not a whole component");
/// ```
pub fn path_matches(tracepoint_path: &str, site_file: &str) -> bool {
    fn components(p: &str) -> impl DoubleEndedIterator<Item = &str> {
        p.split(['/', '\\']).filter(|c| !c.is_empty() && *c != ".")
    }
    let mut a = components(tracepoint_path).rev();
    let mut b = components(site_file).rev();
    let mut compared = 0;
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => compared += 1,
            (Some(_), Some(_)) => return false,
            _ => return compared > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_by_whole_components() {
        for tp in [
            "checkout.rs",
            "src/checkout.rs",
            "/home/me/shop/src/checkout.rs",
            "./src/checkout.rs",
            "src\\checkout.rs",
        ] {
            assert!(path_matches(tp, "src/checkout.rs"), "{tp}");
        }
        assert!(path_matches(
            "src/checkout.rs",
            "/build/shop/src/checkout.rs"
        ));
        assert!(!path_matches("out.rs", "src/checkout.rs"));
        assert!(!path_matches("lib/checkout.rs", "src/checkout.rs"));
        assert!(!path_matches("", "src/checkout.rs"));
    }
}
