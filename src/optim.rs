//! AdamW with the exact semantics of `torch.optim.AdamW` (amsgrad off, not maximising).
//!
//! PyTorch computes the step's scalars (bias corrections, step size) as Python
//! floats, in f64, and applies them to f32 tensors with f32 element-wise ops; we do
//! the same, in the same order, so a trajectory stays within f32 rounding of
//! PyTorch's, not merely close to it.

use crate::head::{HeadGrads, LinearHead};

/// The recipe's optimiser: PyTorch's defaults except lr = 1e-5.
pub const DEFAULT_LR: f64 = 1e-5;
pub const DEFAULT_BETAS: (f64, f64) = (0.9, 0.999);
pub const DEFAULT_EPS: f64 = 1e-8;
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.01;

/// One optimiser state over all parameters flattened in a fixed order (for a head:
/// weight then bias), so saving it is two flat vectors and a step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken so far; the next `update` is step `step + 1`.
    pub step: u64,
    /// First moment (`exp_avg`).
    pub m: Vec<f32>,
    /// Second moment (`exp_avg_sq`).
    pub v: Vec<f32>,
}

impl AdamW {
    /// Fresh state for `num_params` parameters with the recipe's hyper-parameters.
    pub fn new(num_params: usize) -> Self {
        AdamW {
            lr: DEFAULT_LR,
            beta1: DEFAULT_BETAS.0,
            beta2: DEFAULT_BETAS.1,
            eps: DEFAULT_EPS,
            weight_decay: DEFAULT_WEIGHT_DECAY,
            step: 0,
            m: vec![0.0; num_params],
            v: vec![0.0; num_params],
        }
    }

    pub fn for_head(head: &LinearHead) -> Self {
        Self::new(head.num_params())
    }

