//! Features of a split through the feature cache: read on a hit, encoded and stored on
//! a miss, shared among a search's poolings, imported by `train --features-from`, and
//! for `--long chunk` built on the cache's truncated entry.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use rayon::prelude::*;

use super::common::{
    backend_name, encode_texts, precision_name, weights_sha256, LoadedModel, ModelFiles,
};
use super::progress::{count, Progress};
use crate::backend::cuda::Precision;
use crate::backend::Device;
use crate::chunk::{mean_of_windows, LongTexts, WindowTokenizer};
use crate::features::{first_non_finite, windows_revision, EncodeSpec, FeatureCache, FeatureKey};
use crate::model::{encode_all, FeaturesDoNotFit, Keep, PoolKind, Pooling};

/// Where features are cached, or nothing with `--no-cache`.
#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// Feature cache folder [default: features in $BERTCLS_CACHE, else bertcls/features in the user's cache folder, ~/.cache on Linux].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Encode afresh and store nothing.
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    pub fn cache(&self) -> Option<FeatureCache> {
        (!self.no_cache).then(|| {
            FeatureCache::new(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(FeatureCache::default_dir),
            )
        })
    }
}

/// Encodes splits through the feature cache: a hit reads the features, a miss encodes and
/// stores them. Hashes the weights once per run.
pub struct FeatureSource {
    cache: Option<FeatureCache>,
    weights_sha256: Option<String>,
    tokenizer: Option<String>,
    /// A cache that could not be written to has been warned about (once a process).
    cache_write_failed: bool,
    /// Features `train --features-from` imported that the cache could not take: served
    /// from memory, as the cache would have served them.
    imported: Vec<(FeatureKey, Vec<f32>)>,
    /// Features `share_forward` took from one forward for several poolings, handed out
    /// (and cached) by `features` as if each had been encoded alone.
    shared: Vec<(FeatureKey, Vec<f32>)>,
}

pub struct Features {
    /// (rows, C)
    pub x: Vec<f32>,
    pub origin: FeatureOrigin,
}

/// Where a split's features came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureOrigin {
    Encoded,
    Cache,
    /// `train --features-from` files the cache could not take, held for this run only.
    Imported,
}

impl FeatureSource {
    pub fn new(cache: Option<FeatureCache>) -> Self {
        Self {
            cache,
            weights_sha256: None,
            tokenizer: None,
            cache_write_failed: false,
            imported: Vec::new(),
            shared: Vec::new(),
        }
    }

    /// Stores the (rows, hidden) features `x` imported for `key` in `cache` (this
    /// source's), or, where the cache cannot take them (read-only, full), warns once and
    /// keeps them for this run: a cache only spares later runs the work, as for features
    /// this run encodes. Whether the cache took them.
    pub fn put_imported(
        &mut self,
        cache: &FeatureCache,
        key: FeatureKey,
        x: Vec<f32>,
        (rows, hidden): (usize, usize),
    ) -> bool {
        match cache.put(&key, &x, rows, hidden) {
            Ok(()) => true,
            Err(e) => {
                self.warn_cache_write(cache, &e);
                self.imported.push((key, x));
                false
            }
        }
    }

    fn warn_cache_write(&mut self, cache: &FeatureCache, e: &anyhow::Error) {
        if !self.cache_write_failed {
            eprintln!(
                "warning: cannot store features in the cache {} ({e:#}); going on without it: point the cache at a writable folder with --cache-dir DIR or BERTCLS_CACHE, or pass --no-cache",
                cache.dir().display()
            );
            self.cache_write_failed = true;
        }
    }

    /// sha256 of the weights in `files`, before any is loaded; computed at most once.
    pub fn weights_sha256_of(&mut self, files: &ModelFiles) -> Result<String> {
        if self.weights_sha256.is_none() {
            self.weights_sha256 = Some(weights_sha256(&files.dir.dir)?);
        }
        Ok(self.weights_sha256.clone().unwrap_or_default())
    }

    /// The cache this source reads and fills; `None` with `--no-cache`.
    pub fn cache(&self) -> Option<&FeatureCache> {
        self.cache.as_ref()
    }

    /// What the features of `files` on `device` depend on besides the texts: the cache
    /// key's fields, known before the weights are loaded.
    pub fn encode_spec(
        &mut self,
        files: &ModelFiles,
        device: Device,
        precision: Precision,
        pooling: Pooling,
        long: LongTexts,
    ) -> Result<EncodeSpec> {
        if self.tokenizer.is_none() {
            self.tokenizer = Some(files.tokenizer.fingerprint()?);
        }
        Ok(EncodeSpec {
            weights_sha256: self.weights_sha256_of(files)?,
            tokenizer: self.tokenizer.clone().unwrap_or_default(),
            max_length: files.tokenizer.max_length(),
            backend: backend_name(device).into(),
            precision: precision_name(device, precision),
            pooling: pooling.name().to_string(),
            long: long.key(),
            windows: windows_revision(&long.key()),
        })
    }

