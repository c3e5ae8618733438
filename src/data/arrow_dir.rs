//! HF `save_to_disk` folders: a DatasetDict (`dataset_dict.json` naming split
//! folders) or one Dataset (`state.json`), data in Arrow IPC stream files.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context, Result};
use arrow_ipc::reader::StreamReader;
use serde_json::Value;

use super::columns;
use super::layout;
use super::raw::{Loaded, RawSplit};
use super::LoadOptions;

pub(super) fn is_save_to_disk(dir: &Path) -> bool {
    dir.join("dataset_dict.json").is_file() || dir.join("state.json").is_file()
}

pub(super) fn load(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let mut loaded = Loaded {
        splits: Vec::new(),
        class_names: None,
    };
    let dict = dir.join("dataset_dict.json");
    if dict.is_file() {
        let json = read_json(&dict)?;
        let Some(names) = json.get("splits").and_then(Value::as_array) else {
            bail!(
                "{}: no \"splits\" list; is it a datasets save_to_disk folder?",
                dict.display()
            );
        };
        for name in names {
            let Some(name) = name.as_str() else {
                bail!("{}: split name {name} is not a string", dict.display());
            };
            load_split(&dir.join(name), name, opts, &mut loaded)?;
        }
    } else {
        let name = single_split_name(dir)?;
        load_split(dir, &name, opts, &mut loaded)?;
    }
    Ok(loaded)
}

/// A lone Dataset keeps the split it was cut from (`_split`), else its
/// folder's name when that is a split name, else "train".
pub(super) fn single_split_name(dir: &Path) -> Result<String> {
    let state = read_json(&dir.join("state.json"))?;
    if let Some(split) = state.get("_split").and_then(Value::as_str) {
        return Ok(split.to_string());
    }
    let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(folder
        .filter(|n| layout::is_split_name(n))
        .unwrap_or_else(|| "train".to_string()))
}

fn load_split(dir: &Path, name: &str, opts: &LoadOptions, loaded: &mut Loaded) -> Result<()> {
    let state_file = dir.join("state.json");
    let state = read_json(&state_file)?;
    let Some(files) = state.get("_data_files").and_then(Value::as_array) else {
        bail!(
            "{}: no \"_data_files\" list; is it a datasets save_to_disk folder?",
            state_file.display()
        );
    };
    if loaded.class_names.is_none() {
        let info = dir.join("dataset_info.json");
        if info.is_file() {
            let features = read_json(&info)?;
            loaded.class_names = features
                .get("features")
                .and_then(|f| columns::class_names(f, &opts.label_column));
        }
    }
    let mut split = RawSplit::new(name);
    for entry in files {
        let Some(file) = entry.get("filename").and_then(Value::as_str) else {
            bail!(
                "{}: a _data_files entry has no filename",
                state_file.display()
            );
        };
        read_stream(&dir.join(file), opts, &mut split, &mut loaded.class_names)?;
    }
    loaded.splits.push(split);
    Ok(())
}

fn read_stream(
    file: &Path,
    opts: &LoadOptions,
    out: &mut RawSplit,
    names: &mut Option<Vec<String>>,
) -> Result<()> {
    let reader = File::open(file)
        .with_context(|| format!("{}: cannot open (listed in state.json)", file.display()))?;
    let reader = StreamReader::try_new(BufReader::new(reader), None).with_context(|| {
        format!(
            "{}: not an Arrow IPC stream as save_to_disk writes",
            file.display()
        )
    })?;
    let schema = reader.schema();
    columns::find(&schema, opts, file)?;
    if names.is_none() {
        *names = columns::class_names_in_metadata(schema.metadata(), &opts.label_column);
    }
    out.start_file(file);
    let mut row = 1;
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: unreadable Arrow batch", file.display()))?;
        columns::append(&batch, opts, file, row, out)?;
        row += batch.num_rows();
    }
    Ok(())
}

fn read_json(file: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))
}
