//! [`Builder`]: compiles a variable's DWARF type into its [`TypeShape`] ([`build`],
//! [`build_behind`]), keeping what the expressions read ([`Reads`]).
//!
//! Layouts are read from DWARF member names and offsets, never hard-coded: `String` is found as
//! a struct named `String` with a `vec` member, `Vec<T>` as `Vec<…>` with `buf` and `len`
//! members, its data pointer as the first pointer inside `buf` (preferring members named `ptr` /
//! `pointer`, so both `RawVec { ptr: Unique }` and `RawVec { inner: RawVecInner { ptr } }` work)
//! and its element type from the template parameter `T`. Enums use `DW_TAG_variant_part`
//! (`DW_AT_discr`, `DW_AT_discr_value`; the variant without a value is the default, which is
//! how niche layouts such as `Option<&T>` are described).

use gimli::{AttributeValue, UnitOffset, constants};

use super::decode::le;
use super::reads::{FieldReads, Reads};
use super::{
    Arm, Deref, DerefLen, Elems, EnumShape, Field, MAX_CHAIN, MAX_DEPTH, MAX_DEREF_BYTES,
    MAX_DEREFS, MAX_INLINE, Node, TypeShape,
};
use crate::native::index::Slice;

type Unit<'a> = gimli::Unit<Slice<'a>>;
type Entry<'a> = gimli::DebuggingInformationEntry<Slice<'a>>;

/// Builds the shape of the type at `ty`, keeping what `reads` reaches ([`Reads::all`] for the
/// full shape); `Err` names what is not supported.
pub(crate) fn build<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    ty: UnitOffset<usize>,
    reads: &Reads,
) -> Result<TypeShape, String> {
    build_at(dwarf, unit, ty, reads, None)
}

/// As [`build`], for a value `add` bytes past a pointer (a local kept in an `async fn`'s
/// coroutine state, [`CapturePlan::Indirect`](crate::native::CapturePlan::Indirect)): the
/// inline bytes are the pointer, the first heap read copies the value (as many bytes as a value
/// in place, [`MAX_INLINE`]), and the rest is the value's own shape, so it decodes as the same
/// value would in place. That first read counts against [`MAX_DEREFS`].
pub(crate) fn build_behind<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    ty: UnitOffset<usize>,
    reads: &Reads,
    add: u32,
) -> Result<TypeShape, String> {
    build_at(dwarf, unit, ty, reads, Some(add))
}

/// A shape from [`build_behind`] moved to `add` bytes past the pointer: the shapes of one type
/// behind a pointer differ only in where the first heap read starts.
pub(crate) fn moved_behind(mut shape: TypeShape, add: u32) -> TypeShape {
    if let Some(first) = shape.derefs.first_mut() {
        first.ptr_add = add;
    }
    shape
}

fn build_at<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    ty: UnitOffset<usize>,
    reads: &Reads,
    behind: Option<u32>,
) -> Result<TypeShape, String> {
    // Two passes: first with one element of each sequence, to learn what the rest of the value
    // needs; then with the heap reads left over spent on more elements. So a `Vec<String>`
    // field does not take every heap read and leave the fields after it out. The second pass
    // is the first over again unless the first left heap reads over and met a sequence that
    // could have taken them (`spare` is read nowhere else), so it is skipped otherwise.
    let pass = |spare: usize| -> Result<(TypeShape, usize, bool), String> {
        let mut b = Builder {
            dwarf,
            unit,
            derefs: Vec::new(),
            spare,
            wanted_spare: false,
        };
        let size = b.size_of(ty)?;
        let inline = size.min(MAX_INLINE as u64) as u32;
        let mut at = Pos {
            buf: 0,
            base: 0,
            limit: inline,
        };
        let mut inline_size = inline;
        if let Some(ptr_add) = behind {
            // The value is the first heap read's bytes; the inline bytes are the pointer.
            let deref = b.deref(0, 0, DerefLen::Fixed(inline))?;
            b.derefs[usize::from(deref)].ptr_add = ptr_add;
            at.buf = deref + 1;
            inline_size = u32::from(unit.encoding().address_size);
        }
        let node = b.node(ty, at, 0, 0, reads)?;
        let root = match behind {
            None => node,
            Some(_) => Node::Ref {
                deref: 0,
                offset: 0,
                pointee: Box::new(node),
            },
        };
        let left = MAX_DEREFS.saturating_sub(b.derefs.len());
        let shape = TypeShape {
            inline_size: inline_size as usize,
            derefs: b.derefs,
            root: std::sync::Arc::new(root),
        };
        Ok((shape, left, b.wanted_spare))
    };
    let (first, spare, wanted) = pass(0)?;
    if spare == 0 || !wanted {
        return Ok(first);
    }
    pass(spare).map(|(shape, _, _)| shape)
}

