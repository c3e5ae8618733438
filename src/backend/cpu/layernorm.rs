//! LayerNorm and the two places BERT applies it: after the embeddings sum, and after
//! each residual connection. Fusing the sums into the normalisation saves a pass over
//! (T, C) each time.

use rayon::prelude::*;

use super::simd::{dispatch, sum, sum_sq_dev};
use super::tensor::CpuTensor;
use crate::batch::PackedBatch;
use crate::model::weights::{EmbeddingWeights, LayerNormWeights};

const ROWS_PER_TASK: usize = 16;

dispatch! {
    /// row = (row - mean) / sqrt(var + eps) * gamma + beta, variance in two passes (never
    /// E[x^2] - E[x]^2, which cancels catastrophically when the mean is large).
    pub fn layernorm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let c = row.len() as f32;
        let mean = sum(row) / c;
        let var = sum_sq_dev(row, mean) / c;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((x, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * rstd * g + b;
        }
    }
}

dispatch! {
    fn add_bias_residual(row: &mut [f32], bias: &[f32], residual: &[f32]) {
        for ((x, &b), &r) in row.iter_mut().zip(bias).zip(residual) {
            *x += b + r;
        }
    }
}

dispatch! {
    fn sum_embeddings(row: &mut [f32], word: &[f32], position: &[f32], token_type: &[f32]) {
        for (((x, &w), &p), &t) in row.iter_mut().zip(word).zip(position).zip(token_type) {
            *x = w + p + t;
        }
    }
}

/// x (rows, C) = LayerNorm(x + b + residual).
pub fn bias_residual_layernorm(
    x: &mut [f32],
    bias: &[f32],
    residual: &[f32],
    ln: &LayerNormWeights<CpuTensor>,
    eps: f32,
) {
    let c = bias.len();
    x.par_chunks_mut(c * ROWS_PER_TASK)
        .zip(residual.par_chunks(c * ROWS_PER_TASK))
        .for_each(|(xs, rs)| {
            for (row, res) in xs.chunks_exact_mut(c).zip(rs.chunks_exact(c)) {
                add_bias_residual(row, bias, res);
                layernorm_row(row, &ln.gamma, &ln.beta, eps);
            }
        });
}

/// out (T, C) = LayerNorm(word[ids] + position[positions] + token_type[type_ids]).
pub fn embeddings_layernorm(
    batch: &PackedBatch,
    emb: &EmbeddingWeights<CpuTensor>,
    eps: f32,
    out: &mut [f32],
) {
    let c = emb.ln.gamma.len();
    let t = batch.num_tokens();
    out[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(i, row)| {
            let (id, pos, ty) = (
                batch.ids[i] as usize,
                batch.positions[i] as usize,
                batch.type_ids[i] as usize,
            );
            sum_embeddings(
                row,
                &emb.word[id * c..(id + 1) * c],
                &emb.position[pos * c..(pos + 1) * c],
                &emb.token_type[ty * c..(ty + 1) * c],
            );
            layernorm_row(row, &emb.ln.gamma, &emb.ln.beta, eps);
        });
}
