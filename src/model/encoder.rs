//! The BERT encoder forward pass, written once against `backend::Backend`.
//!
//! Mirrors HF `BertModel` (https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L627, the version the
//! test fixtures were made with) in eval mode:
//! post-LayerNorm blocks, no dropout, attention restricted to each text's own tokens.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::config::BertConfig;
use super::weights::{BertWeights, Checkpoint, HostWeights, LayerWeights};
use crate::backend::{Activation, Backend, QueryRows};
use crate::batch::{plan_batches, PackedBatch};
use crate::tokenize::TokenizedText;

/// What a forward pass returns besides the [CLS] vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// [CLS] only: the last layer runs for the [CLS] rows alone.
    Cls,
    /// Also each text's mean-pooled last hidden state: the last layer runs for every row.
    Mean,
    /// As `Mean`, and also the [CLS] rows and means of the N - 1 layers before the last.
    LastLayers(usize),
    /// Also the embeddings output and every layer's hidden state, (T, C) each.
    AllHiddenStates,
}

/// Which token states of a layer make its part of a text's feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// The [CLS] token's row: the recipe's `last_hidden_state[:, 0]`.
    Cls,
    /// The mean over the text's tokens, [CLS] and [SEP] included: sentence-transformers'
    /// mean pooling over the attention mask, which e5 and MiniLM were trained for.
    Mean,
    /// Both side by side, (2C): [CLS] then the mean, as sentence-transformers' Pooling
    /// concatenates the modes it is given.
    ClsMean,
}

/// How a text's feature is read off the encoder (`--pooling`): `kind` of each of the
/// last `layers` layers, side by side, the earliest first. Named `cls`, `mean` and
/// `cls+mean` for the last layer alone, `mean-last4` for the last four. On e5-small's
/// ChnSentiCorp features a linear head on more than the last layer did best
/// (docs/BENCHMARKS.md): the last layer is the one pre-training shaped for its own task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pooling {
    pub kind: PoolKind,
    /// At least 1, at most the model's layer count (checked when the model loads).
    pub layers: usize,
}

impl Default for Pooling {
    fn default() -> Self {
        Self::CLS
    }
}

impl Pooling {
    pub const CLS: Self = Self::last_layer(PoolKind::Cls);
    pub const MEAN: Self = Self::last_layer(PoolKind::Mean);
    pub const CLS_MEAN: Self = Self::last_layer(PoolKind::ClsMean);

    const fn last_layer(kind: PoolKind) -> Self {
        Self { kind, layers: 1 }
    }

    pub fn name(self) -> String {
        let kind = match self.kind {
            PoolKind::Cls => "cls",
            PoolKind::Mean => "mean",
            PoolKind::ClsMean => "cls+mean",
        };
        match self.layers {
            1 => kind.to_string(),
            n => format!("{kind}-last{n}"),
        }
    }

    /// The forward pass that computes this feature.
    pub fn keep(self) -> Keep {
        match (self.kind, self.layers) {
            (PoolKind::Cls, 1) => Keep::Cls,
            (_, 1) => Keep::Mean,
            (_, n) => Keep::LastLayers(n),
        }
    }

    /// Floats in one text's feature, for an encoder of `hidden` (C) wide.
    pub fn width(self, hidden: usize) -> usize {
        let per_layer = match self.kind {
            PoolKind::Cls | PoolKind::Mean => hidden,
            PoolKind::ClsMean => 2 * hidden,
        };
        self.layers * per_layer
    }

    /// This pooling's features, (n, width), taken from `widest`, the (n, 2C x layers)
    /// features of `cls+mean-last{layers}` (`layers` at least this pooling's): the floats
    /// its own forward gives, since every layer before the last runs whole either way and
    /// the last runs whole for any pooling but `cls`, whose [CLS]-only last layer gives
    /// the whole layer's [CLS] rows on the CPU; on CUDA `cls`'s agree to rounding only
    /// (`QueryRows::ClsOnly`).
    pub fn take_from(self, widest: &[f32], hidden: usize, layers: usize) -> Vec<f32> {
        assert!(self.layers <= layers, "{self} from {layers} layers");
        let row = 2 * hidden * layers;
        let mut x = Vec::with_capacity(widest.len() / row * self.width(hidden));
        for text in widest.chunks_exact(row) {
            for pools in text.chunks_exact(2 * hidden).skip(layers - self.layers) {
                let (cls, mean) = pools.split_at(hidden);
                match self.kind {
                    PoolKind::Cls => x.extend_from_slice(cls),
                    PoolKind::Mean => x.extend_from_slice(mean),
                    PoolKind::ClsMean => x.extend_from_slice(pools),
                }
            }
        }
        x
    }

