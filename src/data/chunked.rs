//! One split of any `--data` form read a bounded chunk of rows at a time, for jobs over
//! splits too large to hold (bulk predict and encode). The whole-split loader in
//! `mod.rs` stays what train and test use.
//!
//! Rows are numbered from 0 across the split's files in the loader's order, so a row
//! range `[start, end)` means the same rows to every process that opens the split.
//! The label column is optional here: unlabelled data is what bulk jobs mostly see. Its
//! labels are read only when a head scores them ([`LoadOptions::head_labels`]), which
//! gives names their ids.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use csv::ByteRecord;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;

use super::delimited::{Dialect, Rows};
use super::guard::guarded;
use super::labels::{self, Label, NumericLabels};
use super::raw::{cut, missing_column, row_error};
use super::{arrow_dir, columns, layout, Format, LoadOptions, ACCEPTED};

/// Rows the per-file readers hand over at a time (parquet and Arrow decode in batches
/// of about this size; JSONL and CSV are cut into them).
const READ_BATCH: usize = 1024;

/// A split's files, their row counts, and whether it has a label column.
#[derive(Clone, Debug)]
pub struct ChunkedSplit {
    pub source: PathBuf,
    pub split: String,
    pub format: Format,
    files: Vec<PathBuf>,
    file_rows: Vec<usize>,
    pub has_labels: bool,
    /// The first row (from 0 in the split) whose label is not one of the
    /// `opts.head_labels` classes, and that label: found while counting, so that a job
    /// is refused before it encodes anything.
    pub label_past_head: Option<(usize, i64)>,
    /// The head's id of each id the data's ClassLabel numbers, when it lists the head's
    /// classes in another order ([`labels::head_ids_of`]).
    head_ids: Option<Vec<i64>>,
    opts: LoadOptions,
}

/// Rows `[first, first + texts.len())` of a split.
#[derive(Debug)]
pub struct RowChunk {
    pub first: usize,
    pub texts: Vec<String>,
    /// The label ids, when the split has a label column and a head scores it.
    pub labels: Option<Vec<i64>>,
}

/// A label as a head scores it: its class id, and whether the row wrote it as a name.
type HeadLabel = (i64, bool);

/// Opens split `split` of `source` (any form `load` accepts) and counts its rows: from
/// the footer for parquet, by one streaming pass for the other formats.
pub fn open_split(source: &Path, split: &str, opts: &LoadOptions) -> Result<ChunkedSplit> {
    if !source.exists() {
        bail!(
            "{}: no such file or folder; --data takes {ACCEPTED}",
            source.display()
        );
    }
    let (format, groups) = if source.is_dir() {
        if arrow_dir::is_save_to_disk(source) {
            (Format::SaveToDisk, save_to_disk_groups(source, split)?)
        } else {
            layout::scan_dir(source)?.ok_or_else(|| {
                anyhow!(
                    "{}: no dataset found in this folder; --data takes {ACCEPTED}",
                    source.display()
                )
            })?
        }
    } else {
        let format = Format::of_file(source).ok_or_else(|| {
            anyhow!(
                "{}: unknown data format; --data takes {ACCEPTED}",
                source.display()
            )
        })?;
        (format, layout::for_file(source, format)?)
    };
    let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
    let Some((_, files)) = groups.iter().find(|(n, _)| n == split) else {
        bail!(
            "unknown split \"{split}\" in {}: it has {}; pick one with --split",
            source.display(),
            names.join(", ")
        );
    };
    let mut has_labels = None;
    let mut label_past_head = None;
    let mut forms = Forms::default();
    let mut file_rows = Vec::with_capacity(files.len());
    let mut class_names = None;
    for file in files {
        let FileCount {
            rows,
            labelled,
            past_head,
            forms: file_forms,
            class_names: file_class_names,
        } = count_rows(format, file, opts)?;
        class_names = class_names.or(file_class_names);
        let before: usize = file_rows.iter().sum();
        if let (None, Some((row, label))) = (label_past_head, past_head) {
            label_past_head = Some((before + row - 1, label));
        }
        forms.add(file_forms, before);
        match has_labels {
            None => has_labels = Some(labelled),
            Some(h) if h != labelled => bail!(
                "{}: {} column \"{}\" where the split's other files {}; give every file the same columns",
                file.display(),
                if labelled { "has a" } else { "has no" },
                opts.label_column,
                if labelled { "have none" } else { "have one" }
            ),
            Some(_) => {}
        }
        file_rows.push(rows);
    }
    if class_names.is_some()
        && has_labels == Some(true)
        && opts.numeric_labels == NumericLabels::Names
    {
        bail!(
            "{}",
            labels::class_label_with_names(&source.display().to_string(), true)
        );
    }
    // As the whole-split loader: ids a ClassLabel numbers mean its names, which a head
    // trained on another order of them numbers otherwise.
    let head_ids = match (&class_names, &opts.head_labels) {
        (Some(names), Some(head)) if has_labels == Some(true) => labels::head_ids_of(names, head),
        _ => None,
    };
    let split = ChunkedSplit {
        source: source.to_path_buf(),
        split: split.to_string(),
        format,
        files: files.clone(),
        file_rows,
        has_labels: has_labels.unwrap_or(false),
        label_past_head,
        head_ids,
        opts: opts.clone(),
    };
    forms.check(&split)?;
    Ok(split)
}

