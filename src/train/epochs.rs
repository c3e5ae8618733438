//! The epoch loop: shuffled batches of the train features through the head's steps,
//! then validation, calibration and the observer (which writes checkpoints) after
//! every epoch. A non-finite loss or head stops it before anything is handed on.

use std::time::Instant;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::head_trainer::{HeadDevice, HeadTrainer};
use super::metrics::{best_so_far, EpochMetrics};
use super::run_dir::Hyperparameters;
use super::state::TrainState;
use super::Features;
use crate::calibration::fit_temperature;
use crate::head::LinearHead;
use crate::optim::AdamW;

/// What a run trains on, and where.
pub struct TrainData<'a> {
    pub train: &'a Features,
    /// Scored after every epoch; without it, best is the last epoch.
    pub val: Option<&'a Features>,
    /// (L,) per-class loss weights, or None for the plain mean.
    pub class_weights: Option<Vec<f32>>,
    pub device: HeadDevice,
}

/// The end of one epoch, as the observer sees it.
pub struct EpochEnd<'a> {
    pub head: &'a LinearHead,
    pub opt: &'a AdamW,
    /// Every epoch's metrics so far, this one last.
    pub metrics: &'a [EpochMetrics],
    /// Whether this epoch's validation accuracy beats every earlier one (always true
    /// without validation: best is the last epoch).
    pub improved: bool,
}

impl EpochEnd<'_> {
    pub fn latest(&self) -> &EpochMetrics {
        self.metrics.last().expect("an epoch has ended")
    }
}

/// Whether to go on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Watches a run: progress, log lines, and each epoch's end (where checkpoints are
/// written, and where a caller may stop early).
pub trait Observer {
    /// `done` of `total` steps of this call.
    fn step(&mut self, _done: u64, _total: u64) {}
    /// A line for the log: every `log_every` steps, and after every epoch.
    fn log(&mut self, _line: &str) {}
    fn epoch_end(&mut self, _end: &EpochEnd) -> Result<Flow> {
        Ok(Flow::Continue)
    }
}

/// An observer that watches nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// How a call to [`train`] ended.
pub struct TrainOutcome {
    /// The head and optimiser after the last epoch run, and every epoch's metrics.
    pub state: TrainState,
    /// The head of the best epoch run in this call (the first highest validation
    /// accuracy, or the last epoch without validation); none when no epoch of this
    /// call beat the epochs before it.
    pub best: Option<(usize, LinearHead)>,
    /// Whether the observer stopped the run before `hp.epochs`.
    pub stopped: bool,
}

