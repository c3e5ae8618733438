//! Splits as the readers produce them: labels as written, before the label
//! names (and so the valid range, and the ids of names) are known.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Error};

use super::labels::Label;

pub(super) struct RawSplit {
    pub name: String,
    pub texts: Vec<String>,
    /// Each row's class id; for a row labelled by name, the index of its name in `names`
    /// until `labels::resolve` maps the names to ids.
    pub labels: Vec<i64>,
    /// The distinct names rows are labelled by, in the order first met.
    pub names: Vec<String>,
    /// The rows labelled by name, and the first row labelled each way (from 0): labels
    /// written both ways are refused at the first of the rarer way.
    pub named: usize,
    pub first_id: Option<usize>,
    pub first_name: Option<usize>,
    name_index: HashMap<String, i64>,
    /// Each contributing file with the split row where its rows start, so a
    /// check made after shards are concatenated still names the file and row.
    files: Vec<(PathBuf, usize)>,
}

/// What one source yields: its splits, and the label names of its ClassLabel
/// feature when the data carries one.
pub(super) struct Loaded {
    pub splits: Vec<RawSplit>,
    /// The names of the splits the source has but was not asked for.
    pub unread: Vec<String>,
    pub class_names: Option<Vec<String>>,
}

impl RawSplit {
    pub fn new(name: &str) -> Self {
        RawSplit {
            name: name.to_string(),
            texts: Vec::new(),
            labels: Vec::new(),
            names: Vec::new(),
            named: 0,
            first_id: None,
            first_name: None,
            name_index: HashMap::new(),
            files: Vec::new(),
        }
    }

    pub fn start_file(&mut self, file: &Path) {
        self.files.push((file.to_path_buf(), self.texts.len()));
    }

    pub fn push(&mut self, text: String, label: Label) {
        let row = self.labels.len();
        let label = match label {
            Label::Id(id) => {
                self.first_id.get_or_insert(row);
                id
            }
            Label::Name(name) => {
                self.named += 1;
                self.first_name.get_or_insert(row);
                self.name_number(name)
            }
        };
        self.texts.push(text);
        self.labels.push(label);
    }

    /// The index of `name` in `names`, added if new.
    fn name_number(&mut self, name: String) -> i64 {
        let next = self.names.len() as i64;
        *self.name_index.entry(name).or_insert_with_key(|name| {
            self.names.push(name.clone());
            next
        })
    }

    /// The file holding split row `index` (0-based) and its 1-based row there.
    pub fn locate(&self, index: usize) -> (&Path, usize) {
        let at = self.files.partition_point(|(_, start)| *start <= index);
        let (file, start) = &self.files[at.saturating_sub(1)];
        (file, index - start + 1)
    }
}

/// Rows count from 1, after any header, in the file named.
pub(super) fn row_error(file: &Path, row: usize, what: impl Display) -> Error {
    anyhow!("{} row {row}: {what}", file.display())
}

/// A value as an error quotes it: at most 80 characters, so that a text met where a
/// label belongs (columns swapped) does not fill the screen.
pub(super) fn cut(value: &str) -> String {
    const MAX_CHARS: usize = 80;
    match value.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

pub(super) fn missing_column(file: &Path, column: &str, flag: &str, columns: &[String]) -> Error {
    anyhow!(
        "{}: no column \"{column}\" (it has {}); name the right one with {flag}",
        file.display(),
        quoted_list(columns)
    )
}

pub(super) fn quoted_list(names: &[String]) -> String {
    if names.is_empty() {
        return "no columns".to_string();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_to_80_characters() {
        assert_eq!(cut("short"), "short");
        let long = "好".repeat(100);
        assert_eq!(cut(&long), format!("{}…", "好".repeat(80)));
    }

    #[test]
    fn locate_maps_split_rows_back_to_shards() {
        let mut split = RawSplit::new("train");
        split.start_file(Path::new("a.arrow"));
        split.push("x".into(), Label::Id(0));
        split.push("y".into(), Label::Id(1));
        split.start_file(Path::new("b.arrow"));
        split.push("z".into(), Label::Name("pos".into()));
        assert_eq!(split.locate(0), (Path::new("a.arrow"), 1));
        assert_eq!(split.locate(1), (Path::new("a.arrow"), 2));
        assert_eq!(split.locate(2), (Path::new("b.arrow"), 1));
    }
}
