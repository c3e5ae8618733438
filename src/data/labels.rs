//! Labels as the data writes them (class ids as integers, integral floats or digit
//! strings; or class names), and the label names a dataset ends up with.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::raw::{cut, row_error, RawSplit};
use super::LoadOptions;

const IDS_HINT: &str = "labels must be class ids 0, 1, ... or class names";

/// Names derived from the data beyond this many are no classes: the common text
/// classification sets have tens to a few hundred (banking77, CLINC150), and a column of
/// titles, users or products swapped in for the labels has thousands. A set with more
/// classes names them with `--labels`, which this does not bound.
const MAX_DERIVED_NAMES: usize = 1000;

/// From this many rows on, names derived from the data must average two rows or more each:
/// a text column swapped in for the labels has about one value per row, and a class seen
/// once cannot be learned. Fewer rows (a hand-made smoke test) are not judged.
const SPREAD_MIN_ROWS: usize = 20;

/// How labels written as numbers are read (`train --numeric-labels`; a head records it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumericLabels {
    /// Class ids 0, 1, ...: what `datasets` writes, with or without a ClassLabel.
    #[default]
    Ids,
    /// Class names: each distinct number is a class, the classes numbered in numeric
    /// order (star ratings 1 to 5 are five classes, -1/0/1 three), as scikit-learn's
    /// LabelEncoder numbers numeric labels.
    Names,
}

impl NumericLabels {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ids => "ids",
            Self::Names => "names",
        }
    }

    pub fn is_ids(&self) -> bool {
        *self == Self::Ids
    }
}

impl FromStr for NumericLabels {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ids" => Ok(Self::Ids),
            "names" => Ok(Self::Names),
            _ => Err(format!("`{s}` is neither ids nor names")),
        }
    }
}

impl fmt::Display for NumericLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A row's label as written: a number (a class id unless numbers are read as names, see
/// [`numbers_as`]), or a class name still to be mapped to an id.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Label {
    Id(i64),
    Name(String),
}

/// `label` as `numbers` says to read a number: a class id, refused when negative, or the
/// name the number is written as (canonical: "01" and 1.0 are both "1").
pub(super) fn numbers_as(label: Label, numbers: NumericLabels) -> Result<Label, String> {
    match (label, numbers) {
        (Label::Id(id), NumericLabels::Ids) if id < 0 => Err(format!(
            "label {id} is negative; {IDS_HINT} (train --numeric-labels names reads numbers as class names: -1, 0, 1 become three classes)"
        )),
        (Label::Id(id), NumericLabels::Names) => Ok(Label::Name(id.to_string())),
        (label, _) => Ok(label),
    }
}

pub(super) fn from_f64(value: f64) -> Result<i64, String> {
    integral(value, &value.to_string())
}

/// `value` (`written` so in the data) as an integer. Past 9e15 a float no longer holds
/// every integer, and past i64 no label is one: a number that large is no label (an id
/// column, say), and the message quotes it as written, not as the float rounds it.
fn integral(value: f64, written: &str) -> Result<i64, String> {
    // Pandas writes integer columns that held a null as floats: 1.0 is still id 1.
    if value.is_finite() && value.fract() == 0.0 {
        if value.abs() < 9.0e15 {
            return Ok(value as i64);
        }
        return Err(format!(
            "label {} is too large a number to be a label; check --label-column",
            cut(written)
        ));
    }
    Err(format!(
        "label {} is not an integer; {IDS_HINT}",
        cut(written)
    ))
}

/// Text that reads as a number (digits, "1.0", also "nan" and "inf", which float columns
/// write) is an id; any other text is a class name.
pub(super) fn from_text(text: &str) -> Result<Label, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("label is empty".to_string());
    }
    if let Ok(id) = trimmed.parse::<i64>() {
        return Ok(Label::Id(id));
    }
    match trimmed.parse::<f64>() {
        // The message shows the label as written: "Infinity" and "1e400" both parse as inf.
        Ok(value) if !value.is_finite() => Err(format!(
            "label {} is not an integer; {IDS_HINT}",
            cut(trimmed)
        )),
        Ok(value) => integral(value, trimmed).map(Label::Id),
        Err(_) => Ok(Label::Name(trimmed.to_string())),
    }
}