/// Trains from `start` up to `hp.epochs` epochs. `log_every` steps (0: never) give the
/// recipe's log line. Errors, writing nothing further, on a non-finite loss or head.
pub fn train(
    hp: &Hyperparameters,
    data: TrainData,
    start: TrainState,
    log_every: usize,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    let (train, val) = (data.train, data.val);
    let mut trainer = HeadTrainer::new(
        data.device,
        start.head.clone(),
        start.opt.clone(),
        hp.batch_size,
        data.class_weights,
    )?;
    let steps = train.labels.len() / hp.batch_size;
    let total = (hp.epochs.saturating_sub(start.epoch) * steps) as u64;
    let mut metrics = start.metrics;
    let mut best_acc = best_so_far(&metrics);
    let mut best = None;
    let mut last = (start.head, start.opt);
    let mut stopped = false;
    for epoch in start.epoch + 1..=hp.epochs {
        let started = Instant::now();
        let done_before = ((epoch - start.epoch - 1) * steps) as u64;
        let (train_loss, train_acc) =
            run_epoch(&mut trainer, train, epoch, hp, log_every, |step, line| {
                observer.step(done_before + step as u64, total);
                if let Some(line) = line {
                    observer.log(&line);
                }
            })?;
        let (head, opt) = trainer.state()?;
        check_finite(&head, epoch)?;
        let (val_loss, val_acc) = val.map(|v| evaluate(&head, v)).unzip();
        if let Some(loss) = val_loss.filter(|l| !l.is_finite()) {
            bail!("epoch {epoch}: the validation loss is {loss}: training stopped before saving it (try a smaller --lr)");
        }
        let temperature = val.map(|v| calibrate(&head, v));
        metrics.push(EpochMetrics {
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            temperature,
            seconds: started.elapsed().as_secs_f64(),
        });
        observer.log(&metrics[metrics.len() - 1].line());
        let improved = val_acc.is_none_or(|acc| best_acc.is_none_or(|b| acc > b));
        if improved {
            best_acc = val_acc;
            best = Some((epoch, head.clone()));
        }
        let end = EpochEnd {
            head: &head,
            opt: &opt,
            metrics: &metrics,
            improved,
        };
        let flow = observer.epoch_end(&end)?;
        last = (head, opt);
        if flow == Flow::Stop && epoch < hp.epochs {
            stopped = true;
            break;
        }
    }
    let epoch = metrics.last().map_or(start.epoch, |m| m.epoch);
    Ok(TrainOutcome {
        state: TrainState {
            head: last.0,
            opt: last.1,
            epoch,
            metrics,
        },
        best,
        stopped,
    })
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
    let mut x = vec![0.0f32; b * hidden]; // (B, C)
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
        let n = step + 1;
        if !loss.is_finite() {
            bail!("epoch {epoch} step {n}: the loss is {loss}: training stopped before saving this epoch (try a smaller --lr)");
        }
        loss_sum += loss as f64;
        correct_sum += correct;
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

/// An update can overflow the head without any loss having seen it yet.
fn check_finite(head: &LinearHead, epoch: usize) -> Result<()> {
    if head.weight.iter().chain(&head.bias).any(|v| !v.is_finite()) {
        bail!("epoch {epoch}: the head's weights are no longer finite: training stopped before saving them (try a smaller --lr)");
    }
    Ok(())
}

/// The row order of an epoch: its own seeded RNG, so that epoch N shuffles alike
/// whether the run got there straight or through a resume.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(epochs: usize) -> Hyperparameters {
        Hyperparameters {
            epochs,
            batch_size: 4,
            lr: 1e-2,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 3,
            drop_last: true,
            class_weights: "none".into(),
        }
    }

    /// `n` rows of 5 features whose label is the sign of the first.
    fn rows(n: usize) -> Features {
        let x: Vec<f32> = (0..n * 5)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let labels = x.chunks(5).map(|r| usize::from(r[0] > 0.0)).collect();
        Features { x, labels }
    }

    fn features() -> Features {
        rows(12)
    }

    fn data(f: &Features) -> TrainData<'_> {
        TrainData {
            train: f,
            val: Some(f),
            class_weights: None,
            device: HeadDevice::Cpu,
        }
    }

    /// Stopping after epoch 2 and continuing from the outcome's state gives the
    /// uninterrupted run's head, optimiser and metrics, bit for bit (the same f32
    /// operations in the same order, so no tolerance).
    #[test]
    fn continuing_from_a_stopped_state_is_exact() {
        let f = features();
        let fresh = || TrainState::fresh(2, 5, &hp(4)).unwrap();
        let straight = train(&hp(4), data(&f), fresh(), 0, &mut NoObserver).unwrap();

        struct StopAt(usize);
        impl Observer for StopAt {
            fn epoch_end(&mut self, end: &EpochEnd) -> Result<Flow> {
                Ok(if end.latest().epoch == self.0 {
                    Flow::Stop
                } else {
                    Flow::Continue
                })
            }
        }
        let first = train(&hp(4), data(&f), fresh(), 0, &mut StopAt(2)).unwrap();
        assert!(first.stopped);
        assert_eq!(first.state.epoch, 2);
        let rest = train(&hp(4), data(&f), first.state, 0, &mut NoObserver).unwrap();
        assert_eq!(rest.state.head, straight.state.head);
        assert_eq!(rest.state.opt, straight.state.opt);
        let strip = |m: &[EpochMetrics]| -> Vec<EpochMetrics> {
            m.iter()
                .map(|m| EpochMetrics {
                    seconds: 0.0,
                    ..m.clone()
                })
                .collect()
        };
        assert_eq!(strip(&rest.state.metrics), strip(&straight.state.metrics));
        assert!(straight.state.metrics[3].train_loss < straight.state.metrics[0].train_loss);
    }

    /// A run whose loss overflows in epoch 2 keeps epoch 1 as its last checkpoint: the
    /// run folder never receives the non-finite head.
    #[test]
    fn a_diverging_run_keeps_its_last_good_checkpoint() {
        use super::super::run_dir::last_checkpoint;
        use super::super::RunCheckpoints;
        struct Save(RunCheckpoints);
        impl Observer for Save {
            fn epoch_end(&mut self, end: &EpochEnd) -> Result<Flow> {
                self.0.save(end).map(|()| Flow::Continue)
            }
        }
        let dir = crate::testdir::TestDir::new("diverge");
        let labels = ["a".to_string(), "b".to_string()];
        let mut save =
            Save(RunCheckpoints::new(&dir, &labels, "hash", Default::default()).unwrap());
        let f = features();
        let one = train(
            &hp(1),
            data(&f),
            TrainState::fresh(2, 5, &hp(1)).unwrap(),
            0,
            &mut save,
        )
        .unwrap();
        let good = crate::checkpoint::load_head(&last_checkpoint(&dir), None).unwrap();
        assert_eq!(good.head, one.state.head);

        let mut diverging = one.state;
        diverging.opt.lr = 1e38;
        assert!(train(&hp(3), data(&f), diverging, 0, &mut save).is_err());
        let kept = crate::checkpoint::load_head(&last_checkpoint(&dir), None).unwrap();
        assert_eq!(kept.head, good.head);
        assert_eq!(kept.metadata["epoch"], "1");
    }

    /// An lr that overflows the head in one step stops the run with one error, and the
    /// observer never sees a non-finite head.
    #[test]
    fn a_non_finite_loss_stops_before_the_observer() {
        struct Count(usize);
        impl Observer for Count {
            fn epoch_end(&mut self, _: &EpochEnd) -> Result<Flow> {
                self.0 += 1;
                Ok(Flow::Continue)
            }
        }
        let f = features();
        let mut h = hp(2);
        h.lr = 1e38;
        let mut seen = Count(0);
        let start = TrainState::fresh(2, 5, &h).unwrap();
        let err = train(&h, data(&f), start, 0, &mut seen).err().unwrap();
        assert!(
            err.to_string().contains("no longer finite") || err.to_string().contains("the loss is"),
            "{err}"
        );
        assert_eq!(seen.0, 0);
    }

    #[test]
    fn epoch_order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(50, 3, 2), epoch_order(50, 3, 2));
        assert_ne!(epoch_order(50, 3, 2), epoch_order(50, 3, 3));
        let mut sorted = epoch_order(50, 0, 1);
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    /// With lr = 0 AdamW leaves the head as it is, so each epoch's numbers are the
    /// initial head's on the rows that epoch drew: 14 rows in batches of 4 make 3 steps
    /// over the first 12 rows of `epoch_order`, the last 2 dropped. The train loss is the
    /// mean of the 3 batch means, which with equal batches is `evaluate`'s mean over
    /// those 12 rows, and the accuracy counts them out of 12. The step losses are f32
    /// and evaluate rounds its mean to f32 once: 1e-6 is a few ulps of a loss near 0.7.
    /// Every epoch then ties the first's validation accuracy, so only the first
    /// improves and is best; each records the temperature fitted to the head's
    /// validation logits; a stop asked for after the last epoch is not early; progress
    /// counts the 9 steps of the run; and with `log_every` 2 each epoch logs its
    /// step 2 only.
    #[test]
    fn a_frozen_head_gives_epoch_means_over_the_steps_taken() {
        struct Record {
            improved: Vec<bool>,
            steps: Vec<(u64, u64)>,
            logs: Vec<String>,
        }
        impl Observer for Record {
            fn step(&mut self, done: u64, total: u64) {
                self.steps.push((done, total));
            }
            fn log(&mut self, line: &str) {
                self.logs.push(line.to_string());
            }
            fn epoch_end(&mut self, end: &EpochEnd) -> Result<Flow> {
                self.improved.push(end.improved);
                Ok(if end.latest().epoch == 3 {
                    Flow::Stop
                } else {
                    Flow::Continue
                })
            }
        }
        let f = rows(14);
        let mut h = hp(3);
        h.lr = 0.0;
        let start = TrainState::fresh(2, 5, &h).unwrap();
        let head = start.head.clone();
        let mut record = Record {
            improved: Vec::new(),
            steps: Vec::new(),
            logs: Vec::new(),
        };
        let out = train(&h, data(&f), start, 2, &mut record).unwrap();
        assert_eq!(out.state.head, head);
        assert_eq!(out.state.metrics.len(), 3);
        for m in &out.state.metrics {
            let drawn = &epoch_order(14, h.seed, m.epoch)[..12];
            let x: Vec<f32> = drawn
                .iter()
                .flat_map(|&r| f.x[r * 5..(r + 1) * 5].iter().copied())
                .collect();
            let y: Vec<usize> = drawn.iter().map(|&r| f.labels[r]).collect();
            let (loss, correct) = head.evaluate(&x, &y);
            assert!(
                (m.train_loss - loss as f64).abs() < 1e-6,
                "epoch {}: train loss {} vs {loss}",
                m.epoch,
                m.train_loss
            );
            assert_eq!(m.train_acc, correct as f64 / 12.0, "epoch {}", m.epoch);
            let t = fit_temperature(&head.logits(&f.x), &f.labels, 2);
            assert_eq!(m.temperature, Some(t), "epoch {}", m.epoch);
        }
        let step_lines: Vec<&str> = record
            .logs
            .iter()
            .filter(|l| l.contains(" step "))
            .map(|l| &l[..l.find(" loss").unwrap()])
            .collect();
        assert_eq!(
            step_lines,
            ["epoch 1 step 2", "epoch 2 step 2", "epoch 3 step 2"]
        );
        assert_eq!(record.improved, [true, false, false]);
        assert_eq!(out.best.map(|(epoch, _)| epoch), Some(1));
        assert!(!out.stopped);
        let progress: Vec<(u64, u64)> = (1..=9).map(|done| (done, 9)).collect();
        assert_eq!(record.steps, progress);
    }

    /// The best head is the first epoch of highest validation accuracy, as `best_epoch`
    /// picks it from metrics.jsonl, and `improved` marks exactly the epochs that beat
    /// every earlier one. The accuracy must rise after epoch 1 for this to mean
    /// anything: ties alone cannot tell `>` from `<`.
    #[test]
    fn best_is_the_first_highest_validation_accuracy() {
        struct Improved(Vec<bool>);
        impl Observer for Improved {
            fn epoch_end(&mut self, end: &EpochEnd) -> Result<Flow> {
                self.0.push(end.improved);
                Ok(Flow::Continue)
            }
        }
        let f = features();
        let h = hp(6);
        let mut improved = Improved(Vec::new());
        let start = TrainState::fresh(2, 5, &h).unwrap();
        let out = train(&h, data(&f), start, 0, &mut improved).unwrap();
        let accs: Vec<f64> = out
            .state
            .metrics
            .iter()
            .map(|m| m.val_acc.unwrap())
            .collect();
        let expected: Vec<bool> = (0..accs.len())
            .map(|i| accs[..i].iter().all(|&a| accs[i] > a))
            .collect();
        assert!(expected[1..].contains(&true), "accuracies {accs:?}");
        assert_eq!(improved.0, expected, "accuracies {accs:?}");
        let best = super::super::best_epoch(&out.state.metrics).unwrap().epoch;
        assert_eq!(out.best.map(|(epoch, _)| epoch), Some(best));
    }

    /// Without a validation split nothing scores the head after an epoch, so an update
    /// that overflows it (lr 1e38 makes the step size lr / (1 - beta1) = 1e39, beyond
    /// f32) after a step whose loss was finite must still stop the run.
    #[test]
    fn a_head_that_overflows_without_validation_stops_the_run() {
        let f = features();
        let mut h = hp(1);
        h.batch_size = 12;
        h.lr = 1e38;
        let start = TrainState::fresh(2, 5, &h).unwrap();
        let data = TrainData {
            val: None,
            ..data(&f)
        };
        let err = train(&h, data, start, 0, &mut NoObserver).err().unwrap();
        assert!(err.to_string().contains("no longer finite"), "{err}");
    }
}
