//! `train --resume DIR` continues a run with the settings its run.json records: a flag
//! left off takes the run's value, a flag given is kept (and a value that differs from
//! the run's is then refused by the resume check, naming it). As `encode --run` does.

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use super::TrainArgs;
use crate::backend::cuda::Precision;
use crate::chunk::LongTexts;
use crate::cli::predict::run_model;
use crate::data::check_label_names;
use crate::train::run_dir::{refuse_if_in_use, unfinished_search, RunInfo};

/// `args` with every flag the command line did not give taken from the run in `dir`.
/// A folder without run.json is refused here, whatever flags are given: the defaults
/// of the flags it would have filled in (the hub dataset, say) would fail later, on
/// something else than the missing file.
pub fn with_run_settings(mut args: TrainArgs, dir: &Path) -> Result<TrainArgs> {
    // A train still encoding holds the folder and has no run.json yet.
    RunInfo::refuse_file(dir, "--resume")?;
    refuse_if_in_use(dir, "--resume")?;
    let json = RunInfo::path(dir);
    if !json.is_file() {
        bail!(
            "--resume {}: no run.json there ({} is missing: train stopped before writing it, or this is not a run folder): start the run again with --out {} and its flags",
            dir.display(),
            json.display(),
            dir.display()
        );
    }
    let info = RunInfo::load(dir)?;
    if let Some(why) = unfinished_search(dir, &info) {
        bail!("--resume {}: {why}", dir.display());
    }
    check_label_names(&info.labels)
        .map_err(|why| anyhow!("{}: its labels: {why}", json.display()))?;
    let given = std::mem::take(&mut args.given);
    let mut taken = Vec::new();
    let mut take = |id: &str, value: String| -> bool {
        let missing = !given.contains(id);
        if missing {
            taken.push(format!("--{} {value}", id.replace('_', "-")));
        }
        missing
    };
    let h = &info.hyperparameters;
    h.check().map_err(|why| {
        anyhow!(
            "{}: {why}: the file is damaged; restore it from a copy, or train the run again",
            json.display()
        )
    })?;
    if take("model", run_model(&info)) {
        args.model.model = run_model(&info);
        // A model moved since is then blamed on run.json, not on a --model never given.
        args.model.recorded.model = Some(json.clone());
    }
    if take("max_length", info.features.max_length.to_string()) {
        args.model.max_length = info.features.max_length;
        // A damaged value is then blamed on run.json, not on a --max-length never given.
        args.model.recorded.max_length = Some(json.clone());
    }
    if take("pooling", info.features.pooling.to_string()) {
        args.pooling = vec![info.features.pooling];
        args.model.recorded.pooling = Some(json.clone());
    }
    let (long, stride) = match info.features.long {
        LongTexts::Truncate => ("truncate", None),
        LongTexts::Chunk { stride } => ("chunk", Some(stride)),
    };
    if take("long", long.to_string()) {
        args.long = long.to_string();
    }
    if let Some(stride) = stride {
        if take("stride", stride.to_string()) {
            args.stride = stride;
        }
    }
    if take("data", info.data.clone()) {
        args.data = info.data.clone();
    }
    if take("text_column", info.text_column.clone()) {
        args.text_column = info.text_column.clone();
    }
    if take("label_column", info.label_column.clone()) {
        args.label_column = info.label_column.clone();
    }
    if take("numeric_labels", info.numeric_labels.to_string()) {
        args.numeric_labels = info.numeric_labels;
    }
    if take("labels", info.labels.join(",")) {
        args.labels = Some(info.labels.clone());
    }
    if take("epochs", h.epochs.to_string()) {
        args.epochs = h.epochs;
    }
    if take("batch_size", h.batch_size.to_string()) {
        args.batch_size = h.batch_size;
    }
    if take("lr", h.lr.to_string()) {
        args.lr = h.lr;
    }
    if take("weight_decay", h.weight_decay.to_string()) {
        args.weight_decay = h.weight_decay;
    }
    if let Ok(weighting) = h.class_weights.parse() {
        if take("class_weights", h.class_weights.clone()) {
            args.class_weights = weighting;
        }
    }
    if take("seed", h.seed.to_string()) {
        args.seed = h.seed;
    }
    // The features were computed in the run's precision: on a GPU, another one gives
    // other features, and run.json would go on naming the run's. A precision it does not
    // name (damaged) leaves --precision in charge, as `test --run` does.
    if let Ok(run) = info.precision.parse::<Precision>() {
        match args.device.precision {
            Some(now) if now != run => bail!(
                "cannot resume {}: --precision (run: {run}, now: {now}) differ; drop those flags (a resume takes the run's) or give the run's values",
                dir.display()
            ),
            _ => {
                if take("precision", run.to_string()) {
                    args.device.precision = Some(run);
                }
            }
        }
    }
    args.given = given;
    if !taken.is_empty() {
        eprintln!(
            "resuming with {}'s settings: {}",
            json.display(),
            taken.join(" ")
        );
    }
    Ok(args)
}
