//! Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") and
//! the expected calibration error that measures it.
//!
//! A head trained to low loss on its train split is often over- or under-confident
//! elsewhere; dividing every logit by one temperature T, fitted on the validation split
//! to minimise its cross-entropy, fixes the confidence without changing any argmax.

use crate::head::argmax;

/// Where the temperature is searched: T in [1/100, 100]. A separable validation split
/// pulls T towards 0 without end (every probability towards 1); the bound stops it at a
/// confidence a user can still read.
pub const MIN_TEMPERATURE: f64 = 1e-2;
pub const MAX_TEMPERATURE: f64 = 1e2;

/// Why a fitted temperature `t` says nothing about the test data, when it sits on a bound
/// of the search: the validation loss had no minimum inside it. A perfectly separated
/// split (every row right; one row, right, is the commonest case) falls without end as
/// T goes to 0, and one the head does no better than uniform on falls as T grows. Either
/// way the calibrated probabilities (near 1, or near uniform) come from the bound, not
/// the data, which train must say rather than report T as if it had been fitted.
pub fn bound_warning(t: f64) -> Option<String> {
    let why = if t == MIN_TEMPERATURE {
        "the validation rows are perfectly separated (all right, the loss falling as T goes to 0), so calibrated probabilities are near 1 however the test rows fare"
    } else if t == MAX_TEMPERATURE {
        "the head does no better than uniform on the validation rows (the loss falling as T grows), so calibrated probabilities are near uniform"
    } else {
        return None;
    };
    Some(format!(
        "warning: no temperature minimises the validation loss: T stopped at its bound {t}, as {why}; validate on more rows, or pass --no-calibration to test and predict"
    ))
}

/// Bins of [`expected_calibration_error`]: 15 equal-width ones, as Guo et al.
pub const ECE_BINS: usize = 15;

/// Mean cross-entropy of `logits / temperature` (rows of `num_labels`) against `labels`,
/// in f64.
pub fn scaled_cross_entropy(
    logits: &[f32],
    labels: &[usize],
    num_labels: usize,
    temperature: f64,
) -> f64 {
    assert_eq!(
        logits.len(),
        labels.len() * num_labels,
        "logits are not (rows, labels)"
    );
    if labels.is_empty() {
        return 0.0;
    }
    let total: f64 = logits
        .chunks_exact(num_labels)
        .zip(labels)
        .map(|(row, &y)| log_sum_exp_f64(row, temperature) - row[y] as f64 / temperature)
        .sum();
    total / labels.len() as f64
}

/// log sum exp(row / t) in f64 throughout (the f32 logits divided in f64).
fn log_sum_exp_f64(row: &[f32], t: f64) -> f64 {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 / t));
    max + row
        .iter()
        .map(|&v| (v as f64 / t - max).exp())
        .sum::<f64>()
        .ln()
}

/// The temperature in [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`] that minimises the mean
/// cross-entropy of `logits / T` against `labels`; 1 for no rows.
///
/// In s = 1/T the loss f(s) = mean(logsumexp(s z) - s z_y) is convex, with
/// f'(s) = mean(E_p[z] - z_y) and f''(s) = mean(Var_p[z]) for p = softmax(s z). Newton's
/// method on f' = 0 converges in a handful of passes over the rows (the temperature is
/// fitted after every epoch, so passes count); each step is kept inside the bracket that
/// the signs of f' have narrowed, and a step that would leave it bisects instead.
pub fn fit_temperature(logits: &[f32], labels: &[usize], num_labels: usize) -> f64 {
    if labels.is_empty() {
        return 1.0;
    }
    let slope = |s: f64| scale_derivatives(logits, labels, num_labels, s);
    let (mut lo, mut hi) = (1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE);
    // Minimum at a bound: the loss rises from the lowest s, or still falls at the highest.
    if slope(lo).0 >= 0.0 {
        return MAX_TEMPERATURE;
    }
    if slope(hi).0 <= 0.0 {
        return MIN_TEMPERATURE;
    }
    let mut s = 1.0;
    for _ in 0..200 {
        let (g, h) = slope(s);
        if g > 0.0 {
            hi = s;
        } else {
            lo = s;
        }
        let newton = s - g / h;
        let next = if h > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        let done = (next - s).abs() <= 1e-15 * s || hi - lo <= 1e-15 * s;
        s = next;
        if done {
            break;
        }
    }
    1.0 / s
}

