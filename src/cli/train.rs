//! `bertcls train`: the recipe's training loop on [CLS] features computed once (through
//! the feature cache), a checkpoint after every epoch, and an exact `--resume`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::common::{load_model, CacheArgs, DeviceArgs, FeatureSource, LoadedModel, ModelArgs};
use super::progress::Progress;
use super::run_dir::{
    best_checkpoint, epoch_checkpoint, last_checkpoint, metrics_path, Hyperparameters, RunInfo,
};
use crate::backend::cuda::{CudaBackend, CudaHead, Precision};
use crate::backend::Device;
use crate::calibration::fit_temperature;
use crate::checkpoint::{load_head, save_head};
use crate::data::{self, Dataset, LoadOptions, Split};
use crate::fsio::atomic_write;
use crate::head::{count_correct, ClassWeighting, HeadScratch, LinearHead};
use crate::hub::{resolve_dataset, DEFAULT_DATASET};
use crate::model::Pooling;
use crate::optim::{AdamW, DEFAULT_BETAS, DEFAULT_EPS, DEFAULT_LR, DEFAULT_WEIGHT_DECAY};

/// Checkpoint metadata keys. `labels` is what `test` and `predict` read label names from.
const META_EPOCH: &str = "epoch";
const META_LABELS: &str = "labels";
const META_TRAIN_HASH: &str = "train_data_sha256";
/// The calibration temperature `test` and `predict` divide the logits by.
pub const META_TEMPERATURE: &str = "temperature";

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset: a save_to_disk folder, a .parquet, .jsonl, .csv or .tsv file (its sibling
    /// split files are read too), a folder of them, or a hub dataset id.
    #[arg(long, default_value = DEFAULT_DATASET, help_heading = "Data")]
    data: String,
    /// Column holding the text.
    #[arg(long, default_value = "text", help_heading = "Data")]
    text_column: String,
    /// Column holding the integer label.
    #[arg(long, default_value = "label", help_heading = "Data")]
    label_column: String,
    /// Label names in id order, for data without a ClassLabel feature (e.g. --labels neg,pos).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "A,B,...",
        help_heading = "Data"
    )]
    labels: Option<Vec<String>>,
    /// Split to train on.
    #[arg(long, default_value = "train", help_heading = "Data")]
    split: String,
    /// Split scored after every epoch [default: validation, skipped when the data has none].
    #[arg(long, help_heading = "Data")]
    validation_split: Option<String>,
    /// Epochs in all; with --resume, more than the run has done extends it.
    #[arg(long, default_value_t = 100, help_heading = "Training")]
    epochs: usize,
    /// Examples per step; each epoch's last incomplete batch is dropped, as in the recipe.
    #[arg(long, default_value_t = 32, help_heading = "Training")]
    batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = DEFAULT_LR, help_heading = "Training")]
    lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = DEFAULT_WEIGHT_DECAY, help_heading = "Training")]
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
    #[arg(long, default_value_t = 0, help_heading = "Training")]
    seed: u64,
    /// Run folder to create [default: runs/<UTC date-time>, e.g. runs/2026-01-31-142501].
    #[arg(
        long,
        conflicts_with = "resume",
        value_name = "DIR",
        help_heading = "Output"
    )]
    out: Option<PathBuf>,
    /// Continue the run in DIR from its last.safetensors, exactly as if it had not stopped.
    /// Repeat the flags it was started with: model, max-length, labels, data and
    /// hyper-parameters are checked against the run.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    resume: Option<PathBuf>,
    /// A log line with loss and batch accuracy every N steps (0: none).
    #[arg(long, default_value_t = 5, help_heading = "Output")]
    log_every: usize,
    /// The feature: cls (the [CLS] token's last hidden state, the recipe's) or mean (the
    /// mean of the last hidden state over the text's tokens, sentence-transformers').
    #[arg(
        long,
        default_value = "cls",
        value_name = "cls|mean",
        help_heading = "Training"
    )]
    pooling: Pooling,
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

