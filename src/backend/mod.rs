//! The small set of ops the BERT encoder is written against.
//!
//! `model::encoder` runs the forward pass once, generically, through this trait;
//! `cpu` (pure Rust, the reference) and `cuda` (cuBLAS + our kernels) implement it.
//! Every tensor is a row-major f32 matrix in backend memory. Tensors are allocated
//! with a capacity (a token budget) and ops receive the number of rows they act on,
//! so one workspace serves every batch.

pub mod cpu;
pub mod cuda;
mod device;

pub use device::{Device, DeviceRequest};

use anyhow::Result;

use crate::batch::PackedBatch;
use crate::model::weights::{EmbeddingWeights, HostTensor, LayerNormWeights, LinearWeights};

/// The feed-forward non-linearity named by `hidden_act` in config.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form, x * 0.5 * (1 + erf(x / sqrt(2))).
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    pub fn from_hidden_act(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

/// Which rows of the packed batch an attention call produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryRows {
    /// Every token attends: output (T, C).
    All,
    /// Only each text's first token ([CLS]) attends: output (num_texts, C). The last
    /// layer needs nothing else when only [CLS] features are wanted. On the CPU these are
    /// the [CLS] rows of `All` bit for bit (computed as `All`, then gathered: the gemm
    /// crate's kernels for one query row sum in another order), so [CLS] pooling equals
    /// the [CLS] half of any wider pooling; on CUDA [CLS] attends alone, and the layer's
    /// GEMMs of n and of T rows are cuBLAS calls of other shapes, so they agree to
    /// rounding only.
    ClsOnly,
}

pub trait Backend: Sync {
    type Tensor: Send + Sync;

    /// A short human-readable description, e.g. `cpu (2 threads)`.
    fn describe(&self) -> String;

    /// Runs `f`, a whole forward pass of calls to this backend's ops. The CPU backend
    /// enters its thread pool here once, so that each op's own entry runs inline:
    /// entered from outside, every op would put the caller to sleep and wake it again
    /// (about 100 times a forward, a measurable share of one short text's latency).
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    fn upload(&self, host: &[f32]) -> Result<Self::Tensor>;
    /// `upload` of a tensor as the checkpoint gives it: the CPU backend keeps a decoded
    /// vector as it is and a mapped one in place.
    fn upload_host(&self, host: HostTensor) -> Result<Self::Tensor> {
        self.upload(host.as_slice())
    }
    /// A Linear layer's W (out_features, in_features), uploaded once at load in whatever
    /// layout `linear` reads fastest (the CPU backend packs it for its microkernel).
    /// `linear` must also accept a W from plain `upload`.
    fn upload_linear_weight(
        &self,
        w: &[f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self::Tensor> {
        let _ = (out_features, in_features);
        self.upload(w)
    }
    /// Copies the first `len` floats of `t` to the host.
    fn download(&self, t: &Self::Tensor, len: usize) -> Result<Vec<f32>>;
    /// A tensor of `len` floats, contents unspecified.
    fn alloc(&self, len: usize) -> Result<Self::Tensor>;

    /// out (T, C) = LayerNorm(word[ids] + position[positions] + token_type[type_ids]).
    fn embeddings_layernorm(
        &self,
        batch: &PackedBatch,
        emb: &EmbeddingWeights<Self::Tensor>,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// out (rows, N) = x (rows, K) . W^T (+ b when `add_bias`), W (N, K) as PyTorch stores it.
    fn linear(
        &self,
        x: &Self::Tensor,
        rows: usize,
        lin: &LinearWeights<Self::Tensor>,
        add_bias: bool,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// x (rows, N) = act(x + b), in place.
    fn bias_activation(
        &self,
        x: &mut Self::Tensor,
        rows: usize,
        bias: &Self::Tensor,
        width: usize,
        act: Activation,
    ) -> Result<()>;

    /// x (rows, C) = LayerNorm(x + b + residual), in place.
    #[allow(clippy::too_many_arguments)]
    fn bias_residual_layernorm(
        &self,
        x: &mut Self::Tensor,
        rows: usize,
        bias: &Self::Tensor,
        residual: &Self::Tensor,
        ln: &LayerNormWeights<Self::Tensor>,
        eps: f32,
    ) -> Result<()>;

    /// Multi-head self-attention over the packed layout: text i owns rows
    /// `offsets[i]..offsets[i+1]` of `qkv` (T, 3C) laid out [Q | K | V], and attends over
    /// its own tokens only. out is (T, C) either way; `ClsOnly` leaves the (num_texts, C)
    /// [CLS] rows in its first rows and may use the rest as scratch (the CPU computes
    /// every row there, where a buffer of its own per batch would be an allocation that
    /// can abort on a full machine).
    /// Every text has at least one token (the CUDA backend refuses an empty one).
    fn attention(
        &self,
        qkv: &Self::Tensor,
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
        query_rows: QueryRows,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// out (num_texts, width): row i is the mean of rows `offsets[i]..offsets[i+1]` of
    /// `hidden` (T, width), every token of text i: the packed layout holds no padding, so
    /// this is sentence-transformers' mean over the attention mask.
    fn mean_pool(
        &self,
        hidden: &Self::Tensor,
        width: usize,
        offsets: &[usize],
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// dst (rows.len(), width) = src[rows] (row gather).
    fn gather_rows(
        &self,
        src: &Self::Tensor,
        width: usize,
        rows: &[usize],
        dst: &mut Self::Tensor,
    ) -> Result<()>;
}
