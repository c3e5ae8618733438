//! Encoder weights from HF safetensors: one file or a sharded checkpoint, F32/F16/BF16,
//! memory-mapped, with the name variants real checkpoints use.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::SafeTensors;

use super::config::BertConfig;
use crate::le_floats;

/// y = x W^T + b with W (out_features, in_features), as `nn.Linear` stores it.
pub struct LinearWeights<T> {
    pub w: T,
    pub b: T,
    pub out_features: usize,
    pub in_features: usize,
}

pub struct LayerNormWeights<T> {
    pub gamma: T,
    pub beta: T,
}

pub struct EmbeddingWeights<T> {
    /// (vocab, C)
    pub word: T,
    /// (max_positions, C)
    pub position: T,
    /// (type_vocab, C)
    pub token_type: T,
    pub ln: LayerNormWeights<T>,
}

pub struct LayerWeights<T> {
    /// query, key and value fused into one (3C, C) projection: one GEMM instead of three.
    pub qkv: LinearWeights<T>,
    pub attn_out: LinearWeights<T>,
    pub attn_ln: LayerNormWeights<T>,
    pub ffn_in: LinearWeights<T>,
    pub ffn_out: LinearWeights<T>,
    pub ffn_ln: LayerNormWeights<T>,
}

pub struct BertWeights<T> {
    pub embeddings: EmbeddingWeights<T>,
    pub layers: Vec<LayerWeights<T>>,
}

impl<T> LinearWeights<T> {
    fn try_map<U>(
        &self,
        f_w: &mut impl FnMut(&T, usize, usize) -> Result<U>,
        f: &mut impl FnMut(&T) -> Result<U>,
    ) -> Result<LinearWeights<U>> {
        Ok(LinearWeights {
            w: f_w(&self.w, self.out_features, self.in_features)?,
            b: f(&self.b)?,
            out_features: self.out_features,
            in_features: self.in_features,
        })
    }
}

impl<T> LayerNormWeights<T> {
    fn try_map<U>(&self, f: &mut impl FnMut(&T) -> Result<U>) -> Result<LayerNormWeights<U>> {
        Ok(LayerNormWeights {
            gamma: f(&self.gamma)?,
            beta: f(&self.beta)?,
        })
    }
}

impl<T> BertWeights<T> {
    /// The same weights with every tensor converted by `f` (e.g. uploaded to a device).
    pub fn try_map<U>(&self, mut f: impl FnMut(&T) -> Result<U>) -> Result<BertWeights<U>> {
        // Two closures cannot both hold `f` mutably: the weight path goes through a cell.
        let f = std::cell::RefCell::new(&mut f);
        self.try_map_linear(|w, _, _| (f.borrow_mut())(w), |t| (f.borrow_mut())(t))
    }

    /// As `try_map`, with each Linear W (out_features, in_features) converted by
    /// `f_linear_w` (given its shape) instead: the CPU backend packs W there, once.
    pub fn try_map_linear<U>(
        &self,
        mut f_linear_w: impl FnMut(&T, usize, usize) -> Result<U>,
        mut f: impl FnMut(&T) -> Result<U>,
    ) -> Result<BertWeights<U>> {
        let e = &self.embeddings;
        let embeddings = EmbeddingWeights {
            word: f(&e.word)?,
            position: f(&e.position)?,
            token_type: f(&e.token_type)?,
            ln: e.ln.try_map(&mut f)?,
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerWeights {
                    qkv: l.qkv.try_map(&mut f_linear_w, &mut f)?,
                    attn_out: l.attn_out.try_map(&mut f_linear_w, &mut f)?,
                    attn_ln: l.attn_ln.try_map(&mut f)?,
                    ffn_in: l.ffn_in.try_map(&mut f_linear_w, &mut f)?,
                    ffn_out: l.ffn_out.try_map(&mut f_linear_w, &mut f)?,
                    ffn_ln: l.ffn_ln.try_map(&mut f)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertWeights { embeddings, layers })
    }
}

/// Host copy of the encoder, f32.
pub type HostWeights = BertWeights<Vec<f32>>;

/// An F32 tensor read in place from the checkpoint's memory map: the file's pages are the
/// tensor, shared with the page cache, and nothing is copied or zeroed at load.
#[derive(Clone)]
pub struct MappedF32 {
    map: Arc<Mmap>,
    /// Byte offset in the map, a multiple of 4.
    start: usize,
    len: usize,
}

impl MappedF32 {
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `start..start + 4 * len` lies in the map (the safetensors header check of
        // `Checkpoint::tensor`), `start` is 4-aligned in a page-aligned map, every bit
        // pattern is an f32, and the map is read-only and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start).cast(), self.len) }
    }
}

/// An empty vector with room for `len` floats of the model's weights, or an error saying
/// the memory is not there: `Vec::with_capacity` (and `vec!`, `collect`, `to_vec`) abort
/// the whole process instead, as they do under a low `ulimit -v`. Every large buffer a
/// model's load allocates (decoded tensors, the stacked QKV, packed Linear weights) comes
/// from here.
pub fn weight_buffer(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| cannot_allocate_weights(len))?;
    Ok(v)
}

