//! Type shapes decode the real bytes of this test binary's own locals: for each local at a
//! marker line, the test copies the inline bytes from the value in memory, performs the shape's
//! heap reads itself exactly as the trap handler does (pointer at `ptr_offset` of buffer `from`,
//! length fixed or read from the buffer, clipped to `MAX_DEREF_BYTES`, a guarded read), and
//! checks that `TypeShape::decode` returns exactly the expected `Value`. Missing or dangling heap
//! parts fail only the values that need them. The capture plans of the same locals point at
//! their real addresses. Shapes pruned to the paths a tracepoint's expressions read
//! (`DebugIndex::variables_at_reading`, at a second marker) read only the heap those paths need
//! and still resolve every path.
//!
//! This binary is built with `debug = 2` (`[profile.dev.package.sonde-agent]` in the root
//! Cargo.toml), unoptimized, so every local lives in the stack frame. That frame is larger than
//! a page (`scratch`), so LLVM describes its frame base as `DW_OP_call_frame_cfa` minus a
//! constant: the plans go through the CFA rule from `.eh_frame`. Memory is read through
//! `/proc/self/mem`, which fails cleanly (like the handler's guarded read) for a dangling
//! pointer and copies padding bytes without the test reading uninitialized memory itself.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod markers;

use std::arch::asm;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use sonde_agent::native::{
    CapturePlan, CfaRule, DebugIndex, DecodeError, DerefLen, MAX_DEREF_BYTES, MAX_DEREFS,
    MAX_INLINE, TypeShape, Variable,
};
use sonde_expr::{EvalError, ExprKind, Path, Value};

const FILE: &str = "tests/native_shapes.rs";

#[allow(dead_code)] // fields are read from memory through the debug info, not by the code
struct Person {
    email: String,
    age: u32,
}

#[allow(dead_code)] // as `Person`
struct Account {
    id: u64,
    name: String,
    owner: Person,
    active: bool,
}

#[derive(Clone, Copy)]
enum Color {
    #[allow(dead_code)] // only Green is built; the others are in the debug info all the same
    Red,
    Green,
    #[allow(dead_code)]
    Blue,
}

#[allow(dead_code)] // only some variants are built
enum Shape {
    Circle(f64),
    Rect { w: u32, h: u32 },
    Empty,
}

/// A fieldless enum with a negative discriminant.
#[allow(dead_code)]
#[repr(i8)]
enum Sign {
    Minus = -1,
    Zero = 0,
    Plus = 1,
}

/// Niche layout: `B` and `C` are stored as the invalid `bool` values 2 and 3.
#[allow(dead_code)]
enum Tri {
    A(bool),
    B,
    C,
}

/// Larger than `MAX_INLINE`: the fields past 256 bytes are left out, the array is cut.
#[allow(dead_code)]
#[repr(C)]
struct Big {
    first: u64,
    pad: [u8; 300],
    last: u64,
}

// Seven records nested: the seventh is past the depth limit.
#[allow(dead_code)]
struct N1 {
    n: N2,
}
#[allow(dead_code)]
struct N2 {
    n: N3,
}
#[allow(dead_code)]
struct N3 {
    n: N4,
}
#[allow(dead_code)]
struct N4 {
    n: N5,
}
#[allow(dead_code)]
struct N5 {
    n: N6,
}
#[allow(dead_code)]
struct N6 {
    v: u64,
    n: N7,
}
#[allow(dead_code)]
struct N7 {
    v: u64,
}

#[allow(dead_code)] // as `Person`
struct Customer {
    name: String,
    tier: String,
    email: String,
}

#[allow(dead_code)] // as `Person`
struct Line {
    sku: String,
    note: String,
    qty: u32,
}

/// More heap behind it than `MAX_DEREFS` reads: its full shape leaves fields out.
#[allow(dead_code)] // as `Person`
struct Order {
    id: u64,
    country: String,
    note: String,
    tags: Vec<String>,
    customer: Customer,
    gift_for: Option<Box<Customer>>,
    lines: Vec<Line>,
}

