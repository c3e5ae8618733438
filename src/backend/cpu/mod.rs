//! The CPU backend: pure Rust, the reference every other backend is checked against.
//!
//! GEMMs go through the `gemm` crate (AVX-512/AVX2 kernels picked at run time); the
//! element-wise ops are written so the compiler vectorises them (see `simd`), and rows
//! and attention heads are spread over a rayon pool.

mod activation;
mod attention;
mod layernorm;
mod linear;
mod microkernel;
mod packed;
mod simd;
mod tensor;

use anyhow::{anyhow, bail, Context, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

use super::{Activation, Backend, QueryRows};
use crate::batch::PackedBatch;
use crate::model::weights::{
    weight_copy, EmbeddingWeights, HostTensor, LayerNormWeights, LinearWeights,
};

pub use simd::{erf, exp};
pub use tensor::CpuTensor;

use packed::PackedWeight;

/// A pointer to an output buffer that rayon tasks share, each writing its own disjoint
/// block (a column slab in `linear`, a (text, head) block in `attention`): the borrow
/// checker cannot see that the blocks do not overlap, the callers' SAFETY notes say why.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only ever used for disjoint writes, see above.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, not field access: closures would otherwise capture the bare `*mut f32`.
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub struct CpuBackend {
    pool: ThreadPool,
    threads: usize,
}

/// The most CPU threads per core `--threads` may ask for.
pub const MAX_THREADS_PER_CORE: usize = 4;

impl CpuBackend {
    /// `threads` = 0 uses every core; more than [`MAX_THREADS_PER_CORE`] per core is
    /// refused (each thread has a stack, and thousands of them can fail to start).
    pub fn new(threads: usize) -> Result<Self> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let most = cores * MAX_THREADS_PER_CORE;
        if threads > most {
            bail!(
                "--threads {threads} is more than {MAX_THREADS_PER_CORE} per core on this machine's {cores} cores: use at most {most} (0 uses every core)"
            );
        }
        let threads = if threads == 0 { cores } else { threads };
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bertcls-cpu-{i}"))
            .build()
            .context("cannot start the CPU thread pool")?;
        Ok(Self { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", self.threads, simd::describe())
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn upload(&self, host: &[f32]) -> Result<CpuTensor> {
        Ok(CpuTensor::plain(weight_copy(host)?))
    }

    fn upload_host(&self, host: HostTensor) -> Result<CpuTensor> {
        Ok(match host {
            HostTensor::Decoded(v) => CpuTensor::plain(v),
            HostTensor::Mapped(m) => CpuTensor::mapped(m),
        })
    }

    /// Packed for the microkernel, once: `linear` then never copies a weight.
    fn upload_linear_weight(
        &self,
        w: &[f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<CpuTensor> {
        Ok(CpuTensor::packed(self.pool.install(|| {
            PackedWeight::new(w, out_features, in_features)
        })?))
    }

    fn download(&self, t: &CpuTensor, len: usize) -> Result<Vec<f32>> {
        if t.as_packed().is_some() {
            bail!("download: a packed Linear weight has no plain copy on the CPU backend");
        }
        Ok(t[..len].to_vec())
    }

    /// Fallible, unlike `vec!`, which aborts the process when the memory is not there.
    fn alloc(&self, len: usize) -> Result<CpuTensor> {
        let v = zeroed_vec(len).ok_or_else(|| {
            anyhow!(
                "cannot allocate {} MiB of CPU memory",
                (len as u128 * 4) >> 20
            )
        })?;
        Ok(CpuTensor::plain(v))
    }

    fn embeddings_layernorm(
        &self,
        batch: &PackedBatch,
        emb: &EmbeddingWeights<CpuTensor>,
        eps: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        self.pool
            .install(|| layernorm::embeddings_layernorm(batch, emb, eps, out));
        Ok(())
    }

    fn linear(
        &self,
        x: &CpuTensor,
        rows: usize,
        lin: &LinearWeights<CpuTensor>,
        add_bias: bool,
        out: &mut CpuTensor,
    ) -> Result<()> {
        self.pool
            .install(|| linear::linear(x, rows, lin, add_bias, out, self.threads))
    }

    fn bias_activation(
        &self,
        x: &mut CpuTensor,
        rows: usize,
        bias: &CpuTensor,
        width: usize,
        act: Activation,
    ) -> Result<()> {
        self.pool
            .install(|| activation::bias_activation(&mut x[..rows * width], bias, act));
        Ok(())
    }

    fn bias_residual_layernorm(
        &self,
        x: &mut CpuTensor,
        rows: usize,
        bias: &CpuTensor,
        residual: &CpuTensor,
        ln: &LayerNormWeights<CpuTensor>,
        eps: f32,
    ) -> Result<()> {
        let c = bias.len();
        self.pool.install(|| {
            layernorm::bias_residual_layernorm(
                &mut x[..rows * c],
                bias,
                &residual[..rows * c],
                ln,
                eps,
            )
        });
        Ok(())
    }

    fn attention(
        &self,
        qkv: &CpuTensor,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
        query_rows: QueryRows,
        out: &mut CpuTensor,
    ) -> Result<()> {
        match query_rows {
            QueryRows::All => self
                .pool
                .install(|| attention::attention(qkv, offsets, heads, head_dim, out)),
            // Every row, then the [CLS] rows: the gemm crate computes one query row's
            // scores with other kernels than a block of rows (lanes summed at the end, not
            // each score in k order), so [CLS] attending alone would differ from the [CLS]
            // rows of `All` by ulps. This way [CLS] pooling is bit for bit the [CLS] half
            // of any wider pooling, and a search shares one forward among them. The cost,
            // the last layer's attention for every row, is about 1/12 of the attention's
            // 4-5% of a forward: within the noise (docs/BENCHMARKS.md).
            QueryRows::ClsOnly => {
                let c = heads * head_dim;
                // Every row, (T, C), in `out`; then text i's [CLS] row moves from row
                // offsets[i] >= i to row i: in order, no row is overwritten before it moves.
                self.pool
                    .install(|| attention::attention(qkv, offsets, heads, head_dim, out));
                for (i, &start) in offsets[..offsets.len() - 1].iter().enumerate() {
                    out.copy_within(start * c..(start + 1) * c, i * c);
                }
            }
        }
        Ok(())
    }

    fn mean_pool(
        &self,
        hidden: &CpuTensor,
        width: usize,
        offsets: &[usize],
        out: &mut CpuTensor,
    ) -> Result<()> {
        for (i, span) in offsets.windows(2).enumerate() {
            let (start, end) = (span[0], span[1]);
            if end <= start {
                bail!("mean_pool: text {i} has no tokens");
            }
            let row = &mut out[i * width..(i + 1) * width];
            // Summed token by token in f32, in order: the CUDA kernel's order too.
            row.fill(0.0);
            for t in start..end {
                for (acc, &v) in row.iter_mut().zip(&hidden[t * width..(t + 1) * width]) {
                    *acc += v;
                }
            }
            let len = (end - start) as f32;
            for v in row.iter_mut() {
                *v /= len;
            }
        }
        Ok(())
    }

    fn gather_rows(
        &self,
        src: &CpuTensor,
        width: usize,
        rows: &[usize],
        dst: &mut CpuTensor,
    ) -> Result<()> {
        for (i, &r) in rows.iter().enumerate() {
            dst[i * width..(i + 1) * width].copy_from_slice(&src[r * width..(r + 1) * width]);
        }
        Ok(())
    }
}

/// `len` zeros from the allocator's zeroed memory, or `None` where it has none. For a
/// large workspace the OS then hands out pages that cost nothing until an op first writes
/// them, where writing the zeros here would touch all of it at load: the default
/// `--max-batch-tokens` workspace is hundreds of MiB, and a short text uses a sliver.
fn zeroed_vec(len: usize) -> Option<Vec<f32>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(len).ok()?;
    // SAFETY: the layout's size is non-zero. A non-null result is `len` f32s of zero bits
    // (0.0) from the global allocator with exactly this layout, which is what
    // `Vec::from_raw_parts` needs for a length and capacity of `len`.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<f32>();
        (!p.is_null()).then(|| Vec::from_raw_parts(p, len, len))
    }
}
