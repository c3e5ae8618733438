//! The content hash of each chunk of rows a bulk job wrote, kept in its manifest (and
//! through `merge`), so that `train --features-from` can check a file's texts against
//! the split it loaded without reading them from the file.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::features::hex;

/// Rows `[start, end)` of the split, whose texts hash to `texts_sha256`
/// ([`crate::features::hash_texts`]) and, in an encode output, whose features hash to
/// `features_sha256` ([`crate::features::hash_features`]: little-endian f32 bytes in row
/// order, whatever the file's format). Outputs of bertcls before feature hashes were
/// recorded have none, and cannot be checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextRange {
    pub start: u64,
    pub end: u64,
    pub texts_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_sha256: Option<String>,
}

/// The features of rows fed in row order (from the first range's start), hashed range
/// by range against the ranges' `features_sha256` (ranges without one are not checked).
/// Rows past the last range, or missing, are for the caller's row checks to refuse.
pub struct FeatureCheck<'a> {
    ranges: &'a [TextRange],
    at: usize,
    row: u64,
    hasher: Sha256,
    /// One row's bytes for [`Self::floats`], reused from row to row.
    row_bytes: Vec<u8>,
}

impl<'a> FeatureCheck<'a> {
    pub fn new(ranges: &'a [TextRange]) -> Self {
        FeatureCheck {
            ranges,
            at: 0,
            row: ranges.first().map_or(0, |r| r.start),
            hasher: Sha256::new(),
            row_bytes: Vec::new(),
        }
    }

    /// The next row's features, as little-endian f32 bytes; at the end of a range whose
    /// hash differs, that range.
    pub fn row(&mut self, le_bytes: &[u8]) -> Result<(), &'a TextRange> {
        let Some(range) = self.ranges.get(self.at) else {
            return Ok(());
        };
        if range.features_sha256.is_some() {
            self.hasher.update(le_bytes);
        }
        self.row += 1;
        if self.row >= range.end {
            let sum = hex(&self.hasher.finalize_reset());
            self.at += 1;
            if range
                .features_sha256
                .as_ref()
                .is_some_and(|want| *want != sum)
            {
                return Err(range);
            }
        }
        Ok(())
    }

    /// [`Self::row`] for a row given as floats.
    pub fn floats(&mut self, x: &[f32]) -> Result<(), &'a TextRange> {
        let mut bytes = std::mem::take(&mut self.row_bytes);
        bytes.clear();
        bytes.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        let checked = self.row(&bytes);
        self.row_bytes = bytes;
        checked
    }
}

/// The one-line reason a range's features fail their hash.
pub fn features_changed(range: &TextRange) -> String {
    format!(
        "the features of rows {}..{} do not hash to the features_sha256 its manifest gives (they changed after they were written)",
        range.start, range.end
    )
}

/// The ranges of a manifest, `None` when it has none (outputs of bertcls before they
/// were recorded); an error names `what` when they are not a list of ranges.
pub fn ranges_of(manifest: &Value, what: &str) -> Result<Option<Vec<TextRange>>> {
    match manifest.get("ranges") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(ranges) => Ok(Some(ranges)),
            Err(e) => bail!("{what}: its \"ranges\" are not row ranges with text hashes ({e}); is it a bertcls bulk manifest?"),
        },
    }
}

/// Whether `ranges` (in order) cover rows `[start, end)` exactly, each non-empty: the
/// first gap or overlap, described.
pub fn check_tiling(ranges: &[TextRange], start: u64, end: u64) -> Result<(), String> {
    let mut next = start;
    for r in ranges {
        if r.start != next || r.end <= r.start {
            return Err(format!(
                "its text ranges do not tile rows {start}..{end} (range {}..{} after row {next})",
                r.start, r.end
            ));
        }
        next = r.end;
    }
    if next != end {
        return Err(format!(
            "its text ranges end at row {next}, not at its last row {end}"
        ));
    }
    Ok(())
}

/// How row spans sorted by start fail to cover rows `0..rows` exactly once: what `merge`
/// checks of its parts and `train --features-from` of its files.
#[derive(Debug, PartialEq, Eq)]
pub enum Uncovered {
    /// Span `i` starts before span `i - 1` ends.
    Overlap(usize),
    /// Rows `[from, to)` are in no span.
    Missing(u64, u64),
}

