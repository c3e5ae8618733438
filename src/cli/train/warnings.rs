//! Warnings about training data that trains without failing but misleads: classes
//! missing from train, blank texts, texts labelled two ways, validation texts also in
//! train. Each names the split and rows, and training goes on.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use crate::cli::progress::count;
use crate::data::{Dataset, NumericLabels, Split};

/// Warns about what in `train` and `validation` would mislead, and returns the train
/// split's rows per label id (run.json records them). `numbers`: how train read the
/// labels written as numbers.
pub(super) fn check_training_data(
    dataset: &Dataset,
    train: &Split,
    validation: Option<&Split>,
    numbers: NumericLabels,
) -> Vec<usize> {
    let names = &dataset.label_names;
    let counts = train_label_counts(train, names.len());
    warn_label_coverage(train, validation, names, &counts, numbers);
    for split in [Some(train), validation].into_iter().flatten() {
        warn_blank_texts(split);
    }
    warn_duplicates(train, validation, names);
    counts
}

/// Rows per label id in the train split.
fn train_label_counts(train: &Split, num_labels: usize) -> Vec<usize> {
    let mut counts = vec![0; num_labels];
    for &label in &train.labels {
        counts[label] += 1;
    }
    counts
}

/// A head trained on one class can only ever predict it, and one with outputs for
/// labels absent from train cannot learn them: say so, and train anyway (the data may
/// be a deliberate test). A label only the validation split gives is named with its first
/// validation row: names are numbered over train and validation, so a slip there (a
/// misspelt name) would otherwise pass as a class of its own.
fn warn_label_coverage(
    train: &Split,
    validation: Option<&Split>,
    names: &[String],
    counts: &[usize],
    numbers: NumericLabels,
) {
    let present: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
    if let [only] = present[..] {
        eprintln!(
            "warning: the {} split has a single class ({:?}, {}): the head can only learn to predict it; add examples of the other labels",
            train.name, names[only], count(counts[only], "row")
        );
        return;
    }
    let absent: Vec<String> = (0..counts.len())
        .filter(|&i| counts[i] == 0)
        .map(|i| format!("{:?}", names[i]))
        .collect();
    if !absent.is_empty() {
        const SHOWN: usize = 5;
        let more = match absent.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        let given = validation.and_then(|v| {
            let row = v.labels.iter().position(|&l| counts[l] == 0)?;
            Some((v, row))
        });
        let hint = match given {
            Some((v, row)) => format!(
                "the {} split gives {:?} at row {} (a misspelt label there makes a class of its own): fix those rows, or add train examples",
                v.name,
                names[v.labels[row]],
                row + 1
            ),
            // Read as names, numbers make no gap: the absent one came from --labels.
            None if numbers.is_ids() && crate::data::are_bare_ids(names) => {
                "add examples, number the labels 0, 1, ... without gaps, or pass --numeric-labels names to make each number that the data gives a class (star ratings 1-5: five classes)".to_string()
            }
            None => "add examples, or leave the name out of --labels if the data has no ClassLabel".to_string(),
        };
        eprintln!(
            "warning: the {} split has no rows of label {}{more} (of {} labels): the head cannot learn to predict them; {hint}",
            train.name,
            absent[..absent.len().min(SHOWN)].join(", "),
            counts.len()
        );
    }
}

/// A row whose text is empty or whitespace is still encoded ([CLS] and [SEP] alone) and
/// trains or scores its label on that one feature shared by every such row: nearly
/// always an export that lost the text, which nothing downstream would reveal.
fn warn_blank_texts(split: &Split) {
    let blank: Vec<usize> = (0..split.texts.len())
        .filter(|&i| split.texts[i].trim().is_empty())
        .collect();
    if blank.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let mut rows: Vec<String> = blank
        .iter()
        .take(SHOWN)
        .map(|i| (i + 1).to_string())
        .collect();
    if blank.len() > SHOWN {
        rows.push("...".to_string());
    }
    eprintln!(
        "warning: the {} split has {} whose text is empty or only whitespace ({} {}): each is encoded as [CLS] [SEP] alone and keeps its label; drop or fill them",
        split.name,
        count(blank.len(), "row"),
        if blank.len() == 1 { "row" } else { "rows" },
        rows.join(", ")
    );
}

/// Duplicates that mislead without failing anything: a text the train split labels two
/// ways (the head cannot fit both, and one label is usually a mistake), and validation
/// rows whose text is also in train (the validation accuracy, and the best epoch and
/// temperature chosen by it, then measure memory rather than new text).
fn warn_duplicates(train: &Split, validation: Option<&Split>, names: &[String]) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    // Counted as texts, not rows: a text three times with two labels is one conflict.
    let mut conflicts: Vec<(usize, usize)> = Vec::new();
    let mut conflicting: HashSet<usize> = HashSet::new();
    for (i, text) in train.texts.iter().enumerate() {
        match first.entry(text.as_str()) {
            Entry::Vacant(e) => {
                e.insert(i);
            }
            Entry::Occupied(e) => {
                if train.labels[*e.get()] != train.labels[i] && conflicting.insert(*e.get()) {
                    conflicts.push((*e.get(), i));
                }
            }
        }
    }
    if let Some(&(a, b)) = conflicts.first() {
        eprintln!(
            "warning: the {} split labels {} two ways (first: rows {} and {}, labels {:?} and {:?}): the head cannot fit both; fix the labels or drop one row",
            train.name,
            count(conflicts.len(), "repeated text"),
            a + 1,
            b + 1,
            names[train.labels[a]],
            names[train.labels[b]]
        );
    }
    if let Some(v) = validation {
        let shared = v
            .texts
            .iter()
            .filter(|t| first.contains_key(t.as_str()))
            .count();
        if shared > 0 {
            eprintln!(
                "warning: {shared} of the {} {} split rows have a text that is also in the {} split: validation accuracy, and the best epoch and temperature chosen on it, overstate how the head does on new text; drop them from one split",
                v.texts.len(),
                v.name,
                train.name
            );
        }
    }
}
