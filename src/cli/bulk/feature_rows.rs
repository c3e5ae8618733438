//! The feature rows of a bulk encode part or output, decoded one way for the copy
//! checks of `assemble` (a job's end, `merge`) and for `train --features-from`: each
//! words its own refusals, as each tells its reader what to do.

use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::le_floats;

/// Why a parquet batch's column holds no feature rows.
pub enum NotFeatures {
    /// No column of that name, or not a fixed-size list.
    NoList,
    /// A fixed-size list of something else than f32.
    NotF32,
}

/// A parquet batch's feature column as bulk encode writes it: a fixed-size list of f32.
pub struct ParquetRows<'a> {
    list: &'a FixedSizeListArray,
    values: &'a Float32Array,
}

impl<'a> ParquetRows<'a> {
    pub fn of(batch: &'a RecordBatch, column: &str) -> Result<Self, NotFeatures> {
        let list = batch
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or(NotFeatures::NoList)?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or(NotFeatures::NotF32)?;
        Ok(ParquetRows { list, values })
    }

    /// Floats a row.
    pub fn width(&self) -> usize {
        self.list.value_length() as usize
    }

    pub fn has_nulls(&self) -> bool {
        self.values.null_count() > 0
    }

    /// Row `i`'s floats; `None` where its offset points past the values (a corrupt file).
    pub fn row(&self, i: usize) -> Option<&'a [f32]> {
        let at = self.list.value_offset(i) as usize;
        self.values.values().get(at..at + self.width())
    }
}

/// A safetensors tensor as bulk encode writes one chunk's features:
/// `<pooling>.<first row>`, F32 [rows, width].
pub struct TensorRows<'a> {
    /// The name before its last `.`: the pooling.
    pub prefix: &'a str,
    pub first: u64,
    pub rows: usize,
    pub width: usize,
    data: &'a [u8],
}

impl<'a> TensorRows<'a> {
    /// `None` when the name, dtype or shape is not as bulk encode writes them.
    pub fn of(name: &'a str, view: &TensorView<'a>) -> Option<Self> {
        let (prefix, first) = name.rsplit_once('.')?;
        match (first.parse().ok()?, view.dtype(), view.shape()) {
            (first, Dtype::F32, &[rows, width]) => Some(TensorRows {
                prefix,
                first,
                rows,
                width,
                data: view.data(),
            }),
            _ => None,
        }
    }

    /// Each row's little-endian f32 bytes, as feature hashes are taken over them.
    pub fn row_bytes(&self) -> impl Iterator<Item = &'a [u8]> {
        // Not chunks_exact: a tensor of width 0 has rows of no bytes, and must not panic.
        let (data, size) = (self.data, self.width * 4);
        (0..self.rows).map(move |r| &data[r * size..(r + 1) * size])
    }

    /// Every row's floats, `rows * width` of them in row order.
    pub fn floats(&self) -> Vec<f32> {
        le_floats::f32s(&self.data[..self.rows * self.width * 4])
    }
}