    /// One layer's part of each text's feature, (n, width / layers), from that layer's
    /// [CLS] rows and means, (n, C) each.
    fn of_layer(self, cls: &[f32], mean: &[f32], hidden: usize) -> Vec<f32> {
        match self.kind {
            PoolKind::Cls => cls.to_vec(),
            PoolKind::Mean => mean.to_vec(),
            PoolKind::ClsMean => cls
                .chunks_exact(hidden)
                .zip(mean.chunks_exact(hidden))
                .flat_map(|(cls, mean)| cls.iter().chain(mean))
                .copied()
                .collect(),
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = match s.split_once("-last") {
            None => (s, None),
            Some((name, n)) => (name, Some(n)),
        };
        // The kind first: a bad N's message offers the kind alone, which must be a pooling
        // (`MEAN-last0` is not to be told "the last layer alone is `MEAN`").
        let kind = match name {
            "cls" => PoolKind::Cls,
            "mean" => PoolKind::Mean,
            "cls+mean" => PoolKind::ClsMean,
            _ => {
                return Err(format!(
                    "`{s}` is not a pooling: use cls, mean or cls+mean, of the last layer, or of the last N layers side by side as mean-lastN (mean-last4)"
                ))
            }
        };
        let layers = match n.map(str::parse::<usize>) {
            None => 1,
            Some(Ok(n)) if n >= 2 => n,
            Some(_) => {
                return Err(format!(
                    "`{s}`: -lastN takes a number N of 2 or more (the last layer alone is `{name}`)"
                ))
            }
        };
        Ok(Self { kind, layers })
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Pooling {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Pooling {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

pub struct EncoderOutput {
    /// (num_texts, C) last-layer hidden state of each text's first token.
    pub cls: Vec<f32>,
    /// (num_texts, C) mean of each text's last-layer hidden states; empty unless
    /// `Keep::Mean`.
    pub mean: Vec<f32>,
    /// num_layers + 1 tensors of (T, C), as HF's `output_hidden_states`; empty for `Keep::Cls`.
    pub hidden_states: Vec<Vec<f32>>,
    /// With `Keep::LastLayers(N)`, the [CLS] rows and means, (n, C) each, of the N - 1
    /// layers before the last, the earliest first; empty otherwise.
    pub earlier: Vec<[Vec<f32>; 2]>,
}

/// Activations for up to `max_tokens` packed tokens, allocated once.
struct Workspace<T> {
    hidden: T, // (T, C) layer input, then layer output
    qkv: T,    // (T, 3C)
    attn: T,   // (T, C) attention context
    proj: T,   // (T, C) attention block output
    inter: T,  // (T, F) feed-forward intermediate
    cls: T,    // (n, C) [CLS] rows
}

pub struct Encoder<B: Backend> {
    backend: B,
    config: BertConfig,
    act: Activation,
    weights: BertWeights<B::Tensor>,
    ws: Workspace<B::Tensor>,
    max_tokens: usize,
}

/// The workspace's size for `max_tokens`, computed with overflow checks: refused when it
/// overflows or exceeds the machine's memory, before anything is allocated.
pub fn check_workspace(max_tokens: usize, hidden: usize, intermediate: usize) -> Result<u64> {
    let per_token = (hidden as u64)
        .checked_mul(7)
        .and_then(|n| n.checked_add(intermediate as u64));
    let bytes = per_token
        .and_then(|n| n.checked_mul(max_tokens as u64))
        .and_then(|n| n.checked_mul(4));
    let memory = total_memory_bytes();
    match bytes {
        Some(b) if memory.is_none_or(|m| b <= m) && b <= isize::MAX as u64 => Ok(b),
        _ => {
            let fits = match (per_token, memory) {
                (Some(p), Some(m)) if p > 0 => format!(" (at most {} here)", m / 2 / (4 * p)),
                _ => String::new(),
            };
            bail!(
                "--max-batch-tokens {max_tokens} needs a workspace of {} MiB, more than this machine's memory: use a smaller --max-batch-tokens{fits}",
                bytes.map_or("over 2^64".to_string(), |b| (b >> 20).to_string())
            )
        }
    }
}

/// The activation `config` names and a workspace of `max_tokens` that fits: both checked
/// before any weight is read.
fn checked(config: &BertConfig, max_tokens: usize) -> Result<Activation> {
    let act = config.activation()?;
    check_workspace(max_tokens, config.hidden_size, config.intermediate_size)?;
    Ok(act)
}

/// What to do when a workspace of `bytes` could not be allocated. A small one fails for
/// want of memory (often a process limit, `limited`), which a smaller --max-batch-tokens
/// hardly helps; a large one is first of all the budget's doing.
fn workspace_advice(bytes: u64, limited: bool) -> String {
    let memory = if limited {
        "free memory or raise the process's memory limit (ulimit -v)"
    } else {
        "free memory"
    };
    if bytes < 256 << 20 {
        memory.to_string()
    } else {
        format!("use a smaller --max-batch-tokens, or {memory}")
    }
}

/// Whether the process's address space is limited (`ulimit -v`).
fn address_space_limited() -> bool {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
        got && limit.rlim_cur != libc::RLIM_INFINITY
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// `MemTotal` of `/proc/meminfo`; `None` where there is none (then only overflow and the
/// allocation itself can refuse a workspace).
fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl<B: Backend> Encoder<B> {
    /// Uploads the weights once (Linear weights in the backend's own layout) and sizes the workspace for `max_tokens` tokens per batch.
    pub fn new(
        backend: B,
        config: BertConfig,
        host: &HostWeights,
        max_tokens: usize,
    ) -> Result<Self> {
        let act = checked(&config, max_tokens)?;
        let weights = host.try_map_linear(
            |w, out_f, in_f| backend.upload_linear_weight(w, out_f, in_f),
            |t| backend.upload(t),
        )?;
        Self::with_weights(backend, config, act, weights, max_tokens)
    }

    /// As `new`, reading the weights from `ckpt` straight into the backend, a tensor at
    /// a time: the commands' path, where a host copy of the whole model would double the
    /// memory a load touches.
    pub fn load(
        backend: B,
        config: BertConfig,
        ckpt: &Checkpoint,
        max_tokens: usize,
    ) -> Result<Self> {
        let act = checked(&config, max_tokens)?;
        let weights = BertWeights::read(
            ckpt,
            &config,
            |w, out_f, in_f| backend.upload_linear_weight(w, out_f, in_f),
            |t| backend.upload_host(t),
        )?;
        Self::with_weights(backend, config, act, weights, max_tokens)
    }

    fn with_weights(
        backend: B,
        config: BertConfig,
        act: Activation,
        weights: BertWeights<B::Tensor>,
        max_tokens: usize,
    ) -> Result<Self> {
        let (c, f) = (config.hidden_size, config.intermediate_size);
        let bytes = (max_tokens as u64) * (7 * c as u64 + f as u64) * 4;
        let too_big = |e: anyhow::Error| {
            anyhow!(
                "--max-batch-tokens {max_tokens} needs a workspace this machine cannot allocate ({e}): {}",
                workspace_advice(bytes, address_space_limited())
            )
        };
        let ws = Workspace {
            hidden: backend.alloc(max_tokens * c).map_err(too_big)?,
            qkv: backend.alloc(max_tokens * 3 * c).map_err(too_big)?,
            attn: backend.alloc(max_tokens * c).map_err(too_big)?,
            proj: backend.alloc(max_tokens * c).map_err(too_big)?,
            inter: backend.alloc(max_tokens * f).map_err(too_big)?,
            cls: backend.alloc(max_tokens * c).map_err(too_big)?,
        };
        Ok(Self {
            backend,
            config,
            act,
            weights,
            ws,
            max_tokens,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn forward(&mut self, batch: &PackedBatch, keep: Keep) -> Result<EncoderOutput> {
        let t = batch.num_tokens();
        if t > self.max_tokens {
            bail!(
                "batch of {t} tokens exceeds the workspace of {} tokens",
                self.max_tokens
            );
        }
        if let Some(&id) = batch
            .ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            bail!("token id {id} is outside the vocabulary of {} ids: the tokenizer does not belong to this model", self.config.vocab_size);
        }
        if batch.max_len() > self.config.max_position_embeddings {
            bail!(
                "a text of {} tokens exceeds max_position_embeddings {}: lower --max-length",
                batch.max_len(),
                self.config.max_position_embeddings
            );
        }
        let Self {
            backend,
            config,
            act,
            weights,
            ws,
            ..
        } = self;
        let act = *act;
        backend.run(|| forward_pass(backend, config, act, weights, ws, batch, keep))
    }
}

/// The forward pass proper, inside the backend's `run` (see `Backend::run`): the
/// fields of the encoder it reads, borrowed apart from the backend that runs it.
fn forward_pass<B: Backend>(
    be: &B,
    config: &BertConfig,
    act: Activation,
    weights: &BertWeights<B::Tensor>,
    ws: &mut Workspace<B::Tensor>,
    batch: &PackedBatch,
    keep: Keep,
) -> Result<EncoderOutput> {
    let (t, n) = (batch.num_tokens(), batch.num_texts());
    let c = config.hidden_size;
    let eps = config.layer_norm_eps as f32;
    let mut hidden_states = Vec::new();

    // BertEmbeddings: https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L69
    be.embeddings_layernorm(batch, &weights.embeddings, eps, &mut ws.hidden)?;
    if keep == Keep::AllHiddenStates {
        hidden_states.push(be.download(&ws.hidden, t * c)?);
    }

    let last = weights.layers.len() - 1;
    let first_kept = match keep {
        Keep::LastLayers(count) if (1..=last + 1).contains(&count) => last + 1 - count,
        Keep::LastLayers(count) => bail!(
            "the feature pools the last {count} layers, but the model has {}",
            last + 1
        ),
        _ => last,
    };
    let mut earlier = Vec::new();
    for (i, layer) in weights.layers.iter().enumerate() {
        if i == last && keep == Keep::Cls {
            cls_layer(be, layer, config, act, batch, ws)?;
            return Ok(EncoderOutput {
                cls: be.download(&ws.cls, n * c)?,
                mean: Vec::new(),
                hidden_states,
                earlier,
            });
        }
        full_layer(be, layer, config, act, batch, ws)?;
        if keep == Keep::AllHiddenStates {
            hidden_states.push(be.download(&ws.hidden, t * c)?);
        }
        if (first_kept..last).contains(&i) {
            earlier.push(pool_cls_and_mean(be, batch, c, ws)?);
        }
    }
    let [cls, mean] = if matches!(keep, Keep::Mean | Keep::LastLayers(_)) {
        pool_cls_and_mean(be, batch, c, ws)?
    } else {
        be.gather_rows(&ws.hidden, c, batch.cls_rows(), &mut ws.cls)?;
        [be.download(&ws.cls, n * c)?, Vec::new()]
    };
    Ok(EncoderOutput {
        cls,
        mean,
        hidden_states,
        earlier,
    })
}

/// The [CLS] rows and the means, (n, C) each, of the layer output in ws.hidden. ws.attn
/// holds the means: it is free between layers (the next layer's attention writes it
/// afresh).
fn pool_cls_and_mean<B: Backend>(
    be: &B,
    batch: &PackedBatch,
    c: usize,
    ws: &mut Workspace<B::Tensor>,
) -> Result<[Vec<f32>; 2]> {
    let n = batch.num_texts();
    be.gather_rows(&ws.hidden, c, batch.cls_rows(), &mut ws.cls)?; // (n, C)
    be.mean_pool(&ws.hidden, c, &batch.offsets, &mut ws.attn)?; // (n, C)
    Ok([be.download(&ws.cls, n * c)?, be.download(&ws.attn, n * c)?])
}

/// One `BertLayer` over every token: ws.hidden (T, C) -> ws.hidden (T, C).
// BertLayer: https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L377
fn full_layer<B: Backend>(
    be: &B,
    w: &LayerWeights<B::Tensor>,
    config: &BertConfig,
    act: Activation,
    batch: &PackedBatch,
    ws: &mut Workspace<B::Tensor>,
) -> Result<()> {
    let t = batch.num_tokens();
    let (c, f) = (config.hidden_size, config.intermediate_size);
    let eps = config.layer_norm_eps as f32;
    // BertSelfAttention (https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L166):
    // Q, K, V in one GEMM, then softmax(Q K^T / sqrt(d)) V per text and head.
    be.linear(&ws.hidden, t, &w.qkv, true, &mut ws.qkv)?; // (T, 3C)
    be.attention(
        &ws.qkv,
        &batch.offsets,
        config.num_attention_heads,
        config.head_dim(),
        QueryRows::All,
        &mut ws.attn,
    )?; // (T, C)

    // BertSelfOutput (https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L290): LayerNorm(dense(context) + input).
    be.linear(&ws.attn, t, &w.attn_out, false, &mut ws.proj)?; // (T, C)
    be.bias_residual_layernorm(&mut ws.proj, t, &w.attn_out.b, &ws.hidden, &w.attn_ln, eps)?;
    // BertIntermediate (https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L336): act(dense(x)).
    be.linear(&ws.proj, t, &w.ffn_in, false, &mut ws.inter)?; // (T, F)
    be.bias_activation(&mut ws.inter, t, &w.ffn_in.b, f, act)?;
    // BertOutput (https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/bert/modeling_bert.py#L349): LayerNorm(dense(x) + attention block output).
    be.linear(&ws.inter, t, &w.ffn_out, false, &mut ws.hidden)?; // (T, C)
    be.bias_residual_layernorm(&mut ws.hidden, t, &w.ffn_out.b, &ws.proj, &w.ffn_ln, eps)?;
    debug_assert_eq!(c * 3, w.qkv.out_features);
    Ok(())
}

/// The last `BertLayer` for the [CLS] rows only: keys and values still come from every
/// token, but the query, the attention output and the feed-forward run for one row per
/// text. ws.hidden (T, C) -> ws.cls (n, C).
fn cls_layer<B: Backend>(
    be: &B,
    w: &LayerWeights<B::Tensor>,
    config: &BertConfig,
    act: Activation,
    batch: &PackedBatch,
    ws: &mut Workspace<B::Tensor>,
) -> Result<()> {
    let (t, n) = (batch.num_tokens(), batch.num_texts());
    let (c, f) = (config.hidden_size, config.intermediate_size);
    let eps = config.layer_norm_eps as f32;
    // Q of the non-[CLS] rows is wasted work, 1/36 of one layer's GEMMs; one GEMM shape is simpler.
    be.linear(&ws.hidden, t, &w.qkv, true, &mut ws.qkv)?; // (T, 3C)
    be.attention(
        &ws.qkv,
        &batch.offsets,
        config.num_attention_heads,
        config.head_dim(),
        QueryRows::ClsOnly,
        &mut ws.attn,
    )?; // (n, C) in the first rows of (T, C)
    be.gather_rows(&ws.hidden, c, batch.cls_rows(), &mut ws.cls)?; // (n, C) residual
    be.linear(&ws.attn, n, &w.attn_out, false, &mut ws.proj)?; // (n, C)
    be.bias_residual_layernorm(&mut ws.proj, n, &w.attn_out.b, &ws.cls, &w.attn_ln, eps)?;
    be.linear(&ws.proj, n, &w.ffn_in, false, &mut ws.inter)?; // (n, F)
    be.bias_activation(&mut ws.inter, n, &w.ffn_in.b, f, act)?;
    be.linear(&ws.inter, n, &w.ffn_out, false, &mut ws.cls)?; // (n, C)
    be.bias_residual_layernorm(&mut ws.cls, n, &w.ffn_out.b, &ws.proj, &w.ffn_ln, eps)?;
    Ok(())
}

/// A feature encoder on whichever backend was chosen at run time.
pub trait FeatureEncoder {
    /// (num_texts, C) features of one packed batch, pooled as `pooling` says.
    fn encode_batch(&mut self, batch: &PackedBatch, pooling: Pooling) -> Result<Vec<f32>>;
    fn hidden_size(&self) -> usize;
    fn max_tokens(&self) -> usize;
    fn describe(&self) -> String;
}

impl<B: Backend> FeatureEncoder for Encoder<B> {
    fn encode_batch(&mut self, batch: &PackedBatch, pooling: Pooling) -> Result<Vec<f32>> {
        let out = self.forward(batch, pooling.keep())?;
        let c = self.config.hidden_size;
        let last = pooling.of_layer(&out.cls, &out.mean, c);
        if out.earlier.is_empty() {
            return Ok(last);
        }
        // Each layer's part, (n, w), side by side per text: (n, layers * w).
        let parts: Vec<Vec<f32>> = out
            .earlier
            .iter()
            .map(|[cls, mean]| pooling.of_layer(cls, mean, c))
            .chain(std::iter::once(last))
            .collect();
        let w = pooling.width(c) / pooling.layers;
        let n = batch.num_texts();
        let mut x = Vec::with_capacity(n * pooling.width(c));
        for row in 0..n {
            for part in &parts {
                x.extend_from_slice(&part[row * w..(row + 1) * w]);
            }
        }
        Ok(x)
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    fn describe(&self) -> String {
        self.backend.describe()
    }
}

/// Most texts per batch: bounds the attention scratch and keeps progress updates frequent.
pub const MAX_TEXTS_PER_BATCH: usize = 256;

/// Features (N, width) of every text, in input order (width: `Pooling::width`). Texts are sorted by length into
/// packed batches that fill the encoder's token budget; `progress` gets the number of
/// texts finished after each batch.
pub fn encode_all(
    enc: &mut dyn FeatureEncoder,
    texts: &[TokenizedText],
    pooling: Pooling,
    mut progress: impl FnMut(usize),
) -> Result<Vec<f32>> {
    let c = pooling.width(enc.hidden_size());
    let lengths: Vec<usize> = texts.iter().map(|t| t.ids.len()).collect();
    if let Some(&longest) = lengths.iter().max() {
        if longest > enc.max_tokens() {
            bail!("a text of {longest} tokens exceeds the token budget of {}: raise --max-batch-tokens", enc.max_tokens());
        }
    }
    let mut out = feature_rows(texts.len(), c, pooling)?;
    let mut done = 0;
    for batch_idx in plan_batches(&lengths, enc.max_tokens(), MAX_TEXTS_PER_BATCH) {
        let batch = PackedBatch::new(batch_idx.iter().map(|&i| &texts[i]));
        let cls = enc.encode_batch(&batch, pooling)?;
        for (row, &i) in batch_idx.iter().enumerate() {
            out[i * c..(i + 1) * c].copy_from_slice(&cls[row * c..(row + 1) * c]);
        }
        done += batch_idx.len();
        progress(done);
    }
    Ok(out)
}

/// Test-only: a cap in bytes on [`feature_rows`], so that tests reach the refusal a
/// machine's memory gives without allocating that much.
const FEATURE_BYTES_CAP: &str = "BERTCLS_TEST_FEATURE_BYTES";

/// The refusal of [`feature_rows`], typed so that a caller with another way (a search's
/// shared forward: one pooling at a time) can take it.
#[derive(Debug)]
pub struct FeaturesDoNotFit {
    pub pooling: Pooling,
    pub rows: usize,
    pub width: usize,
}

impl std::fmt::Display for FeaturesDoNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} features of {} texts ({} floats each, {} MiB) do not fit in memory: encode them in chunks (encode --data writes a split chunk by chunk), or pick a narrower --pooling",
            self.pooling,
            self.rows,
            self.width,
            self.mib()
        )
    }
}

impl FeaturesDoNotFit {
    pub fn mib(&self) -> u128 {
        (self.rows as u128 * self.width as u128 * 4) >> 20
    }
}

impl std::error::Error for FeaturesDoNotFit {}

/// Zeroed room for `rows` features of `width` floats, refused in one line where the
/// memory is not there (`vec!` would abort the process): wide poolings of many texts
/// (`cls+mean-last12` of BERT-base is 18,432 floats a text) can ask for more than a
/// machine has.
fn feature_rows(rows: usize, width: usize, pooling: Pooling) -> Result<Vec<f32>> {
    let refused = || {
        anyhow::Error::new(FeaturesDoNotFit {
            pooling,
            rows,
            width,
        })
    };
    let len = rows.checked_mul(width).ok_or_else(refused)?;
    let cap = std::env::var(FEATURE_BYTES_CAP)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if cap.is_some_and(|cap| len.saturating_mul(4) > cap) {
        return Err(refused());
    }
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| refused())?;
    out.resize(len, 0.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_that_cannot_fit_are_refused_not_aborted_on() {
        let wide: Pooling = "cls+mean-last12".parse().unwrap();
        let err = feature_rows(1 << 40, 18_432, wide).unwrap_err().to_string();
        assert!(
            err.starts_with("the cls+mean-last12 features of 1099511627776 texts (18432 floats each, 77309411328 MiB) do not fit in memory"),
            "{err}"
        );
        // Past usize: refused too, not wrapped.
        assert!(feature_rows(usize::MAX, 2, wide).is_err());
        assert_eq!(feature_rows(3, 2, wide).unwrap(), vec![0.0; 6]);
    }

    #[test]
    fn poolings_are_named_parsed_and_sized_alike() {
        for (name, kind, layers, width) in [
            ("cls", PoolKind::Cls, 1, 8),
            ("mean", PoolKind::Mean, 1, 8),
            ("cls+mean", PoolKind::ClsMean, 1, 16),
            ("mean-last4", PoolKind::Mean, 4, 32),
            ("cls+mean-last12", PoolKind::ClsMean, 12, 192),
        ] {
            let p: Pooling = name.parse().unwrap();
            assert_eq!((p.kind, p.layers), (kind, layers), "{name}");
            assert_eq!(p.name(), name);
            assert_eq!(p.width(8), width, "{name}");
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Pooling>(&json).unwrap(), p);
        }
        assert_eq!(Pooling::default(), Pooling::CLS);
        assert_eq!(
            "mean-last04".parse::<Pooling>().unwrap().name(),
            "mean-last4"
        );
        for bad in [
            "max",
            "mean-last1",
            "mean-last0",
            "mean-last",
            "last4",
            "mean-lastx",
        ] {
            assert!(bad.parse::<Pooling>().is_err(), "{bad}");
        }
        // A bad N offers the kind alone only when it is a pooling.
        for (bad, says) in [
            ("mean-last1", "the last layer alone is `mean`"),
            ("cls+mean-last2x", "the last layer alone is `cls+mean`"),
            ("MEAN-last0", "is not a pooling: use cls, mean or cls+mean"),
            ("max-lastx", "is not a pooling: use cls, mean or cls+mean"),
        ] {
            let e = bad.parse::<Pooling>().unwrap_err();
            assert!(
                e.starts_with(&format!("`{bad}`")) && e.contains(says),
                "{e}"
            );
        }
        assert_eq!(Pooling::CLS.keep(), Keep::Cls);
        assert_eq!(Pooling::CLS_MEAN.keep(), Keep::Mean);
        assert_eq!(
            "cls-last3".parse::<Pooling>().unwrap().keep(),
            Keep::LastLayers(3)
        );
    }

    #[test]
    fn a_small_workspace_that_fails_points_at_memory_not_the_budget() {
        let small = workspace_advice(4 << 20, true);
        assert_eq!(
            small,
            "free memory or raise the process's memory limit (ulimit -v)"
        );
        assert_eq!(workspace_advice(4 << 20, false), "free memory");
        let large = workspace_advice(2 << 30, true);
        assert!(
            large.starts_with("use a smaller --max-batch-tokens, or free memory")
                && large.contains("ulimit -v"),
            "{large}"
        );
    }
}
