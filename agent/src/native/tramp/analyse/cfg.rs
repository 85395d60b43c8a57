//! [`Flow`]: a function's control-flow graph (its blocks, and the [`Edge`]s between them) and the
//! worklist that runs the jump-table dataflow over it to a fixpoint.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

use iced_x86::{FlowControl, Instruction, InstructionInfoFactory};

use super::dataflow::{State, TOP, Val, jump_register, step};
use super::insn::near_target;

/// Block visits per block before the dataflow gives up (it converges in a few).
const VISITS: usize = 64;

/// How control leaves a block's last instruction for another block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// To the next instruction.
    Fall,
    /// A direct branch.
    Taken,
    /// After a call returns.
    Return,
    /// An `xbegin`'s abort handler.
    Abort,
    /// A jump-table target.
    Table,
}

/// The dataflow's worklist: each block's input state (`None`: not reached yet).
struct Work {
    input: Vec<Option<State>>,
    queued: Vec<bool>,
    queue: VecDeque<usize>,
}

impl Work {
    /// Joins `s` into block `b`'s input, and queues `b` if that changed it.
    fn merge(&mut self, b: usize, s: &State) {
        let joined = match &self.input[b] {
            None => s.clone(),
            Some(old) => old.join(s),
        };
        if self.input[b].as_ref() != Some(&joined) {
            self.input[b] = Some(joined);
            if !self.queued[b] {
                self.queued[b] = true;
                self.queue.push_back(b);
            }
        }
    }
}

/// The function's blocks and the value each indirect jump's register holds there.
pub(super) struct Flow<'a> {
    pub(super) insns: &'a [Instruction],
    pub(super) function: &'a Range<u64>,
    pub(super) tables: &'a BTreeMap<usize, BTreeSet<usize>>,
}

impl Flow<'_> {
    fn index_of(&self, ip: u64) -> Option<usize> {
        self.insns.binary_search_by_key(&ip, Instruction::ip).ok()
    }

    /// Where control goes from instruction `k` when it ends a block.
    fn successors(&self, k: usize) -> Vec<(usize, Edge)> {
        let insn = &self.insns[k];
        let next = (k + 1 < self.insns.len()).then_some(k + 1);
        let target = near_target(insn)
            .filter(|t| self.function.contains(t))
            .and_then(|t| self.index_of(t));
        let mut out = Vec::new();
        match insn.flow_control() {
            FlowControl::Next | FlowControl::Interrupt => {
                out.extend(next.map(|n| (n, Edge::Fall)));
            }
            FlowControl::Call | FlowControl::IndirectCall => {
                // A call into the function itself enters there with what holds after the
                // call (which forgets more than the call could change).
                out.extend(target.map(|t| (t, Edge::Taken)));
                out.extend(next.map(|n| (n, Edge::Return)));
            }
            FlowControl::ConditionalBranch => {
                out.extend(target.map(|t| (t, Edge::Taken)));
                out.extend(next.map(|n| (n, Edge::Fall)));
            }
            FlowControl::XbeginXabortXend => {
                out.extend(target.map(|t| (t, Edge::Abort)));
                out.extend(next.map(|n| (n, Edge::Fall)));
            }
            FlowControl::UnconditionalBranch => out.extend(target.map(|t| (t, Edge::Taken))),
            FlowControl::IndirectBranch => {
                if let Some(ts) = self.tables.get(&k) {
                    out.extend(ts.iter().map(|&t| (t, Edge::Table)));
                }
            }
            FlowControl::Return | FlowControl::Exception => {}
        }
        out
    }

    /// Runs the dataflow to its fixpoint: for each indirect jump, what its register holds
    /// (`None`: never reached; `Some(None)`: not a register). `None` when it gives up.
    /// `orphans`: whether blocks without predecessors are entered too (with nothing known),
    /// as a proof needs; without, the targets of tables not found yet stay unreached
    /// instead of spoiling what flows from them.
    pub(super) fn run(
        &self,
        info: &mut InstructionInfoFactory,
        orphans: bool,
    ) -> Option<BTreeMap<usize, Option<Option<Val>>>> {
        let insns = self.insns;
        let n = insns.len();
        let mut leader = vec![false; n];
        leader[0] = true;
        for (k, insn) in insns.iter().enumerate() {
            if insn.flow_control() != FlowControl::Next && k + 1 < n {
                leader[k + 1] = true;
            }
            if let Some(t) = near_target(insn).filter(|t| self.function.contains(t)) {
                // A branch into the middle of an instruction: not followed.
                leader[self.index_of(t)?] = true;
            }
        }
        for &t in self.tables.values().flatten() {
            leader[t] = true;
        }
        let starts: Vec<usize> = (0..n).filter(|&k| leader[k]).collect();
        let mut block_of = vec![0usize; n];
        for (b, w) in starts.iter().enumerate() {
            let end = starts.get(b + 1).copied().unwrap_or(n);
            block_of[*w..end].fill(b);
        }
        let blocks = starts.len();
        let last_of = |b: usize| starts.get(b + 1).copied().unwrap_or(n) - 1;
        let successors: Vec<Vec<(usize, Edge)>> = (0..blocks)
            .map(|b| {
                let mut out = self.successors(last_of(b));
                for (t, _) in &mut out {
                    *t = block_of[*t];
                }
                out
            })
            .collect();
        let mut has_pred = vec![false; blocks];
        for &(t, _) in successors.iter().flatten() {
            has_pred[t] = true;
        }
        let mut work = Work {
            input: vec![None; blocks],
            queued: vec![false; blocks],
            queue: VecDeque::new(),
        };
        // The function's entry, and blocks nothing in it leads to: landing pads (entered by
        // the unwinder, which no branch or fall-through reaches) and anything else entered
        // from outside, with nothing known.
        let top = State::top();
        for (b, has_pred) in has_pred.iter().enumerate() {
            if b == 0 || (orphans && !has_pred) {
                work.merge(b, &top);
            }
        }
        let mut jumps: BTreeMap<usize, Option<Option<Val>>> = insns
            .iter()
            .enumerate()
            .filter(|(_, i)| i.flow_control() == FlowControl::IndirectBranch)
            .map(|(k, _)| (k, None))
            .collect();
        let mut budget = blocks.saturating_mul(VISITS).saturating_add(1024);
        while let Some(b) = work.queue.pop_front() {
            work.queued[b] = false;
            budget = budget.checked_sub(1)?;
            let mut s = work.input[b].clone()?;
            let last = last_of(b);
            for (k, insn) in insns.iter().enumerate().take(last).skip(starts[b]) {
                step(&mut s, insn, k as u32, info);
            }
            let insn = &insns[last];
            match insn.flow_control() {
                FlowControl::Call | FlowControl::IndirectCall => s.after_call(),
                FlowControl::IndirectBranch => {
                    jumps.insert(last, Some(jump_register(insn).map(|r| s.regs[r])));
                }
                _ => step(&mut s, insn, last as u32, info),
            }
            let cc = insn.condition_code();
            for &(t, edge) in &successors[b] {
                let mut out = s.clone();
                match edge {
                    Edge::Taken => out.refine(cc, true),
                    Edge::Fall => out.refine(cc, false),
                    Edge::Abort => out.regs[0] = TOP, // registers as at `xbegin`, but eax
                    Edge::Return | Edge::Table => {}
                }
                work.merge(t, &out);
            }
        }
        Some(jumps)
    }
}
