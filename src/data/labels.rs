//! Label ids as the data writes them (integers, integral floats, digit
//! strings), and the label names a dataset ends up with.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::raw::{cut, row_error, RawSplit};

const IDS_HINT: &str = "labels must be class ids 0, 1, ... (map label names to ids first)";

pub(super) fn check_id(id: i64) -> Result<i64, String> {
    if id < 0 {
        return Err(format!("label {id} is negative; {IDS_HINT}"));
    }
    Ok(id)
}

pub(super) fn from_f64(value: f64) -> Result<i64, String> {
    // Pandas writes integer columns that held a null as floats: 1.0 is still id 1.
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e15 {
        return check_id(value as i64);
    }
    Err(format!("label {value} is not an integer; {IDS_HINT}"))
}

pub(super) fn from_text(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("label is empty".to_string());
    }
    if let Ok(id) = trimmed.parse::<i64>() {
        return check_id(id);
    }
    match trimmed.parse::<f64>() {
        Ok(value) if value.is_finite() => from_f64(value),
        _ => Err(format!(
            "label \"{}\" is not an integer; {IDS_HINT}",
            cut(trimmed)
        )),
    }
}

pub(super) fn from_json(value: &Value) -> Result<i64, String> {
    match value {
        Value::Null => Err("label is null".to_string()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(id), _) => check_id(id),
            (None, Some(f)) => from_f64(f),
            (None, None) => Err(format!("label {n} is not an integer; {IDS_HINT}")),
        },
        Value::String(s) => from_text(s),
        other => Err(format!(
            "label {} is not an integer; {IDS_HINT}",
            cut(&other.to_string())
        )),
    }
}

