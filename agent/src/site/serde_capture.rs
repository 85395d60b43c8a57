//! [`SerdeCapture`]: captures any `serde::Serialize` value (feature `serde`), through a small
//! `serde::Serializer` whose output is a [`Value`].
//!
//! The shapes follow `#[derive(Capture)]`: a struct is a record of its fields, a sequence or
//! tuple a list, a map with string (or number, or bool) keys a map, `None` and `()` none, a unit
//! variant its name, and a variant with fields a record of `variant` (its name) and its fields
//! (`"0"`, `"1"`, … for a tuple or newtype variant). Bytes stay bytes; `i128`/`u128` outside the
//! 64-bit range become floats.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::ser::{self, Serialize};
use sonde_expr::Value;

use crate::site::capture::Capture;

/// Captures a `serde::Serialize` value: `probe!(order = SerdeCapture(&order))`.
///
/// The value is serialized only when an armed tracepoint reads it, and then whole: paths such as
/// `order.customer.country` walk the converted value (a `#[derive(Capture)]` type converts only
/// the field asked for). A value that fails to serialize (a map with keys that are not strings,
/// numbers or bools, or a `Serialize` impl that errors) is captured as none.
///
/// ```
/// use sonde_agent::{Capture, SerdeCapture};
/// use sonde_expr::Value;
///
/// #[derive(serde::Serialize)]
/// struct Customer { country: &'static str, vip: bool }
///
/// let customer = Customer { country: "NZ", vip: true };
/// assert_eq!(
///     SerdeCapture(&customer).capture(),
///     Value::Record(vec![
///         ("country".into(), Value::Str("NZ".into())),
///         ("vip".into(), Value::Bool(true)),
///     ])
/// );
/// ```
pub struct SerdeCapture<'a, T: Serialize + ?Sized>(pub &'a T);

impl<T: Serialize + ?Sized> fmt::Debug for SerdeCapture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SerdeCapture(..)")
    }
}

impl<T: Serialize + ?Sized> Capture for SerdeCapture<'_, T> {
    fn capture(&self) -> Value {
        self.0.serialize(ValueSerializer).unwrap_or(Value::None)
    }
}

/// Why a value could not be serialized.
#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Self(msg.to_string())
    }
}

fn variant_entry(variant: &'static str) -> (Cow<'static, str>, Value) {
    (Cow::Borrowed("variant"), Value::Str(variant.to_owned()))
}

