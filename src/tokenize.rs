//! BERT tokenization through the `tokenizers` crate: a model's `tokenizer.json`, or a
//! WordPiece tokenizer rebuilt from `vocab.txt` + `tokenizer_config.json` as HF's
//! `BertTokenizer` would configure it. Output is `[CLS] text [SEP]`, truncated to
//! `max_length`, never padded (batches are packed).

mod bounded;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Model, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The recipe's truncation length.
pub const DEFAULT_MAX_LENGTH: usize = 350;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

pub struct BertTokenizer {
    inner: Tokenizer,
    /// Bounds the work on a long text (see `bounded`).
    bounded: bounded::Bounded,
    /// The files it was built from, for `info` and the feature-cache key.
    sources: Vec<PathBuf>,
    max_length: usize,
}

impl BertTokenizer {
    /// `tokenizer.json` when `dir` has one, else `vocab.txt` (+ `tokenizer_config.json`).
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self> {
        if max_length < 2 {
            bail!("--max-length {max_length} leaves no room for [CLS] and [SEP]: use at least 2");
        }
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let (mut inner, sources) = if json.is_file() {
            let tok = tokenizer_json(&json)?;
            check_unk_token(&tok, &json)?;
            (tok, vec![json])
        } else if vocab.is_file() {
            let config_path = dir.join("tokenizer_config.json");
            let tok = from_vocab(&vocab, &config_path)?;
            let mut sources = vec![vocab];
            if config_path.is_file() {
                sources.push(config_path);
            }
            (tok, sources)
        } else {
            bail!("{} has neither tokenizer.json nor vocab.txt: copy the tokenizer files of the model into it", dir.display());
        };
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("cannot set truncation on the tokenizer: {e}"))?;
        inner.with_padding(None);
        // Its probes are the first texts the tokenizer sees: a failure there is the file's.
        let bounded = bounded::Bounded::new(&inner, max_length).map_err(|e| {
            anyhow!(
                "{}: {e:#}: use the model's own tokenizer files",
                sources[0].display()
            )
        })?;
        Ok(Self {
            inner,
            bounded,
            sources,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The configured `tokenizers` tokenizer (truncation at `max_length`, no padding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// The largest id the tokenizer can give, added tokens included; None for an empty
    /// vocabulary.
    pub fn largest_id(&self) -> Option<u32> {
        let model = match self.inner.get_model() {
            // A Unigram id is the piece's position: no need to copy 250,000 pieces.
            ModelWrapper::Unigram(unigram) => unigram.get_vocab_size().checked_sub(1),
            other => other.get_vocab().into_values().max().map(|id| id as usize),
        };
        let added = self
            .inner
            .get_added_vocabulary()
            .get_vocab()
            .values()
            .max()
            .map(|&id| id as usize);
        // The post-processor's [CLS] and [SEP] carry ids of their own, in no vocabulary.
        let special = self
            .inner
            .encode("", true)
            .ok()
            .and_then(|e| e.get_ids().iter().max().map(|&id| id as usize));
        model.max(added).max(special).map(|id| id as u32)
    }

    /// sha256 over the tokenizer files and `max_length`: equal fingerprints give equal ids.
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = Sha256::new();
        for p in &self.sources {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            h.update(
                p.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            h.update(&bytes);
        }
        h.update(self.max_length.to_le_bytes());
        Ok(format!("{:x}", h.finalize()))
    }

    /// `[CLS] text [SEP]` truncated to `max_length`: the ids HF gives for the whole text,
    /// with work bounded by `max_length` however long the text is (see `bounded`).
    pub fn encode(&self, text: &str) -> Result<TokenizedText> {
        let ids = self.bounded.encode(&self.inner, text)?;
        // One sequence: every type id is 0 (checked in `Bounded::new`).
        let type_ids = vec![0; ids.len()];
        Ok(TokenizedText { ids, type_ids })
    }

    /// Whether `encode` cuts long texts (a WordPiece or Unigram pipeline it knows how to
    /// cut) rather than tokenizing them whole.
    pub fn bounds_long_texts(&self) -> bool {
        self.bounded.cuts_long_texts()
    }

    /// The whole text through the `tokenizers` pipeline, then truncated: HF's behaviour,
    /// with work growing with the text. The reference `encode` is tested against.
    pub fn encode_unbounded(&self, text: &str) -> Result<TokenizedText> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("cannot tokenize {:?}: {e}", truncate_for_message(text)))?;
        Ok(TokenizedText {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Tokenizes in parallel, keeping input order.
    pub fn encode_many<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<TokenizedText>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }
}

/// `tokenizer.json` without its decoder: bertcls never decodes, and `tokenizers`
/// panics (an `expect` in its decoder deserializer) on a malformed one.
fn tokenizer_json(json: &Path) -> Result<Tokenizer> {
    let invalid = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{} is not a valid tokenizer.json ({e}): re-download it or delete it to use vocab.txt",
            json.display()
        )
    };
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(&e))?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("decoder".into(), serde_json::Value::Null);
    }
    value.to_string().parse().map_err(|e| invalid(&e))
}

