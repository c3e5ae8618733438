//! out (rows, N) = x (rows, K) . W^T (+ b): the dense layers, 90%+ of the encoder's FLOPs.

use gemm::{gemm, Parallelism};

use crate::model::weights::LinearWeights;

pub fn linear(
    x: &[f32],
    rows: usize,
    lin: &LinearWeights<Vec<f32>>,
    add_bias: bool,
    out: &mut [f32],
    threads: usize,
) {
    let (n, k) = (lin.out_features, lin.in_features);
    let x = &x[..rows * k];
    let out = &mut out[..rows * n];
    if add_bias {
        for row in out.chunks_exact_mut(n) {
            row.copy_from_slice(&lin.b);
        }
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the slices above bound every access: dst (rows, n) row-major, lhs x (rows, k)
    // row-major, rhs W^T (k, n) read from W (n, k) row-major by swapping its strides.
    unsafe {
        gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            add_bias,
            x.as_ptr(),
            1,
            k as isize,
            lin.w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
