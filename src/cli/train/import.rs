//! `train --features-from`: features made by bulk `encode --data` jobs (one process or N
//! shards, merged or not) taken into the feature cache under the key `train` computes
//! itself, after checking they are the features it would make: the same encode spec,
//! every row of the split exactly once, and the same texts (each chunk's hash against
//! the hash of the rows `train` loaded). This run and every later one then reads them
//! from the cache and encodes nothing. Everything is checked before anything is stored
//! or encoded; a mismatch is one line naming the file and what differs.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use super::TrainArgs;
use crate::chunk::LongTexts;
use crate::cli::common::{EncoderDevice, ModelFiles};
use crate::cli::feature_source::FeatureSource;
use crate::model::Pooling;

use crate::cli::bulk::{first_uncovered, read_encoded, EncodedFile, FeatureCheck, Uncovered};
use crate::data::Split;
use crate::features::{hash_texts, EncodeSpec, FeatureCache, FeatureKey};
use crate::train::run_dir::differences;

/// `args.features_from` imported for the poolings the run encodes with and its long-text
/// mode on the run's encoder device, before the model loads; nothing without the flag.
pub fn import_flagged(
    args: &TrainArgs,
    files: &ModelFiles,
    device: EncoderDevice,
    source: &mut FeatureSource,
    (poolings, long): (&[Pooling], LongTexts),
    splits: &[&Split],
) -> Result<()> {
    if args.features_from.is_empty() {
        return Ok(());
    }
    let specs = poolings
        .iter()
        .map(|&pooling| source.encode_spec(files, device.device, device.precision, pooling, long))
        .collect::<Result<Vec<_>>>()?;
    let cache = source.cache().cloned().ok_or_else(|| {
        anyhow!("--features-from stores features in the feature cache: drop --no-cache")
    })?;
    let hidden = files.config.hidden_size;
    let widths: Vec<usize> = poolings.iter().map(|p| p.width(hidden)).collect();
    import_features(
        &args.features_from,
        (&specs, &widths),
        splits,
        (&cache, source),
    )
}

