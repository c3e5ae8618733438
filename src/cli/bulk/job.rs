//! One bulk job: its identity, its parts folder, the chunk loop and the assembly.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::ranges::{check_tiling, ranges_of, TextRange};
use super::sink::{
    assemble, count_rows, part_bytes, Body, ChunkOut, OutFormat, PartFeatures, PartRows,
};
use super::stages::{Stage, StageTimes};
use super::{BulkArgs, Shard};
use crate::cli::common::{
    encode_tokenized, load_model, tokenize_texts, DeviceArgs, EncoderDevice, LoadedModel, ModelArgs,
};
use crate::cli::feature_source::FeatureSource;
use crate::cli::predict::{predict_features, Classifier, HeadArgs};
use crate::cli::progress::Throughput;
use crate::data::chunked::{first_label_past, open_split, ChunkedSplit, RowChunk};
use crate::data::{file_splits, LoadOptions, NumericLabels};
use crate::features::{hash_features, hash_texts, sha256_file};
use crate::fsio::{atomic_write, try_lock};
use crate::hub::resolve_dataset;

/// Test-only fault injection: abort (as a kill would) after writing this many parts...
const ABORT_AFTER_CHUNKS: &str = "BERTCLS_TEST_ABORT_AFTER_CHUNKS";
/// ... or after the output is renamed into place, before its manifest is written.
const ABORT_BEFORE_MANIFEST: &str = "BERTCLS_TEST_ABORT_BEFORE_MANIFEST";

/// What a chunk turns into: predictions or features.
enum Work<'a> {
    Predict {
        classifier: &'a Classifier,
        names: Arc<Vec<String>>,
    },
    Encode,
}

pub fn run_predict(
    bulk: &BulkArgs,
    out: Option<&PathBuf>,
    with_text: bool,
    head: &HeadArgs,
    device: &DeviceArgs,
) -> Result<()> {
    let out = bulk.check(out)?;
    let format = out_format(&out, &[OutFormat::Parquet, OutFormat::Jsonl], "predict")?;
    let _lock = lock_out(&out)?;
    let classifier = head.load()?;
    let names = Arc::new(classifier.names_or_ids());
    let head = (names.to_vec(), classifier.numeric_labels);
    let split = open(bulk, classifier.model.offline(), Some(head))?;
    // Found while the split's rows were counted: refused before the model loads.
    if let Some((row, label)) = split.label_past_head {
        return Err(label_past_head(&split, row, label, &names));
    }
    let rows = shard_rows(bulk, &split)?;
    let mut model = classifier.load_model(device)?;
    let head_sha = sha256_file(&classifier.source)?;
    let identity = identity(
        "predict",
        &split,
        bulk,
        &mut model,
        with_text,
        json!({
            "head_sha256": head_sha,
            "temperature": classifier.temperature,
            "labels": *names,
        }),
    )?;
    let work = Work::Predict {
        classifier: &classifier,
        names,
    };
    run_job(
        bulk,
        &out,
        format,
        with_text,
        (&split, rows),
        &mut model,
        identity,
        work,
    )
}

pub fn run_encode(
    bulk: &BulkArgs,
    out: Option<&PathBuf>,
    model_args: &ModelArgs,
    device: &EncoderDevice,
) -> Result<()> {
    let out = bulk.check(out)?;
    let format = out_format(
        &out,
        &[OutFormat::Parquet, OutFormat::Safetensors],
        "encode",
    )?;
    let _lock = lock_out(&out)?;
    let split = open(bulk, model_args.offline(), None)?;
    let rows = shard_rows(bulk, &split)?;
    let mut model = load_model(model_args, device)?;
    let identity = identity("encode", &split, bulk, &mut model, false, Value::Null)?;
    run_job(
        bulk,
        &out,
        format,
        false,
        (&split, rows),
        &mut model,
        identity,
        Work::Encode,
    )
}

