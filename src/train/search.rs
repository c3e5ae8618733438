//! Head search on cached features: a grid of AdamW learning rates and weight decays, each
//! trial trained with early stopping on the validation loss, the trials spread over the
//! cores. Features are computed once, so a trial costs only head steps: seconds, not
//! encoder passes. Each trial is a run of the trainer (`train::train`) with an observer
//! that stops it early.

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use super::epochs::{train, EpochEnd, Flow, Observer, TrainData};
use super::head_trainer::HeadDevice;
use super::run_dir::Hyperparameters;
use super::state::TrainState;
use super::Features;
use crate::head::LinearHead;

/// The learning rates tried: half-decades from 1e-5 to 1e-1.
pub const LEARNING_RATES: [f64; 9] = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1];
/// The AdamW weight decays tried.
pub const WEIGHT_DECAYS: [f64; 3] = [0.0, 0.01, 0.1];

/// What every trial shares: `base` is the run's hyper-parameters (batch size, betas,
/// seed, ...), each trial replacing the learning rate and weight decay, with
/// `base.epochs` the most epochs a trial runs.
#[derive(Clone, Debug)]
pub struct SearchConfig {
    pub base: Hyperparameters,
    /// Epochs without a lower validation loss after which a trial stops.
    pub patience: usize,
}

/// One trial's hyper-parameters; `variant` indexes the feature sets searched over (the
/// poolings, say).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TrialParams {
    pub variant: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// A finished trial: the head of its epoch with the lowest validation loss.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    #[serde(flatten)]
    pub params: TrialParams,
    /// The epoch whose head the trial keeps (lowest validation loss); 0 when none
    /// finished.
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub val_loss: f64,
    pub val_acc: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// The trainer stopped it on a non-finite loss or head: too large a learning rate.
    pub diverged: bool,
    #[serde(skip)]
    pub head: LinearHead,
}

/// Every (lr, weight decay) of the grid for each of `variants` feature sets, in a fixed
/// order: variant, then lr, then weight decay.
pub fn grid(variants: usize) -> Vec<TrialParams> {
    let mut out = Vec::new();
    for variant in 0..variants {
        for &lr in &LEARNING_RATES {
            for &weight_decay in &WEIGHT_DECAYS {
                out.push(TrialParams {
                    variant,
                    lr,
                    weight_decay,
                });
            }
        }
    }
    out
}

/// Runs every trial of `params` on `data[variant]` = (train, validation), in parallel on
/// rayon's pool; the result is in `params`' order and the same for any thread count.
///
/// Trials train on features standardised with the train split's column statistics
/// (encoder features are small, e5-small's columns have a std near 0.05, so the weights a
/// good head needs are large, and AdamW, whose steps are about lr per weight, would need
/// hundreds of epochs to reach them); each kept head is folded back to run on the raw
/// features.
pub fn run_trials(
    data: &[(Features, Features)],
    params: &[TrialParams],
    num_labels: usize,
    class_weights: Option<&[f32]>,
    config: &SearchConfig,
) -> Result<Vec<Trial>> {
    let scaled: Vec<(Standardizer, Features, Features)> = data
        .iter()
        .map(|(train, val)| {
            let s = Standardizer::fit(train);
            let (t, v) = (s.apply(train), s.apply(val));
            (s, t, v)
        })
        .collect();
    params
        .par_iter()
        .map(|p| {
            let (s, train, val) = &scaled[p.variant];
            let mut trial = run_trial(train, val, *p, num_labels, class_weights, config)?;
            trial.head = s.fold(&trial.head);
            Ok(trial)
        })
        .collect()
}

/// Keeps the head of the lowest validation loss and stops the run `patience` epochs
/// after it.
struct EarlyStopping {
    patience: usize,
    best: Option<(f64, LinearHead)>,
    best_epoch: usize,
}

