//! `bertcls predict`: label new texts with a trained head, from arguments, `--file`,
//! standard input, or the recipe's interactive prompt.
//!
//! Also home of what `test` shares with it: which head to use (`--run` or `--head`),
//! its label names, and the model it must run on.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;

use super::bulk::{self, BulkArgs};
use super::common::{
    check_pooling_layers, check_trained_weights, load_model_files, model_files, stdout_error,
    text_features, DeviceArgs, EncoderDevice, LoadedModel, ModelArgs, Recorded, TextArgs,
};
use super::lines::TextChunks;
use super::progress::Throughput;
use super::run_dir::{best_checkpoint, epoch_checkpoint, last_checkpoint, RunInfo};
use super::run_settings::run_device;
use crate::calibration::{scaled_softmax, MAX_TEMPERATURE, MIN_TEMPERATURE};
use crate::checkpoint::load_inference_head;
use crate::chunk::LongTexts;
use crate::data::{are_bare_ids, check_label_names, NumericLabels};
use crate::head::{argmax, LinearHead};
use crate::hub::DEFAULT_MODEL;
use crate::model::Pooling;
use crate::tokenize::DEFAULT_MAX_LENGTH;
use crate::train::META_TEMPERATURE;

/// The recipe's prompt, kept verbatim so its users see what they know.
const PROMPT: &str = "请输入文本:";

/// Checkpoint metadata keys `train` writes: the label names as a JSON list in id order,
/// and the `--model`, its weights' sha256 and the `--max-length` the head was trained with.
const LABELS_KEY: &str = "labels";
const MODEL_KEY: &str = "model";
const WEIGHTS_SHA256_KEY: &str = "weights_sha256";
const MAX_LENGTH_KEY: &str = "max_length";
const POOLING_KEY: &str = "pooling";
const LONG_KEY: &str = "long";
/// Checkpoint metadata: "names" where train read the data's numbers as class names.
pub const NUMERIC_LABELS_KEY: &str = "numeric_labels";

/// Which trained head to use, and the model flags, which default to the run's.
#[derive(Args, Clone, Debug)]
pub struct HeadArgs {
    /// A folder written by `bertcls train`: run.json and its checkpoints.
    #[arg(long, required_unless_present = "head", conflicts_with = "head")]
    pub run: Option<PathBuf>,
    /// A head checkpoint instead of a run: our .safetensors, or the recipe's torch.save
    /// .pth (a state_dict with fc.weight and fc.bias).
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// Checkpoint of --run: best, last, or an epoch number [default: best].
    // A conflict, not `requires = "run"`: clap lets a required argument be missing when
    // something present conflicts with it, and --head conflicts with --run, so
    // `--head F --checkpoint last` passed and the flag was silently ignored.
    #[arg(long, conflicts_with = "head", allow_negative_numbers = true)]
    pub checkpoint: Option<String>,
    /// Model folder or hub id [default: the run's or the checkpoint's, else bert-base-chinese].
    #[arg(long)]
    pub model: Option<String>,
    /// Never touch the network (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Truncate texts to this many tokens [default: the run's or the checkpoint's, else 350].
    #[arg(long, allow_negative_numbers = true)]
    pub max_length: Option<usize>,
    /// Label names in id order, comma-separated, for a head that records none or only ids
    /// (a run's names cannot be changed) [default: the run's or the checkpoint's; else for
    /// test the data's, for predict the ids].
    // Hyphen values: `--labels -1,0,1` (a head that reads numbers as names) is no flag.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_parser = super::common::label_name
    )]
    pub labels: Option<Vec<String>>,
    /// Show the raw softmax: ignore the temperature train fitted on the validation split.
    #[arg(long)]
    pub no_calibration: bool,
}