fn out_format(out: &Path, allowed: &[OutFormat], command: &str) -> Result<OutFormat> {
    match OutFormat::of(out).filter(|f| allowed.contains(f)) {
        Some(format) => Ok(format),
        None => {
            let exts: Vec<&str> = allowed.iter().map(|f| f.ext()).collect();
            bail!(
                "--out {}: {command} --data writes .{}; name the file with one of these extensions",
                out.display(),
                exts.join(" or .")
            )
        }
    }
}

/// Opens the job's split; with `head`, the head's names and how it reads numeric labels,
/// its labels are read, names given their ids, and checked against the head's classes as
/// the rows are counted ([`ChunkedSplit::label_past_head`]).
fn open(
    bulk: &BulkArgs,
    offline: bool,
    head: Option<(Vec<String>, NumericLabels)>,
) -> Result<ChunkedSplit> {
    let spec = bulk.data.as_deref().expect("bulk jobs have --data");
    let resolved = resolve_dataset(spec, offline)?;
    let opts = LoadOptions {
        text_column: bulk.text_column.clone(),
        label_column: bulk.label_column.clone(),
        numeric_labels: head.as_ref().map_or_else(NumericLabels::default, |h| h.1),
        head_labels: head.map(|h| h.0),
        ..LoadOptions::default()
    };
    let split = match &bulk.split {
        Some(split) => split.clone(),
        // A file named for a split brings its siblings as the other splits, but a bulk
        // job over `--data test.jsonl` is meant to label that file, not train.jsonl.
        None => file_splits(&resolved.path)?.map_or_else(|| "train".to_string(), |f| f.split),
    };
    open_split(&resolved.path, &split, &opts)
}

/// Everything that decides a job's rows and values, and so must agree between a job
/// and its resume, and between the shards a merge joins. The data is named by its
/// split, row count and files' names and sizes (cheap, and what differs between two
/// exports); the model by the feature cache's
/// [`EncodeSpec`](crate::features::EncodeSpec) (weights sha256, tokenizer fingerprint,
/// max_length, backend, precision, pooling, long-text mode), so that
/// `train --features-from` compares an encode output with the features it would make.
/// Backend and precision are part of it because they change the values: a CPU job is
/// not resumed or merged with GPU or bf16 parts, whose features differ beyond 1e-5.
fn identity(
    kind: &str,
    split: &ChunkedSplit,
    bulk: &BulkArgs,
    model: &mut LoadedModel,
    with_text: bool,
    head: Value,
) -> Result<Value> {
    let spec = FeatureSource::new(None).model_spec(model)?;
    let files: Vec<Value> = split
        .files()
        .iter()
        .map(|f| {
            let bytes = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            json!([name, bytes])
        })
        .collect();
    Ok(json!({
        "kind": kind,
        "data": {
            "split": split.split,
            "rows": split.rows(),
            "files": files,
            "text_column": bulk.text_column,
            "label_column": bulk.label_column,
        },
        "model": serde_json::to_value(spec)?,
        "head": head,
        "with_text": with_text,
    }))
}

/// The manifest of an output: the job's identity and the rows it holds, with the
/// label counts for accuracy.
pub(super) fn manifest_path(out: &Path) -> PathBuf {
    beside(out, ".bulk.json")
}

/// `<out><suffix>`: the files a job keeps beside its output, named after it whole
/// (`x.parquet.lock`, not `x.lock`, so two outputs differing in extension never share one).
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Takes `<out>.lock` for the job's life, before the model loads: two processes
/// writing one output would mix their parts. The file stays beside the output (see
/// `fsio::try_lock` for why it is never removed).
fn lock_out(out: &Path) -> Result<File> {
    // As every other output of bertcls, a missing parent folder is created.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::fsio::create_out_folder("--out", out, parent)?;
    }
    let path = beside(out, ".lock");
    match try_lock(&path) {
        Ok(Some(file)) => {
            remove_stale_output_temporaries(out);
            Ok(file)
        }
        Ok(None) => bail!(
            "--out {}: another bertcls process{} is writing it: wait for it to end, or pick another --out",
            out.display(),
            crate::fsio::lock_holder(&path)
        ),
        Err(e) => bail!(
            "--out {}: cannot lock {} ({e}): pass a writable folder",
            out.display(),
            path.display()
        ),
    }
}

