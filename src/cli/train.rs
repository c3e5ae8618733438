//! `bertcls train`: the recipe's training loop on [CLS] features computed once (through
//! the feature cache), a checkpoint after every epoch, and an exact `--resume`; and
//! `--search` (in `search`) over the head's hyper-parameters on the same features.

mod import;
mod resume;
mod search;
mod stamp;
mod warnings;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};

use super::common::{
    check_pooling_layers, label_name, load_model_files, model_files, print_stdout, DeviceArgs,
    LoadedModel, ModelArgs, ModelFiles,
};
use super::feature_source::{CacheArgs, FeatureOrigin, FeatureSource};
use super::predict::{check_checkpoint_of_run, NUMERIC_LABELS_KEY};
use super::progress::{count, Progress};
use super::run_dir::{
    best_checkpoint, last_checkpoint, DataSpec, FeatureSpec, Hyperparameters, RunFolder, RunInfo,
};
use crate::backend::Device;
use crate::checkpoint::load_inference_head;
use crate::chunk::{LongTexts, DEFAULT_STRIDE};
use crate::data::{self, Dataset, LoadOptions, NumericLabels, Split};
use crate::head::ClassWeighting;
use crate::hub::{resolve_dataset, DEFAULT_DATASET};
use crate::model::Pooling;
use crate::optim::{DEFAULT_BETAS, DEFAULT_EPS, DEFAULT_LR, DEFAULT_WEIGHT_DECAY};
use crate::train::{
    best_epoch, train, EpochEnd, EpochMetrics, Features, Flow, HeadDevice as TrainDevice, Observer,
    RunCheckpoints, TrainData, TrainState, META_TRAIN_LABEL_COUNTS,
};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset: a save_to_disk folder, a .parquet, .jsonl, .csv or .tsv file (its sibling
    /// split files are the other splits), a folder of them, or a hub dataset id. Only the
    /// splits --split and --validation-split name are read.
    #[arg(long, default_value = DEFAULT_DATASET, help_heading = "Data")]
    data: String,
    /// Column holding the text.
    #[arg(long, default_value = "text", help_heading = "Data")]
    text_column: String,
    /// Column holding the label: a class id (0, 1, ...) or a class name.
    #[arg(long, default_value = "label", help_heading = "Data")]
    label_column: String,
    /// Label names in id order, for data without a ClassLabel feature (e.g. --labels neg,pos):
    /// names the ids, or numbers the names the data gives [default: the names sorted];
    /// data with one takes only its own names, in its order.
    // Hyphen values: `--labels -1,0,1` (numbers read as names) is no flag, and the line
    // a resume prints with it must work pasted back.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_parser = label_name,
        value_name = "A,B,...",
        help_heading = "Data"
    )]
    labels: Option<Vec<String>>,
    /// How labels written as numbers are read: ids (class ids 0, 1, ...) or names (each
    /// distinct number a class, numbered in numeric order: star ratings 1-5 become five
    /// classes, -1/0/1 three, as scikit-learn numbers them). The head records it for
    /// test and predict.
    #[arg(
        long,
        default_value = "ids",
        value_name = "ids|names",
        help_heading = "Data"
    )]
    numeric_labels: NumericLabels,
    /// Split to train on.
    #[arg(long, default_value = "train", help_heading = "Data")]
    split: String,
    /// Split scored after every epoch [default: validation, skipped when the data has none].
    #[arg(long, help_heading = "Data")]
    validation_split: Option<String>,
    /// Take the train (and validation) features from `bertcls encode --data` outputs
    /// instead of encoding: the shard outputs themselves or their merge (.parquet or
    /// .safetensors, each beside its .bulk.json). Checked against this run's model, flags
    /// and texts, then stored in the feature cache, which this and later runs read.
    /// Repeat it for each file.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "no_cache",
        help_heading = "Data"
    )]
    features_from: Vec<PathBuf>,
    /// Epochs in all; with --resume, more than the run has done extends it.
    #[arg(
        long,
        default_value_t = 100,
        allow_negative_numbers = true,
        help_heading = "Training"
    )]
    epochs: usize,
    /// Examples per step; each epoch's last incomplete batch is dropped, as in the recipe.
    #[arg(
        long,
        default_value_t = 32,
        allow_negative_numbers = true,
        help_heading = "Training"
    )]
    batch_size: usize,
    /// AdamW learning rate (a finite number above 0).
    #[arg(
        long,
        default_value_t = DEFAULT_LR,
        allow_hyphen_values = true,
        value_parser = parse_lr,
        help_heading = "Training"
    )]
    lr: f64,
    /// AdamW decoupled weight decay (a finite number, 0 or more).
    #[arg(
        long,
        default_value_t = DEFAULT_WEIGHT_DECAY,
        allow_hyphen_values = true,
        value_parser = parse_weight_decay,
        help_heading = "Training"
    )]
    weight_decay: f64,
    /// How the loss weighs the classes: none (the recipe's plain mean) or balanced
    /// (class c weighs n / (k n_c) on the train split, as scikit-learn's).
    #[arg(
        long,
        default_value = "none",
        value_name = "none|balanced",
        help_heading = "Training"
    )]
    class_weights: ClassWeighting,
    /// Seeds the head's initialisation and each epoch's shuffle.
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        help_heading = "Training"
    )]
    seed: u64,
    /// Run folder to create [default: runs/<UTC date-time>, e.g. runs/2026-01-31-142501].
    #[arg(
        long,
        conflicts_with = "resume",
        value_name = "DIR",
        help_heading = "Output"
    )]
    out: Option<PathBuf>,
    /// Continue the run in DIR from its last.safetensors, exactly as if it had not stopped,
    /// with the model, data, labels, features and hyper-parameters its run.json records
    /// (to its --epochs, unless given). A flag given must agree with the run; --epochs
    /// above the run's extends it.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    resume: Option<PathBuf>,
    /// A log line with loss and batch accuracy every N steps (0: none); not with --search,
    /// which prints one line a trial.
    #[arg(
        long,
        default_value_t = 5,
        allow_negative_numbers = true,
        help_heading = "Output"
    )]
    log_every: usize,
    /// The feature: cls (the [CLS] token's last hidden state, the recipe's), mean (the
    /// mean of the last hidden state over the text's tokens, sentence-transformers') or
    /// cls+mean (both side by side, twice as wide), of the last layer, or of each of the
    /// last N layers side by side with -lastN (mean-last4: four means); with --search, a
    /// list (cls,mean,mean-last4) tries each.
    #[arg(
        long,
        default_value = "cls",
        value_delimiter = ',',
        value_name = "cls|mean|cls+mean[-lastN]",
        help_heading = "Training"
    )]
    pooling: Vec<Pooling>,
    /// Texts longer than --max-length tokens: truncate (the recipe's) or chunk (windows
    /// of --max-length tokens, each with its own [CLS] and [SEP], overlapping by
    /// --stride tokens; the text's feature is the mean of its windows').
    #[arg(
        long,
        default_value = "truncate",
        value_name = "truncate|chunk",
        help_heading = "Training"
    )]
    long: String,
    /// With --long chunk: tokens shared by consecutive windows.
    #[arg(
        long,
        default_value_t = DEFAULT_STRIDE,
        allow_negative_numbers = true,
        help_heading = "Training"
    )]
    stride: usize,
    /// Search the head's hyper-parameters on the cached features instead of training
    /// once: AdamW lr over 1e-5..1e-1 (half-decades) and weight decay 0, 0.01, 0.1, each
    /// trial stopping early on the validation loss, trials in parallel over the cores;
    /// the best by validation accuracy becomes best.safetensors. --epochs caps a trial;
    /// --lr and --weight-decay are refused.
    #[arg(long, conflicts_with = "resume", help_heading = "Search")]
    search: bool,
    /// With --search: epochs without a lower validation loss before a trial stops.
    #[arg(
        long,
        default_value_t = 5,
        allow_negative_numbers = true,
        requires = "search",
        help_heading = "Search"
    )]
    patience: usize,
    /// With --search and data without a validation split: the fraction of train held out
    /// (drawn by --seed) to validate on.
    #[arg(
        long,
        default_value_t = 0.1,
        allow_hyphen_values = true,
        requires = "search",
        help_heading = "Search"
    )]
    validation_fraction: f64,
    /// Where the head's training steps run.
    #[arg(long, value_enum, default_value_t = HeadDevice::Cpu, help_heading = "Training")]
    head_device: HeadDevice,
    /// Print a summary of the run as one JSON object on standard output.
    #[arg(long, help_heading = "Output")]
    json: bool,
    #[command(flatten, next_help_heading = "Model and device")]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// The ids of the flags the command line gave (`Cli::try_parse_noting_flags`): a resume
    /// takes the others from the run.
    #[arg(skip)]
    pub(super) given: BTreeSet<String>,
}

