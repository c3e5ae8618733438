//! `encode --run DIR`: the features a run's head was trained on, from its run.json; a
//! flag may repeat what the run says, never change it (see [`crate::cli::run_settings`]).

use std::path::Path;

use anyhow::{bail, Result};

use super::EncodeArgs;
use crate::chunk::{LongTexts, DEFAULT_STRIDE};
use crate::cli::common::{check_trained_weights, model_files, EncoderDevice, ModelArgs, Recorded};
use crate::cli::predict::run_model;
use crate::cli::run_dir::RunInfo;
use crate::cli::run_settings::{agree, run_device};

/// What `encode --run` encodes with.
pub struct RunSpec {
    pub model: ModelArgs,
    /// `--device`, computing in the run's precision.
    pub device: EncoderDevice,
}

/// The run's features spec, with the flags of `args` checked against it and the model
/// folder's weights and tokenizer checked to be the run's, before any weights are loaded.
pub fn resolve(dir: &Path, args: &EncodeArgs) -> Result<RunSpec> {
    RunInfo::refuse_file(dir, "--run")?;
    let json = RunInfo::path(dir);
    if !json.is_file() {
        bail!(
            "{} does not exist: pass --run a folder written by bertcls train",
            json.display()
        );
    }
    let info = RunInfo::load(dir)?;
    let spec = &info.features;
    let max_length = agree("--max-length", args.max_length, spec.max_length, &json)?;
    let pooling = agree("--pooling", args.pooling, spec.pooling, &json)?;
    let long = agree_long(args, spec.long, &json)?;
    let device = run_device(&args.device, &info, &json)?;
    let model = ModelArgs {
        model: args.model.clone().unwrap_or_else(|| run_model(&info)),
        offline: args.offline,
        max_length,
        pooling,
        long,
        recorded: Recorded {
            model: args.model.is_none().then(|| json.clone()),
            max_length: args.max_length.is_none().then(|| json.clone()),
            pooling: args.pooling.is_none().then(|| json.clone()),
            long: (args.long.is_none() && args.stride.is_none()).then(|| json.clone()),
        },
    };

    let files = model_files(&model)?;
    check_trained_weights(&files, &spec.weights_sha256, &json)?;
    // The fingerprint covers the tokenizer files' content and max_length: a folder whose
    // tokenizer changed since training would cut texts into other tokens.
    if !spec.tokenizer_fingerprint.is_empty()
        && files.tokenizer.fingerprint()? != spec.tokenizer_fingerprint
    {
        bail!(
            "the tokenizer in {} is not the one the run was trained with (tokenizer_fingerprint in {}): restore the run's tokenizer files or train again",
            files.dir.dir.display(),
            json.display()
        );
    }
    Ok(RunSpec { model, device })
}

/// The run's long-text setting, refusing a `--long`/`--stride` that makes another one,
/// and a `--stride` beside truncation, as train does.
fn agree_long(args: &EncodeArgs, run: LongTexts, json: &Path) -> Result<LongTexts> {
    if args.long.is_none() && args.stride.is_none() {
        return Ok(run);
    }
    let (run_long, run_stride) = match run {
        LongTexts::Truncate => ("truncate", DEFAULT_STRIDE),
        LongTexts::Chunk { stride } => ("chunk", stride),
    };
    let given = LongTexts::from_flags(
        args.long.as_deref().unwrap_or(run_long),
        args.stride.unwrap_or(run_stride),
    )?;
    given.check_stride(args.stride)?;
    if given != run {
        // Only the flags given: a --stride filled in from the default, or a --long from
        // the run, would be named as if the user had passed it.
        let passed = [
            args.long
                .as_deref()
                .map(|long| ("--long", long.to_string())),
            args.stride.map(|stride| ("--stride", stride.to_string())),
        ];
        let passed: Vec<_> = passed.into_iter().flatten().collect();
        let shown: Vec<String> = passed.iter().map(|(f, v)| format!("{f} {v}")).collect();
        let drop: Vec<&str> = passed.iter().map(|(f, _)| *f).collect();
        bail!(
            "{}: the run's features were made with {} ({}); drop {}, with --run the run's is used",
            shown.join(" "),
            long_flags(run),
            json.display(),
            drop.join(" and ")
        );
    }
    Ok(run)
}

/// `--long truncate` or `--long chunk --stride S`, as a user writes it.
fn long_flags(long: LongTexts) -> String {
    match long {
        LongTexts::Truncate => "--long truncate".into(),
        LongTexts::Chunk { stride } => format!("--long chunk --stride {stride}"),
    }
}
