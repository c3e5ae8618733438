//! The folder a `train` run writes and `test` / `predict` read:
//!
//! ```text
//! run.json                    what was trained on what: RunInfo
//! metrics.jsonl               one JSON object per epoch
//! head-epoch-N.safetensors    the head + AdamW state after epoch N
//! best.safetensors            the epoch with the best validation accuracy (last without validation)
//! last.safetensors            the latest epoch: `--resume` continues from it
//! ```

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsio::atomic_write;
use crate::head::ClassWeighting;
use crate::model::Pooling;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub seed: u64,
    /// The recipe drops the last incomplete batch of each epoch.
    pub drop_last: bool,
    /// `none` (the recipe's plain mean) or `balanced`; runs written before the flag
    /// existed trained with none.
    #[serde(default = "no_class_weights")]
    pub class_weights: String,
}

fn no_class_weights() -> String {
    ClassWeighting::None.name().to_string()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub bertcls_version: String,
    /// What `--model` named (a folder or a hub id) and the folder it resolved to.
    pub model: String,
    pub model_dir: String,
    pub weights_sha256: String,
    /// Tokenizer files and their fingerprint (files + max_length).
    pub tokenizer_files: Vec<String>,
    pub tokenizer_fingerprint: String,
    pub max_length: usize,
    /// How features were read off the encoder; runs written before the flag used [CLS].
    #[serde(default)]
    pub pooling: Pooling,
    pub hidden_size: usize,
    pub labels: Vec<String>,
    pub data: String,
    pub text_column: String,
    pub label_column: String,
    pub hyperparameters: Hyperparameters,
    pub device: String,
    pub precision: String,
    pub created: String,
    /// How `train --search` chose the hyper-parameters above; absent for a plain run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchRecord>,
}

/// What run.json records of a `train --search`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchRecord {
    /// Where the validation rows came from: the split's name, or `held-out` rows of train.
    pub validation: String,
    /// With `held-out`: the fraction of train held out (drawn by the seed) and its rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f64>,
    pub validation_rows: usize,
    pub learning_rates: Vec<f64>,
    pub weight_decays: Vec<f64>,
    pub poolings: Vec<Pooling>,
    /// Most epochs a trial runs; it stops after `patience` epochs without a lower
    /// validation loss and keeps the head of its lowest.
    pub max_epochs: usize,
    pub patience: usize,
    pub trials: usize,
    /// The chosen trial's validation accuracy and loss.
    pub best_val_acc: f64,
    pub best_val_loss: f64,
    pub seconds: f64,
}

impl RunInfo {
    pub fn path(run: &Path) -> PathBuf {
        run.join("run.json")
    }

    pub fn load(run: &Path) -> Result<Self> {
        let path = Self::path(run);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow!("cannot read {} ({e}): pass --run with a folder written by bertcls train, or --head FILE", path.display())
        })?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{} is not a bertcls run.json ({e}): it is corrupt or from another tool",
                path.display()
            )
        })
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("cannot serialise run.json")?;
        atomic_write(&Self::path(run), json.as_bytes())
    }
}

pub fn epoch_checkpoint(run: &Path, epoch: usize) -> PathBuf {
    run.join(format!("head-epoch-{epoch}.safetensors"))
}

pub fn best_checkpoint(run: &Path) -> PathBuf {
    run.join("best.safetensors")
}

pub fn last_checkpoint(run: &Path) -> PathBuf {
    run.join("last.safetensors")
}

pub fn metrics_path(run: &Path) -> PathBuf {
    run.join("metrics.jsonl")
}