/// A split's labels counted by how the rows write them, with the first of each way
/// (its split row from 0, and its id): labels written both ways are refused at the first
/// of the rarer way, as the whole-split loader refuses them.
#[derive(Default)]
struct Forms {
    rows: usize,
    named: usize,
    first_id: Option<(usize, i64)>,
    first_name: Option<(usize, i64)>,
}

impl Forms {
    /// Counts `labels`, the first of them at split row `first`.
    fn count(&mut self, labels: &[HeadLabel], first: usize) {
        for (i, &(id, named)) in labels.iter().enumerate() {
            let first_of_its_way = if named {
                &mut self.first_name
            } else {
                &mut self.first_id
            };
            first_of_its_way.get_or_insert((first + i, id));
            self.named += usize::from(named);
        }
        self.rows += labels.len();
    }

    /// Adds a file's counts, its rows starting at split row `start`.
    fn add(&mut self, file: Forms, start: usize) {
        let moved = |first: Option<(usize, i64)>| first.map(|(row, id)| (start + row, id));
        self.first_id = self.first_id.or(moved(file.first_id));
        self.first_name = self.first_name.or(moved(file.first_name));
        self.rows += file.rows;
        self.named += file.named;
    }

    fn check(&self, split: &ChunkedSplit) -> Result<()> {
        let Some(odd_named) = labels::odd_form(self.named, self.rows) else {
            return Ok(());
        };
        let (first, others) = if odd_named {
            (self.first_name, self.rows - self.named)
        } else {
            (self.first_id, self.named)
        };
        let (row, id) = first.expect("both ways were counted");
        let shown = match (odd_named, &split.opts.head_labels) {
            (true, Some(names)) => format!("\"{}\"", cut(&names[id as usize])),
            _ => id.to_string(),
        };
        let (file, row) = split.locate(row);
        Err(row_error(
            file,
            row,
            labels::mixed_forms(odd_named, &shown, others, self.rows),
        ))
    }
}

impl ChunkedSplit {
    pub fn rows(&self) -> usize {
        self.file_rows.iter().sum()
    }

    /// Whether chunks carry labels: the split has a label column and a head scores it.
    fn scores_labels(&self) -> bool {
        self.has_labels && self.opts.head_labels.is_some()
    }

    /// The split's files in row order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The file holding split row `row` (from 0) and its row there, counted from 1 as
    /// the readers' errors count them.
    pub fn locate(&self, row: usize) -> (&Path, usize) {
        let mut start = 0;
        for (file, &rows) in self.files.iter().zip(&self.file_rows) {
            if row < start + rows {
                return (file, row - start + 1);
            }
            start += rows;
        }
        panic!("row {row} is past the split's {start} rows");
    }

    /// Rows `[start, end)` in chunks of `chunk_rows` (the last one shorter): chunk `i`
    /// holds rows `start + i * chunk_rows ..`, whatever the files' own batches are.
    pub fn chunks(&self, start: usize, end: usize, chunk_rows: usize) -> Chunks<'_> {
        assert!(chunk_rows > 0 && start <= end && end <= self.rows());
        Chunks {
            split: self,
            next_row: start,
            end,
            chunk_rows,
            file: 0,
            file_start: 0,
            reader: None,
            file_left: 0,
            pending: Pending::default(),
        }
    }
}

#[derive(Default)]
struct Pending {
    texts: Vec<String>,
    labels: Vec<i64>,
}

type Batches = Box<dyn Iterator<Item = Result<(Vec<String>, Option<Vec<HeadLabel>>)>>>;

pub struct Chunks<'a> {
    split: &'a ChunkedSplit,
    /// The split row the next chunk starts at.
    next_row: usize,
    end: usize,
    chunk_rows: usize,
    /// The file being read and the split row its first row is.
    file: usize,
    file_start: usize,
    reader: Option<Batches>,
    /// Rows the open file has still to give, by its count when the split was opened.
    file_left: usize,
    /// Rows read past the chunk handed out last, from `next_row` on.
    pending: Pending,
}

impl Iterator for Chunks<'_> {
    type Item = Result<RowChunk>;

    fn next(&mut self) -> Option<Result<RowChunk>> {
        if self.next_row >= self.end {
            return None;
        }
        let want = self.chunk_rows.min(self.end - self.next_row);
        Some(self.fill(want).map(|()| {
            let texts: Vec<String> = self.pending.texts.drain(..want).collect();
            let labels: Option<Vec<i64>> = self
                .split
                .scores_labels()
                .then(|| self.pending.labels.drain(..want).collect());
            let first = self.next_row;
            self.next_row += want;
            RowChunk {
                first,
                texts,
                labels,
            }
        }))
    }
}