pub(super) fn from_json(value: &Value) -> Result<Label, String> {
    match value {
        Value::Null => Err("label is null".to_string()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(id), _) => Ok(Label::Id(id)),
            (None, Some(f)) => integral(f, &n.to_string()).map(Label::Id),
            (None, None) => Err(format!("label {n} is not an integer; {IDS_HINT}")),
        },
        Value::String(s) => from_text(s),
        other => Err(format!(
            "label {} is neither a number nor a string; {IDS_HINT}",
            cut(&other.to_string())
        )),
    }
}

/// Why data with a ClassLabel (whose numbers are ids of its names) cannot be read with
/// numbers as names: the flag's, or a head's trained with it.
pub(super) fn class_label_with_names(source: &str, for_head: bool) -> String {
    if for_head {
        format!("{source} has a ClassLabel, so its labels are ids of its names, but the head reads numbers as class names (it was trained with --numeric-labels names): score data whose labels are the numbers themselves")
    } else {
        format!("{source} has a ClassLabel, so its labels are ids of its names: drop --numeric-labels names")
    }
}

/// Names that are only the ids "0", "1", ... (data without names): --labels may name
/// them, as it names a head that records none.
pub fn are_bare_ids(names: &[String]) -> bool {
    names
        .iter()
        .enumerate()
        .all(|(id, name)| *name == id.to_string())
}

/// Why a label name found in the data is not one of the head's `names`. A number is a
/// name only for a head that reads numbers as names: its names "0", "1" are those
/// numbers, recorded, so naming them with --labels would not help.
pub(super) fn not_the_heads(name: &str, names: &[String]) -> String {
    let hint = if are_bare_ids(names) && name.parse::<i64>().is_err() {
        "the head records no label names: pass --labels with its class names in id order"
    } else {
        "check --label-column, or use the head trained for these labels"
    };
    format!(
        "label \"{}\" is not one of the head's labels ({}); {hint}",
        cut(name),
        listed(names)
    )
}

/// Whether the labels written as names are the odd ones out (else those written as ids),
/// when `named` of `rows` labels are names and the rest ids; `None` when all are written
/// one way.
pub(super) fn odd_form(named: usize, rows: usize) -> Option<bool> {
    // On a tie, the names are the odd ones.
    (named > 0 && named < rows).then_some(named * 2 <= rows)
}

/// Why a row's label is refused when labels are written both as ids and as names: the
/// row holds the rarer form, `shown` as written; `others` of `rows` labels take the other.
pub(super) fn mixed_forms(named: bool, shown: &str, others: usize, rows: usize) -> String {
    let (this, that) = if named {
        ("a name", "class ids")
    } else {
        ("a class id", "names")
    };
    format!(
        "label {shown} is {this}, but {others} of the {rows} labels read are {that}: label every row by name, or every row by id"
    )
}

/// At most the first 20 of `names`, comma-separated, for messages.
fn listed(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut list = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(", … ({} in all)", names.len()));
    }
    list
}

