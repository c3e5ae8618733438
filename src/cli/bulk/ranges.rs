//! The content hash of each chunk of rows a bulk job wrote, kept in its manifest (and
//! through `merge`), so that `train --features-from` can check a file's texts against
//! the split it loaded without reading them from the file.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Rows `[start, end)` of the split, whose texts hash to `texts_sha256`
/// ([`crate::features::hash_texts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextRange {
    pub start: u64,
    pub end: u64,
    pub texts_sha256: String,
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
