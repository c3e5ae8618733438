//! `CudaBackend`: the encoder's ops on one GPU, cuBLAS for the GEMMs and our kernels for
//! everything between them.

use std::cell::RefCell;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::context::{self, alloc_error, launch, Arg, Grid, Kernel, Kernels};
use super::Precision;
use crate::backend::{Activation, Backend, QueryRows};
use crate::batch::PackedBatch;
use crate::model::weights::{EmbeddingWeights, LayerNormWeights, LinearWeights};

/// Keys per text the score scratch always has room for: BERT's max_position_embeddings.
const MAX_TEXT_LEN: usize = 512;
/// Score rows (query rows x keys, per head) per budget token: a batch of 128-token texts
/// that fills the token budget attends in one chunk; longer texts split into a few.
const SCORE_KEYS_PER_TOKEN: usize = 128;

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Arc<Kernels>,
    precision: Precision,
    max_batch_tokens: usize,
    name: String,
    ordinal: usize,
    scratch: RefCell<Scratch>,
}

/// Per-batch index uploads, sized for `max_batch_tokens` once.
struct Scratch {
    ids: CudaSlice<u32>,       // (P,)
    positions: CudaSlice<u32>, // (P,)
    type_ids: CudaSlice<u32>,  // (P,)
    offsets: CudaSlice<u32>,   // (P + 1,)
    rows: CudaSlice<u32>,      // (P,)
    /// Made on the first attention call, when heads and head size are known; never resized.
    attn: Option<AttentionScratch>,
}

/// Padded per-head copies of Q, K, V and the context, and the score matrices.
struct AttentionScratch {
    heads: usize,
    head_dim: usize,
    /// Padded rows (texts x longest length) per chunk.
    pad_rows: usize,
    q: CudaSlice<f32>,      // (pad_rows, C) as (n, H, Lq, hd)
    k: CudaSlice<f32>,      // (pad_rows, C) as (n, H, L, hd)
    v: CudaSlice<f32>,      // (pad_rows, C) as (n, H, L, hd)
    ctx: CudaSlice<f32>,    // (pad_rows, C) as (n, H, Lq, hd)
    scores: CudaSlice<f32>, // (score_cap,) as (n, H, Lq, L)
}