/// A WordPiece, WordLevel or BPE vocabulary without its unk_token fails on the first
/// word it has no pieces for, which may be hours into a bulk job: refused when loaded
/// instead. (A BPE with byte fallback spells such words in bytes; a Unigram's unk_id is
/// not readable here, and one without fails as before, naming the text.)
fn check_unk_token(tok: &Tokenizer, json: &Path) -> Result<()> {
    let unk = match tok.get_model() {
        ModelWrapper::WordPiece(wp) => Some((&wp.unk_token, wp.token_to_id(&wp.unk_token))),
        ModelWrapper::WordLevel(wl) => Some((&wl.unk_token, wl.token_to_id(&wl.unk_token))),
        ModelWrapper::BPE(bpe) if !bpe.byte_fallback => {
            bpe.unk_token.as_ref().map(|t| (t, bpe.token_to_id(t)))
        }
        _ => None,
    };
    if let Some((token, None)) = unk {
        bail!(
            "{}: its unk_token {token:?} is not in its vocabulary, so a text with a word it has no pieces for could not be tokenized: re-download it or delete it to use vocab.txt",
            json.display()
        );
    }
    Ok(())
}

fn truncate_for_message(text: &str) -> String {
    text.chars().take(40).collect()
}

/// HF `BertTokenizer` from `vocab.txt`: BasicTokenizer (clean text, CJK characters split
/// apart, lower-casing and accent stripping per `do_lower_case`/`strip_accents`), then
/// WordPiece with `##` continuations and `[UNK]`.
fn from_vocab(vocab: &Path, config_path: &Path) -> Result<Tokenizer> {
    let config: serde_json::Value = if config_path.is_file() {
        let text = std::fs::read_to_string(config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: the model's tokenizer_config.json does not parse as JSON ({e}): restore it from the model's source (deleting it suits only an uncased model: without it the text is lower-cased, as BertTokenizer's defaults say)",
                config_path.display()
            )
        })?
    } else {
        serde_json::Value::Null
    };
    // A flag of another type is refused, not defaulted: `"do_lower_case": "false"`
    // read as absent would lower-case a cased model's text without a word.
    let flag = |key: &str| -> Result<Option<bool>> {
        match config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => bail!(
                "{}: \"{key}\" is {other}, not true or false: restore the file from the model's source, or set it to true or false",
                config_path.display()
            ),
        }
    };
    // HF's BertTokenizer defaults: do_lower_case=True, tokenize_chinese_chars=True,
    // strip_accents=None (which then follows do_lower_case).
    let lowercase = flag("do_lower_case")?.unwrap_or(true);
    let chinese = flag("tokenize_chinese_chars")?.unwrap_or(true);
    let strip_accents = flag("strip_accents")?;
    let special = |key: &str, default: &str| -> String {
        config
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_string()
    };
    let (unk, cls, sep) = (
        special("unk_token", "[UNK]"),
        special("cls_token", "[CLS]"),
        special("sep_token", "[SEP]"),
    );

    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| anyhow!("{} is not a UTF-8 path", vocab.display()))?;
    let wordpiece = WordPiece::from_file(vocab_str)
        .unk_token(unk.clone())
        .build()
        .map_err(|e| anyhow!("{} is not a WordPiece vocabulary ({e})", vocab.display()))?;
    let id = |tok: &str| -> Result<u32> {
        tokenizers::Model::token_to_id(&wordpiece, tok).ok_or_else(|| {
            anyhow!(
                "{} has no {tok} token: it is not a BERT vocabulary",
                vocab.display()
            )
        })
    };
    let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
    id(&unk)?;
    let mut tok = Tokenizer::new(wordpiece);
    tok.with_normalizer(Some(BertNormalizer::new(
        true,
        chinese,
        strip_accents,
        lowercase,
    )));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
    Ok(tok)
}
