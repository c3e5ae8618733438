//! Multi-head self-attention over the packed layout: each (text, head) pair is an
//! independent task: scores = Q K^T / sqrt(d) over the text's own tokens, softmax,
//! context = P V. No padding exists, so no mask is needed: a text never sees another.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::simd::{dispatch, exp, max, sum};
use super::OutPtr;

dispatch! {
    /// Softmax of each row of `scores` (rows, n), in place. Max, exp and sum are separate
    /// passes so that each one vectorises (a running sum inside the exp loop would not).
    fn softmax_rows(scores: &mut [f32], n: usize) {
        for row in scores.chunks_exact_mut(n) {
            let max = max(row);
            for v in row.iter_mut() {
                *v = exp(*v - max);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// qkv (T, 3C) = [Q | K | V]; out (T, C).
pub fn attention(qkv: &[f32], offsets: &[usize], heads: usize, head_dim: usize, out: &mut [f32]) {
    let c = heads * head_dim;
    let texts = offsets.len() - 1;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out_ptr = OutPtr(out[..offsets[texts] * c].as_mut_ptr());
    (0..texts * heads).into_par_iter().for_each(|task| {
        let (text, h) = (task / heads, task % heads);
        let (start, n) = (offsets[text], offsets[text + 1] - offsets[text]);
        let q = &qkv[start * 3 * c + h * head_dim..];
        let k = &qkv[start * 3 * c + c + h * head_dim..];
        let v = &qkv[start * 3 * c + 2 * c + h * head_dim..];
        let stride = 3 * c as isize;
        let mut scores = vec![0f32; n * n]; // (n, n)

        // SAFETY: every read stays inside this text's rows of qkv (start..start+n, row stride
        // 3C, head_dim columns from the head's offset); `scores` is (n, n) row-major.
        unsafe {
            gemm(
                n,
                n,
                head_dim,
                scores.as_mut_ptr(),
                1,
                n as isize,
                false,
                q.as_ptr(),
                1,
                stride,
                k.as_ptr(),
                stride,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        softmax_rows(&mut scores, n);
        // SAFETY: this task alone writes rows start..start+n, columns
        // h*head_dim..(h+1)*head_dim of out (T, C); reads of v stay in this text.
        unsafe {
            let dst = out_ptr.get().add(start * c + h * head_dim);
            gemm(
                n,
                head_dim,
                n,
                dst,
                1,
                c as isize,
                false,
                scores.as_ptr(),
                1,
                n as isize,
                v.as_ptr(),
                1,
                stride,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
}