// The CPU is the default because it is the faster place for these steps, measured: a
// step is a (32 x C) by (C x L) product, and 100 epochs of them take about a second on
// the CPU, where on a GPU every step is bound by kernel-launch latency (PyTorch needs
// 32-40 s for the recipe's 30,000 steps on an H100). `cuda` is there to measure that
// on other machines and shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HeadDevice {
    /// The CPU: the faster one for a linear head, measured.
    Cpu,
    /// The encoder's GPU (needs --device cuda).
    Cuda,
}

/// The features a run trains and validates on, and what getting them took.
struct RunFeatures {
    train: Features,
    val: Option<Features>,
    seconds: f64,
    /// Whether every split came from the cache.
    cached: bool,
    /// Whether a split came from --features-from files the cache could not take.
    imported: bool,
}

/// What stays fixed over the epochs of a run.
struct Run {
    dir: PathBuf,
    /// The hub id or canonical folder: what `predict --head` loads the model from.
    model_id: String,
    info: RunInfo,
    train_hash: String,
    log_every: usize,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let args = match args.resume.clone() {
        Some(dir) => resume::with_run_settings(args, &dir)?,
        None => args,
    };
    check_args(&args)?;
    if args.search {
        return search::run(args);
    }
    // Every check that needs no encoder output runs first: the data and its labels, the
    // model's files, the run folder, and a resume's match with its run.
    let (dataset, data_id) = load_data(&args)?;
    let train = dataset.split(&args.split)?;
    check_batch(train, args.batch_size)?;
    let validation = validation_split(&args, &dataset)?;
    let num_labels = dataset.label_names.len();
    let label_counts =
        warnings::check_training_data(&dataset, train, validation, args.numeric_labels);
    let class_weights = class_weights(args.class_weights, train, num_labels)?;
    let model_args = ModelArgs {
        pooling: args.pooling[0],
        long: long_texts(&args)?,
        ..args.model.clone()
    };
    let files = model_files(&model_args)?;
    check_pooling_layers(
        model_args.pooling,
        &files,
        model_args.recorded.pooling.as_deref(),
    )?;
    let encoder_device = args.device.resolve()?;
    let device = head_device(args.head_device, encoder_device.device)?;
    let mut folder = match &args.resume {
        Some(dir) => RunFolder::open(dir)?,
        None => RunFolder::create(&out_dir(&args))?,
    };
    let mut source = FeatureSource::new(args.cache.cache());
    let now = run_info(
        &args,
        &files,
        source.weights_sha256_of(&files)?,
        (&dataset.label_names, label_counts),
        data_id,
        (train, validation),
    )?;
    let width = model_args.pooling.width(files.config.hidden_size);
    let (start, mut info) = start_state(&args, folder.dir(), now, width, &train.content_hash)?;
    import::import_flagged(
        &args,
        &files,
        encoder_device,
        &mut source,
        (&[model_args.pooling], model_args.long),
        &[train].into_iter().chain(validation).collect::<Vec<_>>(),
    )?;

