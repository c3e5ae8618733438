//! x = act(x + b) for the feed-forward intermediate, (rows, F) in place.

use rayon::prelude::*;

use super::simd::{dispatch, erf, tanh};
use crate::backend::Activation;

/// Rows per rayon task: enough work to amortise the task, small enough to balance two cores.
const ROWS_PER_TASK: usize = 16;

pub fn bias_activation(x: &mut [f32], bias: &[f32], act: Activation) {
    let width = bias.len();
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .for_each(|rows| match act {
            Activation::GeluErf => bias_gelu_erf(rows, bias),
            Activation::GeluTanh => bias_gelu_tanh(rows, bias),
            Activation::Relu => bias_relu(rows, bias),
        });
}

dispatch! {
    /// GELU, exact form: v * 0.5 * (1 + erf(v / sqrt(2))), v = x + b.
    pub fn bias_gelu_erf(rows: &mut [f32], bias: &[f32]) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (x, &b) in row.iter_mut().zip(bias) {
                let v = *x + b;
                *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

dispatch! {
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    pub fn bias_gelu_tanh(rows: &mut [f32], bias: &[f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for row in rows.chunks_exact_mut(bias.len()) {
            for (x, &b) in row.iter_mut().zip(bias) {
                let v = *x + b;
                *x = 0.5 * v * (1.0 + tanh(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)));
            }
        }
    }
}

dispatch! {
    pub fn bias_relu(rows: &mut [f32], bias: &[f32]) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (x, &b) in row.iter_mut().zip(bias) {
                *x = (*x + b).max(0.0);
            }
        }
    }
}
