//! [`TypeShape`]: how the trap handler copies a variable's bytes and how the decoder thread turns
//! them into a [`Value`] afterwards, compiled from the variable's DWARF type at arm time.
//!
//! The files: this one holds the shape itself (the limits, the heap reads [`Deref`] and the
//! decode tree); `decode` turns captured bytes into a value ([`TypeShape::decode`],
//! [`DecodeError`]); `reads` is what a tracepoint's expressions read of a variable ([`Reads`]);
//! `build` compiles a shape from the DWARF type, pruned to those reads ([`build()`]). May use:
//! `index` (the DWARF reader's `Slice`) and `sonde_expr`; nothing else of `native`.
//!
//! The handler side is fixed and generic (it knows nothing about types): copy
//! [`TypeShape::inline_size`] bytes from the variable's location, then perform each [`Deref`] in
//! order (a bounded, guarded heap read), then push everything into a ring. The decoder side
//! ([`TypeShape::decode`]) runs later on the agent's thread, off the signal path.
//!
//! # What a type decodes to
//!
//! | Rust type | [`Value`] |
//! | --- | --- |
//! | `i8`…`i64`, `isize` / `u8`…`u64`, `usize` | `Int` / `UInt` |
//! | `i128` / `u128` | `Int` / `UInt` when it fits in 64 bits, else `Float` (as `Capture` does) |
//! | `f32`, `f64` | `Float` |
//! | `bool`, `char` | `Bool`, `Str` of the one character |
//! | `&str`, `String`, `Box<str>` | `Str` (at most [`MAX_DEREF_BYTES`] bytes: a longer string is cut to its first 256 bytes, at a character boundary) |
//! | `Vec<T>`, `&[T]`, `Box<[T]>`, `[T; N]` | `List` of the elements when all of them were captured; else `Record { len, head }` (see below) |
//! | `Option<T>` | `None`, or the value inside `Some` |
//! | fieldless enum (`enum Color { Red, Green }`) | `Str` of the variant's name |
//! | other enums (`Result`, enums with data) | `Record { variant: "Name", <fields> }` (tuple fields named `0`, `1`, …) |
//! | struct, tuple struct, tuple | `Record` of the fields in declaration order (`0`, `1`, … for tuples) |
//! | `&T`, `&mut T`, `Box<T>`, `Rc<T>`, `Arc<T>` | what they point to |
//! | raw pointers, `fn` pointers, `NonNull` inside std types | `UInt` (the address; never followed) |
//! | `()`, `PhantomData` and other zero-sized types | `None` (zero-sized fields are left out of records) |
//!
//! **Long sequences.** Only [`MAX_DEREF_BYTES`] bytes of a heap buffer are copied, so a `Vec`
//! or slice whose elements do not all fit (or whose elements need more heap reads than
//! [`MAX_DEREFS`] allows) decodes to `Record { len: UInt(n), head: List(first elements) }`.
//! Expressions get the real length with `x.len` and the captured elements with `x.head[i]`;
//! note that `len(x)` on that record counts its two fields, and `x.len` fails on a complete
//! `List`. An inline array cut by [`MAX_INLINE`] decodes the same way.
//!
//! **Limits.** Nesting (records, enums, sequences, pointers) is at most 6 deep and a pointer
//! chain at most 3 long (`&&&T`); at most [`MAX_DEREFS`] heap reads per variable. A struct
//! larger than [`MAX_INLINE`] (or than the bytes a heap read copies) keeps the fields that fit;
//! fields past a limit, and fields of unsupported types (unions, trait objects, `f16`), are
//! left out of their record. A variable whose own type is unsupported has no shape
//! (`Variable::shape` is `Err` naming the type).
//!
//! **Heap reads.** A missing heap read ([`DecodeError::Unreadable`]) fails the decode only when
//! the value needs it: `None`, empty strings and empty vectors need none.
//!
//! How layouts are read from DWARF is in `build`; how a shape is pruned to the paths the
//! expressions read is in `reads`.
//!
//! [`Value`]: sonde_expr::Value

mod build;
mod decode;
mod reads;

pub(crate) use build::{build, build_behind, moved_behind};
pub use decode::DecodeError;
pub(crate) use reads::Reads;

/// Largest number of bytes copied from a variable's own location (register or memory).
pub const MAX_INLINE: usize = 256;
/// Largest number of heap reads per variable.
pub const MAX_DEREFS: usize = 8;
/// Largest number of bytes one heap read copies (longer strings and slices are cut here).
pub const MAX_DEREF_BYTES: usize = 256;