/// Ten strings: the full shape has heap reads for the first eight only.
#[allow(dead_code)] // as `Person`
struct Wide {
    s0: String,
    s1: String,
    s2: String,
    s3: String,
    s4: String,
    s5: String,
    s6: String,
    s7: String,
    s8: String,
    s9: String,
}

/// One local as seen at the marker line: its name, its address and size, and RSP / RBP there.
struct Seen {
    name: &'static str,
    addr: u64,
    size: usize,
}

/// Calls `f` with every local at the marker line (while they are alive), and RSP / RBP.
#[inline(never)]
fn locals(f: &mut dyn FnMut(&[Seen], u64, u64)) {
    let text = String::from("hello, sonde");
    let st: &str = "a str";
    let some_u32: Option<u32> = Some(7);
    let no_u32: Option<u32> = None;
    let some_str: Option<&str> = Some("inside");
    let no_str: Option<&str> = None;
    let bytes: Vec<u8> = vec![1, 2, 3];
    let words: Vec<u64> = vec![10, 20, 30];
    let empty: Vec<u64> = Vec::new();
    let many: Vec<u64> = (0..100).collect();
    let account = Account {
        id: 42,
        name: String::from("ada"),
        owner: Person {
            email: String::from("ada@example.com"),
            age: 36,
        },
        active: true,
    };
    let account_ref: &Account = &account;
    let color = Color::Green;
    let flag = true;
    let ratio = 2.5f64;
    let small = -7i8;
    let letter = 'λ';
    let pair: (u8, &str) = (1, "t");
    let triple = [1u16, 2, 3];
    let slice: &[u32] = &[4, 5];
    let rect = Shape::Rect { w: 3, h: 4 };
    let empty_shape = Shape::Empty;
    let failed: Result<u32, String> = Err(String::from("bad"));
    let wide = -5i128;
    let huge = u128::MAX;
    let names: Vec<String> = vec![String::from("a"), String::from("bb")];
    let ten_names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let long = "x".repeat(300);
    let no_string: Option<String> = None;
    let shared = Rc::new(99u64);
    let arc = Arc::new(String::from("arc"));
    let boxed = Box::new(Person {
        email: String::from("b@x"),
        age: 1,
    });
    let dynamic: &dyn Debug = &flag;
    let minus = Sign::Minus;
    let tri_a = Tri::A(true);
    let tri_c = Tri::C;
    let big = Big {
        first: 1,
        pad: [7; 300],
        last: 2,
    };
    let nested = N1 {
        n: N2 {
            n: N3 {
                n: N4 {
                    n: N5 {
                        n: N6 {
                            v: 6,
                            n: N7 { v: 7 },
                        },
                    },
                },
            },
        },
    };
    let seven = 7u64;
    let (r1, r2): (&u64, &&u64) = (&seven, &&seven);
    let chain3: &&&u64 = &r2;
    let chain4: &&&&u64 = &chain3;
    let _ = r1;
    // Makes the frame larger than a page (see the header).
    let scratch = black_box([0u8; 8192]);
    let (sp, bp): (u64, u64);
    // Safety: reads RSP and RBP into registers; no memory access, no stack change.
    unsafe {
        asm!("mov {}, rsp", "mov {}, rbp", out(reg) sp, out(reg) bp, options(nomem, nostack));
    }
    macro_rules! seen {
        ($($v:ident),* $(,)?) => {
            [$(Seen {
                name: stringify!($v),
                addr: &raw const $v as u64,
                size: size_of_local(&$v),
            }),*]
        };
    }
    let all = seen!(
        text,
        st,
        some_u32,
        no_u32,
        some_str,
        no_str,
        bytes,
        words,
        empty,
        many,
        account,
        account_ref,
        color,
        flag,
        ratio,
        small,
        letter,
        pair,
        triple,
        slice,
        rect,
        empty_shape,
        failed,
        wide,
        huge,
        names,
        ten_names,
        long,
        no_string,
        shared,
        arc,
        boxed,
        dynamic,
        minus,
        tri_a,
        tri_c,
        big,
        nested,
        chain3,
        chain4,
    );
    f(&all, sp, bp); // @shapes
    black_box((&all, &scratch));
}

