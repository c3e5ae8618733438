//! The trainable part: `Linear(hidden, num_labels)` on frozen [CLS] features, its
//! softmax cross-entropy and a hand-written backward.
//!
//! Shapes follow `torch.nn.Linear`: `weight` is (L, C) row-major, `bias` is (L,), and
//! a batch `x` is (B, C) row-major. Sums run in f64: at C = 768 that costs nothing
//! and keeps our logits and gradients closer to the exact values than PyTorch's own
//! f32 GEMMs, so parity tests measure PyTorch's rounding, not ours.

use rand::Rng;

/// Lanes of the independent f64 accumulators in `dot`: LLVM does not reorder a float
/// sum on its own, so the vectorisable form has to be spelled out.
const LANES: usize = 8;

#[derive(Clone, Debug, PartialEq)]
pub struct LinearHead {
    /// (L, C) row-major, as `nn.Linear.weight`.
    pub weight: Vec<f32>,
    /// (L,)
    pub bias: Vec<f32>,
    pub num_labels: usize,
    pub hidden: usize,
}

/// Gradients of the mean cross-entropy, shaped as the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrads {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Buffers reused across training steps, so a step allocates nothing.
pub struct HeadScratch {
    /// (B, L) logits of the last `forward_backward`.
    pub logits: Vec<f32>,
    /// Gradients of the last `forward_backward`.
    pub grads: HeadGrads,
    dlogits: Vec<f64>,
    dweight: Vec<f64>,
    dbias: Vec<f64>,
}

impl HeadScratch {
    pub fn new(num_labels: usize, hidden: usize) -> Self {
        HeadScratch {
            logits: Vec::new(),
            grads: HeadGrads {
                weight: vec![0.0; num_labels * hidden],
                bias: vec![0.0; num_labels],
            },
            dlogits: Vec::new(),
            dweight: vec![0.0; num_labels * hidden],
            dbias: vec![0.0; num_labels],
        }
    }
}

