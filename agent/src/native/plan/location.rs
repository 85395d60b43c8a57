//! [`FrameBase`] and [`compile`]: a DWARF location expression (`DW_AT_location`, a location-list
//! entry, or `DW_AT_const_value`) compiled into a [`CapturePlan`] at one address.

use gimli::{AttributeValue, DwOp, Operation, Reader};

use super::{CapturePlan, Unavailable};
use crate::native::cfa::CfaRule;
use crate::native::index::Slice;

#[derive(Debug, Clone, Copy)]
pub(super) enum FrameBase {
    /// `register + offset`.
    Reg(u16, i64),
    /// `DW_OP_call_frame_cfa` plus an offset (LLVM's frame base for frames with stack
    /// probes, larger than a page), not yet resolved at an address.
    Cfa(i64),
    /// `DW_OP_call_frame_cfa` whose rule at the address is not `register + offset`.
    Unresolved(Unavailable),
    Unknown,
}

impl FrameBase {
    /// Resolves a CFA frame base with the CFA rule at the address.
    pub(super) fn at(self, cfa: impl FnOnce() -> Option<CfaRule>) -> Self {
        match self {
            Self::Cfa(plus) => match cfa() {
                Some(CfaRule::RegisterOffset { reg, offset }) => Self::Reg(reg, offset + plus),
                Some(CfaRule::Expression) => Self::Unresolved(Unavailable::CfaExpression),
                None => Self::Unresolved(Unavailable::NoUnwindInfo),
            },
            other => other,
        }
    }
}

/// Whether a location-list entry's plan counts as "the variable is live there": readable, or
/// unreadable only because of the frame at the queried address.
pub(super) fn is_live(plan: &CapturePlan) -> bool {
    matches!(
        plan,
        CapturePlan::Unavailable(Unavailable::CfaExpression | Unavailable::NoUnwindInfo)
    ) || plan.is_available()
}

/// Compiles one location expression into a plan (`bias` turns static addresses into runtime ones).
pub(super) fn compile(
    expr: gimli::Expression<Slice<'_>>,
    enc: gimli::Encoding,
    fb: FrameBase,
    bias: u64,
) -> CapturePlan {
    let ops = match operations(expr, enc) {
        Ok(ops) => ops,
        Err(()) => return CapturePlan::Unavailable(Unavailable::Malformed),
    };
    let unsupported = |code: DwOp| {
        CapturePlan::Unavailable(Unavailable::UnsupportedOp(
            code.static_string().unwrap_or("an unknown DW_OP"),
        ))
    };
    match ops.as_slice() {
        [(_, Operation::Register { register })] => CapturePlan::Reg(register.0),
        [
            (
                _,
                Operation::RegisterOffset {
                    register,
                    offset: 0,
                    base_type,
                },
            ),
            (_, Operation::StackValue),
        ] if base_type.0 == 0 => CapturePlan::Reg(register.0),
        [
            (code, first @ (Operation::RegisterOffset { .. } | Operation::FrameOffset { .. })),
            rest @ ..,
        ] => match address(*code, first, fb) {
            Ok(at) => at_address(at, rest, enc),
            Err(why) => CapturePlan::Unavailable(why),
        },
        [(_, Operation::Address { address })] => CapturePlan::Static(address.wrapping_add(bias)),
        [(_, Operation::ImplicitValue { data })] => CapturePlan::Const(data.to_vec()),
        [
            (_, Operation::UnsignedConstant { value }),
            (_, Operation::StackValue),
        ] => CapturePlan::Const(value.to_le_bytes().to_vec()),
        [
            (_, Operation::SignedConstant { value }),
            (_, Operation::StackValue),
        ] => CapturePlan::Const(value.to_le_bytes().to_vec()),
        [] => CapturePlan::Unavailable(Unavailable::OptimizedOut),
        ops => {
            // Name the first operation that makes it unsupported: the one after a simple
            // location (a piece, a stack value, arithmetic), or the first one.
            let at = match ops[0].1 {
                Operation::Register { .. }
                | Operation::Address { .. }
                | Operation::UnsignedConstant { .. }
                | Operation::SignedConstant { .. } => 1,
                _ => 0,
            };
            unsupported(ops[at.min(ops.len() - 1)].0)
        }
    }
}

