//! Labelled text datasets: HF `save_to_disk` folders (Arrow IPC streams),
//! parquet, JSONL, CSV and TSV, each split read whole into memory (or, for jobs over
//! splits too large for that, a bounded chunk at a time: [`chunked`]).
//!
//! Labels are class ids or class names. Label names come from the data's ClassLabel
//! feature, else `--labels`, else the ids themselves or the sorted names the rows give;
//! data a head scores takes the head's names, which its names map through. Every row is
//! checked at load time (UTF-8 text, no nulls, labels all ids or all names, in range or
//! known) so later stages never meet a bad row.

mod arrow_dir;
pub mod chunked;
mod columns;
mod delimited;
pub(crate) mod guard;
mod jsonl;
mod labels;
mod layout;
mod parquet;
mod raw;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};

pub use labels::{are_bare_ids, check_label_names, NumericLabels};
use raw::{Loaded, RawSplit};

const ACCEPTED: &str = "a datasets save_to_disk folder (dataset_dict.json or state.json), \
    a .parquet, .jsonl, .csv or .tsv file, or a folder of such files";

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub text_column: String,
    pub label_column: String,
    /// Label names in id order, from `--labels a,b`; used when the data has no ClassLabel.
    pub labels: Option<Vec<String>>,
    /// The splits the command uses; only these are read, so that a split it does not use
    /// (another schema, a bad row) cannot fail it. `None` reads every split.
    pub splits: Option<Vec<String>>,
    /// The label names (its ids where it records none) of the head the data is scored
    /// with: names in the data map to their ids here, and data that names no labels has
    /// ids 0..its class count, where the splits read may not hold the largest id.
    pub head_labels: Option<Vec<String>>,
    /// How labels written as numbers are read: class ids, or class names.
    pub numeric_labels: NumericLabels,
}

impl LoadOptions {
    fn reads(&self, split: &str) -> bool {
        self.splits
            .as_ref()
            .is_none_or(|wanted| wanted.iter().any(|w| w == split))
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            text_column: "text".to_string(),
            label_column: "label".to_string(),
            labels: None,
            splits: None,
            head_labels: None,
            numeric_labels: NumericLabels::Ids,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    // Declared in the order a folder holding several formats is read by.
    Parquet,
    Jsonl,
    Csv,
    Tsv,
    SaveToDisk,
}

impl Format {
    fn of_file(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Format::Parquet),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::SaveToDisk => "save_to_disk",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    /// Train, validation, test first, then any others by name.
    pub splits: Vec<Split>,
    /// The names of the splits left unread ([`LoadOptions::splits`]), for messages.
    pub unread: Vec<String>,
    pub label_names: Vec<String>,
    pub source: PathBuf,
    pub format: Format,
}

#[derive(Clone, Debug)]
pub struct Split {
    pub name: String,
    pub texts: Vec<String>,
    pub labels: Vec<usize>,
    /// sha256 (hex) over the texts and labels in order: the feature cache's data key.
    pub content_hash: String,
}

impl Dataset {
    /// The named split; an error when there is none, or when it has no rows.
    pub fn split(&self, name: &str) -> Result<&Split> {
        self.split_named_by(name, "--split")
    }

    /// `split`, for a name that came from `flag`, which the errors tell the user to change.
    pub fn split_named_by(&self, name: &str, flag: &str) -> Result<&Split> {
        let mut names: Vec<&str> = self.splits.iter().map(|s| s.name.as_str()).collect();
        names.extend(self.unread.iter().map(String::as_str));
        names.sort_by_key(|n| layout::order_key(n));
        let Some(split) = self.splits.iter().find(|s| s.name == name) else {
            bail!(
                "unknown split \"{name}\" in {}: it has {}; pick one with {flag}",
                self.source.display(),
                names.join(", ")
            );
        };
        if split.texts.is_empty() {
            let others: Vec<&str> = names.into_iter().filter(|n| *n != name).collect();
            bail!(
                "split \"{name}\" in {} has no rows; add rows, or pick another with {flag} ({})",
                self.source.display(),
                if others.is_empty() {
                    "there is none".to_string()
                } else {
                    others.join(", ")
                }
            );
        }
        Ok(split)
    }