/// Removes what a killed assembly or manifest write left beside `out` (`.NAME.tmp-PID`,
/// `.NAME.bulk.json.bertcls-tmp-PID`): as large as the output, hidden, and never read.
/// A merge of `out` takes no `<out>.lock`, so only temporaries no live process holds go
/// (`fsio::remove_unheld_files`).
pub(super) fn remove_stale_output_temporaries(out: &Path) {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefixes = [
        format!(".{name}.tmp-"),
        format!(".{name}.bulk.json.bertcls-tmp-"),
    ];
    let removed = crate::fsio::remove_unheld_files(dir, |file| {
        prefixes.iter().any(|prefix| {
            file.strip_prefix(prefix.as_str())
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        })
    });
    if removed > 0 {
        eprintln!(
            "removed {removed} stale temporary file(s) of {} (left by a killed write)",
            out.display()
        );
    }
}

fn parts_dir(out: &Path) -> PathBuf {
    beside(out, ".parts")
}

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The bulk manifest at `path`, or a line naming it as corrupt and ending in `remedy`.
pub(super) fn read_manifest(path: &Path, remedy: &str) -> Result<Value> {
    read_json(path)
        .and_then(|m| {
            if m.is_object() {
                Ok(m)
            } else {
                bail!(
                    "{} is not a bertcls bulk manifest (a JSON object)",
                    path.display()
                )
            }
        })
        .map_err(|e| anyhow!("{e:#}; it is corrupt: {remedy}"))
}

/// Why `Counts::add` failed, said of the file whose counts were added last.
pub(super) const OVERFLOW: &str = "its token count takes the total past 2^64";

#[derive(Default, Clone, Copy)]
pub(super) struct Counts {
    pub rows: u64,
    pub tokens: u64,
    pub labelled: u64,
    pub correct: u64,
}

impl Counts {
    pub fn to_json(self) -> Value {
        json!({"rows": self.rows, "tokens": self.tokens, "labelled": self.labelled, "correct": self.correct})
    }

    /// The counts a chunk's stats or a part's manifest records for its `rows` rows, or
    /// why they cannot be a job's. Their sums become the output's manifest and accuracy
    /// line: an edited or damaged file's numbers would wrap them, or give an accuracy
    /// above 1, in a file that looks whole.
    pub fn from_json(v: &Value, rows: u64) -> std::result::Result<Counts, String> {
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("its counts have no whole number \"{k}\""))
        };
        let counts = Counts {
            rows: get("rows")?,
            tokens: get("tokens")?,
            labelled: get("labelled")?,
            correct: get("correct")?,
        };
        // Tokens are bounded only loosely (no row is 2^32 tokens, even in windows), so
        // that the file whose count is absurd is the one named, not the one after it.
        if counts.rows != rows
            || counts.correct > counts.labelled
            || counts.labelled > rows
            || counts.tokens > rows.saturating_mul(1 << 32)
        {
            return Err(format!(
                "its counts (rows {}, tokens {}, labelled {}, correct {}) are not those of its {rows} rows",
                counts.rows, counts.tokens, counts.labelled, counts.correct
            ));
        }
        Ok(counts)
    }

    /// `None` where a sum would overflow, which the loose bound on tokens leaves possible.
    pub fn add(&mut self, o: Counts) -> Option<()> {
        *self = Counts {
            rows: self.rows.checked_add(o.rows)?,
            tokens: self.tokens.checked_add(o.tokens)?,
            labelled: self.labelled.checked_add(o.labelled)?,
            correct: self.correct.checked_add(o.correct)?,
        };
        Some(())
    }

    /// The accuracy line `test` would give, when the rows had labels.
    pub fn accuracy_line(&self) -> Option<String> {
        (self.labelled > 0).then(|| {
            format!(
                "accuracy {:.4} ({}/{} labelled rows)",
                self.correct as f64 / self.labelled as f64,
                self.correct,
                self.labelled
            )
        })
    }
}