/// A loaded head with what is known about it.
pub struct Classifier {
    pub head: LinearHead,
    /// Where the head came from, for messages.
    pub source: PathBuf,
    /// Label names from --labels, the run or the checkpoint; none when only the data
    /// (or the ids) can name them.
    pub labels: Option<Vec<String>>,
    /// The run the head came from, and its run.json (named when a flag contradicts it).
    run: Option<(RunInfo, PathBuf)>,
    pub model: ModelArgs,
    /// The temperature the logits are divided by before the softmax: the checkpoint's
    /// (fitted by train on the validation split), 1 with --no-calibration or for a head
    /// without one (the recipe's .pth).
    pub temperature: f64,
    /// How the head reads labels written as numbers (as train read them): scored data
    /// must read them the same way.
    pub numeric_labels: NumericLabels,
    /// The sha256 of the weights the head was trained on (empty where nothing records
    /// it), and the file that records it: the run.json, or the head checkpoint.
    trained_on: (String, PathBuf),
}

impl HeadArgs {
    pub fn load(&self) -> Result<Classifier> {
        if let Some(dir) = &self.run {
            RunInfo::refuse_file(dir, "--run")?;
        }
        let run = self.run.as_deref().map(RunInfo::load).transpose()?;
        let source = match (&self.run, &self.head) {
            (Some(dir), _) => run_checkpoint(dir, self.checkpoint.as_deref())?,
            (None, Some(file)) => file.clone(),
            (None, None) => bail!("pass --run DIR (a bertcls train folder) or --head FILE"),
        };
        let loaded = load_inference_head(&source, None)?;
        let (recorded, recorded_in) = match (&self.run, &run) {
            (Some(dir), Some(info)) => (
                Some(info.labels.clone()),
                format!("{}: its labels", RunInfo::path(dir).display()),
            ),
            _ => (
                metadata_labels(&loaded.metadata, &source)?,
                format!("{}: metadata {LABELS_KEY}", source.display()),
            ),
        };
        let renames_ids = match (&self.labels, &recorded) {
            (Some(flag), Some(names)) => are_bare_ids(names) && flag != names,
            _ => false,
        };
        let (labels, origin) = match (&self.labels, recorded) {
            (Some(flag), Some(names)) if !are_bare_ids(&names) && *flag != names => bail!(
                "--labels {}: {recorded_in} are {}, and other names would print a class's predictions under a name it was not trained for: drop --labels",
                flag.join(","),
                names.join(",")
            ),
            (Some(flag), _) => (Some(flag.clone()), "--labels".to_string()),
            (None, names) => (names, recorded_in),
        };
        if let Some(names) = &labels {
            check_label_names(names).map_err(|why| anyhow!("{origin}: {why}"))?;
            check_label_count(&loaded.head, &source, names.len(), "label names")?;
        }
        // A checkpoint of ours names the model it was trained on: a bare --head needs no
        // --model beside it.
        let meta = &loaded.metadata;
        let run_json = self.run.as_deref().map(RunInfo::path);
        // Each value from the first of: its flag, the run, the checkpoint, the default;
        // with the file it was read from, named when it does not load.
        let (model, model_from) = match (&self.model, &run, meta.get(MODEL_KEY)) {
            (Some(flag), _, _) => (flag.clone(), None),
            (None, Some(info), _) => (run_model(info), run_json.clone()),
            (None, None, Some(named)) => (named.clone(), Some(source.clone())),
            (None, None, None) => (DEFAULT_MODEL.to_string(), None),
        };
        let (max_length, max_length_from) = match (self.max_length, &run) {
            (Some(flag), _) => (flag, None),
            (None, Some(info)) => (info.features.max_length, run_json.clone()),
            (None, None) => match metadata_max_length(meta, &source)? {
                Some(recorded) => (recorded, Some(source.clone())),
                None => (DEFAULT_MAX_LENGTH, None),
            },
        };
        let model = ModelArgs {
            model,
            offline: self.offline,
            max_length,
            pooling: match &run {
                Some(info) => info.features.pooling,
                None => metadata_pooling(meta, &source)?,
            },
            long: match &run {
                Some(info) => info.features.long,
                None => metadata_long(meta, &source)?,
            },
            recorded: Recorded {
                model: model_from,
                max_length: max_length_from,
                pooling: Some(run_json.clone().unwrap_or_else(|| source.clone())),
                long: Some(run_json.clone().unwrap_or_else(|| source.clone())),
            },
        };
        let trained_on = match (&run, &run_json) {
            (Some(info), Some(json)) => (info.features.weights_sha256.clone(), json.clone()),
            _ => (
                meta.get(WEIGHTS_SHA256_KEY).cloned().unwrap_or_default(),
                source.clone(),
            ),
        };
        let numeric_labels = match &run {
            // A head that read 0/1 as names records "0", "1", which --labels may name as
            // any head's ids: the data's numbers are then those ids, not its new names.
            _ if renames_ids => NumericLabels::Ids,
            Some(info) => info.numeric_labels,
            None => metadata_numeric_labels(meta, &source)?,
        };
        let temperature = if self.no_calibration {
            1.0
        } else {
            checkpoint_temperature(meta, &source)?
        };
        // After run.json's own values are checked, so that a damaged one is named as such.
        if let (Some(info), Some(json)) = (&run, &run_json) {
            check_checkpoint_of_run(meta, &source, info, json).map_err(|differs| {
                anyhow!("{differs}; put the run's own checkpoint back or restore run.json, or pass the checkpoint with --head, which uses its own settings")
            })?;
        }
        Ok(Classifier {
            head: loaded.head,
            source,
            labels,
            run: run.zip(run_json),
            model,
            temperature,
            numeric_labels,
            trained_on,
        })
    }
}