/// Calls `f` with the locals at the second marker line (for pruned shapes).
#[inline(never)]
fn orders(f: &mut dyn FnMut(&[Seen])) {
    let customer = |name: &str, tier: &str| Customer {
        name: name.to_owned(),
        tier: tier.to_owned(),
        email: format!("{name}@example.com"),
    };
    let line = |sku: &str, qty| Line {
        sku: sku.to_owned(),
        note: String::from("none"),
        qty,
    };
    let order = Order {
        id: 7,
        country: String::from("NZ"),
        note: String::from("leave at the door"),
        tags: vec![String::from("gift"), String::from("fragile")],
        customer: customer("ada", "gold"),
        gift_for: Some(Box::new(customer("bob", "basic"))),
        lines: vec![line("tea", 2), line("cup", 1)],
    };
    let order_ref: &Order = &order;
    let wide = Wide {
        s0: String::from("zero"),
        s1: String::from("one"),
        s2: String::from("two"),
        s3: String::from("three"),
        s4: String::from("four"),
        s5: String::from("five"),
        s6: String::from("six"),
        s7: String::from("seven"),
        s8: String::from("eight"),
        s9: String::from("nine"),
    };
    macro_rules! seen {
        ($($v:ident),* $(,)?) => {
            [$(Seen {
                name: stringify!($v),
                addr: &raw const $v as u64,
                size: size_of_local(&$v),
            }),*]
        };
    }
    let all = seen!(order, order_ref, wide);
    f(&all); // @pruned
    black_box(&all);
}

/// The size of a local's own type (for a reference, the reference's size).
fn size_of_local<T>(_local: &T) -> usize {
    size_of::<T>()
}

fn index() -> &'static DebugIndex {
    static INDEX: OnceLock<DebugIndex> = OnceLock::new();
    INDEX.get_or_init(|| DebugIndex::for_current_exe().expect("this test binary has debug info"))
}

/// The line of this file holding `marker`.
fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_shapes.rs"), marker)
}

/// The first address of the line holding `marker`.
fn address_of(marker: &str) -> u64 {
    let found = index().lookup(FILE, line_of(marker));
    found
        .addresses
        .first()
        .expect("the marker line has code")
        .address
}

fn by_name(vars: Vec<Variable>) -> HashMap<String, Variable> {
    vars.into_iter().map(|v| (v.name.clone(), v)).collect()
}

/// The variables in scope at the marker line, by name.
fn variables() -> HashMap<String, Variable> {
    let vars = index().variables_at(address_of("// @shapes"));
    by_name(vars.expect("readable DWARF"))
}

/// A guarded read of this process's memory: `None` where it is not mapped.
fn read_mem(addr: u64, len: usize) -> Option<Vec<u8>> {
    static MEM: OnceLock<File> = OnceLock::new();
    let mem = MEM.get_or_init(|| File::open("/proc/self/mem").expect("/proc/self/mem"));
    let mut buf = vec![0u8; len];
    if len > 0 {
        mem.read_exact_at(&mut buf, addr).ok()?;
    }
    Some(buf)
}

