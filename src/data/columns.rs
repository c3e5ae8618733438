//! Text and label columns out of Arrow record batches, shared by the
//! save_to_disk and parquet readers, and the HF feature metadata beside them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use serde_json::Value;

use super::labels::{self, Label};
use super::raw::{missing_column, row_error, RawSplit};
use super::LoadOptions;

/// Indices of the text and label columns, or an error that lists the columns.
pub(super) fn find(schema: &Schema, opts: &LoadOptions, file: &Path) -> Result<(usize, usize)> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let index = |column: &str, flag: &str| {
        names
            .iter()
            .position(|n| n == column)
            .ok_or_else(|| missing_column(file, column, flag, &names))
    };
    Ok((
        index(&opts.text_column, "--text-column")?,
        index(&opts.label_column, "--label-column")?,
    ))
}

/// Appends a batch whose first row is row `first_row` (1-based) of `file`.
pub(super) fn append(
    batch: &RecordBatch,
    opts: &LoadOptions,
    file: &Path,
    first_row: usize,
    out: &mut RawSplit,
) -> Result<()> {
    let (text_index, label_index) = find(&batch.schema(), opts, file)?;
    let texts = texts(batch.column(text_index).as_ref(), &opts.text_column, file)?;
    let labels = labels(batch.column(label_index).as_ref(), &opts.label_column, file)?;
    for (i, (text, label)) in texts.into_iter().zip(labels).enumerate() {
        let row = first_row + i;
        let text = match text {
            Some(bytes) => String::from_utf8(bytes.to_vec()).map_err(|_| {
                row_error(file, row, "text is not UTF-8; re-encode the data as UTF-8")
            })?,
            None => return Err(row_error(file, row, "text is null; drop or fill the row")),
        };
        let label =
            label.ok_or_else(|| row_error(file, row, "label is null; drop or fill the row"))?;
        let label = label
            .and_then(|l| labels::numbers_as(l, opts.numeric_labels))
            .map_err(|e| row_error(file, row, e))?;
        out.push(text, label);
    }
    Ok(())
}

pub(super) fn texts<'a>(
    column: &'a dyn Array,
    name: &str,
    file: &Path,
) -> Result<Vec<Option<&'a [u8]>>> {
    // Binary columns are accepted because some writers store text as bytes;
    // their UTF-8 is checked row by row by the caller.
    Ok(match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().iter().map(|t| t.map(str::as_bytes)).collect(),
        DataType::LargeUtf8 => column.as_string::<i64>().iter().map(|t| t.map(str::as_bytes)).collect(),
        DataType::Utf8View => column.as_string_view().iter().map(|t| t.map(str::as_bytes)).collect(),
        DataType::Binary => column.as_binary::<i32>().iter().collect(),
        DataType::LargeBinary => column.as_binary::<i64>().iter().collect(),
        DataType::BinaryView => column.as_binary_view().iter().collect(),
        other => bail!(
            "{}: text column \"{name}\" holds {other}, not strings; name a string column with --text-column",
            file.display()
        ),
    })
}

type Labels = Vec<Option<Result<Label, String>>>;

