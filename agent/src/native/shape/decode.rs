//! [`DecodeError`] and [`TypeShape::decode`]: the decoder thread's side of a shape, which turns
//! the bytes the trap handler captured into a [`Value`] by walking the decode tree.

use std::borrow::Cow;

use sonde_expr::Value;

use super::{Elems, Field, MAX_DEREF_BYTES, MAX_DEREFS, Node, TypeShape};

impl TypeShape {
    /// Turns captured bytes into a value: `inline` holds [`Self::inline_size`] bytes (fewer if
    /// the location was a register), `heap[k]` the result of deref k.
    pub fn decode(&self, inline: &[u8], heap: &[Option<&[u8]>]) -> Result<Value, DecodeError> {
        let mut bufs = [None; MAX_DEREFS + 1];
        bufs[0] = Some(inline);
        for (slot, h) in bufs[1..].iter_mut().zip(heap) {
            *slot = *h;
        }
        decode(&self.root, &bufs, 0, 0)
    }
}

/// Why captured bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type is not one the decoder handles.
    #[error("type {0} is not supported")]
    Unsupported(String),
    /// A heap read the value needs failed (dangling or unmapped pointer).
    #[error("a pointer in the value could not be read")]
    Unreadable,
    /// The bytes do not form a valid value of the type (bad UTF-8, unknown discriminant).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

type Bufs<'a> = [Option<&'a [u8]>; MAX_DEREFS + 1];

/// `len` bytes at `at` of buffer `buf`.
fn bytes<'a>(bufs: &Bufs<'a>, buf: usize, at: usize, len: usize) -> Result<&'a [u8], DecodeError> {
    let b = bufs
        .get(buf)
        .copied()
        .flatten()
        .ok_or(DecodeError::Unreadable)?;
    match b.get(at..at.saturating_add(len)) {
        Some(s) => Ok(s),
        // The inline bytes of a register location are only 8 (or 16) long.
        None if buf == 0 => Err(DecodeError::Invalid("capture (too few bytes)")),
        None => Err(DecodeError::Unreadable),
    }
}

/// `bytes` as a little-endian number.
pub(super) fn le(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .rev()
        .fold(0u128, |acc, &b| (acc << 8) | u128::from(b))
}

fn read_u64(bufs: &Bufs<'_>, buf: usize, at: usize) -> Result<u64, DecodeError> {
    let b = bytes(bufs, buf, at, 8)?;
    Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn field_name(name: &str) -> Cow<'static, str> {
    Cow::Owned(name.to_owned())
}

fn decode(node: &Node, bufs: &Bufs<'_>, buf: usize, at: usize) -> Result<Value, DecodeError> {
    Ok(match node {
        Node::Unit => Value::None,
        Node::Int { size, signed } => {
            let raw = le(bytes(bufs, buf, at, usize::from(*size))?);
            if *signed {
                let shift = 128 - u32::from(*size) * 8;
                // Sign-extend from `size` bytes: the bits are reinterpreted on purpose.
                #[allow(clippy::cast_possible_wrap)]
                let v = ((raw << shift) as i128) >> shift;
                // Out of i64's range: a float, as `Capture for i128` does.
                #[allow(clippy::cast_precision_loss)]
                i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
            } else {
                #[allow(clippy::cast_precision_loss)]
                u64::try_from(raw).map_or(Value::Float(raw as f64), Value::UInt)
            }
        }
        Node::Float { size: 4 } => {
            let b = bytes(bufs, buf, at, 4)?;
            Value::Float(f64::from(f32::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )))
        }
        Node::Float { .. } => {
            let b = bytes(bufs, buf, at, 8)?;
            Value::Float(f64::from_le_bytes(b.try_into().unwrap_or_default()))
        }
        Node::Bool => match bytes(bufs, buf, at, 1)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => return Err(DecodeError::Invalid("bool")),
        },
        Node::Char => {
            let b = bytes(bufs, buf, at, 4)?;
            let c = char::from_u32(u32::from_le_bytes(b.try_into().unwrap_or_default()))
                .ok_or(DecodeError::Invalid("char"))?;
            Value::Str(c.to_string())
        }
        Node::Address => Value::UInt(read_u64(bufs, buf, at)?),
        Node::Fieldless { size, variants } => {
            let raw = le(bytes(bufs, buf, at, usize::from(*size))?);
            let (_, name) = variants
                .iter()
                .find(|(v, _)| *v == raw)
                .ok_or(DecodeError::Invalid("enum discriminant"))?;
            Value::Str(name.to_string())
        }
        Node::Record(fields) => Value::Record(decode_fields(fields, bufs, buf, at)?),
        Node::Enum(shape) => {
            let arm = match shape.discr {
                Some((offset, size)) => {
                    let raw = le(bytes(bufs, buf, at + offset as usize, usize::from(size))?);
                    shape
                        .arms
                        .iter()
                        .find(|a| a.value == Some(raw))
                        .or_else(|| shape.arms.iter().find(|a| a.value.is_none()))
                }
                None if shape.arms.len() == 1 => shape.arms.first(),
                None => None,
            }
            .ok_or(DecodeError::Invalid("enum discriminant"))?;
            if shape.option {
                match arm.fields.first() {
                    Some(f) if &*arm.name == "Some" => {
                        decode(&f.node, bufs, buf, at + f.offset as usize)?
                    }
                    _ => Value::None,
                }
            } else {
                let mut fields = vec![(Cow::Borrowed("variant"), Value::Str(arm.name.to_string()))];
                fields.extend(decode_fields(&arm.fields, bufs, buf, at)?);
                Value::Record(fields)
            }
        }
        Node::Ref {
            deref,
            offset,
            pointee,
        } => decode(pointee, bufs, usize::from(*deref) + 1, *offset as usize)?,
        Node::Str { deref, len_offset } => {
            let len = read_u64(bufs, buf, at + *len_offset as usize)?;
            if len == 0 {
                return Ok(Value::Str(String::new()));
            }
            let heap = bufs[usize::from(*deref) + 1].ok_or(DecodeError::Unreadable)?;
            let cut = usize::try_from(len).map_or(heap.len(), |l| l.min(heap.len()));
            let data = &heap[..cut];
            match std::str::from_utf8(data) {
                Ok(s) => Value::Str(s.to_owned()),
                // Cut inside a character: keep the characters before it.
                Err(e) if (cut as u64) < len && e.error_len().is_none() => {
                    let valid = &data[..e.valid_up_to()];
                    Value::Str(String::from_utf8_lossy(valid).into_owned())
                }
                Err(_) => return Err(DecodeError::Invalid("UTF-8 in a string")),
            }
        }
        Node::HeapSeq {
            deref,
            len_offset,
            elems,
        } => {
            let len = read_u64(bufs, buf, at + *len_offset as usize)?;
            if len == 0 {
                return Ok(Value::List(Vec::new()));
            }
            let heap_buf = usize::from(*deref) + 1;
            let heap = bufs[heap_buf].ok_or(DecodeError::Unreadable)?;
            let captured = match elems.size {
                0 => MAX_DEREF_BYTES as u64,
                size => (heap.len() / size as usize) as u64,
            };
            sequence(len, captured, elems, bufs, heap_buf, 0)?
        }
        Node::Array { count, elems } => sequence(*count, u64::MAX, elems, bufs, buf, at)?,
    })
}