/// The heap reads of `shape`, performed as the handler does.
fn perform(shape: &TypeShape, inline: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut heap: Vec<Option<Vec<u8>>> = Vec::new();
    for (k, d) in shape.derefs().iter().enumerate() {
        assert!(
            usize::from(d.from) <= k,
            "deref {k} reads buffer {}",
            d.from
        );
        let src: Option<&[u8]> = match d.from {
            0 => Some(inline),
            f => heap[usize::from(f) - 1].as_deref(),
        };
        let read = src.and_then(|src| {
            let word = |at: u32| {
                let at = at as usize;
                Some(u64::from_le_bytes(src.get(at..at + 8)?.try_into().ok()?))
            };
            let ptr = word(d.ptr_offset).filter(|&p| p != 0)?;
            let len = match d.len {
                DerefLen::Fixed(n) => u64::from(n),
                DerefLen::Field { offset, elem_size } => {
                    word(offset)?.saturating_mul(u64::from(elem_size))
                }
            };
            let len = len.min(MAX_DEREF_BYTES as u64) as usize;
            read_mem(ptr, len)
        });
        heap.push(read);
    }
    heap
}

fn decode_with(
    shape: &TypeShape,
    inline: &[u8],
    heap: &[Option<Vec<u8>>],
) -> Result<Value, DecodeError> {
    let heap: Vec<Option<&[u8]>> = heap.iter().map(Option::as_deref).collect();
    shape.decode(inline, &heap)
}

/// Each local's shape, inline bytes and heap reads, captured at the marker line.
struct Captured {
    shape: TypeShape,
    inline: Vec<u8>,
    heap: Vec<Option<Vec<u8>>>,
}

fn capture_all() -> HashMap<&'static str, Captured> {
    let vars = variables();
    let mut out = HashMap::new();
    locals(&mut |all, _, _| {
        for seen in all {
            let var = vars
                .get(seen.name)
                .unwrap_or_else(|| panic!("{} in scope", seen.name));
            let Ok(shape) = &var.shape else {
                continue;
            };
            assert_eq!(
                shape.inline_size(),
                seen.size.min(MAX_INLINE),
                "{}",
                seen.name
            );
            assert!(shape.derefs().len() <= MAX_DEREFS, "{}", seen.name);
            let inline = read_mem(seen.addr, shape.inline_size()).expect("a live local");
            let heap = perform(shape, &inline);
            out.insert(
                seen.name,
                Captured {
                    shape: shape.clone(),
                    inline,
                    heap,
                },
            );
        }
    });
    out
}

fn s(text: &str) -> Value {
    Value::Str(text.to_owned())
}

fn record(fields: &[(&'static str, Value)]) -> Value {
    Value::Record(
        fields
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), v.clone()))
            .collect(),
    )
}

fn uints(items: impl IntoIterator<Item = u64>) -> Value {
    Value::List(items.into_iter().map(Value::UInt).collect())
}

