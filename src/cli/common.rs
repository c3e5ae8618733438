//! Flags and set-up shared by the commands that encode text: model resolution, device
//! choice, loading and encoding, and the texts given on the command line.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use rayon::prelude::*;

use super::progress::{count, Progress};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, Precision};
use crate::backend::{Device, DeviceRequest};
use crate::chunk::{check_window, mean_of_windows, LongTexts, WindowTokenizer};
use crate::features::sha256_file;
use crate::hub::{self, ResolvedModel};
use crate::model::weights::ShardIndex;
use crate::model::{
    encode_all, BertConfig, Checkpoint, Encoder, FeatureEncoder, ModelDir, Pooling,
};
use crate::tokenize::{BertTokenizer, TokenizedText, DEFAULT_MAX_LENGTH};

/// `--max-batch-tokens` when not given, on the CPU and on a GPU. A GPU needs larger
/// batches to keep its GEMMs busy: on the H200, BERT-base ran 1.52 million tokens/s in
/// bf16 at 32,768 tokens a batch against 1.20 million at 4,096 (265,000 against 227,000
/// in fp32), and the GPU check encodes with 32,768 (1.7 GB of workspace and attention
/// scratch at BERT-base size).
const DEFAULT_MAX_BATCH_TOKENS_CPU: usize = 8192;
const DEFAULT_MAX_BATCH_TOKENS_CUDA: usize = 32768;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model folder (config.json, model.safetensors, tokenizer.json or vocab.txt) or hub id.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    pub model: String,
    /// Never touch the network (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Truncate texts to this many tokens, [CLS] and [SEP] included.
    #[arg(long, default_value_t = DEFAULT_MAX_LENGTH, allow_negative_numbers = true)]
    pub max_length: usize,
    /// How a text's feature is read off the last hidden state: each command sets it
    /// (train and encode from --pooling, test and predict from the run).
    #[arg(skip)]
    pub pooling: Pooling,
    /// Texts longer than max_length: truncated, or windows (set like `pooling`).
    #[arg(skip)]
    pub long: LongTexts,
    /// The files `model`, `max_length`, `pooling` and `long` were read from where no flag
    /// gave them.
    #[arg(skip)]
    pub recorded: Recorded,
}

/// The run.json or head checkpoint that named the model, and the ones that gave
/// max_length, pooling and long: their errors name that file, not a `--model`,
/// `--max-length`, `--pooling` or `--stride` the user never passed (predict and test have
/// no --pooling or --stride to pass). None where a flag (or the default) gave the value.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub model: Option<PathBuf>,
    pub max_length: Option<PathBuf>,
    pub pooling: Option<PathBuf>,
    pub long: Option<PathBuf>,
}

impl ModelArgs {
    pub fn offline(&self) -> bool {
        self.offline || hub::offline_from_env()
    }

    /// Refuses a max_length that leaves no room for [CLS] and [SEP] or runs past the
    /// model's positions, naming the flag or the file it came from.
    fn check_max_length(&self, config: &BertConfig, model_id: &str) -> Result<()> {
        let (n, positions) = (self.max_length, config.max_position_embeddings);
        match (&self.recorded.max_length, n < 2) {
            (None, true) => bail!(
                "--max-length {n} leaves no room for [CLS] and [SEP]: use at least 2"
            ),
            (None, false) if n > positions => bail!(
                "--max-length {n}: beyond the {positions} positions {model_id} has (max_position_embeddings in config.json): pass --max-length {positions} or less"
            ),
            (Some(file), true) => bail!(
                "{} records max_length {n}, which leaves no room for [CLS] and [SEP]: the file is damaged; restore the max_length the head was trained with",
                file.display()
            ),
            (Some(file), false) if n > positions => bail!(
                "{} records max_length {n}, beyond the {positions} positions {model_id} has (max_position_embeddings in config.json): restore the max_length the head was trained with, or pass --model with the folder of the weights it was trained on",
                file.display()
            ),
            _ => Ok(()),
        }
    }