impl Chunks<'_> {
    /// Reads until `want` rows from `next_row` on are pending.
    fn fill(&mut self, want: usize) -> Result<()> {
        while self.pending.texts.len() < want {
            if self.reader.is_none() {
                self.open_next_file()?;
            }
            let reader = self.reader.as_mut().expect("opened above");
            match reader.next() {
                Some(batch) => {
                    let (texts, labels) = batch?;
                    self.file_left = self
                        .file_left
                        .checked_sub(texts.len())
                        .ok_or_else(|| self.file_changed())?;
                    self.pending.texts.extend(texts);
                    if let Some(labels) = labels {
                        let head_ids = self.split.head_ids.as_deref();
                        self.pending
                            .labels
                            .extend(labels.into_iter().map(|(id, named)| match head_ids {
                                Some(ids) if !named => ids.get(id as usize).copied().unwrap_or(id),
                                _ => id,
                            }));
                    }
                }
                None => {
                    if self.file_left > 0 {
                        return Err(self.file_changed());
                    }
                    self.file_start += self.split.file_rows[self.file];
                    self.file += 1;
                    self.reader = None;
                }
            }
        }
        Ok(())
    }

    /// Opens the file holding row `next_row + pending`, skipping whole files before it
    /// and the rows of this one before it.
    fn open_next_file(&mut self) -> Result<()> {
        let wanted = self.next_row + self.pending.texts.len();
        while self.file_start + self.split.file_rows[self.file] <= wanted {
            self.file_start += self.split.file_rows[self.file];
            self.file += 1;
        }
        let skip = wanted - self.file_start;
        let split = self.split;
        let file = &split.files[self.file];
        self.reader = Some(read_file(split.format, file, &split.opts, skip)?);
        self.file_left = split.file_rows[self.file] - skip;
        Ok(())
    }

    /// The open file gives other rows than it held when the split was opened: every
    /// later row is found by those counts, so one more or fewer would shift their indices
    /// (or run past the last file).
    fn file_changed(&self) -> anyhow::Error {
        anyhow!(
            "{}: it no longer holds the {} rows it held when the job started (it changed while being read): run the job again once it is written",
            self.split.files[self.file].display(),
            self.split.file_rows[self.file]
        )
    }
}

/// The rows of `file` after its first `skip`, in batches. The parquet and Arrow
/// decoders can panic on corrupt bytes (see `guard`), lazily as well as when opening,
/// so both the opening and every batch run under the guard.
fn read_file(format: Format, file: &Path, opts: &LoadOptions, skip: usize) -> Result<Batches> {
    let Some(what) = panicking_decoder(format) else {
        return read_file_unguarded(format, file, opts, skip);
    };
    let mut batches = guarded(file, what, || read_file_unguarded(format, file, opts, skip))?;
    let file = file.to_path_buf();
    let mut failed = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        // A decoder that panicked is in no state to be asked again.
        guarded(&file, what, || Ok(batches.next())).unwrap_or_else(|e| {
            failed = true;
            Some(Err(e))
        })
    })))
}

/// What to call the file in the guard's error, for the formats whose decoders are
/// other crates' that panic; `None` for our own parsers, which return errors.
fn panicking_decoder(format: Format) -> Option<&'static str> {
    match format {
        Format::Parquet => Some("parquet file"),
        Format::SaveToDisk => Some("Arrow IPC stream"),
        Format::Jsonl | Format::Csv | Format::Tsv => None,
    }
}

fn read_file_unguarded(
    format: Format,
    file: &Path,
    opts: &LoadOptions,
    skip: usize,
) -> Result<Batches> {
    match format {
        Format::Parquet => read_parquet(file, opts, skip),
        Format::SaveToDisk => read_arrow(file, opts, skip),
        Format::Jsonl => read_jsonl(file, opts, skip),
        Format::Csv => read_delimited(file, Dialect::Csv, opts, skip),
        Format::Tsv => read_delimited(file, Dialect::Tsv, opts, skip),
    }
}

/// A file's rows, whether it has a label column, its first row (from 1) whose label is
/// past `opts.head_labels`, with that label, and its labels counted by how they are
/// written (rows from 0 in the file).
struct FileCount {
    rows: usize,
    labelled: bool,
    past_head: Option<(usize, i64)>,
    forms: Forms,
    /// The label names of the file's ClassLabel, when it records one.
    class_names: Option<Vec<String>>,
}

fn count_rows(format: Format, file: &Path, opts: &LoadOptions) -> Result<FileCount> {
    match panicking_decoder(format) {
        Some(what) => guarded(file, what, || count_rows_unguarded(format, file, opts)),
        None => count_rows_unguarded(format, file, opts),
    }
}