#[test]
fn every_local_decodes_from_its_real_bytes() {
    let captured = capture_all();
    let ada = record(&[
        ("id", Value::UInt(42)),
        ("name", s("ada")),
        (
            "owner",
            record(&[("email", s("ada@example.com")), ("age", Value::UInt(36))]),
        ),
        ("active", Value::Bool(true)),
    ]);
    let expected: Vec<(&str, Value)> = vec![
        ("text", s("hello, sonde")),
        ("st", s("a str")),
        ("some_u32", Value::UInt(7)),
        ("no_u32", Value::None),
        ("some_str", s("inside")),
        ("no_str", Value::None),
        ("bytes", uints([1, 2, 3])),
        ("words", uints([10, 20, 30])),
        ("empty", Value::List(Vec::new())),
        // 100 u64s do not fit in one heap read: the length and the first 32.
        (
            "many",
            record(&[("len", Value::UInt(100)), ("head", uints(0..32))]),
        ),
        ("account", ada.clone()),
        ("account_ref", ada),
        ("color", s("Green")),
        ("flag", Value::Bool(true)),
        ("ratio", Value::Float(2.5)),
        ("small", Value::Int(-7)),
        ("letter", s("λ")),
        ("pair", record(&[("0", Value::UInt(1)), ("1", s("t"))])),
        ("triple", uints([1, 2, 3])),
        ("slice", uints([4, 5])),
        (
            "rect",
            record(&[
                ("variant", s("Rect")),
                ("w", Value::UInt(3)),
                ("h", Value::UInt(4)),
            ]),
        ),
        ("empty_shape", record(&[("variant", s("Empty"))])),
        ("failed", record(&[("variant", s("Err")), ("0", s("bad"))])),
        ("wide", Value::Int(-5)),
        ("huge", Value::Float(u128::MAX as f64)),
        ("names", Value::List(vec![s("a"), s("bb")])),
        // One heap read for the vector and one per string: 7 of the 10 fit in MAX_DEREFS.
        (
            "ten_names",
            record(&[
                ("len", Value::UInt(10)),
                (
                    "head",
                    Value::List((0..7).map(|i| s(&i.to_string())).collect()),
                ),
            ]),
        ),
        // Cut to one heap read.
        ("long", s(&"x".repeat(MAX_DEREF_BYTES))),
        ("no_string", Value::None),
        ("shared", Value::UInt(99)),
        ("arc", s("arc")),
        (
            "boxed",
            record(&[("email", s("b@x")), ("age", Value::UInt(1))]),
        ),
        ("minus", s("Minus")),
        (
            "tri_a",
            record(&[("variant", s("A")), ("0", Value::Bool(true))]),
        ),
        ("tri_c", record(&[("variant", s("C"))])),
        // 8 bytes of `first`, then 248 of the 300 in `pad`; `last` is past 256 bytes.
        (
            "big",
            record(&[
                ("first", Value::UInt(1)),
                (
                    "pad",
                    record(&[
                        ("len", Value::UInt(300)),
                        ("head", uints(std::iter::repeat_n(7, 248))),
                    ]),
                ),
            ]),
        ),
        // Six records deep; the seventh is left out.
        (
            "nested",
            ["n"; 5]
                .iter()
                .fold(record(&[("v", Value::UInt(6))]), |inner, name| {
                    record(&[(name, inner)])
                }),
        ),
        ("chain3", Value::UInt(7)),
    ];
    let mut failures = Vec::new();
    for (name, want) in &expected {
        let Some(c) = captured.get(name) else {
            failures.push(format!("{name}: no shape: {:?}", variables()[*name].shape));
            continue;
        };
        let got = decode_with(&c.shape, &c.inline, &c.heap);
        if got.as_ref() != Ok(want) {
            failures.push(format!(
                "{name}: got {got:?}, want {want:?}\n  {:?}",
                c.shape
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_shapes_read_the_heap_only_where_the_type_has_pointers() {
    let captured = capture_all();
    for name in [
        "flag", "ratio", "small", "letter", "color", "some_u32", "triple", "wide",
    ] {
        assert!(captured[name].shape.derefs().is_empty(), "{name}");
    }
    // One read for a string, a vector or a reference; a reference to a struct with two strings
    // reads the struct, then each string from the struct's bytes.
    assert_eq!(captured["text"].shape.derefs().len(), 1);
    assert_eq!(captured["words"].shape.derefs().len(), 1);
    let by_ref = captured["account_ref"].shape.derefs();
    assert_eq!(by_ref.len(), 3);
    assert_eq!(by_ref[0].from, 0);
    assert!(matches!(by_ref[0].len, DerefLen::Fixed(n) if n as usize == size_of::<Account>()));
    assert!(by_ref[1..].iter().all(|d| d.from == 1), "{by_ref:?}");
    // A vector of strings: the vector's buffer, then each string from it.
    let names = captured["names"].shape.derefs();
    assert!(names.len() > 2, "{names:?}");
    assert!(names[1..].iter().all(|d| d.from == 1), "{names:?}");
}

#[test]
fn a_missing_heap_read_fails_only_the_values_that_need_it() {
    let captured = capture_all();
    let none = |c: &Captured| vec![None; c.heap.len()];
    for name in [
        "text",
        "st",
        "some_str",
        "bytes",
        "account_ref",
        "boxed",
        "names",
    ] {
        let c = &captured[name];
        assert_eq!(
            decode_with(&c.shape, &c.inline, &none(c)),
            Err(DecodeError::Unreadable),
            "{name}"
        );
    }
    // No heap needed: `None`, an empty vector, plain values.
    for name in ["no_str", "no_string", "empty", "flag", "color", "some_u32"] {
        let c = &captured[name];
        assert!(decode_with(&c.shape, &c.inline, &none(c)).is_ok(), "{name}");
    }
    // One string of the struct is unreadable: the struct cannot be decoded.
    let c = &captured["account"];
    let mut heap = c.heap.clone();
    heap[1] = None;
    assert_eq!(
        decode_with(&c.shape, &c.inline, &heap),
        Err(DecodeError::Unreadable)
    );

    // A dangling pointer in real bytes: the guarded read fails, and so does the decode.
    let c = &captured["st"];
    let mut inline = c.inline.clone();
    inline[..8].copy_from_slice(&0x10u64.to_le_bytes()); // unmapped
    let heap = perform(&c.shape, &inline);
    assert_eq!(heap, vec![None]);
    assert_eq!(
        decode_with(&c.shape, &inline, &heap),
        Err(DecodeError::Unreadable)
    );
    // A capture from a register is only 8 bytes: a 16-byte `&str` cannot be decoded from it.
    assert!(matches!(
        c.shape.decode(&c.inline[..8], &[Some(b"a str")]),
        Err(DecodeError::Invalid(_))
    ));
}

#[test]
fn unsupported_types_say_what_is_not_supported() {
    let vars = variables();
    let dynamic = &vars["dynamic"];
    let why = dynamic
        .shape
        .as_ref()
        .expect_err("a trait object has no shape");
    assert!(why.contains("trait object"), "{why}");
    let chain4 = &vars["chain4"];
    let why = chain4
        .shape
        .as_ref()
        .expect_err("four pointers are too many");
    assert!(why.contains("more than 3 pointers"), "{why}");
}

#[test]
fn the_plans_point_at_the_locals() {
    // The frame base is the CFA, here RSP plus the frame's size (more than a page).
    let found = index().lookup(FILE, line_of("// @shapes"));
    let rule = index().cfa_at(found.addresses[0].address);
    assert!(
        matches!(rule, Some(CfaRule::RegisterOffset { reg: 7, offset }) if offset > 4096),
        "{rule:?}"
    );
    let vars = variables();
    let mut checked = 0;
    locals(&mut |all, sp, bp| {
        for seen in all {
            let var = &vars[seen.name];
            let base = match var.plan {
                CapturePlan::Mem { reg: 7, offset } => sp.wrapping_add_signed(offset),
                CapturePlan::Mem { reg: 6, offset } => bp.wrapping_add_signed(offset),
                ref other => panic!("{}: {other:?} in an unoptimized build", seen.name),
            };
            assert_eq!(base, seen.addr, "{}", seen.name);
            checked += 1;
        }
    });
    assert_eq!(checked, 40);
}

// ---------------------------------------------------------------------------------------------
// Shapes pruned to the paths the expressions read.

/// The paths a log template reads.
fn paths(template: &str) -> Vec<Path> {
    let expr = sonde_expr::compile(template, ExprKind::Template).expect("compiles");
    expr.paths().to_vec()
}

/// The variables at the second marker, with shapes pruned to what `template` reads.
fn reading(template: &str) -> HashMap<String, Variable> {
    let vars = index().variables_at_reading(address_of("// @pruned"), &paths(template));
    by_name(vars.expect("readable DWARF"))
}

/// The variables at the second marker, with full shapes.
fn full() -> HashMap<String, Variable> {
    by_name(
        index()
            .variables_at(address_of("// @pruned"))
            .expect("readable DWARF"),
    )
}

/// Captures local `name` of `orders` with `shape` (inline bytes, then the heap reads as the
/// handler performs them) and decodes it.
fn capture(name: &str, shape: &TypeShape) -> Result<Value, DecodeError> {
    let mut out = None;
    orders(&mut |all| {
        let seen = all.iter().find(|s| s.name == name).expect("a local");
        assert_eq!(shape.inline_size(), seen.size.min(MAX_INLINE), "{name}");
        let inline = read_mem(seen.addr, shape.inline_size()).expect("a live local");
        let heap = perform(shape, &inline);
        out = Some(decode_with(shape, &inline, &heap));
    });
    out.expect("orders calls back")
}

/// The shape of `name` when the expressions are `template`.
fn pruned(template: &str, name: &str) -> TypeShape {
    reading(template)[name]
        .shape
        .clone()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every path of `template` rooted at a local resolves on the captured values to what it
/// resolves to on `expected`.
fn assert_paths_resolve(template: &str, captured: &[(&str, &Value)], expected: &[(&str, Value)]) {
    for p in paths(template) {
        let value = |vars: &[(&str, &Value)]| {
            let (_, v) = vars.iter().find(|(n, _)| *n == p.root()).copied()?;
            Some(p.resolve_ref(v).cloned())
        };
        let expected: Vec<(&str, &Value)> = expected.iter().map(|(n, v)| (*n, v)).collect();
        assert_eq!(value(captured), value(&expected), "{p}");
    }
}

#[test]
fn a_pruned_shape_reads_only_the_string_its_path_reads() {
    // The full shape of `order` runs out of heap reads; reading one nested string needs one.
    let full = full()["order"].shape.clone().expect("a shape");
    assert_eq!(full.derefs().len(), MAX_DEREFS);
    let shape = pruned("{order.customer.tier}", "order");
    assert_eq!(shape.derefs().len(), 1, "{shape:?}");
    assert_eq!(shape.derefs()[0].from, 0);
    let got = capture("order", &shape).expect("decodes");
    // Only the field read, and of it only `tier`: the other fields are absent.
    let want = record(&[("customer", record(&[("tier", s("gold"))]))]);
    assert_eq!(got, want);
    let country = paths("{order.country}").remove(0);
    assert_eq!(country.resolve_ref(&got), Err(EvalError::MissingField));

    // Two paths: the union. `country` is one read; `lines[1].sku` reads the vector's buffer,
    // then `sku` of each element that fits in it (and no `note`).
    let template = "{order.country} {order.lines[1].sku}";
    let shape = pruned(template, "order");
    let fit = MAX_DEREF_BYTES / size_of::<Line>();
    assert_eq!(shape.derefs().len(), 1 + 1 + fit, "{shape:?}");
    let got = capture("order", &shape).expect("decodes");
    let sku = |v: &str| record(&[("sku", s(v))]);
    let want = record(&[
        ("country", s("NZ")),
        ("lines", Value::List(vec![sku("tea"), sku("cup")])),
    ]);
    assert_eq!(got, want);
    assert_paths_resolve(template, &[("order", &got)], &[("order", want.clone())]);
}

#[test]
fn a_pruned_path_goes_through_references_boxes_and_options() {
    // `&Order` → `Option<Box<Customer>>` → `tier`: the order, the box, then the string.
    let template = "{order_ref.gift_for.tier}";
    let shape = pruned(template, "order_ref");
    let froms: Vec<u8> = shape.derefs().iter().map(|d| d.from).collect();
    assert_eq!(froms, [0, 1, 2], "{shape:?}");
    assert!(
        matches!(shape.derefs()[0].len, DerefLen::Fixed(n) if n as usize == size_of::<Order>())
    );
    let got = capture("order_ref", &shape).expect("decodes");
    let want = record(&[("gift_for", record(&[("tier", s("basic"))]))]);
    assert_eq!(got, want);
    assert_paths_resolve(template, &[("order_ref", &got)], &[("order_ref", want)]);

    // Through a reference to an inline struct: the order, then the string.
    let shape = pruned("{order_ref.customer.name}", "order_ref");
    assert_eq!(shape.derefs().len(), 2, "{shape:?}");
    assert_eq!(
        capture("order_ref", &shape),
        Ok(record(&[("customer", record(&[("name", s("ada"))]))]))
    );
}

#[test]
fn a_root_read_whole_keeps_its_full_shape() {
    let full = full();
    let full_order = full["order"].shape.as_ref().expect("a shape");
    // Read whole in a template, as an argument of a function, or next to a field.
    for template in ["{order}", "{len(order)}", "{order} {order.country}"] {
        let whole = paths(template);
        assert!(
            whole
                .iter()
                .any(|p| p.root() == "order" && p.segments().is_empty()),
            "{template}: {whole:?}"
        );
        assert_eq!(&pruned(template, "order"), full_order, "{template}");
    }
    // A variable no path is rooted at keeps its full shape too.
    let vars = reading("{order.country}");
    assert_eq!(vars["wide"].shape, full["wide"].shape);
    assert_eq!(vars["order_ref"].shape, full["order_ref"].shape);

    // A step the type does not have keeps the full shape of the value it applies to: the
    // path fails on the capture exactly as on the full value.
    assert_eq!(&pruned("{order.nope}", "order"), full_order);
    let template = "{order.customer.nope} {order.id}";
    let shape = pruned(template, "order");
    assert_eq!(shape.derefs().len(), 3, "{shape:?}");
    let got = capture("order", &shape).expect("decodes");
    let want = record(&[
        ("id", Value::UInt(7)),
        (
            "customer",
            record(&[
                ("name", s("ada")),
                ("tier", s("gold")),
                ("email", s("ada@example.com")),
            ]),
        ),
    ]);
    assert_eq!(got, want);
    assert_paths_resolve(template, &[("order", &got)], &[("order", want.clone())]);
}

#[test]
fn read_paths_fit_the_heap_read_budget_that_the_full_shape_exceeds() {
    // Full: one heap read per string, and the last two strings are left out.
    let full = full()["wide"].shape.clone().expect("a shape");
    assert_eq!(full.derefs().len(), MAX_DEREFS);
    let got = capture("wide", &full).expect("decodes");
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let fields: Vec<(&str, Value)> = (0..MAX_DEREFS)
        .map(|i| {
            (
                ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"][i],
                s(names[i]),
            )
        })
        .collect();
    assert_eq!(got, record(&fields));

    // Pruned to the strings read: all of them are captured, past the full shape's budget.
    let template = "{wide.s9} {wide.s0} {wide.s8}";
    let shape = pruned(template, "wide");
    assert_eq!(shape.derefs().len(), 3, "{shape:?}");
    let got = capture("wide", &shape).expect("decodes");
    let want = record(&[("s0", s("zero")), ("s8", s("eight")), ("s9", s("nine"))]);
    assert_eq!(got, want);
    assert_paths_resolve(template, &[("wide", &got)], &[("wide", want.clone())]);

    // The same for `order`: the full shape has no room for `lines`, the pruned one reads it.
    let full_order = self::full()["order"].shape.clone().expect("a shape");
    let got = capture("order", &full_order).expect("decodes");
    assert_eq!(got.field("lines"), None, "{got:?}");
    let template = "{order.lines[0].qty} {order.gift_for.name}";
    let shape = pruned(template, "order");
    let got = capture("order", &shape).expect("decodes");
    let qty = |n| record(&[("qty", Value::UInt(n))]);
    let want = record(&[
        ("gift_for", record(&[("name", s("bob"))])),
        ("lines", Value::List(vec![qty(2), qty(1)])),
    ]);
    assert_eq!(got, want);
    assert_paths_resolve(template, &[("order", &got)], &[("order", want.clone())]);
    // The vector's buffer (its elements need no heap), the box and the name.
    assert_eq!(shape.derefs().len(), 3, "{shape:?}");
}
