//! CSV (RFC 4180 quoting) and TSV (no quoting at all: texts hold `"`), each
//! with a header row naming the columns.

use std::path::Path;

use anyhow::{Context, Result};
use csv::{ByteRecord, ErrorKind, ReaderBuilder};

use super::labels;
use super::raw::{missing_column, row_error, RawSplit};
use super::LoadOptions;

#[derive(Clone, Copy)]
pub(super) enum Dialect {
    Csv,
    Tsv,
}

/// Appends the file's rows; CSV and TSV carry no label names.
pub(super) fn read(
    file: &Path,
    dialect: Dialect,
    opts: &LoadOptions,
    out: &mut RawSplit,
) -> Result<Option<Vec<String>>> {
    let mut builder = ReaderBuilder::new();
    if let Dialect::Tsv = dialect {
        // A `"` in a TSV text is a character, never a quote: quoting would merge rows.
        builder.delimiter(b'\t').quoting(false);
    }
    let mut reader = builder
        .from_path(file)
        .with_context(|| format!("{}: cannot open", file.display()))?;
    let header = reader
        .byte_headers()
        .with_context(|| format!("{}: cannot read the header row", file.display()))?;
    let columns: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let name = if i == 0 {
                name.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(name)
            } else {
                name
            };
            String::from_utf8_lossy(name).trim().to_string()
        })
        .collect();
    let index = |column: &str, flag: &str| {
        columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| missing_column(file, column, flag, &columns))
    };
    let text_index = index(&opts.text_column, "--text-column")?;
    let label_index = index(&opts.label_column, "--label-column")?;
    out.start_file(file);
    let mut record = ByteRecord::new();
    for row in 1.. {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(record_error(file, row, dialect, e)),
        }
        let text = String::from_utf8(record[text_index].to_vec())
            .map_err(|_| row_error(file, row, "text is not UTF-8; re-encode the file as UTF-8"))?;
        let label = std::str::from_utf8(&record[label_index])
            .map_err(|_| "label is not UTF-8".to_string())
            .and_then(labels::from_text)
            .map_err(|e| row_error(file, row, e))?;
        out.push(text, label);
    }
    Ok(None)
}

fn record_error(file: &Path, row: usize, dialect: Dialect, error: csv::Error) -> anyhow::Error {
    match error.kind() {
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            let hint = match dialect {
                Dialect::Csv => "check its quoting (RFC 4180: a field with a comma, quote or newline is quoted, `\"` doubled)",
                Dialect::Tsv => "a TSV field cannot hold a tab or a newline",
            };
            row_error(
                file,
                row,
                format!("{len} fields where the header has {expected_len}; {hint}"),
            )
        }
        _ => row_error(file, row, format!("unreadable ({error})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::TestDir;

    fn load(name: &str, dialect: Dialect, content: &[u8]) -> Result<RawSplit> {
        let dir = TestDir::new("delimited");
        let file = dir.write(name, content);
        let mut out = RawSplit::new("train");
        read(&file, dialect, &LoadOptions::default(), &mut out)?;
        Ok(out)
    }

    fn error(name: &str, dialect: Dialect, content: &[u8]) -> String {
        let err = load(name, dialect, content)
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains(name), "{err}");
        err
    }

    #[test]
    fn csv_reads_rfc4180_quoting() {
        let split = load(
            "t.csv",
            Dialect::Csv,
            b"\xEF\xBB\xBFtext,label\n\"a, \"\"b\"\"\",1\r\nplain,0\n\"two\nlines\",1\n",
        )
        .unwrap();
        assert_eq!(split.texts, ["a, \"b\"", "plain", "two\nlines"]);
        assert_eq!(split.labels, [1, 0, 1]);
    }

    #[test]
    fn tsv_keeps_quotes_as_text() {
        let split = load("t.tsv", Dialect::Tsv, b"label\ttext\n1\t\"quoted\" start\n0\tmid \" quote\n1\t\xe2\x80\x9c\xe5\xa5\xbd\xe2\x80\x9d\n").unwrap();
        assert_eq!(
            split.texts,
            ["\"quoted\" start", "mid \" quote", "\u{201c}好\u{201d}"]
        );
        assert_eq!(split.labels, [1, 0, 1]);
    }

    #[test]
    fn errors_name_the_row() {
        let tsv = |body: &[u8]| {
            error(
                "t.tsv",
                Dialect::Tsv,
                &[b"label\ttext\n".as_slice(), body].concat(),
            )
        };
        assert!(tsv(b"0\tok\npos\tbad\n").contains("t.tsv row 2: label \"pos\" is not an integer"));
        assert!(tsv(b"1.5\tx\n").contains("row 1: label 1.5 is not an integer"));
        assert!(tsv(b"-2\tx\n").contains("row 1: label -2 is negative"));
        assert!(tsv(b"\tx\n").contains("row 1: label is empty"));
        assert!(tsv(b"0\t\xff\n").contains("row 1: text is not UTF-8"));
        assert!(tsv(b"0\ta\tb\n").contains("row 1: 3 fields where the header has 2"));
        let csv = error("t.csv", Dialect::Csv, b"text,label\n\"a,b\",0\na,b,1\n");
        assert!(
            csv.contains("t.csv row 2: 3 fields where the header has 2; check its quoting"),
            "{csv}"
        );
        let missing = error("t.csv", Dialect::Csv, b"review,label\na,0\n");
        assert!(
            missing.contains("no column \"text\" (it has \"review\", \"label\")")
                && missing.contains("--text-column")
        );
        let missing = error("t.csv", Dialect::Csv, b"text,stars\na,0\n");
        assert!(
            missing.contains("no column \"label\"") && missing.contains("--label-column"),
            "{missing}"
        );
    }
}