/// The run's model: the folder it resolved to while that still exists (a run made
/// from a relative path keeps working from another directory), else what it named.
pub(super) fn run_model(info: &RunInfo) -> String {
    if Path::new(&info.model_dir).is_dir() {
        info.model_dir.clone()
    } else {
        info.model.clone()
    }
}

fn run_checkpoint(dir: &Path, choice: Option<&str>) -> Result<PathBuf> {
    let (path, epoch) = match choice.unwrap_or("best") {
        "best" => (best_checkpoint(dir), None),
        "last" => (last_checkpoint(dir), None),
        n => match n.parse::<usize>() {
            Ok(epoch) => (epoch_checkpoint(dir, epoch), Some(epoch)),
            Err(_) => bail!("--checkpoint {n}: expected best, last or an epoch number"),
        },
    };
    if !path.is_file() {
        // Epoch N missing from a run that finished others is not a run without epochs.
        let why = match epoch {
            Some(n) => format!("the run has not finished epoch {n}"),
            None => "the run has not finished an epoch".to_string(),
        };
        bail!(
            "{} does not exist: {why}; pass --checkpoint best, last or an epoch it has",
            path.display()
        );
    }
    Ok(path)
}

fn metadata_labels(
    metadata: &BTreeMap<String, String>,
    source: &Path,
) -> Result<Option<Vec<String>>> {
    let Some(json) = metadata.get(LABELS_KEY) else {
        return Ok(None);
    };
    let names = serde_json::from_str(json).map_err(|e| {
        anyhow!(
            "{}: metadata {LABELS_KEY} is not a JSON list of names ({e}); pass --labels a,b,... instead",
            source.display()
        )
    })?;
    Ok(Some(names))
}

/// The max_length a checkpoint's head was trained with, where it records one.
fn metadata_max_length(
    metadata: &BTreeMap<String, String>,
    source: &Path,
) -> Result<Option<usize>> {
    let Some(text) = metadata.get(MAX_LENGTH_KEY) else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        anyhow!(
            "{}: metadata {MAX_LENGTH_KEY} = {text:?} is not a token count: pass --max-length with the length the head was trained with",
            source.display()
        )
    })
}

