//! Parquet files, as the hub serves datasets; only the two columns are decoded.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::columns;
use super::raw::RawSplit;
use super::LoadOptions;

/// Appends the file's rows; returns the ClassLabel names its HF metadata holds.
pub(super) fn read(
    file: &Path,
    opts: &LoadOptions,
    out: &mut RawSplit,
) -> Result<Option<Vec<String>>> {
    super::guard::guarded(file, "parquet file", || read_unguarded(file, opts, out))
}

fn read_unguarded(
    file: &Path,
    opts: &LoadOptions,
    out: &mut RawSplit,
) -> Result<Option<Vec<String>>> {
    let handle = File::open(file).with_context(|| format!("{}: cannot open", file.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
        .with_context(|| format!("{}: not a readable parquet file", file.display()))?;
    // The parquet crate indexes column_orders by column without checking their count.
    let meta = builder.metadata().file_metadata();
    if let Some(orders) = meta.column_orders() {
        if orders.len() != meta.schema_descr().num_columns() {
            anyhow::bail!(
                "{}: not a readable parquet file (corrupt metadata: {} column orders for {} columns)",
                file.display(),
                orders.len(),
                meta.schema_descr().num_columns()
            );
        }
    }
    let (text, label) = columns::find(builder.schema(), opts, file)?;
    let names = columns::class_names_in_metadata(builder.schema().metadata(), &opts.label_column);
    let mask = ProjectionMask::roots(builder.parquet_schema(), [text, label]);
    let reader = builder
        .with_projection(mask)
        .build()
        .with_context(|| format!("{}: cannot decode", file.display()))?;
    out.start_file(file);
    let mut row = 1;
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: cannot decode", file.display()))?;
        columns::append(&batch, opts, file, row, out)?;
        row += batch.num_rows();
    }
    Ok(names)
}
