//! The debug-info index maps this test binary's own lines to addresses inside the right
//! functions, finds the locals in scope there with readable capture plans, names the nearest
//! lines with code for a comment line, and reports a binary without DWARF clearly.
//!
//! This binary is built with `debug = 2` (`[profile.dev.package.sonde-agent]` in the root
//! Cargo.toml), so its functions have variable DIEs. Lines are found by marker comments in this
//! file's own text, so editing the file does not break the test.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]

use std::hint::black_box;
use std::sync::OnceLock;

use sonde_agent::native::{AddressSource, CapturePlan, DebugIndex, LoadError};

const FILE: &str = "tests/native_index.rs";

#[inline(never)]
fn sum_squares(n: u64) -> u64 {
    let mut total = 0u64;
    let base = black_box(n) + 1; // @base
    for i in 0..n {
        let square = black_box(i * i); // @loop
        total = black_box(total + square + base);
    }

    // @comment: this line and the blank one above have no code
    total
}

fn index() -> &'static DebugIndex {
    static INDEX: OnceLock<DebugIndex> = OnceLock::new();
    INDEX.get_or_init(|| DebugIndex::for_current_exe().expect("this test binary has debug info"))
}

/// The line of this file holding `marker`.
fn line_of(marker: &str) -> u32 {
    let text = include_str!("native_index.rs");
    let at = text
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of("))
        .expect("marker present");
    u32::try_from(at + 1).expect("small file")
}

/// The runtime address range of `sum_squares`, from the index, checked against its fn pointer.
fn sum_squares_range() -> std::ops::Range<u64> {
    let entry = sum_squares as fn(u64) -> u64 as usize as u64;
    let function = index()
        .function_at(entry)
        .expect("readable DWARF")
        .expect("sum_squares is described");
    assert_eq!(function.name.as_deref(), Some("sum_squares"));
    assert_eq!(
        function.range.start, entry,
        "the fn pointer is the function's entry"
    );
    function.range
}

#[test]
fn the_index_has_variables_in_this_debug_build() {
    assert_eq!(black_box(sum_squares(black_box(3))), 4 * 3 + 5);
    assert!(
        index().has_variables(),
        "needs debug = 2 for sonde-agent's targets"
    );
}

#[test]
fn a_line_maps_to_addresses_inside_its_function() {
    let range = sum_squares_range();
    let found = index().lookup(FILE, line_of("// @base"));
    assert_eq!(found.files.len(), 1, "{:?}", found.files);
    assert!(index().file_path(found.files[0]).ends_with(FILE));
    assert!(!found.addresses.is_empty());
    for a in &found.addresses {
        assert!(
            range.contains(&a.address),
            "{:#x} outside {range:x?}",
            a.address
        );
        assert_eq!(a.source, AddressSource::LineRow);
    }
    // An absolute path and a bare file name match too.
    let absolute = format!("{}/{FILE}", env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        index().lookup(&absolute, line_of("// @base")).addresses,
        found.addresses
    );
    assert_eq!(
        index()
            .lookup("native_index.rs", line_of("// @base"))
            .addresses,
        found.addresses
    );
}

#[test]
fn a_line_in_a_loop_body_has_code_and_readable_locals() {
    let range = sum_squares_range();
    let found = index().lookup(FILE, line_of("// @loop"));
    assert!(!found.addresses.is_empty());
    assert!(found.addresses.iter().all(|a| range.contains(&a.address)));

    let vars = index()
        .variables_at(found.addresses[0].address)
        .expect("readable DWARF");
    for name in ["n", "total", "base", "i"] {
        let var = vars
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} in scope: {vars:#?}"));
        assert!(var.plan.is_available(), "{name}: {:?}", var.plan);
        assert!(
            !matches!(var.plan, CapturePlan::Const(_)),
            "{name} is a runtime value"
        );
        assert_eq!(var.type_name.as_deref(), Some("u64"), "{name}");
        assert_eq!(var.byte_size, Some(8), "{name}");
        assert_eq!(var.function.as_deref(), Some("sum_squares"));
    }
    assert!(vars.iter().any(|v| v.name == "n" && v.is_parameter));
}

#[test]
fn a_comment_line_has_no_code_but_names_the_nearest_lines() {
    let line = line_of("// @comment");
    let found = index().lookup(FILE, line);
    assert_eq!(found.files.len(), 1);
    assert!(found.is_empty(), "{:?}", found.addresses);
    let (before, after) = (
        found.nearest.before.expect("a line before"),
        found.nearest.after.expect("a line after"),
    );
    assert!(before < line && line < after, "{before} < {line} < {after}");
    assert!(!index().lookup(FILE, before).is_empty());
    assert!(!index().lookup(FILE, after).is_empty());
}

#[test]
fn an_unknown_file_matches_nothing() {
    let found = index().lookup("src/no_such_file.rs", 10);
    assert!(found.files.is_empty());
    assert!(found.is_empty());
    assert_eq!(found.nearest, Default::default());
    // Whole components only: `index.rs` is not a suffix match for `native_index.rs`.
    assert!(index().matching_files("index.rs").iter().all(|&f| {
        let path = index().file_path(f);
        path.ends_with("/index.rs")
    }));
}

#[test]
fn a_binary_without_debug_info_is_a_clear_error() {
    let path = std::path::Path::new("/bin/true");
    if !path.exists() {
        return;
    }
    match DebugIndex::build(path, 0) {
        Err(err @ LoadError::NoDebugInfo { .. }) => {
            let text = err.to_string();
            assert!(text.contains("no debug info"), "{text}");
            assert!(
                text.contains("debug = 1") && text.contains("split debuginfo"),
                "{text}"
            );
        }
        // A system with coreutils' debug info installed finds it by build-id: also right.
        Ok(index) => assert_ne!(index.debug_file(), path),
        Err(other) => panic!("unexpected error: {other}"),
    }
}