impl LinearHead {
    /// PyTorch's `nn.Linear` default initialisation: `kaiming_uniform_(a = sqrt(5))`
    /// on the weight reduces to U(-1/sqrt(C), 1/sqrt(C)), and the bias uses the same
    /// bound, so a head starts at the scale the recipe's did.
    pub fn new_init<R: Rng + ?Sized>(num_labels: usize, hidden: usize, rng: &mut R) -> Self {
        assert!(
            num_labels > 0 && hidden > 0,
            "a head needs at least one label and one input"
        );
        let bound = 1.0 / (hidden as f32).sqrt();
        let mut uniform = || rng.random_range(-bound..bound);
        let weight = (0..num_labels * hidden).map(|_| uniform()).collect();
        let bias = (0..num_labels).map(|_| uniform()).collect();
        LinearHead {
            weight,
            bias,
            num_labels,
            hidden,
        }
    }

    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.len()
    }

    /// Writes the (B, L) logits of `x` (B, C) into `out`, which must hold B * L values.
    pub fn logits_into(&self, x: &[f32], out: &mut [f32]) {
        let (c, l) = (self.hidden, self.num_labels);
        assert_eq!(
            x.len() % c,
            0,
            "x has {} values, not a multiple of hidden size {c}",
            x.len()
        );
        assert_eq!(
            out.len(),
            x.len() / c * l,
            "logits buffer has the wrong size"
        );
        for (row, out_row) in x.chunks_exact(c).zip(out.chunks_exact_mut(l)) {
            for ((o, w), &b) in out_row
                .iter_mut()
                .zip(self.weight.chunks_exact(c))
                .zip(&self.bias)
            {
                *o = (dot(row, w) + b as f64) as f32;
            }
        }
    }

    /// (B, L) logits of `x` (B, C).
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len() / self.hidden * self.num_labels];
        self.logits_into(x, &mut out);
        out
    }

    /// One training step's forward and backward into `s`: returns the mean
    /// cross-entropy of the logits against `labels` and leaves the logits and the
    /// gradients in `s.logits` and `s.grads`.
    ///
    /// With p = softmax(z) and y one-hot, d(mean CE)/dz = (p - y) / B; then
    /// dW = dz^T x and db = sum over the batch of dz.
    pub fn forward_backward(&self, x: &[f32], labels: &[usize], s: &mut HeadScratch) -> f32 {
        let (c, l, b) = (self.hidden, self.num_labels, labels.len());
        assert!(b > 0, "empty batch");
        assert_eq!(x.len(), b * c, "x is not (batch {b}, hidden {c})");
        assert_eq!(
            s.dweight.len(),
            l * c,
            "scratch was made for another head shape"
        );
        s.logits.resize(b * l, 0.0);
        self.logits_into(x, &mut s.logits);

        s.dlogits.resize(b * l, 0.0);
        let inv_b = 1.0 / b as f64;
        let mut loss = 0.0f64;
        for ((z, dz), &y) in s
            .logits
            .chunks_exact(l)
            .zip(s.dlogits.chunks_exact_mut(l))
            .zip(labels)
        {
            assert!(y < l, "label {y} is outside 0..{l}");
            let lse = log_sum_exp(z);
            loss += lse - z[y] as f64;
            for (d, &zi) in dz.iter_mut().zip(z) {
                *d = (zi as f64 - lse).exp() * inv_b;
            }
            dz[y] -= inv_b;
        }

        s.dweight.fill(0.0);
        s.dbias.fill(0.0);
        for (row, dz) in x.chunks_exact(c).zip(s.dlogits.chunks_exact(l)) {
            for ((dw, &d), db) in s
                .dweight
                .chunks_exact_mut(c)
                .zip(dz)
                .zip(s.dbias.iter_mut())
            {
                *db += d;
                for (acc, &xi) in dw.iter_mut().zip(row) {
                    *acc += d * xi as f64;
                }
            }
        }
        for (g, &v) in s.grads.weight.iter_mut().zip(&s.dweight) {
            *g = v as f32;
        }
        for (g, &v) in s.grads.bias.iter_mut().zip(&s.dbias) {
            *g = v as f32;
        }
        (loss * inv_b) as f32
    }

    /// Mean cross-entropy, its gradients and the logits, for one batch. Allocates;
    /// training loops use `forward_backward` with a `HeadScratch`.
    pub fn loss_and_grad(&self, x: &[f32], labels: &[usize]) -> (f32, HeadGrads, Vec<f32>) {
        let mut s = HeadScratch::new(self.num_labels, self.hidden);
        let loss = self.forward_backward(x, labels, &mut s);
        (loss, s.grads, s.logits)
    }

    /// Mean cross-entropy and the number of correct argmax predictions over every row
    /// of `x`, for validation and test splits of any size.
    pub fn evaluate(&self, x: &[f32], labels: &[usize]) -> (f32, usize) {
        let (c, l) = (self.hidden, self.num_labels);
        assert_eq!(
            x.len(),
            labels.len() * c,
            "x is not (rows {}, hidden {c})",
            labels.len()
        );
        if labels.is_empty() {
            return (0.0, 0);
        }
        let mut z = vec![0.0f32; l];
        let mut loss = 0.0f64;
        let mut correct = 0;
        for (row, &y) in x.chunks_exact(c).zip(labels) {
            assert!(y < l, "label {y} is outside 0..{l}");
            self.logits_into(row, &mut z);
            loss += log_sum_exp(&z) - z[y] as f64;
            correct += usize::from(argmax(&z) == y);
        }
        ((loss / labels.len() as f64) as f32, correct)
    }
}

/// Row-wise softmax of (B, L) logits, shifted by each row's maximum so large
/// logits cannot overflow.
pub fn softmax(logits: &[f32], num_labels: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_exact_mut(num_labels) {
        let lse = log_sum_exp(row);
        for v in row.iter_mut() {
            *v = (*v as f64 - lse).exp() as f32;
        }
    }
    out
}

/// Index of the largest value; the first one on ties, as `torch.argmax`.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Number of rows of (B, L) `logits` whose argmax is the label.
pub fn count_correct(logits: &[f32], labels: &[usize], num_labels: usize) -> usize {
    logits
        .chunks_exact(num_labels)
        .zip(labels)
        .filter(|(z, &y)| argmax(z) == y)
        .count()
}