/// The plan for a location that starts with the address `at` (`register + offset`) and goes on
/// with `rest`: memory there, memory there plus a constant, or the forms rustc emits for an
/// `async fn`'s locals kept in its coroutine state, reached through the state pointer the poll
/// function keeps in its frame: the pointer stored there (`DW_OP_deref`) plus a constant.
fn at_address(
    at: (u16, i64),
    rest: &[(DwOp, Operation<Slice<'_>>)],
    enc: gimli::Encoding,
) -> CapturePlan {
    let (reg, offset) = at;
    let unsupported = |code: DwOp| {
        CapturePlan::Unavailable(Unavailable::UnsupportedOp(
            code.static_string().unwrap_or("an unknown DW_OP"),
        ))
    };
    match rest {
        [] => CapturePlan::Mem { reg, offset },
        [(code, Operation::PlusConstant { value })] => match i64::try_from(*value) {
            Ok(plus) => CapturePlan::Mem {
                reg,
                offset: offset.wrapping_add(plus),
            },
            Err(_) => unsupported(*code),
        },
        [(_, deref)] if is_deref(deref, enc) => CapturePlan::Indirect {
            reg,
            offset,
            add: 0,
        },
        [(_, deref), (code, Operation::PlusConstant { value })] if is_deref(deref, enc) => {
            match u32::try_from(*value) {
                Ok(add) => CapturePlan::Indirect { reg, offset, add },
                Err(_) => unsupported(*code),
            }
        }
        // Name the operation that makes it unsupported: the one after the address, or the one
        // after a dereference (and its offset).
        [
            (_, deref),
            (_, Operation::PlusConstant { .. }),
            (code, _),
            ..,
        ] if is_deref(deref, enc) => unsupported(*code),
        [(_, deref), (code, _), ..] if is_deref(deref, enc) => unsupported(*code),
        [(code, _), ..] => unsupported(*code),
    }
}

/// The memory address `DW_OP_bregN` or `DW_OP_fbreg` (through the frame base) pushes, as
/// `register + offset`; `Err` when the frame base cannot be used here, or for a typed register
/// (`DW_OP_regval_type`).
fn address(
    code: DwOp,
    op: &Operation<Slice<'_>>,
    fb: FrameBase,
) -> Result<(u16, i64), Unavailable> {
    match *op {
        Operation::RegisterOffset {
            register,
            offset,
            base_type,
        } if base_type.0 == 0 => Ok((register.0, offset)),
        Operation::FrameOffset { offset } => match fb {
            FrameBase::Reg(reg, base) => Ok((reg, base.wrapping_add(offset))),
            // Resolved by `FrameBase::at` before compiling; unresolved means no unwind info.
            FrameBase::Cfa(_) => Err(Unavailable::NoUnwindInfo),
            FrameBase::Unresolved(why) => Err(why),
            FrameBase::Unknown => Err(Unavailable::NoFrameBase),
        },
        _ => Err(Unavailable::UnsupportedOp(
            code.static_string().unwrap_or("an unknown DW_OP"),
        )),
    }
}

/// Whether an operation is a plain `DW_OP_deref` of a whole address.
fn is_deref(op: &Operation<Slice<'_>>, enc: gimli::Encoding) -> bool {
    matches!(
        *op,
        Operation::Deref { base_type, size, space: false }
            if base_type.0 == 0 && size == enc.address_size
    )
}

fn operations<'a>(
    expr: gimli::Expression<Slice<'a>>,
    enc: gimli::Encoding,
) -> Result<Vec<(DwOp, Operation<Slice<'a>>)>, ()> {
    let mut input = expr.0;
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 16 {
        let code = DwOp(input.clone().read_u8().map_err(|_| ())?);
        let op = Operation::parse(&mut input, enc).map_err(|_| ())?;
        ops.push((code, op));
    }
    Ok(ops)
}

pub(super) fn frame_base(expr: gimli::Expression<Slice<'_>>, enc: gimli::Encoding) -> FrameBase {
    match operations(expr, enc).as_deref() {
        Ok([(_, Operation::Register { register })]) => FrameBase::Reg(register.0, 0),
        Ok(
            [
                (
                    _,
                    Operation::RegisterOffset {
                        register, offset, ..
                    },
                ),
            ],
        ) => FrameBase::Reg(register.0, *offset),
        Ok([(_, Operation::CallFrameCFA)]) => FrameBase::Cfa(0),
        // CFA plus a constant: `DW_OP_call_frame_cfa, DW_OP_consts -4976, DW_OP_plus`.
        Ok(
            [
                (_, Operation::CallFrameCFA),
                (_, Operation::SignedConstant { value }),
                (_, Operation::Plus),
            ],
        ) => FrameBase::Cfa(*value),
        Ok(
            [
                (_, Operation::CallFrameCFA),
                (_, Operation::UnsignedConstant { value }),
                (_, Operation::Plus),
            ],
        )
        | Ok(
            [
                (_, Operation::CallFrameCFA),
                (_, Operation::PlusConstant { value }),
            ],
        ) => i64::try_from(*value).map_or(FrameBase::Unknown, FrameBase::Cfa),
        _ => FrameBase::Unknown,
    }
}

/// The plan of a `DW_AT_const_value`, cut to the type's `size`.
pub(super) fn const_plan(value: AttributeValue<Slice<'_>>, size: Option<u64>) -> CapturePlan {
    let mut bytes = match value {
        AttributeValue::Block(b) => return CapturePlan::Const(b.to_vec()),
        AttributeValue::Sdata(v) => v.to_le_bytes().to_vec(),
        v => match v.udata_value() {
            Some(v) => v.to_le_bytes().to_vec(),
            None => return CapturePlan::Unavailable(Unavailable::Malformed),
        },
    };
    if let Some(size) = size
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s < bytes.len())
    {
        bytes.truncate(size);
    }
    CapturePlan::Const(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(bytes: &[u8], fb: FrameBase) -> CapturePlan {
        let enc = gimli::Encoding {
            format: gimli::Format::Dwarf32,
            version: 5,
            address_size: 8,
        };
        let expr = gimli::Expression(gimli::EndianSlice::new(bytes, gimli::LittleEndian));
        compile(expr, enc, fb, 0x1000)
    }

    #[test]
    fn simple_locations_compile_to_plans() {
        assert_eq!(plan(&[0x55], FrameBase::Unknown), CapturePlan::Reg(5)); // DW_OP_reg5
        let breg7 = CapturePlan::Mem { reg: 7, offset: 16 };
        assert_eq!(plan(&[0x77, 0x10], FrameBase::Unknown), breg7); // DW_OP_breg7 16
        let fbreg = [0x91, 0x08]; // DW_OP_fbreg 8
        let rsp = CapturePlan::Mem { reg: 7, offset: 8 };
        assert_eq!(plan(&fbreg, FrameBase::Reg(7, 0)), rsp);
        let none = CapturePlan::Unavailable(Unavailable::NoFrameBase);
        assert_eq!(plan(&fbreg, FrameBase::Unknown), none);
        let constu = plan(&[0x10, 0x2a, 0x9f], FrameBase::Unknown); // constu 42, stack_value
        assert_eq!(constu, CapturePlan::Const(42u64.to_le_bytes().to_vec()));
        let addr = plan(&[0x03, 0x20, 0, 0, 0, 0, 0, 0, 0], FrameBase::Unknown); // DW_OP_addr
        assert_eq!(addr, CapturePlan::Static(0x1020));
    }

    #[test]
    fn a_cfa_frame_base_becomes_register_relative_or_says_why_not() {
        let fbreg = [0x91, 0x78]; // DW_OP_fbreg -8
        let at = |rule| FrameBase::Cfa(0).at(|| rule);
        // CFA = RSP + 48 here: the variable is at RSP + 40.
        let rsp48 = at(Some(CfaRule::RegisterOffset { reg: 7, offset: 48 }));
        assert_eq!(plan(&fbreg, rsp48), CapturePlan::Mem { reg: 7, offset: 40 });
        let rbp16 = at(Some(CfaRule::RegisterOffset { reg: 6, offset: 16 }));
        assert_eq!(plan(&fbreg, rbp16), CapturePlan::Mem { reg: 6, offset: 8 });
        let expression = plan(&fbreg, at(Some(CfaRule::Expression)));
        assert_eq!(
            expression,
            CapturePlan::Unavailable(Unavailable::CfaExpression)
        );
        assert!(
            is_live(&expression),
            "the variable is live, the frame is the problem"
        );
        let none = plan(&fbreg, at(None));
        assert_eq!(none, CapturePlan::Unavailable(Unavailable::NoUnwindInfo));
        assert!(
            Unavailable::CfaExpression
                .to_string()
                .contains("DWARF expression")
        );
        // A register frame base needs no unwind info.
        let reg = FrameBase::Reg(7, 0).at(|| panic!("not asked"));
        assert_eq!(plan(&fbreg, reg), CapturePlan::Mem { reg: 7, offset: -8 });
        // The CFA operation itself is parsed as a frame base.
        let enc = gimli::Encoding {
            format: gimli::Format::Dwarf32,
            version: 5,
            address_size: 8,
        };
        let expr = |bytes: &'static [u8]| {
            frame_base(
                gimli::Expression(gimli::EndianSlice::new(bytes, gimli::LittleEndian)),
                enc,
            )
        };
        assert!(matches!(expr(&[0x9c]), FrameBase::Cfa(0)));
        // DW_OP_call_frame_cfa, DW_OP_consts -4976, DW_OP_plus: LLVM's frame base for frames
        // larger than a page.
        let big = expr(&[0x9c, 0x11, 0x90, 0x59, 0x22]);
        assert!(matches!(big, FrameBase::Cfa(-4976)), "{big:?}");
        let rsp = big.at(|| {
            Some(CfaRule::RegisterOffset {
                reg: 7,
                offset: 4984,
            })
        });
        assert_eq!(
            plan(&[0x91, 0x10], rsp),
            CapturePlan::Mem { reg: 7, offset: 24 }
        );
        // DW_OP_call_frame_cfa, DW_OP_plus_uconst 16
        assert!(matches!(expr(&[0x9c, 0x23, 0x10]), FrameBase::Cfa(16)));
    }

    #[test]
    fn async_fn_state_locations_compile_to_indirect_plans() {
        let rsp = FrameBase::Reg(7, 0);
        // DW_OP_fbreg 200, DW_OP_deref, DW_OP_plus_uconst 64: what rustc emits at opt-level 0
        // for a local of an `async fn` held across an `.await`.
        let held = plan(&[0x91, 0xc8, 0x01, 0x06, 0x23, 0x40], rsp);
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 200,
            add: 64,
        };
        assert_eq!(held, want);
        // DW_OP_fbreg 200, DW_OP_deref: a field at offset 0 of the state.
        let first = plan(&[0x91, 0xc8, 0x01, 0x06], rsp);
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 200,
            add: 0,
        };
        assert_eq!(first, want);
        // DW_OP_breg3 8, DW_OP_deref, DW_OP_plus_uconst 144
        let breg = plan(&[0x73, 0x08, 0x06, 0x23, 0x90, 0x01], FrameBase::Unknown);
        let want = CapturePlan::Indirect {
            reg: 3,
            offset: 8,
            add: 144,
        };
        assert_eq!(breg, want);
        // DW_OP_breg3 8, DW_OP_plus_uconst 144: memory at rbx + 152.
        let plus = plan(&[0x73, 0x08, 0x23, 0x90, 0x01], FrameBase::Unknown);
        assert_eq!(
            plus,
            CapturePlan::Mem {
                reg: 3,
                offset: 152
            }
        );
        // Through a CFA frame base: DW_OP_fbreg -8, DW_OP_deref, DW_OP_plus_uconst 16.
        let cfa = FrameBase::Cfa(0).at(|| Some(CfaRule::RegisterOffset { reg: 7, offset: 48 }));
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 40,
            add: 16,
        };
        assert_eq!(plan(&[0x91, 0x78, 0x06, 0x23, 0x10], cfa), want);
        // Without a frame base it says so.
        let none = plan(&[0x91, 0xc8, 0x01, 0x06, 0x23, 0x40], FrameBase::Unknown);
        assert_eq!(none, CapturePlan::Unavailable(Unavailable::NoFrameBase));
        // Computed values and other dereferences are named.
        let unsupported = |op| CapturePlan::Unavailable(Unavailable::UnsupportedOp(op));
        // ..., DW_OP_stack_value: the address itself, not the value there.
        let value = plan(&[0x91, 0x10, 0x06, 0x23, 0x08, 0x9f], rsp);
        assert_eq!(value, unsupported("DW_OP_stack_value"));
        // DW_OP_fbreg 16, DW_OP_deref_size 4
        let narrow = plan(&[0x91, 0x10, 0x94, 0x04], rsp);
        assert_eq!(narrow, unsupported("DW_OP_deref_size"));
        // DW_OP_fbreg 16, DW_OP_deref, DW_OP_deref: two pointers to follow.
        let twice = plan(&[0x91, 0x10, 0x06, 0x06], rsp);
        assert_eq!(twice, unsupported("DW_OP_deref"));
    }

    #[test]
    fn unsupported_locations_name_the_operation() {
        let unsupported = |op| CapturePlan::Unavailable(Unavailable::UnsupportedOp(op));
        // DW_OP_entry_value(DW_OP_reg5), DW_OP_stack_value
        let entry = plan(&[0xa3, 0x01, 0x55, 0x9f], FrameBase::Unknown);
        assert_eq!(entry, unsupported("DW_OP_entry_value"));
        // DW_OP_reg0, DW_OP_piece 8, DW_OP_reg1, DW_OP_piece 8
        let pieces = plan(&[0x50, 0x93, 0x08, 0x51, 0x93, 0x08], FrameBase::Unknown);
        assert_eq!(pieces, unsupported("DW_OP_piece"));
        // DW_OP_breg3 4, DW_OP_stack_value: a computed value
        let computed = plan(&[0x73, 0x04, 0x9f], FrameBase::Unknown);
        assert_eq!(computed, unsupported("DW_OP_stack_value"));
        let text = Unavailable::UnsupportedOp("DW_OP_entry_value").to_string();
        assert!(text.contains("DW_OP_entry_value"), "{text}");
    }
}