/// Refuses a checkpoint in a run folder whose recorded settings are not run.json's: one
/// copied in from another run (a head of mean features where run.json says [CLS], of the
/// same width) would be fed the run's features and answer wrongly without a word.
pub(super) fn check_checkpoint_of_run(
    metadata: &BTreeMap<String, String>,
    source: &Path,
    info: &RunInfo,
    json: &Path,
) -> Result<()> {
    let spec = &info.features;
    // Settings a checkpoint does not record (the recipe's .pth records none) are not
    // compared; the numeric-label mode is recorded by its absence too (ids).
    let recorded = |key: &str, value: String| metadata.contains_key(key).then_some(value);
    let differs = [
        (
            POOLING_KEY,
            recorded(POOLING_KEY, metadata_pooling(metadata, source)?.to_string()),
            spec.pooling.to_string(),
        ),
        (
            LONG_KEY,
            recorded(LONG_KEY, metadata_long(metadata, source)?.key()),
            spec.long.key(),
        ),
        (
            MAX_LENGTH_KEY,
            metadata_max_length(metadata, source)?.map(|n| n.to_string()),
            spec.max_length.to_string(),
        ),
        (
            WEIGHTS_SHA256_KEY,
            metadata.get(WEIGHTS_SHA256_KEY).cloned(),
            spec.weights_sha256.clone(),
        ),
        (
            LABELS_KEY,
            metadata_labels(metadata, source)?.map(|names| names.join(",")),
            info.labels.join(","),
        ),
        (
            NUMERIC_LABELS_KEY,
            Some(metadata_numeric_labels(metadata, source)?.to_string()),
            info.numeric_labels.to_string(),
        ),
    ]
    .into_iter()
    .find(|(_, theirs, ours)| theirs.as_ref().is_some_and(|t| t != ours));
    match differs {
        Some((key, Some(theirs), ours)) => bail!(
            "{} records {key} {theirs}, but {} records {ours}: the two are not of one run (a checkpoint copied in from another run, or a file edited since)",
            source.display(),
            json.display()
        ),
        _ => Ok(()),
    }
}

/// The pooling a checkpoint's head was trained on; [CLS] where it names none (the
/// recipe's .pth, heads written before pooling was a choice).
fn metadata_pooling(metadata: &BTreeMap<String, String>, source: &Path) -> Result<Pooling> {
    match metadata.get(POOLING_KEY) {
        None => Ok(Pooling::CLS),
        Some(name) => name
            .parse()
            .map_err(|e| anyhow!("{}: metadata {POOLING_KEY}: {e}", source.display())),
    }
}

/// How a checkpoint's head saw long texts; truncated where it does not say.
fn metadata_long(metadata: &BTreeMap<String, String>, source: &Path) -> Result<LongTexts> {
    match metadata.get(LONG_KEY) {
        None => Ok(LongTexts::Truncate),
        Some(key) => LongTexts::from_key(key).ok_or_else(|| {
            anyhow!(
                "{}: metadata {LONG_KEY} = {key:?} is neither truncate nor chunk:<stride>",
                source.display()
            )
        }),
    }
}

/// How a checkpoint's head reads numeric labels; as ids where it does not say.
fn metadata_numeric_labels(
    metadata: &BTreeMap<String, String>,
    source: &Path,
) -> Result<NumericLabels> {
    match metadata.get(NUMERIC_LABELS_KEY) {
        None => Ok(NumericLabels::Ids),
        Some(name) => name
            .parse()
            .map_err(|e| anyhow!("{}: metadata {NUMERIC_LABELS_KEY}: {e}", source.display())),
    }
}

/// The calibration temperature in a checkpoint's metadata; 1 where it has none.
fn checkpoint_temperature(metadata: &BTreeMap<String, String>, source: &Path) -> Result<f64> {
    let Some(text) = metadata.get(META_TEMPERATURE) else {
        return Ok(1.0);
    };
    // Within the range train fits it in, not merely positive: logits divided by a
    // temperature near 0 (1e-310) overflow to infinities, whose softmax is NaN, and every
    // text would be printed with NaN probabilities and the first label.
    match text.parse::<f64>() {
        Ok(t) if (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) => Ok(t),
        _ => bail!(
            "{}: metadata {META_TEMPERATURE} = {text:?} is not a temperature between {MIN_TEMPERATURE} and {MAX_TEMPERATURE}, the range train fits it in: pass --no-calibration",
            source.display()
        ),
    }
}

