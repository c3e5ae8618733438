//! Bulk `encode` outputs read back: a shard's or a merge's manifest, checked to be a
//! finished encode output, and its rows, for `train --features-from`.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Array, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use safetensors::SafeTensors;

use super::feature_rows::{NotFeatures, ParquetRows, TensorRows};
use super::job::{manifest_path, read_manifest};
use super::ranges::{check_tiling, ranges_of, TextRange};
use super::sink::OutFormat;
use crate::data::guard::{guarded_batches, guarded_then};
use crate::features::{windows_revision, EncodeSpec, WINDOWS_REVISION};

/// A finished bulk `encode` output, as its manifest describes it.
pub struct EncodedFile {
    pub path: PathBuf,
    /// What its features depend on besides the texts.
    pub spec: EncodeSpec,
    /// The split it was encoded from, and that split's row count then.
    pub split: String,
    pub split_rows: u64,
    /// The rows it holds, `[start, end)`, and the hash of their texts chunk by chunk.
    pub start: u64,
    pub end: u64,
    pub ranges: Vec<TextRange>,
    format: OutFormat,
}

/// The manifest of the encode output `path`, checked for what the import relies on.
pub fn read_encoded(path: &Path) -> Result<EncodedFile> {
    let shown = path.display();
    let manifest = manifest_path(path);
    if !path.is_file() || !manifest.is_file() {
        bail!(
            "{shown}: not a finished bulk encode output (it and {} must both exist): pass the --out of `bertcls encode --data`, or finish that shard",
            manifest.display()
        );
    }
    let m = read_manifest(&manifest, "encode that shard again")?;
    let identity = &m["identity"];
    if identity["kind"] != "encode" {
        bail!(
            "{shown} holds the output of bulk {}, not features: pass the --out of `bertcls encode --data`",
            identity["kind"]
        );
    }
    let format = OutFormat::of(path)
        .filter(|f| m["format"] == f.ext() && *f != OutFormat::Jsonl)
        .ok_or_else(|| {
            anyhow!(
                "{shown}: its name does not end in the .{} its manifest gives: pass the file bulk encode wrote",
                m["format"].as_str().unwrap_or("parquet or .safetensors")
            )
        })?;
    check_windows(path, "encode", &identity["model"])?;
    let spec: EncodeSpec = serde_json::from_value(identity["model"].clone()).map_err(|e| {
        anyhow!(
            "{}: no complete encode spec ({e}; outputs of bertcls before backend and precision were recorded have none): encode the split again",
            manifest.display()
        )
    })?;
    let (Some(split), Some(split_rows), Some(start), Some(end)) = (
        identity["data"]["split"].as_str(),
        identity["data"]["rows"].as_u64(),
        m["start"].as_u64(),
        m["end"].as_u64(),
    ) else {
        bail!(
            "{}: no split, row count or row range; is it a bertcls bulk manifest?",
            manifest.display()
        );
    };
    let Some(ranges) = ranges_of(&m, &manifest.display().to_string())? else {
        bail!(
            "{}: no text hashes (outputs of bertcls before they were recorded have none): encode the split again",
            manifest.display()
        );
    };
    if let Err(why) = check_tiling(&ranges, start, end) {
        bail!(
            "{}: {why}; it is corrupt: encode that shard again",
            manifest.display()
        );
    }
    if end > split_rows {
        bail!(
            "{}: rows {start}..{end} lie beyond its split's {split_rows} rows; it is corrupt",
            manifest.display()
        );
    }
    Ok(EncodedFile {
        path: path.to_path_buf(),
        spec,
        split: split.to_string(),
        split_rows,
        start,
        end,
        ranges,
        format,
    })
}