fn count_rows_unguarded(format: Format, file: &Path, opts: &LoadOptions) -> Result<FileCount> {
    match format {
        Format::Parquet => {
            let handle =
                File::open(file).with_context(|| format!("{}: cannot open", file.display()))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
                .with_context(|| format!("{}: not a readable parquet file", file.display()))?;
            let label = find_columns(builder.schema(), opts, file)?.1;
            let class_names =
                columns::class_names_in_metadata(builder.schema().metadata(), &opts.label_column);
            // The row count is in the footer, but the labels are not: they are read
            // alone (the label column only, a small part of the file's bytes).
            let mut forms = Forms::default();
            let past_head = match label {
                Some(index) if opts.head_labels.is_some() => {
                    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
                    let reader = builder
                        .with_projection(mask)
                        .with_batch_size(READ_BATCH)
                        .build()
                        .with_context(|| format!("{}: cannot decode", file.display()))?;
                    let mut row = 1;
                    let mut found = None;
                    for batch in reader {
                        let batch =
                            batch.with_context(|| format!("{}: cannot decode", file.display()))?;
                        let labels = batch_labels(batch.column(0).as_ref(), opts, file, row)?;
                        forms.count(&labels, row - 1);
                        found = found.or_else(|| first_past_head(&labels, opts, row));
                        row += batch.num_rows();
                    }
                    found
                }
                _ => None,
            };
            let reader = SerializedFileReader::new(
                File::open(file).with_context(|| format!("{}: cannot open", file.display()))?,
            )
            .with_context(|| format!("{}: not a readable parquet file", file.display()))?;
            let rows = parquet_row_count(reader.metadata()).map_err(|why| {
                anyhow!(
                    "{}: {why}: the file is corrupt; re-export it",
                    file.display()
                )
            })?;
            Ok(FileCount {
                rows,
                labelled: label.is_some(),
                past_head,
                forms,
                class_names,
            })
        }
        _ => {
            let (labelled, class_names) = match format {
                Format::SaveToDisk => {
                    let reader = arrow_stream(file)?;
                    let labelled = find_columns(&reader.schema(), opts, file)?.1.is_some();
                    (
                        labelled,
                        save_to_disk_class_names(file, &reader.schema(), opts)?,
                    )
                }
                Format::Jsonl => (jsonl_has_label(file, opts)?, None),
                Format::Csv => (delimited_rows(file, Dialect::Csv, opts)?.2.is_some(), None),
                _ => (delimited_rows(file, Dialect::Tsv, opts)?.2.is_some(), None),
            };
            // The one pass that counts the rows decodes their labels too: checked here.
            let mut rows = 0;
            let mut past_head = None;
            let mut forms = Forms::default();
            for batch in read_file(format, file, opts, 0)? {
                let (texts, labels) = batch?;
                if let Some(labels) = labels {
                    forms.count(&labels, rows);
                    past_head = past_head.or_else(|| first_past_head(&labels, opts, rows + 1));
                }
                rows += texts.len();
            }
            Ok(FileCount {
                rows,
                labelled,
                past_head,
                forms,
                class_names,
            })
        }
    }
}

/// The ClassLabel names of a save_to_disk stream file's label column, as the whole-split
/// loader reads them: its folder's dataset_info.json first, else the stream's schema.
fn save_to_disk_class_names(
    file: &Path,
    schema: &arrow_schema::Schema,
    opts: &LoadOptions,
) -> Result<Option<Vec<String>>> {
    let info = file.with_file_name("dataset_info.json");
    if info.is_file() {
        if let Some(names) = arrow_dir::read_dataset_info(&info)?
            .get("features")
            .and_then(|f| columns::class_names(f, &opts.label_column))
        {
            return Ok(Some(names));
        }
    }
    Ok(columns::class_names_in_metadata(
        schema.metadata(),
        &opts.label_column,
    ))
}

/// The text column's index, and the label column's when there is one.
fn find_columns(
    schema: &arrow_schema::Schema,
    opts: &LoadOptions,
    file: &Path,
) -> Result<(usize, Option<usize>)> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let text = names
        .iter()
        .position(|n| *n == opts.text_column)
        .ok_or_else(|| missing_column(file, &opts.text_column, "--text-column", &names))?;
    let label = names.iter().position(|n| *n == opts.label_column);
    Ok((text, label))
}

/// A decoded Arrow batch's texts, and its labels when a head scores them; `first_row`
/// (1-based in the file) names the row of an error.
fn batch_rows(
    batch: &RecordBatch,
    opts: &LoadOptions,
    file: &Path,
    first_row: usize,
) -> Result<(Vec<String>, Option<Vec<HeadLabel>>)> {
    let (text_index, label_index) = find_columns(&batch.schema(), opts, file)?;
    let raw = columns::texts(batch.column(text_index).as_ref(), &opts.text_column, file)?;
    let mut texts = Vec::with_capacity(raw.len());
    for (i, text) in raw.into_iter().enumerate() {
        let row = first_row + i;
        let bytes =
            text.ok_or_else(|| row_error(file, row, "text is null; drop or fill the row"))?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| row_error(file, row, "text is not UTF-8; re-encode the data as UTF-8"))?;
        texts.push(text);
    }
    let labels = label_index
        .filter(|_| opts.head_labels.is_some())
        .map(|index| batch_labels(batch.column(index).as_ref(), opts, file, first_row))
        .transpose()?;
    Ok((texts, labels))
}