    /// The same checks `torch.optim.AdamW.__init__` makes, plus state sizes, so a
    /// hand-edited or foreign checkpoint fails at load and not mid-run.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(self.lr) {
            return Err(format!("invalid learning rate {}", self.lr));
        }
        if !ok(self.eps) {
            return Err(format!("invalid epsilon {}", self.eps));
        }
        if !ok(self.weight_decay) {
            return Err(format!("invalid weight decay {}", self.weight_decay));
        }
        for b in [self.beta1, self.beta2] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("invalid beta {b}: must be in [0, 1)"));
            }
        }
        if self.m.len() != self.v.len() {
            return Err(format!(
                "exp_avg has {} values but exp_avg_sq {}",
                self.m.len(),
                self.v.len()
            ));
        }
        Ok(())
    }

    /// One AdamW step over `params`, tensors in the state's order, each with its
    /// gradient; their total size must be the state's.
    pub fn update(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        let total: usize = params.iter().map(|p| p.len()).sum();
        assert_eq!(
            total,
            self.m.len(),
            "AdamW state holds {} values, parameters {total}",
            self.m.len()
        );
        assert_eq!(
            params.len(),
            grads.len(),
            "one gradient per parameter tensor"
        );
        self.step += 1;
        let t = self.step as f64;
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        // exp_avg.lerp_(grad, 1 - beta1): PyTorch's lerp with weight < 0.5 is
        // m + w * (g - m), which rounds differently from b1 * m + (1 - b1) * g.
        let w1 = (1.0 - self.beta1) as f32;
        let b2 = self.beta2 as f32;
        let one_minus_b2 = (1.0 - self.beta2) as f32;
        let step_size = (self.lr / (1.0 - self.beta1.powf(t))) as f32;
        let bias_correction2_sqrt = (1.0 - self.beta2.powf(t)).sqrt() as f32;
        let eps = self.eps as f32;

        let mut offset = 0;
        for (p, g) in params.iter_mut().zip(grads) {
            assert_eq!(p.len(), g.len(), "gradient and parameter sizes differ");
            let (m, v) = (
                &mut self.m[offset..offset + p.len()],
                &mut self.v[offset..offset + p.len()],
            );
            for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m).zip(v) {
                *p *= decay;
                *m = if w1 < 0.5 {
                    *m + w1 * (g - *m)
                } else {
                    g - (g - *m) * (1.0 - w1)
                };
                *v = *v * b2 + one_minus_b2 * g * g;
                let denom = v.sqrt() / bias_correction2_sqrt + eps;
                *p += -step_size * (*m / denom);
            }
            offset += p.len();
        }
    }

    /// One step on a head's weight and bias.
    pub fn update_head(&mut self, head: &mut LinearHead, grads: &HeadGrads) {
        self.update(
            &mut [&mut head.weight, &mut head.bias],
            &[&grads.weight, &grads.bias],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_matches_hand_computation() {
        let mut opt = AdamW {
            lr: 0.1,
            ..AdamW::new(2)
        };
        let mut p = [1.0f32, -2.0];
        let g = [0.5f32, -0.25];
        opt.update(&mut [&mut p], &[&g]);
        // Step 1: m = 0.1 g, v = 0.001 g^2; bias corrections 0.1 and 0.001 turn
        // them back into g and g^2, so the update is lr * g / (|g| + eps) after
        // decaying p by 1 - lr * wd = 0.999.
        for (i, (&p0, &g)) in [1.0f64, -2.0].iter().zip(&g).enumerate() {
            let g = g as f64;
            let expected = p0 * 0.999 - 0.1 * g / (g.abs() + 1e-8);
            assert!(
                (p[i] as f64 - expected).abs() < 1e-6,
                "p[{i}] {} vs {expected}",
                p[i]
            );
            assert!((opt.m[i] as f64 - 0.1 * g).abs() < 1e-7);
            assert!((opt.v[i] as f64 - 0.001 * g * g).abs() < 1e-9);
        }
        assert_eq!(opt.step, 1);
    }

    #[test]
    fn second_step_uses_bias_corrections_of_step_two() {
        let mut opt = AdamW {
            lr: 0.01,
            weight_decay: 0.0,
            ..AdamW::new(1)
        };
        let mut p = [0.0f32];
        opt.update(&mut [&mut p], &[&[1.0]]);
        opt.update(&mut [&mut p], &[&[-1.0]]);
        // m2 = 0.9 * 0.1 - 0.1 = -0.01, v2 = 0.999 * 0.001 + 0.001 = 0.001999;
        // step 2 moves by 0.01 * (m2 / 0.19) / (sqrt(v2 / 0.001999) + eps).
        let m2 = -0.01f64;
        let second = -0.01 * (m2 / (1.0 - 0.81)) / (1.0 + 1e-8);
        let expected = -0.01 + second;
        assert!(
            (p[0] as f64 - expected).abs() < 1e-8,
            "{} vs {expected}",
            p[0]
        );
    }

    #[test]
    fn defaults_are_the_recipes() {
        let opt = AdamW::new(3);
        assert_eq!(
            (opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay),
            (1e-5, 0.9, 0.999, 1e-8, 0.01)
        );
        assert!(opt.validate().is_ok());
        assert!(AdamW {
            beta2: 1.0,
            ..AdamW::new(1)
        }
        .validate()
        .is_err());
    }

    /// torch.optim.AdamW's own argument checks (`0.0 <= lr`, `0.0 <= eps`,
    /// `0.0 <= betas[i] < 1.0`, `0.0 <= weight_decay`): zero is allowed everywhere, a
    /// negative or non-finite value nowhere, and a beta of 1 is refused.
    #[test]
    fn validate_accepts_zeros_and_refuses_what_torch_refuses() {
        let zeros = AdamW {
            lr: 0.0,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            weight_decay: 0.0,
            ..AdamW::new(2)
        };
        assert_eq!(zeros.validate(), Ok(()));
        let base = AdamW::new(2);
        for bad in [f64::INFINITY, f64::NAN, -1e-3] {
            for (what, opt) in [
                (
                    "learning rate",
                    AdamW {
                        lr: bad,
                        ..base.clone()
                    },
                ),
                (
                    "epsilon",
                    AdamW {
                        eps: bad,
                        ..base.clone()
                    },
                ),
                (
                    "weight decay",
                    AdamW {
                        weight_decay: bad,
                        ..base.clone()
                    },
                ),
                (
                    "beta",
                    AdamW {
                        beta1: bad,
                        ..base.clone()
                    },
                ),
                (
                    "beta",
                    AdamW {
                        beta2: bad,
                        ..base.clone()
                    },
                ),
            ] {
                let err = opt.validate().unwrap_err();
                assert!(err.contains(what), "{what} {bad}: {err}");
            }
        }
        let err = AdamW {
            v: vec![0.0; 3],
            ..base
        }
        .validate()
        .unwrap_err();
        assert!(
            err.contains("exp_avg has 2 values but exp_avg_sq 3"),
            "{err}"
        );
    }

    /// exp_avg.lerp_(grad, 1 - beta1) rounds as ATen's scalar lerp (Lerp.h): weight
    /// below 0.5 gives m + w (g - m), otherwise g - (g - m) (1 - w). The two agree in
    /// exact arithmetic, so only f32 rounding tells them apart: m = 0.2, g = 0.9 is a
    /// case where they differ by an ulp at each weight tried. The expected values are
    /// the chosen formula evaluated in numpy float32 (the other one gives 0.26999998,
    /// 0.55 and 0.69); the comparison is exact because both sides make the same
    /// correctly rounded f32 operations.
    #[test]
    fn first_moment_rounds_as_torch_lerp_on_both_sides_of_one_half() {
        for (beta1, expected) in [(0.9, 0.27f32), (0.5, 0.54999995), (0.3, 0.68999994)] {
            let mut opt = AdamW {
                beta1,
                m: vec![0.2],
                ..AdamW::new(1)
            };
            opt.update(&mut [&mut [0.0f32]], &[&[0.9]]);
            assert_eq!(opt.m[0], expected, "beta1 {beta1}");
        }
    }

    /// eps is added to the bias-corrected sqrt(v), as torch's
    /// `(exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`: with a gradient equal to
    /// eps, step 1 has m / (1 - beta1) = 1e-8 and sqrt(v / (1 - beta2)) = 1e-8, so the
    /// denominator is 2e-8 and p moves by lr / 2 = 0.05 (eps dropped: 0.1; eps added
    /// before the correction: 0.003). The f32 roundings of the step are a few ulps of
    /// 0.05, far inside 1e-7.
    #[test]
    fn eps_is_added_after_the_bias_correction() {
        let mut opt = AdamW {
            lr: 0.1,
            weight_decay: 0.0,
            ..AdamW::new(1)
        };
        let mut p = [0.0f32];
        opt.update(&mut [&mut p], &[&[1e-8]]);
        assert!((p[0] as f64 + 0.05).abs() < 1e-7, "{}", p[0]);
    }
}