/// Refuses the output of a bulk job (`kind` "encode" or "predict") on chunked features
/// whose windows were cut otherwise than now (outputs made before the window fix record
/// no revision): their long texts had too few windows, which no setting of this run can
/// match, so the only fix is to run the job again.
pub(super) fn check_windows(path: &Path, kind: &str, model: &serde_json::Value) -> Result<()> {
    let Some(long) = model["long"].as_str() else {
        return Ok(());
    };
    let recorded = model["windows"].as_u64();
    if windows_revision(long).map(u64::from) != recorded {
        let what = if kind == "predict" {
            "its predictions come from chunked features"
        } else {
            "its chunked features were"
        };
        bail!(
            "{}: {what} cut into windows by {} (this bertcls cuts by revision {WINDOWS_REVISION}; before it, texts lost windows): {kind} it again",
            path.display(),
            recorded.map_or("no recorded window revision".to_string(), |r| format!("window revision {r}"))
        );
    }
    Ok(())
}

impl EncodedFile {
    /// Calls `row(index, feature)` for every row the file holds, a part at a time
    /// (a parquet row group, a safetensors tensor). Rows outside the manifest's range,
    /// or of another width than `hidden`, are refused: the file does not match its
    /// manifest.
    pub fn for_each_row(
        &self,
        hidden: usize,
        mut row: impl FnMut(u64, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let mut checked = |index: u64, x: &[f32]| {
            if index < self.start || index >= self.end {
                bail!(
                    "{}: row {index} lies outside the rows {}..{} its manifest gives; it is corrupt",
                    self.path.display(),
                    self.start,
                    self.end
                );
            }
            row(index, x)
        };
        match self.format {
            OutFormat::Parquet => self.parquet_rows(hidden, &mut checked),
            _ => self.safetensors_rows(hidden, &mut checked),
        }
    }

    fn parquet_rows(
        &self,
        hidden: usize,
        row: &mut impl FnMut(u64, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let shown = self.path.display();
        // The parquet crate panics on some corrupt bytes (see `data::guard`), lazily as
        // well as when opening: both run under the guard.
        let (what, remedy) = ("parquet file", "encode that shard again");
        let reader = guarded_then(&self.path, what, remedy, || {
            let file = File::open(&self.path).with_context(|| format!("cannot read {shown}"))?;
            Ok(ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("{shown}: not a readable parquet file"))?
                .build()?)
        })?;
        let batches = reader.map(|b| b.with_context(|| format!("{shown}: cannot decode")));
        let column = self.spec.pooling.as_str();
        for batch in guarded_batches(&self.path, what, remedy, batches) {
            let batch = batch?;
            let index = batch
                .column_by_name("index")
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
            let (index, features) = match (index, ParquetRows::of(&batch, column)) {
                (Some(index), Ok(features))
                    if features.width() == hidden
                        && !features.has_nulls()
                        && index.null_count() == 0 =>
                {
                    (index, features)
                }
                (Some(_), Ok(_) | Err(NotFeatures::NotF32)) => {
                    bail!("{shown}: `{column}` is not {hidden} floats a row (the model's hidden size)")
                }
                _ => bail!("{shown}: no uint64 `index` and fixed-size list `{column}` columns, as bulk encode writes"),
            };
            for i in 0..batch.num_rows() {
                let Some(x) = features.row(i) else {
                    bail!("{shown}: row {i} of a row group lies outside its values; it is corrupt");
                };
                row(index.value(i), x)?;
            }
        }
        Ok(())
    }

    fn safetensors_rows(
        &self,
        hidden: usize,
        row: &mut impl FnMut(u64, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let shown = self.path.display();
        let bytes = std::fs::read(&self.path).with_context(|| format!("cannot read {shown}"))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{shown}: not a readable safetensors file ({e})"))?;
        let pooling = self.spec.pooling.as_str();
        for (name, view) in tensors.tensors() {
            // One tensor per chunk, `<pooling>.<first row>` [rows, hidden].
            let Some(tensor) = TensorRows::of(&name, &view).filter(|t| t.prefix == pooling) else {
                bail!(
                    "{shown}: tensor `{name}` is not `{pooling}.<first row>` F32 [rows, hidden], as bulk encode writes"
                );
            };
            if tensor.width != hidden {
                bail!(
                    "{shown}: `{name}` has {} floats a row, the model {hidden}",
                    tensor.width
                );
            }
            let floats = tensor.floats();
            for (i, x) in floats.chunks_exact(hidden).enumerate() {
                row(tensor.first + i as u64, x)?;
            }
        }
        Ok(())
    }
}
