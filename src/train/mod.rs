//! The head trainer as a library: AdamW steps of a `Linear(hidden, num_labels)` head
//! on features computed once, on the CPU or the GPU, epoch by epoch, with metrics,
//! checkpoints and an exact resume. `bertcls train` drives it with a run folder and a
//! progress bar; the tests and the head search drive it the same way.
//!
//! ```text
//! state.rs         TrainState: a fresh head, or a stopped run's state (resume)
//! head_trainer.rs  HeadTrainer: where the steps run (CPU or CUDA head)
//! epochs.rs        train(): the epoch loop, and the Observer that watches it
//! metrics.rs       EpochMetrics and metrics.jsonl
//! checkpoints.rs   RunCheckpoints: head-epoch-N, best and last .safetensors
//! run_dir.rs       the run folder: its files, run.json, its lock
//! search.rs        train --search: a grid of trials with early stopping, in parallel
//! ```

mod checkpoints;
mod epochs;
mod head_trainer;
mod metrics;
pub mod run_dir;
pub mod search;
mod state;

pub use checkpoints::{
    RunCheckpoints, META_EPOCH, META_LABELS, META_TEMPERATURE, META_TRAIN_HASH,
    META_TRAIN_LABEL_COUNTS,
};
pub use epochs::{
    epoch_order, train, EpochEnd, Flow, NoObserver, Observer, TrainData, TrainOutcome,
};
pub use head_trainer::{HeadDevice, HeadTrainer};
pub use metrics::{best_epoch, read_metrics, write_metrics, EpochMetrics};
pub use state::TrainState;

/// Features (rows, C) of a split, row-major, and each row's label.
#[derive(Clone, Debug)]
pub struct Features {
    pub x: Vec<f32>,
    pub labels: Vec<usize>,
}
