//! Tokenizing a long text with work bounded by `max_length`, giving the same ids as
//! tokenizing the whole text and truncating (HF's behaviour).
//!
//! HF normalizes, pre-tokenizes and segments the whole text before truncating, so a
//! 20 MB line costs gigabytes for 350 ids. Here only a prefix is tokenized. A prefix's
//! first ids equal the whole text's only where the pipeline cannot look across the cut,
//! so each tokenizer kind gets its own argument (both are checked against the whole-text
//! result in `tests/long_texts.rs`, texts of 10^2 to 10^7 characters):
//!
//! * WordPiece behind `BertNormalizer` + `BertPreTokenizer` ([`Plan::Words`]): the text is
//!   cut only next to a whitespace, punctuation or (when the normalizer pads them) CJK
//!   character. The normalizer works one character at a time (clean-up, CJK padding,
//!   lower-casing; NFD + mark removal, where reordering cannot cross these characters,
//!   which are all starters), and the pre-tokenizer splits at exactly these characters,
//!   so the words of `a + b` are the words of `a` then of `b`, and WordPiece works word by
//!   word: ids(a + b) = ids(a) ++ ids(b). Pieces are tokenized in order until `max_length`
//!   ids are there. A stretch with no such character is one word: WordPiece gives `[UNK]`
//!   when its normalized form exceeds `max_input_chars_per_word` characters, so a long
//!   word is normalized a block at a time only until that count is passed, then skipped
//!   by a scan that allocates nothing.
//! * Unigram behind `Metaspace` ([`Plan::Lattice`]): (1) a cut before a space that follows
//!   a printable ASCII character is exact: the normalizers allowed here work per grapheme
//!   or on runs of spaces, the cut is a grapheme boundary, the prefix's normalized form
//!   ends in a non-space, and Metaspace starts a new piece at every space, so the
//!   prefix's pieces are the whole text's first pieces, each segmented alone. (2) inside
//!   a run with no space (Chinese, a URL), Unigram's Viterbi picks the best path to each
//!   position from the characters before it only, and no token is longer than K
//!   characters (the longest vocabulary piece), so every segmentation of the whole run
//!   has a token boundary among any K+1 consecutive positions. If the best paths to all
//!   K+1 positions of such a window (the prefixes ending there) agree on their first
//!   ids, the whole text's best path, which passes through one of them, starts with
//!   those ids too (merging adjacent unknowns changes extents, not these ids). The
//!   window's characters must each be a grapheme that normalizes to one character, so
//!   that its positions are positions of the normalized run.
//!
//! Anything else (another model, normalizer or pre-tokenizer; a huge word holding an
//! added token; an unbroken run of characters outside (2)) is tokenized whole: exact,
//! but not bounded.

use anyhow::{anyhow, Result};
use tokenizers::{
    Model, ModelWrapper, NormalizedString, Normalizer, NormalizerWrapper, PreTokenizerWrapper,
    Tokenizer,
};
use unicode_categories::UnicodeCategories;

/// How one tokenizer can be cut; see the module comment.
pub(super) enum Plan {
    Words {
        /// Whether `BertNormalizer` pads CJK characters (then they separate words).
        cjk_words: bool,
        max_word_chars: usize,
        unk_id: u32,
    },
    Lattice {
        /// Longest vocabulary piece, in characters.
        longest_piece: usize,
    },
    Whole,
}

pub(super) struct Bounded {
    plan: Plan,
    /// Added tokens' contents: a cut never splits one.
    added: Vec<String>,
    /// Content ids per text (max_length less the special tokens).
    budget: usize,
    /// A text up to this many bytes is tokenized whole.
    direct_bytes: usize,
    /// The special ids the post-processor puts before and after the content.
    before: Vec<u32>,
    after: Vec<u32>,
}

