//! `config.json` of a HF BERT checkpoint.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::backend::Activation;

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| {
            anyhow!("{} is not a BERT config.json ({e}): pass a folder made by transformers' save_pretrained", path.display())
        })?;
        config
            .validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if let Some(t) = &self.model_type {
            if !matches!(t.as_str(), "bert" | "xlm-roberta" | "roberta") {
                bail!(
                    "model_type \"{t}\" is not a BERT encoder; bertcls runs BertModel checkpoints"
                );
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        self.activation()?;
        Ok(())
    }

    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hidden_act(&self.hidden_act).ok_or_else(|| {
            anyhow!(
                "hidden_act \"{}\" is not supported; bertcls implements gelu, gelu_new, gelu_pytorch_tanh and relu",
                self.hidden_act
            )
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Encoder parameters (embeddings + layers, no pooler).
    pub fn num_parameters(&self) -> usize {
        let (c, f) = (self.hidden_size, self.intermediate_size);
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * c + 2 * c;
        let layer = 4 * (c * c + c) + 2 * (c * f) + f + c + 4 * c;
        embeddings + self.num_hidden_layers * layer
    }
}