impl Observer for EarlyStopping {
    fn epoch_end(&mut self, end: &EpochEnd) -> Result<Flow> {
        let m = end.latest();
        let loss = m.val_loss.unwrap_or(f64::INFINITY);
        if self.best.as_ref().is_none_or(|(best, _)| loss < *best) {
            self.best = Some((loss, end.head.clone()));
            self.best_epoch = m.epoch;
        } else if m.epoch - self.best_epoch >= self.patience {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }
}

/// One trial through the trainer (`train::train`, on the CPU head): a fresh head from
/// the seed, AdamW with the trial's lr and weight decay, until `patience` epochs pass
/// without a lower validation loss or `base.epochs` are done. A run the trainer stops
/// on a non-finite loss keeps its best epoch before that, if any.
pub fn run_trial(
    train_features: &Features,
    val: &Features,
    params: TrialParams,
    num_labels: usize,
    class_weights: Option<&[f32]>,
    config: &SearchConfig,
) -> Result<Trial> {
    let hp = Hyperparameters {
        lr: params.lr,
        weight_decay: params.weight_decay,
        ..config.base.clone()
    };
    let hidden = train_features.x.len() / train_features.labels.len().max(1);
    let start = TrainState::fresh(num_labels, hidden, &hp)?;
    let initial = start.head.clone();
    let mut observer = EarlyStopping {
        patience: config.patience,
        best: None,
        best_epoch: 0,
    };
    let data = TrainData {
        train: train_features,
        val: Some(val),
        class_weights: class_weights.map(<[f32]>::to_vec),
        device: HeadDevice::Cpu,
    };
    let outcome = train(&hp, data, start, 0, &mut observer);
    let (metrics, diverged) = match outcome {
        Ok(o) => (o.state.metrics, false),
        Err(_) => (Vec::new(), true),
    };
    let (head, best_epoch) = match observer.best {
        Some((_, head)) => (head, observer.best_epoch),
        None => (initial, 0),
    };
    let m = metrics.iter().find(|m| m.epoch == best_epoch);
    // A diverged run's metrics are lost with its error: score its kept head afresh.
    let (val_loss, val_correct) = head.evaluate(&val.x, &val.labels);
    let (train_loss, train_correct) = head.evaluate(&train_features.x, &train_features.labels);
    Ok(Trial {
        params,
        best_epoch,
        epochs_run: metrics.last().map_or(best_epoch, |m| m.epoch),
        val_loss: m.and_then(|m| m.val_loss).unwrap_or(val_loss as f64),
        val_acc: m
            .and_then(|m| m.val_acc)
            .unwrap_or(val_correct as f64 / val.labels.len().max(1) as f64),
        train_loss: m.map_or(train_loss as f64, |m| m.train_loss),
        train_acc: m.map_or(
            train_correct as f64 / train_features.labels.len().max(1) as f64,
            |m| m.train_acc,
        ),
        diverged,
        head,
    })
}

/// Per-column standardisation z = (x - mean) / std of features, fitted on a train split.
/// A head trained on z folds back into one on x (`fold`), so what is saved runs on the
/// encoder's features as they are.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Column means and standard deviations of `f`, in f64; a constant column gets std 1
    /// (it carries nothing, and must not divide by 0).
    pub fn fit(f: &Features) -> Self {
        let n = f.labels.len().max(1) as f64;
        let c = f.x.len() / f.labels.len().max(1);
        let mut mean = vec![0.0f64; c];
        for row in f.x.chunks_exact(c) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; c];
        for row in f.x.chunks_exact(c) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v as f64 - m) * (v as f64 - m);
            }
        }
        let std = var
            .iter()
            .map(|s| (s / n).sqrt())
            .map(|s| if s > 0.0 { s } else { 1.0 })
            .collect();
        Self { mean, std }
    }

    pub fn apply(&self, f: &Features) -> Features {
        let c = self.mean.len();
        let x =
            f.x.chunks_exact(c)
                .flat_map(|row| {
                    row.iter()
                        .zip(self.mean.iter().zip(&self.std))
                        .map(|(&v, (m, s))| ((v as f64 - m) / s) as f32)
                })
                .collect();
        Features {
            x,
            labels: f.labels.clone(),
        }
    }

    /// The head on raw features equal to `head` on standardised ones:
    /// W z + b = (W / std) x + (b - sum_c W_c mean_c / std_c).
    pub fn fold(&self, head: &LinearHead) -> LinearHead {
        let c = head.hidden;
        let mut weight = head.weight.clone();
        let mut bias = head.bias.clone();
        for (row, b) in weight.chunks_exact_mut(c).zip(bias.iter_mut()) {
            let mut shift = 0.0f64;
            for ((w, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                let scaled = *w as f64 / s;
                shift += scaled * m;
                *w = scaled as f32;
            }
            *b = (*b as f64 - shift) as f32;
        }
        LinearHead {
            weight,
            bias,
            ..head.clone()
        }
    }
}