pub fn check_label_count(head: &LinearHead, source: &Path, count: usize, what: &str) -> Result<()> {
    if head.num_labels != count {
        bail!(
            "{} has {} labels but there are {count} {what}: use the head trained for these labels",
            source.display(),
            head.num_labels
        );
    }
    Ok(())
}

impl Classifier {
    /// The encoder the head was trained on, in the run's precision, refusing one of
    /// another width, or other weights than the head's, before its weights are read.
    pub fn load_model(&self, device: &DeviceArgs) -> Result<LoadedModel> {
        let device = self.encoder_device(device)?;
        let files = model_files(&self.model)?;
        // Before the width: a pooling of more layers than the model has is not a width
        // the model gives.
        check_pooling_layers(
            self.model.pooling,
            &files,
            self.model.recorded.pooling.as_deref(),
        )?;
        let model_hidden = files.config.hidden_size;
        let width = self.model.pooling.width(model_hidden);
        if self.head.hidden != width {
            bail!(
                "head takes features of {} floats but the model gives {width} (hidden size {model_hidden}, pooling {}; head {}, model {}): pass the --model it was trained with",
                self.head.hidden,
                self.model.pooling,
                self.source.display(),
                self.model.model
            );
        }
        check_trained_weights(&files, &self.trained_on.0, &self.trained_on.1)?;
        load_model_files(files, &self.model, &device)
    }

    /// `--device` resolved: in the precision a run's features were computed in; a bare
    /// head records none, so `--precision` (or fp32) stands.
    fn encoder_device(&self, device: &DeviceArgs) -> Result<EncoderDevice> {
        match &self.run {
            Some((info, json)) => run_device(device, info, json),
            None => device.resolve(),
        }
    }

    /// The run the head came from, if it came from one.
    pub fn run(&self) -> Option<&RunInfo> {
        self.run.as_ref().map(|(info, _)| info)
    }

    /// The run.json of the run the head came from, for messages about what it names.
    pub fn run_json(&self) -> Option<&Path> {
        self.run.as_ref().map(|(_, json)| json.as_path())
    }

    /// The label names, or the ids when nothing names them.
    pub fn names_or_ids(&self) -> Vec<String> {
        self.labels
            .clone()
            .unwrap_or_else(|| (0..self.head.num_labels).map(|i| i.to_string()).collect())
    }
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    head: HeadArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    input: TextArgs,
    /// One JSON object per text: text, label, label_id, probs (in label order); not with
    /// the interactive prompt.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bulk: BulkArgs,
    /// With --data: the predictions file, .parquet or .jsonl (index, label_id, label,
    /// probs); `<out>.bulk.json` beside it names the job, rows and accuracy.
    #[arg(long, requires = "data", help_heading = "Bulk (--data)")]
    out: Option<PathBuf>,
    /// With --data: add each row's text to the output.
    #[arg(long, requires = "data", help_heading = "Bulk (--data)")]
    with_text: bool,
}

/// A text's most probable label and every label's probability.
#[derive(Debug, PartialEq)]
pub struct Prediction {
    pub label_id: usize,
    pub probs: Vec<f32>,
}

impl Prediction {
    pub fn prob(&self) -> f32 {
        self.probs[self.label_id]
    }
}

/// Softmax predictions of the (N, C) features `x`, the logits divided by `temperature`.
pub fn predict_features(head: &LinearHead, x: &[f32], temperature: f64) -> Vec<Prediction> {
    scaled_softmax(&head.logits(x), head.num_labels, temperature)
        .chunks_exact(head.num_labels)
        .map(|p| Prediction {
            label_id: argmax(p),
            probs: p.to_vec(),
        })
        .collect()
}