    pub fn num_labels(&self) -> usize {
        self.label_names.len()
    }
}

/// `--data` naming a file: the split that file is, among the splits it brings.
#[derive(Clone, Debug)]
pub struct FileSplits {
    /// `test` for `test.jsonl` or the hub's `test-00000-of-00001.parquet`, `test` too
    /// for a lone `reviews_test.jsonl`, `train` for a lone `reviews.jsonl`.
    pub split: String,
    groups: layout::Groups,
}

impl FileSplits {
    /// The files split `name` is read from (the file's split-named siblings for the
    /// other splits); none when the file brings no such split.
    fn files(&self, name: &str) -> &[PathBuf] {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, files)| files.as_slice())
    }
}

/// A one-line note when a command reads split `split` of `--data source` from files
/// other than the one named (`test --data train.jsonl` scores the sibling test.jsonl):
/// the documented sibling rule, but the file read is not the one on the command line.
/// `None` when the file is that split, or brings no such split (`load` says so).
pub fn sibling_note(source: &Path, split: &str, verb: &str) -> Result<Option<String>> {
    Ok(sibling_files(source, split)?.map(|(named, read)| {
        format!(
            "note: --data {} is split {named}: {verb} split {split} from its sibling {read} (pass --split {named} to read the file itself)",
            source.display(),
        )
    }))
}

/// What split `split` of `--data source` is read from, for headings: the sibling files
/// when `source` is a file of another split, else `source` itself.
pub fn split_source(source: &Path, split: &str) -> Result<String> {
    Ok(
        sibling_files(source, split)?
            .map_or_else(|| source.display().to_string(), |(_, read)| read),
    )
}

/// The split `source` is a file of and the sibling files (joined with ", ") split
/// `split` is read from instead; `None` as for [`sibling_note`].
fn sibling_files(source: &Path, split: &str) -> Result<Option<(String, String)>> {
    let Some(file) = file_splits(source)?.filter(|f| f.split != split) else {
        return Ok(None);
    };
    let read: Vec<String> = file
        .files(split)
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    Ok((!read.is_empty()).then(|| (file.split, read.join(", "))))
}

/// The splits `source` brings when it is a data file (as `load` groups them); `None`
/// for a folder, a missing path or an unknown format, which `load` reports.
pub fn file_splits(source: &Path) -> Result<Option<FileSplits>> {
    let Some(format) = Format::of_file(source).filter(|_| source.is_file()) else {
        return Ok(None);
    };
    let groups = layout::for_file(source, format)?;
    // Every file of a group is in the file's folder, so the name identifies it.
    let split = groups
        .iter()
        .find(|(_, files)| files.iter().any(|f| f.file_name() == source.file_name()))
        .map(|(name, _)| name.clone());
    Ok(split.map(|split| FileSplits { split, groups }))
}

pub fn load(source: &Path, opts: &LoadOptions) -> Result<Dataset> {
    if !source.exists() {
        bail!(
            "{}: no such file or folder; --data takes {ACCEPTED}",
            source.display()
        );
    }
    let (format, loaded) = if source.is_dir() {
        if arrow_dir::is_save_to_disk(source) {
            (Format::SaveToDisk, arrow_dir::load(source, opts)?)
        } else {
            let Some((format, groups)) = layout::scan_dir(source)? else {
                bail!(
                    "{}: no dataset found in this folder; --data takes {ACCEPTED}",
                    source.display()
                );
            };
            (format, read_groups(format, groups, opts)?)
        }
    } else {
        let format = Format::of_file(source).ok_or_else(|| {
            anyhow!(
                "{}: unknown data format; --data takes {ACCEPTED}",
                source.display()
            )
        })?;
        (
            format,
            read_groups(format, layout::for_file(source, format)?, opts)?,
        )
    };
    finish(source, format, loaded, opts)
}

fn read_groups(format: Format, groups: layout::Groups, opts: &LoadOptions) -> Result<Loaded> {
    let mut loaded = Loaded {
        splits: Vec::new(),
        unread: Vec::new(),
        class_names: None,
    };
    for (name, files) in groups {
        if !opts.reads(&name) {
            loaded.unread.push(name);
            continue;
        }
        let mut split = RawSplit::new(&name);
        for file in files {
            let names = match format {
                Format::Parquet => parquet::read(&file, opts, &mut split)?,
                Format::Jsonl => jsonl::read(&file, opts, &mut split)?,
                Format::Csv => delimited::read(&file, delimited::Dialect::Csv, opts, &mut split)?,
                Format::Tsv => delimited::read(&file, delimited::Dialect::Tsv, opts, &mut split)?,
                Format::SaveToDisk => unreachable!("save_to_disk folders are read by arrow_dir"),
            };
            loaded.class_names = loaded.class_names.or(names);
        }
        loaded.splits.push(split);
    }
    Ok(loaded)
}