    let mut model = load_model_files(files, &model_args, &encoder_device)?;
    if args.resume.is_none() {
        info.device = model.device.to_string();
        info.precision = model.precision_name();
    } else if info.device != model.device.to_string() {
        // Not refused: a run started on a GPU may well be finished on a CPU machine.
        eprintln!(
            "note: the run encoded its features on {}, this resume on {}: the two agree to rounding (about 1e-5), so the epochs from here are close to an uninterrupted run's, not bit for bit",
            info.device, model.device
        );
    }
    let features = all_features(&mut model, &mut source, train, validation)?;
    folder.save_info(&info)?;
    let run = Run {
        dir: folder.dir().to_path_buf(),
        model_id: model.id().to_string(),
        info,
        train_hash: train.content_hash.clone(),
        log_every: args.log_every,
    };

    let first_done = start.epoch;
    let data = TrainData {
        train: &features.train,
        val: features.val.as_ref(),
        class_weights,
        device,
    };
    let train_started = Instant::now();
    let metrics = train_epochs(&run, data, start)?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    report(
        &run,
        &metrics,
        first_done,
        &features,
        train_seconds,
        args.json,
    )
}

// The flags' own checks, at parse time: clap names the flag and the value. Negative
// numbers parse so that they are refused here, not taken for flags: the float flags
// take allow_hyphen_values, as clap's negative-number test misses exponents (-1e-3).
fn parse_lr(text: &str) -> Result<f64, String> {
    parse_f64(
        text,
        "a finite number above 0 (the recipe uses 1e-5)",
        |v| v > 0.0,
    )
}

