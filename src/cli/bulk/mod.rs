//! Bulk jobs: `predict --data` and `encode --data` over a whole split, read a chunk of
//! rows at a time and written as they are done, resumable and shardable.
//!
//! Resume design: atomic parts assembled at the end. Each chunk of rows becomes one
//! file in `<out>.parts/`, written to a temporary name and renamed (`fsio`), so a kill
//! at any moment leaves complete parts and at most a stray temporary. `job.json` there
//! names the job; the same command finds it, skips the chunks whose parts exist (once
//! their texts hash as they did when written), and encodes the rest. When every part exists they are streamed into `<out>` (temporary,
//! then renamed), its manifest `<out>.bulk.json` is written, and the parts are removed.
//! Parquet row groups appended in place were the other choice: a killed writer leaves no
//! footer, so resuming would mean reading the torn file's pages back and rewriting it;
//! separate parts need no repair, are the same for JSONL, parquet and safetensors, and
//! cost one sequential copy at the end.
//!
//! Chunk `i` of a job is rows `start + i * chunk_rows ..` of its range: a resumed job
//! encodes exactly the chunks (and so the batches) the uninterrupted one would have, and
//! its output is byte-identical.

mod feature_rows;
mod features_in;
mod job;
mod merge;
mod ranges;
mod sink;
mod stages;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

pub use features_in::{read_encoded, EncodedFile};
pub use job::{run_encode, run_predict};
pub use merge::{run as run_merge, MergeArgs};
pub use ranges::{first_uncovered, FeatureCheck, Uncovered};

/// Rows per chunk unless --chunk-rows says otherwise: a few encoder batches' worth of
/// length choice, a few MB of text and features.
const DEFAULT_CHUNK_ROWS: usize = 2048;

/// The dataset side of a bulk job: which rows, from where.
#[derive(Args, Clone, Debug)]
pub struct BulkArgs {
    /// Label or encode a whole dataset split (any form train accepts: a save_to_disk
    /// folder, .parquet/.jsonl/.csv/.tsv files or folders, a hub id), read in chunks;
    /// needs --out.
    #[arg(long, help_heading = "Bulk (--data)")]
    pub data: Option<String>,
    /// Split of --data [default: the file's own split when --data is a file
    /// (test.jsonl is test), else train].
    #[arg(long, requires = "data", help_heading = "Bulk (--data)")]
    pub split: Option<String>,
    /// Column holding the text.
    #[arg(
        long,
        default_value = "text",
        requires = "data",
        help_heading = "Bulk (--data)"
    )]
    pub text_column: String,
    /// Column holding the label: predict reads it when present (a class id, or a name of
    /// the head's) and reports accuracy; encode does not read it.
    #[arg(
        long,
        default_value = "label",
        requires = "data",
        help_heading = "Bulk (--data)"
    )]
    pub label_column: String,
    /// Take the K-th of N contiguous row ranges of the split (K from 0 to N-1), so that N
    /// processes cover it exactly once; join their outputs with `bertcls merge`.
    #[arg(
        long,
        value_name = "K/N",
        requires = "data",
        help_heading = "Bulk (--data)"
    )]
    pub shard: Option<Shard>,
    /// Rows read, encoded and written at a time; a killed job resumes after the last
    /// complete chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS, allow_negative_numbers = true, requires = "data", help_heading = "Bulk (--data)")]
    pub chunk_rows: usize,
}

/// `K/N`: the K-th (from 0) of N contiguous row ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |(k, n): (&str, &str)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?));
        match s.split_once('/').and_then(parse) {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => Err(format!(
                "--shard {s}: expected K/N with 0 <= K < N (e.g. 0/4 .. 3/4; a Slurm array index or JOB_COMPLETION_INDEX is K)"
            )),
        }
    }
}

impl Shard {
    /// Rows `[start, end)` of `rows`: shard K starts at floor(K * rows / N).
    pub fn range(&self, rows: usize) -> (usize, usize) {
        let at = |k: usize| (k as u128 * rows as u128 / self.count as u128) as usize;
        (at(self.index), at(self.index + 1))
    }
}

impl BulkArgs {
    fn check(&self, out: Option<&PathBuf>) -> Result<PathBuf> {
        if self.chunk_rows == 0 {
            bail!("--chunk-rows 0: give a positive number of rows");
        }
        match out {
            // Found now, not when the finished output is renamed onto it.
            Some(out) if out.is_dir() => bail!(
                "--out {}: is a folder: pass the path of the file to write",
                out.display()
            ),
            // The manifest is written last, after the whole output: a folder in its
            // place would otherwise cost the job its every chunk.
            Some(out) if job::manifest_path(out).is_dir() => bail!(
                "--out {}: {} (where its .bulk.json manifest goes) is a folder: remove it, or pick another --out",
                out.display(),
                job::manifest_path(out).display()
            ),
            Some(out) => Ok(out.clone()),
            None => bail!("--data needs --out FILE (.parquet or .jsonl for predict, .parquet or .safetensors for encode)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_in_order() {
        for rows in [0, 1, 7, 10, 1001] {
            for count in 1..=5 {
                let mut next = 0;
                for index in 0..count {
                    let (start, end) = Shard { index, count }.range(rows);
                    assert_eq!(start, next);
                    next = end;
                }
                assert_eq!(next, rows);
            }
        }
        assert_eq!("2/4".parse::<Shard>().unwrap().range(10), (5, 7));
        for bad in ["4/4", "1/0", "a/2", "1", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