/// `floats` copied into a [`weight_buffer`]: `to_vec` that fails instead of aborting.
pub fn weight_copy(floats: &[f32]) -> Result<Vec<f32>> {
    let mut v = weight_buffer(floats.len())?;
    v.extend_from_slice(floats);
    Ok(v)
}

/// The error of a weight buffer of `len` floats that could not be allocated.
pub fn cannot_allocate_weights(len: usize) -> anyhow::Error {
    let mib = (len as u128 * 4).div_ceil(1 << 20);
    anyhow!(
        "cannot allocate {mib} MiB for the model's weights: free memory or raise the process's memory limit (ulimit -v)"
    )
}

/// A tensor as the checkpoint gives it: in place when it is little-endian F32 and aligned,
/// else decoded to f32.
pub enum HostTensor {
    Mapped(MappedF32),
    Decoded(Vec<f32>),
}

impl HostTensor {
    pub fn as_slice(&self) -> &[f32] {
        match self {
            HostTensor::Mapped(m) => m.as_slice(),
            HostTensor::Decoded(v) => v,
        }
    }

    pub fn into_vec(self) -> Result<Vec<f32>> {
        match self {
            HostTensor::Mapped(m) => weight_copy(m.as_slice()),
            HostTensor::Decoded(v) => Ok(v),
        }
    }
}

/// The safetensors files of a checkpoint, memory-mapped, and which file holds each tensor.
pub struct Checkpoint {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    /// The tensors each file holds.
    names: Vec<HashSet<String>>,
    /// The file each tensor is read from.
    index: HashMap<String, usize>,
}

/// `model.safetensors.index.json`: which shard holds each tensor.
pub struct ShardIndex {
    pub path: PathBuf,
    /// (tensor, shard file name), the shard beside the index.
    pub weight_map: Vec<(String, String)>,
}