impl CudaBackend {
    /// Opens `cuda:ordinal`, loads the embedded kernels (every one by name) and allocates
    /// the index and attention scratch for batches of up to `max_batch_tokens` tokens.
    /// Fails with one line, never a panic, where no GPU, driver, cuBLAS or kernels exist.
    pub fn new(ordinal: usize, precision: Precision, max_batch_tokens: usize) -> Result<Self> {
        if max_batch_tokens == 0 {
            bail!("--max-batch-tokens must be at least 1");
        }
        let (ctx, stream) = context::open(ordinal)?;
        let name = ctx
            .name()
            .map_err(|e| anyhow!("cannot query cuda:{ordinal}: {e}"))?;
        let kernels = Arc::new(Kernels::load(&ctx)?);
        let blas = new_blas(&stream, precision)?;
        let p = max_batch_tokens;
        let alloc = |len: usize| alloc_u32(&stream, len, p);
        let scratch = Scratch {
            ids: alloc(p)?,
            positions: alloc(p)?,
            type_ids: alloc(p)?,
            offsets: alloc(p + 1)?,
            rows: alloc(p)?,
            attn: None,
        };
        Ok(Self {
            stream,
            blas,
            kernels,
            precision,
            max_batch_tokens,
            name,
            ordinal,
            scratch: RefCell::new(scratch),
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(super) fn kernels(&self) -> &Arc<Kernels> {
        &self.kernels
    }

    /// Waits for every queued kernel: for timings.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA error: {e}"))
    }

    fn ptr<T>(&self, t: &CudaSlice<T>) -> Arg {
        Arg::Ptr(t.device_ptr(&self.stream).0)
    }

    fn launch(&self, kernel: &Kernel, grid: Grid, args: &[Arg]) -> Result<()> {
        launch(&self.stream, kernel, grid, args)
    }

    fn check_tokens(&self, t: usize) -> Result<()> {
        if t > self.max_batch_tokens {
            bail!(
                "a batch of {t} tokens exceeds the CUDA backend's budget of {} tokens (--max-batch-tokens)",
                self.max_batch_tokens
            );
        }
        Ok(())
    }

    fn upload_u32(&self, dst: &mut CudaSlice<u32>, src: &[u32]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(src, &mut dst.slice_mut(..src.len()))
            .map_err(|e| anyhow!("CUDA upload failed: {e}"))
    }

    fn attention_scratch<'a>(
        &self,
        s: &'a mut Scratch,
        heads: usize,
        head_dim: usize,
    ) -> Result<&'a AttentionScratch> {
        if let Some(a) = &s.attn {
            if (a.heads, a.head_dim) != (heads, head_dim) {
                bail!(
                    "the CUDA attention scratch was made for {} heads of {}, called with {heads} of {head_dim}: use one backend per model",
                    a.heads,
                    a.head_dim
                );
            }
        } else {
            let pad_rows = self.max_batch_tokens.max(MAX_TEXT_LEN);
            let c = heads * head_dim;
            let score_cap = heads
                * (self.max_batch_tokens * SCORE_KEYS_PER_TOKEN).max(MAX_TEXT_LEN * MAX_TEXT_LEN);
            let alloc = |len| alloc_f32(&self.stream, len, self.max_batch_tokens);
            s.attn = Some(AttentionScratch {
                heads,
                head_dim,
                pad_rows,
                q: alloc(pad_rows * c)?,
                k: alloc(pad_rows * c)?,
                v: alloc(pad_rows * c)?,
                ctx: alloc(pad_rows * c)?,
                scores: alloc(score_cap)?,
            });
        }
        Ok(s.attn.as_ref().expect("made above"))
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaSlice<f32>;

    fn describe(&self) -> String {
        format!("cuda:{} ({}, {})", self.ordinal, self.name, self.precision)
    }

    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        let mut t = alloc_f32(&self.stream, host.len(), self.max_batch_tokens)?;
        if !host.is_empty() {
            self.stream
                .memcpy_htod(host, &mut t.slice_mut(..host.len()))
                .map_err(|e| anyhow!("CUDA upload failed: {e}"))?;
        }
        Ok(t)
    }

    fn download(&self, t: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>> {
        need(t, len, "download")?;
        if len == 0 {
            return Ok(Vec::new());
        }
        // memcpy to pageable host memory synchronises the stream: every queued op is done.
        self.stream
            .clone_dtoh(&t.slice(..len))
            .map_err(|e| anyhow!("CUDA error: {e}"))
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        alloc_f32(&self.stream, len, self.max_batch_tokens)
    }

    fn embeddings_layernorm(
        &self,
        batch: &PackedBatch,
        emb: &EmbeddingWeights<CudaSlice<f32>>,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let t = batch.num_tokens();
        let c = emb.ln.gamma.len();
        self.check_tokens(t)?;
        need(out, t * c, "embeddings output")?;
        // The kernel indexes the tables with these ids: check them here, where a bad id is
        // an error and not an out-of-bounds read.
        for (ids, table, what) in [
            (&batch.ids, &emb.word, "token id"),
            (&batch.positions, &emb.position, "position"),
            (&batch.type_ids, &emb.token_type, "token type id"),
        ] {
            let rows = table.len() / c;
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
                bail!("{what} {bad} is outside the embedding table of {rows} rows");
            }
        }
        if t == 0 {
            return Ok(());
        }
        let mut s = self.scratch.borrow_mut();
        self.upload_u32(&mut s.ids, &batch.ids)?;
        self.upload_u32(&mut s.positions, &batch.positions)?;
        self.upload_u32(&mut s.type_ids, &batch.type_ids)?;
        let k = &self.kernels;
        self.launch(
            &k.embeddings_layernorm_forward,
            Grid::per_row(t, c)?,
            &[
                self.ptr(out),
                self.ptr(&s.ids),
                self.ptr(&s.positions),
                self.ptr(&s.type_ids),
                self.ptr(&emb.word),
                self.ptr(&emb.position),
                self.ptr(&emb.token_type),
                self.ptr(&emb.ln.gamma),
                self.ptr(&emb.ln.beta),
                Arg::I32(t as i32),
                Arg::I32(c as i32),
                Arg::F32(eps),
            ],
        )
    }

