//! Where training starts: a fresh head, or the state a stopped run left behind.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::checkpoints::{checkpoint_epoch, META_TRAIN_HASH};
use super::metrics::{read_metrics, EpochMetrics};
use super::run_dir::{epoch_checkpoint, last_checkpoint, metrics_path, Hyperparameters};
use crate::checkpoint::load_head;
use crate::head::LinearHead;
use crate::optim::AdamW;

/// The head, its optimiser and the epochs done so far.
#[derive(Clone, Debug)]
pub struct TrainState {
    pub head: LinearHead,
    pub opt: AdamW,
    /// Epochs already done.
    pub epoch: usize,
    /// One line per epoch done.
    pub metrics: Vec<EpochMetrics>,
}

impl TrainState {
    /// A head initialised from `hp.seed` (PyTorch's `nn.Linear` init) and a fresh AdamW
    /// with `hp`'s settings; refuses settings AdamW itself would refuse.
    pub fn fresh(num_labels: usize, hidden: usize, hp: &Hyperparameters) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(hp.seed);
        let head = LinearHead::new_init(num_labels, hidden, &mut rng);
        let opt = AdamW {
            lr: hp.lr,
            weight_decay: hp.weight_decay,
            beta1: hp.beta1,
            beta2: hp.beta2,
            eps: hp.eps,
            ..AdamW::for_head(&head)
        };
        opt.validate().map_err(|e| anyhow!("AdamW: {e}"))?;
        Ok(Self {
            head,
            opt,
            epoch: 0,
            metrics: Vec::new(),
        })
    }

    /// The state of the run in `dir` after its last.safetensors; a run stopped before
    /// its first checkpoint starts afresh, so it ends as an uninterrupted run would.
    /// `train_hash` must be the hash of the split the run trained on.
    pub fn resume(
        dir: &Path,
        num_labels: usize,
        hidden: usize,
        hp: &Hyperparameters,
        train_hash: &str,
    ) -> Result<Self> {
        let last_path = last_checkpoint(dir);
        if !last_path.is_file() {
            refuse_lost_epochs(dir, &last_path)?;
            return Self::fresh(num_labels, hidden, hp);
        }
        // A checkpoint that does not load says what re-saving it would mean here.
        let last = load_head(&last_path, Some(hidden)).map_err(|e| {
            match newest_epoch_checkpoint(dir) {
                Some((epoch, copy)) => anyhow!(
                    "cannot resume {}: {e:#}, or copy {} (the same checkpoint) to it to resume after epoch {epoch}",
                    dir.display(),
                    copy.display()
                ),
                None => anyhow!("cannot resume {}: {e:#}", dir.display()),
            }
        })?;
        if last.metadata.get(META_TRAIN_HASH).map(String::as_str) != Some(train_hash) {
            bail!(
                "cannot resume {}: the train split differs from the one the run trained on",
                dir.display()
            );
        }
        let epoch = checkpoint_epoch(&last.metadata, &last_path)?;
        let opt = last
            .optim
            .ok_or_else(|| anyhow!("{}: no AdamW state to resume from", last_path.display()))?;
        let metrics = read_metrics(dir)?
            .into_iter()
            .filter(|m| m.epoch <= epoch)
            .collect();
        Ok(Self {
            head: last.head,
            opt,
            epoch,
            metrics,
        })
    }
}

/// Starting afresh is only right when no epoch was saved: a run folder whose
/// last.safetensors is gone while metrics.jsonl records finished epochs would have them
/// silently trained again and their metrics and checkpoints overwritten. The one
/// exception is a run that stopped while epoch 1 was being saved (killed, or the disk
/// full): metrics.jsonl is written before head-epoch-1, best and last, so it records
/// epoch 1 whichever of them were written, and redoing that epoch gives the same bytes
/// and writes them all (best among them, which copying head-epoch-1 to last would not).
fn refuse_lost_epochs(dir: &Path, last_path: &Path) -> Result<()> {
    let Some(newest) = read_metrics(dir)?.iter().map(|m| m.epoch).max() else {
        return Ok(());
    };
    if newest == 1 {
        return Ok(());
    }
    let remedy = if let Some((_, copy)) = newest_epoch_checkpoint(dir) {
        format!(
            "copy {} (the same checkpoint) to it to resume after epoch {newest}",
            copy.display()
        )
    } else {
        format!(
            "restore it, or remove {} to train from the first epoch",
            metrics_path(dir).display()
        )
    };
    bail!(
        "cannot resume {}: {} is missing but {} records {newest} finished epoch(s): {remedy}",
        dir.display(),
        last_path.display(),
        metrics_path(dir).display()
    )
}

/// The newest epoch metrics.jsonl records, and its head-epoch checkpoint where it exists:
/// the same state last.safetensors holds after that epoch.
fn newest_epoch_checkpoint(dir: &Path) -> Option<(usize, std::path::PathBuf)> {
    let newest = read_metrics(dir).ok()?.iter().map(|m| m.epoch).max()?;
    let path = epoch_checkpoint(dir, newest);
    path.is_file().then_some((newest, path))
}