/// The names in the order of their ids, every label checked against them, and the rows
/// labelled by name given their names' ids. Ids are named by the data's ClassLabel, else
/// `--labels`, else the head's names when scoring one, else by themselves. Names take
/// their ids from the head's names when scoring one, else from the ClassLabel, else from
/// `--labels`, else from their own sorted order.
pub(super) fn resolve(
    source: &str,
    class_names: Option<Vec<String>>,
    opts: &LoadOptions,
    splits: &mut [RawSplit],
) -> Result<Vec<String>> {
    let flag = opts.labels.as_deref();
    if let Some(flag) = flag {
        check_label_names(flag).map_err(|why| anyhow!("--labels: {why}"))?;
    }
    if let Some(data) = &class_names {
        check_label_names(data).map_err(|why| anyhow!("{source}: its ClassLabel names: {why}"))?;
        if opts.numeric_labels == NumericLabels::Names {
            bail!(
                "{}",
                class_label_with_names(source, opts.head_labels.is_some())
            );
        }
    }
    let has_class_label = class_names.is_some();
    let declared = match (class_names, flag) {
        (Some(data), Some(flag)) if data.len() != flag.len() => bail!(
            "{source}: its ClassLabel has {} names ({}) but --labels gives {} ({}); \
             drop --labels or give exactly {} names",
            data.len(),
            data.join(", "),
            flag.len(),
            flag.join(", "),
            data.len()
        ),
        (Some(data), _) => Some(data),
        (None, flag) => flag.map(<[String]>::to_vec),
    };
    let head = opts.head_labels.as_deref();
    if splits.iter().all(|s| s.names.is_empty()) {
        return resolve_ids(source, declared, head, splits);
    }
    // A name means what the head was trained to call it, whatever the data declares.
    if let Some(head) = head {
        check_one_form(splits)?;
        return map_names(head.to_vec(), splits, |name| not_the_heads(name, head));
    }
    let names = match declared {
        Some(names) => names,
        None => derived_names(source, &opts.label_column, splits)?,
    };
    check_one_form(splits)?;
    check_count(source, &names)?;
    let known = listed(&names);
    // Derived names hold every name, so a name is missing only from a ClassLabel or --labels.
    let hint = if has_class_label {
        "fix the row: the data's ClassLabel names its classes"
    } else {
        "fix the row, or add the name to --labels"
    };
    map_names(names, splits, |name| {
        format!(
            "label \"{}\" is not one of the label names ({known}); {hint}",
            cut(name)
        )
    })
}

fn resolve_ids(
    source: &str,
    declared: Option<Vec<String>>,
    head: Option<&[String]>,
    splits: &mut [RawSplit],
) -> Result<Vec<String>> {
    let names = match (declared, head) {
        (Some(names), _) => names,
        (None, Some(head)) => {
            check_range(
                head,
                splits,
                &format!("the head has {} classes: {}", head.len(), head.join(", ")),
                "use the head trained for these labels",
            )?;
            return Ok(head.to_vec());
        }
        (None, None) => {
            let max = splits.iter().flat_map(|s| s.labels.iter().copied()).max();
            let count = max.map_or(0, |m| m as usize + 1).max(2);
            check_dense(count, splits)?;
            return Ok((0..count).map(|id| id.to_string()).collect());
        }
    };
    check_count(source, &names)?;
    check_range(
        &names,
        splits,
        &format!("label names: {}", names.join(", ")),
        "pass --labels with one name per class if the data has no ClassLabel",
    )?;
    if let Some((head, ids)) = head.and_then(|h| Some((h, head_ids_of(&names, h)?))) {
        for split in splits.iter_mut() {
            for label in &mut split.labels {
                *label = ids[*label as usize];
            }
        }
        return Ok(head.to_vec());
    }
    Ok(names)
}

/// The head's id of each id the data's label `names` (its ClassLabel) number, when they
/// are the head's names in another order (a run trained on names sorted one way, scored
/// on a dataset whose ClassLabel lists them another): ids then mean names. `None` when
/// the orders agree, the head records no names, or the names are others (a head named
/// in another language scores ids as ids, as it always has).
pub(super) fn head_ids_of(names: &[String], head: &[String]) -> Option<Vec<i64>> {
    if names == head || names.len() != head.len() {
        return None;
    }
    names
        .iter()
        .map(|n| head.iter().position(|h| h == n).map(|i| i as i64))
        .collect()
}