fn parse_weight_decay(text: &str) -> Result<f64, String> {
    parse_f64(
        text,
        "a finite number, 0 or more (the recipe uses 0.01)",
        |v| v >= 0.0,
    )
}

fn parse_f64(text: &str, want: &str, ok: impl Fn(f64) -> bool) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(format!("must be {want}")),
    }
}

fn check_args(args: &TrainArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size 0: a step needs at least one example (the recipe uses 32)");
    }
    if args.epochs == 0 {
        bail!("--epochs 0: train for at least one epoch (the recipe uses 100)");
    }
    long_texts(args)?.check_stride(args.given.contains("stride").then_some(args.stride))?;
    // AdamW scales the weights by 1 - lr * weight_decay each step: at 0 or below, decay
    // wipes or flips them, and past -1 they grow until they overflow, an epoch in, as
    // weights "no longer finite" and a hint at --lr alone. That hint stays right for a
    // huge --lr beside the default decay.
    let decay = 1.0 - args.lr * args.weight_decay;
    if !args.search && args.given.contains("weight_decay") && decay <= 0.0 {
        bail!(
            "--weight-decay {:e} with --lr {:e}: each step scales the weights by 1 - lr x weight decay = {decay:.3e}, which wipes or flips them: keep lr x weight decay below 1 (the recipe's is 1e-5 x 0.01)",
            args.weight_decay,
            args.lr
        );
    }
    // The search's grid holds every lr and weight decay it tries: one given with it
    // would change nothing while run.json records the trial's.
    if args.search {
        for (id, flag, value, grid) in [
            ("lr", "--lr", args.lr, "1e-5 to 1e-1"),
            (
                "weight_decay",
                "--weight-decay",
                args.weight_decay,
                "0, 0.01 and 0.1",
            ),
        ] {
            if args.given.contains(id) {
                bail!("{flag} {value}: --search tries its own ({grid}) and keeps the best; drop {flag}, or drop --search to train with it");
            }
        }
        // Trials log no steps: a step interval would be ignored without a word.
        if args.given.contains("log_every") && args.log_every != 0 {
            bail!(
                "--log-every {}: --search prints one line a trial, not training steps; drop --log-every, or drop --search to train once with it",
                args.log_every
            );
        }
    }
    if args.pooling.len() > 1 && !args.search {
        bail!(
            "--pooling {}: trying several poolings needs --search; pass one to train once",
            pooling_list(&args.pooling)
        );
    }
    Ok(())
}

/// The folder a new run goes to: `--out`, or runs/<UTC date-time>.
fn out_dir(args: &TrainArgs) -> PathBuf {
    args.out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(stamp::utc_stamp(SystemTime::now())))
}

