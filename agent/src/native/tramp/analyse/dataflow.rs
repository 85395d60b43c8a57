//! [`State`]: what the jump-table dataflow knows at a point of a function (a [`Val`] for each
//! general-purpose register and tracked stack slot, the flags, the bounds proved), and how each
//! instruction changes it ([`step`]). What the values are and which instructions are followed is
//! described in `table`'s header (Jump tables).

use iced_x86::{
    Code, ConditionCode, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

/// The most entries read from one table.
const MAX_ENTRIES: u64 = 1 << 16;
/// Stack slots tracked at once.
const MAX_SLOTS: usize = 32;
/// The lowest `rsp` offset a slot may have: the red zone, which no signal handler writes.
const RED_ZONE: i64 = -128;
/// `rsp`, in iced's numbering of the 64-bit registers (rax, rcx, rdx, rbx, rsp, rbp, rsi,
/// rdi, r8–r15).
const RSP: usize = 4;
/// What a call may change (System V): rax, rcx, rdx, rsi, rdi, r8–r11.
const CALLER_SAVED: [usize; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];

/// What a register or stack slot is known to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Val {
    /// The low `bits` of the value named `id`, zero-extended (`id` `None`: related to no
    /// other location), and at most `hi`.
    Int { id: Option<u32>, bits: u32, hi: u64 },
    /// Exactly this.
    Const(u64),
    /// `sext(mem32[table + 4 * i])` for some `i <= last` (`None`: unbounded).
    Entry { table: u64, last: Option<u64> },
    /// `base +` an [`Val::Entry`]: where a table jump goes.
    Target {
        table: u64,
        last: Option<u64>,
        base: u64,
    },
}

pub(super) const TOP: Val = Val::Int {
    id: None,
    bits: 64,
    hi: u64::MAX,
};

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

impl Val {
    fn at_most(hi: u64) -> Self {
        Self::Int {
            id: None,
            bits: 64,
            hi,
        }
    }

    fn hi(self) -> u64 {
        match self {
            Self::Int { hi, .. } => hi,
            Self::Const(c) => c,
            Self::Entry { .. } | Self::Target { .. } => u64::MAX,
        }
    }

    /// The low `bits`, zero-extended (what a 32-bit `mov` or a `movzx` copies).
    fn low(self, bits: u32) -> Self {
        if bits >= 64 {
            return self;
        }
        match self {
            Self::Const(c) => Self::Const(c & mask(bits)),
            Self::Int {
                id: Some(id),
                bits: k,
                hi,
            } => Self::Int {
                id: Some(id),
                bits: k.min(bits),
                hi: hi.min(mask(bits)),
            },
            v => Self::at_most(v.hi().min(mask(bits))),
        }
    }

    /// What holds on either path.
    fn join(self, other: Self) -> Self {
        match (self, other) {
            _ if self == other => self,
            (
                Self::Int {
                    id: Some(a),
                    bits: ka,
                    hi: ha,
                },
                Self::Int {
                    id: Some(b),
                    bits: kb,
                    hi: hb,
                },
            ) if a == b && ka == kb => Self::Int {
                id: Some(a),
                bits: ka,
                hi: ha.max(hb),
            },
            _ => Self::at_most(self.hi().max(other.hi())),
        }
    }
}

/// A table entry plus a constant: a table target.
fn sum(a: Val, b: Val) -> Val {
    match (a, b) {
        (Val::Entry { table, last }, Val::Const(base))
        | (Val::Const(base), Val::Entry { table, last }) => Val::Target { table, last, base },
        _ => TOP,
    }
}

/// A value at `[rsp + off]`, `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    off: i64,
    size: u32,
    val: Val,
}

/// The flags hold the unsigned comparison of the low `bits` of the value named `id` with
/// `imm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fact {
    id: u32,
    bits: u32,
    imm: u64,
}

#[derive(Debug, Clone, Copy)]
enum Loc {
    Reg(usize),
    Slot(usize),
}

/// A bound a conditional jump proved: the low `bits` of the value named `id` are at most
/// `bound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proved {
    id: u32,
    bits: u32,
    bound: u64,
}