/// f'(s) and f''(s) of the mean cross-entropy of `s * logits`, in f64.
fn scale_derivatives(logits: &[f32], labels: &[usize], num_labels: usize, s: f64) -> (f64, f64) {
    let (mut g, mut h) = (0.0f64, 0.0f64);
    for (row, &y) in logits.chunks_exact(num_labels).zip(labels) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(s * v as f64));
        let (mut sum, mut ez, mut ez2) = (0.0f64, 0.0f64, 0.0f64);
        for &v in row {
            let (z, e) = (v as f64, (s * v as f64 - max).exp());
            sum += e;
            ez += e * z;
            ez2 += e * z * z;
        }
        let (mean, second) = (ez / sum, ez2 / sum);
        g += mean - row[y] as f64;
        h += (second - mean * mean).max(0.0);
    }
    let n = labels.len() as f64;
    (g / n, h / n)
}

/// Expected calibration error of the row-wise probabilities `probs` (rows of
/// `num_labels`): rows are binned by their confidence (the largest probability) into
/// [`ECE_BINS`] equal-width bins (0, 1/15], (1/15, 2/15], ..., and
/// ECE = sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|.
pub fn expected_calibration_error(probs: &[f32], labels: &[usize], num_labels: usize) -> f64 {
    assert_eq!(
        probs.len(),
        labels.len() * num_labels,
        "probs are not (rows, labels)"
    );
    if labels.is_empty() {
        return 0.0;
    }
    let mut count = [0usize; ECE_BINS];
    let mut correct = [0usize; ECE_BINS];
    let mut confidence = [0.0f64; ECE_BINS];
    for (p, &y) in probs.chunks_exact(num_labels).zip(labels) {
        let label = argmax(p);
        let conf = p[label] as f64;
        let bin = ((conf * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        count[bin] += 1;
        correct[bin] += usize::from(label == y);
        confidence[bin] += conf;
    }
    let n = labels.len() as f64;
    (0..ECE_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct[b] as f64 - confidence[b]).abs() / n)
        .sum()
}

/// Softmax of `logits / temperature`, row-wise.
pub fn scaled_softmax(logits: &[f32], num_labels: usize, temperature: f64) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_exact_mut(num_labels) {
        let lse = log_sum_exp_f64(row, temperature);
        for v in row.iter_mut() {
            *v = (*v as f64 / temperature - lse).exp() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Two labels, every row with logits (d, 0), a fraction q labelled 0: the loss is
    /// q log(1 + e^(-d/T)) + (1 - q) log(1 + e^(d/T)), zero in slope where
    /// sigmoid(d/T) = q, so T = d / logit(q) in closed form.
    #[test]
    fn equal_margins_give_the_closed_form_temperature() {
        let (d, rows, correct) = (3.0f32, 10, 8);
        let logits: Vec<f32> = (0..rows).flat_map(|_| [d, 0.0]).collect();
        let labels: Vec<usize> = (0..rows).map(|i| usize::from(i >= correct)).collect();
        let q = correct as f64 / rows as f64;
        let exact = d as f64 / (q / (1.0 - q)).ln();
        let fitted = fit_temperature(&logits, &labels, 2);
        // The search resolves log T to ~1e-15; the loss is flat to second order at its
        // minimum, so f64 rounding of the loss (~1e-16) moves it by ~sqrt(1e-16) = 1e-8.
        assert!(
            (fitted - exact).abs() < 1e-6 * exact,
            "fitted {fitted}, exact {exact}"
        );
    }

    /// On random logits the fit is no worse than the best point of a fine grid in
    /// log T, and lies within one grid step of it.
    #[test]
    fn fit_beats_a_brute_force_grid() {
        let mut rng = StdRng::seed_from_u64(9);
        let (rows, k) = (200, 3);
        let logits: Vec<f32> = (0..rows * k)
            .map(|_| rng.random_range(-4.0f32..4.0))
            .collect();
        // Labels agree with the argmax 70% of the time: T lands inside the bracket.
        let labels: Vec<usize> = logits
            .chunks_exact(k)
            .map(|z| {
                if rng.random_bool(0.7) {
                    argmax(z)
                } else {
                    rng.random_range(0..k)
                }
            })
            .collect();
        let fitted = fit_temperature(&logits, &labels, k);
        let steps = 20_000;
        let (lo, hi) = (MIN_TEMPERATURE.ln(), MAX_TEMPERATURE.ln());
        let step = (hi - lo) / steps as f64;
        let (best_loss, best_u) = (0..=steps)
            .map(|i| lo + i as f64 * step)
            .map(|u| (scaled_cross_entropy(&logits, &labels, k, u.exp()), u))
            .fold((f64::INFINITY, 0.0), |b, c| if c.0 < b.0 { c } else { b });
        let fitted_loss = scaled_cross_entropy(&logits, &labels, k, fitted);
        assert!(
            fitted_loss <= best_loss + 1e-12,
            "{fitted_loss} > grid {best_loss}"
        );
        assert!(
            (fitted.ln() - best_u).abs() <= step,
            "log T {} vs grid {best_u}",
            fitted.ln()
        );
        assert!(fitted > 1.0 && fitted < MAX_TEMPERATURE, "T = {fitted}");
    }

    #[test]
    fn separable_and_empty_splits_stay_in_bounds() {
        let logits = [2.0f32, -1.0, -3.0, 0.5];
        assert_eq!(fit_temperature(&logits, &[0, 1], 2), MIN_TEMPERATURE);
        assert_eq!(fit_temperature(&[], &[], 2), 1.0);
    }

    /// Hand-computed: confidences 0.95 (correct), 0.95 (wrong), 0.61 (correct), 0.65
    /// (wrong). Bin (14/15, 1] holds the first two, accuracy 0.5, confidence 0.95;
    /// bin (9/15, 10/15] the last two, accuracy 0.5, confidence 0.63.
    /// ECE = 2/4 * 0.45 + 2/4 * 0.13 = 0.29 (per-row bins would give 0.485).
    #[test]
    fn ece_matches_a_hand_computation() {
        let probs = [0.95f32, 0.05, 0.95, 0.05, 0.39, 0.61, 0.65, 0.35];
        let labels = [0, 1, 1, 1];
        let ece = expected_calibration_error(&probs, &labels, 2);
        assert!((ece - 0.29).abs() < 1e-7, "ECE {ece}");
        assert_eq!(expected_calibration_error(&[], &[], 2), 0.0);
    }

    #[test]
    fn scaling_keeps_the_argmax_and_t1_is_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 0.5, 0.0, 0.1];
        let plain = crate::head::softmax(&logits, 3);
        let t1 = scaled_softmax(&logits, 3, 1.0);
        for (a, b) in plain.iter().zip(&t1) {
            assert!((a - b).abs() < 1e-7);
        }
        let hot = scaled_softmax(&logits, 3, 4.0);
        for (p, q) in plain.chunks_exact(3).zip(hot.chunks_exact(3)) {
            assert_eq!(argmax(p), argmax(q));
            assert!(q.iter().cloned().fold(0.0, f32::max) < p.iter().cloned().fold(0.0, f32::max));
        }
    }

    /// Bins whose accuracy falls short of their confidence and bins where it exceeds it
    /// must not cancel: (14/15, 1] holds confidences 0.95 (right), 0.95 (wrong) and 1.0
    /// (right, on the top edge), |2 - 2.9| = 0.9; (9/15, 10/15] holds 0.61 and 0.65,
    /// both right, |2 - 1.26| = 0.74; ECE = 1.64 / 5 = 0.328, where one bin for all
    /// rows would give 0.032 and a bin per row 0.348. The reference, 0.3279999971389771,
    /// is the same binning written in numpy over these f32 inputs (their rounding is
    /// what separates it from 0.328); both sum in f64, so 1e-12 is rounding headroom.
    #[test]
    fn ece_gaps_of_opposite_sign_do_not_cancel_across_bins() {
        let probs = [0.95f32, 0.05, 0.05, 0.95, 0.39, 0.61, 0.65, 0.35, 0.0, 1.0];
        let labels = [0, 0, 1, 0, 1];
        let ece = expected_calibration_error(&probs, &labels, 2);
        assert!((ece - 0.3279999971389771).abs() < 1e-12, "ECE {ece}");
    }

    /// Against scipy.special.logsumexp in f64: mean(logsumexp(z / T) - z_y / T) over
    /// rows (0.5, -1, 2) labelled 2 and (1.5, 0.25, -0.75) labelled 1, whose logits are
    /// exact in f32. Both sides compute in f64 from the same inputs: 1e-12 is rounding
    /// headroom.
    #[test]
    fn scaled_cross_entropy_matches_scipy() {
        let logits = [0.5f32, -1.0, 2.0, 1.5, 0.25, -0.75];
        let labels = [2, 1];
        for (t, expected) in [(0.5, 1.3200247228400366), (3.0, 0.9269062892424689)] {
            let ce = scaled_cross_entropy(&logits, &labels, 3, t);
            assert!((ce - expected).abs() < 1e-12, "T {t}: {ce} vs {expected}");
        }
        assert_eq!(scaled_cross_entropy(&[], &[], 3, 2.0), 0.0);
    }

    /// A head no better than uniform: rows (3, 0) half labelled 0, half 1. The slope of
    /// the loss in s = 1/T is 3 sigmoid(3 s) - 1.5 > 0 for every s > 0, so the loss
    /// falls as T grows and the fit stops at the upper bound, which is named as such.
    #[test]
    fn a_useless_head_stops_at_the_upper_bound() {
        let logits = [3.0f32, 0.0, 3.0, 0.0];
        let t = fit_temperature(&logits, &[0, 1], 2);
        assert_eq!(t, MAX_TEMPERATURE);
        let warning = bound_warning(t).unwrap();
        assert!(warning.contains("no better than uniform"), "{warning}");
        let warning = bound_warning(MIN_TEMPERATURE).unwrap();
        assert!(warning.contains("perfectly separated"), "{warning}");
        assert_eq!(bound_warning(1.5), None);
    }

    /// Margins of 60 saturate the softmax at the starting s = 1/T = 1: its variance, the
    /// Newton step's divisor, is ~1e-23 there, so the fit has to bisect its bracket down
    /// to where Newton can take over. 8 of 10 rows (60, 0) right gives the closed form
    /// of `equal_margins_give_the_closed_form_temperature`, T = 60 / logit(0.8) =
    /// 60 / ln 4, within the same 1e-6 relative.
    #[test]
    fn a_saturated_start_bisects_to_the_closed_form_temperature() {
        let logits: Vec<f32> = (0..10).flat_map(|_| [60.0f32, 0.0]).collect();
        let labels: Vec<usize> = (0..10).map(|i| usize::from(i >= 8)).collect();
        let exact = 60.0 / 4f64.ln();
        let fitted = fit_temperature(&logits, &labels, 2);
        assert!(
            (fitted - exact).abs() < 1e-6 * exact,
            "fitted {fitted}, exact {exact}"
        );
    }

    /// At T = 0.01 logits of 10 become 1000, past exp's f64 range (~709): shifting each
    /// row by its largest scaled logit is what keeps the loss and the fit's slope finite.
    /// The loss of rows (10, -10) labelled 0 and 1 and (-10, 10) labelled 1 is
    /// (0 + 2000 + 0) / 3 (scipy.special.logsumexp gives 666.6666666666666; the zeros are
    /// log(1 + e^-2000)), to f64 rounding of a value near 700, hence 1e-9. The first and
    /// last rows alone are separated, so the fit stops at the lower bound, where s z
    /// reaches 1000.
    #[test]
    fn large_scaled_logits_stay_finite() {
        let logits = [10.0f32, -10.0, 10.0, -10.0, -10.0, 10.0];
        let ce = scaled_cross_entropy(&logits, &[0, 1, 1], 2, MIN_TEMPERATURE);
        assert!((ce - 666.6666666666666).abs() < 1e-9, "{ce}");
        let separated = [10.0f32, -10.0, -10.0, 10.0];
        assert_eq!(fit_temperature(&separated, &[0, 1], 2), MIN_TEMPERATURE);
    }
}