/// Deepest nesting of records, enums, sequences and pointers.
const MAX_DEPTH: u8 = 6;
/// Longest chain of pointers followed (`&&&T`).
const MAX_CHAIN: u8 = 3;

/// One heap read the handler performs after copying the inline bytes.
///
/// The handler reads a pointer (u64, little-endian) at `ptr_offset` of buffer `from` (0 = the
/// inline bytes, k = the bytes of deref k-1; `from` is never more than the deref's own index),
/// adds `ptr_add` to it, works out the length from `len`, clips it to [`MAX_DEREF_BYTES`], and
/// copies that many bytes through a guarded read. If the source buffer is missing or too short,
/// the pointer is null, or the read faults, this deref's result is missing (`None` in
/// [`TypeShape::decode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deref {
    /// The buffer holding the pointer: 0 = inline bytes, k = result of deref k-1.
    pub from: u8,
    /// Byte offset of the pointer in that buffer.
    pub ptr_offset: u32,
    /// Bytes added to the pointer before copying: 0, except for the first heap read of a
    /// variable kept in an `async fn`'s coroutine state, where it is the variable's offset in
    /// the state (see [`CapturePlan::Indirect`](super::CapturePlan::Indirect)).
    pub ptr_add: u32,
    /// How many bytes to copy.
    pub len: DerefLen,
}

/// The length of a [`Deref`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerefLen {
    /// A fixed number of bytes (the size of the pointee).
    Fixed(u32),
    /// A u64 length at `offset` of the same buffer, times `elem_size` bytes.
    Field {
        /// Byte offset of the length in the buffer that holds the pointer.
        offset: u32,
        /// Bytes per element.
        elem_size: u32,
    },
}

/// How to capture and decode one variable's type. Built by the debug-info side for each
/// variable (see `Variable::shape`).
///
/// Cloning is cheap: the decode tree is shared (a type's full shape is kept and handed to every
/// variable of that type, and a file's `lines` answer holds thousands of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeShape {
    inline_size: usize,
    derefs: Vec<Deref>,
    root: std::sync::Arc<Node>,
}

impl TypeShape {
    /// Bytes the handler copies from the variable's location (the type's size, at most
    /// [`MAX_INLINE`]). For a register location only the first 8 bytes exist (16 for XMM).
    pub fn inline_size(&self) -> usize {
        self.inline_size
    }

    /// The heap reads, in order (at most [`MAX_DEREFS`]).
    pub fn derefs(&self) -> &[Deref] {
        &self.derefs
    }
}

// The decode tree. Offsets are relative to the start of the node's own value; `decode` carries
// the buffer and the absolute position. Derefs were laid out with absolute positions at build
// time, so a node that needs heap reads is built once per position it appears at.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// A zero-sized value.
    Unit,
    Int {
        size: u8,
        signed: bool,
    },
    Float {
        size: u8,
    },
    Bool,
    Char,
    /// A raw pointer: its address, never followed.
    Address,
    /// A fieldless enum: the variant's name.
    Fieldless {
        size: u8,
        variants: Vec<(u128, Box<str>)>,
    },
    Record(Vec<Field>),
    Enum(Box<EnumShape>),
    /// A sized value behind a pointer: the result of `deref`, the value at `offset` of it.
    Ref {
        deref: u8,
        offset: u32,
        pointee: Box<Node>,
    },
    /// UTF-8 bytes behind a pointer, with a u64 length at `len_offset`.
    Str {
        deref: u8,
        len_offset: u32,
    },
    /// Elements behind a pointer (`Vec`, slices), with a u64 length at `len_offset`.
    HeapSeq {
        deref: u8,
        len_offset: u32,
        elems: Elems,
    },
    /// `[T; count]`, in place.
    Array {
        count: u64,
        elems: Elems,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: Box<str>,
    offset: u32,
    node: Node,
}

/// The elements of a sequence: one node for all of them (`repeat`), or one per element when
/// elements need their own heap reads; `max` is how many the shape can decode at most.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Elems {
    size: u32,
    nodes: Vec<Node>,
    repeat: bool,
    max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EnumShape {
    /// Offset and size of the discriminant; `None` for a single-variant enum.
    discr: Option<(u32, u8)>,
    arms: Vec<Arm>,
    /// `Option<T>`: `None` → `Value::None`, `Some(x)` → `x`.
    option: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Arm {
    /// The discriminant value (masked to its size); `None` for the default variant.
    value: Option<u128>,
    name: Box<str>,
    fields: Vec<Field>,
}