/// The dataset and what run.json records of it: the hub id, or the canonical path.
fn load_data(args: &TrainArgs) -> Result<(Dataset, String)> {
    let resolved = resolve_dataset(&args.data, args.model.offline())?;
    let opts = LoadOptions {
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        labels: args.labels.clone(),
        splits: Some(vec![
            args.split.clone(),
            args.validation_split
                .clone()
                .unwrap_or_else(|| "validation".to_string()),
        ]),
        head_labels: None,
        numeric_labels: args.numeric_labels,
    };
    if let Some(note) = data::sibling_note(&resolved.path, &args.split, "training on")? {
        eprintln!("{note}");
    }
    let dataset = data::load(&resolved.path, &opts)?;
    // The data's ClassLabel names its ids and wins over the flag: other names given
    // would otherwise be dropped without a word, the run labelled unlike the user asked.
    if let Some(flag) = &args.labels {
        if *flag != dataset.label_names {
            bail!(
                "--labels {}: {} names its labels {} in its ClassLabel, which train uses; drop --labels, or give those names in that order",
                flag.join(","),
                resolved.path.display(),
                dataset.label_names.join(",")
            );
        }
    }
    Ok((dataset, resolved.id))
}

fn check_batch(train: &Split, batch_size: usize) -> Result<()> {
    let rows = train.texts.len();
    if rows < batch_size {
        bail!(
            "{} split has {}, fewer than --batch-size {batch_size}: lower --batch-size",
            train.name,
            count(rows, "row")
        );
    }
    Ok(())
}

/// Where the head trains: `--head-device cuda` needs the encoder on a GPU.
fn head_device(kind: HeadDevice, encoder: Device) -> Result<TrainDevice> {
    match (kind, encoder) {
        (HeadDevice::Cpu, _) => Ok(TrainDevice::Cpu),
        (HeadDevice::Cuda, Device::Cuda(ordinal)) => Ok(TrainDevice::Cuda(ordinal)),
        (HeadDevice::Cuda, Device::Cpu) => bail!(
            "--head-device cuda needs the encoder on a GPU: pass --device cuda, or drop --head-device"
        ),
    }
}

/// The loss's per-class weights for `--class-weights`, from the train split's labels.
fn class_weights(
    weighting: ClassWeighting,
    train: &Split,
    num_labels: usize,
) -> Result<Option<Vec<f32>>> {
    let weights = weighting.weights(&train.labels, num_labels).map_err(|e| {
        anyhow!(
            "--class-weights {}: {e} in the {} split: drop the flag or add examples",
            weighting.name(),
            train.name
        )
    })?;
    if let Some(w) = &weights {
        let shown: Vec<String> = w.iter().map(|v| format!("{v:.4}")).collect();
        eprintln!("class weights ({}): {}", weighting.name(), shown.join(", "));
    }
    Ok(weights)
}

/// The named validation split; by default "validation" when the data has one.
fn validation_split<'a>(args: &TrainArgs, dataset: &'a Dataset) -> Result<Option<&'a Split>> {
    if let Some(name) = &args.validation_split {
        return dataset.split_named_by(name, "--validation-split").map(Some);
    }
    let found = dataset
        .splits
        .iter()
        .find(|s| s.name == "validation" && !s.texts.is_empty());
    if found.is_none() {
        eprintln!(
            "{}: training without validation, best.safetensors is the last epoch",
            no_validation(dataset)?
        );
    }
    Ok(found)
}

/// Why there is no validation to score: none in the data, or one with no rows (an empty
/// validation.jsonl beside train.jsonl), which "no validation split" would deny.
fn no_validation(dataset: &Dataset) -> Result<String> {
    if dataset.splits.iter().any(|s| s.name == "validation") {
        let source = crate::data::split_source(&dataset.source, "validation")?;
        return Ok(format!("the validation split ({source}) has no rows"));
    }
    Ok("no validation split".to_string())
}

