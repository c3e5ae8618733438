//! JSON Lines: one object per line, the text and label as two of its fields.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::labels;
use super::raw::{cut, missing_column, row_error, RawSplit};
use super::LoadOptions;

/// Appends the file's rows; JSONL declares no label names.
pub(super) fn read(
    file: &Path,
    opts: &LoadOptions,
    out: &mut RawSplit,
) -> Result<Option<Vec<String>>> {
    let bytes = fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    out.start_file(file);
    // Blank lines (a trailing newline, a gap) are not rows.
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    for (i, line) in lines.enumerate() {
        let row = i + 1;
        let line = std::str::from_utf8(line)
            .map_err(|_| row_error(file, row, "not UTF-8; re-encode the file as UTF-8"))?;
        let object: Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| row_error(file, row, format!("not a JSON object ({e})")))?;
        let field = |column: &str, flag: &str| {
            object.get(column).ok_or_else(|| {
                let keys: Vec<String> = object.keys().cloned().collect();
                if row == 1 {
                    missing_column(file, column, flag, &keys)
                } else {
                    row_error(
                        file,
                        row,
                        format!("no field \"{column}\"; every row needs one"),
                    )
                }
            })
        };
        let text = match field(&opts.text_column, "--text-column")? {
            Value::String(text) => text.clone(),
            Value::Null => return Err(row_error(file, row, "text is null; drop or fill the row")),
            other => {
                return Err(row_error(
                    file,
                    row,
                    format!("text is {}, not a string", cut(&other.to_string())),
                ))
            }
        };
        let label = labels::from_json(field(&opts.label_column, "--label-column")?)
            .and_then(|l| labels::numbers_as(l, opts.numeric_labels))
            .map_err(|e| row_error(file, row, e))?;
        out.push(text, label);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    fn load(content: &[u8]) -> Result<RawSplit> {
        let dir = TestDir::new("jsonl");
        let file = dir.write("train.jsonl", content);
        let mut out = RawSplit::new("train");
        read(&file, &LoadOptions::default(), &mut out)?;
        Ok(out)
    }

    fn error(content: &[u8]) -> String {
        let err = load(content).err().expect("an error").to_string();
        assert!(err.contains("train.jsonl"), "{err}");
        err
    }

    #[test]
    fn reads_rows_with_quotes_and_escapes() {
        let split = load(b"{\"text\": \"say \\\"hi\\\", ok\", \"label\": 1}\n\n{\"label\": 0, \"text\": \"\xe5\xa5\xbd\"}\n").unwrap();
        assert_eq!(split.texts, ["say \"hi\", ok", "好"]);
        assert_eq!(split.labels, [1, 0]);
    }

    #[test]
    fn reads_labels_given_by_name() {
        let split = load(b"{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\", \"label\": \" neg \"}\n{\"text\": \"c\", \"label\": \"pos\"}\n").unwrap();
        assert_eq!(split.names, ["pos", "neg"]);
        assert_eq!(split.labels, [0, 1, 0]);
        assert_eq!((split.named, split.first_name), (3, Some(0)));
    }

    #[test]
    fn errors_name_the_row() {
        assert!(
            error(b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": [1]}\n")
                .contains("row 2: label [1] is neither a number nor a string")
        );
        assert!(error(b"{\"text\": \"a\", \"label\": 1.5}\n")
            .contains("row 1: label 1.5 is not an integer"));
        assert!(
            error(b"{\"text\": \"a\", \"label\": -1}\n").contains("row 1: label -1 is negative")
        );
        assert!(error(b"{\"text\": null, \"label\": 0}\n").contains("row 1: text is null"));
        assert!(error(b"{\"text\": \"a\", \"label\": null}\n").contains("row 1: label is null"));
        assert!(error(b"{\"text\": \"\xff\", \"label\": 0}\n").contains("row 1: not UTF-8"));
        assert!(error(b"{\"text\": \"a\", \"label\": 0}\n{\"label\": 0}\n")
            .contains("row 2: no field \"text\""));
        let err = error(b"{\"review\": \"a\", \"label\": 0}\n");
        assert!(
            err.contains("no column \"text\" (it has \"label\", \"review\")")
                && err.contains("--text-column"),
            "{err}"
        );
    }
}