/// Checks the files against `specs` (one per pooling the run uses: a search over
/// `--pooling cls,mean` takes the files of both) and `splits` (train, and validation
/// when the run has one), and puts the features of each split and pooling they hold
/// into `cache` (`source`'s), or, where the cache cannot take them, keeps them in
/// `source` for this run. A split and pooling no file holds is left to be encoded as
/// usual. `widths` are the floats in one feature of each spec's pooling.
pub fn import_features(
    paths: &[PathBuf],
    (specs, widths): (&[EncodeSpec], &[usize]),
    splits: &[&Split],
    (cache, source): (&FeatureCache, &mut FeatureSource),
) -> Result<()> {
    // Every manifest first: a refusal costs no feature reading.
    let mut groups: Vec<Vec<EncodedFile>> = Vec::new();
    groups.resize_with(specs.len() * splits.len(), Vec::new);
    for path in paths {
        let file = read_encoded(path)?;
        // A file of a pooling the run does not use is compared with the first spec with
        // every pooling of the run in its place, so that the refusal names them all.
        let which = specs.iter().position(|s| s.pooling == file.spec.pooling);
        let spec = match which {
            Some(at) => specs[at].clone(),
            None => EncodeSpec {
                pooling: specs
                    .iter()
                    .map(|s| s.pooling.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                ..specs[0].clone()
            },
        };
        let which = which.unwrap_or(0);
        let diffs = differences(&file.spec, &spec, &[], ("file", "train"));
        if !diffs.is_empty() {
            bail!(
                "{} was encoded with other settings than this run's: {}; encode with this run's flags, or train with the file's",
                path.display(),
                diffs.join(", ")
            );
        }
        let Some(at) = splits.iter().position(|s| s.name == file.split) else {
            let names: Vec<String> = splits.iter().map(|s| format!("\"{}\"", s.name)).collect();
            bail!(
                "{} holds split \"{}\"; this run uses {}: pass the encode outputs of those splits",
                path.display(),
                file.split,
                names.join(" and ")
            );
        };
        check_texts(&file, splits[at])?;
        groups[which * splits.len() + at].push(file);
    }
    for files in &mut groups {
        files.sort_by_key(|f| (f.start, f.end));
    }
    let group_of = |i: usize| (&specs[i / splits.len()], splits[i % splits.len()]);
    for (i, files) in groups.iter().enumerate() {
        if !files.is_empty() {
            check_coverage(group_of(i).1, files)?;
        }
    }
    // Every file read and its features checked before any is stored.
    let mut gathered = Vec::new();
    for (i, files) in groups.iter().enumerate() {
        if !files.is_empty() {
            let width = widths[i / splits.len()];
            gathered.push((i, gather(group_of(i).1, files, width)?));
        }
    }
    for (i, x) in gathered {
        let files = &groups[i];
        let (spec, split) = group_of(i);
        let key = FeatureKey::new(spec, &split.content_hash);
        let path = cache.path(&key);
        let width = widths[i / splits.len()];
        let stored = source.put_imported(cache, key, x, (split.texts.len(), width));
        eprintln!(
            "{}: {} {} features imported from {} --features-from file{} {}",
            split.name,
            split.texts.len(),
            spec.pooling,
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            if stored {
                format!("into the feature cache {}", path.display())
            } else {
                "for this run only".to_string()
            }
        );
    }
    Ok(())
}

/// The file's split had this run's row count, and each of its chunks' texts hash as
/// this run's rows there do.
fn check_texts(file: &EncodedFile, split: &Split) -> Result<()> {
    let rows = split.texts.len() as u64;
    if file.split_rows != rows {
        bail!(
            "{} was encoded from a \"{}\" split of {} rows, this run's has {rows}: other data; encode this run's --data",
            file.path.display(),
            split.name,
            file.split_rows
        );
    }
    for r in &file.ranges {
        // In bounds: the manifest's ranges tile start..end, and end <= its split's rows.
        let texts = &split.texts[r.start as usize..r.end as usize];
        if hash_texts(texts) != r.texts_sha256 {
            bail!(
                "{}: the texts of rows {}..{} of split \"{}\" differ from this run's (other data, or another --text-column): encode this run's --data",
                file.path.display(),
                r.start,
                r.end,
                split.name
            );
        }
    }
    Ok(())
}

/// The files (sorted by their first row) cover every row of the split exactly once.
fn check_coverage(split: &Split, files: &[EncodedFile]) -> Result<()> {
    let spans: Vec<(u64, u64)> = files.iter().map(|f| (f.start, f.end)).collect();
    match first_uncovered(&spans, split.texts.len() as u64) {
        Some(Uncovered::Overlap(i)) => bail!(
            "{} (rows {}..{}) overlaps {} (rows {}..{}) in split \"{}\": pass each shard's output once",
            files[i].path.display(),
            files[i].start,
            files[i].end,
            files[i - 1].path.display(),
            files[i - 1].start,
            files[i - 1].end,
            split.name
        ),
        Some(Uncovered::Missing(from, to)) => bail!(
            "rows {from}..{to} of split \"{}\" are in none of the --features-from files: pass that shard's output too",
            split.name
        ),
        None => Ok(()),
    }
}

/// The split's features [rows, width] from its files, each row read exactly once.
fn gather(split: &Split, files: &[EncodedFile], width: usize) -> Result<Vec<f32>> {
    let rows = split.texts.len();
    let mut x = vec![0f32; rows * width];
    let mut seen = vec![false; rows];
    for f in files {
        f.for_each_row(width, |index, feature| {
            // Within the file's rows, checked by for_each_row, so within the split.
            let i = index as usize;
            if let Some(v) = feature.iter().find(|v| !v.is_finite()) {
                bail!(
                    "{}: row {i} holds a non-finite feature ({v}): the encode that wrote it went wrong; encode that shard again, or train without --features-from",
                    f.path.display()
                );
            }
            if std::mem::replace(&mut seen[i], true) {
                bail!(
                    "{}: row {i} appears twice; it is corrupt: encode that shard again",
                    f.path.display()
                );
            }
            x[i * width..(i + 1) * width].copy_from_slice(feature);
            Ok(())
        })?;
        if let Some(missing) = (f.start..f.end).find(|&i| !seen[i as usize]) {
            bail!(
                "{}: row {missing} is missing though its manifest says it holds rows {}..{}; it is corrupt: encode that shard again",
                f.path.display(),
                f.start,
                f.end
            );
        }
        // Rows in row order, as encode hashed them: ranges of a file written before
        // feature hashes were recorded have none, and are taken unchecked.
        let mut sums = FeatureCheck::new(&f.ranges);
        for row in x[f.start as usize * width..f.end as usize * width].chunks_exact(width) {
            if let Err(r) = sums.floats(row) {
                bail!(
                    "{}: the features of rows {}..{} do not hash to the features_sha256 its manifest gives (they changed after encode wrote them): encode that shard again",
                    f.path.display(),
                    r.start,
                    r.end
                );
            }
        }
    }
    Ok(x)
}