fn check_count(source: &str, names: &[String]) -> Result<()> {
    if names.len() < 2 {
        let shown: Vec<String> = names.iter().map(|n| cut(n)).collect();
        bail!("{source}: a classifier needs at least 2 label names, got {shown:?}; pass --labels a,b,...");
    }
    Ok(())
}

/// The distinct names the rows give, sorted by their bytes (code points), as
/// scikit-learn's LabelEncoder and datasets' `class_encode_column` number them, or in
/// numeric order when every name is an integer (numbers read as names: "2" before
/// "10", "-1" before "0", as LabelEncoder sorts numbers); refused when they are too many
/// to be classes, which is a text column read as the labels.
fn derived_names(source: &str, column: &str, splits: &[RawSplit]) -> Result<Vec<String>> {
    let mut names: Vec<String> = splits
        .iter()
        .flat_map(|s| s.names.iter().cloned())
        .collect();
    names.sort_unstable();
    names.dedup();
    let numbers: Option<Vec<i64>> = names.iter().map(|n| n.parse().ok()).collect();
    if let Some(mut numbers) = numbers {
        numbers.sort_unstable();
        names = numbers.iter().map(i64::to_string).collect();
    }
    let rows: usize = splits.iter().map(|s| s.labels.len()).sum();
    if names.len() > MAX_DERIVED_NAMES || (rows >= SPREAD_MIN_ROWS && names.len() * 2 > rows) {
        bail!(
            "{source}: label column \"{column}\" holds {} distinct values in {rows} rows, too many to be classes: are --label-column and --text-column right? (a set with that many classes names them with --labels)",
            names.len()
        );
    }
    check_label_names(&names).map_err(|why| anyhow!("{source}: its label names: {why}"))?;
    Ok(names)
}

/// Gives every row, all labelled by name, the id of that name in `names`; `unknown` says
/// why a name not among them is refused.
fn map_names(
    names: Vec<String>,
    splits: &mut [RawSplit],
    unknown: impl Fn(&str) -> String,
) -> Result<Vec<String>> {
    let ids: HashMap<&str, i64> = (0..).zip(&names).map(|(id, n)| (n.as_str(), id)).collect();
    for split in splits.iter_mut() {
        let local: Vec<Option<i64>> = split
            .names
            .iter()
            .map(|n| ids.get(n.as_str()).copied())
            .collect();
        if let Some(index) = split
            .labels
            .iter()
            .position(|&l| local[l as usize].is_none())
        {
            let (file, row) = split.locate(index);
            let name = &split.names[split.labels[index] as usize];
            return Err(row_error(file, row, unknown(name)));
        }
        for label in &mut split.labels {
            *label = local[*label as usize].expect("every name was found above");
        }
    }
    Ok(names)
}

/// Refuses labels written some as ids and some as names (a digit string is an id), at the
/// first label of the rarer form: that one is the slip, or which form was meant is unclear.
fn check_one_form(splits: &[RawSplit]) -> Result<()> {
    let rows: usize = splits.iter().map(|s| s.labels.len()).sum();
    let named: usize = splits.iter().map(|s| s.named).sum();
    let Some(odd_named) = odd_form(named, rows) else {
        return Ok(());
    };
    for split in splits {
        let Some(index) = (if odd_named {
            split.first_name
        } else {
            split.first_id
        }) else {
            continue;
        };
        let label = split.labels[index];
        let (shown, others) = if odd_named {
            (
                format!("\"{}\"", cut(&split.names[label as usize])),
                rows - named,
            )
        } else {
            (label.to_string(), named)
        };
        let (file, row) = split.locate(index);
        return Err(row_error(
            file,
            row,
            mixed_forms(odd_named, &shown, others, rows),
        ));
    }
    Ok(())
}