fn finish(
    source: &Path,
    format: Format,
    mut loaded: Loaded,
    opts: &LoadOptions,
) -> Result<Dataset> {
    let shown = source.display().to_string();
    let label_names = labels::resolve(&shown, loaded.class_names, opts, &mut loaded.splits)?;
    let mut splits: Vec<Split> = loaded
        .splits
        .into_iter()
        .map(|raw| {
            // Checked non-negative by the readers.
            let labels: Vec<usize> = raw.labels.iter().map(|&id| id as usize).collect();
            let content_hash = content_hash(&raw.texts, &labels);
            Split {
                name: raw.name,
                texts: raw.texts,
                labels,
                content_hash,
            }
        })
        .collect();
    splits.sort_by_key(|s| layout::order_key(&s.name));
    Ok(Dataset {
        splits,
        unread: loaded.unread,
        label_names,
        source: source.to_path_buf(),
        format,
    })
}

fn content_hash(texts: &[String], labels: &[usize]) -> String {
    let mut hasher = Sha256::new();
    for (text, &label) in texts.iter().zip(labels) {
        // Length-prefixed, so no two different row lists hash the same bytes.
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
        hasher.update((label as u64).to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    fn tsv(dir: &TestDir, name: &str, rows: &[(usize, &str)]) -> PathBuf {
        let mut body = String::from("label\ttext\n");
        for (label, text) in rows {
            body.push_str(&format!("{label}\t{text}\n"));
        }
        dir.write(name, body.as_bytes())
    }

    #[test]
    fn a_split_file_brings_its_sibling_splits() {
        let dir = TestDir::new("mod");
        let train = tsv(&dir, "train.tsv", &[(0, "a"), (1, "b")]);
        tsv(&dir, "test.tsv", &[(1, "c")]);
        tsv(&dir, "notes.tsv", &[(0, "n")]);
        let data = load(&train, &LoadOptions::default()).unwrap();
        let names: Vec<&str> = data.splits.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train", "test"]);
        assert_eq!(data.label_names, ["0", "1"]);
        assert_eq!(data.format, Format::Tsv);
        let other = load(&dir.path().join("notes.tsv"), &LoadOptions::default()).unwrap();
        assert_eq!(other.splits.len(), 1);
        // A file not named for a split is `train`, as HF's data_files makes it.
        assert_eq!(other.split("train").unwrap().texts, ["n"]);
    }

    #[test]
    fn unknown_and_empty_splits_say_what_there_is() {
        let dir = TestDir::new("mod");
        let train = tsv(&dir, "train.tsv", &[(0, "a")]);
        tsv(&dir, "test.tsv", &[]);
        let data = load(&train, &LoadOptions::default()).unwrap();
        let err = data.split("dev").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown split \"dev\" in ") && err.contains("it has train, test"),
            "{err}"
        );
        let err = data
            .split_named_by("dev", "--validation-split")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("pick one with --validation-split"), "{err}");
        let err = data.split("test").unwrap_err().to_string();
        assert!(
            err.contains("split \"test\" in")
                && err.contains("has no rows")
                && err.contains("--split (train)"),
            "{err}"
        );
    }

    #[test]
    fn splits_not_asked_for_are_left_unread() {
        let dir = TestDir::new("mod");
        let train = tsv(&dir, "train.tsv", &[(0, "a"), (1, "b")]);
        dir.write("validation.tsv", b"stars\ttext\n5\tc\n");
        tsv(&dir, "test.tsv", &[(1, "d")]);
        let all = load(&train, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(all.contains("validation.tsv: no column \"label\""), "{all}");
        let opts = LoadOptions {
            splits: Some(vec!["test".into(), "dev".into()]),
            ..LoadOptions::default()
        };
        let data = load(&train, &opts).unwrap();
        let names: Vec<&str> = data.splits.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["test"]);
        assert_eq!(data.unread, ["train", "validation"]);
        let err = data.split("dev").unwrap_err().to_string();
        assert!(err.contains("it has train, validation, test"), "{err}");
    }

    #[test]
    fn content_hash_follows_texts_and_labels() {
        let a = content_hash(&["ab".into(), "c".into()], &[0, 1]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, content_hash(&["a".into(), "bc".into()], &[0, 1]));
        assert_ne!(a, content_hash(&["ab".into(), "c".into()], &[1, 1]));
    }
}