/// The first way `spans` (sorted by start) miss covering `0..rows` exactly once.
pub fn first_uncovered(spans: &[(u64, u64)], rows: u64) -> Option<Uncovered> {
    let mut next = 0;
    for (i, &(start, end)) in spans.iter().enumerate() {
        if start < next {
            return Some(Uncovered::Overlap(i));
        }
        if start > next {
            return Some(Uncovered::Missing(next, start));
        }
        next = end;
    }
    (next != rows).then_some(Uncovered::Missing(next, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_names_the_first_overlap_or_missing_rows() {
        assert_eq!(first_uncovered(&[(0, 4), (4, 9)], 9), None);
        assert_eq!(
            first_uncovered(&[(0, 4), (3, 9)], 9),
            Some(Uncovered::Overlap(1))
        );
        assert_eq!(
            first_uncovered(&[(0, 4), (5, 9)], 9),
            Some(Uncovered::Missing(4, 5))
        );
        assert_eq!(
            first_uncovered(&[(0, 4)], 9),
            Some(Uncovered::Missing(4, 9))
        );
        assert_eq!(first_uncovered(&[], 3), Some(Uncovered::Missing(0, 3)));
    }

    fn r(start: u64, end: u64) -> TextRange {
        TextRange {
            start,
            end,
            texts_sha256: format!("{start}"),
            features_sha256: None,
        }
    }

    #[test]
    fn tiling_needs_every_row_once_in_order() {
        assert_eq!(check_tiling(&[r(4, 7), r(7, 9)], 4, 9), Ok(()));
        assert!(check_tiling(&[r(4, 7), r(8, 9)], 4, 9)
            .unwrap_err()
            .contains("range 8..9 after row 7"));
        assert!(check_tiling(&[r(4, 7), r(6, 9)], 4, 9).is_err());
        assert!(check_tiling(&[r(4, 7)], 4, 9)
            .unwrap_err()
            .contains("end at row 7"));
        assert!(check_tiling(&[r(4, 4), r(4, 9)], 4, 9).is_err());
        assert!(check_tiling(&[], 4, 9).is_err());
    }

    #[test]
    fn feature_check_hashes_each_range_in_row_order() {
        use crate::features::hash_features;
        let x: Vec<f32> = (0..10).map(|i| i as f32 * 0.5).collect();
        // Rows 4..9 of width 2, in ranges 4..6 and 6..9; the second has no hash.
        let mut ranges = vec![r(4, 6), r(6, 9)];
        ranges[0].features_sha256 = Some(hash_features(&x[..4]));
        let mut check = FeatureCheck::new(&ranges);
        for row in x.chunks(2).take(5) {
            assert_eq!(check.floats(row), Ok(()));
        }
        let mut bad = x.clone();
        bad[3] = 0.25;
        let mut check = FeatureCheck::new(&ranges);
        assert_eq!(check.floats(&bad[..2]), Ok(()));
        assert_eq!(check.floats(&bad[2..4]), Err(&ranges[0]));
        // A range without a hash (an older manifest) takes anything.
        for row in bad.chunks(2).skip(2).take(3) {
            assert_eq!(check.floats(row), Ok(()));
        }
        // Old manifests read back without the field, and are written back without it.
        let old = serde_json::json!({"ranges": [{"start": 0, "end": 3, "texts_sha256": "0"}]});
        let read = ranges_of(&old, "m").unwrap().unwrap();
        assert_eq!(read, vec![r(0, 3)]);
        assert_eq!(serde_json::json!({"ranges": read}), old);
    }

    #[test]
    fn ranges_read_back_from_a_manifest() {
        let m = serde_json::json!({"ranges": [r(0, 3), r(3, 5)]});
        assert_eq!(ranges_of(&m, "m").unwrap(), Some(vec![r(0, 3), r(3, 5)]));
        assert_eq!(ranges_of(&serde_json::json!({}), "m").unwrap(), None);
        let bad = serde_json::json!({"ranges": [{"start": 0}]});
        assert!(ranges_of(&bad, "m")
            .unwrap_err()
            .to_string()
            .starts_with("m: "));
    }
}