    /// The encode spec of a loaded model, as it was set up (device, precision, pooling,
    /// long-text mode).
    pub fn model_spec(&mut self, model: &LoadedModel) -> Result<EncodeSpec> {
        self.encode_spec(
            &model.files,
            model.device,
            model.precision,
            model.pooling,
            model.long,
        )
    }

    /// With two or more of `poolings` missing from the cache (all of them with
    /// `--no-cache`), encodes `texts` once with the widest of them ([CLS] and mean of as
    /// many layers as any needs) and keeps each one's features, taken from it, for
    /// `features`: one forward instead of one per pooling, the same floats (with `--long
    /// chunk`, one forward of every window: a window's mean is taken column by column).
    /// A chunked pooling whose truncated features are cached is left out: its own path
    /// encodes only the long texts' windows. On CUDA the last layer's `cls` keeps its own
    /// forward: its [CLS]-only last layer agrees with the whole layer's [CLS] rows to
    /// rounding only (`QueryRows::ClsOnly`), and its cache entry must hold the floats it
    /// encodes alone.
    /// Where the widest features do not fit in memory, each pooling keeps its own forward.
    pub fn share_forward(
        &mut self,
        model: &mut LoadedModel,
        poolings: &[Pooling],
        split_name: &str,
        texts: &[String],
        data_hash: &str,
    ) -> Result<()> {
        let cache = self.cache.clone();
        let mut missing = Vec::new();
        let alike = model.device == Device::Cpu;
        for &pooling in poolings.iter().filter(|p| alike || p.keep() != Keep::Cls) {
            let spec = self.encode_spec(
                &model.files,
                model.device,
                model.precision,
                pooling,
                model.long,
            )?;
            let key = FeatureKey::new(&spec, data_hash);
            let held = self.imported.iter().any(|(k, _)| *k == key);
            let cached = |key: &FeatureKey| cache.as_ref().is_some_and(|c| c.path(key).is_file());
            let reused = key.truncated().is_some_and(|t| cached(&t));
            if !held && !cached(&key) && !reused {
                missing.push((pooling, key));
            }
        }
        if missing.len() < 2 {
            return Ok(());
        }
        let layers = missing.iter().map(|(p, _)| p.layers).max().unwrap_or(1);
        let own = std::mem::replace(
            &mut model.pooling,
            Pooling {
                kind: PoolKind::ClsMean,
                layers,
            },
        );
        let widest = encode_texts(model, texts, split_name);
        model.pooling = own;
        let widest = match widest.map_err(|e| e.downcast::<FeaturesDoNotFit>()) {
            Ok(x) => x,
            // Refused before any batch ran: each pooling alone may still fit.
            Err(Ok(refusal)) => {
                eprintln!(
                    "{split_name}: one forward for {} poolings would hold their {} features ({} MiB), more than memory allows: each pooling is encoded on its own",
                    missing.len(),
                    refusal.pooling,
                    refusal.mib()
                );
                return Ok(());
            }
            Err(Err(e)) => return Err(e),
        };
        let hidden = model.encoder.hidden_size();
        for (pooling, key) in missing {
            self.shared
                .push((key, pooling.take_from(&widest, hidden, layers)));
        }
        Ok(())
    }

    /// The features `share_forward` took for `model`'s pooling of these texts, stored in
    /// the cache as if encoded alone; `None` where it took none.
    fn take_shared(
        &mut self,
        model: &LoadedModel,
        split_name: &str,
        texts: &[String],
        data_hash: &str,
    ) -> Result<Option<Vec<f32>>> {
        if self.shared.is_empty() {
            return Ok(None);
        }
        let key = FeatureKey::new(&self.model_spec(model)?, data_hash);
        let Some(at) = self.shared.iter().position(|(k, _)| *k == key) else {
            return Ok(None);
        };
        let (_, x) = self.shared.swap_remove(at);
        eprintln!(
            "{split_name}: {} {} features from the shared forward",
            texts.len(),
            model.pooling
        );
        check_encoded(model, split_name, &x)?;
        if let Some(cache) = self.cache.clone() {
            if let Err(e) = cache.put(&key, &x, texts.len(), model.feature_width()) {
                self.warn_cache_write(&cache, &e);
            }
        }
        Ok(Some(x))
    }

