//! Texts from arguments, a file or standard input, handed out a bounded chunk at a time
//! so that a command labelling millions of lines holds only one chunk of them.

use std::io::{BufRead, BufReader, IsTerminal};

use anyhow::{anyhow, bail, Result};

use super::common::{open_text_file, TextArgs};

/// At most this many texts in a chunk: enough to fill the encoder's batches many times
/// over (length-sorted packing needs a choice of lengths), little beside the model.
pub const CHUNK_TEXTS: usize = 1024;
/// And at most about this many bytes of text, so that a chunk of long lines stays small.
pub const CHUNK_BYTES: usize = 4 << 20;

enum Source {
    Args(std::vec::IntoIter<String>),
    Lines(Box<dyn BufRead>),
}

/// One text per non-empty line or per argument (a blank one refused), in chunks of at
/// most [`CHUNK_TEXTS`] texts and about [`CHUNK_BYTES`] bytes.
pub struct TextChunks {
    source: Source,
    /// Names the input in errors: "standard input" or the file's path.
    name: String,
    /// Lines read so far, to name the line of a bad one.
    line: usize,
}

impl TextChunks {
    /// The texts `input` names: its arguments, its --file, or standard input when that
    /// is not a terminal. None when there is nothing but a terminal (the prompt's case).
    pub fn open(input: &TextArgs) -> Result<Option<TextChunks>> {
        let (source, name) = if let Some(path) = &input.file {
            let file = open_text_file(path)?;
            let reader: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 16, file));
            (Source::Lines(reader), path.display().to_string())
        } else if !input.texts.is_empty() {
            // A blank line of a file or standard input separates texts and is skipped; a
            // blank argument (an unset "$TEXT") would get a label for no text at all.
            if let Some(i) = input.texts.iter().position(|t| t.trim().is_empty()) {
                bail!(
                    "argument {} is blank: there is no text to label; drop it",
                    i + 1
                );
            }
            (
                Source::Args(input.texts.clone().into_iter()),
                "arguments".to_string(),
            )
        } else if std::io::stdin().is_terminal() {
            return Ok(None);
        } else {
            let reader: Box<dyn BufRead> = Box::new(std::io::stdin().lock());
            (Source::Lines(reader), "standard input".to_string())
        };
        Ok(Some(TextChunks {
            source,
            name,
            line: 0,
        }))
    }

    #[cfg(test)]
    pub fn from_reader(reader: impl BufRead + 'static, name: &str) -> TextChunks {
        TextChunks {
            source: Source::Lines(Box::new(reader)),
            name: name.to_string(),
            line: 0,
        }
    }

    /// The next chunk of texts; None once the input is exhausted.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<String>>> {
        let mut texts = Vec::new();
        let mut bytes = 0;
        while texts.len() < CHUNK_TEXTS && bytes < CHUNK_BYTES {
            let Some(text) = self.next_text()? else {
                break;
            };
            bytes += text.len();
            texts.push(text);
        }
        Ok((!texts.is_empty()).then_some(texts))
    }

    fn next_text(&mut self) -> Result<Option<String>> {
        let reader = match &mut self.source {
            Source::Args(args) => return Ok(args.next()),
            Source::Lines(reader) => reader,
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| anyhow!("cannot read {} ({e})", self.name))?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            // A UTF-8 byte-order mark (Windows editors write one) is not part of the text.
            let bytes = match self.line {
                1 => bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes),
                _ => bytes,
            };
            let text = std::str::from_utf8(bytes).map_err(|_| {
                anyhow!(
                    "{} line {}: text is not UTF-8: convert it to UTF-8 (e.g. iconv -f GBK -t UTF-8)",
                    self.name,
                    self.line
                )
            })?;
            if !text.trim().is_empty() {
                return Ok(Some(text.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(bytes: &'static [u8]) -> Result<Vec<Vec<String>>> {
        let mut chunks = TextChunks::from_reader(bytes, "in.txt");
        let mut all = Vec::new();
        while let Some(chunk) = chunks.next_chunk()? {
            all.push(chunk);
        }
        Ok(all)
    }

    #[test]
    fn skips_blank_lines_and_strips_line_ends() {
        let all = chunks_of(b"a\r\n\n  \nb\nc").unwrap();
        assert_eq!(all, [vec!["a", "b", "c"]]);
    }

    #[test]
    fn a_leading_byte_order_mark_is_not_text() {
        let all = chunks_of(b"\xEF\xBB\xBF\xE5\xA5\xBD\r\n\xEF\xBB\xBFb\n").unwrap();
        // Only the file's first bytes are a mark; later, U+FEFF is the text's own.
        assert_eq!(all, [vec!["好", "\u{feff}b"]]);
    }

    #[test]
    fn chunks_hold_at_most_chunk_texts() {
        let text: &'static [u8] = "x\n".repeat(2 * CHUNK_TEXTS + 3).leak().as_bytes();
        let sizes: Vec<usize> = chunks_of(text).unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [CHUNK_TEXTS, CHUNK_TEXTS, 3]);
    }

    #[test]
    fn chunks_of_long_lines_stop_near_chunk_bytes() {
        let line = "y".repeat(CHUNK_BYTES / 4) + "\n";
        let text: &'static [u8] = line.repeat(9).leak().as_bytes();
        let sizes: Vec<usize> = chunks_of(text).unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 1]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named() {
        let err = chunks_of(b"ok\n\n\xff\n").unwrap_err().to_string();
        assert!(err.starts_with("in.txt line 3: text is not UTF-8"), "{err}");
    }
}