/// What run.json records, with the device and precision of `--device` filled in once
/// the model is loaded.
fn run_info(
    args: &TrainArgs,
    files: &ModelFiles,
    weights_sha256: String,
    (labels, train_label_counts): (&[String], Vec<usize>),
    data_id: String,
    (train, validation): (&Split, Option<&Split>),
) -> Result<RunInfo> {
    let tokenizer = &files.tokenizer;
    Ok(RunInfo {
        bertcls_version: env!("CARGO_PKG_VERSION").into(),
        model: args.model.model.clone(),
        model_dir: absolute(&files.dir.dir),
        tokenizer_files: tokenizer.sources().iter().map(|p| absolute(p)).collect(),
        features: FeatureSpec {
            weights_sha256,
            tokenizer_fingerprint: tokenizer.fingerprint()?,
            max_length: tokenizer.max_length(),
            pooling: args.pooling[0],
            long: long_texts(args)?,
        },
        hidden_size: files.config.hidden_size,
        labels: labels.to_vec(),
        numeric_labels: args.numeric_labels,
        data: data_id,
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        data_spec: DataSpec {
            train_sha256: train.content_hash.clone(),
            validation_sha256: validation.map(|v| v.content_hash.clone()),
        },
        train_label_counts,
        hyperparameters: Hyperparameters {
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            weight_decay: args.weight_decay,
            beta1: DEFAULT_BETAS.0,
            beta2: DEFAULT_BETAS.1,
            eps: DEFAULT_EPS,
            seed: args.seed,
            drop_last: true,
            class_weights: args.class_weights.name().to_string(),
        },
        device: String::new(),
        precision: String::new(),
        created: stamp::iso_utc(SystemTime::now()),
        search: None,
    })
}

/// The canonical form of a path, so that `test` and `predict` find it from any folder.
fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Train and validation features, through the cache; prints how long they took.
fn all_features(
    model: &mut LoadedModel,
    source: &mut FeatureSource,
    train: &Split,
    validation: Option<&Split>,
) -> Result<RunFeatures> {
    let started = Instant::now();
    let (train, train_origin) = split_features(model, source, train)?;
    let val = validation
        .map(|v| split_features(model, source, v))
        .transpose()?;
    let origins: Vec<FeatureOrigin> = std::iter::once(train_origin)
        .chain(val.as_ref().map(|(_, o)| *o))
        .collect();
    let cached = origins.iter().all(|&o| o == FeatureOrigin::Cache);
    let imported = origins.contains(&FeatureOrigin::Imported);
    let seconds = started.elapsed().as_secs_f64();
    let how = if origins.contains(&FeatureOrigin::Encoded) {
        "encoded"
    } else if imported {
        "none encoded; --features-from held in memory, the cache could not take them"
    } else {
        "all from the cache"
    };
    eprintln!("features ready in {seconds:.1}s ({how})");
    Ok(RunFeatures {
        train,
        val: val.map(|(x, _)| x),
        seconds,
        cached,
        imported,
    })
}

/// A split's features and where they came from.
fn split_features(
    model: &mut LoadedModel,
    source: &mut FeatureSource,
    split: &Split,
) -> Result<(Features, FeatureOrigin)> {
    let f = source.features(model, &split.name, &split.texts, &split.content_hash)?;
    Ok((
        Features {
            x: f.x,
            labels: split.labels.clone(),
        },
        f.origin,
    ))
}

/// A fresh head and `now` as run.json; or, resuming, the stopped run's state after
/// checking that `now` matches its run, and its run.json with the new epoch count.
/// Writes nothing.
fn start_state(
    args: &TrainArgs,
    dir: &Path,
    now: RunInfo,
    hidden: usize,
    train_hash: &str,
) -> Result<(TrainState, RunInfo)> {
    let labels = now.labels.len();
    if args.resume.is_none() {
        let start = TrainState::fresh(labels, hidden, &now.hyperparameters)?;
        return Ok((start, now));
    }
    let saved = RunInfo::load(dir)?;
    let diffs = saved.resume_differences(&now);
    if !diffs.is_empty() {
        bail!(
            "cannot resume {}: {} differ; drop those flags (a resume takes the run's) or give the run's values",
            dir.display(),
            diffs.join(", ")
        );
    }
    check_last_of_run(dir, &saved)?;
    let start = TrainState::resume(dir, labels, hidden, &saved.hyperparameters, train_hash)?;
    if start.epoch >= args.epochs {
        bail!(
            "the run in {} has done {} already: pass --epochs above {} to train more",
            dir.display(),
            count(start.epoch, "epoch"),
            start.epoch
        );
    }
    let mut info = saved;
    info.hyperparameters.epochs = args.epochs;
    match start.epoch {
        0 => eprintln!(
            "resuming {}: no epoch was finished, starting from the first",
            dir.display()
        ),
        n => eprintln!("resuming {} after epoch {n}", dir.display()),
    }
    Ok((start, info))
}

