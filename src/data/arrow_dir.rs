//! HF `save_to_disk` folders: a DatasetDict (`dataset_dict.json` naming split
//! folders) or one Dataset (`state.json`), data in Arrow IPC stream files.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
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
        unread: Vec::new(),
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
            if opts.reads(name) {
                load_split(&dir.join(name), name, opts, &mut loaded)?;
            } else {
                loaded.unread.push(name.to_string());
            }
        }
    } else {
        let name = single_split_name(dir)?;
        if opts.reads(&name) {
            load_split(dir, &name, opts, &mut loaded)?;
        } else {
            loaded.unread.push(name);
        }
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
            let features = read_dataset_info(&info)?;
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
    super::guard::guarded(file, "Arrow IPC stream", || {
        read_stream_unguarded(file, opts, out, names)
    })
}

fn read_stream_unguarded(
    file: &Path,
    opts: &LoadOptions,
    out: &mut RawSplit,
    names: &mut Option<Vec<String>>,
) -> Result<()> {
    let reader = File::open(file)
        .with_context(|| format!("{}: cannot open (listed in state.json)", file.display()))?;
    let len = reader
        .metadata()
        .with_context(|| format!("{}: cannot read its size", file.display()))?
        .len();
    check_framing(file, len)?;
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

/// Walks the stream's message frames (continuation marker, metadata length, flatbuffer
/// `Message`, body) and checks that each declared size fits in the file: arrow-ipc
/// allocates what a frame declares before reading it, so a few corrupt bytes could ask
/// for gigabytes.
pub(super) fn check_framing(file: &Path, len: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let corrupt = |why: &str| {
        anyhow::anyhow!(
            "{}: not an Arrow IPC stream as save_to_disk writes ({why})",
            file.display()
        )
    };
    // A folder opens, and only its first read fails, with the OS's "Is a directory" and
    // no file named.
    if file.is_dir() {
        bail!(
            "{}: a folder, not the Arrow file state.json lists: restore the file save_to_disk wrote",
            file.display()
        );
    }
    let mut f = File::open(file).with_context(|| format!("{}: cannot open", file.display()))?;
    let unreadable = |e: std::io::Error| anyhow::anyhow!("{}: cannot read ({e})", file.display());
    let mut at = 0u64;
    while at + 4 <= len {
        let mut word = [0u8; 4];
        f.seek(SeekFrom::Start(at)).map_err(unreadable)?;
        f.read_exact(&mut word).map_err(unreadable)?;
        let mut meta_len = u32::from_le_bytes(word);
        let mut header = 4;
        if meta_len == u32::MAX {
            if at + 8 > len {
                return Err(corrupt("a frame cut short"));
            }
            f.read_exact(&mut word).map_err(unreadable)?;
            meta_len = u32::from_le_bytes(word);
            header = 8;
        }
        if meta_len == 0 {
            return Ok(());
        }
        let meta_end = at + header + meta_len as u64;
        if meta_len > i32::MAX as u32 || meta_end > len {
            return Err(corrupt("a message longer than the file"));
        }
        let mut meta = vec![0u8; meta_len as usize];
        f.read_exact(&mut meta).map_err(unreadable)?;
        let message =
            arrow_ipc::root_as_message(&meta).map_err(|_| corrupt("an unreadable message"))?;
        let body =
            u64::try_from(message.bodyLength()).map_err(|_| corrupt("a negative body length"))?;
        at = meta_end
            .checked_add(body)
            .filter(|&end| end <= len)
            .ok_or_else(|| corrupt("a body longer than the file"))?;
    }
    Ok(())
}

/// A split's `dataset_info.json`. It is optional: the Arrow files' schema metadata
/// carries the same features (ClassLabel names), so deleting a damaged one is a remedy.
pub(super) fn read_dataset_info(file: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: the split's dataset_info.json does not parse as JSON ({e}): restore it from the dataset's source, or delete it (its Arrow files carry the same features)",
            file.display()
        )
    })
}

/// A save_to_disk folder's JSON file (dataset_dict.json, a split's state.json), refused
/// with the one remedy there is: these are datasets' own records of the Arrow files.
pub(super) fn read_json(file: &Path) -> Result<Value> {
    let remedy =
        "restore it from the dataset's source, or save the dataset again with save_to_disk";
    let text = fs::read_to_string(file)
        .map_err(|e| anyhow!("{}: cannot read ({e}): {remedy}", file.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON ({e}): {remedy}", file.display()))
}
