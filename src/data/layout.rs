//! Which files make which split: split names from file names, the sibling
//! rule for a single file, and folders of data files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Format;

/// Split names in the order a dataset lists them.
const SPLIT_NAMES: [&str; 5] = ["train", "validation", "valid", "dev", "test"];

/// A hub snapshot nests its files (`data/`, `<config>/<split>/`) but no deeper.
const MAX_DEPTH: usize = 3;

pub(super) type Groups = Vec<(String, Vec<PathBuf>)>;

pub(super) fn is_split_name(name: &str) -> bool {
    SPLIT_NAMES.contains(&name)
}

/// Known split names first, in their usual order, then the rest by name.
pub(super) fn order_key(name: &str) -> (usize, String) {
    let rank = SPLIT_NAMES
        .iter()
        .position(|s| *s == name)
        .unwrap_or(SPLIT_NAMES.len());
    (rank, name.to_string())
}

/// `train.parquet` and the hub's shards `train-00000-of-00002[-hash].parquet`
/// are split `train`; the parquet converter's `train/0000.parquet` is too.
pub(super) fn split_of(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
        if let Some(parent) = file.parent().and_then(Path::file_name) {
            return parent.to_string_lossy().into_owned();
        }
    }
    let parts: Vec<&str> = stem.split('-').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let shard = (1..parts.len().saturating_sub(2))
        .find(|&i| digits(parts[i]) && parts[i + 1] == "of" && digits(parts[i + 2]));
    match shard {
        Some(i) => parts[..i].join("-"),
        None => stem,
    }
}

/// HF `datasets`' split keywords (`SPLIT_KEYWORDS` in `data_files.py`), by the split
/// they name.
const SPLIT_KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The split HF's file-name patterns (`**[-._ 0-9/]KEYWORD[-._ 0-9]*`) give a file:
/// a keyword standing between separators (`-`, `.`, `_`, space, digits) in its name,
/// e.g. `reviews_test.jsonl` is `test`, `my-training-set.csv` is `train`.
fn split_keyword(file: &Path) -> Option<&'static str> {
    let name = file.file_name()?.to_string_lossy().to_lowercase();
    let sep = |c: char| matches!(c, '-' | '.' | '_' | ' ') || c.is_ascii_digit();
    // The keyword must be followed by a separator: the extension's dot at the latest.
    let words: Vec<&str> = name.split(sep).collect();
    let last = words.len().saturating_sub(1);
    SPLIT_KEYWORDS.iter().find_map(|(split, keywords)| {
        words[..last]
            .iter()
            .any(|w| keywords.contains(w))
            .then_some(*split)
    })
}

/// A lone file is split `train`, as for HF `load_dataset(format, data_files=file)`,
/// unless its name names a split: named exactly as one, its siblings of the same format
/// named as splits come along as the other splits; with a split keyword in its name
/// (`reviews_test.jsonl`), it is that split.
pub(super) fn for_file(file: &Path, format: Format) -> Result<Groups> {
    let split = split_of(file);
    if !is_split_name(&split) {
        let split = split_keyword(file).unwrap_or("train");
        return Ok(vec![(split.to_string(), vec![file.to_path_buf()])]);
    }
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = dir.join(entry?.file_name());
        if Format::of_file(&path) == Some(format)
            && is_split_name(&split_of(&path))
            && path.is_file()
        {
            files.push(path);
        }
    }
    Ok(group(files))
}

/// The data files under `dir` in one format: the one whose files name the most of the
/// usual splits (train, validation, test, ...), the first of parquet, JSONL, CSV, TSV on
/// a tie (the hub serves parquet; other formats beside it are usually copies). So a
/// stray `preds.parquet` beside `train.jsonl` and `test.jsonl` does not hide them. Files
/// of the other formats are not read, and a one-line note names them: they may not be
/// copies.
pub(super) fn scan_dir(dir: &Path) -> Result<Option<(Format, Groups)>> {
    let mut found: BTreeMap<Format, Vec<PathBuf>> = BTreeMap::new();
    walk(dir, 0, &mut found)?;
    let Some(read) = chosen_format(&found) else {
        return Ok(None);
    };
    if let Some(note) = unread_formats_note(dir, read, &found) {
        eprintln!("{note}");
    }
    let files = found.remove(&read).unwrap_or_default();
    Ok(Some((read, group(files))))
}

/// The format `scan_dir` reads: most usual split names, then the format order.
fn chosen_format(found: &BTreeMap<Format, Vec<PathBuf>>) -> Option<Format> {
    let usual_splits = |files: &Vec<PathBuf>| {
        group(files.clone())
            .iter()
            .filter(|(name, _)| is_split_name(name))
            .count()
    };
    // max_by_key keeps the last of equal keys: compare in reverse format order.
    found
        .iter()
        .rev()
        .max_by_key(|(_, files)| usual_splits(files))
        .map(|(format, _)| *format)
}

/// What `scan_dir` leaves unread when `found` holds formats other than `read`: each with
/// its splits, so that a split only those files hold is not lost unseen.
fn unread_formats_note(
    dir: &Path,
    read: Format,
    found: &BTreeMap<Format, Vec<PathBuf>>,
) -> Option<String> {
    let unread: Vec<String> = found
        .iter()
        .filter(|(format, _)| **format != read)
        .map(|(format, files)| {
            let splits: Vec<String> = group(files.clone())
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            format!("{format} ({})", splits.join(", "))
        })
        .collect();
    (!unread.is_empty()).then(|| {
        format!(
            "note: {}: reading its {read} files, not its {} ones: pass --data with one of those files to read that format",
            dir.display(),
            unread.join(", ")
        )
    })
}

