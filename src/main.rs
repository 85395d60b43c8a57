//! The `sonde` binary: `sonde server` runs the control plane; the other commands are its client.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    sonde::cli::Cli::parse().run()
}