/// log(sum(exp(z))) computed as max + log(sum(exp(z - max))): exact for any logits
/// that are finite, where the naive form overflows from about z = 89 in f32.
fn log_sum_exp(z: &[f32]) -> f64 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (x, y) in ac.zip(bc) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x as f64 * y as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn random_case(b: usize, c: usize, l: usize, seed: u64) -> (LinearHead, Vec<f32>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let head = LinearHead::new_init(l, c, &mut rng);
        let x = (0..b * c).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let labels = (0..b).map(|_| rng.random_range(0..l)).collect();
        (head, x, labels)
    }

    /// The loss as a function of the parameters in f64 throughout, so central
    /// differences are limited by the step size, not by f32 rounding.
    fn loss_f64(w: &[f64], bias: &[f64], x: &[f32], labels: &[usize], c: usize) -> f64 {
        let l = bias.len();
        let mut total = 0.0;
        for (row, &y) in x.chunks_exact(c).zip(labels) {
            let z: Vec<f64> = (0..l)
                .map(|j| bias[j] + (0..c).map(|i| w[j * c + i] * row[i] as f64).sum::<f64>())
                .collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            total += lse - z[y];
        }
        total / labels.len() as f64
    }

    #[test]
    fn init_bound_is_one_over_sqrt_fan_in() {
        let mut rng = StdRng::seed_from_u64(1);
        let head = LinearHead::new_init(3, 100, &mut rng);
        assert_eq!(
            (head.weight.len(), head.bias.len(), head.num_params()),
            (300, 3, 303)
        );
        let max = head
            .weight
            .iter()
            .chain(&head.bias)
            .fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max <= 0.1 && max > 0.09, "max |param| {max}");
    }

    #[test]
    fn backward_matches_central_differences() {
        let (head, x, labels) = random_case(5, 7, 3, 7);
        let (loss, grads, logits) = head.loss_and_grad(&x, &labels);
        let w: Vec<f64> = head.weight.iter().map(|&v| v as f64).collect();
        let bias: Vec<f64> = head.bias.iter().map(|&v| v as f64).collect();
        assert!((loss as f64 - loss_f64(&w, &bias, &x, &labels, 7)).abs() < 1e-6);
        assert_eq!(logits, head.logits(&x));

        // Central differences have O(h^2) truncation error (~1e-8 at h = 1e-4 for a
        // loss with second derivatives of order 1) and f64 cancellation error
        // ~1e-16 / h = 1e-12; the analytic gradient is rounded to f32, ~6e-8
        // relative. 1e-6 absolute plus 1e-5 relative leaves room for all three and
        // still catches any wrong term, which would be off by ~1e-2 or more.
        let h = 1e-4;
        let check = |analytic: f32, numeric: f64, what: String| {
            let err = (analytic as f64 - numeric).abs();
            assert!(
                err <= 1e-6 + 1e-5 * numeric.abs(),
                "{what}: analytic {analytic} numeric {numeric}"
            );
        };
        for i in 0..w.len() {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let numeric = (loss_f64(&wp, &bias, &x, &labels, 7)
                - loss_f64(&wm, &bias, &x, &labels, 7))
                / (2.0 * h);
            check(grads.weight[i], numeric, format!("dW[{i}]"));
        }
        for j in 0..bias.len() {
            let (mut bp, mut bm) = (bias.clone(), bias.clone());
            bp[j] += h;
            bm[j] -= h;
            let numeric =
                (loss_f64(&w, &bp, &x, &labels, 7) - loss_f64(&w, &bm, &x, &labels, 7)) / (2.0 * h);
            check(grads.bias[j], numeric, format!("db[{j}]"));
        }
    }

    #[test]
    fn softmax_and_loss_are_stable_for_huge_logits() {
        let probs = softmax(&[1000.0, 1000.0, -1000.0, 0.0], 2);
        assert_eq!(probs, vec![0.5, 0.5, 0.0, 1.0]);
        let head = LinearHead {
            weight: vec![1.0, -1.0],
            bias: vec![0.0, 0.0],
            num_labels: 2,
            hidden: 1,
        };
        let (loss, grads, _) = head.loss_and_grad(&[500.0], &[1]);
        assert_eq!(loss, 1000.0);
        assert_eq!(grads.weight, vec![500.0, -500.0]);
        assert!(grads.bias.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn evaluate_agrees_with_batch_loss_and_counts_argmax() {
        let (head, x, labels) = random_case(13, 9, 2, 3);
        let (loss, _, logits) = head.loss_and_grad(&x, &labels);
        let (eval_loss, correct) = head.evaluate(&x, &labels);
        assert!((loss - eval_loss).abs() < 1e-6);
        assert_eq!(correct, count_correct(&logits, &labels, 2));
        assert_eq!(argmax(&[0.5, 0.5]), 0);
    }

    #[test]
    fn scratch_reuse_gives_the_same_step() {
        let (head, x, labels) = random_case(4, 16, 2, 5);
        let mut s = HeadScratch::new(2, 16);
        let first = head.forward_backward(&x, &labels, &mut s);
        let grads = s.grads.clone();
        let second = head.forward_backward(&x, &labels, &mut s);
        assert_eq!((first, &grads), (second, &s.grads));
    }
}