/// A decoded Arrow label column's labels; `first_row` as for [`batch_rows`].
fn batch_labels(
    column: &dyn arrow_array::Array,
    opts: &LoadOptions,
    file: &Path,
    first_row: usize,
) -> Result<Vec<HeadLabel>> {
    let labels = columns::labels(column, &opts.label_column, file)?;
    let mut out = Vec::with_capacity(labels.len());
    for (i, label) in labels.into_iter().enumerate() {
        let row = first_row + i;
        let label =
            label.ok_or_else(|| row_error(file, row, "label is null; drop or fill the row"))?;
        out.push(
            label
                .and_then(|l| head_label(l, opts))
                .map_err(|e| row_error(file, row, e))?,
        );
    }
    Ok(out)
}

/// `label` as the head of `opts` scores it: a name is the index of the head's name.
fn head_label(label: Label, opts: &LoadOptions) -> Result<HeadLabel, String> {
    let names = opts
        .head_labels
        .as_deref()
        .expect("labels are read only for a head");
    match labels::numbers_as(label, opts.numeric_labels)? {
        Label::Id(id) => Ok((id, false)),
        Label::Name(name) => match names.iter().position(|n| *n == name) {
            Some(id) => Ok((id as i64, true)),
            None => Err(labels::not_the_heads(&name, names)),
        },
    }
}

/// The first of `labels` (the first at row `first_row` of its file) past the head's
/// classes, with its row. Names are the head's own, never past them.
fn first_past_head(
    labels: &[HeadLabel],
    opts: &LoadOptions,
    first_row: usize,
) -> Option<(usize, i64)> {
    let classes = opts.head_labels.as_ref()?.len();
    let ids: Vec<i64> = labels.iter().map(|&(id, _)| id).collect();
    first_label_past(&ids, classes).map(|i| (first_row + i, ids[i]))
}

/// The rows a parquet file holds, by its footer, which must agree with its row groups:
/// chunks find their rows by these counts without reading the files before them, so a
/// corrupt count (a negative one, or one off) would shift every later row's index, or
/// drop a file's rows, with no error.
pub fn parquet_row_count(meta: &ParquetMetaData) -> Result<usize, String> {
    let footer = meta.file_metadata().num_rows();
    let groups = meta
        .row_groups()
        .iter()
        .try_fold(0i64, |sum, g| sum.checked_add(g.num_rows()));
    match (usize::try_from(footer), groups) {
        (Ok(rows), Some(held)) if held == footer => Ok(rows),
        (_, held) => Err(format!(
            "its footer gives {footer} rows but its row groups hold {}",
            held.map_or("more than that can count".to_string(), |h| h.to_string())
        )),
    }
}

/// The index of the first of `labels` that is no id of `classes` classes.
pub fn first_label_past(labels: &[i64], classes: usize) -> Option<usize> {
    labels
        .iter()
        .position(|&l| usize::try_from(l).map_or(true, |l| l >= classes))
}

fn read_parquet(file: &Path, opts: &LoadOptions, skip: usize) -> Result<Batches> {
    let handle = File::open(file).with_context(|| format!("{}: cannot open", file.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle)
        .with_context(|| format!("{}: not a readable parquet file", file.display()))?;
    let (text, label) = find_columns(builder.schema(), opts, file)?;
    let roots: Vec<usize> = std::iter::once(text).chain(label).collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH)
        .with_offset(skip)
        .build()
        .with_context(|| format!("{}: cannot decode", file.display()))?;
    let (file, opts) = (file.to_path_buf(), opts.clone());
    let mut row = skip + 1;
    Ok(Box::new(reader.map(move |batch| {
        let batch = batch.with_context(|| format!("{}: cannot decode", file.display()))?;
        let rows = batch_rows(&batch, &opts, &file, row)?;
        row += batch.num_rows();
        Ok(rows)
    })))
}

fn arrow_stream(file: &Path) -> Result<StreamReader<BufReader<File>>> {
    let handle = File::open(file)
        .with_context(|| format!("{}: cannot open (listed in state.json)", file.display()))?;
    let len = handle
        .metadata()
        .with_context(|| format!("{}: cannot read its size", file.display()))?
        .len();
    super::arrow_dir::check_framing(file, len)?;
    StreamReader::try_new(BufReader::new(handle), None).with_context(|| {
        format!(
            "{}: not an Arrow IPC stream as save_to_disk writes",
            file.display()
        )
    })
}

fn read_arrow(file: &Path, opts: &LoadOptions, skip: usize) -> Result<Batches> {
    let reader = arrow_stream(file)?;
    let (file, opts) = (file.to_path_buf(), opts.clone());
    // Row (0-based in the file) of the next batch's first row.
    let mut at = 0;
    Ok(Box::new(reader.filter_map(move |batch| {
        let result = (|| {
            let batch =
                batch.with_context(|| format!("{}: unreadable Arrow batch", file.display()))?;
            let first = at;
            at += batch.num_rows();
            if at <= skip {
                return Ok(None);
            }
            let from = skip.saturating_sub(first);
            let batch = batch.slice(from, batch.num_rows() - from);
            batch_rows(&batch, &opts, &file, first + from + 1).map(Some)
        })();
        result.transpose()
    })))
}

