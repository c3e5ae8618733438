//! `CudaBackend`: the encoder's ops on one GPU, cuBLAS for the GEMMs and our kernels for
//! everything between them, with tensors stored in f32 or, in bf16/fp16, in half (GEMMs
//! through cublasGemmEx with fp32 accumulation on tensor cores).

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::blas::{gemm, gemm_ex, new_blas, Gemm};
use super::context::{
    self, alloc_error, launch, Arg, Grid, Kernel, Kernels, MemoryKnob, Storage, Typed,
};
use super::Precision;
use crate::backend::{Activation, Backend, QueryRows};
use crate::batch::PackedBatch;
use crate::le_floats;
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
    storage: Storage,
    max_batch_tokens: usize,
    /// What an out-of-memory error tells the user to lower.
    knob: MemoryKnob,
    name: String,
    ordinal: usize,
    /// A Mutex, not a RefCell, only so that the backend is `Sync` as `Backend` asks; one
    /// thread drives a CUDA backend, so it is never contended.
    scratch: Mutex<Scratch>,
}

/// Per-batch index uploads, sized for `max_batch_tokens` once.
struct Scratch {
    ids: CudaSlice<u32>,       // (P,)
    positions: CudaSlice<u32>, // (P,)
    type_ids: CudaSlice<u32>,  // (P,)
    offsets: CudaSlice<u32>,   // (P + 1,)
    rows: CudaSlice<u32>,      // (P,)
    /// Made on the first attention call, when heads and head size are known; made again
    /// only when they change.
    attn: Option<AttentionScratch>,
}

/// Padded per-head copies of Q, K, V and the context, and the score matrices.
struct AttentionScratch {
    heads: usize,
    head_dim: usize,
    /// Padded rows (texts x longest length) per chunk.
    pad_rows: usize,
    q: CudaTensor,          // (pad_rows, C) as (n, H, Lq, hd)
    k: CudaTensor,          // (pad_rows, C) as (n, H, L, hd)
    v: CudaTensor,          // (pad_rows, C) as (n, H, L, hd)
    ctx: CudaTensor,        // (pad_rows, C) as (n, H, Lq, hd)
    scores: CudaSlice<f32>, // (score_cap,) as (n, H, Lq, L), f32 in every precision
    /// The probabilities in half precision (the second GEMM's operand); in f32 they
    /// overwrite the scores.
    probs: Option<CudaTensor>, // (score_cap,)
}

/// A tensor of the CUDA backend: `len` elements in its storage type (f32, or the bits of
/// f16 / bf16 in half precision).
pub struct CudaTensor {
    buf: CudaSlice<u8>,
    len: usize,
    storage: Storage,
}

impl CudaTensor {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// The raw bytes, e.g. for device-to-device copies.
    pub fn bytes(&self) -> &CudaSlice<u8> {
        &self.buf
    }

    pub fn bytes_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.buf
    }
}