    fn linear(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        lin: &LinearWeights<CudaSlice<f32>>,
        add_bias: bool,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (n, k) = (lin.out_features, lin.in_features);
        need(x, rows * k, "linear input")?;
        need(out, rows * n, "linear output")?;
        need(&lin.w, n * k, "linear weight")?;
        if rows == 0 {
            return Ok(());
        }
        let beta = if add_bias {
            need(&lin.b, n, "linear bias")?;
            // out starts as the bias in every row; the GEMM adds x W^T to it (beta = 1).
            self.launch(
                &self.kernels.broadcast_bias_rows,
                Grid::elementwise(rows * n)?,
                &[
                    self.ptr(out),
                    self.ptr(&lin.b),
                    Arg::I32(rows as i32),
                    Arg::I32(n as i32),
                ],
            )?;
            1.0
        } else {
            0.0
        };
        // out (rows, N) = x (rows, K) . W^T, W (N, K)
        let g = Gemm::new(false, true, rows, n, k).beta(beta);
        gemm(
            &self.blas,
            &g,
            dptr(x, &self.stream),
            dptr(&lin.w, &self.stream),
            dptr(out, &self.stream),
        )
    }

    fn bias_activation(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        bias: &CudaSlice<f32>,
        width: usize,
        act: Activation,
    ) -> Result<()> {
        need(x, rows * width, "activation input")?;
        need(bias, width, "activation bias")?;
        let k = &self.kernels;
        let f = match act {
            Activation::GeluErf => &k.bias_gelu_erf_forward,
            Activation::GeluTanh => &k.bias_gelu_tanh_forward,
            Activation::Relu => &k.bias_relu_forward,
        };
        self.launch(
            f,
            Grid::elementwise(rows * width)?,
            &[
                self.ptr(x),
                self.ptr(bias),
                Arg::I32(rows as i32),
                Arg::I32(width as i32),
            ],
        )
    }

    fn bias_residual_layernorm(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        bias: &CudaSlice<f32>,
        residual: &CudaSlice<f32>,
        ln: &LayerNormWeights<CudaSlice<f32>>,
        eps: f32,
    ) -> Result<()> {
        let c = ln.gamma.len();
        need(x, rows * c, "layernorm input")?;
        need(residual, rows * c, "layernorm residual")?;
        need(bias, c, "layernorm bias")?;
        need(&ln.beta, c, "layernorm beta")?;
        self.launch(
            &self.kernels.bias_residual_layernorm_forward,
            Grid::per_row(rows, c)?,
            &[
                self.ptr(x),
                self.ptr(bias),
                self.ptr(residual),
                self.ptr(&ln.gamma),
                self.ptr(&ln.beta),
                Arg::I32(rows as i32),
                Arg::I32(c as i32),
                Arg::F32(eps),
            ],
        )
    }