/// Where a value lies: buffer (0 = inline, k = deref k-1), its absolute offset there, and how
/// many bytes the buffer holds.
#[derive(Debug, Clone, Copy)]
struct Pos {
    buf: u8,
    base: u32,
    limit: u32,
}

impl Pos {
    fn at(self, offset: u64) -> Option<Self> {
        let base = u32::try_from(u64::from(self.base) + offset).ok()?;
        (base <= self.limit).then_some(Self { base, ..self })
    }

    fn fits(self, offset: u64, size: u64) -> bool {
        u64::from(self.base) + offset + size <= u64::from(self.limit)
    }
}

/// A struct member: name, offset and type.
struct Member {
    name: Option<String>,
    offset: u64,
    ty: Option<UnitOffset<usize>>,
}

struct Builder<'d, 'a> {
    dwarf: &'d gimli::Dwarf<Slice<'a>>,
    unit: &'d Unit<'a>,
    derefs: Vec<Deref>,
    /// Heap reads that may go to sequence elements after the first.
    spare: usize,
    /// Whether a sequence stopped short for want of `spare` heap reads.
    wanted_spare: bool,
}

fn err<T>(e: gimli::Error) -> Result<T, String> {
    Err(format!("malformed type info ({e})"))
}

impl<'a> Builder<'_, 'a> {
    fn entry(&self, offset: UnitOffset<usize>) -> Result<Entry<'a>, String> {
        self.unit.entry(offset).or_else(err)
    }

    fn name(&self, e: &Entry<'a>) -> Option<String> {
        let v = e.attr_value(constants::DW_AT_name)?;
        let s = self.dwarf.attr_string(self.unit, v).ok()?;
        Some(s.to_string_lossy().into_owned())
    }

    fn type_ref(&self, e: &Entry<'a>) -> Option<UnitOffset<usize>> {
        match e.attr_value(constants::DW_AT_type)? {
            AttributeValue::UnitRef(off) => Some(off),
            AttributeValue::DebugInfoRef(off) => off.to_unit_offset(&self.unit.header),
            _ => None,
        }
    }

    /// The type at `ty` through typedefs and qualifiers.
    fn resolve(&self, mut ty: UnitOffset<usize>) -> Result<Entry<'a>, String> {
        for _ in 0..8 {
            let e = self.entry(ty)?;
            match e.tag() {
                constants::DW_TAG_typedef
                | constants::DW_TAG_const_type
                | constants::DW_TAG_volatile_type
                | constants::DW_TAG_restrict_type
                | constants::DW_TAG_atomic_type => match self.type_ref(&e) {
                    Some(next) => ty = next,
                    None => return Ok(e), // `const void`
                },
                _ => return Ok(e),
            }
        }
        Err("a chain of typedefs too long".into())
    }

    fn size_of(&self, ty: UnitOffset<usize>) -> Result<u64, String> {
        let e = self.resolve(ty)?;
        if let Some(size) = e
            .attr_value(constants::DW_AT_byte_size)
            .and_then(|v| v.udata_value())
        {
            return Ok(size);
        }
        match e.tag() {
            constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type => {
                Ok(u64::from(self.unit.encoding().address_size))
            }
            constants::DW_TAG_array_type => {
                let elem = self.type_ref(&e).ok_or("an array without element type")?;
                Ok(self.size_of(elem)?.saturating_mul(self.array_count(&e)?))
            }
            _ => Err(format!("{} without a size", self.describe(&e))),
        }
    }

    fn describe(&self, e: &Entry<'a>) -> String {
        match self.name(e) {
            Some(n) => format!("`{n}`"),
            None => e.tag().static_string().unwrap_or("a DWARF type").to_owned(),
        }
    }

    fn array_count(&self, e: &Entry<'a>) -> Result<u64, String> {
        let mut tree = self.unit.entries_tree(Some(e.offset())).or_else(err)?;
        let root = tree.root().or_else(err)?;
        let mut children = root.children();
        let mut counts = Vec::new();
        while let Some(child) = children.next().or_else(err)? {
            let c = child.entry();
            if c.tag() != constants::DW_TAG_subrange_type {
                continue;
            }
            let count = match c.attr_value(constants::DW_AT_count) {
                Some(v) => v.udata_value(),
                None => {
                    let lower = c
                        .attr_value(constants::DW_AT_lower_bound)
                        .and_then(|v| v.udata_value())
                        .unwrap_or(0);
                    c.attr_value(constants::DW_AT_upper_bound)
                        .and_then(|v| v.udata_value())
                        .map(|u| (u + 1).saturating_sub(lower))
                }
            };
            counts.push(count.ok_or("an array of unknown length")?);
        }
        match counts.as_slice() {
            [n] => Ok(*n),
            [] => Err("an array of unknown length".into()),
            _ => Err("a multi-dimensional array".into()),
        }
    }

    /// The direct children of `e` with one of `tags`.
    fn children(&self, e: &Entry<'a>, tags: &[gimli::DwTag]) -> Result<Vec<Entry<'a>>, String> {
        let mut tree = self.unit.entries_tree(Some(e.offset())).or_else(err)?;
        let root = tree.root().or_else(err)?;
        let mut children = root.children();
        let mut out = Vec::new();
        while let Some(child) = children.next().or_else(err)? {
            if tags.contains(&child.entry().tag()) {
                out.push(child.entry().clone());
            }
        }
        Ok(out)
    }

    fn members(&self, e: &Entry<'a>) -> Result<Vec<Member>, String> {
        Ok(self
            .children(e, &[constants::DW_TAG_member])?
            .iter()
            .filter(|m| !m.has_attr(constants::DW_AT_declaration)) // statics
            .map(|m| self.member(m))
            .collect())
    }

    fn member(&self, m: &Entry<'a>) -> Member {
        Member {
            name: self.name(m),
            offset: m
                .attr_value(constants::DW_AT_data_member_location)
                .and_then(|v| v.udata_value())
                .unwrap_or(0),
            ty: self.type_ref(m),
        }
    }

    /// The template type parameter `name` of a struct (`T` of `Vec<T>`).
    fn template_param(&self, e: &Entry<'a>, name: &str) -> Option<UnitOffset<usize>> {
        self.children(e, &[constants::DW_TAG_template_type_parameter])
            .ok()?
            .iter()
            .find(|p| self.name(p).as_deref() == Some(name))
            .and_then(|p| self.type_ref(p))
    }

    fn deref(&mut self, from: u8, ptr_offset: u32, len: DerefLen) -> Result<u8, String> {
        if self.derefs.len() >= MAX_DEREFS {
            return Err(format!("more than {MAX_DEREFS} pointers to follow"));
        }
        self.derefs.push(Deref {
            from,
            ptr_offset,
            ptr_add: 0,
            len,
        });
        Ok((self.derefs.len() - 1) as u8)
    }

    /// The shape of the type at `ty`, for a value at `at`, keeping what `reads` reaches.
    fn node(
        &mut self,
        ty: UnitOffset<usize>,
        at: Pos,
        depth: u8,
        chain: u8,
        reads: &Reads,
    ) -> Result<Node, String> {
        let e = self.resolve(ty)?;
        let size = self.size_of(ty)?;
        if size == 0 {
            return Ok(Node::Unit);
        }
        let need = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(String::from("past the bytes captured"))
            }
        };
        match e.tag() {
            constants::DW_TAG_base_type => {
                need(at.fits(0, size))?;
                let encoding = match e.attr_value(constants::DW_AT_encoding) {
                    Some(AttributeValue::Encoding(enc)) => enc,
                    _ => return Err(format!("{} without an encoding", self.describe(&e))),
                };
                let size8 = u8::try_from(size).unwrap_or(u8::MAX);
                match (encoding, size) {
                    (
                        constants::DW_ATE_signed | constants::DW_ATE_signed_char,
                        1 | 2 | 4 | 8 | 16,
                    ) => Ok(Node::Int {
                        size: size8,
                        signed: true,
                    }),
                    (
                        constants::DW_ATE_unsigned | constants::DW_ATE_unsigned_char,
                        1 | 2 | 4 | 8 | 16,
                    ) => Ok(Node::Int {
                        size: size8,
                        signed: false,
                    }),
                    (constants::DW_ATE_float, 4 | 8) => Ok(Node::Float { size: size8 }),
                    (constants::DW_ATE_boolean, 1) => Ok(Node::Bool),
                    (constants::DW_ATE_UTF, 4) => Ok(Node::Char),
                    _ => Err(self.describe(&e)),
                }
            }
            constants::DW_TAG_enumeration_type => {
                need(at.fits(0, size) && size <= 16)?;
                let size8 = size as u8;
                let mut variants = Vec::new();
                for v in self.children(&e, &[constants::DW_TAG_enumerator])? {
                    let (Some(name), Some(value)) = (
                        self.name(&v),
                        v.attr_value(constants::DW_AT_const_value)
                            .and_then(constant),
                    ) else {
                        continue;
                    };
                    variants.push((mask(value, size8), name.into_boxed_str()));
                }
                Ok(Node::Fieldless {
                    size: size8,
                    variants,
                })
            }
            constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type => {
                need(at.fits(0, 8))?;
                let name = self.name(&e).unwrap_or_default();
                let followed = name.starts_with('&') || name.contains("Box<");
                match self.type_ref(&e) {
                    Some(pointee) if followed && self.is_data(pointee) => {
                        self.pointer(at, 0, pointee, 0, depth, chain, reads)
                    }
                    _ => Ok(Node::Address),
                }
            }
            constants::DW_TAG_array_type => {
                if depth >= MAX_DEPTH {
                    return Err("nested too deeply".into());
                }
                let elem = self.type_ref(&e).ok_or("an array without element type")?;
                let count = self.array_count(&e)?;
                let elem_size = self.size_of(elem)?;
                let elems = self.elems(
                    elem,
                    elem_size,
                    at,
                    count,
                    depth + 1,
                    chain,
                    &reads.elements(),
                )?;
                Ok(Node::Array { count, elems })
            }
            constants::DW_TAG_structure_type => self.structure(&e, at, depth, chain, reads),
            constants::DW_TAG_union_type => Err(format!("union {}", self.describe(&e))),
            _ => Err(self.describe(&e)),
        }
    }

    /// Whether a pointee is data that can be followed (not a function, not `void`).
    fn is_data(&self, pointee: UnitOffset<usize>) -> bool {
        self.resolve(pointee).is_ok_and(|e| {
            !matches!(
                e.tag(),
                constants::DW_TAG_subroutine_type | constants::DW_TAG_unspecified_type
            )
        })
    }

    /// A pointer at `ptr_offset` of `at` to a value of type `pointee` at `offset` in the
    /// pointed-to memory (`offset` is 0 except for `Rc`/`Arc`, whose value follows the counts).
    /// A pointer is passed through: `reads` applies to the pointee.
    #[allow(clippy::too_many_arguments)] // as `heap_seq`
    fn pointer(
        &mut self,
        at: Pos,
        ptr_offset: u64,
        pointee: UnitOffset<usize>,
        offset: u64,
        depth: u8,
        chain: u8,
        reads: &Reads,
    ) -> Result<Node, String> {
        if chain >= MAX_CHAIN {
            return Err(format!("a chain of more than {MAX_CHAIN} pointers"));
        }
        if depth >= MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        need_fit(at, ptr_offset, 8)?;
        let size = self.size_of(pointee)?;
        if size == 0 {
            return Ok(Node::Unit);
        }
        let len = (offset + size).min(MAX_DEREF_BYTES as u64) as u32;
        let deref = self.deref(at.buf, at.base + ptr_offset as u32, DerefLen::Fixed(len))?;
        let inner = Pos {
            buf: deref + 1,
            base: 0,
            limit: len,
        }
        .at(offset)
        .ok_or("past the bytes captured")?;
        let pointee = self.node(pointee, inner, depth + 1, chain + 1, reads)?;
        Ok(Node::Ref {
            deref,
            offset: offset as u32,
            pointee: Box::new(pointee),
        })
    }

    fn structure(
        &mut self,
        e: &Entry<'a>,
        at: Pos,
        depth: u8,
        chain: u8,
        reads: &Reads,
    ) -> Result<Node, String> {
        if depth >= MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        let name = self.name(e).unwrap_or_default();
        if let Some(part) = self
            .children(e, &[constants::DW_TAG_variant_part])?
            .into_iter()
            .next()
        {
            return self.enumeration(&part, at, depth, chain, reads);
        }
        let members = self.members(e)?;
        let named = |n: &str| members.iter().find(|m| m.name.as_deref() == Some(n));

        // Fat pointers: `&str`, `&[T]`, `Box<str>`, `Box<[T]>`.
        if let (Some(ptr), Some(len), 2) = (named("data_ptr"), named("length"), members.len()) {
            need_fit(at, len.offset, 8)?;
            let pointee = ptr
                .ty
                .and_then(|t| self.resolve(t).ok())
                .and_then(|p| self.type_ref(&p))
                .ok_or("a fat pointer without a pointee type")?;
            return if is_str(&name) {
                self.string(at, ptr.offset, len.offset, chain)
            } else {
                let elem_size = self.size_of(pointee)?;
                let elems = reads.elements();
                self.heap_seq(
                    at, ptr.offset, len.offset, pointee, elem_size, depth, chain, &elems,
                )
            };
        }
        if named("pointer").is_some() && named("vtable").is_some() {
            return Err(format!("trait object `{name}`"));
        }
        // `String { vec: Vec<u8> }`.
        if name == "String"
            && let [vec] = members.as_slice()
            && vec.name.as_deref() == Some("vec")
            && let Some(vec_ty) = vec.ty
            && let Ok(vec_e) = self.resolve(vec_ty)
            && let Some((ptr, len, _)) = self.vec_parts(&vec_e)?
        {
            return self.string(at, vec.offset + ptr, vec.offset + len, chain);
        }
        // `Vec<T> { buf: RawVec…, len }`.
        if name.starts_with("Vec<")
            && let Some((ptr, len, Some(elem))) = self.vec_parts(e)?
        {
            let elem_size = self.size_of(elem)?;
            let elems = reads.elements();
            return self.heap_seq(at, ptr, len, elem, elem_size, depth, chain, &elems);
        }
        // `Rc<T>` / `Arc<T>`: the value after the reference counts.
        if (name.starts_with("Rc<") || name.starts_with("Arc<"))
            && let Some((ptr, pointee)) = self.find_pointer(e, 0)?
            && let Ok(inner) = self.resolve(pointee)
            && let Some(value) = self
                .members(&inner)?
                .into_iter()
                .find(|m| matches!(m.name.as_deref(), Some("value" | "data")))
            && let Some(value_ty) = value.ty
        {
            return self.pointer(at, ptr, value_ty, value.offset, depth, chain, reads);
        }
        let names: Vec<&str> = members
            .iter()
            .filter_map(|m| m.name.as_deref().map(tuple_field))
            .collect();
        let reads = FieldReads::Named(reads.of_fields(&names));
        Ok(Node::Record(
            self.fields(&members, at, depth, chain, reads).0,
        ))
    }

    /// The fields that are read, fit and are supported; the others are left out (the first
    /// reason one that is read was left out comes second).
    fn fields(
        &mut self,
        members: &[Member],
        at: Pos,
        depth: u8,
        chain: u8,
        reads: FieldReads<'_>,
    ) -> (Vec<Field>, Option<String>) {
        let mut out = Vec::new();
        let mut left_out = None;
        for m in members {
            let (Some(name), Some(ty)) = (&m.name, m.ty) else {
                continue;
            };
            let name = tuple_field(name);
            let Some(reads) = reads.of(name) else {
                continue; // not read
            };
            if self.size_of(ty).is_ok_and(|s| s == 0) {
                continue; // PhantomData, allocators, markers
            }
            let Some(field_at) = at.at(m.offset) else {
                left_out.get_or_insert_with(|| String::from("past the bytes captured"));
                continue;
            };
            let mark = self.derefs.len();
            match self.node(ty, field_at, depth + 1, chain, reads) {
                Ok(node) => out.push(Field {
                    name: name.into(),
                    offset: m.offset as u32,
                    node,
                }),
                Err(e) => {
                    self.derefs.truncate(mark);
                    left_out.get_or_insert(e);
                }
            }
        }
        (out, left_out)
    }

    fn enumeration(
        &mut self,
        part: &Entry<'a>,
        at: Pos,
        depth: u8,
        chain: u8,
        reads: &Reads,
    ) -> Result<Node, String> {
        let discr = match part.attr_value(constants::DW_AT_discr) {
            Some(AttributeValue::UnitRef(off)) => {
                let m = self.member(&self.entry(off)?);
                let size = self.size_of(m.ty.ok_or("a discriminant without a type")?)?;
                if size == 0 || size > 16 {
                    return Err(format!("a {size}-byte enum discriminant"));
                }
                need_fit(at, m.offset, size)?;
                Some((m.offset as u32, size as u8))
            }
            _ => None,
        };
        // The variants first (discriminant value, name, payload members and where they are),
        // to know whether it is an `Option` and which fields the reads name.
        let mut variants = Vec::new();
        for variant in self.children(part, &[constants::DW_TAG_variant])? {
            let value = match (variant.attr_value(constants::DW_AT_discr_value), discr) {
                (Some(v), Some((_, size))) => Some(mask(
                    constant(v).ok_or("a non-constant discriminant")?,
                    size,
                )),
                (Some(_), None) => return Err("an enum without a discriminant".into()),
                (None, _) => {
                    if variant.has_attr(constants::DW_AT_discr_list) {
                        return Err("an enum with discriminant ranges".into());
                    }
                    None
                }
            };
            let Some(m) = self
                .children(&variant, &[constants::DW_TAG_member])?
                .first()
                .map(|m| self.member(m))
            else {
                continue;
            };
            let mut payload = None;
            if let Some(ty) = m.ty
                && let Ok(e) = self.resolve(ty)
                && let Some(payload_at) = at.at(m.offset)
            {
                payload = Some((self.members(&e)?, payload_at, m.offset as u32));
            }
            variants.push((value, m.name.unwrap_or_default(), payload));
        }
        let mut names: Vec<&str> = variants.iter().map(|v| v.1.as_str()).collect();
        names.sort_unstable();
        let option = names == ["None", "Some"];
        // `Option` is passed through (`Some(x)` decodes to `x`); other enums are records of
        // `variant` and the arm's fields.
        let reads = if option {
            FieldReads::Each(reads)
        } else {
            let mut fields = vec!["variant"];
            for (_, _, payload) in &variants {
                let members = payload.iter().flat_map(|(members, _, _)| members);
                fields.extend(members.filter_map(|m| m.name.as_deref().map(tuple_field)));
            }
            FieldReads::Named(reads.of_fields(&fields))
        };
        let mut arms = Vec::with_capacity(variants.len());
        for (value, name, payload) in variants {
            let mut fields = Vec::new();
            if let Some((members, payload_at, offset)) = payload {
                let left_out;
                (fields, left_out) = self.fields(&members, payload_at, depth, chain, reads);
                // `Some(x)` without `x` would read as `None`: the whole option is unsupported.
                if let (Some(why), "Some") = (left_out, name.as_str()) {
                    return Err(why);
                }
                for f in &mut fields {
                    f.offset += offset; // relative to the enum
                }
            }
            arms.push(Arm {
                value,
                name: name.into_boxed_str(),
                fields,
            });
        }
        Ok(Node::Enum(Box::new(EnumShape {
            discr,
            arms,
            option,
        })))
    }

    /// A string whose pointer is at `ptr` of `at` and u64 length at `len`.
    fn string(&mut self, at: Pos, ptr: u64, len: u64, chain: u8) -> Result<Node, String> {
        if chain >= MAX_CHAIN {
            return Err(format!("a chain of more than {MAX_CHAIN} pointers"));
        }
        need_fit(at, ptr, 8)?;
        need_fit(at, len, 8)?;
        let deref = self.deref(
            at.buf,
            at.base + ptr as u32,
            DerefLen::Field {
                offset: at.base + len as u32,
                elem_size: 1,
            },
        )?;
        Ok(Node::Str {
            deref,
            len_offset: len as u32,
        })
    }

    /// Elements of type `elem` behind the pointer at `ptr` of `at`, u64 count at `len`.
    /// `elem_reads` is what is read of each element.
    #[allow(clippy::too_many_arguments)] // two callers; a struct would only rename the arguments
    fn heap_seq(
        &mut self,
        at: Pos,
        ptr: u64,
        len: u64,
        elem: UnitOffset<usize>,
        elem_size: u64,
        depth: u8,
        chain: u8,
        elem_reads: &Reads,
    ) -> Result<Node, String> {
        if chain >= MAX_CHAIN {
            return Err(format!("a chain of more than {MAX_CHAIN} pointers"));
        }
        need_fit(at, ptr, 8)?;
        need_fit(at, len, 8)?;
        let elem_size32 = u32::try_from(elem_size).map_err(|_| "elements too large")?;
        let deref = self.deref(
            at.buf,
            at.base + ptr as u32,
            DerefLen::Field {
                offset: at.base + len as u32,
                elem_size: elem_size32,
            },
        )?;
        let heap = Pos {
            buf: deref + 1,
            base: 0,
            limit: MAX_DEREF_BYTES as u32,
        };
        let elems = self.elems(
            elem,
            elem_size,
            heap,
            u64::MAX,
            depth + 1,
            chain + 1,
            elem_reads,
        )?;
        Ok(Node::HeapSeq {
            deref,
            len_offset: len as u32,
            elems,
        })
    }

    /// Up to `count` elements starting at `at`, as many as fit in the buffer (and, when each
    /// element needs heap reads of its own, as many as the deref budget allows), each keeping
    /// what `reads` reaches.
    #[allow(clippy::too_many_arguments)] // as `heap_seq`
    fn elems(
        &mut self,
        elem: UnitOffset<usize>,
        size: u64,
        at: Pos,
        count: u64,
        depth: u8,
        chain: u8,
        reads: &Reads,
    ) -> Result<Elems, String> {
        let size32 = u32::try_from(size).map_err(|_| "elements too large")?;
        let room = u64::from(at.limit.saturating_sub(at.base));
        // Zero-sized elements take no room; decode at most `MAX_DEREF_BYTES` of them all the same.
        let fit = room
            .checked_div(size)
            .map_or(count.min(MAX_DEREF_BYTES as u64), |n| count.min(n));
        if fit == 0 {
            // Not even one element is captured: check the type is supported all the same.
            let mark = self.derefs.len();
            let probe = Pos {
                buf: at.buf,
                base: 0,
                limit: u32::try_from(size).unwrap_or(u32::MAX),
            };
            self.node(elem, probe, depth, chain, reads)?;
            self.derefs.truncate(mark);
            return Ok(Elems {
                size: size32,
                nodes: Vec::new(),
                repeat: false,
                max: 0,
            });
        }
        let mark = self.derefs.len();
        let first = self.node(elem, at, depth, chain, reads)?;
        let per = self.derefs.len() - mark;
        if per == 0 {
            return Ok(Elems {
                size: size32,
                nodes: vec![first],
                repeat: true,
                max: fit,
            });
        }
        // Each element has its own heap reads: lay them out element by element.
        let mut nodes = vec![first];
        for i in 1..fit {
            let Some(elem_at) = at.at(i * size) else {
                break;
            };
            if self.spare < per {
                self.wanted_spare = true;
                break;
            }
            let mark = self.derefs.len();
            match self.node(elem, elem_at, depth, chain, reads) {
                Ok(node) if self.derefs.len() - mark == per => {
                    self.spare -= per;
                    nodes.push(node);
                }
                _ => {
                    self.derefs.truncate(mark);
                    break;
                }
            }
        }
        let max = nodes.len() as u64;
        Ok(Elems {
            size: size32,
            nodes,
            repeat: false,
            max,
        })
    }

    /// A `Vec`'s data pointer offset, `len` offset and element type (template parameter `T`,
    /// else the data pointer's pointee).
    #[allow(clippy::type_complexity)] // a private helper's triple
    fn vec_parts(
        &self,
        vec: &Entry<'a>,
    ) -> Result<Option<(u64, u64, Option<UnitOffset<usize>>)>, String> {
        let members = self.members(vec)?;
        let named = |n: &str| members.iter().find(|m| m.name.as_deref() == Some(n));
        let (Some(buf), Some(len)) = (named("buf"), named("len")) else {
            return Ok(None);
        };
        let Some(buf_ty) = buf.ty else {
            return Ok(None);
        };
        let buf_e = self.resolve(buf_ty)?;
        let Some((ptr, pointee)) = self.find_pointer(&buf_e, 0)? else {
            return Ok(None);
        };
        let elem = self.template_param(vec, "T").or(Some(pointee));
        Ok(Some((buf.offset + ptr, len.offset, elem)))
    }

    /// The first pointer inside a struct (preferring members named `ptr` or `pointer`): its
    /// offset and pointee type.
    fn find_pointer(
        &self,
        e: &Entry<'a>,
        depth: u8,
    ) -> Result<Option<(u64, UnitOffset<usize>)>, String> {
        if depth > MAX_DEPTH {
            return Ok(None);
        }
        if matches!(
            e.tag(),
            constants::DW_TAG_pointer_type | constants::DW_TAG_reference_type
        ) {
            return Ok(self.type_ref(e).map(|p| (0, p)));
        }
        if e.tag() != constants::DW_TAG_structure_type {
            return Ok(None);
        }
        let mut members = self.members(e)?;
        members.sort_by_key(|m| !matches!(m.name.as_deref(), Some("ptr" | "pointer")));
        for m in members {
            let Some(ty) = m.ty else { continue };
            let inner = self.resolve(ty)?;
            if let Some((off, pointee)) = self.find_pointer(&inner, depth + 1)? {
                return Ok(Some((m.offset + off, pointee)));
            }
        }
        Ok(None)
    }
}