/// The rows `--shard` gives this job, refused where there are none: found before the
/// model loads, so that the refusal costs no load.
fn shard_rows(bulk: &BulkArgs, split: &ChunkedSplit) -> Result<(usize, usize)> {
    let total = split.rows();
    let shard = bulk.shard.unwrap_or(Shard { index: 0, count: 1 });
    let (start, end) = shard.range(total);
    if total == 0 {
        bail!(
            "split \"{}\" of {} has no rows: add rows, or pick another with --split",
            split.split,
            split.source.display()
        );
    }
    if start == end {
        bail!(
            "--shard {}/{} holds no rows: split \"{}\" has {total} rows, so at most {total} shards can each hold one; pass --shard K/N with N at most {total}",
            shard.index,
            shard.count,
            split.split
        );
    }
    Ok((start, end))
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    bulk: &BulkArgs,
    out: &Path,
    format: OutFormat,
    with_text: bool,
    (split, (start, end)): (&ChunkedSplit, (usize, usize)),
    model: &mut LoadedModel,
    identity: Value,
    work: Work,
) -> Result<()> {
    let total = split.rows();
    let job = json!({
        "identity": identity,
        "start": start,
        "end": end,
        "chunk_rows": bulk.chunk_rows,
        "format": format.ext(),
    });
    let parts = parts_dir(out);
    let manifest = manifest_path(out);
    if out.is_file() && manifest.is_file() {
        let done = read_json(&manifest).map_err(|e| {
            anyhow!(
                "{e:#}: delete it and {} to run the job again",
                out.display()
            )
        })?;
        let same_rows = done["start"] == job["start"] && done["end"] == job["end"];
        if done["identity"] == job["identity"] && same_rows {
            let want = (end - start) as u64;
            match count_rows(format, out) {
                Ok(rows) if rows == want => {
                    check_texts_unchanged(split, &done, out, start, end, bulk.chunk_rows)?;
                    let _ = std::fs::remove_dir_all(&parts);
                    eprintln!(
                        "{} is already complete (rows {start}..{end}); nothing to do",
                        out.display()
                    );
                    return Ok(());
                }
                Ok(rows) => eprintln!(
                    "{} holds {rows} rows where its manifest gives {want} (rows {start}..{end}): writing it again",
                    out.display()
                ),
                Err(why) => eprintln!(
                    "{} does not hold the rows its manifest gives ({why:#}): writing it again",
                    out.display()
                ),
            }
        } else {
            // Replaced only once this job's output is whole (renamed onto it), so a job
            // killed on the way leaves it as it was; said now, while it can be kept.
            let differs = if done["identity"] != job["identity"] {
                first_difference("", &done["identity"], &job["identity"])
            } else {
                format!(
                    "it holds rows {}..{}, this job {start}..{end}",
                    done["start"], done["end"]
                )
            };
            eprintln!(
                "{} holds the output of another job ({differs}): this job replaces it when it finishes; stop now and pick another --out to keep it",
                out.display()
            );
        }
    }
    let job_file = parts.join("job.json");
    if job_file.is_file() {
        let recorded = read_json(&job_file)
            .map_err(|e| anyhow!("{e:#}: remove {}, or pick another --out", parts.display()))?;
        if recorded != job {
            bail!(
                "{} holds the parts of another job (other data, model, head, shard or --chunk-rows): remove it, or pick another --out",
                parts.display()
            );
        }
        remove_temporaries(&parts)?;
    } else {
        std::fs::create_dir_all(&parts)
            .map_err(|e| crate::fsio::cannot_create("create", &parts, e))?;
        atomic_write(&job_file, job.to_string().as_bytes())?;
    }

    let chunk_rows = bulk.chunk_rows;
    let part = |first: usize| parts.join(format!("chunk-{first:012}.{}", format.ext()));
    let stats = |first: usize| parts.join(format!("chunk-{first:012}.json"));
    let firsts: Vec<usize> = (start..end).step_by(chunk_rows).collect();
    let mut meter = Throughput::new(
        &format!("{} {}", kind_verb(&work), split.split),
        Some((end - start) as u64),
    );
    // Chunks already written by a killed run are a prefix.
    let resume_at = firsts
        .iter()
        .position(|&f| !part(f).is_file())
        .unwrap_or(firsts.len());
    // Said once the chunks it counts have had their texts verified, just before the
    // first chunk is encoded: a resume refused for changed texts has resumed nothing.
    let mut resuming = (resume_at > 0 && resume_at < firsts.len()).then(|| {
        format!(
            "resuming {}: {} of {} chunks already done",
            out.display(),
            resume_at,
            firsts.len()
        )
    });
    let abort_after: Option<usize> = std::env::var(ABORT_AFTER_CHUNKS)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut written = 0;
    // Each chunk's stats in chunk order, as verified or as written: the assembly below
    // takes them from here rather than reading every file again.
    let mut all_stats = Vec::with_capacity(firsts.len());
    let mut counts = Counts::default();
    // The data is known by its files' names and sizes only, so the texts of every chunk
    // already written are read and hashed again (cheap next to encoding them): data
    // edited in place since must not leave its old rows in the output.
    let mut times = StageTimes::new();
    let mut chunks = split.chunks(start, end, chunk_rows);
    while let Some(chunk) = times.time(Stage::Reading, || chunks.next()) {
        let chunk = chunk?;
        let texts_sha256 = times.time(Stage::Reading, || hash_texts(&chunk.texts));
        if part(chunk.first).is_file() {
            // The part is what makes a chunk done: deleting it writes both files again.
            let corrupt = |why: String| {
                anyhow!(
                    "{}: {why}: delete {} (or all of {}) and run the command again",
                    stats(chunk.first).display(),
                    part(chunk.first).display(),
                    parts.display()
                )
            };
            let written_from = times
                .time(Stage::Reading, || read_json(&stats(chunk.first)))
                .map_err(|e| {
                    corrupt(format!(
                        "not a readable chunk record ({:#})",
                        e.root_cause()
                    ))
                })?;
            if !written_from["texts_sha256"].is_string() {
                return Err(corrupt(
                    "not a bertcls chunk record (no texts_sha256)".into(),
                ));
            }
            if written_from["texts_sha256"] != texts_sha256.as_str() {
                bail!(
                    "--out {}: the texts of rows {}..{} of the data changed since {} was written: delete that folder to run the job on the data as it is now",
                    out.display(),
                    chunk.first,
                    chunk.first + chunk.texts.len(),
                    parts.display()
                );
            }
            let recorded =
                Counts::from_json(&written_from, chunk.texts.len() as u64).map_err(corrupt)?;
            counts
                .add(recorded)
                .ok_or_else(|| corrupt(OVERFLOW.into()))?;
            meter.skip(chunk.texts.len() as u64);
            all_stats.push(written_from);
            continue;
        }
        if let Some(line) = resuming.take() {
            eprintln!("{line}");
        }
        let (output, chunk_counts) = process(model, &work, split, chunk, with_text, &mut times)?;
        counts.add(chunk_counts).ok_or_else(|| {
            anyhow!(
                "--out {}: the chunk records in {} count more tokens than 2^64: one is damaged; delete that folder and run the command again",
                out.display(),
                parts.display()
            )
        })?;
        let chunk_stats = times.time(Stage::Writing, || -> Result<Value> {
            let mut chunk_stats = chunk_counts.to_json();
            chunk_stats["texts_sha256"] = texts_sha256.into();
            // The features' own hash, from the values in memory before any file holds
            // them, so that the parts, the output and its merges are checked against it.
            if let Body::Features { x, .. } = &output.body {
                chunk_stats["features_sha256"] = hash_features(x).into();
            }
            atomic_write(&stats(output.first), chunk_stats.to_string().as_bytes())?;
            atomic_write(&part(output.first), &part_bytes(format, &output)?)?;
            Ok(chunk_stats)
        })?;
        all_stats.push(chunk_stats);
        meter.add(chunk_counts.rows, chunk_counts.tokens);
        written += 1;
        if abort_after == Some(written) {
            std::process::abort();
        }
    }

    let feature_column = match &work {
        Work::Encode => Some(model.pooling.name()),
        Work::Predict { .. } => None,
    };
    let mut files = Vec::with_capacity(firsts.len());
    let mut ranges = Vec::with_capacity(firsts.len());
    for (&first, chunk_stats) in firsts.iter().zip(&all_stats) {
        // Saturating: a --chunk-rows near usize::MAX (one chunk, whatever the size) would
        // wrap the sum to before `first`.
        let chunk_end = first.saturating_add(chunk_rows).min(end) as u64;
        let range = TextRange {
            start: first as u64,
            end: chunk_end,
            texts_sha256: chunk_stats["texts_sha256"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            // None for parts a bertcls before feature hashes wrote (a resume across
            // the upgrade): those rows cannot be checked.
            features_sha256: chunk_stats["features_sha256"].as_str().map(str::to_string),
        };
        files.push(PartRows {
            path: part(first),
            start: first as u64,
            end: chunk_end,
            features: feature_column.as_ref().map(|column| PartFeatures {
                column: column.to_string(),
                ranges: vec![range.clone()],
            }),
        });
        ranges.push(range);
    }
    let done = json!({
        "identity": job["identity"],
        "start": start,
        "end": end,
        "format": format.ext(),
        "counts": counts.to_json(),
        "ranges": ranges,
    });
    // A chunk file missing is written again on the next run, whatever chunks follow it.
    let mismatch = format!(
        "delete that chunk file (or all of {}) and run the command again",
        parts.display()
    );
    times.time(Stage::Assembling, || -> Result<()> {
        assemble(format, &files, out, &done.to_string(), &mismatch)?;
        if std::env::var_os(ABORT_BEFORE_MANIFEST).is_some() {
            std::process::abort();
        }
        atomic_write(&manifest, serde_json::to_string_pretty(&done)?.as_bytes())?;
        std::fs::remove_dir_all(&parts)
            .with_context(|| format!("cannot remove {} (the output is complete)", parts.display()))
    })?;
    meter.finish();
    eprintln!("{}", times.line());
    if let Some(line) = counts.accuracy_line() {
        eprintln!("{line}");
    }
    eprintln!("wrote {} (rows {start}..{end} of {total})", out.display());
    Ok(())
}

/// Where two job identities first differ, as `its model.pooling is "cls", this job's
/// "mean"`: the first differing field of the objects, an array (the data's files) whole.
fn first_difference(at: &str, was: &Value, now: &Value) -> String {
    let child = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    if let (Value::Object(a), Value::Object(b)) = (was, now) {
        let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
        for key in keys {
            let x = a.get(key).unwrap_or(&Value::Null);
            let y = b.get(key).unwrap_or(&Value::Null);
            if x != y {
                return first_difference(&child(key), x, y);
            }
        }
    }
    format!("its {at} is {was}, this job's {now}")
}

/// A finished output is only complete for the data as it is now: the data is known by
/// its files' names and sizes, so the texts are read again (one pass, cheap next to
/// encoding) and hashed over the ranges the manifest recorded. A change is refused, as
/// a resume refuses chunks whose texts changed: the output may have cost hours, and
/// whether the edit was meant is for the user to say, by deleting the output.
fn check_texts_unchanged(
    split: &ChunkedSplit,
    done: &Value,
    out: &Path,
    start: usize,
    end: usize,
    chunk_rows: usize,
) -> Result<()> {
    let what = manifest_path(out).display().to_string();
    // A manifest without ranges predates them, and its identity (no backend) matches no
    // job of this bertcls: it does not reach here, and is refused below if it does.
    let ranges = ranges_of(done, &what)?.unwrap_or_default();
    if let Err(why) = check_tiling(&ranges, start as u64, end as u64) {
        bail!(
            "{what}: {why}: delete {} to run the job again",
            out.display()
        );
    }
    // The ranges are the chunks of the job that wrote the output, which may differ from
    // this command's --chunk-rows: texts are gathered until a range is whole.
    let mut texts: Vec<String> = Vec::new();
    let mut pending = ranges.iter().peekable();
    for chunk in split.chunks(start, end, chunk_rows) {
        texts.extend(chunk?.texts);
        while let Some(range) = pending.peek() {
            let len = (range.end - range.start) as usize;
            if texts.len() < len {
                break;
            }
            let rest = texts.split_off(len);
            if hash_texts(&texts) != range.texts_sha256 {
                bail!(
                    "--out {}: the texts of rows {}..{} of the data changed since it was written: delete it to run the job on the data as it is now",
                    out.display(),
                    range.start,
                    range.end
                );
            }
            texts = rest;
            pending.next();
        }
    }
    Ok(())
}

fn kind_verb(work: &Work) -> &'static str {
    match work {
        Work::Predict { .. } => "labelled",
        Work::Encode => "encoded",
    }
}