    fn attention(
        &self,
        qkv: &CudaSlice<f32>,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
        query_rows: QueryRows,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = offsets.len().saturating_sub(1);
        if n == 0 {
            return Ok(());
        }
        let t = offsets[n];
        let c = heads * head_dim;
        self.check_tokens(t)?;
        need(qkv, t * 3 * c, "attention qkv")?;
        let all_rows = query_rows == QueryRows::All;
        need(
            out,
            if all_rows { t * c } else { n * c },
            "attention output",
        )?;
        let lens: Vec<usize> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let offsets_u32: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();

        let mut s = self.scratch.borrow_mut();
        self.upload_u32(&mut s.offsets, &offsets_u32)?;
        let offsets_ptr = dptr(&s.offsets, &self.stream);
        let a = self.attention_scratch(&mut s, heads, head_dim)?;
        let chunks = plan_chunks(&lens, heads, all_rows, a.pad_rows, a.scores.len())?;
        // HF scales by head_dim ** -0.5, a Python float rounded to f32 once.
        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        let k = &self.kernels;
        let (q_pad, k_pad, v_pad, ctx, scores) = (
            dptr(&a.q, &self.stream),
            dptr(&a.k, &self.stream),
            dptr(&a.v, &self.stream),
            dptr(&a.ctx, &self.stream),
            dptr(&a.scores, &self.stream),
        );
        for chunk in chunks {
            let (nc, l) = (chunk.texts, chunk.max_len);
            let lq = if all_rows { l } else { 1 };
            let chunk_offsets = Arg::Ptr(offsets_ptr + 4 * chunk.first as u64);
            let dims = |v: usize| Arg::I32(v as i32);
            // (n, H, Lq, hd) Q and (n, H, L, hd) K, V, zero-padded
            self.launch(
                &k.attention_gather_qkv,
                Grid::elementwise(nc * heads * l * head_dim)?,
                &[
                    Arg::Ptr(q_pad),
                    Arg::Ptr(k_pad),
                    Arg::Ptr(v_pad),
                    self.ptr(qkv),
                    chunk_offsets,
                    dims(nc),
                    dims(heads),
                    dims(l),
                    dims(lq),
                    dims(head_dim),
                ],
            )?;
            // scores (n H, Lq, L) = Q (n H, Lq, hd) . K^T
            let g = Gemm::new(false, true, lq, l, head_dim).batched(
                nc * heads,
                lq * head_dim,
                l * head_dim,
                lq * l,
            );
            gemm(&self.blas, &g, q_pad, k_pad, scores)?;
            self.launch(
                &k.attention_softmax_scale_mask,
                Grid::warp_per_row(nc * heads * lq),
                &[
                    Arg::Ptr(scores),
                    chunk_offsets,
                    dims(nc),
                    dims(heads),
                    dims(lq),
                    dims(l),
                    Arg::F32(scale),
                ],
            )?;
            // context (n H, Lq, hd) = P (n H, Lq, L) . V (n H, L, hd)
            let g = Gemm::new(false, false, lq, head_dim, l).batched(
                nc * heads,
                lq * l,
                l * head_dim,
                lq * head_dim,
            );
            gemm(&self.blas, &g, scores, v_pad, ctx)?;
            self.launch(
                &k.attention_scatter_context,
                Grid::elementwise(nc * heads * lq * head_dim)?,
                &[
                    self.ptr(out),
                    Arg::Ptr(ctx),
                    chunk_offsets,
                    dims(nc),
                    dims(heads),
                    dims(lq),
                    dims(head_dim),
                    Arg::I32(all_rows as i32),
                    dims(chunk.first),
                ],
            )?;
        }
        Ok(())
    }

