//! The debug-info index maps this test binary's own lines to addresses inside the right
//! functions, finds the locals in scope there with readable capture plans, names the nearest
//! lines with code for a comment line, reports a binary without DWARF clearly, and reads the
//! canonical frame address rule at an address from the executable's unwind info (checked
//! against the real stack and against hand-written CFI).
//!
//! This binary is built with `debug = 2` (`[profile.dev.package.sonde-agent]` in the root
//! Cargo.toml), so its functions have variable DIEs. Lines are found by marker comments in this
//! file's own text, so editing the file does not break the test.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]

mod markers;
#[path = "../../tests/common/skip.rs"]
mod skip;

use std::arch::{asm, global_asm};
use std::hint::black_box;
use std::sync::OnceLock;

use sonde_agent::native::{AddressSource, CapturePlan, CfaRule, DebugIndex, LoadError};

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
    markers::line(include_str!("native_index.rs"), marker)
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
        skip::skip(
            "a_binary_without_debug_info_is_a_clear_error",
            "/bin/true does not exist",
        );
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

/// The address of an instruction in this function and RSP / RBP there, read by inline asm;
/// with a CFA rule for that address, also the 8 bytes just below the CFA, read while this frame
/// is live (the return address, if the rule is right).
#[inline(never)]
fn frame_probe(rule: Option<CfaRule>) -> (u64, u64, u64, Option<u64>) {
    let (pc, sp, bp): (u64, u64, u64);
    // Safety: reads RIP (of the `mov` after `lea`), RSP and RBP into registers; no memory access,
    // no stack change.
    unsafe {
        asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let below_cfa = match rule {
        Some(CfaRule::RegisterOffset { reg, offset }) => {
            let base = match reg {
                7 => sp,
                6 => bp,
                other => panic!("CFA based on register {other}"),
            };
            let cfa = base.wrapping_add_signed(offset);
            assert!(cfa > sp, "the CFA {cfa:#x} is above RSP {sp:#x}");
            // Safety: between RSP and the CFA of this live frame (checked just above that it is
            // above RSP; the caller's frame follows), so mapped and aligned.
            Some(unsafe { std::ptr::read_volatile((cfa - 8) as *const u64) })
        }
        _ => None,
    };
    black_box((pc, sp, bp, below_cfa))
}

#[inline(never)]
fn calls_frame_probe(rule: Option<CfaRule>) -> (u64, u64, u64, Option<u64>) {
    black_box(frame_probe(rule))
}

#[test]
fn the_cfa_rule_is_rsp_plus_8_at_entry_and_finds_the_return_address_after_the_prologue() {
    assert!(index().has_unwind_info());
    let rsp8 = Some(CfaRule::RegisterOffset { reg: 7, offset: 8 });
    let entry = frame_probe as fn(_) -> _ as usize as u64;
    assert_eq!(index().cfa_at(entry), rsp8);
    // Optimized code from the standard library: the same at its entry.
    for f in [
        std::process::id as fn() -> u32 as usize,
        std::thread::yield_now as fn() as usize,
    ] {
        assert_eq!(index().cfa_at(f as u64), rsp8, "{f:#x}");
    }

    // Inside the body, the CFA computed from the real registers is the caller's RSP before
    // the call: the return address sits just below it, inside `calls_frame_probe`.
    let (pc, ..) = calls_frame_probe(None);
    let inside = index()
        .function_at(pc)
        .expect("readable DWARF")
        .expect("described");
    assert_eq!(inside.name.as_deref(), Some("frame_probe"));
    let rule = index().cfa_at(pc);
    let Some(CfaRule::RegisterOffset { reg, offset }) = rule else {
        panic!("a register rule inside frame_probe: {rule:?}");
    };
    assert!(reg != 7 || offset > 8, "after the prologue: {offset}");
    let (again, _, _, ret) = calls_frame_probe(rule);
    assert_eq!(again, pc);
    let ret = ret.expect("read below the CFA");
    let caller = index()
        .function_at(ret)
        .expect("readable DWARF")
        .expect("described");
    assert_eq!(
        caller.name.as_deref(),
        Some("calls_frame_probe"),
        "{ret:#x}"
    );
}

// A function with hand-written CFI, as optimized code and assembly have it: pushes that move
// the CFA, a frame pointer, and a CFA given by a DWARF expression. Never called; only its
// unwind info is read.
global_asm!(
    ".pushsection .text.sonde_cfi_probe,\"ax\",@progbits",
    ".globl sonde_cfi_probe, sonde_cfi_pushed, sonde_cfi_framed, sonde_cfi_expression",
    ".globl sonde_cfi_popped, sonde_cfi_ret",
    ".type sonde_cfi_probe,@function",
    "sonde_cfi_probe:",
    ".cfi_startproc",
    "push rbx",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbx, -16",
    "sonde_cfi_pushed:",
    "push rbp",
    ".cfi_def_cfa_offset 24",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "sonde_cfi_framed:",
    "nop",
    // DW_CFA_def_cfa_expression, 3 bytes: DW_OP_breg7 (RSP) +8, DW_OP_deref.
    ".cfi_escape 0x0f, 0x03, 0x77, 0x08, 0x06",
    "sonde_cfi_expression:",
    "nop",
    ".cfi_def_cfa rsp, 24",
    "pop rbp",
    ".cfi_def_cfa_offset 16",
    "sonde_cfi_popped:",
    "pop rbx",
    ".cfi_def_cfa_offset 8",
    "sonde_cfi_ret:",
    "ret",
    ".cfi_endproc",
    ".size sonde_cfi_probe, .-sonde_cfi_probe",
    ".popsection",
);

unsafe extern "C" {
    fn sonde_cfi_probe();
    fn sonde_cfi_pushed();
    fn sonde_cfi_framed();
    fn sonde_cfi_expression();
    fn sonde_cfi_popped();
    fn sonde_cfi_ret();
}

#[test]
fn hand_written_cfi_gives_each_rule_and_an_expression_is_named() {
    let at = |f: unsafe extern "C" fn()| index().cfa_at(f as *const () as u64);
    let rule = |reg, offset| Some(CfaRule::RegisterOffset { reg, offset });
    assert_eq!(at(sonde_cfi_probe), rule(7, 8));
    assert_eq!(at(sonde_cfi_pushed), rule(7, 16));
    assert_eq!(at(sonde_cfi_framed), rule(6, 24));
    assert_eq!(at(sonde_cfi_expression), Some(CfaRule::Expression));
    assert_eq!(at(sonde_cfi_popped), rule(7, 16));
    assert_eq!(at(sonde_cfi_ret), rule(7, 8));
}

#[test]
fn with_a_separate_debug_file_the_unwind_info_still_comes_from_the_binary() {
    // Split this binary as a distribution would: a stripped binary with a `.gnu_debuglink`,
    // and a debug file whose `.eh_frame` is `NOBITS`.
    let exe = std::env::current_exe().expect("current exe");
    let dir = std::env::temp_dir().join(format!("sonde-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (binary, debug) = (dir.join("split"), dir.join("split.debug"));
    let objcopy = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("objcopy")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let split = objcopy(&["--only-keep-debug".as_ref(), exe.as_ref(), debug.as_ref()])
        && objcopy(&[
            "--strip-debug".as_ref(),
            format!("--add-gnu-debuglink={}", debug.display()).as_ref(),
            exe.as_ref(),
            binary.as_ref(),
        ]);
    if !split {
        let _ = std::fs::remove_dir_all(&dir);
        skip::skip(
            "with_a_separate_debug_file_the_unwind_info_still_comes_from_the_binary",
            "objcopy (binutils) is not available or failed",
        );
        return;
    }
    let built = DebugIndex::build(&binary, index().bias());
    let _ = std::fs::remove_dir_all(&dir);
    let split = built.expect("the debug file is found by its debuglink");
    assert_eq!(split.debug_file(), debug);
    assert!(split.has_unwind_info());

    let (pc, ..) = calls_frame_probe(None);
    let entry = frame_probe as fn(_) -> _ as usize as u64;
    for at in [entry, pc] {
        assert!(index().cfa_at(at).is_some());
        assert_eq!(split.cfa_at(at), index().cfa_at(at), "{at:#x}");
    }
}