/// The most bounds kept at once.
const MAX_PROVED: usize = 8;

/// What is known at a point: the 16 general-purpose registers (iced's order), stack slots,
/// the flags, and the bounds proved on named values (applied to every copy made later too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    pub(super) regs: [Val; 16],
    slots: Vec<Slot>,
    fact: Option<Fact>,
    proved: Vec<Proved>,
}

impl State {
    pub(super) fn top() -> Self {
        Self {
            regs: [TOP; 16],
            slots: Vec::new(),
            fact: None,
            proved: Vec::new(),
        }
    }

    pub(super) fn join(&self, other: &Self) -> Self {
        let mut regs = self.regs;
        for (r, o) in regs.iter_mut().zip(other.regs) {
            *r = r.join(o);
        }
        let slots = self
            .slots
            .iter()
            .filter_map(|s| {
                let o = other
                    .slots
                    .iter()
                    .find(|o| o.off == s.off && o.size == s.size)?;
                Some(Slot {
                    val: s.val.join(o.val),
                    ..*s
                })
            })
            .collect();
        let fact = if self.fact == other.fact {
            self.fact
        } else {
            None
        };
        let proved = self
            .proved
            .iter()
            .filter_map(|p| {
                let o = other
                    .proved
                    .iter()
                    .find(|o| o.id == p.id && o.bits == p.bits)?;
                Some(Proved {
                    bound: p.bound.max(o.bound),
                    ..*p
                })
            })
            .collect();
        Self {
            regs,
            slots,
            fact,
            proved,
        }
    }

    /// `v` with the bounds proved on its name applied: a location holding the low `k`
    /// bits of a value whose low `bits` are at most `bound` is at most `bound` too when
    /// `k <= bits`, or when it is already below 2^bits (its bits above are zero).
    fn tighten(&self, mut v: Val) -> Val {
        for _ in 0..2 {
            for p in &self.proved {
                if let Val::Int {
                    id: Some(id),
                    bits,
                    hi,
                } = v
                    && id == p.id
                    && (bits <= p.bits || hi <= mask(p.bits))
                {
                    v = Val::Int {
                        id: Some(id),
                        bits,
                        hi: hi.min(p.bound),
                    };
                }
            }
        }
        v
    }

    fn get(&self, loc: Loc) -> Val {
        match loc {
            Loc::Reg(r) => self.regs[r],
            Loc::Slot(s) => self.slots[s].val,
        }
    }

    fn vals(&mut self) -> impl Iterator<Item = &mut Val> {
        self.regs
            .iter_mut()
            .chain(self.slots.iter_mut().map(|s| &mut s.val))
    }

    /// Writes a register.
    fn set(&mut self, reg: usize, val: Val) {
        self.regs[reg] = self.tighten(val);
        if reg == RSP {
            self.slots.clear(); // slots are at offsets from it
        }
    }

    /// The value at `loc`, named after instruction `at` if it had no name, so that its
    /// copies share what a compare proves.
    fn name(&mut self, loc: Loc, at: u32) -> Val {
        let Val::Int { id: None, hi, .. } = self.get(loc) else {
            return self.get(loc);
        };
        // Locations still named after an earlier run of `at` hold an older value.
        for v in self.vals() {
            if let Val::Int {
                id: Some(id), hi, ..
            } = *v
                && id == at
            {
                *v = Val::at_most(hi);
            }
        }
        if self.fact.is_some_and(|f| f.id == at) {
            self.fact = None;
        }
        self.proved.retain(|p| p.id != at);
        let named = Val::Int {
            id: Some(at),
            bits: 64,
            hi,
        };
        match loc {
            Loc::Reg(r) => self.regs[r] = named,
            Loc::Slot(s) => self.slots[s].val = named,
        }
        named
    }