    /// `check_window` for a chunk stride some file recorded, naming that file.
    fn check_recorded_window(&self, stride: usize) -> Result<()> {
        let Err(e) = check_window(self.max_length, stride) else {
            return Ok(());
        };
        let Some(file) = &self.recorded.long else {
            return Err(e);
        };
        let n = self.max_length;
        match &self.recorded.max_length {
            Some(_) => bail!(
                "{} records windows of max_length {n} sharing {stride} tokens (--long chunk), leaving no room for new tokens besides [CLS] and [SEP]: the file is damaged; restore the max_length and stride the head was trained with",
                file.display()
            ),
            None => bail!(
                "--max-length {n}: {} records windows sharing {stride} tokens (--long chunk), leaving windows of {n} tokens no room for new ones besides [CLS] and [SEP]: pass --max-length {} or more",
                file.display(),
                stride.saturating_add(3)
            ),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// GPU precision: fp32 (strict, the default; with --run, or train --resume: the run's), tf32
    /// (tensor-core GEMMs), bf16 or fp16 (weights and activations in half, tensor cores,
    /// fp32 accumulation). The CPU backend computes in fp32 whatever this says.
    // An Option, not a default value: `--run` must tell a given flag (checked
    // against the run) from an absent one (the run's).
    #[arg(long, value_name = "PRECISION")]
    pub precision: Option<Precision>,
    /// CPU threads (0: every core).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub threads: usize,
    /// Tokens per encoder batch, at least --max-length: sizes the activation workspace,
    /// allocated once [default: 8192 on the CPU, 32768 on a GPU, or --max-length when
    /// larger].
    // An Option: a default below a large --max-length grows to it; a value given does not.
    #[arg(long, allow_negative_numbers = true)]
    pub max_batch_tokens: Option<usize>,
}

impl DeviceArgs {
    /// `--precision`, fp32 when not given.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    /// `--device` resolved, computing in `--precision` (fp32 when not given). A half or
    /// TF32 precision on the CPU is noted once: the CPU computes, and a run records, fp32.
    pub fn resolve(&self) -> Result<EncoderDevice> {
        let device = self.resolve_in(self.precision())?;
        if device.device == Device::Cpu && self.precision() != Precision::Fp32 {
            eprintln!(
                "note: --precision {} applies on a GPU; the CPU computes in fp32",
                self.precision()
            );
        }
        Ok(device)
    }

    /// `--device` resolved, computing in `precision` (a run's). `auto` prints its CPU
    /// notice here: a command calls this once and passes the result down.
    pub fn resolve_in(&self, precision: Precision) -> Result<EncoderDevice> {
        Ok(EncoderDevice {
            device: self.device.resolve()?,
            precision,
            threads: self.threads,
            max_batch_tokens: self.max_batch_tokens,
        })
    }
}

/// The device flags of a command, resolved: where and how its encoder runs.
#[derive(Clone, Copy, Debug)]
pub struct EncoderDevice {
    pub device: Device,
    /// What the CUDA backend computes in; the CPU computes in fp32 whatever it says.
    pub precision: Precision,
    /// CPU threads (0: every core).
    pub threads: usize,
    /// Tokens per encoder batch, when given.
    pub max_batch_tokens: Option<usize>,
}

/// A resolved model folder: config and tokenizer, no weights loaded yet.
pub struct ModelFiles {
    pub resolved: ResolvedModel,
    pub dir: ModelDir,
    pub config: BertConfig,
    /// Never dropped: a command loads one model and then exits, and freeing a Unigram
    /// tokenizer's trie (millions of small maps) took 15% of a one-text `encode` with
    /// e5-small; the OS takes the memory back at exit (clang's -disable-free, for the same
    /// reason).
    pub tokenizer: ManuallyDrop<BertTokenizer>,
}

pub fn model_files(args: &ModelArgs) -> Result<ModelFiles> {
    // A model a run or head names that no longer loads (moved or deleted since train):
    // the error says which file named it and what to pass instead.
    let named_by = |e: anyhow::Error| {
        match &args.recorded.model {
        Some(file) => anyhow!(
            "the model {} names cannot be loaded ({e:#}): pass --model with the folder of the weights it was trained on",
            file.display()
        ),
        None => e,
    }
    };
    let resolved = hub::resolve_model(&args.model, args.offline()).map_err(named_by)?;
    let dir = ModelDir::open(&resolved.dir).map_err(named_by)?;
    let config = dir.config().map_err(named_by)?;
    args.check_max_length(&config, &resolved.id)?;
    if let LongTexts::Chunk { stride } = args.long {
        args.check_recorded_window(stride)?;
    }
    let tokenizer = BertTokenizer::from_dir(&dir.dir, args.max_length).map_err(named_by)?;
    let tokenizer = ManuallyDrop::new(tokenizer);
    check_tokenizer_fits(&tokenizer, &config, &dir).map_err(named_by)?;
    Ok(ModelFiles {
        resolved,
        dir,
        config,
        tokenizer,
    })
}

/// Refuses a tokenizer with ids past the model's vocabulary (another model's tokenizer,
/// say), which would otherwise pass until some text happened to produce such an id. The
/// weights' word embeddings have config.json's vocab_size rows (checked at load), so
/// config.json stands for both. A tokenizer smaller than vocab_size is normal: models pad
/// their vocabulary to a round size.
fn check_tokenizer_fits(
    tokenizer: &BertTokenizer,
    config: &BertConfig,
    dir: &ModelDir,
) -> Result<()> {
    let Some(largest) = tokenizer.largest_id() else {
        return Ok(());
    };
    if largest as usize >= config.vocab_size {
        let tokenizer_file = tokenizer.sources().first().map(|p| p.display().to_string());
        bail!(
            "{} has token ids up to {largest} but {} has vocab_size {}: the tokenizer is another model's; put this model's tokenizer files beside its config.json and weights",
            tokenizer_file.unwrap_or_default(),
            dir.config.display(),
            config.vocab_size
        );
    }
    Ok(())
}

/// A model's tokenizer and encoder on the chosen device, ready to run.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub device: Device,
    pub precision: Precision,
    pub encoder: Box<dyn FeatureEncoder>,
    /// The features `encode_texts` and the feature cache produce.
    pub pooling: Pooling,
    pub long: LongTexts,
}

impl LoadedModel {
    /// Floats in one text's feature: the hidden size, twice it for `cls+mean`.
    pub fn feature_width(&self) -> usize {
        self.pooling.width(self.encoder.hidden_size())
    }

    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.files.tokenizer
    }