/// Serializes into a [`Value`].
struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqSerializer;
    type SerializeTuple = SeqSerializer;
    type SerializeTupleStruct = SeqSerializer;
    type SerializeTupleVariant = SeqSerializer;
    type SerializeMap = MapSerializer;
    type SerializeStruct = RecordSerializer;
    type SerializeStructVariant = RecordSerializer;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        Ok(v.capture())
    }
    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::UInt(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::UInt(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::UInt(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(Value::UInt(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        Ok(v.capture())
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, Error> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::Str(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        Ok(Value::Record(vec![
            variant_entry(variant),
            (Cow::Borrowed("0"), value.serialize(self)?),
        ]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSerializer, Error> {
        Ok(SeqSerializer {
            variant: None,
            items: Vec::with_capacity(len.unwrap_or(0)),
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSerializer, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqSerializer, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSerializer, Error> {
        Ok(SeqSerializer {
            variant: Some(variant),
            items: Vec::with_capacity(len),
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<MapSerializer, Error> {
        Ok(MapSerializer {
            map: BTreeMap::new(),
            key: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<RecordSerializer, Error> {
        Ok(RecordSerializer {
            fields: Vec::with_capacity(len),
        })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<RecordSerializer, Error> {
        let mut fields = Vec::with_capacity(len + 1);
        fields.push(variant_entry(variant));
        Ok(RecordSerializer { fields })
    }
}

/// Sequences, tuples and tuple structs (a list); tuple variants (a record).
struct SeqSerializer {
    variant: Option<&'static str>,
    items: Vec<Value>,
}

impl SeqSerializer {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }

    fn finish(self) -> Value {
        match self.variant {
            None => Value::List(self.items),
            Some(variant) => Value::Record(
                std::iter::once(variant_entry(variant))
                    .chain(
                        self.items
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (Cow::Owned(i.to_string()), v)),
                    )
                    .collect(),
            ),
        }
    }
}

impl ser::SerializeSeq for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleVariant for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

/// Maps: keys become strings.
struct MapSerializer {
    map: BTreeMap<String, Value>,
    key: Option<String>,
}

fn map_key(key: Value) -> Result<String, Error> {
    match key {
        Value::Str(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        Value::UInt(u) => Ok(u.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(Error(format!(
            "a map key must be a string, a number or a bool, not a {}",
            other.type_name()
        ))),
    }
}

impl ser::SerializeMap for MapSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(map_key(key.serialize(ValueSerializer)?)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("a map value came without its key".to_owned()))?;
        self.map.insert(key, value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Map(self.map))
    }
}

/// Structs and struct variants: a record.
struct RecordSerializer {
    fields: Vec<(Cow<'static, str>, Value)>,
}

impl RecordSerializer {
    fn push<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.fields
            .push((Cow::Borrowed(key), value.serialize(ValueSerializer)?));
        Ok(())
    }
}

impl ser::SerializeStruct for RecordSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push(key, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Record(self.fields))
    }
}

impl ser::SerializeStructVariant for RecordSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push(key, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Record(self.fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(serde::Serialize)]
    enum Status {
        Open,
        Held(u32),
        Split(u8, u8),
        Paid { amount: f64 },
    }

    #[derive(serde::Serialize)]
    struct Order<'a> {
        id: u64,
        delta: i32,
        country: &'a str,
        note: Option<String>,
        tags: Vec<&'a str>,
        pair: (u8, char),
        #[serde(with = "serde_bytes_like")]
        raw: Vec<u8>,
        counts: HashMap<u32, bool>,
        status: Vec<Status>,
        unit: (),
    }

    /// Serializes a `Vec<u8>` as bytes (as `serde_bytes` would), to reach `serialize_bytes`.
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    #[test]
    fn shapes_follow_derive_capture() {
        let order = Order {
            id: 7,
            delta: -2,
            country: "NZ",
            note: None,
            tags: vec!["a", "b"],
            pair: (1, 'x'),
            raw: vec![0, 255],
            counts: HashMap::from([(3, true)]),
            status: vec![
                Status::Open,
                Status::Held(4),
                Status::Split(1, 2),
                Status::Paid { amount: 1.5 },
            ],
            unit: (),
        };
        let variant = |name: &str| (Cow::Borrowed("variant"), s(name));
        assert_eq!(
            SerdeCapture(&order).capture(),
            Value::Record(vec![
                ("id".into(), Value::UInt(7)),
                ("delta".into(), Value::Int(-2)),
                ("country".into(), s("NZ")),
                ("note".into(), Value::None),
                ("tags".into(), Value::List(vec![s("a"), s("b")])),
                ("pair".into(), Value::List(vec![Value::UInt(1), s("x")])),
                ("raw".into(), Value::Bytes(vec![0, 255])),
                (
                    "counts".into(),
                    Value::Map(BTreeMap::from([("3".to_owned(), Value::Bool(true))]))
                ),
                (
                    "status".into(),
                    Value::List(vec![
                        s("Open"),
                        Value::Record(vec![variant("Held"), ("0".into(), Value::UInt(4))]),
                        Value::Record(vec![
                            variant("Split"),
                            ("0".into(), Value::UInt(1)),
                            ("1".into(), Value::UInt(2)),
                        ]),
                        Value::Record(vec![variant("Paid"), ("amount".into(), Value::Float(1.5))]),
                    ])
                ),
                ("unit".into(), Value::None),
            ])
        );
        assert_eq!(
            SerdeCapture(&Some(u128::MAX)).capture(),
            Value::Float(u128::MAX as f64)
        );
        assert_eq!(SerdeCapture(&-5i128).capture(), Value::Int(-5));
    }

    #[test]
    fn unserializable_values_are_none() {
        let bad: HashMap<Vec<u8>, u8> = HashMap::from([(vec![1], 1)]);
        assert_eq!(SerdeCapture(&bad).capture(), Value::None);
    }

    #[test]
    fn paths_read_the_serialized_value() {
        #[derive(serde::Serialize)]
        struct Customer {
            country: String,
        }
        #[derive(serde::Serialize)]
        struct Order {
            customer: Customer,
            total: f64,
        }
        let order = Order {
            customer: Customer {
                country: "FR".into(),
            },
            total: 3.0,
        };
        let captured = SerdeCapture(&order);
        let values: [&dyn Capture; 1] = [&captured];
        let vars = crate::site::capture::HitVars {
            names: &["order"],
            values: &values,
        };
        let label =
            sonde_expr::compile("order.customer.country", sonde_expr::ExprKind::Label).unwrap();
        let mut out = String::new();
        label.eval_label(&vars, &mut out).unwrap();
        assert_eq!(out, "FR");
        let value = sonde_expr::compile("order.total * 2", sonde_expr::ExprKind::Value).unwrap();
        assert_eq!(value.eval_f64(&vars), Ok(6.0));
    }
}