    pub fn features(
        &mut self,
        model: &mut LoadedModel,
        split_name: &str,
        texts: &[String],
        data_hash: &str,
    ) -> Result<Features> {
        if let Some(x) = self.take_shared(model, split_name, texts, data_hash)? {
            return Ok(Features {
                x,
                origin: FeatureOrigin::Encoded,
            });
        }
        let Some(cache) = self.cache.clone() else {
            let x = encode_texts(model, texts, split_name)?;
            check_encoded(model, split_name, &x)?;
            return Ok(Features {
                x,
                origin: FeatureOrigin::Encoded,
            });
        };
        let spec = self.model_spec(model)?;
        let key = FeatureKey::new(&spec, data_hash);
        let width = model.feature_width();
        if let Some((_, x)) = self.imported.iter().find(|(k, _)| *k == key) {
            eprintln!(
                "{split_name}: {} {} features imported from --features-from",
                texts.len(),
                model.pooling
            );
            return Ok(Features {
                x: x.clone(),
                origin: FeatureOrigin::Imported,
            });
        }
        if let Some(x) = cache.get(&key)? {
            if x.len() == texts.len() * width {
                eprintln!(
                    "{split_name}: {} {} features from the cache {}",
                    texts.len(),
                    model.pooling,
                    cache.path(&key).display()
                );
                return Ok(Features {
                    x,
                    origin: FeatureOrigin::Cache,
                });
            }
        }
        let truncated = match key.truncated() {
            Some(truncate_key) => cache
                .get(&truncate_key)?
                .filter(|x| x.len() == texts.len() * width),
            None => None,
        };
        let x = match truncated {
            Some(truncated) => chunk_features_reusing(model, texts, &truncated, split_name)?,
            None => encode_texts(model, texts, split_name)?,
        };
        check_encoded(model, split_name, &x)?;
        // The features are in hand: a cache that cannot take them (read-only, full) only
        // costs the next run its encoding, so it must not throw this run's work away.
        if let Err(e) = cache.put(&key, &x, texts.len(), width) {
            self.warn_cache_write(&cache, &e);
        }
        Ok(Features {
            x,
            origin: FeatureOrigin::Encoded,
        })
    }
}

/// Features the encoder just computed, before anything is stored or trained on: a NaN
/// or infinity there comes from the model (weights out of range, or a half precision
/// overflowing), and training on it would fail at its first step blaming the learning
/// rate.
fn check_encoded(model: &LoadedModel, split_name: &str, x: &[f32]) -> Result<()> {
    let Some((row, value)) = first_non_finite(x, model.feature_width()) else {
        return Ok(());
    };
    let precision = model.precision_name();
    let remedy = match precision.as_str() {
        "fp32" => String::new(),
        _ => format!(", or {precision} overflowed (try --precision fp32)"),
    };
    bail!(
        "{split_name}: the encoder gave a non-finite feature ({value}) for row {row}: the weights in {} are out of range or corrupt{remedy}; check them, or fetch the model again",
        model.files.dir.dir.display()
    )
}

/// `--long chunk` features of `texts` given their truncated ones (the cache's
/// `truncate` entry for the same model, data and pooling): a text that fits in one
/// window has its truncated tokens as that window, so its feature is the truncated one
/// and only the texts with several windows are encoded. On ChnSentiCorp that is 2% of
/// the texts instead of all of them.
fn chunk_features_reusing(
    model: &mut LoadedModel,
    texts: &[String],
    truncated: &[f32],
    what: &str,
) -> Result<Vec<f32>> {
    let LongTexts::Chunk { stride } = model.long else {
        bail!("chunk features asked of a model set to truncate");
    };
    let width = model.feature_width();
    let windows = WindowTokenizer::new(&model.files.tokenizer, stride)?;
    let per_text = texts
        .par_iter()
        .map(|t| windows.windows(t))
        .collect::<Result<Vec<_>>>()?;
    let long: Vec<usize> = (0..texts.len())
        .filter(|&i| per_text[i].len() > 1)
        .collect();
    eprintln!(
        "{what}: {} of {} texts fit one window, their features from the truncate cache entry; encoding the windows of the other {}",
        texts.len() - long.len(),
        texts.len(),
        long.len()
    );
    let started = Instant::now();
    let counts: Vec<usize> = long.iter().map(|&i| per_text[i].len()).collect();
    let flat: Vec<_> = long.iter().flat_map(|&i| per_text[i].clone()).collect();
    let mut progress = Progress::new(flat.len() as u64, &format!("encoding {what} windows"));
    let x = encode_all(model.encoder.as_mut(), &flat, model.pooling, |done| {
        progress.set(done as u64)
    })?;
    progress.finish();
    let tokens: usize = flat.iter().map(|t| t.ids.len()).sum();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "encoded {what}: {} of {}, {tokens} tokens in {secs:.1}s ({:.0} tokens/s)",
        count(flat.len(), "window"),
        count(long.len(), "text"),
        tokens as f64 / secs
    );
    let means = mean_of_windows(&x, &counts, width);
    let mut out = truncated.to_vec();
    for (row, &i) in long.iter().enumerate() {
        out[i * width..(i + 1) * width].copy_from_slice(&means[row * width..(row + 1) * width]);
    }
    Ok(out)
}
