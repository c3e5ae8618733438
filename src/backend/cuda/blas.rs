//! cuBLAS for row-major operands: `Gemm` describes C = op(A) op(B) the way the ops think
//! of it (row-major, optionally batched with strides) and maps it onto cuBLAS's
//! column-major arguments; `gemm` runs it in fp32 or TF32, `gemm_ex` in bf16/fp16 with
//! fp32 accumulation.

use std::ffi::c_void;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::CudaStream;

use super::context::Storage;
use super::Precision;

/// A row-major GEMM: C (m, n) = op(A) (m, k) . op(B) (k, n), optionally batched with
/// strides; A, B, C densely packed (leading dimension = row length).
#[derive(Clone, Copy, Debug)]
pub(super) struct Gemm {
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    beta: f32,
    batch: usize,
    stride_a: usize,
    stride_b: usize,
    stride_c: usize,
}

impl Gemm {
    pub(super) fn new(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize) -> Self {
        Self {
            trans_a,
            trans_b,
            m,
            n,
            k,
            beta: 0.0,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }

    pub(super) fn beta(self, beta: f32) -> Self {
        Self { beta, ..self }
    }

    pub(super) fn batched(
        self,
        batch: usize,
        stride_a: usize,
        stride_b: usize,
        stride_c: usize,
    ) -> Self {
        Self {
            batch,
            stride_a,
            stride_b,
            stride_c,
            ..self
        }
    }
}

/// The arguments of one column-major cuBLAS sgemm call: C = op(A) op(B), C (m, n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ColMajor {
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    stride_a: usize,
    stride_b: usize,
}

impl Gemm {
    /// cuBLAS is column-major: a row-major (r, c) matrix is its column-major transpose, so
    /// row-major C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T, i.e.
    /// with the operands swapped and m, n exchanged; the transposes stay with their
    /// operands.
    fn col_major(&self) -> ColMajor {
        ColMajor {
            trans_a: self.trans_b,
            trans_b: self.trans_a,
            m: self.n,
            n: self.m,
            k: self.k,
            // Leading dimensions: the row length of each row-major operand as stored.
            lda: if self.trans_b { self.k } else { self.n },
            ldb: if self.trans_a { self.m } else { self.k },
            ldc: self.n,
            stride_a: self.stride_b,
            stride_b: self.stride_a,
        }
    }
}

fn cublas_op(transpose: bool) -> blas_sys::cublasOperation_t {
    if transpose {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

fn cublas_dim(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("GEMM dimension {v} exceeds cuBLAS's 32-bit range"))
}

fn failed(call: &str, g: &Gemm, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "cuBLAS {call} ({}x{}x{}, batch {}) failed: {e}",
        g.m,
        g.n,
        g.k,
        g.batch
    )
}

/// Runs `g` on device pointers a, b, c (row-major operands, `g`'s strides between batches).
pub(super) fn gemm(blas: &CudaBlas, g: &Gemm, a: u64, b: u64, c: u64) -> Result<()> {
    let cm = g.col_major();
    let alpha = 1.0f32;
    // The row-major B is cuBLAS's A and the row-major A its B.
    let (first, second, c) = (b as *const f32, a as *const f32, c as *mut f32);
    // SAFETY: the callers checked every operand's length against m, n, k (and batch).
    let status = unsafe {
        if g.batch == 1 {
            blas::sgemm(
                *blas.handle(),
                cublas_op(cm.trans_a),
                cublas_op(cm.trans_b),
                cublas_dim(cm.m)?,
                cublas_dim(cm.n)?,
                cublas_dim(cm.k)?,
                &alpha,
                first,
                cublas_dim(cm.lda)?,
                second,
                cublas_dim(cm.ldb)?,
                &g.beta,
                c,
                cublas_dim(cm.ldc)?,
            )
        } else {
            blas::sgemm_strided_batched(
                *blas.handle(),
                cublas_op(cm.trans_a),
                cublas_op(cm.trans_b),
                cublas_dim(cm.m)?,
                cublas_dim(cm.n)?,
                cublas_dim(cm.k)?,
                &alpha,
                first,
                cublas_dim(cm.lda)?,
                cm.stride_a as i64,
                second,
                cublas_dim(cm.ldb)?,
                cm.stride_b as i64,
                &g.beta,
                c,
                cublas_dim(cm.ldc)?,
                g.stride_c as i64,
                cublas_dim(g.batch)?,
            )
        }
    };
    status.map_err(|e| failed("sgemm", g, e))
}