impl Bounded {
    /// `inner` must have truncation to `max_length` set; it is used for short texts.
    pub(super) fn new(inner: &Tokenizer, max_length: usize) -> Result<Self> {
        let empty = inner
            .encode("", true)
            .map_err(|e| anyhow!("the tokenizer cannot encode an empty text: {e}"))?;
        let marker = inner
            .encode("a", true)
            .map_err(|e| anyhow!("the tokenizer cannot encode \"a\": {e}"))?;
        let plain = inner
            .encode("a", false)
            .map_err(|e| anyhow!("the tokenizer cannot encode \"a\": {e}"))?;
        // Where the content goes among the special ids: find `plain` inside `marker`.
        let (m, p) = (marker.get_ids(), plain.get_ids());
        let split = (0..=m.len().saturating_sub(p.len())).find(|&i| m[i..].starts_with(p));
        let mut plan = plan_for(inner);
        let (before, after) = match split {
            Some(i) if m.len() - p.len() == empty.get_ids().len() && !p.is_empty() => {
                (m[..i].to_vec(), m[i + p.len()..].to_vec())
            }
            _ => {
                plan = Plan::Whole;
                (Vec::new(), Vec::new())
            }
        };
        if marker.get_type_ids().iter().any(|&t| t != 0) {
            plan = Plan::Whole;
        }
        let added = inner
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .filter(|c| !c.is_empty())
            .collect();
        Ok(Self {
            plan,
            added,
            budget: max_length.saturating_sub(before.len() + after.len()),
            direct_bytes: (16 * max_length).max(4096),
            before,
            after,
        })
    }

    pub(super) fn cuts_long_texts(&self) -> bool {
        !matches!(self.plan, Plan::Whole)
    }

    /// The ids of `text`, truncated to `max_length`, as `inner` gives for the whole text.
    pub(super) fn encode(&self, inner: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        if text.len() <= self.direct_bytes || matches!(self.plan, Plan::Whole) {
            return whole(inner, text, true);
        }
        let content = match self.plan {
            Plan::Words {
                cjk_words,
                max_word_chars,
                unk_id,
            } => self.words(inner, text, cjk_words, max_word_chars, unk_id)?,
            Plan::Lattice { longest_piece } => match self.lattice(inner, text, longest_piece)? {
                Some(ids) => ids,
                None => return whole(inner, text, true),
            },
            Plan::Whole => unreachable!("handled above"),
        };
        let mut ids = Vec::with_capacity(self.before.len() + content.len() + self.after.len());
        ids.extend_from_slice(&self.before);
        ids.extend_from_slice(&content[..content.len().min(self.budget)]);
        ids.extend_from_slice(&self.after);
        Ok(ids)
    }

    /// True when cutting `text` at byte `r` would split an added token's text.
    fn splits_added(&self, text: &str, r: usize) -> bool {
        self.added.iter().any(|c| {
            let lo = floor_boundary(text, r.saturating_sub(c.len()));
            let hi = ceil_boundary(text, (r + c.len()).min(text.len()));
            // Compared lower-cased (a normalized added token matches after lower-casing);
            // any occurrence near the cut refuses it.
            text[lo..hi].to_lowercase().contains(&c.to_lowercase())
        })
    }

    fn words(
        &self,
        inner: &Tokenizer,
        text: &str,
        cjk_words: bool,
        max_word_chars: usize,
        unk_id: u32,
    ) -> Result<Vec<u32>> {
        let is_cut = |r: usize| -> bool {
            if r == 0 || r >= text.len() || !text.is_char_boundary(r) {
                return false;
            }
            let before = text[..r].chars().next_back();
            let after = text[r..].chars().next();
            let separates = |c: Option<char>| {
                c.is_some_and(|c| bert_space(c) || bert_punct(c) || (cjk_words && is_cjk(c)))
            };
            (separates(before) || separates(after)) && !self.splits_added(text, r)
        };
        let chunk = self.direct_bytes / 2;
        let mut ids = Vec::new();
        let mut pos = 0;
        while ids.len() < self.budget && pos < text.len() {
            let target = floor_boundary(text, (pos + chunk).min(text.len()));
            if target == text.len() {
                ids.extend(whole(inner, &text[pos..], false)?);
                break;
            }
            if let Some(cut) = (pos + 1..=target).rev().find(|&r| is_cut(r)) {
                ids.extend(whole(inner, &text[pos..cut], false)?);
                pos = cut;
                continue;
            }
            // No separator in `chunk` bytes: one word, however long it is.
            let end = (target..text.len())
                .find(|&r| is_cut(r))
                .unwrap_or(text.len());
            let word = &text[pos..end];
            // Searched in place: lower-casing a copy would allocate the word's size.
            let holds_added = self.added.iter().any(|c| {
                word.as_bytes()
                    .windows(c.len())
                    .any(|w| w.eq_ignore_ascii_case(c.as_bytes()))
            });
            if holds_added {
                ids.extend(whole(inner, word, false)?);
            } else {
                ids.extend(long_word(inner, word, max_word_chars, unk_id)?);
            }
            pos = end;
        }
        Ok(ids)
    }

