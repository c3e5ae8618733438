//! Long texts as overlapping windows (`--long chunk --stride S`): a text longer than
//! `max_length` tokens is cut into windows of at most `max_length` tokens, each with its
//! own [CLS] and [SEP], consecutive windows sharing `stride` tokens, and its feature is
//! the mean of its windows' features. The windows are HF tokenizers' own overflow
//! windows (`truncation` with `stride`, `return_overflowing_tokens`), so they match
//! Python's `tokenizer(text, truncation=True, max_length=L, stride=S,
//! return_overflowing_tokens=True)` id for id (tests/fixtures/tiny/chunk-windows.json).

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::tokenize::{BertTokenizer, TokenizedText};

/// Most windows a text contributes: a bound on the work and memory one text can take
/// (64 windows of 350 tokens is over 20,000 tokens); later ones are dropped.
pub const MAX_WINDOWS: usize = 64;

/// `--stride` when not given: tokens shared by neighbouring windows.
pub const DEFAULT_STRIDE: usize = 64;

/// What happens to a text longer than `max_length` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongTexts {
    /// Cut at `max_length` tokens: the recipe's.
    #[default]
    Truncate,
    /// Overlapping windows, `stride` tokens shared by neighbours, features averaged.
    Chunk { stride: usize },
}

impl LongTexts {
    /// `truncate`, or `chunk:S`: the feature cache key's and the checkpoint's form.
    pub fn key(self) -> String {
        match self {
            Self::Truncate => "truncate".into(),
            Self::Chunk { stride } => format!("chunk:{stride}"),
        }
    }

    /// `--long truncate|chunk` with `--stride`.
    pub fn from_flags(long: &str, stride: usize) -> Result<Self> {
        match long {
            "truncate" => Ok(Self::Truncate),
            "chunk" => Ok(Self::Chunk { stride }),
            other => bail!("--long {other}: use truncate or chunk"),
        }
    }

    /// Refuses a `--stride` given (`stride`) where texts are truncated: it would change
    /// nothing, and a user who gave it expects windows.
    pub fn check_stride(self, stride: Option<usize>) -> Result<()> {
        match (self, stride) {
            (Self::Truncate, Some(stride)) => bail!(
                "--stride {stride} only applies to --long chunk, and long texts are truncated here: add --long chunk, or drop --stride"
            ),
            _ => Ok(()),
        }
    }

    /// Parses [`key`](Self::key)'s form.
    pub fn from_key(key: &str) -> Option<Self> {
        match key.split_once(':') {
            None if key == "truncate" => Some(Self::Truncate),
            Some(("chunk", s)) => s.parse().ok().map(|stride| Self::Chunk { stride }),
            _ => None,
        }
    }
}

/// Refuses windows of `max_length` tokens that `stride` shared tokens would leave nothing
/// new to hold. It needs only the two numbers, so commands call it before loading the
/// weights: a bad --stride is refused before minutes of loading, not after.
pub fn check_window(max_length: usize, stride: usize) -> Result<()> {
    if max_length <= 2 {
        bail!("--long chunk: windows of --max-length {max_length} hold no tokens besides [CLS] and [SEP]; pass --max-length 3 or more");
    }
    // Not `stride + 2 >= max_length`: a huge --stride wrapped that sum past the check.
    if stride >= max_length - 2 {
        bail!(
            "--stride {stride}: windows of --max-length {max_length} hold {} tokens besides [CLS] and [SEP]; pass a --stride below that, or a --max-length above {}",
            max_length - 2,
            stride.saturating_add(2)
        );
    }
    Ok(())
}

/// A model's tokenizer set to cut texts into overflow windows.
pub struct WindowTokenizer {
    inner: Tokenizer,
    max_length: usize,
    stride: usize,
}