/// The names in the order of their ids: the data's ClassLabel, else
/// `--labels`, else the ids themselves (0..`head_labels` when scoring a head); then every
/// label is checked against them.
pub(super) fn resolve(
    source: &str,
    class_names: Option<Vec<String>>,
    flag: Option<&[String]>,
    head_labels: Option<usize>,
    splits: &[RawSplit],
) -> Result<Vec<String>> {
    if let Some(flag) = flag {
        check_label_names(flag).map_err(|why| anyhow!("--labels: {why}"))?;
    }
    if let Some(data) = &class_names {
        check_label_names(data).map_err(|why| anyhow!("{source}: its ClassLabel names: {why}"))?;
    }
    let names = match (class_names, flag) {
        (Some(data), Some(flag)) if data.len() != flag.len() => bail!(
            "{source}: its ClassLabel has {} names ({}) but --labels gives {} ({}); \
             drop --labels or give exactly {} names",
            data.len(),
            data.join(", "),
            flag.len(),
            flag.join(", "),
            data.len()
        ),
        (Some(data), _) => data,
        (None, Some(flag)) => flag.to_vec(),
        (None, None) => {
            let ids = |count: usize| (0..count).map(|id| id.to_string()).collect::<Vec<_>>();
            if let Some(count) = head_labels {
                let names = ids(count);
                // The head's own names, if it has any, are applied after this: the ids
                // stand in for them here, so the message names the class count instead.
                check_range(
                    &names,
                    splits,
                    &format!("the head has {count} classes"),
                    "use the head trained for these labels",
                )?;
                return Ok(names);
            }
            let max = splits.iter().flat_map(|s| s.labels.iter().copied()).max();
            let count = max.map_or(0, |m| m as usize + 1).max(2);
            check_dense(count, splits)?;
            return Ok(ids(count));
        }
    };
    if names.len() < 2 {
        bail!("{source}: a classifier needs at least 2 label names, got {names:?}; pass --labels a,b,...");
    }
    check_range(
        &names,
        splits,
        &format!("label names: {}", names.join(", ")),
        "pass --labels with one name per class if the data has no ClassLabel",
    )?;
    Ok(names)
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
        let mut split = RawSplit::new("train");
        split.start_file(Path::new("train.jsonl"));
        for &l in labels {
            split.push(String::new(), l);
        }
        split
    }

    #[test]
    fn parses_ids_in_their_written_forms() {
        assert_eq!(from_text(" 1 "), Ok(1));
        assert_eq!(from_text("1.0"), Ok(1));
        assert!(from_text("1.5")
            .unwrap_err()
            .contains("1.5 is not an integer"));
        assert!(from_text("pos")
            .unwrap_err()
            .contains("\"pos\" is not an integer"));
        assert!(from_text("-1").unwrap_err().contains("-1 is negative"));
        let long = format!("{} end", "x".repeat(200));
        let err = from_text(&long).unwrap_err();
        assert!(
            err.starts_with(&format!("label \"{}…\" is not", "x".repeat(80))),
            "{err}"
        );
        let err = from_json(&serde_json::json!([long])).unwrap_err();
        assert!(!err.contains("end"), "{err}");
        assert!(from_text("nan").unwrap_err().contains("not an integer"));
        assert_eq!(from_text(""), Err("label is empty".to_string()));
        assert_eq!(from_json(&serde_json::json!(3)), Ok(3));
        assert_eq!(from_json(&serde_json::json!("2")), Ok(2));
        assert!(from_json(&serde_json::json!(1.5)).is_err());
        assert!(from_json(&serde_json::json!(true)).is_err());
        assert_eq!(from_json(&Value::Null), Err("label is null".to_string()));
    }

    #[test]
    fn names_come_from_class_label_then_flag_then_ids() {
        let splits = [split(&[0, 1, 0])];
        let data = Some(vec!["neg".to_string(), "pos".to_string()]);
        let flag = ["a".to_string(), "b".to_string()];
        assert_eq!(
            resolve("d", data.clone(), Some(&flag), None, &splits).unwrap(),
            ["neg", "pos"]
        );
        assert_eq!(
            resolve("d", None, Some(&flag), None, &splits).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            resolve("d", None, None, None, &[split(&[0, 0])]).unwrap(),
            ["0", "1"]
        );
        assert_eq!(
            resolve("d", None, None, None, &[split(&[3, 0, 0, 1])])
                .unwrap()
                .len(),
            4
        );
        // A gap is allowed (train warns about it); an id past the row count is not a class id.
        assert_eq!(
            resolve("d", None, None, None, &[split(&[0, 3, 1])])
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            resolve("d", None, None, None, &[split(&[0, 7, 1, 1])])
                .unwrap()
                .len(),
            8
        );
        let err = resolve("d", None, None, None, &[split(&[0, 1]), split(&[1, 2024])])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "train.jsonl row 2: label 2024 is not a class id: the data has only 4 rows"
            ),
            "{err}"
        );
        let three = ["a".to_string(), "b".to_string(), "c".to_string()];
        let err = resolve("d", data, Some(&three), None, &splits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ClassLabel has 2 names") && err.contains("--labels gives 3"),
            "{err}"
        );
    }

    #[test]
    fn a_label_past_the_names_names_its_row() {
        let flag = ["a".to_string(), "b".to_string()];
        let err = resolve("d", None, Some(&flag), None, &[split(&[0, 1, 2])]).unwrap_err();
        let err = err.to_string();
        assert!(
            err.starts_with("train.jsonl row 3: label 2 is outside 0..2"),
            "{err}"
        );
    }

    #[test]
    fn a_heads_class_count_sizes_data_without_names() {
        // The split scored need not hold the head's largest class.
        assert_eq!(
            resolve("d", None, None, Some(4), &[split(&[0, 1])]).unwrap(),
            ["0", "1", "2", "3"]
        );
        let err = resolve("d", None, None, Some(2), &[split(&[0, 2])])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("train.jsonl row 2: label 2 is outside 0..2 (the head has 2 classes)")
                && err.ends_with("use the head trained for these labels"),
            "{err}"
        );
    }
}
