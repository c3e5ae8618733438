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
    pub fn forward_backward(&self, x: &[f32], labels: &[usize], s: &mut HeadScratch) -> f32 {
        self.forward_backward_weighted(x, labels, None, s)
    }

    /// [`forward_backward`](Self::forward_backward) with optional per-class weights
    /// (L,), as `torch.nn.CrossEntropyLoss(weight=w)`: the loss is
    /// sum_i w[y_i] CE_i / sum_i w[y_i], a weighted mean, so it equals the plain mean
    /// over a batch in which row i appeared w[y_i] times.
    ///
    /// With p = softmax(z), y one-hot and W = sum_i w[y_i]:
    /// dloss/dz_i = w[y_i] (p_i - y_i) / W; then dW = dz^T x and db = sum over the
    /// batch of dz. Without weights every w is 1 and W = B.
    pub fn forward_backward_weighted(
        &self,
        x: &[f32],
        labels: &[usize],
        class_weights: Option<&[f32]>,
        s: &mut HeadScratch,
    ) -> f32 {
        let (c, l, b) = (self.hidden, self.num_labels, labels.len());
        assert!(b > 0, "empty batch");
        assert_eq!(x.len(), b * c, "x is not (batch {b}, hidden {c})");
        assert_eq!(
            s.dweight.len(),
            l * c,
            "scratch was made for another head shape"
        );
        if let Some(w) = class_weights {
            assert_eq!(w.len(), l, "{} class weights for {l} labels", w.len());
        }
        s.logits.resize(b * l, 0.0);
        self.logits_into(x, &mut s.logits);

        if let Some(&y) = labels.iter().find(|&&y| y >= l) {
            panic!("label {y} is outside 0..{l}");
        }
        let weight_of = |y: usize| class_weights.map_or(1.0, |w| w[y] as f64);
        let total_weight: f64 = labels.iter().map(|&y| weight_of(y)).sum();
        assert!(total_weight > 0.0, "the batch's class weights sum to 0");
        let inv_w = 1.0 / total_weight;
        s.dlogits.resize(b * l, 0.0);
        let mut loss = 0.0f64;
        for ((z, dz), &y) in s
            .logits
            .chunks_exact(l)
            .zip(s.dlogits.chunks_exact_mut(l))
            .zip(labels)
        {
            let scale = weight_of(y) * inv_w;
            let lse = log_sum_exp(z);
            loss += weight_of(y) * (lse - z[y] as f64);
            for (d, &zi) in dz.iter_mut().zip(z) {
                *d = (zi as f64 - lse).exp() * scale;
            }
            dz[y] -= scale;
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
        (loss * inv_w) as f32
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

/// How the loss weighs the classes (`--class-weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClassWeighting {
    /// Every example counts once: the recipe's plain mean cross-entropy.
    #[default]
    None,
    /// Class c weighs n / (k n_c), scikit-learn's `class_weight="balanced"`: each class
    /// then contributes equally to the loss, however rare it is.
    Balanced,
}

impl ClassWeighting {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Balanced => "balanced",
        }
    }

    /// The per-class weights (L,) for training on `labels`, or None for `None`.
    /// Balanced weighting needs every class present: a class without examples has
    /// no finite weight (scikit-learn refuses it too).
    pub fn weights(self, labels: &[usize], num_labels: usize) -> Result<Option<Vec<f32>>, String> {
        match self {
            Self::None => Ok(None),
            Self::Balanced => balanced_class_weights(labels, num_labels).map(Some),
        }
    }
}

impl std::str::FromStr for ClassWeighting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "balanced" => Ok(Self::Balanced),
            _ => Err(format!(
                "`{s}` is not a class weighting: use none or balanced"
            )),
        }
    }
}

