//! A type that is not `Capture` at a `probe!` fails to compile with an error that names the ways
//! out: `?x` (its `Debug`), `%x` (its `Display`) and `#[derive(Capture)]`.
//!
//! rustc type-checks a three-line program against the `sonde-agent` library this test was built
//! with (the rlib beside the test binary in `target/.../deps`), so nothing new is compiled.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The `libsonde_agent-*.rlib` files beside this test binary, newest first.
fn agent_rlibs(deps: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(deps)
        .expect("the test binary's directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libsonde_agent-") && n.ends_with(".rlib"))
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn a_type_without_capture_gets_an_error_naming_debug_display_and_derive() {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir").to_path_buf();
    let rlibs = agent_rlibs(&deps);
    assert!(
        !rlibs.is_empty(),
        "no libsonde_agent-*.rlib in {}",
        deps.display()
    );
    let dir = tempfile_dir();
    let src = dir.join("probe_a_plain_struct.rs");
    std::fs::write(
        &src,
        "pub struct Order { pub total: f64 }\n\
         pub fn checkout(order: &Order) {\n    sonde_agent::probe!(order);\n}\n",
    )
    .expect("write the program");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let mut tried = Vec::new();
    for rlib in rlibs {
        let out = Command::new(&rustc)
            .args([
                "--edition",
                "2024",
                "--crate-type",
                "lib",
                "--emit=metadata",
            ])
            .arg("--out-dir")
            .arg(&dir)
            .arg("-L")
            .arg(format!("dependency={}", deps.display()))
            .arg("--extern")
            .arg(format!("sonde_agent={}", rlib.display()))
            .arg(&src)
            .output()
            .expect("run rustc");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // Another build's rlib (other features, other compiler): try the next one.
        if ["E0460", "E0463", "E0464", "E0514", "E0519"]
            .iter()
            .any(|code| stderr.contains(code))
        {
            tried.push(stderr);
            continue;
        }
        assert!(!out.status.success(), "the program compiled:\n{stderr}");
        for wanted in [
            "`Order` cannot be captured at a probe site",
            "`probe!(?x)` through its `Debug`",
            "`probe!(%x)` through its `Display`",
            "`#[derive(sonde_agent::Capture)]`",
        ] {
            assert!(stderr.contains(wanted), "no {wanted:?} in:\n{stderr}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    panic!(
        "no usable sonde-agent rlib; rustc said:\n{}",
        tried.join("\n---\n")
    );
}

/// A fresh directory under the system temp dir for the program and rustc's output.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sonde-uncapturable-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
