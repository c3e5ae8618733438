//! `bertcls merge OUT PART...`: the outputs of `--shard K/N` jobs joined into one, after
//! checking that they come from the same job and cover every row exactly once.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::json;

use super::features_in::check_windows;
use super::job::{manifest_path, read_manifest, remove_stale_output_temporaries, Counts, OVERFLOW};
use super::ranges::{check_tiling, first_uncovered, ranges_of, TextRange, Uncovered};
use super::sink::{assemble, OutFormat, PartFeatures, PartRows};
use crate::fsio::atomic_write;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The merged output (.parquet, .jsonl or .safetensors: the parts' format).
    pub out: PathBuf,
    /// The shard outputs, each with its `<part>.bulk.json` manifest beside it, any order.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
}

struct Part {
    path: PathBuf,
    start: u64,
    end: u64,
    counts: Counts,
    ranges: Option<Vec<TextRange>>,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let Some(format) = OutFormat::of(&args.out) else {
        bail!(
            "{}: merge writes .parquet, .jsonl or .safetensors, as the parts are",
            args.out.display()
        );
    };
    // Found now, not when the merged output and then its manifest are renamed onto
    // them: the manifest last, after the output is already in place without it.
    let out_manifest = manifest_path(&args.out);
    if args.out.is_dir() {
        bail!(
            "{}: is a folder: pass the path of the file to write",
            args.out.display()
        );
    }
    if out_manifest.is_dir() {
        bail!(
            "{}: {} (where its .bulk.json manifest goes) is a folder: remove it, or write the merge to another file",
            args.out.display(),
            out_manifest.display()
        );
    }
    refuse_repeated_files(&args.out, &args.parts)?;
    let mut identity = None;
    let mut parts = Vec::new();
    for path in &args.parts {
        let manifest = manifest_path(path);
        if !path.is_file() || !manifest.is_file() {
            bail!(
                "{}: not a finished bulk output (it and {} must both exist): finish or rerun that shard",
                path.display(),
                manifest.display()
            );
        }
        let m = read_manifest(&manifest, "rerun that shard")?;
        if m["format"] != format.ext() {
            bail!(
                "{} is {} but {} is .{}: merge parts into their own format",
                path.display(),
                m["format"],
                args.out.display(),
                format.ext()
            );
        }
        let kind = m["identity"]["kind"].as_str().unwrap_or("encode");
        check_windows(path, kind, &m["identity"]["model"])?;
        match &identity {
            None => identity = Some(m["identity"].clone()),
            Some(first) if *first != m["identity"] => bail!(
                "{} comes from another job than {} (its data, model, head or options differ): merge only shards of one command",
                path.display(),
                args.parts[0].display()
            ),
            Some(_) => {}
        }
        let (Some(start), Some(end)) = (m["start"].as_u64(), m["end"].as_u64()) else {
            bail!(
                "{}: no row range; is it a bertcls bulk manifest?",
                manifest.display()
            );
        };
        let ranges = ranges_of(&m, &manifest.display().to_string())?;
        if let Some(ranges) = &ranges {
            if let Err(why) = check_tiling(ranges, start, end) {
                bail!(
                    "{}: {why}; it is corrupt: rerun that shard",
                    manifest.display()
                );
            }
        }
        let counts = Counts::from_json(&m["counts"], end.saturating_sub(start)).map_err(|why| {
            anyhow!(
                "{}: {why}; it is corrupt: rerun that shard",
                manifest.display()
            )
        })?;
        parts.push(Part {
            path: path.clone(),
            start,
            end,
            counts,
            ranges,
        });
    }
    let identity = identity.expect("at least one part");
    let rows = identity["data"]["rows"].as_u64().unwrap_or(0);
    parts.sort_by_key(|p| (p.start, p.end));
    let spans: Vec<(u64, u64)> = parts.iter().map(|p| (p.start, p.end)).collect();
    match first_uncovered(&spans, rows) {
        Some(Uncovered::Overlap(i)) => bail!(
            "{} (rows {}..{}) overlaps {} (rows {}..{}): each row must come from one part",
            parts[i].path.display(),
            parts[i].start,
            parts[i].end,
            parts[i - 1].path.display(),
            parts[i - 1].start,
            parts[i - 1].end
        ),
        Some(Uncovered::Missing(from, to)) => {
            bail!("rows {from}..{to} are in no part: run that shard and pass its output too")
        }
        None => {}
    }
    let mut counts = Counts::default();
    for part in &parts {
        counts.add(part.counts).ok_or_else(|| {
            anyhow!(
                "{}: {OVERFLOW}; it is corrupt: rerun that shard",
                manifest_path(&part.path).display()
            )
        })?;
    }
    // The parts' text ranges in row order: the merged file is checked by
    // `train --features-from` as its shards would be. Outputs written before ranges
    // were recorded have none, and neither has their merge.
    let ranges: Option<Vec<TextRange>> = parts
        .iter()
        .map(|p| p.ranges.clone())
        .collect::<Option<Vec<_>>>()
        .map(|r| r.concat());
    let mut done = json!({
        "identity": identity,
        "start": 0,
        "end": rows,
        "format": format.ext(),
        "counts": counts.to_json(),
    });
    if let Some(ranges) = ranges {
        done["ranges"] = serde_json::to_value(ranges)?;
    }
    // Each part's features are checked against its ranges' hashes as they are copied
    // (ranges without one, written before they were recorded, cannot be).
    let column = (identity["kind"] == "encode")
        .then(|| identity["model"]["pooling"].as_str())
        .flatten();
    let files: Vec<PartRows> = parts
        .iter()
        .map(|p| PartRows {
            path: p.path.clone(),
            start: p.start,
            end: p.end,
            features: column
                .zip(p.ranges.as_ref())
                .map(|(column, ranges)| PartFeatures {
                    column: column.to_string(),
                    ranges: ranges.clone(),
                }),
        })
        .collect();
    remove_stale_output_temporaries(&args.out);
    assemble(
        format,
        &files,
        &args.out,
        &done.to_string(),
        "it does not match its .bulk.json manifest: rerun that shard",
    )?;
    atomic_write(
        &out_manifest,
        serde_json::to_string_pretty(&done)?.as_bytes(),
    )?;
    if let Some(line) = counts.accuracy_line() {
        eprintln!("{line}");
    }
    eprintln!(
        "merged {} parts into {} ({rows} rows)",
        parts.len(),
        args.out.display()
    );
    Ok(())
}

/// The output among the parts would be overwritten by the merge of itself (and its
/// manifest replaced), and a part given twice is a slip the row-overlap message would
/// only describe indirectly: both are refused before anything is read or written.
fn refuse_repeated_files(out: &Path, parts: &[PathBuf]) -> Result<()> {
    // Paths that cannot be resolved do not exist yet (the output) or are named as
    // missing by the manifest check that follows.
    let resolved: Vec<Option<PathBuf>> = parts.iter().map(|p| p.canonicalize().ok()).collect();
    if let Ok(out_resolved) = out.canonicalize() {
        if let Some(i) = resolved
            .iter()
            .position(|r| r.as_ref() == Some(&out_resolved))
        {
            bail!(
                "{}: the merged output is also given as the part {}: write the merge to another file",
                out.display(),
                parts[i].display()
            );
        }
    }
    for (j, later) in resolved.iter().enumerate() {
        if let Some(later) = later {
            if let Some(i) = resolved[..j].iter().position(|r| r.as_ref() == Some(later)) {
                bail!(
                    "{} is given twice (as {} too): pass each shard output once",
                    parts[j].display(),
                    parts[i].display()
                );
            }
        }
    }
    Ok(())
}