    pub fn id(&self) -> &str {
        &self.files.resolved.id
    }

    /// The precision features were computed in: the CPU is always strict fp32.
    pub fn precision_name(&self) -> String {
        precision_name(self.device, self.precision)
    }
}

/// "cpu" or "cuda": the backend part of an [`EncodeSpec`](crate::features::EncodeSpec).
pub fn backend_name(device: Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
    }
}

/// The precision features are computed in on `device`: the CPU is always strict fp32.
pub fn precision_name(device: Device, precision: Precision) -> String {
    match device {
        Device::Cpu => "fp32".into(),
        Device::Cuda(_) => precision.to_string(),
    }
}

pub fn load_model(model: &ModelArgs, device: &EncoderDevice) -> Result<LoadedModel> {
    load_model_files(model_files(model)?, model, device)
}

/// Refuses a `-lastN` pooling of more layers than the model of `files` has, naming the
/// flag or the file (`recorded`) it came from. Train calls it for each of its poolings
/// before it sizes a head or encodes anything: a search's later poolings would otherwise
/// fail at their forward, after the earlier ones' encoding, and a head sized by an absurd
/// N aborts the process allocating it.
pub fn check_pooling_layers(
    pooling: Pooling,
    files: &ModelFiles,
    recorded: Option<&Path>,
) -> Result<()> {
    let layers = files.config.num_hidden_layers;
    if pooling.layers <= layers {
        return Ok(());
    }
    let model = files.dir.dir.display();
    match recorded {
        None => bail!("--pooling {pooling}: {model} has {layers} layers; pool at most that many"),
        Some(file) => bail!(
            "{} records pooling {pooling}, of {} layers, but {model} has {layers}: the file is damaged, or the model is not the one it was trained on; restore the file, or pass --model with the folder of the weights it was trained on",
            file.display(),
            pooling.layers
        ),
    }
}

