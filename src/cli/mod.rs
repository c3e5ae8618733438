//! The command line: `train`, `test`, `predict`, `encode`, `info`.

mod bulk;
mod common;
mod encode;
mod info;
mod lines;
mod predict;
mod progress;
mod run_settings;
mod test;
mod train;

/// The run folder's layout lives with the trainer; `test` and `predict` read it.
use crate::train::run_dir;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bertcls",
    version,
    about = "Train and serve BERT text classifiers: a linear head on a frozen encoder, on CPU or NVIDIA GPU"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a Linear(hidden, num_labels) head on the frozen encoder's [CLS] features.
    Train(train::TrainArgs),
    /// Score a trained head on a split: accuracy, loss, per-class precision/recall/F1.
    Test(test::TestArgs),
    /// Label new text: arguments, --file, standard input, or an interactive prompt.
    Predict(predict::PredictArgs),
    /// Write each text's feature vector ([CLS] or mean; with --run, the run's) as safetensors or JSON lines.
    Encode(encode::EncodeArgs),
    /// Join the outputs of `predict --data ... --shard K/N` (or encode) jobs into one,
    /// checking they come from one job and cover every row exactly once.
    Merge(bulk::MergeArgs),
    /// Show a model's config, parameter count and files, and the CUDA backend's state.
    Info(info::InfoArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Test(args) => test::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Merge(args) => bulk::run_merge(args),
        Command::Info(args) => info::run(args),
    }
}