fn jsonl_lines(file: &Path) -> Result<impl Iterator<Item = Result<(usize, String)>>> {
    let handle = File::open(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let mut reader = BufReader::new(handle);
    let file = file.to_path_buf();
    let mut row = 0;
    Ok(std::iter::from_fn(move || loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(anyhow!("{}: cannot read ({e})", file.display()))),
        }
        let bytes = if row == 0 {
            line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line)
        } else {
            &line[..]
        };
        // Blank lines (a trailing newline, a gap) are not rows, as in the loader.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        row += 1;
        return Some(match std::str::from_utf8(bytes) {
            Ok(text) => Ok((row, text.to_string())),
            Err(_) => Err(row_error(
                &file,
                row,
                "not UTF-8; re-encode the file as UTF-8",
            )),
        });
    }))
}

fn jsonl_has_label(file: &Path, opts: &LoadOptions) -> Result<bool> {
    match jsonl_lines(file)?.next() {
        None => Ok(false),
        Some(line) => {
            let (row, text) = line?;
            let object = json_object(file, row, &text)?;
            Ok(object.get(&opts.label_column).is_some())
        }
    }
}

fn json_object(file: &Path, row: usize, line: &str) -> Result<serde_json::Map<String, Value>> {
    serde_json::from_str(line).map_err(|e| row_error(file, row, format!("not a JSON object ({e})")))
}

fn read_jsonl(file: &Path, opts: &LoadOptions, skip: usize) -> Result<Batches> {
    let labelled = opts.head_labels.is_some() && jsonl_has_label(file, opts)?;
    let mut lines = jsonl_lines(file)?.skip(skip);
    let (file, opts) = (file.to_path_buf(), opts.clone());
    Ok(Box::new(std::iter::from_fn(move || {
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        let result = (|| -> Result<()> {
            for line in lines.by_ref() {
                let (row, line) = line?;
                let object = json_object(&file, row, &line)?;
                let field = |column: &str, flag: &str| {
                    object.get(column).ok_or_else(|| {
                        let keys: Vec<String> = object.keys().cloned().collect();
                        if row == 1 {
                            missing_column(&file, column, flag, &keys)
                        } else {
                            row_error(
                                &file,
                                row,
                                format!("no field \"{column}\"; every row needs one"),
                            )
                        }
                    })
                };
                match field(&opts.text_column, "--text-column")? {
                    Value::String(text) => texts.push(text.clone()),
                    Value::Null => {
                        return Err(row_error(&file, row, "text is null; drop or fill the row"))
                    }
                    other => {
                        return Err(row_error(
                            &file,
                            row,
                            format!("text is {}, not a string", cut(&other.to_string())),
                        ))
                    }
                }
                if labelled {
                    let value = field(&opts.label_column, "--label-column")?;
                    let label = labels::from_json(value).and_then(|l| head_label(l, &opts));
                    labels.push(label.map_err(|e| row_error(&file, row, e))?);
                }
                if texts.len() == READ_BATCH {
                    break;
                }
            }
            Ok(())
        })();
        match result {
            Err(e) => Some(Err(e)),
            Ok(()) if texts.is_empty() => None,
            Ok(()) => Some(Ok((texts, labelled.then_some(labels)))),
        }
    })))
}

/// The file's rows, with the text column's index and the label column's (if any).
fn delimited_rows(
    file: &Path,
    dialect: Dialect,
    opts: &LoadOptions,
) -> Result<(Rows, usize, Option<usize>)> {
    let rows = Rows::open(file, dialect)?;
    let text = rows.column(&opts.text_column, "--text-column")?;
    let label = rows.find(&opts.label_column);
    Ok((rows, text, label))
}

fn read_delimited(
    file: &Path,
    dialect: Dialect,
    opts: &LoadOptions,
    skip: usize,
) -> Result<Batches> {
    let (mut rows, text_index, label_index) = delimited_rows(file, dialect, opts)?;
    let label_index = label_index.filter(|_| opts.head_labels.is_some());
    let (file, opts) = (file.to_path_buf(), opts.clone());
    let mut record = ByteRecord::new();
    Ok(Box::new(std::iter::from_fn(move || {
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        let result = (|| -> Result<()> {
            while texts.len() < READ_BATCH {
                if !rows.next(&mut record)? {
                    break;
                }
                let row = rows.row;
                if row <= skip {
                    continue;
                }
                let text = String::from_utf8(record[text_index].to_vec()).map_err(|_| {
                    row_error(&file, row, "text is not UTF-8; re-encode the file as UTF-8")
                })?;
                texts.push(text);
                if let Some(index) = label_index {
                    let label = std::str::from_utf8(&record[index])
                        .map_err(|_| "label is not UTF-8".to_string())
                        .and_then(labels::from_text)
                        .and_then(|l| head_label(l, &opts))
                        .map_err(|e| row_error(&file, row, e))?;
                    labels.push(label);
                }
            }
            Ok(())
        })();
        match result {
            Err(e) => Some(Err(e)),
            Ok(()) if texts.is_empty() => None,
            Ok(()) => Some(Ok((texts, label_index.map(|_| labels)))),
        }
    })))
}