/// Host f32 values as the bytes of `storage`, rounded to nearest even in half precision
/// (as __float2half_rn / __float2bfloat16_rn and torch's .half() / .bfloat16()).
fn encode(host: &[f32], storage: Storage) -> Vec<u8> {
    match storage {
        Storage::F32 => host.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Storage::F16 => host
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        Storage::Bf16 => host
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

/// Bytes of `storage` as f32 (exact: every half value is an f32).
fn decode(bytes: &[u8], storage: Storage) -> Vec<f32> {
    match storage {
        Storage::F32 => le_floats::f32s(bytes),
        Storage::F16 => le_floats::f16s(bytes),
        Storage::Bf16 => le_floats::bf16s(bytes),
    }
}

impl CudaBackend {
    /// Opens `cuda:ordinal`, loads the embedded kernels (every one by name) and allocates
    /// the index and attention scratch for batches of up to `max_batch_tokens` tokens.
    /// Fails with one line, never a panic, where no GPU, driver, cuBLAS or kernels exist.
    pub fn new(ordinal: usize, precision: Precision, max_batch_tokens: usize) -> Result<Self> {
        let knob = MemoryKnob::BatchTokens(max_batch_tokens);
        Self::open(ordinal, precision, max_batch_tokens, knob)
    }

    /// A backend for the head trainer (`CudaHead`), fp32, whose batches are `batch` rows
    /// of features: out of memory, it names --batch-size.
    pub fn for_head(ordinal: usize, batch: usize) -> Result<Self> {
        Self::open(
            ordinal,
            Precision::Fp32,
            batch,
            MemoryKnob::HeadBatch(batch),
        )
    }

    fn open(
        ordinal: usize,
        precision: Precision,
        max_batch_tokens: usize,
        knob: MemoryKnob,
    ) -> Result<Self> {
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
        let alloc = |len: usize| alloc_u32(&stream, len, knob);
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
            storage: precision.storage(),
            max_batch_tokens,
            knob,
            name,
            ordinal,
            scratch: Mutex::new(scratch),
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How this backend stores its tensors.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    pub(super) fn memory_knob(&self) -> MemoryKnob {
        self.knob
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

    fn tp(&self, t: &CudaTensor) -> Arg {
        Arg::Ptr(self.tptr(t))
    }

    fn tptr(&self, t: &CudaTensor) -> u64 {
        t.buf.device_ptr(&self.stream).0
    }

    fn launch(&self, kernel: &Kernel, grid: Grid, args: &[Arg]) -> Result<()> {
        launch(&self.stream, kernel, grid, args)
    }

    /// The kernel of `family` for this backend's storage type.
    fn typed<'k>(&self, family: &'k Typed) -> &'k Kernel {
        family.get(self.storage)
    }

    /// `len` elements of this backend's storage type, zeroed.
    fn alloc_tensor(&self, len: usize) -> Result<CudaTensor> {
        let bytes = len * self.storage.bytes();
        let buf = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| alloc_error(e, bytes.div_ceil(4), self.knob))?;
        Ok(CudaTensor {
            buf,
            len,
            storage: self.storage,
        })
    }

    /// A GEMM on this backend's tensors: sgemm in f32 (the handle's math mode decides
    /// TF32), GemmEx with fp32 accumulation in half precision; C is f32 or the storage
    /// type as `c_storage` says.
    fn gemm(&self, g: &Gemm, a: u64, b: u64, c: u64, c_storage: Storage) -> Result<()> {
        match self.storage {
            Storage::F32 => gemm(&self.blas, g, a, b, c),
            half => gemm_ex(&self.blas, g, a, b, c, half, c_storage),
        }
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
        let fits = s
            .attn
            .as_ref()
            .is_some_and(|a| (a.heads, a.head_dim) == (heads, head_dim));
        if !fits {
            // A backend serves any model (the op harness drives one backend through
            // every shape): another head layout replaces the scratch, freed first.
            s.attn = None;
            let pad_rows = self.max_batch_tokens.max(MAX_TEXT_LEN);
            let c = heads * head_dim;
            let score_cap = heads
                * (self.max_batch_tokens * SCORE_KEYS_PER_TOKEN).max(MAX_TEXT_LEN * MAX_TEXT_LEN);
            let alloc = |len| self.alloc_tensor(len);
            s.attn = Some(AttentionScratch {
                heads,
                head_dim,
                pad_rows,
                q: alloc(pad_rows * c)?,
                k: alloc(pad_rows * c)?,
                v: alloc(pad_rows * c)?,
                ctx: alloc(pad_rows * c)?,
                scores: alloc_f32(&self.stream, score_cap, self.knob)?,
                probs: match self.storage {
                    Storage::F32 => None,
                    _ => Some(alloc(score_cap)?),
                },
            });
        }
        Ok(s.attn.as_ref().expect("made above"))
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;

    fn describe(&self) -> String {
        format!("cuda:{} ({}, {})", self.ordinal, self.name, self.precision)
    }

    /// In half precision the values are rounded once, here: weights are stored in half.
    fn upload(&self, host: &[f32]) -> Result<CudaTensor> {
        let mut t = self.alloc_tensor(host.len())?;
        if !host.is_empty() {
            let bytes = encode(host, self.storage);
            self.stream
                .memcpy_htod(&bytes, &mut t.buf.slice_mut(..bytes.len()))
                .map_err(|e| anyhow!("CUDA upload failed: {e}"))?;
        }
        Ok(t)
    }

    fn download(&self, t: &CudaTensor, len: usize) -> Result<Vec<f32>> {
        need(t, len, "download")?;
        if len == 0 {
            return Ok(Vec::new());
        }
        // memcpy to pageable host memory synchronises the stream: every queued op is done.
        let bytes = self
            .stream
            .clone_dtoh(&t.buf.slice(..len * t.storage.bytes()))
            .map_err(|e| anyhow!("CUDA error: {e}"))?;
        Ok(decode(&bytes, t.storage))
    }

    fn alloc(&self, len: usize) -> Result<CudaTensor> {
        self.alloc_tensor(len)
    }

    fn embeddings_layernorm(
        &self,
        batch: &PackedBatch,
        emb: &EmbeddingWeights<CudaTensor>,
        eps: f32,
        out: &mut CudaTensor,
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
        let mut s = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        self.upload_u32(&mut s.ids, &batch.ids)?;
        self.upload_u32(&mut s.positions, &batch.positions)?;
        self.upload_u32(&mut s.type_ids, &batch.type_ids)?;
        let k = &self.kernels;
        self.launch(
            self.typed(&k.embeddings_layernorm_forward),
            Grid::per_row(t, c)?,
            &[
                self.tp(out),
                self.ptr(&s.ids),
                self.ptr(&s.positions),
                self.ptr(&s.type_ids),
                self.tp(&emb.word),
                self.tp(&emb.position),
                self.tp(&emb.token_type),
                self.tp(&emb.ln.gamma),
                self.tp(&emb.ln.beta),
                Arg::I32(t as i32),
                Arg::I32(c as i32),
                Arg::F32(eps),
            ],
        )
    }

    fn linear(
        &self,
        x: &CudaTensor,
        rows: usize,
        lin: &LinearWeights<CudaTensor>,
        add_bias: bool,
        out: &mut CudaTensor,
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
                self.typed(&self.kernels.broadcast_bias_rows),
                Grid::elementwise(rows * n)?,
                &[
                    self.tp(out),
                    self.tp(&lin.b),
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
        self.gemm(
            &g,
            self.tptr(x),
            self.tptr(&lin.w),
            self.tptr(out),
            self.storage,
        )
    }

    fn bias_activation(
        &self,
        x: &mut CudaTensor,
        rows: usize,
        bias: &CudaTensor,
        width: usize,
        act: Activation,
    ) -> Result<()> {
        need(x, rows * width, "activation input")?;
        need(bias, width, "activation bias")?;
        let k = &self.kernels;
        let f = match act {
            Activation::GeluErf => self.typed(&k.bias_gelu_erf_forward),
            Activation::GeluTanh => self.typed(&k.bias_gelu_tanh_forward),
            Activation::Relu => self.typed(&k.bias_relu_forward),
        };
        self.launch(
            f,
            Grid::elementwise(rows * width)?,
            &[
                self.tp(x),
                self.tp(bias),
                Arg::I32(rows as i32),
                Arg::I32(width as i32),
            ],
        )
    }

    fn bias_residual_layernorm(
        &self,
        x: &mut CudaTensor,
        rows: usize,
        bias: &CudaTensor,
        residual: &CudaTensor,
        ln: &LayerNormWeights<CudaTensor>,
        eps: f32,
    ) -> Result<()> {
        let c = ln.gamma.len();
        need(x, rows * c, "layernorm input")?;
        need(residual, rows * c, "layernorm residual")?;
        need(bias, c, "layernorm bias")?;
        need(&ln.beta, c, "layernorm beta")?;
        self.launch(
            self.typed(&self.kernels.bias_residual_layernorm_forward),
            Grid::per_row(rows, c)?,
            &[
                self.tp(x),
                self.tp(bias),
                self.tp(residual),
                self.tp(&ln.gamma),
                self.tp(&ln.beta),
                Arg::I32(rows as i32),
                Arg::I32(c as i32),
                Arg::F32(eps),
            ],
        )
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
        query_rows: QueryRows,
        out: &mut CudaTensor,
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
        // (T, C) for either, as the trait says, though ClsOnly writes n rows here: one
        // contract for both backends.
        need(out, t * c, "attention output")?;
        let lens = text_lengths(offsets, "attention")?;
        let offsets_u32: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();

        let mut s = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        // Planned before the offsets upload: with every text non-empty (checked there),
        // the n + 1 offsets fit the scratch's P + 1.
        let (pad_rows, score_cap) = {
            let a = self.attention_scratch(&mut s, heads, head_dim)?;
            (a.pad_rows, a.scores.len())
        };
        let chunks = plan_chunks(&lens, heads, all_rows, pad_rows, score_cap)?;
        self.upload_u32(&mut s.offsets, &offsets_u32)?;
        let offsets_ptr = dptr(&s.offsets, &self.stream);
        let a = s.attn.as_ref().expect("made above");
        // HF scales by head_dim ** -0.5, a Python float rounded to f32 once.
        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        let k = &self.kernels;
        let (q_pad, k_pad, v_pad, ctx, scores) = (
            self.tptr(&a.q),
            self.tptr(&a.k),
            self.tptr(&a.v),
            self.tptr(&a.ctx),
            dptr(&a.scores, &self.stream),
        );
        let probs = a.probs.as_ref().map_or(scores, |p| self.tptr(p));
        for chunk in chunks {
            let (nc, l) = (chunk.texts, chunk.max_len);
            let lq = if all_rows { l } else { 1 };
            let chunk_offsets = Arg::Ptr(offsets_ptr + 4 * chunk.first as u64);
            let dims = |v: usize| Arg::I32(v as i32);
            // (n, H, Lq, hd) Q and (n, H, L, hd) K, V, zero-padded
            self.launch(
                self.typed(&k.attention_gather_qkv),
                Grid::elementwise(nc * heads * l * head_dim)?,
                &[
                    Arg::Ptr(q_pad),
                    Arg::Ptr(k_pad),
                    Arg::Ptr(v_pad),
                    self.tp(qkv),
                    chunk_offsets,
                    dims(nc),
                    dims(heads),
                    dims(l),
                    dims(lq),
                    dims(head_dim),
                ],
            )?;
            // scores (n H, Lq, L) = Q (n H, Lq, hd) . K^T, f32 in every precision
            let g = Gemm::new(false, true, lq, l, head_dim).batched(
                nc * heads,
                lq * head_dim,
                l * head_dim,
                lq * l,
            );
            self.gemm(&g, q_pad, k_pad, scores, Storage::F32)?;
            // probs (n H, Lq, L) in the storage type; in f32 over the scores
            self.launch(
                self.typed(&k.attention_softmax_scale_mask),
                Grid::warp_per_row(nc * heads * lq)?,
                &[
                    Arg::Ptr(scores),
                    Arg::Ptr(probs),
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
            self.gemm(&g, probs, v_pad, ctx, self.storage)?;
            self.launch(
                self.typed(&k.attention_scatter_context),
                Grid::elementwise(nc * heads * lq * head_dim)?,
                &[
                    self.tp(out),
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
        hidden: &CudaTensor,
        width: usize,
        offsets: &[usize],
        out: &mut CudaTensor,
    ) -> Result<()> {
        let n = offsets.len().saturating_sub(1);
        if n == 0 {
            return Ok(());
        }
        text_lengths(offsets, "mean_pool")?;
        let t = offsets.last().copied().unwrap_or(0);
        self.check_tokens(t)?;
        need(out, n * width, "mean_pool output")?;
        need(hidden, t * width, "mean_pool input")?;
        let offsets_u32: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();
        let mut s = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        self.upload_u32(&mut s.offsets, &offsets_u32)?;
        self.launch(
            self.typed(&self.kernels.mean_pool_rows),
            Grid::elementwise(n * width)?,
            &[
                self.tp(out),
                self.tp(hidden),
                self.ptr(&s.offsets),
                Arg::I32(n as i32),
                Arg::I32(width as i32),
            ],
        )
    }

    fn gather_rows(
        &self,
        src: &CudaTensor,
        width: usize,
        rows: &[usize],
        dst: &mut CudaTensor,
    ) -> Result<()> {
        let n = rows.len();
        self.check_tokens(n)?;
        need(dst, n * width, "gather output")?;
        if let Some(&max) = rows.iter().max() {
            need(src, (max + 1) * width, "gather source")?;
        }
        let rows_u32: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let mut s = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        self.upload_u32(&mut s.rows, &rows_u32)?;
        self.launch(
            self.typed(&self.kernels.gather_rows),
            Grid::elementwise(n * width)?,
            &[
                self.tp(dst),
                self.tp(src),
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

/// Each text's length from the packed `offsets`, refusing what the ops cannot serve: an
/// offset below the one before it, and a text without tokens (no [CLS] row to attend
/// from or to pool; the CPU backend cannot take one either).
fn text_lengths(offsets: &[usize], op: &str) -> Result<Vec<usize>> {
    offsets
        .windows(2)
        .enumerate()
        .map(|(i, w)| match w[1].checked_sub(w[0]) {
            Some(0) => bail!("{op}: text {i} has no tokens"),
            Some(len) => Ok(len),
            None => bail!(
                "{op}: offsets decrease at text {i} ({} then {})",
                w[0],
                w[1]
            ),
        })
        .collect()
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
        if len == 0 {
            // A chunk of empty texts has L = 0: cuBLAS refuses its leading dimension 0,
            // and a [CLS]-only output row of an empty text would never be written.
            bail!("attention: text {i} has no tokens");
        }
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

pub(super) fn dptr<T>(t: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    t.device_ptr(stream).0
}

pub(super) fn need(t: &CudaTensor, len: usize, what: &str) -> Result<()> {
    if t.len() < len {
        bail!("{what}: tensor of {} elements, the op needs {len}", t.len());
    }
    Ok(())
}

/// `len` floats (at least one: the driver refuses empty allocations), zeroed.
pub(super) fn alloc_f32(
    stream: &Arc<CudaStream>,
    len: usize,
    knob: MemoryKnob,
) -> Result<CudaSlice<f32>> {
    stream
        .alloc_zeros::<f32>(len.max(1))
        .map_err(|e| alloc_error(e, len, knob))
}

pub(super) fn alloc_u32(
    stream: &Arc<CudaStream>,
    len: usize,
    knob: MemoryKnob,
) -> Result<CudaSlice<u32>> {
    stream
        .alloc_zeros::<u32>(len.max(1))
        .map_err(|e| alloc_error(e, len, knob))
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
    fn an_empty_text_is_an_error_not_a_chunk() {
        for all_rows in [true, false] {
            let e = plan_chunks(&[3, 0, 2], 4, all_rows, 16, 4 * 64)
                .unwrap_err()
                .to_string();
            assert!(e.contains("text 1 has no tokens"), "{e}");
        }
    }

    #[test]
    fn lengths_refuse_empty_texts_and_decreasing_offsets() {
        assert_eq!(text_lengths(&[0, 3, 4, 9], "attention").unwrap(), [3, 1, 5]);
        let e = text_lengths(&[0, 3, 3, 5], "attention")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "attention: text 1 has no tokens");
        let e = text_lengths(&[0, 5, 2], "mean_pool")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mean_pool: offsets decrease at text 1"), "{e}");
    }

    /// On random batches (lengths in any order, both query modes, scratch from tight to
    /// roomy), the chunks are consecutive, none is empty, together they hold every text
    /// once, each one's padded rows and scores fit the scratch and its max_len is its
    /// longest text; a plan is refused only when one text alone does not fit.
    #[test]
    fn chunks_cover_every_text_once_within_the_scratch() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for _ in 0..2000 {
            let heads = 1 + next(16);
            let all_rows = next(2) == 0;
            let lens: Vec<usize> = (0..1 + next(40)).map(|_| 1 + next(600)).collect();
            let pad_rows = 1 + next(4096);
            let score_cap = heads * (1 + next(1 << 20));
            let lq = |l: usize| if all_rows { l } else { 1 };
            let fits = |texts: usize, l: usize| {
                texts * l <= pad_rows && heads * texts * lq(l) * l <= score_cap
            };
            match plan_chunks(&lens, heads, all_rows, pad_rows, score_cap) {
                Err(_) => assert!(
                    lens.iter().any(|&l| !fits(1, l)),
                    "refused though every text fits alone: {lens:?}"
                ),
                Ok(chunks) => {
                    let mut first = 0;
                    for ch in &chunks {
                        assert_eq!(ch.first, first, "{chunks:?}");
                        assert!(ch.texts > 0, "{chunks:?}");
                        let texts = &lens[ch.first..ch.first + ch.texts];
                        assert_eq!(ch.max_len, *texts.iter().max().unwrap());
                        assert!(fits(ch.texts, ch.max_len), "{ch:?} of {lens:?}");
                        first += ch.texts;
                    }
                    assert_eq!(first, lens.len(), "{chunks:?}");
                }
            }
        }
    }

    #[test]
    fn a_text_too_long_for_the_scratch_is_an_error() {
        let e = plan_chunks(&[20], 1, true, 16, 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-batch-tokens"), "{e}");
    }
}
