//! CSV (RFC 4180 quoting) and TSV (no quoting at all: texts hold `"`), each
//! with a header row naming the columns.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use csv::{ByteRecord, ErrorKind, Reader, ReaderBuilder};

use super::labels;
use super::raw::{missing_column, row_error, RawSplit};
use super::LoadOptions;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Csv,
    Tsv,
}

/// A delimited file's data rows, numbered from 1 after the header, as the whole-split
/// loader and the chunked reader both read them.
pub(super) struct Rows {
    reader: Reader<File>,
    file: PathBuf,
    dialect: Dialect,
    /// The header's column names, a UTF-8 byte-order mark stripped.
    columns: Vec<String>,
    /// Data rows read so far.
    pub row: usize,
    /// Where the last record read (the header at first) starts in the file.
    last_start: u64,
}

impl Rows {
    pub fn open(file: &Path, dialect: Dialect) -> Result<Self> {
        let mut builder = ReaderBuilder::new();
        if dialect == Dialect::Tsv {
            // A `"` in a TSV text is a character, never a quote: quoting would merge rows.
            builder.delimiter(b'\t').quoting(false);
        }
        let mut reader = builder
            .from_path(file)
            .with_context(|| format!("{}: cannot open", file.display()))?;
        let header = reader
            .byte_headers()
            .with_context(|| format!("{}: cannot read the header row", file.display()))?;
        let columns = header
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
        Ok(Rows {
            reader,
            file: file.to_path_buf(),
            dialect,
            columns,
            row: 0,
            last_start: 0,
        })
    }

    /// The index of `column`, if the header names it.
    pub fn find(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }

    /// The index of `column`, or an error naming `flag`, the option that names it.
    pub fn column(&self, column: &str, flag: &str) -> Result<usize> {
        self.find(column)
            .ok_or_else(|| missing_column(&self.file, column, flag, &self.columns))
    }

    /// Reads the next row into `record`; false at the end of the file.
    pub fn next(&mut self, record: &mut ByteRecord) -> Result<bool> {
        match self.reader.read_byte_record(record) {
            Ok(true) => {
                self.row += 1;
                if let Some(position) = record.position() {
                    self.last_start = position.byte();
                }
                Ok(true)
            }
            Ok(false) => {
                self.check_quotes_closed()?;
                Ok(false)
            }
            Err(e) => Err(record_error(&self.file, self.row + 1, self.dialect, e)),
        }
    }

    /// The csv crate ends a quoted field left open at the end of the file there, which
    /// silently turns every line after the stray quote into one text.
    fn check_quotes_closed(&self) -> Result<()> {
        if self.dialect == Dialect::Tsv {
            return Ok(());
        }
        let mut tail = Vec::new();
        File::open(&self.file)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(self.last_start))?;
                f.read_to_end(&mut tail)
            })
            .with_context(|| format!("{}: cannot read", self.file.display()))?;
        if !ends_inside_quotes(&tail) {
            return Ok(());
        }
        let what = "a quoted field opens here and is never closed, so every line after it was read into this row; close the quote (RFC 4180: a `\"` inside a quoted field is doubled)";
        Err(match self.row {
            0 => anyhow::anyhow!("{} header row: {what}", self.file.display()),
            row => row_error(&self.file, row, what),
        })
    }
}

/// Whether CSV `bytes`, starting at a record's start, end inside a quoted field: the
/// csv crate's reading of quotes (a quote opens a field only as its first byte, `""`
/// inside one is a quote, bytes after a closing quote join the field).
fn ends_inside_quotes(bytes: &[u8]) -> bool {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    for &b in bytes {
        let ends_field = matches!(b, b',' | b'\n' | b'\r');
        state = match state {
            State::Quoted if b == b'"' => State::QuoteInQuoted,
            State::Quoted => State::Quoted,
            State::FieldStart | State::QuoteInQuoted if b == b'"' => State::Quoted,
            _ if ends_field => State::FieldStart,
            _ => State::Unquoted,
        };
    }
    state == State::Quoted
}

/// Appends the file's rows; CSV and TSV declare no label names.
pub(super) fn read(
    file: &Path,
    dialect: Dialect,
    opts: &LoadOptions,
    out: &mut RawSplit,
) -> Result<Option<Vec<String>>> {
    let mut rows = Rows::open(file, dialect)?;
    let text_index = rows.column(&opts.text_column, "--text-column")?;
    let label_index = rows.column(&opts.label_column, "--label-column")?;
    out.start_file(file);
    let mut record = ByteRecord::new();
    while rows.next(&mut record)? {
        let row = rows.row;
        let text = String::from_utf8(record[text_index].to_vec())
            .map_err(|_| row_error(file, row, "text is not UTF-8; re-encode the file as UTF-8"))?;
        let label = std::str::from_utf8(&record[label_index])
            .map_err(|_| "label is not UTF-8".to_string())
            .and_then(labels::from_text)
            .and_then(|l| labels::numbers_as(l, opts.numeric_labels))
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
    use crate::testdir::TestDir;

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
    fn csv_reads_labels_given_by_name() {
        let split = load(
            "t.csv",
            Dialect::Csv,
            b"text,label\na,positive\nb, negative\nc,\"positive\"\n",
        )
        .unwrap();
        assert_eq!(split.names, ["positive", "negative"]);
        assert_eq!(split.labels, [0, 1, 0]);
    }

    #[test]
    fn quotes_closed_at_the_end_of_the_file() {
        // Closed: at the end, doubled inside, before CRLF, after an empty last field.
        for content in [
            b"text,label\n\"a\",1\n".as_slice(),
            b"text,label\n\"a\"\"\",1",
            b"text,label\r\n\"a\r\nb\",1\r\n",
            b"label,text\n1,\"\"",
            b"label,text\n1,mid \" quote\n",
        ] {
            assert!(load("t.csv", Dialect::Csv, content).is_ok());
        }
        for tail in [
            b"\"open".as_slice(),
            b"1,\"a\"\"",
            b"1,\"a\nb",
            b"\"",
            b"1,\"a\n\"\"\n",
        ] {
            assert!(
                ends_inside_quotes(tail),
                "{}",
                String::from_utf8_lossy(tail)
            );
        }
        // A TSV never quotes, so a lone `"` there is text.
        let split = load("t.tsv", Dialect::Tsv, b"label\ttext\n1\t\"open\n").unwrap();
        assert_eq!(split.texts, ["\"open"]);
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
        assert!(tsv(b"0\tok\ninf\tbad\n").contains("t.tsv row 2: label inf is not an integer"));
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
        let open = error(
            "t.csv",
            Dialect::Csv,
            b"label,text\n0,ok\n1,\"stray\n0,next\n1,last\n",
        );
        assert!(
            open.contains("t.csv row 2: a quoted field opens here and is never closed"),
            "{open}"
        );
        let header = error("t.csv", Dialect::Csv, b"label,text,\"note\n0,ok,x\n");
        assert!(
            header.contains("t.csv header row: a quoted field"),
            "{header}"
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
