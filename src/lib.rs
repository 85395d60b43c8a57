//! Sonde's control plane: the server (`sonde server`) that stores tracepoints and serves them to
//! agents over Deep's wire protocol and Sonde's own, and the command-line client.
//!
//! The binary `sonde` is a thin front of this library; tests and embedders use [`server::Server`]
//! directly.

pub mod cli;
pub mod server;