    /// `None` when no exact cut was found before the prefix reached the whole text.
    fn lattice(&self, inner: &Tokenizer, text: &str, longest: usize) -> Result<Option<Vec<u32>>> {
        let mut reach = self.direct_bytes;
        while reach < text.len() {
            let end = floor_boundary(text, reach);
            // (1) The last space after printable ASCII in the prefix's second half.
            let space_cut = (end / 2..end).rev().find(|&r| {
                text.as_bytes()[r] == b' '
                    && r > 0
                    && text.as_bytes()[r - 1].is_ascii_graphic()
                    && !self.splits_added(text, r)
            });
            if let Some(r) = space_cut {
                let ids = whole(inner, &text[..r], false)?;
                if ids.len() >= self.budget {
                    return Ok(Some(ids));
                }
            }
            // (2) A window of `longest + 1` positions inside a run.
            if let Some(ids) = self.window(inner, text, end, longest)? {
                return Ok(Some(ids));
            }
            reach = reach.saturating_mul(2);
        }
        Ok(None)
    }

    fn window(
        &self,
        inner: &Tokenizer,
        text: &str,
        start: usize,
        longest: usize,
    ) -> Result<Option<Vec<u32>>> {
        let normalizer = inner.get_normalizer();
        let mut positions = vec![start];
        let mut chars = text[start..].char_indices();
        let mut prev = text[..start].chars().next_back();
        while positions.len() <= longest {
            let Some((i, c)) = chars.next() else {
                return Ok(None);
            };
            if !lattice_char(normalizer, c) || !prev.is_some_and(|p| lattice_char(normalizer, p)) {
                return Ok(None);
            }
            prev = Some(c);
            positions.push(start + i + c.len_utf8());
        }
        // The last position must be a grapheme boundary too.
        if let Some((_, next)) = chars.next() {
            if !lattice_char(normalizer, next) {
                return Ok(None);
            }
        }
        if positions.iter().any(|&r| self.splits_added(text, r)) {
            return Ok(None);
        }
        let mut agreed: Option<Vec<u32>> = None;
        for &r in &positions {
            let mut ids = whole(inner, &text[..r], false)?;
            if ids.len() < self.budget {
                return Ok(None);
            }
            ids.truncate(self.budget);
            match &agreed {
                None => agreed = Some(ids),
                Some(a) if *a == ids => {}
                Some(_) => return Ok(None),
            }
        }
        Ok(agreed)
    }
}

fn whole(inner: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    let enc = inner.encode(text, special).map_err(|e| {
        anyhow!(
            "cannot tokenize {:?}: {e}",
            text.chars().take(40).collect::<String>()
        )
    })?;
    Ok(enc.get_ids().to_vec())
}

/// A word with no separator: `[UNK]` once its normalized form passes `max_chars`, else
/// WordPiece on its (then short) normalized form. Normalizing a block at a time is exact
/// because `BertNormalizer` works per character (mark reordering changes no count, and
/// marks are removed whenever NFD runs).
fn long_word(inner: &Tokenizer, word: &str, max_chars: usize, unk_id: u32) -> Result<Vec<u32>> {
    const BLOCK: usize = 4096;
    let mut normalized = String::new();
    let mut pos = 0;
    while pos < word.len() {
        let end = floor_boundary(word, (pos + BLOCK).min(word.len()));
        let end = if end == pos {
            ceil_boundary(word, pos + 1)
        } else {
            end
        };
        let mut block = NormalizedString::from(&word[pos..end]);
        if let Some(n) = inner.get_normalizer() {
            n.normalize(&mut block)
                .map_err(|e| anyhow!("cannot normalize a text: {e}"))?;
        }
        normalized.push_str(block.get());
        if normalized.chars().count() > max_chars {
            return Ok(vec![unk_id]);
        }
        pos = end;
    }
    if normalized.is_empty() {
        return Ok(Vec::new());
    }
    let tokens = inner
        .get_model()
        .tokenize(&normalized)
        .map_err(|e| anyhow!("cannot tokenize a word: {e}"))?;
    Ok(tokens.into_iter().map(|t| t.id).collect())
}