    fn mean_pool(
        &self,
        hidden: &CudaSlice<f32>,
        width: usize,
        offsets: &[usize],
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = offsets.len().saturating_sub(1);
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] <= w[0]) {
            bail!("mean_pool: text {i} has no tokens");
        }
        let t = offsets.last().copied().unwrap_or(0);
        self.check_tokens(t)?;
        need(out, n * width, "mean_pool output")?;
        need(hidden, t * width, "mean_pool input")?;
        let offsets_u32: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();
        let mut s = self.scratch.borrow_mut();
        self.upload_u32(&mut s.offsets, &offsets_u32)?;
        self.launch(
            &self.kernels.mean_pool_rows,
            Grid::elementwise(n * width)?,
            &[
                self.ptr(out),
                self.ptr(hidden),
                self.ptr(&s.offsets),
                Arg::I32(n as i32),
                Arg::I32(width as i32),
            ],
        )
    }

    fn gather_rows(
        &self,
        src: &CudaSlice<f32>,
        width: usize,
        rows: &[usize],
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = rows.len();
        self.check_tokens(n)?;
        need(dst, n * width, "gather output")?;
        if let Some(&max) = rows.iter().max() {
            need(src, (max + 1) * width, "gather source")?;
        }
        let rows_u32: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let mut s = self.scratch.borrow_mut();
        self.upload_u32(&mut s.rows, &rows_u32)?;
        self.launch(
            &self.kernels.gather_rows,
            Grid::elementwise(n * width)?,
            &[
                self.ptr(dst),
                self.ptr(src),
                self.ptr(&s.rows),
                Arg::I32(n as i32),
                Arg::I32(width as i32),
            ],
        )
    }
}

/// A run of consecutive texts whose attention runs as one set of batched GEMMs.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    first: usize,
    texts: usize,
    max_len: usize,
}

/// Greedily groups consecutive texts so that each group, padded to its longest text,
/// fits the padded-row and score scratch. Texts come longest first from the batcher, so
/// groups waste little padding.
fn plan_chunks(
    lens: &[usize],
    heads: usize,
    all_rows: bool,
    pad_rows: usize,
    score_cap: usize,
) -> Result<Vec<Chunk>> {
    let fits = |texts: usize, l: usize| {
        let lq = if all_rows { l } else { 1 };
        texts * l <= pad_rows && heads * texts * lq * l <= score_cap
    };
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut cur = Chunk {
        first: 0,
        texts: 0,
        max_len: 0,
    };
    for (i, &len) in lens.iter().enumerate() {
        let l = cur.max_len.max(len);
        if fits(cur.texts + 1, l) {
            cur.texts += 1;
            cur.max_len = l;
            continue;
        }
        if !fits(1, len) {
            bail!("a text of {len} tokens does not fit the CUDA attention scratch: raise --max-batch-tokens or lower --max-length");
        }
        if cur.texts > 0 {
            chunks.push(cur);
        }
        cur = Chunk {
            first: i,
            texts: 1,
            max_len: len,
        };
    }
    if cur.texts > 0 {
        chunks.push(cur);
    }
    Ok(chunks)
}

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

/// Runs `g` on device pointers a, b, c (row-major operands, `g`'s strides between batches).
pub(super) fn gemm(blas: &CudaBlas, g: &Gemm, a: u64, b: u64, c: u64) -> Result<()> {
    let op = |t: bool| {
        if t {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cm = g.col_major();
    let i = |v: usize| -> Result<i32> {
        i32::try_from(v).map_err(|_| anyhow!("GEMM dimension {v} exceeds cuBLAS's 32-bit range"))
    };
    let alpha = 1.0f32;
    // The row-major B is cuBLAS's A and the row-major A its B.
    let (first, second, c) = (b as *const f32, a as *const f32, c as *mut f32);
    // SAFETY: the callers checked every operand's length against m, n, k (and batch).
    let status = unsafe {
        if g.batch == 1 {
            blas::sgemm(
                *blas.handle(),
                op(cm.trans_a),
                op(cm.trans_b),
                i(cm.m)?,
                i(cm.n)?,
                i(cm.k)?,
                &alpha,
                first,
                i(cm.lda)?,
                second,
                i(cm.ldb)?,
                &g.beta,
                c,
                i(cm.ldc)?,
            )
        } else {
            blas::sgemm_strided_batched(
                *blas.handle(),
                op(cm.trans_a),
                op(cm.trans_b),
                i(cm.m)?,
                i(cm.n)?,
                i(cm.k)?,
                &alpha,
                first,
                i(cm.lda)?,
                cm.stride_a as i64,
                second,
                i(cm.ldb)?,
                cm.stride_b as i64,
                &g.beta,
                c,
                i(cm.ldc)?,
                g.stride_c as i64,
                i(g.batch)?,
            )
        }
    };
    status.map_err(|e| {
        anyhow!(
            "cuBLAS sgemm ({}x{}x{}, batch {}) failed: {e}",
            g.m,
            g.n,
            g.k,
            g.batch
        )
    })
}

/// A cuBLAS handle on `stream` computing fp32 GEMMs the way `precision` says.
pub(super) fn new_blas(stream: &Arc<CudaStream>, precision: Precision) -> Result<CudaBlas> {
    let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cannot start cuBLAS: {e}"))?;
    let mode = match precision {
        // DEFAULT never uses TF32 for fp32 GEMMs (PyTorch's allow_tf32 = False uses it too).
        Precision::Fp32 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        Precision::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
    };
    // SAFETY: a valid handle just created.
    unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) }
        .result()
        .map_err(|e| anyhow!("cannot set the cuBLAS math mode: {e}"))?;
    Ok(blas)
}

