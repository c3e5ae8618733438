//! Flags and set-up shared by the commands that encode text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::backend::cpu::CpuBackend;
use crate::backend::DeviceRequest;
use crate::model::{ClsEncoder, Encoder, ModelDir};
use crate::tokenize::{BertTokenizer, DEFAULT_MAX_LENGTH};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model folder (config.json, model.safetensors, tokenizer.json or vocab.txt) or hub id.
    #[arg(long, default_value = "bert-base-chinese")]
    pub model: String,
    /// Never touch the network (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Truncate texts to this many tokens, [CLS] and [SEP] included.
    #[arg(long, default_value_t = DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
}

#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// CPU threads (0: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Tokens per encoder batch: sizes the activation workspace, allocated once.
    #[arg(long, default_value_t = 8192)]
    pub max_batch_tokens: usize,
}

/// A model folder's tokenizer and encoder, ready to run.
pub struct LoadedModel {
    pub dir: ModelDir,
    pub id: String,
    pub tokenizer: BertTokenizer,
    pub encoder: Box<dyn ClsEncoder>,
}

pub fn model_dir(args: &ModelArgs) -> Result<(ModelDir, String)> {
    let dir = ModelDir::open(&PathBuf::from(&args.model))?;
    Ok((dir, args.model.clone()))
}

pub fn load_model(model: &ModelArgs, device: &DeviceArgs) -> Result<LoadedModel> {
    let started = Instant::now();
    let (dir, id) = model_dir(model)?;
    let tokenizer = BertTokenizer::from_dir(&dir.dir, model.max_length)?;
    let (config, weights) = dir.load()?;
    let budget = device.max_batch_tokens.max(model.max_length);
    let backend = CpuBackend::new(device.threads)?;
    let encoder: Box<dyn ClsEncoder> = Box::new(Encoder::new(backend, config, &weights, budget)?);
    eprintln!(
        "loaded {} on {} in {:.1}s",
        dir.dir.display(),
        encoder.describe(),
        started.elapsed().as_secs_f64()
    );
    Ok(LoadedModel { dir, id, tokenizer, encoder })
}

/// Reads one text per line; names the file and line of the first non-UTF-8 line.
pub fn read_lines(path: &std::path::Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read {} ({e}): check the path", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| {
            anyhow::anyhow!("{} line {}: text is not UTF-8: convert the file to UTF-8 (e.g. iconv -f GBK -t UTF-8)", path.display(), i + 1)
        })?;
        if !text.trim().is_empty() {
            texts.push(text.to_string());
        }
    }
    Ok(texts)
}