fn plan_for(inner: &Tokenizer) -> Plan {
    let json = |v: Option<serde_json::Value>| v.unwrap_or(serde_json::Value::Null);
    let normalizer = json(
        inner
            .get_normalizer()
            .and_then(|n| serde_json::to_value(n).ok()),
    );
    let pre = json(
        inner
            .get_pre_tokenizer()
            .and_then(|p| serde_json::to_value(p).ok()),
    );
    match inner.get_model() {
        ModelWrapper::WordPiece(wp) => {
            let bert_pre = matches!(
                inner.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::BertPreTokenizer(_))
            );
            let cjk_words = match inner.get_normalizer() {
                Some(NormalizerWrapper::BertNormalizer(n)) => Some(n.handle_chinese_chars),
                _ => None,
            };
            match (bert_pre, cjk_words, wp.token_to_id(&wp.unk_token)) {
                (true, Some(cjk_words), Some(unk_id)) => Plan::Words {
                    cjk_words,
                    max_word_chars: wp.max_input_chars_per_word,
                    unk_id,
                },
                _ => Plan::Whole,
            }
        }
        ModelWrapper::Unigram(u) => {
            if !metaspace_pre(&pre) || !lattice_normalizer(&normalizer) {
                return Plan::Whole;
            }
            // `iter`, not `get_vocab`: that builds a map of copies of every piece (250,000
            // for e5), 5% of a one-text `encode`'s time.
            let longest_piece = u
                .iter()
                .map(|(piece, _)| piece.chars().count())
                .max()
                .unwrap_or(1)
                .max(1);
            Plan::Lattice { longest_piece }
        }
        _ => Plan::Whole,
    }
}

/// Metaspace with `▁`, splitting at each space (alone or after a whitespace split).
fn metaspace_pre(pre: &serde_json::Value) -> bool {
    let metaspace = |v: &serde_json::Value| {
        v["type"] == "Metaspace" && v["replacement"] == "▁" && v["split"] == true
    };
    match pre["type"].as_str() {
        Some("Metaspace") => metaspace(pre),
        Some("Sequence") => pre["pretokenizers"].as_array().is_some_and(|all| {
            all.iter().any(metaspace)
                && all
                    .iter()
                    .all(|p| metaspace(p) || p["type"] == "WhitespaceSplit")
        }),
        _ => false,
    }
}

/// Normalizers that work per grapheme (`Precompiled`) or only collapse runs of spaces.
fn lattice_normalizer(n: &serde_json::Value) -> bool {
    match n["type"].as_str() {
        None => n.is_null(),
        Some("Precompiled") => true,
        Some("Replace") => {
            let pattern = &n["pattern"];
            let spaces_only = pattern["Regex"] == " {2,}"
                || pattern["String"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b == b' '));
            spaces_only && n["content"] == " "
        }
        Some("Sequence") => n["normalizers"]
            .as_array()
            .is_some_and(|all| all.iter().all(lattice_normalizer)),
        Some(_) => false,
    }
}

/// A character that is a grapheme on its own whichever its neighbours (no mark, joiner,
/// format or control character, prepended concatenation mark, Hangul jamo, emoji
/// modifier or regional indicator) and normalizes to exactly one non-space character.
fn lattice_char(normalizer: Option<&NormalizerWrapper>, c: char) -> bool {
    let code = c as u32;
    let alone = !(c.is_whitespace()
        || c.is_mark()
        || c.is_other()
        || matches!(code,
            0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2 | 0x0D4E
            | 0x110BD | 0x110CD | 0x111C2..=0x111C3 | 0x1193F | 0x11941 | 0x11A3A
            | 0x11A84..=0x11A89 | 0x11D46 | 0x11F02
            | 0x1100..=0x11FF | 0xA960..=0xA97F | 0xD7B0..=0xD7FF
            | 0x1F3FB..=0x1F3FF | 0x1F1E6..=0x1F1FF | 0x200C..=0x200D));
    if !alone {
        return false;
    }
    let Some(n) = normalizer else {
        return true;
    };
    let mut s = NormalizedString::from(c.to_string().as_str());
    if n.normalize(&mut s).is_err() {
        return false;
    }
    let mut out = s.get().chars();
    matches!((out.next(), out.next()), (Some(o), None) if o != ' ')
}

/// Whitespace that survives `BertNormalizer`'s clean-up and splits words: space, tab,
/// line breaks and the space separators (Zs), and the line/paragraph separators.
fn bert_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{2028}' | '\u{2029}') || c.is_separator_space()
}

/// `BertPreTokenizer`'s punctuation: ASCII punctuation and Unicode's P* categories.
fn bert_punct(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK ideographs `BertNormalizer` surrounds with spaces.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}
