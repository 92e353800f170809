//! The `edgebench` binary: parse the command line, run the scenario, print the summary.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = edgebench::Cli::parse();
    match edgebench::execute(cli) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgebench: {e}");
            ExitCode::from(2)
        }
    }
}
