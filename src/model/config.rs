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
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

/// 2^40 f32 parameters (4 TiB): beyond any BERT, and far from overflowing byte counts.
const MAX_PARAMETERS: usize = 1 << 40;

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
            // RoBERTa's embeddings number positions from pad_token_id + 1, not 0: its
            // weights would run here, and every feature would be wrong.
            if matches!(t.as_str(), "roberta" | "xlm-roberta") {
                bail!(
                    "model_type \"{t}\": RoBERTa models number positions from pad_token_id + 1, which bertcls's BERT encoder does not; use a BERT checkpoint (model_type \"bert\")"
                );
            }
            if t != "bert" {
                bail!(
                    "model_type \"{t}\" is not a BERT encoder; bertcls runs BertModel checkpoints"
                );
            }
        }
        if let Some(p) = self
            .position_embedding_type
            .as_deref()
            .filter(|&p| p != "absolute")
        {
            bail!(
                "position_embedding_type \"{p}\": bertcls implements absolute position embeddings only; use a checkpoint with \"absolute\""
            );
        }
        // Every size must be positive: a zero one leaves empty matrices the encoder would
        // index into.
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value == 0 {
                bail!("{name} is 0: every size in config.json must be positive");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!(
                "layer_norm_eps {} must be a positive finite number",
                self.layer_norm_eps
            );
        }
        if self.pad_token_id as usize >= self.vocab_size {
            bail!(
                "pad_token_id {} is outside the vocabulary of {} tokens",
                self.pad_token_id,
                self.vocab_size
            );
        }
        if self.checked_parameters().is_none_or(|n| n > MAX_PARAMETERS) {
            bail!(
                "its sizes give more than {MAX_PARAMETERS} parameters: not a model this machine can hold"
            );
        }
        self.activation()?;
        Ok(())
    }

    /// `num_parameters` with overflow checks, for sizes read from an untrusted file.
    fn checked_parameters(&self) -> Option<usize> {
        let (c, f) = (self.hidden_size, self.intermediate_size);
        let rows = self
            .vocab_size
            .checked_add(self.max_position_embeddings)?
            .checked_add(self.type_vocab_size)?;
        let embeddings = rows.checked_mul(c)?.checked_add(c.checked_mul(2)?)?;
        let attention = c.checked_mul(c)?.checked_add(c)?.checked_mul(4)?;
        let ffn = c.checked_mul(f)?.checked_mul(2)?;
        let layer = attention
            .checked_add(ffn)?
            .checked_add(f)?
            .checked_add(c.checked_mul(5)?)?;
        embeddings.checked_add(self.num_hidden_layers.checked_mul(layer)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(edit: impl FnOnce(&mut serde_json::Value)) -> Result<BertConfig> {
        let mut v = serde_json::json!({
            "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "vocab_size": 10, "max_position_embeddings": 16,
        });
        edit(&mut v);
        let dir = crate::testdir::TestDir::new("config");
        let path = dir.write("config.json", v.to_string().as_bytes());
        BertConfig::from_file(&path)
    }

    #[test]
    fn degenerate_configs_are_refused_with_the_file_named() {
        assert!(config(|_| {}).is_ok());
        assert!(config(|v| {
            v["model_type"] = "bert".into();
            v["position_embedding_type"] = "absolute".into();
        })
        .is_ok());
        let cases: [(&str, serde_json::Value, &str); 14] = [
            ("hidden_size", 0.into(), "hidden_size is 0"),
            ("intermediate_size", 0.into(), "intermediate_size is 0"),
            ("type_vocab_size", 0.into(), "type_vocab_size is 0"),
            ("num_attention_heads", 0.into(), "num_attention_heads is 0"),
            ("num_attention_heads", 3.into(), "not a multiple"),
            ("vocab_size", 0.into(), "vocab_size is 0"),
            (
                "max_position_embeddings",
                0.into(),
                "max_position_embeddings is 0",
            ),
            ("layer_norm_eps", (-1.0).into(), "layer_norm_eps"),
            ("pad_token_id", 10.into(), "pad_token_id 10"),
            ("hidden_size", (1u64 << 40).into(), "parameters"),
            (
                "model_type",
                "roberta".into(),
                "number positions from pad_token_id + 1",
            ),
            (
                "model_type",
                "xlm-roberta".into(),
                "model_type \"xlm-roberta\"",
            ),
            ("model_type", "gpt2".into(), "not a BERT encoder"),
            (
                "position_embedding_type",
                "relative_key".into(),
                "position_embedding_type \"relative_key\"",
            ),
        ];
        for (key, value, want) in cases {
            let err = config(|v| v[key] = value.clone()).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains(".json: ") && !err.contains('\n'),
                "{key} = {value}: {err}"
            );
        }
    }
}