/// Refuses to resume from a last.safetensors whose recorded settings are not run.json's
/// (one copied in from another run would go on training on features it was not made for).
/// One that does not load is left to the resume, which says what to do about it.
fn check_last_of_run(dir: &Path, saved: &RunInfo) -> Result<()> {
    let last = last_checkpoint(dir);
    let Ok(loaded) = load_inference_head(&last, None) else {
        return Ok(());
    };
    check_checkpoint_of_run(&loaded.metadata, &last, saved, &RunInfo::path(dir)).map_err(|differs| {
        anyhow!("cannot resume {}: {differs}; put the run's own last.safetensors back (its newest head-epoch-N.safetensors is a copy of it) or restore run.json", dir.display())
    })
}

/// Shows progress and log lines, and writes each epoch's metrics and checkpoints.
struct CliObserver {
    progress: Progress,
    checkpoints: RunCheckpoints,
}

impl Observer for CliObserver {
    fn step(&mut self, done: u64, _total: u64) {
        self.progress.set(done);
    }

    fn log(&mut self, line: &str) {
        self.progress.println(line);
    }

    fn epoch_end(&mut self, end: &EpochEnd) -> Result<Flow> {
        self.checkpoints.save(end)?;
        Ok(Flow::Continue)
    }
}

/// What every checkpoint of the run carries besides its epoch's figures.
fn checkpoint_metadata(run: &Run) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::from([
        ("model".to_string(), run.model_id.clone()),
        (
            "weights_sha256".to_string(),
            run.info.features.weights_sha256.clone(),
        ),
        (
            "max_length".to_string(),
            run.info.features.max_length.to_string(),
        ),
        ("pooling".to_string(), run.info.features.pooling.to_string()),
        ("long".to_string(), run.info.features.long.key()),
        (
            META_TRAIN_LABEL_COUNTS.to_string(),
            format!("{:?}", run.info.train_label_counts),
        ),
    ]);
    // Only where numbers are names: a head without it reads them as ids, as every head
    // written before the flag does.
    if !run.info.numeric_labels.is_ids() {
        meta.insert(
            NUMERIC_LABELS_KEY.to_string(),
            run.info.numeric_labels.to_string(),
        );
    }
    meta
}

/// Runs the epochs after `start.epoch`, writing metrics and checkpoints after each.
fn train_epochs(run: &Run, data: TrainData, start: TrainState) -> Result<Vec<EpochMetrics>> {
    let hp = &run.info.hyperparameters;
    let steps = data.train.labels.len() / hp.batch_size;
    // Saturating: an --epochs near usize::MAX (a run meant to be stopped by hand) would
    // wrap the bar's total.
    let progress = Progress::new(
        (hp.epochs - start.epoch).saturating_mul(steps) as u64,
        "training",
    );
    let meta = checkpoint_metadata(run);
    let checkpoints = RunCheckpoints::new(&run.dir, &run.info.labels, &run.train_hash, meta)?;
    let mut observer = CliObserver {
        progress,
        checkpoints,
    };
    let outcome = train(hp, data, start, run.log_every, &mut observer)?;
    observer.progress.finish();
    Ok(outcome.state.metrics)
}

