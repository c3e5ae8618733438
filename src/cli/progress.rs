//! Progress for long work: a bar on a terminal, plain lines otherwise (logs, CI, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

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
