//! Iterate averaging (Polyak-Ruppert): a running weighted mean of the head's parameters
//! over the optimiser's steps. Minibatch steps scatter the iterate around the optimum of
//! a convex loss (a linear head's cross-entropy is one), by an amount set by the
//! gradient noise; the mean of the scattered iterates sits closer to the optimum than
//! any one of them, for one add per parameter per step.

use serde::{Deserialize, Serialize};

use crate::head::LinearHead;

/// Which iterates are averaged, and with what weights.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Averaging {
    /// Exponential moving average, decay 1 - 1 / (horizon_epochs x steps per epoch),
    /// normalised by the sum of its weights (as Adam's bias correction) so that the
    /// first steps are not pulled toward the initial head.
    Ema { horizon_epochs: f64 },
    /// The uniform mean of each epoch's iterates, restarted at every epoch.
    EpochMean,
}

/// The average of the iterates so far: sum_i w_i theta_i / sum_i w_i, in f64.
#[derive(Clone, Debug)]
pub struct IterateAverage {
    averaging: Averaging,
    steps_per_epoch: usize,
    /// The factor on the earlier weights at every step (1 for an epoch's mean).
    decay: f64,
    steps: usize,
    /// (L * C + L,): the weighted sums of the weight, then of the bias.
    sum: Vec<f64>,
    total_weight: f64,
}

impl IterateAverage {
    /// An empty average for a head of `num_params` parameters trained `steps_per_epoch`
    /// steps an epoch, starting at an epoch's first step.
    pub fn new(averaging: Averaging, steps_per_epoch: usize, num_params: usize) -> Self {
        let steps_per_epoch = steps_per_epoch.max(1);
        let decay = match averaging {
            Averaging::Ema { horizon_epochs } => {
                1.0 - 1.0 / (horizon_epochs * steps_per_epoch as f64).max(1.0)
            }
            Averaging::EpochMean => 1.0,
        };
        Self {
            averaging,
            steps_per_epoch,
            decay,
            steps: 0,
            sum: vec![0.0; num_params],
            total_weight: 0.0,
        }
    }

    /// Adds the iterate after a step.
    pub fn add(&mut self, head: &LinearHead) {
        let epoch_start = self.steps.is_multiple_of(self.steps_per_epoch);
        let decay = match self.averaging {
            Averaging::EpochMean if epoch_start => 0.0,
            _ => self.decay,
        };
        for (s, &p) in self
            .sum
            .iter_mut()
            .zip(head.weight.iter().chain(&head.bias))
        {
            *s = decay * *s + p as f64;
        }
        self.total_weight = decay * self.total_weight + 1.0;
        self.steps += 1;
    }

    /// The average shaped as `like`, or None before the first step.
    pub fn head(&self, like: &LinearHead) -> Option<LinearHead> {
        if self.steps == 0 {
            return None;
        }
        let mean = |s: &f64| (s / self.total_weight) as f32;
        let (weight, bias) = self.sum.split_at(like.weight.len());
        Some(LinearHead {
            weight: weight.iter().map(mean).collect(),
            bias: bias.iter().map(mean).collect(),
            ..like.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 head whose weight is `w` and bias `-w`.
    fn head(w: f32) -> LinearHead {
        LinearHead {
            weight: vec![w],
            bias: vec![-w],
            num_labels: 1,
            hidden: 1,
        }
    }

    /// The epoch mean of iterates 1, 2, 3 is 2, and after the epoch's last step the next
    /// epoch starts afresh: iterates 10, 20 average 15 (exact in binary floats).
    #[test]
    fn an_epoch_mean_restarts_every_epoch() {
        let mut avg = IterateAverage::new(Averaging::EpochMean, 3, 2);
        assert_eq!(avg.head(&head(0.0)), None);
        for w in [1.0, 2.0, 3.0] {
            avg.add(&head(w));
        }
        assert_eq!(avg.head(&head(0.0)), Some(head(2.0)));
        for w in [10.0, 20.0] {
            avg.add(&head(w));
        }
        assert_eq!(avg.head(&head(0.0)), Some(head(15.0)));
    }

    /// A horizon of one epoch of 2 steps is decay 1/2: iterates 4 then 8 weigh 1/2 and 1,
    /// (2 + 8) / 1.5 = 6.667 (f32 rounding only: 1e-6). The first iterate alone is its own
    /// average: the normalisation leaves no pull toward zero.
    #[test]
    fn an_ema_weighs_recent_iterates_and_is_unbiased_from_the_start() {
        let mut avg = IterateAverage::new(
            Averaging::Ema {
                horizon_epochs: 1.0,
            },
            2,
            2,
        );
        avg.add(&head(4.0));
        assert_eq!(avg.head(&head(0.0)), Some(head(4.0)));
        avg.add(&head(8.0));
        let w = avg.head(&head(0.0)).unwrap().weight[0];
        assert!((w - 20.0 / 3.0).abs() < 1e-6, "{w}");
    }
}
