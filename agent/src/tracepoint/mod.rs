//! One tracepoint as the agent runs it: its spec converted from the wire ([`spec`]), what it may
//! cost ([`budget`], and [`cpu`]: the CPU budget that samples instead of going dark), and the hit pipeline that evaluates it where it is bound ([`pipeline`]).
//!
//! May use: `site` (what a hit captures) and `metrics` (where values are recorded). Binding
//! tracepoints to sites and native lines is `install`'s; this folder knows nothing of either.

pub(crate) mod budget;
pub(crate) mod cpu;
pub(crate) mod pipeline;
pub(crate) mod snapshot;
#[cfg(feature = "opentelemetry")]
pub(crate) mod span;
pub(crate) mod spec;