/// The encoder of `files` (resolved from `model`) on `device`.
pub fn load_model_files(
    files: ModelFiles,
    model: &ModelArgs,
    device: &EncoderDevice,
) -> Result<LoadedModel> {
    let started = Instant::now();
    let config = files.config.clone();
    check_pooling_layers(model.pooling, &files, model.recorded.pooling.as_deref())?;
    let ckpt = Checkpoint::open(&files.dir.dir)?;
    let budget = match device.max_batch_tokens {
        Some(tokens) if tokens < model.max_length => bail!(
            "--max-batch-tokens {tokens}: a batch holds at least one text of up to {} tokens (max_length); pass at least {}",
            model.max_length,
            model.max_length
        ),
        Some(tokens) => tokens,
        None => match device.device {
            Device::Cpu => DEFAULT_MAX_BATCH_TOKENS_CPU,
            Device::Cuda(_) => DEFAULT_MAX_BATCH_TOKENS_CUDA,
        }
        .max(model.max_length),
    };
    let encoder: Box<dyn FeatureEncoder> = match device.device {
        Device::Cpu => Box::new(Encoder::load(
            CpuBackend::new(device.threads)?,
            config,
            &ckpt,
            budget,
        )?),
        Device::Cuda(n) => {
            let backend = CudaBackend::new(n, device.precision, budget)?;
            Box::new(Encoder::load(backend, config, &ckpt, budget)?)
        }
    };
    eprintln!(
        "loaded {} ({}) on {} in {:.1}s",
        files.resolved.id,
        files.dir.dir.display(),
        encoder.describe(),
        started.elapsed().as_secs_f64()
    );
    Ok(LoadedModel {
        files,
        device: device.device,
        precision: device.precision,
        encoder,
        pooling: model.pooling,
        long: model.long,
    })
}

/// Features (N, C) of `texts` pooled as `model.pooling`, long texts as `model.long`
/// says, with a progress bar; prints the time and tokens/s.
pub fn encode_texts(model: &mut LoadedModel, texts: &[String], what: &str) -> Result<Vec<f32>> {
    let started = Instant::now();
    let mut progress = Progress::new(texts.len() as u64, &format!("encoding {what}"));
    let (x, real_tokens) = text_features(model, texts, |done| progress.set(done as u64))?;
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "encoded {what}: {}, {real_tokens} tokens in {secs:.1}s ({:.0} tokens/s)",
        count(texts.len(), "text"),
        real_tokens as f64 / secs
    );
    Ok(x)
}

/// Features (N, C) of `texts` and the tokens encoded for them. With `--long chunk` every
/// window of every text is encoded (`progress` counts windows then) and each text's
/// feature is the mean of its windows'.
pub fn text_features(
    model: &mut LoadedModel,
    texts: &[String],
    progress: impl FnMut(usize),
) -> Result<(Vec<f32>, usize)> {
    let tokens = tokenize_texts(model, texts)?;
    encode_tokenized(model, &tokens, progress)
}

/// `texts` tokenized as `model.long` says: one sequence a text, or (`--long chunk`) its
/// windows, flattened, with the number of windows of each text.
pub struct TokenizedTexts {
    sequences: Vec<TokenizedText>,
    windows_per_text: Option<Vec<usize>>,
}

/// The tokenizing half of `text_features`, apart so that a bulk job can time it.
pub fn tokenize_texts(model: &LoadedModel, texts: &[String]) -> Result<TokenizedTexts> {
    match model.long {
        LongTexts::Truncate => Ok(TokenizedTexts {
            sequences: model.files.tokenizer.encode_many(texts)?,
            windows_per_text: None,
        }),
        LongTexts::Chunk { stride } => {
            let windows = WindowTokenizer::new(&model.files.tokenizer, stride)?;
            let per_text = texts
                .par_iter()
                .map(|t| windows.windows(t))
                .collect::<Result<Vec<_>>>()?;
            let counts = per_text.iter().map(Vec::len).collect();
            Ok(TokenizedTexts {
                sequences: per_text.into_iter().flatten().collect(),
                windows_per_text: Some(counts),
            })
        }
    }
}

/// The encoding half of `text_features`: (N, C) features and the tokens encoded.
pub fn encode_tokenized(
    model: &mut LoadedModel,
    tokens: &TokenizedTexts,
    progress: impl FnMut(usize),
) -> Result<(Vec<f32>, usize)> {
    let x = encode_all(
        model.encoder.as_mut(),
        &tokens.sequences,
        model.pooling,
        progress,
    )?;
    let encoded = tokens.sequences.iter().map(|t| t.ids.len()).sum();
    Ok(match &tokens.windows_per_text {
        None => (x, encoded),
        Some(counts) => (mean_of_windows(&x, counts, model.feature_width()), encoded),
    })
}