/// A save_to_disk folder's splits, with the Arrow files of split `wanted` as the loader
/// reads them. The other splits' state.json files are not read (their groups are empty):
/// as for the whole-split loader, a split the job does not use cannot fail it.
fn save_to_disk_groups(dir: &Path, wanted: &str) -> Result<layout::Groups> {
    let dict = dir.join("dataset_dict.json");
    let splits: Vec<(String, PathBuf)> = if dict.is_file() {
        let json = arrow_dir::read_json(&dict)?;
        let names = json
            .get("splits")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                anyhow!(
                    "{}: no \"splits\" list; is it a datasets save_to_disk folder?",
                    dict.display()
                )
            })?;
        names
            .iter()
            .map(|n| {
                let name = n
                    .as_str()
                    .ok_or_else(|| anyhow!("{}: split name {n} is not a string", dict.display()))?;
                Ok((name.to_string(), dir.join(name)))
            })
            .collect::<Result<_>>()?
    } else {
        vec![(arrow_dir::single_split_name(dir)?, dir.to_path_buf())]
    };
    let mut groups = Vec::new();
    for (name, split_dir) in splits {
        if name != wanted {
            groups.push((name, Vec::new()));
            continue;
        }
        let state_file = split_dir.join("state.json");
        let state = arrow_dir::read_json(&state_file)?;
        let files = state
            .get("_data_files")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                anyhow!(
                    "{}: no \"_data_files\" list; is it a datasets save_to_disk folder?",
                    state_file.display()
                )
            })?;
        let files = files
            .iter()
            .map(|entry| {
                let file = entry
                    .get("filename")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: a _data_files entry has no filename",
                            state_file.display()
                        )
                    })?;
                Ok(split_dir.join(file))
            })
            .collect::<Result<Vec<_>>>()?;
        groups.push((name, files));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
    }

    /// Every form, any start and chunk size, gives the whole-split loader's rows.
    #[test]
    fn chunks_match_the_whole_split_loader_for_every_form() {
        let opts = LoadOptions {
            head_labels: Some(vec!["0".into(), "1".into()]),
            ..LoadOptions::default()
        };
        let sources = [
            fixtures().join("tiny-dsdict"),
            fixtures().join("tiny-sharded"),
            fixtures().join("tiny-files/train.parquet"),
            fixtures().join("tiny-files/train.jsonl"),
            fixtures().join("tiny-files/train.csv"),
            fixtures().join("tiny-files/train.tsv"),
        ];
        for source in sources {
            let whole = load(&source, &opts).unwrap();
            let want = whole.split("train").unwrap();
            let split = open_split(&source, "train", &opts).unwrap();
            assert_eq!(split.rows(), want.texts.len(), "{}", source.display());
            assert!(split.has_labels);
            for (start, end, size) in [
                (0, 32, 5),
                (3, 29, 7),
                (17, 32, 100),
                (31, 32, 1),
                (5, 5, 3),
            ] {
                let mut texts = Vec::new();
                let mut labels = Vec::new();
                let mut next = start;
                for chunk in split.chunks(start, end, size) {
                    let chunk = chunk.unwrap();
                    assert_eq!(chunk.first, next);
                    assert!(chunk.texts.len() == size || chunk.first + chunk.texts.len() == end);
                    next += chunk.texts.len();
                    texts.extend(chunk.texts);
                    labels.extend(chunk.labels.unwrap().into_iter().map(|l| l as usize));
                }
                assert_eq!(
                    texts,
                    want.texts[start..end],
                    "{} {start}..{end}",
                    source.display()
                );
                assert_eq!(labels, want.labels[start..end]);
            }
        }
    }

    #[test]
    fn a_split_without_labels_reads_texts_alone() {
        let dir = crate::testdir::TestDir::new("chunked");
        let file = dir.write(
            "reviews.jsonl",
            "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n".as_bytes(),
        );
        // A lone file not named for a split is `train` (HF's data_files rule, issue 8).
        let split = open_split(&file, "train", &LoadOptions::default()).unwrap();
        assert!(!split.has_labels);
        let chunks: Vec<RowChunk> = split.chunks(0, 2, 10).map(Result::unwrap).collect();
        assert_eq!(chunks[0].texts, ["a", "b"]);
        assert!(chunks[0].labels.is_none());
        let err = open_split(&file, "test", &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("unknown split \"test\""), "{err}");
    }

    /// Labels are read for a head alone, which gives names their ids; without one (encode)
    /// they are left unread, whatever they hold.
    #[test]
    fn a_heads_names_give_labels_their_ids() {
        let dir = crate::testdir::TestDir::new("chunked");
        let rows = |labels: &[&str]| -> Vec<u8> {
            let lines: Vec<String> = (0..labels.len())
                .map(|i| format!("{{\"text\": \"t{i}\", \"label\": \"{}\"}}\n", labels[i]))
                .collect();
            lines.concat().into_bytes()
        };
        let head = LoadOptions {
            head_labels: Some(vec!["neg".into(), "pos".into()]),
            ..LoadOptions::default()
        };
        let file = dir.write("train.jsonl", &rows(&["pos", "neg", "pos"]));
        let split = open_split(&file, "train", &head).unwrap();
        let chunk = split.chunks(0, 3, 10).next().unwrap().unwrap();
        assert_eq!(chunk.labels.unwrap(), [1, 0, 1]);
        let split = open_split(&file, "train", &LoadOptions::default()).unwrap();
        assert!(split.has_labels);
        let chunk = split.chunks(0, 3, 10).next().unwrap().unwrap();
        assert!(chunk.labels.is_none());

        let csv = dir.write("test.csv", b"text,label\na,neg\nb,meh\n");
        let err = open_split(&csv, "test", &head).unwrap_err().to_string();
        assert!(
            err.ends_with("test.csv row 2: label \"meh\" is not one of the head's labels (neg, pos); check --label-column, or use the head trained for these labels"),
            "{err}"
        );
        let mixed = dir.write("validation.jsonl", &rows(&["pos", "neg", "1", "pos"]));
        let err = open_split(&mixed, "validation", &head)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("validation.jsonl row 3: label 1 is a class id, but 3 of the 4 labels read are names: label every row by name, or every row by id"),
            "{err}"
        );
    }

    #[test]
    fn a_quote_left_open_is_an_error_here_too() {
        let dir = crate::testdir::TestDir::new("chunked");
        let file = dir.write("train.csv", b"text\nok\n\"stray\nmore\n");
        let err = match open_split(&file, "train", &LoadOptions::default()) {
            Ok(split) => split
                .chunks(0, 2, 10)
                .find_map(Result::err)
                .expect("an error"),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains("row 2: a quoted field opens here"),
            "{err}"
        );
    }

    /// A parquet footer whose row count is off (one flipped bit: 32 read as 33, or as
    /// -33) was trusted: with 33, the second file's rows were taken one row late and the
    /// reader indexed past the split's files (a panic); with -33, the first file counted
    /// as empty and its rows were silently left out.
    #[test]
    fn a_parquet_footer_whose_row_count_is_off_is_refused() {
        let valid = std::fs::read(fixtures().join("tiny-files/train.parquet")).unwrap();
        let n = valid.len();
        let footer = n - 8 - u32::from_le_bytes(valid[n - 8..n - 4].try_into().unwrap()) as usize;
        // FileMetaData's num_rows: field 3, i64 (header 0x16), zigzag varint 64 (= 32).
        let at = footer
            + valid[footer..]
                .windows(2)
                .position(|w| w == [0x16, 0x40])
                .expect("the fixture's footer gives 32 rows");
        for (byte, rows) in [(0x42, 33), (0x41, -33)] {
            let mut bytes = valid.clone();
            bytes[at + 1] = byte;
            let dir = crate::testdir::TestDir::new("chunked");
            let file = dir.write("train-00000-of-00002.parquet", &bytes);
            dir.write("train-00001-of-00002.parquet", &valid);
            let meta = SerializedFileReader::new(File::open(&file).unwrap()).unwrap();
            assert_eq!(meta.metadata().file_metadata().num_rows(), rows);
            let Err(err) = open_split(dir.path(), "train", &LoadOptions::default()) else {
                panic!("a footer giving {rows} rows was taken");
            };
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: its footer gives {rows} rows but its row groups hold 32: the file is corrupt; re-export it",
                    file.display()
                )
            );
        }
    }

    /// A file that changes between the count and the read (appended to, or cut, while a
    /// long job runs): one row more in the first file shifted every row of the second
    /// by one, silently; one row fewer in the last ran the reader past the split's files
    /// (index out of bounds). Both are refused, naming the file.
    #[test]
    fn a_file_that_changes_under_the_reader_is_refused() {
        let row = |i: usize| format!("{{\"text\": \"t{i}\", \"label\": {}}}\n", i % 2);
        let rows = |r: std::ops::Range<usize>| r.map(row).collect::<String>();
        for (changed, content) in [(0, rows(0..6)), (1, rows(5..9))] {
            let dir = crate::testdir::TestDir::new("chunked");
            let files = [
                dir.write("train-00000-of-00002.jsonl", rows(0..5).as_bytes()),
                dir.write("train-00001-of-00002.jsonl", rows(5..10).as_bytes()),
            ];
            let split = open_split(dir.path(), "train", &LoadOptions::default()).unwrap();
            std::fs::write(&files[changed], content).unwrap();
            let err = split
                .chunks(0, split.rows(), 3)
                .collect::<Result<Vec<_>>>()
                .err()
                .unwrap_or_else(|| panic!("file {changed} changed unnoticed"));
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: it no longer holds the 5 rows it held when the job started (it changed while being read): run the job again once it is written",
                    files[changed].display()
                )
            );
        }
    }
}