/// One line of metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EpochMetrics {
    epoch: usize,
    /// Mean over the epoch's steps of each batch's mean loss, as the recipe logs it.
    train_loss: f64,
    train_acc: f64,
    val_loss: Option<f64>,
    val_acc: Option<f64>,
    /// The temperature fitted on the validation split for this epoch's head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    seconds: f64,
}

/// Features (rows, C) of a split and its labels.
struct Features {
    x: Vec<f32>,
    labels: Vec<usize>,
}

/// The features a run trains and validates on, and what getting them took.
struct RunFeatures {
    train: Features,
    val: Option<Features>,
    seconds: f64,
    /// Whether every split came from the cache.
    cached: bool,
}

/// Where a run starts: a fresh head, or the state of a stopped run.
struct Start {
    head: LinearHead,
    opt: AdamW,
    /// Epochs already done.
    epoch: usize,
    metrics: Vec<EpochMetrics>,
    /// run.json as it is to be written: a resumed run's with the new epoch count.
    info: RunInfo,
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
    check_args(&args)?;
    let dir = run_dir(&args)?;
    let (dataset, data_id) = load_data(&args)?;
    let train = dataset.split(&args.split)?;
    check_batch(train, args.batch_size)?;
    let validation = validation_split(&args, &dataset)?;

    let model_args = ModelArgs {
        pooling: args.pooling,
        ..args.model.clone()
    };
    let mut model = load_model(&model_args, &args.device)?;
    let mut source = FeatureSource::new(args.cache.cache());
    let info = run_info(
        &args,
        &dataset.label_names,
        data_id,
        &mut model,
        &mut source,
    )?;

    let features = all_features(&mut model, &mut source, train, validation)?;
    let run = Run {
        dir,
        model_id: model.id().to_string(),
        info,
        train_hash: train.content_hash.clone(),
        log_every: args.log_every,
    };
    let start = start_state(&args, &run, model.encoder.hidden_size())?;
    let class_weights = class_weights(args.class_weights, train, run.info.labels.len())?;
    let trainer = HeadTrainer::new(
        args.head_device,
        &model,
        start.head.clone(),
        start.opt.clone(),
        args.batch_size,
        class_weights,
    )?;
    write_run_info(&run.dir, &start.info)?;

    let train_started = Instant::now();
    let metrics = train_epochs(&run, trainer, &start, &features)?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    report(
        &run,
        &metrics,
        start.epoch,
        &features,
        train_seconds,
        args.json,
    );
    Ok(())
}

fn check_args(args: &TrainArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size 0: a step needs at least one example (the recipe uses 32)");
    }
    if args.epochs == 0 {
        bail!("--epochs 0: train for at least one epoch (the recipe uses 100)");
    }
    Ok(())
}

/// The run folder: `--resume`'s, or a new one that must not hold a run already.
fn run_dir(args: &TrainArgs) -> Result<PathBuf> {
    if let Some(dir) = &args.resume {
        if !RunInfo::path(dir).is_file() || !last_checkpoint(dir).is_file() {
            bail!(
                "--resume {}: no run.json and last.safetensors there: pass a folder written by bertcls train \
                 that finished at least one epoch",
                dir.display()
            );
        }
        return Ok(dir.clone());
    }
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(utc_stamp(SystemTime::now())));
    if dir.exists() && !dir.is_dir() {
        bail!(
            "--out {}: is a file, not a folder: pass a folder for the run",
            dir.display()
        );
    }
    if RunInfo::path(&dir).exists() || last_checkpoint(&dir).exists() {
        bail!(
            "--out {0} already holds a run: pick another folder, or continue it with --resume {0}",
            dir.display()
        );
    }
    Ok(dir)
}

