//! What a bulk job writes: one part per chunk (JSONL, parquet or safetensors), and the
//! parts streamed into one output file, never holding more than one part at a time.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
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
            let data: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
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
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).with_context(|| {
            format!(
                "cannot write {}: check the folder is writable",
                tmp.display()
            )
        })?;
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

/// Streams `parts` (in row order) into `out`, with the job manifest `manifest` in a
/// parquet footer or a safetensors header.
pub fn assemble(format: OutFormat, parts: &[PathBuf], out: &Path, manifest: &str) -> Result<()> {
    write_atomically(out, |file| match format {
        OutFormat::Jsonl => {
            let mut w = BufWriter::new(file);
            for part in parts {
                let mut r =
                    File::open(part).with_context(|| format!("cannot read {}", part.display()))?;
                std::io::copy(&mut r, &mut w)
                    .with_context(|| format!("cannot write {} (disk full?)", out.display()))?;
            }
            w.flush()?;
            Ok(())
        }
        OutFormat::Parquet => assemble_parquet(parts, file, manifest),
        OutFormat::Safetensors => assemble_safetensors(parts, file, manifest),
    })
}

fn assemble_parquet(parts: &[PathBuf], file: &mut File, manifest: &str) -> Result<()> {
    let mut writer: Option<ArrowWriter<&mut File>> = None;
    let mut file = Some(file);
    for part in parts {
        let handle = File::open(part).with_context(|| format!("cannot read {}", part.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(handle)
            .with_context(|| format!("{}: not a readable parquet part", part.display()))?
            .build()?;
        for batch in reader {
            let batch = batch.with_context(|| format!("{}: cannot decode", part.display()))?;
            if writer.is_none() {
                let props = WriterProperties::builder()
                    .set_key_value_metadata(Some(vec![KeyValue::new(
                        PARQUET_META_KEY.to_string(),
                        manifest.to_string(),
                    )]))
                    .build();
                let target = file.take().expect("one writer");
                writer = Some(ArrowWriter::try_new(target, batch.schema(), Some(props))?);
            }
            let w = writer.as_mut().expect("created above");
            w.write(&batch)?;
            // One row group per part: bounded memory, and readers can seek by chunk.
            w.flush()?;
        }
    }
    match writer {
        Some(w) => {
            w.close()?;
            Ok(())
        }
        None => bail!("no rows to write"),
    }
}

/// A safetensors file whose header lists every part's tensor, then their data in order.
fn assemble_safetensors(parts: &[PathBuf], file: &mut File, manifest: &str) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ PARQUET_META_KEY: manifest }),
    );
    let mut offset = 0usize;
    let mut sources = Vec::new();
    for part in parts {
        let bytes =
            std::fs::read(part).with_context(|| format!("cannot read {}", part.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a readable safetensors part ({e})", part.display()))?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        for name in names {
            let view = st.tensor(&name)?;
            let len = view.data().len();
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": "F32",
                    "shape": view.shape(),
                    "data_offsets": [offset, offset + len],
                }),
            );
            offset += len;
            sources.push((part.clone(), name));
        }
    }
    let mut json = serde_json::to_vec(&header)?;
    // The data starts 8-aligned, as the format recommends.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut w = BufWriter::new(file);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    for (part, name) in sources {
        let mut bytes = Vec::new();
        File::open(&part)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", part.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a readable safetensors part ({e})", part.display()))?;
        w.write_all(st.tensor(&name)?.data())?;
    }
    w.flush()?;
    Ok(())
}
