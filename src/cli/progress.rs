//! Progress for long work: a bar on a terminal, plain lines otherwise (logs, CI, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// "1 row", "2 rows": `n` and a noun whose plural takes an s.
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    last_line: Instant,
}

/// Plain-line mode prints at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(total: u64, label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            last_line: Instant::now(),
        }
    }

    pub fn set(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if self.last_line.elapsed() >= LINE_EVERY && done < self.total => {
                eprintln!("{}: {done}/{}", self.label, self.total);
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    /// A log line that does not tear the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Progress of work counted in rows and tokens, with or without a known total: rows/s,
/// tokens/s and (with a total) an ETA while it runs, and a closing line with rows,
/// tokens, wall time and tokens/s.
pub struct Throughput {
    bar: Option<ProgressBar>,
    label: String,
    total: Option<u64>,
    /// Rows done before this process started (a resumed job): counted in the position,
    /// not in the rates.
    skipped: u64,
    rows: u64,
    tokens: u64,
    started: Instant,
    last_line: Instant,
}

impl Throughput {
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::new(n),
                    "{prefix} [{bar:30}] {pos}/{len} rows, {msg}, eta {eta}",
                ),
                None => (ProgressBar::no_length(), "{prefix} {pos} rows, {msg}"),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            skipped: 0,
            rows: 0,
            tokens: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Rows a previous process completed: shown as done, left out of the rates.
    pub fn skip(&mut self, rows: u64) {
        self.skipped += rows;
        if let Some(bar) = &self.bar {
            bar.set_position(self.skipped + self.rows);
        }
    }

    pub fn add(&mut self, rows: u64, tokens: u64) {
        self.rows += rows;
        self.tokens += tokens;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let (rows_s, tokens_s) = (self.rows as f64 / secs, self.tokens as f64 / secs);
        let done = self.skipped + self.rows;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(format!("{rows_s:.0} rows/s, {tokens_s:.0} tokens/s"));
            }
            None if self.last_line.elapsed() >= LINE_EVERY => {
                let line = match self.total {
                    Some(total) => {
                        let eta = total.saturating_sub(done) as f64 / rows_s.max(1e-9);
                        format!(
                            "{}: {done}/{total} rows, {rows_s:.0} rows/s, {tokens_s:.0} tokens/s, eta {eta:.0}s",
                            self.label
                        )
                    }
                    None => format!(
                        "{}: {done} rows, {rows_s:.0} rows/s, {tokens_s:.0} tokens/s",
                        self.label
                    ),
                };
                eprintln!("{line}");
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    /// Clears the bar and prints the closing line.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let resumed = if self.skipped > 0 {
            format!(
                " (and {} done before the resume)",
                count(self.skipped as usize, "row")
            )
        } else {
            String::new()
        };
        eprintln!(
            "{}: {}, {} tokens in {secs:.1}s ({:.0} tokens/s){resumed}",
            self.label,
            count(self.rows as usize, "row"),
            self.tokens,
            self.tokens as f64 / secs.max(1e-9)
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_take_the_plural_except_one() {
        assert_eq!(super::count(1, "row"), "1 row");
        assert_eq!(super::count(0, "epoch"), "0 epochs");
        assert_eq!(super::count(12, "text"), "12 texts");
    }
}