    /// The flags after comparing the low `bits` of `loc` with `imm` (`cmp`, `sub`).
    fn compare(&mut self, loc: Loc, bits: u32, imm: u64, at: u32) {
        self.fact = match self.name(loc, at) {
            Val::Int {
                id: Some(id),
                bits: k,
                ..
            } => Some(Fact {
                id,
                bits: k.min(bits),
                imm: imm & mask(bits),
            }),
            _ => None,
        };
    }

    /// What the flags prove on the edge of a conditional jump (`taken` or not).
    pub(super) fn refine(&mut self, cc: ConditionCode, taken: bool) {
        let Some(f) = self.fact else {
            return;
        };
        let bound = match (cc, taken) {
            (ConditionCode::a | ConditionCode::ne, false)
            | (ConditionCode::be | ConditionCode::e, true) => Some(f.imm),
            (ConditionCode::ae, false) | (ConditionCode::b, true) => f.imm.checked_sub(1),
            _ => None,
        };
        let Some(bound) = bound else {
            return;
        };
        match self
            .proved
            .iter_mut()
            .find(|p| p.id == f.id && p.bits == f.bits)
        {
            Some(p) => p.bound = p.bound.min(bound),
            None => {
                if self.proved.len() == MAX_PROVED {
                    self.proved.remove(0);
                }
                self.proved.push(Proved {
                    id: f.id,
                    bits: f.bits,
                    bound,
                });
            }
        }
        let mut regs = self.regs;
        for v in &mut regs {
            *v = self.tighten(*v);
        }
        self.regs = regs;
        let mut slots = std::mem::take(&mut self.slots);
        for s in &mut slots {
            s.val = self.tighten(s.val);
        }
        self.slots = slots;
    }

    fn slot(&self, off: i64, size: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.off == off && s.size >= size)
    }

    /// A load of `size` bytes at `[rsp + off]`, if the slot is known.
    fn load(&mut self, off: i64, size: u32, at: u32) -> Option<Val> {
        let s = self.slot(off, size)?;
        Some(self.name(Loc::Slot(s), at).low(size * 8))
    }

    /// Forgets the slots that a write of `size` bytes at `[rsp + off]` overlaps.
    fn clobber(&mut self, off: i64, size: u32) {
        self.slots.retain(|s| {
            s.off.saturating_add(i64::from(s.size)) <= off
                || off.saturating_add(i64::from(size)) <= s.off
        });
    }

    fn store(&mut self, off: i64, size: u32, val: Val) {
        self.clobber(off, size);
        if off >= RED_ZONE {
            if self.slots.len() == MAX_SLOTS {
                self.slots.remove(0);
            }
            let val = self.tighten(val);
            self.slots.push(Slot { off, size, val });
        }
    }

    /// After a call returns: the callee-saved registers survive.
    pub(super) fn after_call(&mut self) {
        for r in CALLER_SAVED {
            self.regs[r] = TOP;
        }
        self.slots.clear();
        self.fact = None;
    }
}

/// A general-purpose register's number (0 rax … 15 r15) and width in bits; `None` for
/// ah, bh, ch and dh (not the low bits of theirs) and for any other register.
fn gpr(reg: Register) -> Option<(usize, u32)> {
    if !reg.is_gpr()
        || matches!(
            reg,
            Register::AH | Register::BH | Register::CH | Register::DH
        )
    {
        return None;
    }
    Some((reg.full_register().number(), reg.size() as u32 * 8))
}

/// The offset of `insn`'s memory operand from `rsp`, if it is `[rsp + d]`.
fn rsp_slot(insn: &Instruction) -> Option<i64> {
    (insn.memory_base() == Register::RSP
        && insn.memory_index() == Register::None
        && !matches!(insn.segment_prefix(), Register::FS | Register::GS))
    .then(|| insn.memory_displacement64() as i64)
}