/// n / (k n_c) for each class c of `labels` over `num_labels` classes.
pub fn balanced_class_weights(labels: &[usize], num_labels: usize) -> Result<Vec<f32>, String> {
    let mut counts = vec![0usize; num_labels];
    for &y in labels {
        if y >= num_labels {
            return Err(format!("label {y} is outside 0..{num_labels}"));
        }
        counts[y] += 1;
    }
    if let Some(missing) = counts.iter().position(|&n| n == 0) {
        return Err(format!(
            "label {missing} has no training example, so it has no balanced weight"
        ));
    }
    let n = labels.len() as f64;
    Ok(counts
        .iter()
        .map(|&nc| (n / (num_labels as f64 * nc as f64)) as f32)
        .collect())
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
    /// differences are limited by the step size, not by f32 rounding; with class
    /// weights, PyTorch's weighted mean sum_i w[y_i] CE_i / sum_i w[y_i], written out
    /// independently of `forward_backward_weighted`.
    fn loss_f64(
        w: &[f64],
        bias: &[f64],
        x: &[f32],
        labels: &[usize],
        c: usize,
        class_weights: Option<&[f32]>,
    ) -> f64 {
        let l = bias.len();
        let (mut total, mut weight_sum) = (0.0, 0.0);
        for (row, &y) in x.chunks_exact(c).zip(labels) {
            let z: Vec<f64> = (0..l)
                .map(|j| bias[j] + (0..c).map(|i| w[j * c + i] * row[i] as f64).sum::<f64>())
                .collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let wy = class_weights.map_or(1.0, |cw| cw[y] as f64);
            total += wy * (lse - z[y]);
            weight_sum += wy;
        }
        total / weight_sum
    }

    /// Checks the analytic gradients of `head` on (x, labels) against central
    /// differences of `loss_f64`.
    fn check_against_central_differences(
        head: &LinearHead,
        x: &[f32],
        labels: &[usize],
        class_weights: Option<&[f32]>,
    ) {
        let c = head.hidden;
        let mut s = HeadScratch::new(head.num_labels, c);
        let loss = head.forward_backward_weighted(x, labels, class_weights, &mut s);
        let w: Vec<f64> = head.weight.iter().map(|&v| v as f64).collect();
        let bias: Vec<f64> = head.bias.iter().map(|&v| v as f64).collect();
        let exact = loss_f64(&w, &bias, x, labels, c, class_weights);
        assert!((loss as f64 - exact).abs() < 1e-6, "loss {loss} vs {exact}");
        assert_eq!(s.logits, head.logits(x));

        // Central differences have O(h^2) truncation error (~1e-8 at h = 1e-4 for a
        // loss with second derivatives of order 1) and f64 cancellation error
        // ~1e-16 / h = 1e-12; the analytic gradient is rounded to f32, ~6e-8
        // relative. 1e-6 absolute plus 1e-5 relative leaves room for all three and
        // still catches any wrong term, which would be off by ~1e-2 or more.
        let h = 1e-4;
        let f = |w: &[f64], b: &[f64]| loss_f64(w, b, x, labels, c, class_weights);
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
            let numeric = (f(&wp, &bias) - f(&wm, &bias)) / (2.0 * h);
            check(s.grads.weight[i], numeric, format!("dW[{i}]"));
        }
        for j in 0..bias.len() {
            let (mut bp, mut bm) = (bias.clone(), bias.clone());
            bp[j] += h;
            bm[j] -= h;
            let numeric = (f(&w, &bp) - f(&w, &bm)) / (2.0 * h);
            check(s.grads.bias[j], numeric, format!("db[{j}]"));
        }
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
        check_against_central_differences(&head, &x, &labels, None);
    }

    #[test]
    fn weighted_backward_matches_central_differences() {
        let (head, x, labels) = random_case(9, 7, 3, 11);
        check_against_central_differences(&head, &x, &labels, Some(&[0.4, 2.5, 1.3]));
    }

    /// PyTorch's weighted mean is the plain mean over a batch where row i appears
    /// w[y_i] times: with integer weights both sides must agree to f64 rounding.
    #[test]
    fn integer_class_weights_equal_repeated_rows() {
        let (head, x, labels) = random_case(6, 5, 2, 13);
        let weights = [3.0f32, 1.0];
        let (mut xr, mut yr) = (Vec::new(), Vec::new());
        for (row, &y) in x.chunks_exact(5).zip(&labels) {
            for _ in 0..weights[y] as usize {
                xr.extend_from_slice(row);
                yr.push(y);
            }
        }
        let mut s = HeadScratch::new(2, 5);
        let weighted = head.forward_backward_weighted(&x, &labels, Some(&weights), &mut s);
        let grads = s.grads.clone();
        let repeated = head.forward_backward(&xr, &yr, &mut s);
        // Both sums run in f64 and are rounded to f32 once; the orders differ.
        assert!(
            (weighted - repeated).abs() <= 1e-6,
            "{weighted} vs {repeated}"
        );
        for (a, b) in grads
            .weight
            .iter()
            .chain(&grads.bias)
            .zip(s.grads.weight.iter().chain(&s.grads.bias))
        {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn balanced_weights_follow_scikit_learn() {
        // sklearn.utils.class_weight.compute_class_weight("balanced", classes=[0, 1, 2],
        // y=[0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]) = 12 / (3 * [4, 2, 6]).
        let labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2];
        let w = ClassWeighting::Balanced
            .weights(&labels, 3)
            .unwrap()
            .unwrap();
        assert_eq!(w, vec![1.0, 2.0, 2.0 / 3.0]);
        assert_eq!(ClassWeighting::None.weights(&labels, 3), Ok(None));
        let err = balanced_class_weights(&[0, 0, 2], 3).unwrap_err();
        assert!(err.contains("label 1 has no training example"), "{err}");
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

    /// `--class-weights` and run.json spell a weighting by its name: each name parses
    /// back to its weighting, and anything else is refused naming the choices.
    #[test]
    fn class_weighting_names_round_trip() {
        for w in [ClassWeighting::None, ClassWeighting::Balanced] {
            assert_eq!(w.name().parse::<ClassWeighting>(), Ok(w));
        }
        assert_eq!(ClassWeighting::Balanced.name(), "balanced");
        let err = "inverse".parse::<ClassWeighting>().unwrap_err();
        assert!(err.contains("use none or balanced"), "{err}");
    }
}