fn walk(dir: &Path, depth: usize, found: &mut BTreeMap<Format, Vec<PathBuf>>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let name = entry?.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // Through fs::metadata, which follows the symlinks of a hub cache snapshot.
        let path = dir.join(name);
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() && depth < MAX_DEPTH {
            walk(&path, depth + 1, found)?;
        } else if let Some(format) = meta.is_file().then(|| Format::of_file(&path)).flatten() {
            found.entry(format).or_default().push(path);
        }
    }
    Ok(())
}

fn group(files: Vec<PathBuf>) -> Groups {
    let mut groups: BTreeMap<(usize, String), Vec<PathBuf>> = BTreeMap::new();
    for file in files {
        let split = split_of(&file);
        groups.entry(order_key(&split)).or_default().push(file);
    }
    groups
        .into_iter()
        .map(|((_, name), mut files)| {
            files.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then(a.cmp(b)));
            (name, files)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_left_unread_are_named_with_their_splits() {
        let dir = Path::new("d");
        let mut found = BTreeMap::from([(Format::Parquet, vec![PathBuf::from("d/train.parquet")])]);
        assert_eq!(unread_formats_note(dir, Format::Parquet, &found), None);
        found.insert(
            Format::Jsonl,
            vec![
                PathBuf::from("d/test.jsonl"),
                PathBuf::from("d/train.jsonl"),
            ],
        );
        found.insert(Format::Tsv, vec![PathBuf::from("d/train.tsv")]);
        assert_eq!(
            unread_formats_note(dir, Format::Jsonl, &found).as_deref(),
            Some("note: d: reading its jsonl files, not its parquet (train), tsv (train) ones: pass --data with one of those files to read that format")
        );
    }

    /// The format naming the most usual splits is read; copies of every split in
    /// several formats (the hub's parquet beside its JSONL) read parquet, as before.
    #[test]
    fn the_format_with_the_most_splits_is_read() {
        let files = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        let copies = BTreeMap::from([
            (Format::Jsonl, files(&["d/train.jsonl", "d/test.jsonl"])),
            (
                Format::Parquet,
                files(&["d/train.parquet", "d/test.parquet"]),
            ),
            (Format::Tsv, files(&["d/train.tsv", "d/test.tsv"])),
        ]);
        assert_eq!(chosen_format(&copies), Some(Format::Parquet));
        let stray = BTreeMap::from([
            (Format::Parquet, files(&["d/preds.parquet"])),
            (
                Format::Jsonl,
                files(&["d/train.jsonl", "d/validation.jsonl", "d/test.jsonl"]),
            ),
        ]);
        assert_eq!(chosen_format(&stray), Some(Format::Jsonl));
        let one_split_output = BTreeMap::from([
            (Format::Parquet, files(&["d/train.parquet"])),
            (
                Format::Jsonl,
                files(&["d/train.jsonl", "d/validation.jsonl"]),
            ),
        ]);
        assert_eq!(chosen_format(&one_split_output), Some(Format::Jsonl));
        assert_eq!(chosen_format(&BTreeMap::new()), None);
    }

    #[test]
    fn split_names_from_file_names() {
        assert_eq!(split_of(Path::new("d/train.parquet")), "train");
        assert_eq!(
            split_of(Path::new("d/data/train-00000-of-00001.parquet")),
            "train"
        );
        assert_eq!(
            split_of(Path::new(
                "validation-00001-of-00002-405befbaa3bcf1a2.parquet"
            )),
            "validation"
        );
        assert_eq!(split_of(Path::new("d/default/test/0000.parquet")), "test");
        assert_eq!(split_of(Path::new("my-reviews.csv")), "my-reviews");
        assert_eq!(split_of(Path::new("reviews-2024-of-5.csv")), "reviews");
    }

    #[test]
    fn lone_files_are_train_unless_named_for_a_split() {
        let split = |f: &str| split_keyword(Path::new(f));
        assert_eq!(split("d/reviews.jsonl"), None);
        assert_eq!(split("reviews_test.jsonl"), Some("test"));
        assert_eq!(split("my-training-set.csv"), Some("train"));
        assert_eq!(split("imdb.dev.tsv"), Some("validation"));
        assert_eq!(split("val2024.parquet"), Some("validation"));
        assert_eq!(split("Eval.jsonl"), Some("test"));
        // Keywords only count between separators, not inside words or as the extension.
        assert_eq!(split("trainer.jsonl"), None);
        assert_eq!(split("contest.csv"), None);
        assert_eq!(split("x.test"), None);
    }

    #[test]
    fn groups_order_splits_and_shards() {
        let files = [
            "test.tsv",
            "x/train-00001-of-00002.tsv",
            "extra.tsv",
            "train-00000-of-00002.tsv",
            "validation.tsv",
        ]
        .map(PathBuf::from)
        .to_vec();
        let groups = group(files);
        let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["train", "validation", "test", "extra"]);
        assert_eq!(
            groups[0].1,
            [
                PathBuf::from("train-00000-of-00002.tsv"),
                PathBuf::from("x/train-00001-of-00002.tsv")
            ]
        );
    }
}