/// The dataset and what run.json records of it: the hub id, or the canonical path.
fn load_data(args: &TrainArgs) -> Result<(Dataset, String)> {
    let resolved = resolve_dataset(&args.data, args.model.offline())?;
    let opts = LoadOptions {
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        labels: args.labels.clone(),
    };
    Ok((data::load(&resolved.path, &opts)?, resolved.id))
}

fn check_batch(train: &Split, batch_size: usize) -> Result<()> {
    let rows = train.texts.len();
    if rows < batch_size {
        bail!(
            "{} split has {rows} rows, fewer than --batch-size {batch_size}: lower --batch-size",
            train.name
        );
    }
    Ok(())
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
        return dataset.split(name).map(Some);
    }
    let found = dataset
        .splits
        .iter()
        .find(|s| s.name == "validation" && !s.texts.is_empty());
    if found.is_none() {
        eprintln!(
            "no validation split: training without validation, best.safetensors is the last epoch"
        );
    }
    Ok(found)
}

fn run_info(
    args: &TrainArgs,
    labels: &[String],
    data_id: String,
    model: &mut LoadedModel,
    source: &mut FeatureSource,
) -> Result<RunInfo> {
    let tokenizer = model.tokenizer();
    Ok(RunInfo {
        bertcls_version: env!("CARGO_PKG_VERSION").into(),
        model: args.model.model.clone(),
        model_dir: absolute(&model.files.dir.dir),
        weights_sha256: source.weights_sha256(model)?,
        tokenizer_files: tokenizer.sources().iter().map(|p| absolute(p)).collect(),
        tokenizer_fingerprint: tokenizer.fingerprint()?,
        max_length: tokenizer.max_length(),
        pooling: model.pooling,
        hidden_size: model.encoder.hidden_size(),
        labels: labels.to_vec(),
        data: data_id,
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
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
        device: model.device.to_string(),
        precision: model.precision_name(),
        created: iso_utc(SystemTime::now()),
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
    let (train, train_cached) = split_features(model, source, train)?;
    let val = validation
        .map(|v| split_features(model, source, v))
        .transpose()?;
    let cached = train_cached && val.as_ref().is_none_or(|(_, c)| *c);
    let seconds = started.elapsed().as_secs_f64();
    let how = if cached {
        "all from the cache"
    } else {
        "encoded"
    };
    eprintln!("features ready in {seconds:.1}s ({how})");
    Ok(RunFeatures {
        train,
        val: val.map(|(x, _)| x),
        seconds,
        cached,
    })
}

/// A split's features and whether they came from the cache.
fn split_features(
    model: &mut LoadedModel,
    source: &mut FeatureSource,
    split: &Split,
) -> Result<(Features, bool)> {
    let f = source.features(model, &split.name, &split.texts, &split.content_hash)?;
    Ok((
        Features {
            x: f.x,
            labels: split.labels.clone(),
        },
        f.cached,
    ))
}

/// A fresh head, or the stopped run's state after checking it was made by the same
/// model, labels, data and hyper-parameters. Writes nothing.
fn start_state(args: &TrainArgs, run: &Run, hidden: usize) -> Result<Start> {
    if args.resume.is_none() {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let head = LinearHead::new_init(run.info.labels.len(), hidden, &mut rng);
        let opt = optimiser(&head, &run.info.hyperparameters);
        return Ok(Start {
            head,
            opt,
            epoch: 0,
            metrics: Vec::new(),
            info: run.info.clone(),
        });
    }
    let saved = RunInfo::load(&run.dir)?;
    check_same_run(&run.dir, &saved, &run.info)?;
    let last = load_head(&last_checkpoint(&run.dir), Some(hidden))?;
    let epoch = checkpoint_epoch(&last.metadata, &run.dir)?;
    if last.metadata.get(META_TRAIN_HASH) != Some(&run.train_hash) {
        bail!(
            "cannot resume {}: the train split differs from the one the run trained on",
            run.dir.display()
        );
    }
    if epoch >= args.epochs {
        bail!(
            "the run in {} has done {epoch} epochs already: pass --epochs above {epoch} to train more",
            run.dir.display()
        );
    }
    let opt = last
        .optim
        .ok_or_else(|| anyhow!("{}: no AdamW state to resume from", run.dir.display()))?;
    let mut info = saved;
    info.hyperparameters.epochs = args.epochs;
    let metrics = read_metrics(&run.dir)?
        .into_iter()
        .filter(|m| m.epoch <= epoch)
        .collect();
    eprintln!("resuming {} after epoch {epoch}", run.dir.display());
    Ok(Start {
        head: last.head,
        opt,
        epoch,
        metrics,
        info,
    })
}

/// Creates the run folder, when new, and writes run.json.
fn write_run_info(dir: &Path, info: &RunInfo) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the run folder {}", dir.display()))?;
    info.save(dir)
}

fn optimiser(head: &LinearHead, hp: &Hyperparameters) -> AdamW {
    AdamW {
        lr: hp.lr,
        weight_decay: hp.weight_decay,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        ..AdamW::for_head(head)
    }
}

/// Refuses a resume whose model, max_length, labels or hyper-parameters differ from the run's.
fn check_same_run(dir: &Path, saved: &RunInfo, now: &RunInfo) -> Result<()> {
    let mut diffs = Vec::new();
    let mut differ = |what: &str, was: String, is: String| {
        if was != is {
            diffs.push(format!("{what} (run: {was}, now: {is})"));
        }
    };
    differ(
        "model weights sha256",
        saved.weights_sha256.clone(),
        now.weights_sha256.clone(),
    );
    differ(
        "--max-length",
        saved.max_length.to_string(),
        now.max_length.to_string(),
    );
    differ("labels", saved.labels.join(","), now.labels.join(","));
    differ(
        "--pooling",
        saved.pooling.to_string(),
        now.pooling.to_string(),
    );
    let (a, b) = (&saved.hyperparameters, &now.hyperparameters);
    differ(
        "--batch-size",
        a.batch_size.to_string(),
        b.batch_size.to_string(),
    );
    differ("--lr", a.lr.to_string(), b.lr.to_string());
    differ(
        "--weight-decay",
        a.weight_decay.to_string(),
        b.weight_decay.to_string(),
    );
    differ("--seed", a.seed.to_string(), b.seed.to_string());
    differ(
        "--class-weights",
        a.class_weights.clone(),
        b.class_weights.clone(),
    );
    if !diffs.is_empty() {
        bail!(
            "cannot resume {}: {} differ; pass the flags the run was started with",
            dir.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}

fn checkpoint_epoch(metadata: &BTreeMap<String, String>, dir: &Path) -> Result<usize> {
    metadata
        .get(META_EPOCH)
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "{}: no epoch in its metadata: not written by bertcls train",
                last_checkpoint(dir).display()
            )
        })
}

