//! Packed batches: the tokens of several texts back to back, with per-text offsets, so
//! the dense layers never compute on padding.

use crate::tokenize::TokenizedText;

#[derive(Clone, Debug, Default)]
pub struct PackedBatch {
    /// (T,) token ids of all texts, back to back.
    pub ids: Vec<u32>,
    /// (T,) segment ids.
    pub type_ids: Vec<u32>,
    /// (T,) position of each token within its own text: 0..len.
    pub positions: Vec<u32>,
    /// (num_texts + 1,) text i owns tokens offsets[i]..offsets[i+1].
    pub offsets: Vec<usize>,
}

impl PackedBatch {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a TokenizedText>) -> Self {
        let mut b = PackedBatch {
            offsets: vec![0],
            ..Default::default()
        };
        for t in texts {
            b.ids.extend_from_slice(&t.ids);
            b.type_ids.extend_from_slice(&t.type_ids);
            b.positions.extend(0..t.ids.len() as u32);
            b.offsets.push(b.ids.len());
        }
        b
    }

    pub fn num_texts(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Row of each text's first token ([CLS]).
    pub fn cls_rows(&self) -> &[usize] {
        &self.offsets[..self.num_texts()]
    }

    pub fn max_len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }
}

/// Splits texts into packed batches of at most `max_tokens` tokens and `max_texts` texts,
/// longest first so that texts of similar length share a batch (attention cost is
/// quadratic per text, and the CUDA attention pads to the longest text of a batch).
/// Returns, per batch, the indices of its texts in the input order.
pub fn plan_batches(lengths: &[usize], max_tokens: usize, max_texts: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut tokens = 0;
    for i in order {
        let len = lengths[i];
        if !current.is_empty() && (tokens + len > max_tokens || current.len() == max_texts) {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        current.push(i);
        tokens += len;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_respects_budget_and_covers_every_text_once() {
        let lengths = [5, 300, 12, 7, 7, 350, 1, 64];
        let batches = plan_batches(&lengths, 400, 3);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            assert!(b.len() <= 3);
            let tokens: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(
                tokens <= 400 || b.len() == 1,
                "batch {b:?} has {tokens} tokens"
            );
        }
        assert_eq!(
            batches[0],
            vec![5],
            "longest first, alone when two do not fit"
        );
    }

    #[test]
    fn packed_offsets_and_positions() {
        let a = TokenizedText {
            ids: vec![101, 7, 102],
            type_ids: vec![0; 3],
        };
        let b = TokenizedText {
            ids: vec![101, 102],
            type_ids: vec![0; 2],
        };
        let p = PackedBatch::new([&a, &b]);
        assert_eq!(p.offsets, vec![0, 3, 5]);
        assert_eq!(p.positions, vec![0, 1, 2, 0, 1]);
        assert_eq!(p.cls_rows(), &[0, 3]);
        assert_eq!(p.max_len(), 3);
    }
}