/// Runs `g` on half-precision operands a, b (`storage`) into c (`c_storage`: f32 or the
/// same half type) with cublasGemmEx, fp32 accumulation (CUBLAS_COMPUTE_32F: tensor
/// cores, alpha and beta in f32).
pub(super) fn gemm_ex(
    blas: &CudaBlas,
    g: &Gemm,
    a: u64,
    b: u64,
    c: u64,
    storage: Storage,
    c_storage: Storage,
) -> Result<()> {
    use blas_sys::cudaDataType as T;
    let dtype = |s: Storage| match s {
        Storage::F32 => T::CUDA_R_32F,
        Storage::F16 => T::CUDA_R_16F,
        Storage::Bf16 => T::CUDA_R_16BF,
    };
    let cm = g.col_major();
    let alpha = 1.0f32;
    let (ab, ct) = (dtype(storage), dtype(c_storage));
    let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
    let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    // The row-major B is cuBLAS's A and the row-major A its B.
    let (first, second) = (b as *const c_void, a as *const c_void);
    let (alpha_p, beta_p) = (
        (&alpha as *const f32).cast::<c_void>(),
        (&g.beta as *const f32).cast::<c_void>(),
    );
    // SAFETY: the callers checked every operand's length against m, n, k (and batch).
    let status = unsafe {
        if g.batch == 1 {
            blas::gemm_ex(
                *blas.handle(),
                cublas_op(cm.trans_a),
                cublas_op(cm.trans_b),
                cublas_dim(cm.m)?,
                cublas_dim(cm.n)?,
                cublas_dim(cm.k)?,
                alpha_p,
                first,
                ab,
                cublas_dim(cm.lda)?,
                second,
                ab,
                cublas_dim(cm.ldb)?,
                beta_p,
                c as *mut c_void,
                ct,
                cublas_dim(cm.ldc)?,
                compute,
                algo,
            )
        } else {
            blas::gemm_strided_batched_ex(
                *blas.handle(),
                cublas_op(cm.trans_a),
                cublas_op(cm.trans_b),
                cublas_dim(cm.m)?,
                cublas_dim(cm.n)?,
                cublas_dim(cm.k)?,
                alpha_p,
                first,
                ab,
                cublas_dim(cm.lda)?,
                cm.stride_a as i64,
                second,
                ab,
                cublas_dim(cm.ldb)?,
                cm.stride_b as i64,
                beta_p,
                c as *mut c_void,
                ct,
                cublas_dim(cm.ldc)?,
                g.stride_c as i64,
                cublas_dim(g.batch)?,
                compute,
                algo,
            )
        }
    };
    status.map_err(|e| failed(&format!("GemmEx {storage:?}"), g, e))
}

