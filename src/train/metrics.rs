//! One line of metrics per epoch, and metrics.jsonl that holds them.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::run_dir::metrics_path;
use crate::fsio::atomic_write;

/// One line of metrics.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Mean over the epoch's steps of each batch's mean loss, as the recipe logs it.
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    /// The temperature fitted on the validation split for this epoch's head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    pub seconds: f64,
}

impl EpochMetrics {
    /// The line printed after each epoch.
    pub fn line(&self) -> String {
        let val = match (self.val_loss, self.val_acc) {
            (Some(loss), Some(acc)) => format!(", val loss {loss:.4} acc {acc:.4}"),
            _ => String::new(),
        };
        format!(
            "epoch {}: train loss {:.4} acc {:.4}{val} ({:.2}s)",
            self.epoch, self.train_loss, self.train_acc, self.seconds
        )
    }
}

/// The first epoch with the highest validation accuracy, as best.safetensors holds it.
pub fn best_epoch(metrics: &[EpochMetrics]) -> Option<&EpochMetrics> {
    metrics
        .iter()
        .filter(|m| m.val_acc.is_some())
        .fold(None, |best: Option<&EpochMetrics>, m| match best {
            Some(b) if b.val_acc >= m.val_acc => Some(b),
            _ => Some(m),
        })
}

/// The best validation accuracy among earlier epochs, for a resumed run.
pub(super) fn best_so_far(metrics: &[EpochMetrics]) -> Option<f64> {
    metrics.iter().filter_map(|m| m.val_acc).reduce(f64::max)
}

/// metrics.jsonl of a run folder; none when the run has not finished an epoch.
pub fn read_metrics(dir: &Path) -> Result<Vec<EpochMetrics>> {
    let path = metrics_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot read {} ({e})", path.display()),
    };
    // Numbered before blank lines are dropped, so that the line named is the file's.
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                anyhow!(
                    "{} line {}: not a metrics line ({e}): the file is damaged; restore it from a copy, or delete that line (that epoch's metrics are then lost)",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Rewrites metrics.jsonl whole, atomically: a kill mid-write cannot leave half a line.
pub fn write_metrics(dir: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in metrics {
        text.push_str(&serde_json::to_string(m).context("cannot serialise metrics")?);
        text.push('\n');
    }
    atomic_write(&metrics_path(dir), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The line printed after each epoch, with and without a validation split: four
    /// decimals for losses and accuracies, two for seconds.
    #[test]
    fn the_epoch_line_names_every_number() {
        let m = EpochMetrics {
            epoch: 3,
            train_loss: 0.123456,
            train_acc: 0.5,
            val_loss: Some(0.25),
            val_acc: Some(0.875),
            temperature: Some(1.5),
            seconds: 2.5,
        };
        assert_eq!(
            m.line(),
            "epoch 3: train loss 0.1235 acc 0.5000, val loss 0.2500 acc 0.8750 (2.50s)"
        );
        let no_val = EpochMetrics {
            val_loss: None,
            val_acc: None,
            ..m
        };
        assert_eq!(
            no_val.line(),
            "epoch 3: train loss 0.1235 acc 0.5000 (2.50s)"
        );
    }

    /// metrics.jsonl round-trips every field exactly (serde_json's float_roundtrip),
    /// a run folder without it has no epochs, blank lines are skipped, a damaged line is
    /// named by its line number in the file, and one that cannot be read is an error.
    #[test]
    fn metrics_jsonl_round_trips_and_names_a_damaged_line() {
        let dir = crate::testdir::TestDir::new("metrics");
        assert_eq!(read_metrics(&dir).unwrap(), Vec::new());
        let m = |epoch| EpochMetrics {
            epoch,
            train_loss: 0.1 + epoch as f64 / 3.0,
            train_acc: 0.5,
            val_loss: Some(1.0 / 7.0),
            val_acc: Some(0.75),
            temperature: Some(1.2345678901234567),
            seconds: 0.1,
        };
        let metrics = vec![m(1), m(2)];
        write_metrics(&dir, &metrics).unwrap();
        assert_eq!(read_metrics(&dir).unwrap(), metrics);

        let path = metrics_path(&dir);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("\n{text}not json\n")).unwrap();
        let err = read_metrics(&dir).unwrap_err().to_string();
        assert!(err.contains("line 4: not a metrics line"), "{err}");

        // Only a missing file means no epochs: one that cannot be read is an error.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = read_metrics(&dir).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