pub fn run(args: PredictArgs) -> Result<()> {
    if args.bulk.data.is_some() {
        if args.input.file.is_some() || !args.input.texts.is_empty() || args.json {
            bail!("--data labels a dataset into --out: drop the texts, --file and --json");
        }
        return bulk::run_predict(
            &args.bulk,
            args.out.as_ref(),
            args.with_text,
            &args.head,
            &args.device,
        );
    }
    // The first chunk is read before the model loads: no texts, or a bad first line,
    // fail before any weights are read.
    let mut input = TextChunks::open(&args.input)?;
    let first = match &mut input {
        Some(chunks) => Some(chunks.next_chunk()?.ok_or_else(|| {
            anyhow!("no texts to label: pass them as arguments, with --file F or on standard input (one per line)")
        })?),
        // The prompt's lines are for a person; JSON goes to a program, which gives
        // the texts some other way.
        None if args.json => bail!(
            "--json labels texts given as arguments, with --file or on standard input; the prompt on a terminal prints 模型预测 lines: drop --json, or pass the texts"
        ),
        None => None,
    };
    let classifier = args.head.load()?;
    let mut model = classifier.load_model(&args.device)?;
    let names = classifier.names_or_ids();
    match (input, first) {
        (Some(chunks), Some(first)) => {
            predict_stream(&mut model, &classifier, &names, chunks, first, args.json)
        }
        _ => interactive(std::io::stdin().lock(), std::io::stdout().lock(), |text| {
            let prediction = predict_one(&mut model, &classifier, text)?;
            Ok((names[prediction.label_id].clone(), prediction.prob()))
        }),
    }
}

/// Labels the texts a chunk at a time, each chunk written (and flushed) before the next
/// is read: memory stays that of one chunk whatever the number of lines.
fn predict_stream(
    model: &mut LoadedModel,
    classifier: &Classifier,
    names: &[String],
    mut chunks: TextChunks,
    first: Vec<String>,
    json: bool,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut meter = Throughput::new("labelled", None);
    let mut chunk = Some(first);
    while let Some(texts) = chunk {
        // Long texts are truncated or cut into windows as the head was trained.
        let (x, token_count) = text_features(model, &texts, |_| {})?;
        let predictions = predict_features(&classifier.head, &x, classifier.temperature);
        write_predictions(&mut out, &texts, &predictions, names, json)
            .and_then(|()| out.flush())
            .map_err(stdout_error)?;
        meter.add(texts.len() as u64, token_count as u64);
        chunk = chunks.next_chunk()?;
    }
    meter.finish();
    Ok(())
}

/// One text as a batch of its own: encoded at its own length, never padded.
fn predict_one(model: &mut LoadedModel, classifier: &Classifier, text: &str) -> Result<Prediction> {
    let (x, _) = text_features(model, &[text.to_string()], |_| {})?;
    Ok(predict_features(&classifier.head, &x, classifier.temperature).remove(0))
}

fn write_predictions(
    mut out: impl Write,
    texts: &[String],
    predictions: &[Prediction],
    names: &[String],
    json: bool,
) -> std::io::Result<()> {
    for (text, p) in texts.iter().zip(predictions) {
        let label = &names[p.label_id];
        if json {
            let obj = serde_json::json!({
                "text": text,
                "label": label,
                "label_id": p.label_id,
                "probs": p.probs,
            });
            writeln!(out, "{obj}")?;
        } else {
            writeln!(out, "{label}\t{:.4}\t{}", p.prob(), one_field(text))?;
        }
    }
    Ok(())
}

/// `text` as the last field of a tab-separated line: a text given as an argument may hold
/// a line break, which would start a line that `cut -f1` reads as a label, or a tab.
/// --json gives the text as it is.
fn one_field(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\t', '\n', '\r']) {
        return text.into();
    }
    text.replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .into()
}