/// Why label names cannot name a head's classes, if they cannot: one that is empty, two
/// alike (predictions could not be told apart), or one holding a control character (a
/// tab or line break splits predict's tab-separated lines).
pub fn check_label_names(names: &[String]) -> Result<(), String> {
    for (id, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(format!(
                "label {id} has an empty name: give every label a name"
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(format!(
                "label {id} ({name:?}) holds a tab, line break or other control character, which would break predict's tab-separated lines: rename it"
            ));
        }
        if let Some(first) = names[..id].iter().position(|n| n == name) {
            return Err(format!(
                "labels {first} and {id} are both named {name:?}: give each label its own name"
            ));
        }
    }
    Ok(())
}

/// Ids 0..count with fewer rows than ids cannot all have rows; with more than twice as many
/// ids as rows, most have none: the largest label is not a class id (a year, a code), and
/// would size the head by it. Smaller gaps are the train command's warning.
fn check_dense(count: usize, splits: &[RawSplit]) -> Result<()> {
    let rows: usize = splits.iter().map(|s| s.labels.len()).sum();
    if count <= 2 * rows.max(1) {
        return Ok(());
    }
    let largest = count as i64 - 1;
    for split in splits {
        if let Some(index) = split.labels.iter().position(|&id| id == largest) {
            let (file, row) = split.locate(index);
            return Err(row_error(
                file,
                row,
                format!(
                    "label {largest} is not a class id: the data has only {rows} rows, so more \
                     than half of the ids 0..{largest} would have none; {IDS_HINT}, or pass --labels \
                     with one name per class"
                ),
            ));
        }
    }
    Ok(())
}

fn check_range(names: &[String], splits: &[RawSplit], known: &str, otherwise: &str) -> Result<()> {
    for split in splits {
        if let Some(index) = split
            .labels
            .iter()
            .position(|&id| id as usize >= names.len())
        {
            let (file, row) = split.locate(index);
            return Err(row_error(
                file,
                row,
                format!(
                    "label {} is outside 0..{} ({known}); fix the row, or {otherwise}",
                    split.labels[index],
                    names.len(),
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn split(labels: &[i64]) -> RawSplit {
        named_split("train.jsonl", labels.iter().map(|&l| Label::Id(l)))
    }

    fn names(labels: &[&str]) -> RawSplit {
        named_split("train.jsonl", labels.iter().map(|&l| from_text(l).unwrap()))
    }

    fn named_split(file: &str, labels: impl Iterator<Item = Label>) -> RawSplit {
        let mut split = RawSplit::new("train");
        split.start_file(Path::new(file));
        for l in labels {
            split.push(String::new(), l);
        }
        split
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn opts(flag: Option<&[&str]>, head: Option<&[&str]>) -> LoadOptions {
        LoadOptions {
            labels: flag.map(strings),
            head_labels: head.map(strings),
            ..LoadOptions::default()
        }
    }

    fn resolve_in(
        class_names: Option<Vec<String>>,
        opts: &LoadOptions,
        splits: &mut [RawSplit],
    ) -> Result<Vec<String>> {
        resolve("d", class_names, opts, splits)
    }

    #[test]
    fn parses_ids_and_names_in_their_written_forms() {
        assert_eq!(from_text(" 1 "), Ok(Label::Id(1)));
        assert_eq!(from_text("1.0"), Ok(Label::Id(1)));
        assert!(from_text("1.5")
            .unwrap_err()
            .contains("1.5 is not an integer"));
        assert_eq!(from_text(" pos "), Ok(Label::Name("pos".to_string())));
        assert_eq!(from_text("1a"), Ok(Label::Name("1a".to_string())));
        // A negative number parses; whether it is refused is `numbers_as`'s call.
        assert_eq!(from_text("-1"), Ok(Label::Id(-1)));
        assert!(from_text("nan").unwrap_err().contains("not an integer"));
        assert!(from_text("Infinity")
            .unwrap_err()
            .starts_with("label Infinity is not an integer"));
        assert!(from_text("1e400")
            .unwrap_err()
            .starts_with("label 1e400 is not an integer"));
        assert_eq!(from_text("-1.0"), Ok(Label::Id(-1)));
        assert_eq!(from_text(""), Err("label is empty".to_string()));
        // Integers too large to be read exactly, quoted as written.
        let huge =
            "label 9223372036854775808 is too large a number to be a label; check --label-column";
        assert_eq!(from_text("9223372036854775808"), Err(huge.to_string()));
        let number: Value = serde_json::from_str("9223372036854775808").unwrap();
        assert_eq!(from_json(&number), Err(huge.to_string()));
        assert!(from_f64(1e20)
            .unwrap_err()
            .starts_with("label 100000000000000000000 is too large"));
        assert_eq!(from_json(&serde_json::json!(3)), Ok(Label::Id(3)));
        assert_eq!(from_json(&serde_json::json!("2")), Ok(Label::Id(2)));
        assert_eq!(
            from_json(&serde_json::json!("好评")),
            Ok(Label::Name("好评".to_string()))
        );
        assert!(from_json(&serde_json::json!(1.5)).is_err());
        assert!(from_json(&serde_json::json!(true)).is_err());
        let long = format!("{} end", "x".repeat(200));
        let err = from_json(&serde_json::json!([long])).unwrap_err();
        assert!(!err.contains("end"), "{err}");
        assert_eq!(from_json(&Value::Null), Err("label is null".to_string()));
    }

    #[test]
    fn numbers_are_ids_unless_read_as_names() {
        use NumericLabels::{Ids, Names};
        assert_eq!(numbers_as(Label::Id(3), Ids), Ok(Label::Id(3)));
        let err = numbers_as(Label::Id(-1), Ids).unwrap_err();
        assert!(
            err.starts_with("label -1 is negative;") && err.contains("--numeric-labels names"),
            "{err}"
        );
        assert_eq!(
            numbers_as(Label::Id(-1), Names),
            Ok(Label::Name("-1".into()))
        );
        // Written forms of one number are one name.
        for written in ["07", "7.0", " 7 "] {
            let label = from_text(written).and_then(|l| numbers_as(l, Names));
            assert_eq!(label, Ok(Label::Name("7".into())), "{written}");
        }
        let name = Label::Name("pos".into());
        assert_eq!(numbers_as(name.clone(), Names), Ok(name.clone()));
        assert_eq!(numbers_as(name.clone(), Ids), Ok(name));
    }

    #[test]
    fn numeric_names_are_numbered_in_numeric_order_others_by_code_point() {
        let numbers = ["10", "2", "-1", "1", "2"].map(|n| Label::Name(n.into()));
        let mut splits = [named_split("train.jsonl", numbers.into_iter())];
        let names = resolve_in(None, &LoadOptions::default(), &mut splits).unwrap();
        assert_eq!(names, strings(&["-1", "1", "2", "10"]));
        assert_eq!(splits[0].labels, [3, 2, 0, 1, 2]);
        // One name that is no number: every name sorts by code point, as before.
        let mixed = ["10", "2", "x"].map(|n| Label::Name(n.into()));
        let mut splits = [named_split("train.jsonl", mixed.into_iter())];
        let names = resolve_in(None, &LoadOptions::default(), &mut splits).unwrap();
        assert_eq!(names, strings(&["10", "2", "x"]));
    }

    #[test]
    fn a_class_label_refuses_numbers_read_as_names() {
        let names = LoadOptions {
            numeric_labels: NumericLabels::Names,
            ..LoadOptions::default()
        };
        let mut splits = [split(&[0, 1])];
        let err = resolve_in(Some(strings(&["neg", "pos"])), &names, &mut splits).unwrap_err();
        assert!(
            err.to_string().ends_with("drop --numeric-labels names"),
            "{err}"
        );
    }

    #[test]
    fn names_come_from_class_label_then_flag_then_ids() {
        let data = Some(strings(&["neg", "pos"]));
        let flag = opts(Some(&["a", "b"]), None);
        let none = LoadOptions::default();
        let splits = || [split(&[0, 1, 0])];
        assert_eq!(
            resolve_in(data.clone(), &flag, &mut splits()).unwrap(),
            ["neg", "pos"]
        );
        assert_eq!(resolve_in(None, &flag, &mut splits()).unwrap(), ["a", "b"]);
        assert_eq!(
            resolve_in(None, &none, &mut [split(&[0, 0])]).unwrap(),
            ["0", "1"]
        );
        assert_eq!(
            resolve_in(None, &none, &mut [split(&[3, 0, 0, 1])])
                .unwrap()
                .len(),
            4
        );
        // A gap is allowed (train warns about it); an id past the row count is not a class id.
        assert_eq!(
            resolve_in(None, &none, &mut [split(&[0, 3, 1])])
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            resolve_in(None, &none, &mut [split(&[0, 7, 1, 1])])
                .unwrap()
                .len(),
            8
        );
        let err = resolve_in(None, &none, &mut [split(&[0, 1]), split(&[1, 2024])])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "train.jsonl row 2: label 2024 is not a class id: the data has only 4 rows"
            ),
            "{err}"
        );
        let err = resolve_in(data, &opts(Some(&["a", "b", "c"]), None), &mut splits())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ClassLabel has 2 names") && err.contains("--labels gives 3"),
            "{err}"
        );
    }

    #[test]
    fn a_label_past_the_names_names_its_row() {
        let flag = opts(Some(&["a", "b"]), None);
        let err = resolve_in(None, &flag, &mut [split(&[0, 1, 2])]).unwrap_err();
        let err = err.to_string();
        assert!(
            err.starts_with("train.jsonl row 3: label 2 is outside 0..2"),
            "{err}"
        );
    }

    #[test]
    fn a_heads_class_count_sizes_data_without_names() {
        // The split scored need not hold the head's largest class.
        let head = opts(None, Some(&["0", "1", "2", "3"]));
        assert_eq!(
            resolve_in(None, &head, &mut [split(&[0, 1])]).unwrap(),
            ["0", "1", "2", "3"]
        );
        let err = resolve_in(None, &opts(None, Some(&["0", "1"])), &mut [split(&[0, 2])])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("train.jsonl row 2: label 2 is outside 0..2 (the head has 2 classes: ")
                && err.ends_with("use the head trained for these labels"),
            "{err}"
        );
    }

    #[test]
    fn names_in_the_data_get_the_ids_of_their_sorted_order() {
        let mut splits = [
            names(&["pos", "neg", "neutral", "pos"]),
            names(&["Neg", "pos"]),
        ];
        let got = resolve_in(None, &LoadOptions::default(), &mut splits).unwrap();
        // Byte order, as LabelEncoder sorts: capitals before lower case.
        assert_eq!(got, ["Neg", "neg", "neutral", "pos"]);
        assert_eq!(splits[0].labels, [3, 1, 2, 3]);
        assert_eq!(splits[1].labels, [0, 3]);
        let err = resolve_in(None, &LoadOptions::default(), &mut [names(&["pos", "pos"])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a classifier needs at least 2 label names, got [\"pos\"]"),
            "{err}"
        );
    }

    #[test]
    fn names_follow_the_order_labels_gives() {
        let mut splits = [names(&["neg", "pos", "neutral"])];
        let flag = opts(Some(&["pos", "neutral", "neg"]), None);
        assert_eq!(
            resolve_in(None, &flag, &mut splits).unwrap(),
            ["pos", "neutral", "neg"]
        );
        assert_eq!(splits[0].labels, [2, 0, 1]);
        let data = Some(strings(&["neg", "pos"]));
        let mut splits = [names(&["pos", "neg"])];
        assert_eq!(
            resolve_in(data, &LoadOptions::default(), &mut splits).unwrap(),
            ["neg", "pos"]
        );
        assert_eq!(splits[0].labels, [1, 0]);
        let err = resolve_in(
            None,
            &opts(Some(&["neg", "pos"]), None),
            &mut [names(&["neg", "meh"])],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "train.jsonl row 2: label \"meh\" is not one of the label names (neg, pos); fix the row, or add the name to --labels"
            ),
            "{err}"
        );
    }

    #[test]
    fn ids_and_names_mixed_are_refused_at_the_rarer() {
        let err = resolve_in(
            None,
            &LoadOptions::default(),
            &mut [names(&["neg", "pos"]), names(&["pos", "1", "neg"])],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "train.jsonl row 2: label 1 is a class id, but 4 of the 5 labels read are names: label every row by name, or every row by id"
        );
        let mut splits = [
            split(&[0, 1, 1]),
            named_split(
                "validation.jsonl",
                [Label::Id(0), Label::Name("pos".into())].into_iter(),
            ),
        ];
        let err = resolve_in(None, &LoadOptions::default(), &mut splits)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "validation.jsonl row 2: label \"pos\" is a name, but 4 of the 5 labels read are class ids"
            ),
            "{err}"
        );
    }

    #[test]
    fn names_scored_by_a_head_are_the_heads() {
        let head = opts(Some(&["x", "y"]), Some(&["neg", "pos"]));
        let mut splits = [names(&["pos", "neg"])];
        assert_eq!(
            resolve_in(None, &head, &mut splits).unwrap(),
            ["neg", "pos"]
        );
        assert_eq!(splits[0].labels, [1, 0]);
        let err = resolve_in(None, &head, &mut [names(&["pos", "neutral"])])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "train.jsonl row 2: label \"neutral\" is not one of the head's labels (neg, pos); check --label-column, or use the head trained for these labels"
        );
        let bare = opts(None, Some(&["0", "1"]));
        let err = resolve_in(None, &bare, &mut [names(&["pos"])])
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "the head records no label names: pass --labels with its class names in id order"
            ),
            "{err}"
        );
        // A head trained on 0/1 read as names records "0" and "1": a -1 is no name of
        // it that --labels could give.
        let numbers = ["1", "-1"].map(|n| Label::Name(n.into()));
        let err = resolve_in(
            None,
            &bare,
            &mut [named_split("t.jsonl", numbers.into_iter())],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with(
                "label \"-1\" is not one of the head's labels (0, 1); check --label-column, or use the head trained for these labels"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_text_column_read_as_labels_is_refused() {
        let texts: Vec<String> = (0..30).map(|i| format!("review {i}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let err = resolve_in(None, &LoadOptions::default(), &mut [names(&texts)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d: label column \"label\" holds 30 distinct values in 30 rows, too many to be classes: are --label-column and --text-column right? (a set with that many classes names them with --labels)"
        );
        // Half the rows is still classes; and small data is not judged.
        let half: Vec<&str> = texts[..15].iter().chain(&texts[..15]).copied().collect();
        assert!(resolve_in(None, &LoadOptions::default(), &mut [names(&half)]).is_ok());
        assert!(resolve_in(None, &LoadOptions::default(), &mut [names(&texts[..19])]).is_ok());
        let many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().flat_map(|n| [n.as_str(); 3]).collect();
        let err = resolve_in(None, &LoadOptions::default(), &mut [names(&many)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds 1001 distinct values in 3003 rows"),
            "{err}"
        );
        // Names given are not bounded: the data is checked against them instead.
        let flag: Vec<&str> = many.iter().step_by(3).copied().collect();
        assert_eq!(
            resolve_in(None, &opts(Some(&flag), None), &mut [names(&many)])
                .unwrap()
                .len(),
            1001
        );
    }
}