impl ShardIndex {
    /// The index in `dir`, refusing a shard named by a path (`../other/model.safetensors`,
    /// `/abs/x`): an index names files beside it, and a path would read weights from
    /// outside the model folder.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{} is not valid JSON ({e}): re-download the checkpoint",
                path.display()
            )
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                anyhow!(
                    "{} has no \"weight_map\" object: re-download the checkpoint",
                    path.display()
                )
            })?;
        let mut weight_map = Vec::with_capacity(map.len());
        for (tensor, shard) in map {
            let shard = shard.as_str().filter(|s| is_file_name(s)).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {tensor} is mapped to {shard}, not the name of a file beside the index: fix the index or re-download the checkpoint",
                    path.display()
                )
            })?;
            weight_map.push((tensor.clone(), shard.to_string()));
        }
        Ok(Self { path, weight_map })
    }

    /// The shard file names, sorted, each once.
    pub fn shards(&self) -> Vec<&str> {
        let mut shards: Vec<&str> = self.weight_map.iter().map(|(_, s)| s.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

/// A plain file name: no separator of any platform, not `.` or `..`.
fn is_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::from_files(vec![single]);
        }
        if dir.join("model.safetensors.index.json").is_file() {
            return Self::from_index(dir, &ShardIndex::read(dir)?);
        }
        bail!(
            "{} has no model.safetensors (nor model.safetensors.index.json): bertcls reads safetensors weights; convert a pytorch_model.bin with transformers' save_pretrained(safe_serialization=True)",
            dir.display()
        )
    }

    /// Each tensor from the shard the index maps it to: a tensor that two shards hold is
    /// the mapped one's, and one that the index does not list is not read.
    fn from_index(dir: &Path, index: &ShardIndex) -> Result<Self> {
        let shards = index.shards();
        let mut ckpt = Self::from_files(shards.iter().map(|s| dir.join(s)).collect())?;
        let file_of: HashMap<&str, usize> =
            shards.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        let mut mapped = HashMap::with_capacity(index.weight_map.len());
        for (tensor, shard) in &index.weight_map {
            let file = file_of[shard.as_str()];
            if !ckpt.names[file].contains(tensor) {
                bail!(
                    "{} maps tensor {tensor} to {shard}, which does not hold it: re-download the checkpoint",
                    index.path.display()
                );
            }
            mapped.insert(tensor.clone(), file);
        }
        ckpt.index = mapped;
        Ok(ckpt)
    }

    pub fn from_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut names = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let file = File::open(&path)
                .with_context(|| format!("cannot open weights file {}", path.display()))?;
            // SAFETY: the map is read-only and lives as long as the last tensor read in place
            // from it (the encoder's, for the whole process). A file rewritten in place
            // underneath us is a user error we cannot guard against beyond the header checks,
            // as for every reader that maps weights (candle, llama.cpp); a download that
            // replaces the file (a new inode, as hf-hub's cache does) leaves this map intact.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| {
                // A map takes address space, not memory: it fails for a file larger than
                // what a process limit (`ulimit -v`) leaves.
                let advice = if e.kind() == std::io::ErrorKind::OutOfMemory {
                    "raise the process's memory limit (ulimit -v)"
                } else {
                    "check the file is a readable regular file"
                };
                anyhow!("cannot memory-map {} ({e}): {advice}", path.display())
            })?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                anyhow!("{} is not a valid safetensors file ({e}): it is truncated or corrupt, download it again", path.display())
            })?;
            let file_names: HashSet<String> = st.names().into_iter().map(str::to_owned).collect();
            for name in &file_names {
                index.insert(name.clone(), i);
            }
            names.push(file_names);
            files.push((path, Arc::new(mmap)));
        }
        Ok(Self {
            files,
            names,
            index,
        })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Refuses tensors of layers at or past `num_hidden_layers`: the encoder would run
    /// the first layers only, a shallower model than the weights', with no sign of it
    /// (transformers warns of unused weights).
    pub fn check_no_layers_past(&self, num_hidden_layers: usize) -> Result<()> {
        let past = self
            .tensor_names()
            .filter_map(|name| {
                let rest = name.strip_prefix("bert.").unwrap_or(name);
                let (layer, _) = rest.strip_prefix("encoder.layer.")?.split_once('.')?;
                let layer: usize = layer.parse().ok()?;
                (layer >= num_hidden_layers).then_some((layer, name))
            })
            .max();
        if let Some((layer, name)) = past {
            bail!(
                "{}: tensor {name} is of layer {layer}, but config.json has num_hidden_layers {num_hidden_layers}: the weights and config.json do not belong together; use the config.json these weights came with",
                self.file_of(name).unwrap_or(Path::new("")).display()
            );
        }
        Ok(())
    }

    /// The file a tensor lives in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].0.as_path())
    }

    /// Finds the tensor under the first name in `candidates` present and checks its shape
    /// and values: an aligned little-endian F32 tensor stays in place in the map, any
    /// other is converted to f32.
    pub fn tensor(&self, candidates: &[String], shape: &[usize]) -> Result<HostTensor> {
        let Some((name, &file_idx)) = candidates
            .iter()
            .find_map(|c| self.index.get_key_value(c.as_str()))
        else {
            let files: Vec<String> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            bail!(
                "missing tensor {} in {}: is this a BERT checkpoint of the architecture config.json describes?",
                candidates[0],
                files.join(", ")
            );
        };
        let (path, mmap) = &self.files[file_idx];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| anyhow!("{} is corrupt ({e}): download it again", path.display()))?;
        let view = st
            .tensor(name)
            .map_err(|e| anyhow!("{}: tensor {name}: {e}", path.display()))?;
        if view.shape() != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, expected {:?} from config.json: the weights and config.json do not belong together",
                path.display(),
                view.shape(),
                shape
            );
        }
        let bytes = view.data();
        let start = bytes.as_ptr() as usize - mmap.as_ptr() as usize;
        let in_place = view.dtype() == safetensors::Dtype::F32
            && cfg!(target_endian = "little")
            && bytes.as_ptr().align_offset(4) == 0;
        let out = if in_place {
            HostTensor::Mapped(MappedF32 {
                map: Arc::clone(mmap),
                start,
                len: bytes.len() / 4,
            })
        } else {
            let Some(width) = le_floats::safetensors_width(view.dtype()) else {
                bail!(
                    "{}: tensor {name} has dtype {:?}; bertcls reads F32, F16 and BF16 weights",
                    path.display(),
                    view.dtype()
                )
            };
            let mut v = weight_buffer(bytes.len() / width)?;
            le_floats::extend_safetensors_floats(view.dtype(), bytes, &mut v);
            HostTensor::Decoded(v)
        };
        let values = out.as_slice();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor {name} holds a non-finite value ({}) at index {i}: the weights are corrupt; download them again",
                path.display(),
                values[i]
            );
        }
        Ok(out)
    }
}

