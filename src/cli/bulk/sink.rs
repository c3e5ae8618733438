//! What a bulk job writes: one part per chunk (JSONL, parquet or safetensors), and the
//! parts streamed into one output file, never holding more than one part at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::feature_rows::{ParquetRows, TensorRows};
use super::ranges::{features_changed, FeatureCheck, TextRange};
use crate::data::guard::{guarded_batches, guarded_then};

/// The key of the job manifest in a parquet output's footer (also beside it, in
/// `<out>.bulk.json`, for every format).
pub const PARQUET_META_KEY: &str = "bertcls.bulk";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Parquet,
    Jsonl,
    Safetensors,
}

impl OutFormat {
    pub fn of(path: &Path) -> Option<OutFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some(OutFormat::Parquet),
            "jsonl" => Some(OutFormat::Jsonl),
            "safetensors" => Some(OutFormat::Safetensors),
            _ => None,
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            OutFormat::Parquet => "parquet",
            OutFormat::Jsonl => "jsonl",
            OutFormat::Safetensors => "safetensors",
        }
    }
}

/// The rows one chunk produced.
pub struct ChunkOut {
    /// Split index of the chunk's first row.
    pub first: usize,
    pub texts: Option<Vec<String>>,
    pub body: Body,
}

pub enum Body {
    /// (rows,) label ids and (rows, C) probabilities, with the C names.
    Predictions {
        label_ids: Vec<usize>,
        probs: Vec<f32>,
        names: Arc<Vec<String>>,
    },
    /// (rows, hidden) features, named by their pooling ("cls" or "mean").
    Features {
        x: Vec<f32>,
        hidden: usize,
        name: String,
    },
}

impl ChunkOut {
    fn rows(&self) -> usize {
        match &self.body {
            Body::Predictions { label_ids, .. } => label_ids.len(),
            Body::Features { x, hidden, .. } => x.len() / hidden,
        }
    }
}

/// The bytes of one chunk's part file.
pub fn part_bytes(format: OutFormat, chunk: &ChunkOut) -> Result<Vec<u8>> {
    match format {
        OutFormat::Jsonl => Ok(jsonl(chunk)),
        OutFormat::Parquet => {
            let batch = record_batch(chunk)?;
            let mut bytes = Vec::new();
            let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None)?;
            writer.write(&batch)?;
            writer.close()?;
            Ok(bytes)
        }
        OutFormat::Safetensors => {
            let Body::Features { x, hidden, name } = &chunk.body else {
                bail!("predictions are written as .parquet or .jsonl, not .safetensors");
            };
            let data = crate::le_floats::f32_bytes(x);
            let view = TensorView::new(Dtype::F32, vec![chunk.rows(), *hidden], &data)?;
            Ok(crate::safetensors_out::serialize(
                [(tensor_name(name, chunk.first), view)],
                None,
            )?)
        }
    }
}

/// One tensor per chunk, named by its first row, zero-padded so names sort as rows do.
fn tensor_name(pooling: &str, first: usize) -> String {
    format!("{pooling}.{first:012}")
}