/// A cuBLAS handle on `stream` computing fp32 GEMMs the way `precision` says.
pub(super) fn new_blas(stream: &Arc<CudaStream>, precision: Precision) -> Result<CudaBlas> {
    let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cannot start cuBLAS: {e}"))?;
    let mode = match precision {
        // DEFAULT never uses TF32 for fp32 GEMMs (PyTorch's allow_tf32 = False uses it too).
        Precision::Fp32 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        Precision::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        // Half GEMMs go through GemmEx with CUBLAS_COMPUTE_32F, which picks tensor cores
        // itself; the math mode only concerns the f32 GEMMs none of these run.
        Precision::Bf16 | Precision::Fp16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
    };
    // SAFETY: a valid handle just created.
    unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) }
        .result()
        .map_err(|e| anyhow!("cannot set the cuBLAS math mode: {e}"))?;
    Ok(blas)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cuBLAS's column-major sgemm, as its documentation defines it, on host arrays.
    fn col_major_sgemm(cm: &ColMajor, a: &[f64], b: &[f64], c: &mut [f64], beta: f64) {
        let at = |i: usize, l: usize| {
            if cm.trans_a {
                a[l + i * cm.lda]
            } else {
                a[i + l * cm.lda]
            }
        };
        let bt = |l: usize, j: usize| {
            if cm.trans_b {
                b[j + l * cm.ldb]
            } else {
                b[l + j * cm.ldb]
            }
        };
        for j in 0..cm.n {
            for i in 0..cm.m {
                let dot: f64 = (0..cm.k).map(|l| at(i, l) * bt(l, j)).sum();
                c[i + j * cm.ldc] = dot + beta * c[i + j * cm.ldc];
            }
        }
    }

    /// cuBLAS refuses (CUBLAS_STATUS_INVALID_VALUE) a leading dimension below the rows
    /// of the column-major operand as stored, or below 1: lda >= max(1, trans_a ? k : m),
    /// ldb >= max(1, trans_b ? n : k), ldc >= max(1, m). Every shape the ops issue has
    /// m, n, k >= 1, down to attention's Lq = 1 ([CLS] only) and one-token texts.
    #[test]
    fn leading_dimensions_are_valid_for_cublas_down_to_single_rows() {
        for (m, n, k) in every_shape([1, 2, 7]) {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let cm = Gemm::new(ta, tb, m, n, k).col_major();
                let a_rows = if cm.trans_a { cm.k } else { cm.m };
                let b_rows = if cm.trans_b { cm.n } else { cm.k };
                assert!(cm.lda >= a_rows.max(1), "{m}x{n}x{k} {ta} {tb}: {cm:?}");
                assert!(cm.ldb >= b_rows.max(1), "{m}x{n}x{k} {ta} {tb}: {cm:?}");
                assert!(cm.ldc >= cm.m.max(1), "{m}x{n}x{k} {ta} {tb}: {cm:?}");
                assert_eq!((cm.m, cm.n, cm.k), (n, m, k));
            }
        }
    }

    fn every_shape(v: [usize; 3]) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for a in v {
            for b in v {
                for c in v {
                    out.push((a, b, c));
                }
            }
        }
        out
    }

    /// Row-major GEMMs of every transpose combination, batched with strides as attention
    /// issues them, mapped to cuBLAS's arguments and run by a model of cuBLAS, equal the
    /// row-major products computed directly.
    #[test]
    fn row_major_gemm_maps_onto_column_major_cublas() {
        // Attention's shapes included: Lq = 1 ([CLS] only), one-token texts (L = 1), one
        // text of one head (batch 1).
        let shapes = [
            (5, 7, 3, 3),
            (1, 7, 3, 4),
            (1, 3, 7, 2),
            (5, 1, 1, 1),
            (1, 1, 1, 2),
        ];
        for ((m, n, k, batch), (trans_a, trans_b)) in shapes.into_iter().flat_map(|s| {
            [(false, false), (false, true), (true, false), (true, true)].map(|t| (s, t))
        }) {
            let (ac, bc) = (if trans_a { m } else { k }, if trans_b { k } else { n });
            let a: Vec<f64> = (0..batch * m * k)
                .map(|v| (v as f64 * 0.37).sin())
                .collect();
            let b: Vec<f64> = (0..batch * k * n)
                .map(|v| (v as f64 * 0.71).cos())
                .collect();
            let bias = 0.5;
            let mut want = vec![bias; batch * m * n];
            for (z, out) in want.chunks_exact_mut(m * n).enumerate() {
                let (a, b) = (&a[z * m * k..], &b[z * k * n..]);
                let opa = |i: usize, l: usize| {
                    if trans_a {
                        a[l * ac + i]
                    } else {
                        a[i * ac + l]
                    }
                };
                let opb = |l: usize, j: usize| {
                    if trans_b {
                        b[j * bc + l]
                    } else {
                        b[l * bc + j]
                    }
                };
                for (e, o) in out.iter_mut().enumerate() {
                    *o += (0..k).map(|l| opa(e / n, l) * opb(l, e % n)).sum::<f64>();
                }
            }
            let g =
                Gemm::new(trans_a, trans_b, m, n, k)
                    .beta(1.0)
                    .batched(batch, m * k, k * n, m * n);
            let cm = g.col_major();
            let mut got = vec![bias; batch * m * n];
            for z in 0..batch {
                // cuBLAS's A is the row-major B, its B the row-major A.
                let (ca, cb) = (&b[z * cm.stride_a..], &a[z * cm.stride_b..]);
                col_major_sgemm(&cm, ca, cb, &mut got[z * g.stride_c..], 1.0);
            }
            for (got, want) in got.iter().zip(&want) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{m}x{n}x{k} batch {batch} trans_a={trans_a} trans_b={trans_b}: {got} vs {want}"
                );
            }
        }
    }
}