/// The recipe's loop: prompt, read a line, print `模型预测 <label> (<probability>)`;
/// `q` or the end of input quits. `classify` gives a text's label name and probability.
pub fn interactive(
    mut input: impl BufRead,
    mut out: impl Write,
    mut classify: impl FnMut(&str) -> Result<(String, f32)>,
) -> Result<()> {
    let mut line = Vec::new();
    for number in 1.. {
        write!(out, "{PROMPT}")?;
        out.flush()?;
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            // The prompt is still on its line: end it so the shell's starts clean.
            writeln!(out)?;
            break;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            writeln!(
                out,
                "line {number} is not UTF-8: switch the terminal to UTF-8"
            )?;
            continue;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "q" => break,
            "" => continue,
            _ => {
                let (label, prob) = classify(text)?;
                writeln!(out, "模型预测 {label} ({prob:.4})")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temperature of 1e-310 passed as positive, and every probability came out NaN
    /// (the logits over it overflow), printed with the first label; the range's bounds,
    /// which train writes when its fit stops at one, are kept.
    #[test]
    fn a_temperature_outside_the_fitted_range_is_refused() {
        let source = Path::new("head.safetensors");
        let meta = |t: &str| BTreeMap::from([(META_TEMPERATURE.to_string(), t.to_string())]);
        for t in [MIN_TEMPERATURE, 1.5, MAX_TEMPERATURE] {
            assert_eq!(
                checkpoint_temperature(&meta(&t.to_string()), source).unwrap(),
                t
            );
        }
        for t in ["1e-310", "0.001", "1000", "0", "-1", "NaN", "inf", "x"] {
            let err = checkpoint_temperature(&meta(t), source)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("head.safetensors: metadata temperature = \"{t}\" is not a temperature between 0.01 and 100")),
                "{err}"
            );
        }
    }

    fn session(input: &[u8]) -> (String, Vec<String>) {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        interactive(input, &mut out, |text| {
            seen.push(text.to_string());
            Ok(("正向评价".to_string(), 0.98766))
        })
        .unwrap();
        (String::from_utf8(out).unwrap(), seen)
    }

    #[test]
    fn prompts_labels_each_line_and_quits_on_q() {
        let (out, seen) = session("酒店很好\r\n\n书很差\nq\n不会读到这里\n".as_bytes());
        assert_eq!(seen, ["酒店很好", "书很差"]);
        assert_eq!(
            out,
            "请输入文本:模型预测 正向评价 (0.9877)\n请输入文本:请输入文本:模型预测 正向评价 (0.9877)\n请输入文本:"
        );
    }

    #[test]
    fn end_of_input_quits_on_a_fresh_line() {
        let (out, seen) = session(b"");
        assert!(seen.is_empty());
        assert_eq!(out, "请输入文本:\n");
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_and_skipped() {
        let (out, seen) = session(b"\xc4\xe3\xba\xc3\nok\nq\n");
        assert_eq!(seen, ["ok"]);
        assert!(out.contains("line 1 is not UTF-8"), "{out}");
    }

    #[test]
    fn predictions_are_softmax_and_argmax() {
        let head = LinearHead {
            weight: vec![1.0, 0.0, 0.0, 1.0],
            bias: vec![0.0, 0.0],
            num_labels: 2,
            hidden: 2,
        };
        let p = predict_features(&head, &[0.0, 2.0, 3.0, 1.0], 1.0);
        assert_eq!(p[0].label_id, 1);
        assert_eq!(p[1].label_id, 0);
        let e = 1.0 / (1.0 + (-2.0f32).exp());
        assert!((p[0].prob() - e).abs() < 1e-6 && (p[1].prob() - e).abs() < 1e-6);
        assert!((p[0].probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // At T = 2 the logits (0, 2) become (0, 1): sigmoid(1).
        let hot = predict_features(&head, &[0.0, 2.0], 2.0);
        let e = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((hot[0].prob() - e).abs() < 1e-6 && hot[0].label_id == 1);
    }
}