fn jsonl(chunk: &ChunkOut) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..chunk.rows() {
        let mut obj = serde_json::json!({ "index": chunk.first + i });
        match &chunk.body {
            Body::Predictions {
                label_ids,
                probs,
                names,
            } => {
                let c = names.len();
                obj["label_id"] = label_ids[i].into();
                obj["label"] = names[label_ids[i]].clone().into();
                obj["probs"] = serde_json::json!(&probs[i * c..(i + 1) * c]);
            }
            Body::Features { x, hidden, name } => {
                obj[name.as_str()] = serde_json::json!(&x[i * hidden..(i + 1) * hidden]);
            }
        }
        if let Some(texts) = &chunk.texts {
            obj["text"] = texts[i].clone().into();
        }
        out.extend_from_slice(obj.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn fixed_list(values: &[f32], width: usize) -> Result<ArrayRef> {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(values.to_vec()));
    Ok(Arc::new(FixedSizeListArray::try_new(
        field,
        width as i32,
        values,
        None,
    )?))
}

fn record_batch(chunk: &ChunkOut) -> Result<RecordBatch> {
    let rows = chunk.rows();
    let index: ArrayRef = Arc::new(UInt64Array::from_iter_values(
        (chunk.first..chunk.first + rows).map(|i| i as u64),
    ));
    let mut columns: Vec<(&str, ArrayRef)> = vec![("index", index)];
    match &chunk.body {
        Body::Predictions {
            label_ids,
            probs,
            names,
        } => {
            columns.push((
                "label_id",
                Arc::new(Int64Array::from_iter_values(
                    label_ids.iter().map(|&l| l as i64),
                )),
            ));
            columns.push((
                "label",
                Arc::new(StringArray::from_iter_values(
                    label_ids.iter().map(|&l| names[l].as_str()),
                )),
            ));
            columns.push(("probs", fixed_list(probs, names.len())?));
        }
        Body::Features { x, hidden, name } => {
            columns.push((name.as_str(), fixed_list(x, *hidden)?));
        }
    }
    if let Some(texts) = &chunk.texts {
        columns.push(("text", Arc::new(StringArray::from(texts.clone()))));
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Writes `out` through a temporary file beside it, synced and renamed: a reader sees
/// the whole output or none.
pub fn write_atomically(out: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::fsio::create_folder(dir)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file =
            File::create(&tmp).map_err(|e| crate::fsio::cannot_create("write", &tmp, e))?;
        // Held until the rename: a later job or merge of `out` removes only temporaries
        // no live process holds (`job::remove_stale_output_temporaries`).
        let _ = fs4::FileExt::try_lock(&file);
        write(&mut file)?;
        file.sync_all()
            .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The rows a finished output holds, from what is cheap to read: the parquet footer's
/// count, the JSONL lines (the last must end in a newline), the safetensors header's
/// shapes (its data must end where the file does). An error says what is wrong.
pub fn count_rows(format: OutFormat, path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    match format {
        // Under the guard: the parquet crate panics on some corrupt footers.
        OutFormat::Parquet => guarded_then(path, "parquet file", "it is corrupt", || {
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| anyhow!("not a readable parquet file: {e}"))?;
            Ok(reader.metadata().file_metadata().num_rows() as u64)
        }),
        OutFormat::Jsonl => {
            let mut r = BufReader::new(file);
            let (mut lines, mut last) = (0u64, b'\n');
            loop {
                let buf = r.fill_buf()?;
                let Some(&end) = buf.last() else { break };
                lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
                last = end;
                let read = buf.len();
                r.consume(read);
            }
            if last != b'\n' {
                bail!("its last line is cut short");
            }
            Ok(lines)
        }
        OutFormat::Safetensors => {
            let size = file.metadata()?.len();
            let mut r = BufReader::new(file);
            let mut len = [0u8; 8];
            r.read_exact(&mut len)
                .map_err(|_| anyhow!("no safetensors header"))?;
            let header_len = u64::from_le_bytes(len);
            if header_len > size.saturating_sub(8) {
                bail!("its safetensors header is cut short");
            }
            let mut header = vec![0u8; header_len as usize];
            r.read_exact(&mut header)?;
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&header)
                    .map_err(|e| anyhow!("its safetensors header is not JSON ({e})"))?;
            let (mut rows, mut data_end) = (0u64, 0u64);
            for (name, tensor) in header.iter().filter(|(n, _)| *n != "__metadata__") {
                let dim = |v: &serde_json::Value, i: usize| v.get(i).and_then(|d| d.as_u64());
                match (dim(&tensor["shape"], 0), dim(&tensor["data_offsets"], 1)) {
                    (Some(n), Some(end)) => {
                        // Checked: a header's numbers are the file's, and a sum that
                        // wrapped could come out as the rows the manifest gives.
                        rows = rows
                            .checked_add(n)
                            .ok_or_else(|| anyhow!("its tensors' rows overflow a count"))?;
                        data_end = data_end.max(end);
                    }
                    _ => bail!("its tensor {name} has no shape or data offsets"),
                }
            }
            let given = data_end.checked_add(8 + header_len);
            if given != Some(size) {
                bail!(
                    "it is {size} bytes where its header gives {}",
                    given.map_or("more than a file can hold".to_string(), |g| g.to_string())
                );
            }
            Ok(rows)
        }
    }
}

/// One input of [`assemble`]: a part file and the rows `[start, end)` it must hold,
/// and, for features, the hashes they must have.
pub struct PartRows {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
    pub features: Option<PartFeatures>,
}

/// The features a part must hold: its parquet column (the pooling's name) and the
/// ranges tiling its rows, with their `features_sha256`.
pub struct PartFeatures {
    pub column: String,
    pub ranges: Vec<TextRange>,
}

/// The rows of one part as they are copied: a part whose rows are not exactly its
/// range, in order, is refused before the output is renamed into place, so a
/// truncated, torn or swapped part never turns into a merged file that looks whole.
struct RowCursor<'a> {
    part: &'a PartRows,
    next: u64,
    mismatch: &'a str,
}

impl<'a> RowCursor<'a> {
    fn new(part: &'a PartRows, mismatch: &'a str) -> Self {
        RowCursor {
            part,
            next: part.start,
            mismatch,
        }
    }

    fn refuse(&self, what: String) -> anyhow::Error {
        anyhow!(
            "{}: {what}, but it should hold rows {}..{}: {}",
            self.part.path.display(),
            self.part.start,
            self.part.end,
            self.mismatch
        )
    }

    /// `count` rows from row `first` on, found in `place` (a line, a tensor).
    fn take(&mut self, first: u64, count: u64, place: impl FnOnce() -> String) -> Result<()> {
        if first != self.next {
            return Err(self.refuse(format!(
                "{} holds row {first} where row {} belongs",
                place(),
                self.next
            )));
        }
        // Checked: `count` is a part's (a tensor's first dimension), and a sum that
        // wrapped would pass for rows before the part's end.
        let Some(after) = first.checked_add(count).filter(|&a| a <= self.part.end) else {
            return Err(self.refuse(format!(
                "{} holds {count} rows from row {first} on",
                place()
            )));
        };
        self.next = after;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.next != self.part.end {
            let held = if self.next == self.part.start {
                "it holds no rows".to_string()
            } else {
                format!("it ends after row {}", self.next - 1)
            };
            return Err(self.refuse(held));
        }
        Ok(())
    }
}

fn unreadable(part: &Path, e: std::io::Error, mismatch: &str) -> anyhow::Error {
    anyhow!("cannot read {} ({e}): {mismatch}", part.display())
}

/// What a JSONL row must carry for its place to be checked; the rest is copied as is.
#[derive(serde::Deserialize)]
struct IndexedRow {
    index: u64,
}

/// Streams `parts` (in row order) into `out`, with the job manifest `manifest` in a
/// parquet footer or a safetensors header, checking that each part holds exactly its
/// rows; `mismatch` ends the one-line refusal of a part that does not (what to do).
pub fn assemble(
    format: OutFormat,
    parts: &[PartRows],
    out: &Path,
    manifest: &str,
    mismatch: &str,
) -> Result<()> {
    write_atomically(out, |file| match format {
        OutFormat::Jsonl => assemble_jsonl(parts, file, out, mismatch),
        OutFormat::Parquet => assemble_parquet(parts, file, out, manifest, mismatch),
        OutFormat::Safetensors => assemble_safetensors(parts, file, out, manifest, mismatch),
    })
}

/// "index, cls": a parquet part's column names, for messages.
fn column_names(schema: &arrow_schema::Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

/// The context of a failed write to the output being assembled: a full disk, mostly.
fn write_failed(out: &Path) -> impl Fn() -> String + '_ {
    move || format!("cannot write {} (disk full?)", out.display())
}

fn assemble_jsonl(parts: &[PartRows], file: &mut File, out: &Path, mismatch: &str) -> Result<()> {
    let mut w = BufWriter::new(file);
    let mut line = Vec::new();
    for part in parts {
        let handle = File::open(&part.path).map_err(|e| unreadable(&part.path, e, mismatch))?;
        let mut r = BufReader::new(handle);
        let mut rows = RowCursor::new(part, mismatch);
        for number in 1.. {
            line.clear();
            let read = r
                .read_until(b'\n', &mut line)
                .map_err(|e| unreadable(&part.path, e, mismatch))?;
            if read == 0 {
                break;
            }
            let parsed = match line.strip_suffix(b"\n") {
                Some(json) => serde_json::from_slice::<IndexedRow>(json).map_err(|e| e.to_string()),
                None => Err("it is cut short (no newline at its end)".to_string()),
            };
            match parsed {
                Ok(row) => rows.take(row.index, 1, || format!("line {number}"))?,
                Err(why) => {
                    return Err(
                        rows.refuse(format!("line {number} is not a row with an index ({why})"))
                    )
                }
            }
            w.write_all(&line).with_context(write_failed(out))?;
        }
        rows.finish()?;
    }
    w.flush().with_context(write_failed(out))?;
    Ok(())
}

fn assemble_parquet(
    parts: &[PartRows],
    file: &mut File,
    out: &Path,
    manifest: &str,
    mismatch: &str,
) -> Result<()> {
    let mut writer: Option<ArrowWriter<&mut File>> = None;
    // The first part's columns, and that part: a part whose columns differ from them may
    // be either one's fault (a corrupt footer can rename a column), so both are named.
    let mut first_schema: Option<(arrow_schema::SchemaRef, &Path)> = None;
    let mut file = Some(file);
    for part in parts {
        let shown = part.path.display();
        // The parquet crate panics on some corrupt bytes (see `data::guard`), lazily as
        // well as when opening: both run under the guard.
        let (what, remedy) = ("parquet part", "rerun that shard");
        let reader = guarded_then(&part.path, what, remedy, || {
            let handle = File::open(&part.path).map_err(|e| unreadable(&part.path, e, mismatch))?;
            Ok(ParquetRecordBatchReaderBuilder::try_new(handle)
                .map_err(|e| anyhow!("{shown}: not a readable parquet part ({e}): {mismatch}"))?
                .build()?)
        })?;
        let batches =
            reader.map(|b| b.map_err(|e| anyhow!("{shown}: cannot decode ({e}): {mismatch}")));
        let mut rows = RowCursor::new(part, mismatch);
        let mut sums = part.features.as_ref().map(|f| FeatureCheck::new(&f.ranges));
        for batch in guarded_batches(&part.path, what, remedy, batches) {
            let batch = batch?;
            let Some(index) = batch
                .column_by_name("index")
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            else {
                return Err(rows.refuse("it has no u64 index column".to_string()));
            };
            for &i in index.values() {
                rows.take(i, 1, || "its index column".to_string())?;
            }
            if let (Some(sums), Some(features)) = (&mut sums, &part.features) {
                check_parquet_features(&batch, &features.column, sums, &rows)?;
            }
            match &first_schema {
                // Checked here, not left to the writer, whose errors are the output's.
                Some((first, first_path)) if batch.schema().fields() != first.fields() => {
                    bail!(
                        "{shown}: its columns ({}) differ from those of {} ({}): {mismatch}",
                        column_names(&batch.schema()),
                        first_path.display(),
                        column_names(first)
                    )
                }
                Some(_) => {}
                None => first_schema = Some((batch.schema(), &part.path)),
            }
            if writer.is_none() {
                let props = WriterProperties::builder()
                    .set_key_value_metadata(Some(vec![KeyValue::new(
                        PARQUET_META_KEY.to_string(),
                        manifest.to_string(),
                    )]))
                    .build();
                let target = file.take().expect("one writer");
                writer = Some(
                    ArrowWriter::try_new(target, batch.schema(), Some(props))
                        .with_context(write_failed(out))?,
                );
            }
            let w = writer.as_mut().expect("created above");
            w.write(&batch).with_context(write_failed(out))?;
            // One row group per part: bounded memory, and readers can seek by chunk.
            w.flush().with_context(write_failed(out))?;
        }
        rows.finish()?;
    }
    match writer {
        Some(w) => {
            w.close().with_context(write_failed(out))?;
            Ok(())
        }
        None => bail!("no rows to write"),
    }
}

/// The features of a batch whose rows `rows` has just taken, fed to `sums`.
fn check_parquet_features(
    batch: &RecordBatch,
    column: &str,
    sums: &mut FeatureCheck,
    rows: &RowCursor,
) -> Result<()> {
    let Ok(features) = ParquetRows::of(batch, column) else {
        return Err(rows.refuse(format!("it has no f32 list column {column}")));
    };
    for i in 0..batch.num_rows() {
        let Some(x) = features.row(i) else {
            return Err(rows.refuse(format!("row {i} of a row group lies outside its values")));
        };
        sums.floats(x)
            .map_err(|range| rows.refuse(features_changed(range)))?;
    }
    Ok(())
}

/// A safetensors file whose header lists every part's tensor, then their data in order.
fn assemble_safetensors(
    parts: &[PartRows],
    file: &mut File,
    out: &Path,
    manifest: &str,
    mismatch: &str,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ PARQUET_META_KEY: manifest }),
    );
    let mut offset = 0usize;
    let mut hidden = None;
    let mut sources = Vec::new();
    for part in parts {
        let bytes = std::fs::read(&part.path).map_err(|e| unreadable(&part.path, e, mismatch))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow!(
                "{}: not a readable safetensors part ({e}): {mismatch}",
                part.path.display()
            )
        })?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut rows = RowCursor::new(part, mismatch);
        let mut sums = part.features.as_ref().map(|f| FeatureCheck::new(&f.ranges));
        for name in &names {
            let view = st.tensor(name)?;
            let shape = view.shape();
            let Some(tensor) = TensorRows::of(name, &view) else {
                return Err(rows.refuse(format!(
                    "tensor {name} is not a {:?} [rows, hidden] block named by its first row",
                    Dtype::F32
                )));
            };
            let width = tensor.width;
            if *hidden.get_or_insert(width) != width {
                return Err(rows.refuse(format!(
                    "tensor {name} is {width} wide where the parts before are {}",
                    hidden.unwrap_or_default()
                )));
            }
            rows.take(tensor.first, tensor.rows as u64, || {
                format!("tensor {name}")
            })?;
            if let Some(sums) = &mut sums {
                for row in tensor.row_bytes() {
                    sums.row(row)
                        .map_err(|range| rows.refuse(features_changed(range)))?;
                }
            }
            let len = view.data().len();
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": "F32",
                    "shape": shape,
                    "data_offsets": [offset, offset + len],
                }),
            );
            offset += len;
        }
        rows.finish()?;
        sources.push((&part.path, names));
    }
    let mut json = serde_json::to_vec(&header)?;
    // The data starts 8-aligned, as the format recommends.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut w = BufWriter::new(file);
    w.write_all(&(json.len() as u64).to_le_bytes())
        .and_then(|()| w.write_all(&json))
        .with_context(write_failed(out))?;
    for (path, names) in sources {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| unreadable(path, e, mismatch))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow!(
                "{}: not a readable safetensors part ({e}): {mismatch}",
                path.display()
            )
        })?;
        for name in names {
            w.write_all(st.tensor(&name)?.data())
                .with_context(write_failed(out))?;
        }
    }
    w.flush().with_context(write_failed(out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parquet part of one feature row `first`, pooled as `name`, with the texts
    /// column or without.
    fn part(dir: &Path, first: usize, name: &str, texts: bool) -> PartRows {
        let chunk = ChunkOut {
            first,
            texts: texts.then(|| vec!["a text".to_string()]),
            body: Body::Features {
                x: vec![0.5, -0.5],
                hidden: 2,
                name: name.to_string(),
            },
        };
        let path = dir.join(format!("chunk-{first}-{name}-{texts}.parquet"));
        std::fs::write(&path, part_bytes(OutFormat::Parquet, &chunk).unwrap()).unwrap();
        PartRows {
            path,
            start: first as u64,
            end: first as u64 + 1,
            features: None,
        }
    }

    #[test]
    fn parquet_parts_of_other_columns_are_refused_as_such() {
        let dir = crate::testdir::TestDir::new("sink");
        let out = dir.join("out.parquet");
        let same = [part(&dir, 0, "cls", false), part(&dir, 1, "cls", false)];
        assemble(OutFormat::Parquet, &same, &out, "{}", "redo it").unwrap();
        assert_eq!(count_rows(OutFormat::Parquet, &out).unwrap(), 2);

        // One column more; a column of the same type under another name (which the
        // parquet writer, checking types only, would have taken).
        for (name, texts, columns) in [
            ("cls", true, "index, cls, text"),
            ("mean", false, "index, mean"),
        ] {
            let other = [part(&dir, 0, "cls", false), part(&dir, 1, name, texts)];
            let e = format!(
                "{:#}",
                assemble(OutFormat::Parquet, &other, &out, "{}", "redo it").unwrap_err()
            );
            assert_eq!(
                e,
                format!(
                    "{}: its columns ({columns}) differ from those of {} (index, cls): redo it",
                    other[1].path.display(),
                    other[0].path.display()
                )
            );
        }
    }
}
