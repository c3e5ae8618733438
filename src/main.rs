use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bertcls::cli::Cli::parse();
    match bertcls::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, as "what failed: why: what to do".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