fn read_metrics(dir: &Path) -> Result<Vec<EpochMetrics>> {
    let path = metrics_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot read {} ({e})", path.display()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                anyhow!(
                    "{} line {}: not a metrics line ({e})",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// The head and its optimiser where the steps run.
enum HeadTrainer {
    Cpu(Box<CpuHead>),
    Cuda(Box<CudaHead>),
}

struct CpuHead {
    head: LinearHead,
    opt: AdamW,
    scratch: HeadScratch,
    /// (L,) per-class loss weights, or None for the plain mean.
    class_weights: Option<Vec<f32>>,
}

impl HeadTrainer {
    fn new(
        kind: HeadDevice,
        model: &LoadedModel,
        head: LinearHead,
        opt: AdamW,
        batch: usize,
        class_weights: Option<Vec<f32>>,
    ) -> Result<Self> {
        match kind {
            HeadDevice::Cpu => {
                let scratch = HeadScratch::new(head.num_labels, head.hidden);
                Ok(Self::Cpu(Box::new(CpuHead {
                    head,
                    opt,
                    scratch,
                    class_weights,
                })))
            }
            HeadDevice::Cuda if class_weights.is_some() => {
                bail!(
                    "--class-weights balanced trains on the CPU head only: drop --head-device cuda"
                )
            }
            HeadDevice::Cuda => {
                let Device::Cuda(ordinal) = model.device else {
                    bail!("--head-device cuda needs the encoder on a GPU: pass --device cuda, or drop --head-device");
                };
                let backend = CudaBackend::new(ordinal, Precision::Fp32, batch)?;
                Ok(Self::Cuda(Box::new(CudaHead::new(
                    &backend, &head, &opt, batch,
                )?)))
            }
        }
    }

    /// One step on a batch: its loss and correct predictions before the update.
    fn step(&mut self, x: &[f32], labels: &[usize]) -> Result<(f32, usize)> {
        match self {
            Self::Cpu(cpu) => {
                let CpuHead {
                    head,
                    opt,
                    scratch,
                    class_weights,
                } = cpu.as_mut();
                let loss =
                    head.forward_backward_weighted(x, labels, class_weights.as_deref(), scratch);
                let correct = count_correct(&scratch.logits, labels, head.num_labels);
                opt.update_head(head, &scratch.grads);
                Ok((loss, correct))
            }
            Self::Cuda(gpu) => gpu.train_step(x, labels).map(|s| (s.loss, s.correct)),
        }
    }

    fn state(&self) -> Result<(LinearHead, AdamW)> {
        match self {
            Self::Cpu(cpu) => Ok((cpu.head.clone(), cpu.opt.clone())),
            Self::Cuda(gpu) => gpu.download(),
        }
    }
}

/// Runs the epochs after `start.epoch`, writing metrics and checkpoints after each.
fn train_epochs(
    run: &Run,
    mut trainer: HeadTrainer,
    start: &Start,
    features: &RunFeatures,
) -> Result<Vec<EpochMetrics>> {
    let (train, val) = (&features.train, features.val.as_ref());
    let hp = &run.info.hyperparameters;
    let steps = train.labels.len() / hp.batch_size;
    let mut progress = Progress::new(((hp.epochs - start.epoch) * steps) as u64, "training");
    let mut metrics = start.metrics.clone();
    let mut best = best_so_far(&metrics);
    for epoch in start.epoch + 1..=hp.epochs {
        let started = Instant::now();
        let done_before = ((epoch - start.epoch - 1) * steps) as u64;
        let (train_loss, train_acc) = run_epoch(
            &mut trainer,
            train,
            epoch,
            hp,
            run.log_every,
            |step, line| {
                progress.set(done_before + step as u64);
                if let Some(line) = line {
                    progress.println(&line);
                }
            },
        )?;
        let (head, opt) = trainer.state()?;
        let (val_loss, val_acc) = val.map(|v| evaluate(&head, v)).unzip();
        let temperature = val.map(|v| calibrate(&head, v));
        let m = EpochMetrics {
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            temperature,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress.println(&epoch_line(&m));
        metrics.push(m);
        write_metrics(&run.dir, &metrics)?;
        let improved = val_acc.is_none_or(|acc| best.is_none_or(|b| acc > b));
        if improved {
            best = val_acc;
        }
        save_checkpoints(run, &head, &opt, &metrics[metrics.len() - 1], improved)?;
    }
    progress.finish();
    Ok(metrics)
}

/// The best validation accuracy among earlier epochs, for a resumed run.
fn best_so_far(metrics: &[EpochMetrics]) -> Option<f64> {
    metrics.iter().filter_map(|m| m.val_acc).reduce(f64::max)
}

/// One epoch over the shuffled train rows: mean step loss and accuracy. `tick` gets the
/// step number and, every `log_every` steps, the recipe's log line.
fn run_epoch(
    trainer: &mut HeadTrainer,
    train: &Features,
    epoch: usize,
    hp: &Hyperparameters,
    log_every: usize,
    mut tick: impl FnMut(usize, Option<String>),
) -> Result<(f64, f64)> {
    let rows = train.labels.len();
    let hidden = train.x.len() / rows;
    let b = hp.batch_size;
    let order = epoch_order(rows, hp.seed, epoch);
    let mut x = vec![0.0f32; b * hidden];
    let mut y = vec![0usize; b];
    let (mut loss_sum, mut correct_sum) = (0.0f64, 0usize);
    let steps = rows / b;
    for (step, batch) in order.chunks_exact(b).enumerate() {
        for ((&row, xr), yr) in batch
            .iter()
            .zip(x.chunks_exact_mut(hidden))
            .zip(y.iter_mut())
        {
            xr.copy_from_slice(&train.x[row * hidden..(row + 1) * hidden]);
            *yr = train.labels[row];
        }
        let (loss, correct) = trainer.step(&x, &y)?;
        loss_sum += loss as f64;
        correct_sum += correct;
        let n = step + 1;
        let log = (log_every > 0 && n % log_every == 0).then(|| {
            format!(
                "epoch {epoch} step {n} loss {loss:.4} acc {:.4}",
                correct as f64 / b as f64
            )
        });
        tick(n, log);
    }
    Ok((
        loss_sum / steps as f64,
        correct_sum as f64 / (steps * b) as f64,
    ))
}

/// The row order of an epoch: its own seeded RNG, so that epoch N shuffles alike
/// whether the run got there straight or through --resume.
fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    order
}

/// The temperature that minimises the validation cross-entropy of `head`'s logits.
fn calibrate(head: &LinearHead, v: &Features) -> f64 {
    fit_temperature(&head.logits(&v.x), &v.labels, head.num_labels)
}

/// Mean loss and accuracy over every row of `v`.
fn evaluate(head: &LinearHead, v: &Features) -> (f64, f64) {
    let (loss, correct) = head.evaluate(&v.x, &v.labels);
    (loss as f64, correct as f64 / v.labels.len() as f64)
}

fn epoch_line(m: &EpochMetrics) -> String {
    let val = match (m.val_loss, m.val_acc) {
        (Some(loss), Some(acc)) => format!(", val loss {loss:.4} acc {acc:.4}"),
        _ => String::new(),
    };
    format!(
        "epoch {}: train loss {:.4} acc {:.4}{val} ({:.2}s)",
        m.epoch, m.train_loss, m.train_acc, m.seconds
    )
}

/// Rewrites metrics.jsonl whole, atomically: a kill mid-write cannot leave half a line.
fn write_metrics(dir: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in metrics {
        text.push_str(&serde_json::to_string(m).context("cannot serialise metrics")?);
        text.push('\n');
    }
    atomic_write(&metrics_path(dir), text.as_bytes())
}

/// head-epoch-N, best when it improved, then last: `--resume` trusts last, so it goes
/// after the others, and redoing an epoch rewrites them with the same bytes.
fn save_checkpoints(
    run: &Run,
    head: &LinearHead,
    opt: &AdamW,
    m: &EpochMetrics,
    improved: bool,
) -> Result<()> {
    let meta = checkpoint_metadata(run, m)?;
    save_head(&epoch_checkpoint(&run.dir, m.epoch), head, Some(opt), &meta)?;
    if improved {
        save_head(&best_checkpoint(&run.dir), head, Some(opt), &meta)?;
    }
    save_head(&last_checkpoint(&run.dir), head, Some(opt), &meta)
}

fn checkpoint_metadata(run: &Run, m: &EpochMetrics) -> Result<BTreeMap<String, String>> {
    let mut meta = BTreeMap::from([
        (META_EPOCH.to_string(), m.epoch.to_string()),
        ("model".to_string(), run.model_id.clone()),
        (
            "weights_sha256".to_string(),
            run.info.weights_sha256.clone(),
        ),
        (
            META_LABELS.to_string(),
            serde_json::to_string(&run.info.labels)?,
        ),
        ("max_length".to_string(), run.info.max_length.to_string()),
        ("pooling".to_string(), run.info.pooling.to_string()),
        (META_TRAIN_HASH.to_string(), run.train_hash.clone()),
    ]);
    if let Some(acc) = m.val_acc {
        meta.insert("val_acc".to_string(), acc.to_string());
    }
    if let Some(t) = m.temperature {
        meta.insert(META_TEMPERATURE.to_string(), t.to_string());
    }
    Ok(meta)
}

/// The closing lines on standard error, and with `--json` the summary on standard output.
fn report(
    run: &Run,
    metrics: &[EpochMetrics],
    first_done: usize,
    features: &RunFeatures,
    train_seconds: f64,
    json: bool,
) {
    let encode_seconds = features.seconds;
    let epochs = metrics.len() - first_done;
    let best = best_epoch(metrics);
    eprintln!("encoding: {encode_seconds:.1}s; training: {epochs} epochs in {train_seconds:.1}s");
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
            }
        }
        None => eprintln!("no validation split: best.safetensors is the last epoch"),
    }
    eprintln!("run: {}", run.dir.display());
    if json {
        let summary = serde_json::json!({
            "out": run.dir.display().to_string(),
            "epochs": run.info.hyperparameters.epochs,
            "epochs_run": epochs,
            "encode_seconds": encode_seconds,
            "train_seconds": train_seconds,
            "features_cached": features.cached,
            "best_epoch": best.map(|m| m.epoch),
            "best_val_acc": best.and_then(|m| m.val_acc),
            "temperature": best.and_then(|m| m.temperature),
            "last": metrics.last(),
        });
        println!("{summary}");
    }
}