/// The closing lines on standard error, and with `--json` the summary on standard output.
fn report(
    run: &Run,
    metrics: &[EpochMetrics],
    first_done: usize,
    features: &RunFeatures,
    train_seconds: f64,
    json: bool,
) -> Result<()> {
    let encode_seconds = features.seconds;
    let epochs = metrics.len() - first_done;
    let best = best_epoch(metrics);
    eprintln!(
        "encoding: {encode_seconds:.1}s; training: {} in {train_seconds:.1}s",
        count(epochs, "epoch")
    );
    match best {
        Some(m) => {
            eprintln!(
                "best epoch {} (val acc {:.4}): {}",
                m.epoch,
                m.val_acc.unwrap_or_default(),
                best_checkpoint(&run.dir).display()
            );
            if let Some(t) = m.temperature {
                eprintln!("calibration: temperature {t:.4} fitted on the validation split (test and predict use it; --no-calibration shows the raw softmax)");
                if let Some(warning) = crate::calibration::bound_warning(t) {
                    eprintln!("{warning}");
                }
            }
        }
        None => eprintln!("no validation split: best.safetensors is the last epoch"),
    }
    let learning = still_learning(metrics);
    if let Some(s) = &learning {
        let span = match s.epochs {
            1 => "epoch".to_string(),
            n => format!("{n} epochs"),
        };
        eprintln!(
            "the head is still learning: validation loss {:.4} -> {:.4} ({:.1}% lower) over the last {span}; try --search, or a larger --lr",
            s.from, s.to, s.drop * 100.0
        );
    }
    eprintln!("run: {}", run.dir.display());
    if json {
        let summary = serde_json::json!({
            "still_learning": learning.is_some(),
            "out": run.dir.display().to_string(),
            "epochs": run.info.hyperparameters.epochs,
            "epochs_run": epochs,
            "encode_seconds": encode_seconds,
            "train_seconds": train_seconds,
            "features_cached": features.cached,
            "features_imported": features.imported,
            "best_epoch": best.map(|m| m.epoch),
            "best_val_acc": best.and_then(|m| m.val_acc),
            "temperature": best.and_then(|m| m.temperature),
            "last": metrics.last(),
        });
        print_stdout(format!("{summary}\n"))?;
    }
    Ok(())
}

/// The validation loss over a run's closing epochs, when it was still falling.
#[derive(Debug, PartialEq)]
struct StillLearning {
    from: f64,
    to: f64,
    /// (from - to) / from
    drop: f64,
    epochs: usize,
}

/// Whether the validation loss fell by more than 1% over the last 10% of the epochs (at
/// least one): a head stopped while it was still learning, which `--search` or a larger
/// `--lr` would take further.
fn still_learning(metrics: &[EpochMetrics]) -> Option<StillLearning> {
    let n = metrics.len();
    let window = n.div_ceil(10);
    if n <= window {
        return None;
    }
    let (from, to) = (metrics[n - 1 - window].val_loss?, metrics[n - 1].val_loss?);
    let drop = (from - to) / from;
    (drop > 0.01).then_some(StillLearning {
        from,
        to,
        drop,
        epochs: window,
    })
}

/// --long and --stride as one setting.
fn long_texts(args: &TrainArgs) -> Result<LongTexts> {
    LongTexts::from_flags(&args.long, args.stride)
}

/// `cls,mean`: poolings as --pooling takes them.
fn pooling_list(poolings: &[Pooling]) -> String {
    poolings
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_val_losses(losses: &[f64]) -> Vec<EpochMetrics> {
        losses
            .iter()
            .enumerate()
            .map(|(i, &l)| EpochMetrics {
                epoch: i + 1,
                train_loss: l,
                train_acc: 0.5,
                val_loss: Some(l),
                val_acc: Some(0.5),
                temperature: None,
                seconds: 0.0,
            })
            .collect()
    }

    /// A loss falling 0.001 an epoch from 0.7 drops 1.6% over the last 10 of 100 epochs.
    #[test]
    fn a_falling_validation_loss_is_still_learning() {
        let falling: Vec<f64> = (0..100).map(|e| 0.7 - 0.001 * e as f64).collect();
        let s = still_learning(&with_val_losses(&falling)).unwrap();
        assert_eq!(s.epochs, 10);
        assert_eq!((s.from, s.to), (falling[89], falling[99]));
        assert!((s.drop - 0.01 / 0.611).abs() < 1e-12);
        // Flat or rising at the end, or a fall of 1% or less: no hint.
        let flat: Vec<f64> = (0..100)
            .map(|e| if e < 80 { 0.7 - 0.001 * e as f64 } else { 0.62 })
            .collect();
        assert_eq!(still_learning(&with_val_losses(&flat)), None);
        assert_eq!(still_learning(&with_val_losses(&[0.5, 0.496])), None);
        assert!(still_learning(&with_val_losses(&[0.5, 0.49])).is_some());
        assert_eq!(still_learning(&with_val_losses(&[0.5])), None);
        let mut no_val = with_val_losses(&[0.5, 0.3]);
        no_val.iter_mut().for_each(|m| m.val_loss = None);
        assert_eq!(still_learning(&no_val), None);
    }
}