/// Each row's label: `None` where it is null.
pub(super) fn labels(column: &dyn Array, name: &str, file: &Path) -> Result<Labels> {
    Ok(match column.data_type() {
        DataType::Int8 => ints::<Int8Type>(column),
        DataType::Int16 => ints::<Int16Type>(column),
        DataType::Int32 => ints::<Int32Type>(column),
        DataType::Int64 => ints::<Int64Type>(column),
        DataType::UInt8 => ints::<UInt8Type>(column),
        DataType::UInt16 => ints::<UInt16Type>(column),
        DataType::UInt32 => ints::<UInt32Type>(column),
        DataType::UInt64 => ints::<UInt64Type>(column),
        DataType::Float32 => floats(
            column
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.map(f64::from)),
        ),
        DataType::Float64 => floats(column.as_primitive::<Float64Type>().iter()),
        DataType::Utf8 => column
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(labels::from_text))
            .collect(),
        DataType::LargeUtf8 => column
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(labels::from_text))
            .collect(),
        DataType::Utf8View => column
            .as_string_view()
            .iter()
            .map(|v| v.map(labels::from_text))
            .collect(),
        // Pandas categoricals come as dictionaries: each row's label is its key's value.
        DataType::Dictionary(_, _) => {
            let dictionary = column.as_any_dictionary();
            let values = labels(dictionary.values().as_ref(), name, file)?;
            let keys = dictionary.normalized_keys();
            keys.into_iter()
                .enumerate()
                .map(|(row, key)| values[key].clone().filter(|_| column.is_valid(row)))
                .collect()
        }
        other => bail!(
            "{}: label column \"{name}\" holds {other}, not class ids or names; \
             name an integer or string column with --label-column",
            file.display()
        ),
    })
}

fn ints<T: ArrowPrimitiveType>(column: &dyn Array) -> Labels
where
    T::Native: TryInto<i64>,
{
    column
        .as_primitive::<T>()
        .iter()
        .map(|v| {
            v.map(|v| match v.try_into() {
                Ok(id) => Ok(Label::Id(id)),
                Err(_) => Err(format!("label {v:?} does not fit in an i64")),
            })
        })
        .collect()
}

fn floats(values: impl Iterator<Item = Option<f64>>) -> Labels {
    values
        .map(|v| v.map(|v| labels::from_f64(v).map(Label::Id)))
        .collect()
}