/// The names a tensor may carry: plain (`BertModel`), with a `bert.` prefix
/// (`BertForPreTraining` / `BertForSequenceClassification`), and the TF-era
/// `LayerNorm.gamma`/`beta` for `weight`/`bias`.
fn candidates(name: &str) -> Vec<String> {
    let mut bases = vec![name.to_string()];
    if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
        bases.push(format!("{stem}LayerNorm.gamma"));
    } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
        bases.push(format!("{stem}LayerNorm.beta"));
    }
    let mut out = bases.clone();
    out.extend(bases.iter().map(|b| format!("bert.{b}")));
    out
}

impl<U> BertWeights<U> {
    /// Reads every encoder tensor `config` asks for (the pooler and `cls.*` heads are
    /// ignored), handing each to `linear_w` (a Linear W, with its out and in features) or
    /// `plain` as soon as it is read: in place in the map where it is aligned F32 (so a
    /// backend packs a W, or keeps a plain tensor, without an f32 copy of it first), else
    /// decoded. No f32 copy of the whole model is ever held beside the backend's.
    pub fn read(
        ckpt: &Checkpoint,
        config: &BertConfig,
        linear_w: impl FnMut(&[f32], usize, usize) -> Result<U>,
        plain: impl FnMut(HostTensor) -> Result<U>,
    ) -> Result<Self> {
        ckpt.check_no_layers_past(config.num_hidden_layers)?;
        let c = config.hidden_size;
        let mut r = TensorReader {
            ckpt,
            linear_w,
            plain,
        };
        let embeddings = EmbeddingWeights {
            word: r.plain("embeddings.word_embeddings.weight", &[config.vocab_size, c])?,
            position: r.plain(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, c],
            )?,
            token_type: r.plain(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, c],
            )?,
            ln: r.layernorm("embeddings", c)?,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let f = config.intermediate_size;
                Ok(LayerWeights {
                    qkv: r.qkv(&format!("{p}.attention.self"), c)?,
                    attn_out: r.linear(&format!("{p}.attention.output.dense"), c, c)?,
                    attn_ln: r.layernorm(&format!("{p}.attention.output"), c)?,
                    ffn_in: r.linear(&format!("{p}.intermediate.dense"), f, c)?,
                    ffn_out: r.linear(&format!("{p}.output.dense"), c, f)?,
                    ffn_ln: r.layernorm(&format!("{p}.output"), c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertWeights { embeddings, layers })
    }
}

impl HostWeights {
    /// Every encoder tensor as f32 on the host (what tests and benchmarks upload
    /// themselves; the commands read straight into the backend with `BertWeights::read`).
    pub fn load(ckpt: &Checkpoint, config: &BertConfig) -> Result<Self> {
        Self::read(ckpt, config, |w, _, _| weight_copy(w), HostTensor::into_vec)
    }
}

/// `BertWeights::read`'s walk over the checkpoint: each tensor read, then converted.
struct TensorReader<'a, L, P> {
    ckpt: &'a Checkpoint,
    linear_w: L,
    plain: P,
}

