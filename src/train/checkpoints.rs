//! A run folder's checkpoints: head-epoch-N, best and last .safetensors, each the head,
//! its AdamW state and metadata that `test`, `predict` and `--resume` read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::epochs::EpochEnd;
use super::metrics::write_metrics;
use super::run_dir::{best_checkpoint, epoch_checkpoint, last_checkpoint};
use crate::checkpoint::save_head;

/// Checkpoint metadata keys. `labels` is what `test` and `predict` read label names from.
pub const META_EPOCH: &str = "epoch";
pub const META_LABELS: &str = "labels";
pub const META_TRAIN_HASH: &str = "train_data_sha256";
/// Rows per label id in the train split (JSON): `test` flags a head trained on one class.
pub const META_TRAIN_LABEL_COUNTS: &str = "train_label_counts";
/// The calibration temperature `test` and `predict` divide the logits by.
pub const META_TEMPERATURE: &str = "temperature";

/// Writes metrics.jsonl and the checkpoints of each epoch into a run folder.
pub struct RunCheckpoints {
    dir: PathBuf,
    /// The metadata every checkpoint carries (model, labels, data hash, ...); the epoch,
    /// its validation accuracy and temperature are added per epoch.
    metadata: BTreeMap<String, String>,
}

impl RunCheckpoints {
    /// `labels` and `train_hash` are stored under their keys beside `metadata`.
    pub fn new(
        dir: &Path,
        labels: &[String],
        train_hash: &str,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        metadata.insert(META_LABELS.into(), serde_json::to_string(labels)?);
        metadata.insert(META_TRAIN_HASH.into(), train_hash.into());
        Ok(Self {
            dir: dir.to_path_buf(),
            metadata,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// metrics.jsonl, then head-epoch-N, best when it improved, then last: `--resume`
    /// trusts last, so it goes after the others, and redoing an epoch rewrites them
    /// with the same bytes.
    pub fn save(&self, end: &EpochEnd) -> Result<()> {
        write_metrics(&self.dir, end.metrics)?;
        let m = end.latest();
        let mut meta = self.metadata.clone();
        meta.insert(META_EPOCH.into(), m.epoch.to_string());
        if let Some(acc) = m.val_acc {
            meta.insert("val_acc".into(), acc.to_string());
        }
        if let Some(t) = m.temperature {
            meta.insert(META_TEMPERATURE.into(), t.to_string());
        }
        let (head, opt) = (end.head, Some(end.opt));
        save_head(&epoch_checkpoint(&self.dir, m.epoch), head, opt, &meta)?;
        if end.improved {
            save_head(&best_checkpoint(&self.dir), head, opt, &meta)?;
        }
        save_head(&last_checkpoint(&self.dir), head, opt, &meta)
    }
}

/// The epoch a checkpoint of ours was written after.
pub(super) fn checkpoint_epoch(metadata: &BTreeMap<String, String>, path: &Path) -> Result<usize> {
    metadata
        .get(META_EPOCH)
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "{}: no epoch in its metadata: not written by bertcls train",
                path.display()
            )
        })
}