/// Temporaries of writes a kill interrupted (`.name.tmp-PID`), removed on resume.
fn remove_temporaries(parts: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(parts).with_context(|| format!("cannot list {}", parts.display()))?
    {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Tokenizes and encodes one chunk (length-sorted into batches by `encode_all`; long
/// texts truncated or windowed as --long says), and turns it into output rows.
fn process(
    model: &mut LoadedModel,
    work: &Work,
    split: &ChunkedSplit,
    chunk: RowChunk,
    with_text: bool,
    times: &mut StageTimes,
) -> Result<(ChunkOut, Counts)> {
    // The rows are read again since the split was opened, and may have changed: their
    // labels are checked again, still before the chunk is encoded.
    if let (Work::Predict { names, .. }, Some(labels)) = (work, &chunk.labels) {
        if let Some(i) = first_label_past(labels, names.len()) {
            return Err(label_past_head(split, chunk.first + i, labels[i], names));
        }
    }
    let tokenized = times.time(Stage::Tokenizing, || tokenize_texts(model, &chunk.texts))?;
    let (x, tokens) = times.time(Stage::Encoding, || {
        encode_tokenized(model, &tokenized, |_| {})
    })?;
    let mut counts = Counts {
        rows: chunk.texts.len() as u64,
        tokens: tokens as u64,
        ..Counts::default()
    };
    let body = match work {
        Work::Predict { classifier, names } => {
            let predictions = times.time(Stage::Encoding, || {
                predict_features(&classifier.head, &x, classifier.temperature)
            });
            if let Some(labels) = &chunk.labels {
                for (p, &label) in predictions.iter().zip(labels) {
                    counts.labelled += 1;
                    counts.correct += u64::from(p.label_id as i64 == label);
                }
            }
            Body::Predictions {
                label_ids: predictions.iter().map(|p| p.label_id).collect(),
                probs: predictions.into_iter().flat_map(|p| p.probs).collect(),
                names: names.clone(),
            }
        }
        Work::Encode => Body::Features {
            hidden: model.feature_width(),
            x,
            name: model.pooling.name().to_string(),
        },
    };
    let output = ChunkOut {
        first: chunk.first,
        texts: with_text.then_some(chunk.texts),
        body,
    };
    Ok((output, counts))
}

/// Split row `row` (from 0) holds label `label`, which is not one of the head's `names`.
fn label_past_head(
    split: &ChunkedSplit,
    row: usize,
    label: i64,
    names: &[String],
) -> anyhow::Error {
    let (file, row) = split.locate(row);
    // Worded as `test` words it (data::labels::check_range): one mistake, one message.
    anyhow!(
        "{} row {row}: label {label} is outside 0..{n} (the head has {n} classes: {}); fix the row, or use the head trained for these labels",
        file.display(),
        names.join(", "),
        n = names.len(),
    )
}