/// The file that stands for a folder's weights in messages: `model.safetensors`, or the
/// shard index when there is none.
pub fn weights_file(dir: &Path) -> PathBuf {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        single
    } else {
        dir.join("model.safetensors.index.json")
    }
}

/// Refuses weights other than those a head was trained on: `trained_on` is the weights
/// sha256 that `record` (a run.json or a head checkpoint) holds. A head joined to other
/// weights of the same width runs, and its answers are wrong with nothing to show it.
/// An empty `trained_on` (the recipe's .pth, which records none) has nothing to compare.
/// With the hash memo warm this is a stat of the weights, not a read.
pub fn check_trained_weights(files: &ModelFiles, trained_on: &str, record: &Path) -> Result<()> {
    // A folder without weights is refused by the loader, in a message that says what
    // to do about it.
    let file = weights_file(&files.dir.dir);
    if trained_on.is_empty() || !file.is_file() {
        return Ok(());
    }
    let sha = weights_sha256(&files.dir.dir)?;
    if sha != trained_on {
        bail!(
            "{} has other weights than the ones {} was trained on (weights_sha256 {trained_on}, these {sha}): pass --model with the folder of the weights it was trained on, or train a head for these weights",
            file.display(),
            record.display()
        );
    }
    Ok(())
}

/// sha256 of the weights: of `model.safetensors`, or of the shard index and every shard.
pub fn weights_sha256(dir: &Path) -> Result<String> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return sha256_file(&single);
    }
    let index = ShardIndex::read(dir)?;
    let mut joined = sha256_file(&index.path)?;
    for shard in index.shards() {
        joined.push_str(&sha256_file(&dir.join(shard))?);
    }
    Ok(crate::features::hash_split(&[joined], &[0]))
}

/// Texts given on the command line: as arguments, or `--file F` with one per line.
#[derive(Args, Clone, Debug)]
pub struct TextArgs {
    /// Texts, as arguments.
    pub texts: Vec<String>,
    /// Read texts from this file, one per line.
    #[arg(long, conflicts_with = "texts")]
    pub file: Option<PathBuf>,
}

impl TextArgs {
    /// The texts given, or None when there are neither arguments nor --file.
    pub fn given(&self) -> Result<Option<Vec<String>>> {
        match &self.file {
            Some(path) => read_lines(path).map(Some),
            None if self.texts.is_empty() => Ok(None),
            None => Ok(Some(self.texts.clone())),
        }
    }
}

/// Writes `text` to standard output, returning the error (`> file` on a full disk) where
/// println! panics.
pub fn print_stdout(text: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// A failed write to standard output, named as such: the bare "No space left on device"
/// reads as if the cache or an --out file were full.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    anyhow!("cannot write to standard output ({e})")
}

/// Reads one text per line; names the file and line of the first non-UTF-8 line.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_text_file(path)?, &mut bytes)
        .map_err(|e| anyhow!("--file {}: cannot read ({e})", path.display()))?;
    parse_lines(&bytes, &path.display().to_string())
}

/// `--file`, open for reading. A folder is refused here: it opens, and only its first
/// read fails, with the OS's "Is a directory" and no flag named.
pub fn open_text_file(path: &Path) -> Result<std::fs::File> {
    if path.is_dir() {
        bail!(
            "--file {}: a folder, not a file; pass a text file with one text per line",
            path.display()
        );
    }
    std::fs::File::open(path).map_err(|e| {
        anyhow!(
            "--file {}: cannot read ({e}): check the path",
            path.display()
        )
    })
}

/// One text per non-empty line of `bytes`; `source` names them in errors.
pub fn parse_lines(bytes: &[u8], source: &str) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    // A UTF-8 byte-order mark (Windows editors write one) is not part of the first text,
    // as predict --file reads it.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| {
            anyhow!("{source} line {}: text is not UTF-8: convert it to UTF-8 (e.g. iconv -f GBK -t UTF-8)", i + 1)
        })?;
        if !text.trim().is_empty() {
            texts.push(text.to_string());
        }
    }
    Ok(texts)
}

/// One name of `--labels a,b`, without the spaces around it: `--labels "neg, pos"` names
/// `pos`, not ` pos`, which would print like it and match nothing.
pub fn label_name(value: &str) -> Result<String, String> {
    Ok(value.trim().to_string())
}