fn is_immediate(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// The register of a `jmp reg`.
pub(super) fn jump_register(insn: &Instruction) -> Option<usize> {
    match (insn.op0_kind(), gpr(insn.op0_register())) {
        (OpKind::Register, Some((r, 64))) => Some(r),
        _ => None,
    }
}

/// One instruction's effect (not a call's: see [`State::after_call`]).
pub(super) fn step(s: &mut State, insn: &Instruction, at: u32, info: &mut InstructionInfoFactory) {
    if matches!(insn.code(), Code::Syscall | Code::Sysenter)
        || insn.flow_control() == FlowControl::Interrupt
    {
        // The kernel (or a handler) may write memory and the caller-saved registers.
        s.after_call();
        return;
    }
    if !modelled(s, insn, at) {
        generic(s, insn, info);
    }
}

/// The instructions of a jump-table dispatch, followed exactly; false for any other.
fn modelled(s: &mut State, insn: &Instruction, at: u32) -> bool {
    let op = |i| insn.op_kind(i);
    let reg = |i| match op(i) {
        OpKind::Register => gpr(insn.op_register(i)),
        _ => None,
    };
    match insn.mnemonic() {
        Mnemonic::Lea => {
            let Some((d, 64)) = reg(0) else {
                return false;
            };
            let val = if insn.is_ip_rel_memory_operand() {
                Val::Const(insn.ip_rel_memory_address())
            } else if let (Some((b, 64)), Some((i, 64)), 1, 0) = (
                gpr(insn.memory_base()),
                gpr(insn.memory_index()),
                insn.memory_index_scale(),
                insn.memory_displacement64(),
            ) {
                sum(s.regs[b], s.regs[i])
            } else {
                return false;
            };
            s.set(d, val);
        }
        Mnemonic::Mov => match (op(0), op(1)) {
            (OpKind::Register, OpKind::Register) => {
                let (Some((d, w)), Some((src, _))) = (reg(0), reg(1)) else {
                    return false;
                };
                if w < 32 {
                    return false; // a partial write
                }
                let val = s.name(Loc::Reg(src), at).low(w);
                s.set(d, val);
            }
            (OpKind::Register, k) if is_immediate(k) => {
                let Some((d, w)) = reg(0).filter(|&(_, w)| w >= 32) else {
                    return false;
                };
                s.set(d, Val::Const(insn.immediate(1) & mask(w)));
            }
            (OpKind::Register, OpKind::Memory) => {
                let Some((d, w)) = reg(0).filter(|&(_, w)| w >= 32) else {
                    return false;
                };
                let val = rsp_slot(insn)
                    .and_then(|off| s.load(off, w / 8, at))
                    .unwrap_or(Val::at_most(mask(w)));
                s.set(d, val);
            }
            (OpKind::Memory, k) => {
                let Some(off) = rsp_slot(insn) else {
                    return false;
                };
                let size = insn.memory_size().size() as u32;
                if size == 0 || size > 8 {
                    return false;
                }
                let val = match (k, reg(1)) {
                    (OpKind::Register, Some((src, _))) => s.name(Loc::Reg(src), at),
                    (k, _) if is_immediate(k) => Val::Const(insn.immediate(1)),
                    _ => TOP,
                };
                s.store(off, size, val.low(size * 8));
            }
            _ => return false,
        },
        Mnemonic::Movzx => {
            let Some((d, _)) = reg(0).filter(|&(_, w)| w >= 32) else {
                return false;
            };
            let val = match op(1) {
                OpKind::Register => {
                    let bits = insn.op_register(1).size() as u32 * 8;
                    match reg(1) {
                        Some((src, _)) => s.name(Loc::Reg(src), at).low(bits),
                        None => Val::at_most(mask(bits)),
                    }
                }
                _ => {
                    let size = insn.memory_size().size() as u32;
                    rsp_slot(insn)
                        .and_then(|off| s.load(off, size, at))
                        .unwrap_or(Val::at_most(mask(size * 8)))
                }
            };
            s.set(d, val);
        }
        Mnemonic::Movsxd => {
            let Some((d, 64)) = reg(0) else {
                return false;
            };
            let val = entry(s, insn).unwrap_or(TOP);
            s.set(d, val);
        }
        Mnemonic::Add => {
            let (Some((d, 64)), Some((src, 64))) = (reg(0), reg(1)) else {
                return false;
            };
            let val = sum(s.regs[d], s.regs[src]);
            s.set(d, val);
            s.fact = None;
        }
        Mnemonic::Cmp => {
            let bits = match op(0) {
                OpKind::Register => insn.op_register(0).size() as u32 * 8,
                _ => insn.memory_size().size() as u32 * 8,
            };
            let imm = match (op(1), reg(1)) {
                (k, _) if is_immediate(k) => Some(insn.immediate(1)),
                (OpKind::Register, Some((r, _))) => match s.regs[r] {
                    Val::Const(c) => Some(c),
                    _ => None,
                },
                _ => None,
            };
            let loc = match op(0) {
                OpKind::Register => reg(0).map(|(r, _)| Loc::Reg(r)),
                OpKind::Memory => rsp_slot(insn)
                    .and_then(|off| s.slot(off, bits / 8))
                    .map(Loc::Slot),
                _ => None,
            };
            match (loc, imm) {
                (Some(loc), Some(imm)) => s.compare(loc, bits, imm, at),
                _ => s.fact = None,
            }
        }
        Mnemonic::Sub if is_immediate(op(1)) => {
            let Some((d, w)) = reg(0) else {
                return false;
            };
            // The flags are those of `cmp` on the old value, which is then replaced.
            s.compare(Loc::Reg(d), w, insn.immediate(1), at);
            s.set(d, if w == 32 { Val::at_most(mask(32)) } else { TOP });
        }
        Mnemonic::And if is_immediate(op(1)) => {
            let Some((d, w)) = reg(0).filter(|&(_, w)| w >= 32) else {
                return false;
            };
            let hi = s.regs[d].low(w).hi().min(insn.immediate(1) & mask(w));
            s.set(d, Val::at_most(hi));
            s.fact = None;
        }
        _ => return false,
    }
    true
}

/// `movsxd r64, dword ptr [base + index*4 + disp]` with a constant base: a table entry,
/// bounded by what is known of the index.
fn entry(s: &State, insn: &Instruction) -> Option<Val> {
    if insn.op_kind(1) != OpKind::Memory
        || insn.memory_index_scale() != 4
        || matches!(insn.segment_prefix(), Register::FS | Register::GS)
    {
        return None;
    }
    let (Some((b, 64)), Some((i, 64))) = (gpr(insn.memory_base()), gpr(insn.memory_index())) else {
        return None;
    };
    let Val::Const(base) = s.regs[b] else {
        return None;
    };
    let hi = s.regs[i].hi();
    Some(Val::Entry {
        table: base.wrapping_add(insn.memory_displacement64()),
        last: (hi < MAX_ENTRIES).then_some(hi),
    })
}

/// Any other instruction: what it writes (as iced reports it) becomes unknown.
fn generic(s: &mut State, insn: &Instruction, info: &mut InstructionInfoFactory) {
    let writes = |a: OpAccess| {
        matches!(
            a,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    let info = info.info(insn);
    // iced reports a write of a 32-bit register as one of the 64-bit register, since it
    // zero-extends (a conditional one too, in 64-bit mode): the explicit operand tells.
    let zero_extended = (insn.op_count() > 0
        && insn.op0_kind() == OpKind::Register
        && insn.op0_register().is_gpr32()
        && writes(info.op0_access()))
    .then(|| insn.op0_register().full_register());
    for r in info.used_registers() {
        let reg = r.register();
        if writes(r.access()) && reg.is_gpr() {
            let val = if reg.is_gpr32() || Some(reg) == zero_extended {
                Val::at_most(mask(32))
            } else {
                TOP
            };
            s.set(reg.full_register().number(), val);
        }
    }
    for m in info.used_memory() {
        if !writes(m.access()) {
            continue;
        }
        let size = m.memory_size().size() as u32;
        if m.base() == Register::RSP
            && m.index() == Register::None
            && !matches!(m.segment(), Register::FS | Register::GS)
            && size > 0
        {
            s.clobber(m.displacement() as i64, size);
        } else {
            s.slots.clear();
        }
    }
    if insn.rflags_modified() != 0 {
        s.fact = None;
    }
}
