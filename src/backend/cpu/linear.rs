//! out (rows, N) = x (rows, K) . W^T (+ b): the dense layers, 90%+ of the encoder's FLOPs.

use gemm::{gemm, Parallelism};

use super::OutPtr;
use crate::model::weights::LinearWeights;

/// Column slabs are multiples of this, so every slab starts on a full SIMD register.
const SLAB_ALIGN: usize = 16;

/// Each thread computes its own slab of output columns, from its own rows of W, with a
/// single-threaded GEMM. Measured on the 2-core machine against the `gemm` crate's own
/// threading: equal at 4096 rows, and up to 1.6x faster at 128 rows (one 128-token text),
/// where the crate splits (128, 768) x (768, 3072)^T poorly.
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
    let slab = n.div_ceil(threads.max(1)).div_ceil(SLAB_ALIGN) * SLAB_ALIGN;
    let out_ptr = OutPtr(out.as_mut_ptr());
    rayon::scope(|s| {
        for start in (0..n).step_by(slab) {
            let cols = slab.min(n - start);
            s.spawn(move |_| {
                // SAFETY: dst is columns start..start+cols of out (rows, n), row stride n,
                // written by this task alone; lhs x (rows, k) row-major; rhs W^T (k, cols)
                // read from rows start..start+cols of W (n, k) by swapping its strides.
                unsafe {
                    gemm(
                        rows,
                        cols,
                        k,
                        out_ptr.get().add(start),
                        1,
                        n as isize,
                        add_bias,
                        x.as_ptr(),
                        1,
                        k as isize,
                        lin.w.as_ptr().add(start * k),
                        k as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            });
        }
    });
}
