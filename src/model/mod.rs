//! A BERT model folder: `config.json`, safetensors weights and a tokenizer.

pub mod config;
pub mod encoder;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use config::BertConfig;
pub use encoder::{
    encode_all, Encoder, EncoderOutput, FeatureEncoder, FeaturesDoNotFit, Keep, PoolKind, Pooling,
};
pub use weights::{Checkpoint, HostWeights};

/// The files of a model folder, checked to exist.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("model folder {} does not exist: pass --model with a folder holding config.json, model.safetensors and tokenizer.json or vocab.txt", dir.display());
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            bail!("{} has no config.json: a model folder needs config.json, model.safetensors and tokenizer.json or vocab.txt", dir.display());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
        })
    }

    pub fn config(&self) -> Result<BertConfig> {
        BertConfig::from_file(&self.config)
    }

    /// Config and f32 host weights.
    pub fn load(&self) -> Result<(BertConfig, HostWeights)> {
        let config = self.config()?;
        let ckpt = Checkpoint::open(&self.dir)?;
        let weights = HostWeights::load(&ckpt, &config)?;
        Ok((config, weights))
    }
}