/// The first epoch with the highest validation accuracy, as best.safetensors holds it.
fn best_epoch(metrics: &[EpochMetrics]) -> Option<&EpochMetrics> {
    metrics
        .iter()
        .filter(|m| m.val_acc.is_some())
        .fold(None, |best: Option<&EpochMetrics>, m| match best {
            Some(b) if b.val_acc >= m.val_acc => Some(b),
            _ => Some(m),
        })
}

/// `2026-01-31-142501`: the default run folder's name, in UTC (no time-zone database).
fn utc_stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(t);
    format!("{y:04}-{mo:02}-{d:02}-{h:02}{mi:02}{s:02}")
}

fn iso_utc(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn utc_fields(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let day = secs % 86_400;
    (y, mo, d, day / 3600, day % 3600 / 60, day % 60)
}

/// (year, month, day) of a count of days since 1970-01-01: Howard Hinnant's
/// `civil_from_days`, which counts in 400-year eras of 146,097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        let t = UNIX_EPOCH + Duration::from_secs(1_769_869_501);
        assert_eq!(utc_stamp(t), "2026-01-31-142501");
        assert_eq!(iso_utc(t), "2026-01-31T14:25:01Z");
    }

    #[test]
    fn epoch_order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(50, 3, 2), epoch_order(50, 3, 2));
        assert_ne!(epoch_order(50, 3, 2), epoch_order(50, 3, 3));
        let mut sorted = epoch_order(50, 0, 1);
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn best_epoch_is_the_first_highest() {
        let m = |epoch, val_acc| EpochMetrics {
            epoch,
            train_loss: 0.0,
            train_acc: 0.0,
            val_loss: Some(0.0),
            val_acc: Some(val_acc),
            temperature: None,
            seconds: 0.0,
        };
        let metrics = [m(1, 0.5), m(2, 0.75), m(3, 0.75), m(4, 0.6)];
        assert_eq!(best_epoch(&metrics).map(|m| m.epoch), Some(2));
        assert_eq!(best_so_far(&metrics), Some(0.75));
    }
}
