//! The command line: `train`, `test`, `predict`, `encode`, `info`.

mod bulk;
mod common;
mod encode;
mod feature_source;
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
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// The numeric flags take allow_negative_numbers: without it clap reads `--stride -1` as
// an unknown flag -1 and suggests `-- -1`, which would make it a text to encode.
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
    /// Train a Linear(hidden, num_labels) head on the frozen encoder's features (--pooling: [CLS], mean, both, of the last N layers).
    Train(Box<train::TrainArgs>),
    /// Score a trained head on a split: accuracy, loss, per-class precision/recall/F1.
    Test(test::TestArgs),
    /// Label new text: arguments, --file, standard input, or an interactive prompt.
    Predict(predict::PredictArgs),
    /// Write each text's feature vector (as --pooling says; with --run, the run's) as safetensors or JSON lines.
    Encode(encode::EncodeArgs),
    /// Join the outputs of `predict --data ... --shard K/N` (or encode) jobs into one,
    /// checking they come from one job and cover every row exactly once.
    Merge(bulk::MergeArgs),
    /// Show a model's config, parameter count and files, and the CUDA backend's state.
    Info(info::InfoArgs),
}

impl Cli {
    /// Parses the command line as `try_parse` does, and records which flags of `train` it
    /// gave (a resume takes the others from its run.json), and whether `info` was given
    /// `--model`.
    pub fn try_parse_noting_flags() -> Result<Self, clap::Error> {
        let matches = Self::command().try_get_matches()?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let given = |sub: &clap::ArgMatches, id: &str| {
            sub.value_source(id) == Some(ValueSource::CommandLine)
        };
        match (&mut cli.command, matches.subcommand()) {
            (Command::Train(args), Some(("train", sub))) => {
                args.given = sub
                    .ids()
                    .filter(|id| given(sub, id.as_str()))
                    .map(|id| id.to_string())
                    .collect();
            }
            (Command::Info(args), Some(("info", sub))) => args.model_given = given(sub, "model"),
            _ => {}
        }
        Ok(cli)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Test(args) => test::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Merge(args) => bulk::run_merge(args),
        Command::Info(args) => info::run(args),
    }
}