/// The rows `rows` of `f`, in that order.
pub fn select(f: &Features, rows: &[usize]) -> Features {
    let c = f.x.len() / f.labels.len().max(1);
    Features {
        x: rows
            .iter()
            .flat_map(|&r| &f.x[r * c..(r + 1) * c])
            .copied()
            .collect(),
        labels: rows.iter().map(|&r| f.labels[r]).collect(),
    }
}

/// XORed into the seed of the hold-out draw, so it is another random stream than the
/// epoch shuffles (seeded seed + epoch).
const HOLD_OUT_STREAM: u64 = 0x05ee_d0fb_a1d0;

/// Splits `rows` into (kept, held out): round(fraction * rows) rows, at least one, drawn
/// by `seed`, held out for validation; both parts keep the rows' original order.
pub fn hold_out(rows: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let held = ((fraction * rows as f64).round() as usize).clamp(1, rows.saturating_sub(1));
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ HOLD_OUT_STREAM));
    let mut out = order.split_off(rows - held);
    order.sort_unstable();
    out.sort_unstable();
    (order, out)
}

/// The index of the best trial: highest validation accuracy, ties to the lower
/// validation loss, then to the earlier trial.
pub fn best_trial(trials: &[Trial]) -> Option<usize> {
    (0..trials.len()).reduce(|a, b| {
        let (ta, tb) = (&trials[a], &trials[b]);
        if tb.val_acc > ta.val_acc || (tb.val_acc == ta.val_acc && tb.val_loss < ta.val_loss) {
            b
        } else {
            a
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamW;
    use crate::train::EpochMetrics;
    use rand::Rng;

    /// Two Gaussian blobs in 8 dimensions, 2 units apart along the first axis.
    fn blobs(rows: usize, seed: u64) -> Features {
        let mut rng = StdRng::seed_from_u64(seed);
        let labels: Vec<usize> = (0..rows).map(|i| i % 2).collect();
        let x = labels
            .iter()
            .flat_map(|&y| {
                let centre = if y == 1 { 1.0 } else { -1.0 };
                (0..8)
                    .map(|d| {
                        let noise: f32 = rng.random_range(-1.5..1.5);
                        if d == 0 {
                            centre + noise
                        } else {
                            noise
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Features { x, labels }
    }

    fn config() -> SearchConfig {
        SearchConfig {
            base: Hyperparameters {
                epochs: 40,
                batch_size: 16,
                lr: 0.0,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                seed: 7,
                drop_last: true,
                class_weights: "none".into(),
            },
            patience: 3,
        }
    }

    #[test]
    fn the_grid_covers_every_lr_and_decay_per_variant() {
        let g = grid(2);
        assert_eq!(g.len(), 2 * 9 * 3);
        assert_eq!((g[0].lr, g[0].weight_decay, g[0].variant), (1e-5, 0.0, 0));
        assert_eq!(
            (g[53].lr, g[53].weight_decay, g[53].variant),
            (1e-1, 0.1, 1)
        );
    }

    /// The same seed gives bit-identical trials on one thread or many.
    #[test]
    fn trials_are_deterministic_across_thread_counts() {
        let data = vec![(blobs(96, 1), blobs(40, 2))];
        let params = grid(1);
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_trials(&data, &params, 2, None, &config()).unwrap())
        };
        let (one, four) = (on(1), on(4));
        assert_eq!((one.len(), four.len()), (params.len(), params.len()));
        for (a, b) in one.iter().zip(&four) {
            assert_eq!(a.head, b.head);
            assert_eq!((a.val_loss, a.best_epoch), (b.val_loss, b.best_epoch));
        }
        assert_eq!(best_trial(&one), best_trial(&four));
    }

    /// The kept head is the one of the lowest validation loss: re-evaluating it, folded
    /// back onto the raw features, gives the recorded loss (up to the f32 rounding of the
    /// fold, ~1e-7 relative); a learning rate of 1e-5 barely moves in 40 epochs, so the
    /// search must prefer a larger one on separable blobs.
    #[test]
    fn the_best_trial_learns_and_keeps_its_best_epoch() {
        let (train, val) = (blobs(96, 1), blobs(40, 2));
        let trials = run_trials(&[(train, val.clone())], &grid(1), 2, None, &config()).unwrap();
        for t in &trials {
            let (loss, correct) = t.head.evaluate(&val.x, &val.labels);
            assert!((loss as f64 - t.val_loss).abs() < 1e-5 * t.val_loss.max(1.0));
            assert_eq!(correct as f64 / 40.0, t.val_acc);
            assert!(t.best_epoch <= t.epochs_run && t.epochs_run <= 40);
            assert!(t.epochs_run == 40 || t.epochs_run - t.best_epoch >= 3);
            assert!(!t.diverged);
        }
        let best = &trials[best_trial(&trials).unwrap()];
        assert!(best.params.lr > 1e-5, "{:?}", best.params);
        assert!(best.val_acc >= 0.75, "val acc {}", best.val_acc);
    }

    #[test]
    fn ties_go_to_the_lower_validation_loss() {
        let trial = |acc, loss| Trial {
            params: TrialParams {
                variant: 0,
                lr: 1e-3,
                weight_decay: 0.0,
            },
            best_epoch: 1,
            epochs_run: 1,
            val_loss: loss,
            val_acc: acc,
            train_loss: 0.0,
            train_acc: 0.0,
            diverged: false,
            head: LinearHead {
                weight: vec![0.0],
                bias: vec![0.0],
                num_labels: 1,
                hidden: 1,
            },
        };
        let trials = [
            trial(0.8, 0.5),
            trial(0.9, 0.4),
            trial(0.9, 0.3),
            trial(0.9, 0.3),
        ];
        assert_eq!(best_trial(&trials), Some(2));
    }

    /// A head on standardised features and its fold give the same logits on raw ones.
    #[test]
    fn a_folded_head_matches_on_raw_features() {
        let f = Features {
            x: vec![0.1, 5.0, 3.0, 0.3, 4.0, 3.0, -0.2, 6.5, 3.0],
            labels: vec![0, 1, 0],
        };
        let s = Standardizer::fit(&f);
        assert_eq!(s.std[2], 1.0, "a constant column keeps std 1");
        let z = s.apply(&f);
        let col0: f64 = z.x.iter().step_by(3).map(|&v| v as f64).sum();
        assert!(col0.abs() < 1e-6, "standardised columns have mean 0");
        let head = LinearHead {
            weight: vec![0.5, -1.0, 0.25, 2.0, 0.1, -0.3],
            bias: vec![0.2, -0.4],
            num_labels: 2,
            hidden: 3,
        };
        let (a, b) = (head.logits(&z.x), s.fold(&head).logits(&f.x));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn hold_out_partitions_the_rows_by_seed() {
        let (kept, held) = hold_out(100, 0.1, 4);
        assert_eq!((kept.len(), held.len()), (90, 10));
        let mut all = [kept.clone(), held.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(hold_out(100, 0.1, 4), (kept, held.clone()));
        assert_ne!(hold_out(100, 0.1, 5).1, held);
        assert_eq!(hold_out(5, 0.01, 0).1.len(), 1);
    }

    #[test]
    fn select_takes_rows_in_order() {
        let f = Features {
            x: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            labels: vec![0, 1, 0],
        };
        let s = select(&f, &[2, 0]);
        assert_eq!((s.x, s.labels), (vec![4.0, 5.0, 0.0, 1.0], vec![0, 0]));
    }

    /// Early stopping keeps the head of the first lowest validation loss (a later equal
    /// loss is not lower) and stops exactly `patience` epochs after it: losses 1.0, 0.8,
    /// 0.9, 0.8, 0.85 with patience 3 keep epoch 2 and stop at epoch 5.
    #[test]
    fn early_stopping_keeps_the_first_lowest_loss_and_waits_patience_epochs() {
        let opt = AdamW::new(2);
        let head = |epoch: usize| LinearHead {
            weight: vec![epoch as f32],
            bias: vec![0.0],
            num_labels: 1,
            hidden: 1,
        };
        let mut stopping = EarlyStopping {
            patience: 3,
            best: None,
            best_epoch: 0,
        };
        let mut metrics = Vec::new();
        let mut flows = Vec::new();
        for (epoch, loss) in (1..).zip([1.0, 0.8, 0.9, 0.8, 0.85]) {
            metrics.push(EpochMetrics {
                epoch,
                train_loss: 0.0,
                train_acc: 0.0,
                val_loss: Some(loss),
                val_acc: Some(0.5),
                temperature: None,
                seconds: 0.0,
            });
            let end = EpochEnd {
                head: &head(epoch),
                opt: &opt,
                metrics: &metrics,
                improved: false,
            };
            flows.push(stopping.epoch_end(&end).unwrap());
        }
        use Flow::{Continue, Stop};
        assert_eq!(flows, [Continue, Continue, Continue, Continue, Stop]);
        assert_eq!(stopping.best_epoch, 2);
        assert_eq!(stopping.best, Some((0.8, head(2))));
    }

    /// numpy's population statistics (`x.mean(0)`, `x.std(0)`, ddof 0) of the columns
    /// (0.1, 0.3, -0.2), (5, 4, 6.5), (3, 3, 3) and (1000.1, 1000.4, 999.8), in f64
    /// from the same f32 inputs: 1e-12 is rounding headroom, which the last column's
    /// offset puts beyond a one-pass variance (sum v^2 - n mean^2 loses 1.5e-10 of its
    /// std to cancellation). numpy's std of the constant column is 0, where ours is 1 by
    /// design. The fold test alone cannot see a wrong std: any positive scale folds back
    /// consistently.
    #[test]
    fn standardizer_statistics_match_numpy() {
        let f = Features {
            x: vec![
                0.1, 5.0, 3.0, 1000.1, 0.3, 4.0, 3.0, 1000.4, -0.2, 6.5, 3.0, 999.8,
            ],
            labels: vec![0, 1, 0],
        };
        let s = Standardizer::fit(&f);
        let (mean, std) = (
            [
                0.06666667014360428,
                5.166666666666667,
                3.0,
                1000.0999959309896,
            ],
            [
                0.20548047264769892,
                1.0274023338281628,
                1.0,
                0.2449639251996669,
            ],
        );
        for c in 0..4 {
            assert!(
                (s.mean[c] - mean[c]).abs() < 1e-12,
                "mean {c}: {:?}",
                s.mean
            );
            assert!((s.std[c] - std[c]).abs() < 1e-12, "std {c}: {:?}", s.std);
        }
    }

    /// A trial trains with its own learning rate and weight decay, not the base run's
    /// (0 for both here): two trials that differ only in one of them end with different
    /// heads.
    #[test]
    fn a_trial_uses_its_own_lr_and_weight_decay() {
        let (train, val) = (blobs(48, 1), blobs(16, 2));
        let trial = |lr, weight_decay| {
            let params = TrialParams {
                variant: 0,
                lr,
                weight_decay,
            };
            run_trial(&train, &val, params, 2, None, &config()).unwrap()
        };
        let base = trial(1e-2, 0.0);
        assert_ne!(base.head, trial(1e-2, 0.1).head);
        assert_ne!(base.head, trial(3e-2, 0.0).head);
    }

    /// A trial that diverges in its first epoch keeps no epoch: it reports the initial
    /// head, scored afresh, with its accuracies counted over each split's rows.
    #[test]
    fn a_trial_diverging_in_epoch_one_scores_its_initial_head() {
        let (train, val) = (blobs(48, 1), blobs(16, 2));
        let params = TrialParams {
            variant: 0,
            lr: 1e38,
            weight_decay: 0.0,
        };
        let t = run_trial(&train, &val, params, 2, None, &config()).unwrap();
        assert!(t.diverged);
        assert_eq!((t.best_epoch, t.epochs_run), (0, 0));
        let initial = TrainState::fresh(2, 8, &config().base).unwrap().head;
        assert_eq!(t.head, initial);
        let (val_loss, val_correct) = initial.evaluate(&val.x, &val.labels);
        let (train_loss, train_correct) = initial.evaluate(&train.x, &train.labels);
        assert_eq!(t.val_loss, val_loss as f64);
        assert_eq!(t.val_acc, val_correct as f64 / 16.0);
        assert_eq!(t.train_loss, train_loss as f64);
        assert_eq!(t.train_acc, train_correct as f64 / 48.0);
    }
}