impl<U, L, P> TensorReader<'_, L, P>
where
    L: FnMut(&[f32], usize, usize) -> Result<U>,
    P: FnMut(HostTensor) -> Result<U>,
{
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.ckpt.tensor(&candidates(name), shape)
    }

    fn plain(&mut self, name: &str, shape: &[usize]) -> Result<U> {
        let t = self.tensor(name, shape)?;
        (self.plain)(t)
    }

    fn linear(&mut self, prefix: &str, out_f: usize, in_f: usize) -> Result<LinearWeights<U>> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out_f, in_f])?;
        Ok(LinearWeights {
            w: (self.linear_w)(w.as_slice(), out_f, in_f)?,
            b: self.plain(&format!("{prefix}.bias"), &[out_f])?,
            out_features: out_f,
            in_features: in_f,
        })
    }

    /// query, key and value of `prefix` stacked into one (3C, C) Linear.
    fn qkv(&mut self, prefix: &str, c: usize) -> Result<LinearWeights<U>> {
        let (mut w, mut b) = (weight_buffer(3 * c * c)?, weight_buffer(3 * c)?);
        for part in ["query", "key", "value"] {
            w.extend(
                self.tensor(&format!("{prefix}.{part}.weight"), &[c, c])?
                    .as_slice(),
            );
            b.extend(
                self.tensor(&format!("{prefix}.{part}.bias"), &[c])?
                    .as_slice(),
            );
        }
        Ok(LinearWeights {
            w: (self.linear_w)(&w, 3 * c, c)?,
            b: (self.plain)(HostTensor::Decoded(b))?,
            out_features: 3 * c,
            in_features: c,
        })
    }

    fn layernorm(&mut self, prefix: &str, c: usize) -> Result<LayerNormWeights<U>> {
        Ok(LayerNormWeights {
            gamma: self.plain(&format!("{prefix}.LayerNorm.weight"), &[c])?,
            beta: self.plain(&format!("{prefix}.LayerNorm.bias"), &[c])?,
        })
    }
}

impl HostWeights {
    /// Random weights of `config`'s shape (uniform ±0.05, LayerNorm at identity): for speed
    /// work at full size where the real weights are not at hand. Seeded, so reproducible.
    pub fn random(config: &BertConfig, seed: u64) -> Self {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rand_vec =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.05..0.05)).collect() };
        let (c, f) = (config.hidden_size, config.intermediate_size);
        let ln = || LayerNormWeights {
            gamma: vec![1.0; c],
            beta: vec![0.0; c],
        };
        let mut linear = |out_f: usize, in_f: usize| LinearWeights {
            w: rand_vec(out_f * in_f),
            b: rand_vec(out_f),
            out_features: out_f,
            in_features: in_f,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerWeights {
                qkv: linear(3 * c, c),
                attn_out: linear(c, c),
                attn_ln: ln(),
                ffn_in: linear(f, c),
                ffn_out: linear(c, f),
                ffn_ln: ln(),
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
        let mut emb =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.05..0.05)).collect() };
        let embeddings = EmbeddingWeights {
            word: emb(config.vocab_size * c),
            position: emb(config.max_position_embeddings * c),
            token_type: emb(config.type_vocab_size * c),
            ln: ln(),
        };
        BertWeights { embeddings, layers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_buffer_refuses_what_cannot_be_allocated() {
        // More than the address space (capacity overflow), then as much as a layout
        // allows (the allocator refuses): an error each, where `vec!` would abort.
        for len in [usize::MAX / 8, isize::MAX as usize / 4] {
            let e = weight_buffer(len).unwrap_err().to_string();
            assert!(
                e.starts_with("cannot allocate ")
                    && e.ends_with(
                        " MiB for the model's weights: free memory or raise the process's memory limit (ulimit -v)"
                    ),
                "{e}"
            );
        }
        let v = weight_buffer(10).unwrap();
        assert!(v.is_empty() && v.capacity() >= 10);
    }
}
