//! Issue 8, "a reader that cannot be made to panic": every reader of untrusted bytes is
//! fed mutations of valid fixtures (bit flips, truncation, extension, splices, and
//! overwrites with extreme numbers) and must end in `Ok` or a one-line error: never a
//! panic (caught with `catch_unwind` and reported with its reader, seed and case), an
//! abort, or more than 512 MiB allocated at the peak (a per-thread counting allocator).
//!
//! A small seeded loop rather than `proptest`: the inputs are byte blobs, where shrinking
//! adds little; the case count is fixed and printed; a failure names the seed and case to
//! replay; and it needs no new crate.

mod common;
#[path = "common/peak_alloc.rs"]
mod peak_alloc;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bertcls::data::chunked::open_split;
use bertcls::data::{load, LoadOptions};
use bertcls::model::{BertConfig, ModelDir};
use bertcls::tokenize::BertTokenizer;
use common::*;
use peak_alloc::peak_during;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MAX_PEAK: usize = 512 << 20;

/// Byte strings that stress parsers: huge and negative numbers, odd bytes.
const EXTREMES: &[&[u8]] = &[
    b"18446744073709551615",
    b"-1",
    b"0",
    b"1e308",
    b"NaN",
    b"\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x00\x00\x00\x00",
    b"\"",
    b"\n",
    b"\t",
    b"\xf0\x9f",
];

fn mutate(valid: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut b = valid.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let at = |rng: &mut StdRng, b: &Vec<u8>| rng.random_range(0..=b.len());
        match rng.random_range(0..5) {
            0 => {
                for _ in 0..rng.random_range(1..=8) {
                    if !b.is_empty() {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            1 => {
                let i = at(rng, &b);
                b.truncate(i);
            }
            2 => {
                let n = rng.random_range(1..64);
                let i = at(rng, &b);
                let extra: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(i..i, extra);
            }
            3 => {
                // Splice: a piece of the file copied elsewhere in it.
                if !b.is_empty() {
                    let s = rng.random_range(0..b.len());
                    let e = (s + rng.random_range(1..256)).min(b.len());
                    let piece = b[s..e].to_vec();
                    let i = at(rng, &b);
                    b.splice(i..i, piece);
                }
            }
            _ => {
                let x = EXTREMES[rng.random_range(0..EXTREMES.len())];
                let i = at(rng, &b);
                let end = (i + x.len()).min(b.len());
                b.splice(i..end, x.iter().copied());
            }
        }
    }
    b
}

/// Runs `cases` mutations of `file` (inside a copy of `dir`) through `read`.
fn fuzz(
    reader: &str,
    dir: &Path,
    file: &str,
    cases: u64,
    read: impl Fn(&Path) -> anyhow::Result<()>,
) {
    let work = std::env::temp_dir().join(format!(
        "bertcls-mutation-{}-{}",
        std::process::id(),
        reader.replace(' ', "-")
    ));
    let _ = std::fs::remove_dir_all(&work);
    copy_files(dir, &work);
    let valid = std::fs::read(dir.join(file)).unwrap();
    read(&work).unwrap_or_else(|e| panic!("{reader}: the valid fixture fails: {e:#}"));
    let seed = 8;
    let mut rng = StdRng::seed_from_u64(seed ^ reader.len() as u64);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..cases {
        let bytes = mutate(&valid, &mut rng);
        std::fs::write(work.join(file), &bytes).unwrap();
        let (outcome, peak) = peak_during(|| catch_unwind(AssertUnwindSafe(|| read(&work))));
        let replay = format!("{reader}, seed {seed}, case {case} ({} bytes)", bytes.len());
        match outcome {
            Err(_) => panic!("{replay}: the reader panicked"),
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                let line = format!("{e:#}");
                assert!(!line.contains('\n'), "{replay}: a multi-line error: {line}");
                refused += 1;
            }
        }
        assert!(
            peak < MAX_PEAK,
            "{replay}: {peak} bytes allocated at the peak"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("{reader}: {cases} cases, {ok} read, {refused} refused in one line, 0 panics");
}

fn tiny() -> PathBuf {
    fixtures().join("tiny/model")
}

fn data_files() -> PathBuf {
    fixtures().join("data/tiny-files")
}

fn read_data(path: &Path) -> anyhow::Result<()> {
    load(path, &LoadOptions::default()).map(|_| ())
}

#[test]
fn config_json() {
    fuzz("config.json", &tiny(), "config.json", 1500, |d| {
        BertConfig::from_file(&d.join("config.json")).map(|_| ())
    });
}

#[test]
fn tokenizer_files() {
    let read = |d: &Path| -> anyhow::Result<()> {
        let t = BertTokenizer::from_dir(d, 64)?;
        t.encode("Hello, 世界! a long text")?;
        Ok(())
    };
    fuzz("tokenizer.json", &tiny(), "tokenizer.json", 1000, read);
    let vocab_only = fixtures().join("tiny/model-f16-prefixed");
    fuzz("vocab.txt", &vocab_only, "vocab.txt", 500, read);
    fuzz(
        "tokenizer_config.json",
        &vocab_only,
        "tokenizer_config.json",
        500,
        read,
    );
}

#[test]
fn safetensors_and_pth() {
    let heads = fixtures();
    for file in [
        "recipe-head.safetensors",
        "recipe-head.pth",
        "head.safetensors",
    ] {
        fuzz(file, &heads, file, 700, |d| {
            bertcls::checkpoint::load_head(&d.join(file), None).map(|_| ())
        });
    }
    fuzz(
        "model.safetensors",
        &tiny(),
        "model.safetensors",
        500,
        |d| ModelDir::open(d)?.load().map(|_| ()),
    );
}

#[test]
fn data_readers() {
    for file in ["train.jsonl", "train.csv", "train.tsv", "train.parquet"] {
        fuzz(file, &data_files(), file, 600, |d| read_data(&d.join(file)));
    }
    let arrow = fixtures().join("data/tiny-dataset");
    fuzz(
        "arrow IPC stream",
        &arrow,
        "data-00000-of-00001.arrow",
        600,
        read_data,
    );
}

/// Opens the split as bulk jobs do and reads every chunk.
fn read_chunked(path: &Path) -> anyhow::Result<()> {
    let split = open_split(path, "train", &LoadOptions::default())?;
    for chunk in split.chunks(0, split.rows(), 3) {
        chunk?;
    }
    Ok(())
}

#[test]
fn chunked_readers() {
    for file in ["train.jsonl", "train.csv", "train.tsv", "train.parquet"] {
        fuzz(&format!("chunked {file}"), &data_files(), file, 600, |d| {
            read_chunked(&d.join(file))
        });
    }
    fuzz(
        "chunked arrow IPC stream",
        &fixtures().join("data/tiny-dataset"),
        "data-00000-of-00001.arrow",
        600,
        read_chunked,
    );
}
