//! The command line: `train`, `test`, `predict`, `encode`, `info`.

mod common;
mod encode;
mod info;
mod progress;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bertcls", version, about = "Train and serve BERT text classifiers: a linear head on a frozen encoder, on CPU or NVIDIA GPU")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write each text's [CLS] vector (safetensors or JSON lines).
    Encode(encode::EncodeArgs),
    /// Show a model's config, parameter count and files, and the CUDA backend's state.
    Info(info::InfoArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Encode(args) => encode::run(args),
        Command::Info(args) => info::run(args),
    }
}