fn decode_fields(
    fields: &[Field],
    bufs: &Bufs<'_>,
    buf: usize,
    at: usize,
) -> Result<Vec<(Cow<'static, str>, Value)>, DecodeError> {
    fields
        .iter()
        .map(|f| {
            let v = decode(&f.node, bufs, buf, at + f.offset as usize)?;
            Ok((field_name(&f.name), v))
        })
        .collect()
}

/// `len` elements, of which `captured` are in the buffer: a list of all of them, or
/// `{len, head}` when some are missing.
fn sequence(
    len: u64,
    captured: u64,
    elems: &Elems,
    bufs: &Bufs<'_>,
    buf: usize,
    at: usize,
) -> Result<Value, DecodeError> {
    let n = len.min(captured).min(elems.max);
    let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n as usize {
        let node = if elems.repeat {
            &elems.nodes[0]
        } else {
            &elems.nodes[i]
        };
        items.push(decode(node, bufs, buf, at + i * elems.size as usize)?);
    }
    Ok(if n == len {
        Value::List(items)
    } else {
        Value::Record(vec![
            (Cow::Borrowed("len"), Value::UInt(len)),
            (Cow::Borrowed("head"), Value::List(items)),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Deref, DerefLen};
    use super::*;

    fn int(size: u8, signed: bool) -> Node {
        Node::Int { size, signed }
    }

    fn shape(inline_size: usize, derefs: Vec<Deref>, root: Node) -> TypeShape {
        TypeShape {
            inline_size,
            derefs,
            root: std::sync::Arc::new(root),
        }
    }

    #[test]
    fn integers_of_every_size_and_sign() {
        let s = shape(1, vec![], int(1, true));
        assert_eq!(s.decode(&[0xff], &[]), Ok(Value::Int(-1)));
        let s = shape(2, vec![], int(2, false));
        assert_eq!(s.decode(&[0xff, 0xff], &[]), Ok(Value::UInt(65535)));
        let s = shape(16, vec![], int(16, true));
        let min = i128::MIN.to_le_bytes();
        assert_eq!(s.decode(&min, &[]), Ok(Value::Float(i128::MIN as f64)));
        assert_eq!(s.decode(&(-5i128).to_le_bytes(), &[]), Ok(Value::Int(-5)));
        let s = shape(16, vec![], int(16, false));
        let max = u128::MAX.to_le_bytes();
        assert_eq!(s.decode(&max, &[]), Ok(Value::Float(u128::MAX as f64)));
        // A register location gave fewer bytes than the type needs.
        assert_eq!(
            s.decode(&[0; 8], &[]),
            Err(DecodeError::Invalid("capture (too few bytes)"))
        );
    }

    #[test]
    fn strings_cut_at_a_character_boundary_and_bad_utf8_is_invalid() {
        let s = shape(
            16,
            vec![Deref {
                from: 0,
                ptr_offset: 0,
                ptr_add: 0,
                len: DerefLen::Field {
                    offset: 8,
                    elem_size: 1,
                },
            }],
            Node::Str {
                deref: 0,
                len_offset: 8,
            },
        );
        let inline = |len: u64| [[0u8; 8], len.to_le_bytes()].concat();
        // "é" is two bytes; the capture cut after its first byte.
        let heap = "aé".as_bytes();
        assert_eq!(
            s.decode(&inline(100), &[Some(&heap[..2])]),
            Ok(Value::Str("a".into()))
        );
        assert_eq!(
            s.decode(&inline(3), &[Some(heap)]),
            Ok(Value::Str("aé".into()))
        );
        assert_eq!(
            s.decode(&inline(2), &[Some(&[0xff, 0xfe])]),
            Err(DecodeError::Invalid("UTF-8 in a string"))
        );
        assert_eq!(s.decode(&inline(0), &[None]), Ok(Value::Str(String::new())));
        assert_eq!(s.decode(&inline(1), &[None]), Err(DecodeError::Unreadable));
    }
}