/// ClassLabel names of `column` in HF `features` JSON (dataset_info.json's
/// `features`, or `info.features` of the `huggingface` schema metadata).
pub(super) fn class_names(features: &Value, column: &str) -> Option<Vec<String>> {
    let feature = features.get(column)?;
    if feature.get("_type")?.as_str()? != "ClassLabel" {
        return None;
    }
    feature
        .get("names")?
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// HF writers put the dataset's features in the Arrow schema metadata under
/// `huggingface`; parquet files from the hub carry it too.
pub(super) fn class_names_in_metadata(
    metadata: &HashMap<String, String>,
    column: &str,
) -> Option<Vec<String>> {
    let info: Value = serde_json::from_str(metadata.get("huggingface")?).ok()?;
    class_names(info.get("info")?.get("features")?, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::NumericLabels;
    use arrow_array::{
        BinaryArray, DictionaryArray, Float64Array, Int32Array, Int64Array, LargeStringArray,
        StringArray, StringViewArray,
    };
    use std::sync::Arc;

    fn batch(text: Arc<dyn Array>, label: Arc<dyn Array>) -> RecordBatch {
        RecordBatch::try_from_iter([("text", text), ("label", label)]).unwrap()
    }

    fn load(batch: &RecordBatch) -> Result<RawSplit> {
        load_with(batch, &LoadOptions::default())
    }

    fn load_with(batch: &RecordBatch, opts: &LoadOptions) -> Result<RawSplit> {
        let mut out = RawSplit::new("train");
        out.start_file(Path::new("f.arrow"));
        append(batch, opts, Path::new("f.arrow"), 1, &mut out)?;
        Ok(out)
    }

    #[test]
    fn negative_integers_are_refused_as_ids_and_read_as_names() {
        let b = batch(
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(Int64Array::from(vec![1, -1, 1])),
        );
        let err = load(&b).err().unwrap().to_string();
        assert!(
            err.starts_with("f.arrow row 2: label -1 is negative"),
            "{err}"
        );
        let names = LoadOptions {
            numeric_labels: NumericLabels::Names,
            ..LoadOptions::default()
        };
        let split = load_with(&b, &names).unwrap();
        assert_eq!(split.names, ["1", "-1"]);
        assert_eq!(split.labels, [0, 1, 0]);
    }

    #[test]
    fn reads_string_and_binary_texts_with_any_integer_labels() {
        let b = batch(
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(Int32Array::from(vec![1, 0])),
        );
        let split = load(&b).unwrap();
        assert_eq!(split.texts, ["a", "b"]);
        assert_eq!(split.labels, [1, 0]);
        let b = batch(
            Arc::new(BinaryArray::from(vec![&b"x"[..]])),
            Arc::new(Float64Array::from(vec![1.0])),
        );
        assert_eq!(load(&b).unwrap().labels, [1]);
    }

    #[test]
    fn reads_labels_given_by_name_in_any_string_column() {
        let texts = || Arc::new(StringArray::from(vec!["a", "b", "c"])) as Arc<dyn Array>;
        let columns: [Arc<dyn Array>; 4] = [
            Arc::new(StringArray::from(vec!["pos", "neg", "pos"])),
            Arc::new(LargeStringArray::from(vec!["pos", "neg", "pos"])),
            Arc::new(StringViewArray::from(vec!["pos", "neg", "pos"])),
            // A pandas categorical, as pyarrow writes it.
            Arc::new(DictionaryArray::<arrow_array::types::Int8Type>::from_iter(
                ["pos", "neg", "pos"],
            )),
        ];
        for labels in columns {
            let kind = labels.data_type().clone();
            let split = load(&batch(texts(), labels)).unwrap();
            assert_eq!(split.names, ["pos", "neg"], "{kind}");
            assert_eq!(split.labels, [0, 1, 0], "{kind}");
        }
        let nulls = DictionaryArray::<arrow_array::types::Int8Type>::from_iter([
            Some("pos"),
            None,
            Some("neg"),
        ]);
        let err = load(&batch(texts(), Arc::new(nulls)))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("f.arrow row 2: label is null"), "{err}");
    }

    #[test]
    fn row_errors_name_the_row() {
        let err = |b: RecordBatch| load(&b).err().unwrap().to_string();
        let bad = batch(
            Arc::new(BinaryArray::from(vec![&b"ok"[..], &[0xff, 0xfe][..]])),
            Arc::new(Int32Array::from(vec![0, 1])),
        );
        assert!(err(bad).starts_with("f.arrow row 2: text is not UTF-8"));
        let null = batch(
            Arc::new(StringArray::from(vec![None, Some("a")])),
            Arc::new(Int32Array::from(vec![0, 1])),
        );
        assert!(err(null).starts_with("f.arrow row 1: text is null"));
        let null = batch(
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(Int32Array::from(vec![Some(0), None])),
        );
        assert!(err(null).starts_with("f.arrow row 2: label is null"));
        let neg = batch(
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int32Array::from(vec![-1])),
        );
        assert!(err(neg).starts_with("f.arrow row 1: label -1 is negative"));
        let frac = batch(
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Float64Array::from(vec![1.5])),
        );
        assert!(err(frac).starts_with("f.arrow row 1: label 1.5 is not an integer"));
    }

    #[test]
    fn a_missing_column_lists_the_columns() {
        let b = RecordBatch::try_from_iter([(
            "review",
            Arc::new(StringArray::from(vec!["a"])) as Arc<dyn Array>,
        )])
        .unwrap();
        let err = load(&b).err().unwrap().to_string();
        assert!(
            err.contains("no column \"text\" (it has \"review\")") && err.contains("--text-column"),
            "{err}"
        );
    }

    #[test]
    fn finds_class_label_names_in_hf_metadata() {
        let meta = r#"{"info": {"features": {"text": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["negative", "positive"], "_type": "ClassLabel"}}}}"#;
        let metadata = HashMap::from([("huggingface".to_string(), meta.to_string())]);
        assert_eq!(
            class_names_in_metadata(&metadata, "label").unwrap(),
            ["negative", "positive"]
        );
        assert!(class_names_in_metadata(&metadata, "text").is_none());
    }
}