pub(super) fn dptr<T>(t: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    t.device_ptr(stream).0
}

pub(super) fn need(t: &CudaSlice<f32>, len: usize, what: &str) -> Result<()> {
    if t.len() < len {
        bail!("{what}: tensor of {} floats, the op needs {len}", t.len());
    }
    Ok(())
}

/// `len` floats (at least one: the driver refuses empty allocations), zeroed.
pub(super) fn alloc_f32(
    stream: &Arc<CudaStream>,
    len: usize,
    max_batch_tokens: usize,
) -> Result<CudaSlice<f32>> {
    stream
        .alloc_zeros::<f32>(len.max(1))
        .map_err(|e| alloc_error(e, len, max_batch_tokens))
}

pub(super) fn alloc_u32(
    stream: &Arc<CudaStream>,
    len: usize,
    max_batch_tokens: usize,
) -> Result<CudaSlice<u32>> {
    stream
        .alloc_zeros::<u32>(len.max(1))
        .map_err(|e| alloc_error(e, len, max_batch_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_padded_rows_and_scores() {
        // 4 heads; room for 16 padded rows and 4 * 64 score entries (texts * L * L <= 64).
        let lens = [8, 8, 4, 4, 4, 1];
        let chunks = plan_chunks(&lens, 4, true, 16, 4 * 64).unwrap();
        assert_eq!(
            chunks,
            vec![
                Chunk {
                    first: 0,
                    texts: 1,
                    max_len: 8
                },
                Chunk {
                    first: 1,
                    texts: 1,
                    max_len: 8
                },
                Chunk {
                    first: 2,
                    texts: 4,
                    max_len: 4
                },
            ]
        );
    }

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

    /// Row-major GEMMs of every transpose combination, batched with strides as attention
    /// issues them, mapped to cuBLAS's arguments and run by a model of cuBLAS, equal the
    /// row-major products computed directly.
    #[test]
    fn row_major_gemm_maps_onto_column_major_cublas() {
        let (m, n, k, batch) = (5, 7, 3, 3);
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
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
                    "trans_a={trans_a} trans_b={trans_b}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn cls_only_chunks_need_one_query_row() {
        let chunks = plan_chunks(&[8, 8], 4, false, 16, 4 * 16).unwrap();
        assert_eq!(
            chunks,
            vec![Chunk {
                first: 0,
                texts: 2,
                max_len: 8
            }]
        );
    }

    #[test]
    fn a_text_too_long_for_the_scratch_is_an_error() {
        let e = plan_chunks(&[20], 1, true, 16, 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-batch-tokens"), "{e}");
    }
}