impl WindowTokenizer {
    pub fn new(base: &BertTokenizer, stride: usize) -> Result<Self> {
        let max_length = base.max_length();
        check_window(max_length, stride)?;
        let mut inner = base.tokenizer().clone();
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("cannot set windows on the tokenizer: {e}"))?;
        Ok(Self {
            inner,
            max_length,
            stride,
        })
    }

    /// The windows of `text`, in order: one for a text that fits, at most
    /// [`MAX_WINDOWS`], the first ones of the whole text's.
    ///
    /// A huge text is tokenized only as far as those windows need, but no fixed number
    /// of characters is sure to hold them: a token covers one character or a whole word
    /// (an [UNK] word has hundreds). So a prefix of `MAX_WINDOWS * max_length` characters
    /// is tried first and doubled until its windows run past the last one kept. The cut
    /// falls on whitespace where the prefix's second half has some, so no word is split
    /// and the prefix's tokens are the whole text's (BERT's and Metaspace's
    /// pre-tokenizers split there; Metaspace may add one trailing piece for the space,
    /// in the last window); where it has none (unspaced CJK,
    /// one character a token in BERT vocabularies), a split word changes the tokens at
    /// the cut, which a margin of one window keeps out of those returned unless that one
    /// word's tokens fill more than a window.
    pub fn windows(&self, text: &str) -> Result<Vec<TokenizedText>> {
        let mut cap = MAX_WINDOWS * self.max_length;
        loop {
            let (prefix, whole) = match text.char_indices().nth(cap) {
                Some((end, _)) => (&text[..cut_at_space(text, end)], false),
                None => (text, true),
            };
            let mut out = self.encode(prefix)?;
            if whole || out.len() > MAX_WINDOWS + 1 {
                out.truncate(MAX_WINDOWS);
                return Ok(out);
            }
            cap *= 2;
        }
    }

    /// Every overflow window of `text`.
    fn encode(&self, text: &str) -> Result<Vec<TokenizedText>> {
        let enc = self.inner.encode(text, true).map_err(|e| {
            anyhow!(
                "cannot tokenize {:?}: {e}",
                text.chars().take(40).collect::<String>()
            )
        })?;
        let mut out = vec![TokenizedText {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        }];
        out.extend(enc.get_overflowing().iter().map(|o| TokenizedText {
            ids: o.get_ids().to_vec(),
            type_ids: o.get_type_ids().to_vec(),
        }));
        Ok(out)
    }

    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// Row i of the (N, C) result is the mean of the rows `windows[i]` of `features`
/// (windows, C), in f64.
pub fn mean_of_windows(features: &[f32], counts: &[usize], hidden: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(counts.len() * hidden);
    let mut row = 0;
    for &n in counts {
        let mut acc = vec![0.0f64; hidden];
        for w in row..row + n {
            for (a, &v) in acc.iter_mut().zip(&features[w * hidden..(w + 1) * hidden]) {
                *a += v as f64;
            }
        }
        out.extend(acc.iter().map(|a| (a / n as f64) as f32));
        row += n;
    }
    out
}

/// The byte offset to cut `text` at, near `end` (a char boundary): just after the last
/// whitespace in `text[end / 2..end]`, else `end` itself.
fn cut_at_space(text: &str, end: usize) -> usize {
    text[..end]
        .char_indices()
        .rev()
        .take_while(|&(i, _)| i >= end / 2)
        .find(|&(_, c)| c.is_whitespace())
        .map_or(end, |(i, c)| i + c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for long in [LongTexts::Truncate, LongTexts::Chunk { stride: 64 }] {
            assert_eq!(LongTexts::from_key(&long.key()), Some(long));
        }
        assert_eq!(LongTexts::from_key("chunk:x"), None);
        assert_eq!(LongTexts::from_key("window"), None);
    }

    #[test]
    fn a_stride_needs_windows() {
        assert!(LongTexts::Chunk { stride: 8 }.check_stride(Some(8)).is_ok());
        assert!(LongTexts::Truncate.check_stride(None).is_ok());
        let err = LongTexts::Truncate.check_stride(Some(8)).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--stride 8 only applies to --long chunk"));
    }

    /// `--stride 18446744073709551615` wrapped `stride + 2` to 1 and passed, to be
    /// refused only by the tokenizer, in its words, after the weights were loaded.
    #[test]
    fn a_stride_at_or_past_the_window_is_refused_however_large() {
        assert!(check_window(350, 347).is_ok());
        for stride in [348, usize::MAX - 1, usize::MAX] {
            let err = check_window(350, stride).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "--stride {stride}: windows of --max-length 350 hold 348"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn windows_are_averaged_per_text() {
        let f = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(mean_of_windows(&f, &[2, 1], 2), vec![2.0, 3.0, 5.0, 6.0]);
    }
}