fn need_fit(at: Pos, offset: u64, size: u64) -> Result<(), String> {
    if at.fits(offset, size) {
        Ok(())
    } else {
        Err("past the bytes captured".into())
    }
}

/// Whether a fat pointer type's name is a string's: `&str`, `&mut str`, `*const str`,
/// `Box<str, …>`.
fn is_str(name: &str) -> bool {
    let bare = ["&mut ", "&", "*const ", "*mut "]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    bare == "str"
        || name
            .split_once("Box<")
            .is_some_and(|(_, rest)| rest.starts_with("str,") || rest.starts_with("str>"))
}

/// `__0` → `0` (tuple and tuple-struct fields).
fn tuple_field(name: &str) -> &str {
    match name.strip_prefix("__") {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits,
        _ => name,
    }
}

/// A constant attribute (`DW_AT_const_value`, `DW_AT_discr_value`) as raw bits.
fn constant(v: AttributeValue<Slice<'_>>) -> Option<u128> {
    Some(match v {
        AttributeValue::Data1(x) => u128::from(x),
        AttributeValue::Data2(x) => u128::from(x),
        AttributeValue::Data4(x) => u128::from(x),
        AttributeValue::Data8(x) => u128::from(x),
        AttributeValue::Data16(x) => x,
        AttributeValue::Udata(x) => u128::from(x),
        // Two's complement bits, masked to the discriminant's size by the caller.
        #[allow(clippy::cast_sign_loss)]
        AttributeValue::Sdata(x) => i128::from(x) as u128,
        AttributeValue::Block(b) if b.len() <= 16 => le(b.slice()),
        _ => return None,
    })
}

fn mask(value: u128, size: u8) -> u128 {
    if size >= 16 {
        value
    } else {
        value & ((1u128 << (u32::from(size) * 8)) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_pointer_names() {
        for name in [
            "&str",
            "&mut str",
            "*const str",
            "alloc::boxed::Box<str, alloc::alloc::Global>",
        ] {
            assert!(is_str(name), "{name}");
        }
        for name in [
            "&[u8]",
            "&strange",
            "alloc::boxed::Box<[u8], alloc::alloc::Global>",
        ] {
            assert!(!is_str(name), "{name}");
        }
        assert_eq!(tuple_field("__12"), "12");
        assert_eq!(tuple_field("__x"), "__x");
        assert_eq!(tuple_field("name"), "name");
    }
}
