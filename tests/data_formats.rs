//! Every dataset format loads the same rows, and every bad input fails with
//! one line naming the file (and row) and what to do about it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, LargeStringArray, RecordBatch,
    StringArray,
};
use bertcls::data::{load, Dataset, Format, LoadOptions};
use common::TempDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn present(path: &Path) -> bool {
    if !path.exists() {
        eprintln!("SKIPPED: {} is absent", path.display());
    }
    path.exists()
}

fn opts() -> LoadOptions {
    LoadOptions::default()
}

fn with_labels(names: &[&str]) -> LoadOptions {
    LoadOptions {
        labels: Some(names.iter().map(|n| n.to_string()).collect()),
        ..LoadOptions::default()
    }
}

/// A fresh folder per call (the tests run in parallel in one process), removed when
/// dropped.
fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("data-{tag}"))
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    path
}

fn load_err(source: &Path, opts: &LoadOptions) -> String {
    let err = load(source, opts).expect_err("an error").to_string();
    assert!(!err.contains('\n'), "errors are one line: {err}");
    err
}

fn assert_same_rows(a: &Dataset, b: &Dataset) {
    let names = |d: &Dataset| d.splits.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(a),
        names(b),
        "{} vs {}",
        a.source.display(),
        b.source.display()
    );
    for (x, y) in a.splits.iter().zip(&b.splits) {
        assert_eq!(
            x.texts,
            y.texts,
            "split {} of {}",
            x.name,
            b.source.display()
        );
        assert_eq!(
            x.labels,
            y.labels,
            "split {} of {}",
            x.name,
            b.source.display()
        );
        assert_eq!(x.content_hash, y.content_hash);
    }
}

fn rows(data: &Dataset) -> Vec<(&str, usize)> {
    data.splits
        .iter()
        .map(|s| (s.name.as_str(), s.texts.len()))
        .collect()
}

// Fixtures made with HF datasets (tests/fixtures/data/README.md).

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/data")
}

#[test]
fn fixture_formats_all_hold_the_save_to_disk_rows() {
    if !present(&fixtures().join("tiny-dsdict")) {
        return;
    }
    let reference = load(&fixtures().join("tiny-dsdict"), &opts()).unwrap();
    assert_eq!(reference.format, Format::SaveToDisk);
    assert_eq!(
        rows(&reference),
        [("train", 32), ("validation", 8), ("test", 8)]
    );
    assert_eq!(reference.label_names, ["negative", "positive"]);
    assert_eq!(reference.num_labels(), 2);
    let train = &reference.split("train").unwrap().texts;
    assert!(train.iter().any(|t| t.contains("酒店的\"行政房\"很值，")));

    let sharded = load(&fixtures().join("tiny-sharded"), &opts()).unwrap();
    assert_same_rows(&reference, &sharded);
    assert_eq!(sharded.label_names, reference.label_names);

    let files = fixtures().join("tiny-files");
    for (ext, format, class_label) in [
        ("parquet", Format::Parquet, true),
        ("jsonl", Format::Jsonl, false),
        ("csv", Format::Csv, false),
        ("tsv", Format::Tsv, false),
    ] {
        let source = files.join(format!("train.{ext}"));
        let data = load(&source, &opts()).unwrap();
        assert_eq!(data.format, format);
        assert_same_rows(&reference, &data);
        // Only parquet carries the ClassLabel; the others name labels by id or by --labels.
        let expected: &[&str] = if class_label {
            &["negative", "positive"]
        } else {
            &["0", "1"]
        };
        assert_eq!(data.label_names, expected, "{ext}");
        let named = load(&source, &with_labels(&["negative", "positive"])).unwrap();
        assert_eq!(named.label_names, reference.label_names, "{ext}");
    }
    // A folder of several formats is read as its parquet files.
    assert_eq!(load(&files, &opts()).unwrap().format, Format::Parquet);
}

#[test]
fn a_lone_dataset_is_one_train_split() {
    if !present(&fixtures().join("tiny-dataset")) {
        return;
    }
    let reference = load(&fixtures().join("tiny-dsdict"), &opts()).unwrap();
    let single = load(&fixtures().join("tiny-dataset"), &opts()).unwrap();
    assert_eq!(rows(&single), [("train", 32)]);
    assert_eq!(single.label_names, ["negative", "positive"]);
    assert_eq!(
        single.splits[0].texts,
        reference.split("train").unwrap().texts
    );
    // A split folder of a DatasetDict loads alone too, under its own name.
    let test = load(&fixtures().join("tiny-dsdict/test"), &opts()).unwrap();
    assert_eq!(rows(&test), [("test", 8)]);
}

// The reference dataset, where ../shared is present.

#[test]
fn chnsenticorp_in_every_format() {
    let shared = repo().join("../shared/data");
    if !present(&shared.join("ChnSentiCorp")) {
        return;
    }
    let started = Instant::now();
    let reference = load(&shared.join("ChnSentiCorp"), &opts()).unwrap();
    eprintln!("save_to_disk, all splits: {:?}", started.elapsed());
    assert_eq!(
        rows(&reference),
        [("train", 9600), ("validation", 1200), ("test", 1200)]
    );
    assert_eq!(reference.label_names, ["negative", "positive"]);
    let ones: usize = reference.split("train").unwrap().labels.iter().sum();
    assert_eq!(ones, 4799);

    let files = shared.join("ChnSentiCorp-files");
    let mut seen = 0;
    for ext in ["parquet", "jsonl", "csv", "tsv"] {
        let source = files.join(format!("train.{ext}"));
        if !source.exists() {
            eprintln!("no {} in {}", ext, files.display());
            continue;
        }
        let started = Instant::now();
        let data = load(&source, &with_labels(&["negative", "positive"])).unwrap();
        eprintln!("{ext}, all splits: {:?}", started.elapsed());
        assert_same_rows(&reference, &data);
        assert_eq!(data.label_names, ["negative", "positive"]);
        seen += 1;
    }
    assert!(
        seen >= 3,
        "ChnSentiCorp-files lost its parquet, jsonl or tsv copy"
    );
}

// Errors.

#[test]
fn a_missing_or_unknown_source_lists_the_accepted_formats() {
    let dir = temp_dir("source");
    let err = load_err(&dir.join("nope"), &opts());
    assert!(
        err.contains("nope: no such file or folder")
            && err.contains(".parquet, .jsonl, .csv or .tsv"),
        "{err}"
    );
    let txt = write(&dir, "train.txt", b"hello\n");
    let err = load_err(&txt, &opts());
    assert!(
        err.contains("train.txt: unknown data format") && err.contains("save_to_disk folder"),
        "{err}"
    );
    let err = load_err(&dir, &opts());
    assert!(
        err.contains("no dataset found in this folder") && err.contains(".jsonl"),
        "{err}"
    );
}

#[test]
fn an_unknown_or_empty_split_lists_the_splits() {
    let dir = temp_dir("split");
    let train = write(&dir, "train.jsonl", b"{\"text\": \"a\", \"label\": 0}\n");
    write(
        &dir,
        "validation.jsonl",
        b"{\"text\": \"b\", \"label\": 1}\n",
    );
    write(&dir, "test.jsonl", b"\n");
    let data = load(&train, &opts()).unwrap();
    let err = data.split("dev").unwrap_err().to_string();
    assert!(
        err.contains("unknown split \"dev\" in") && err.contains("it has train, validation, test"),
        "{err}"
    );
    let err = data.split("test").unwrap_err().to_string();
    assert!(
        err.contains("split \"test\"") && err.contains("has no rows"),
        "{err}"
    );
    assert!(err.contains("--split (train, validation)"), "{err}");
}

#[test]
fn a_missing_column_lists_the_columns_and_the_flags() {
    let dir = temp_dir("column");
    let csv = write(&dir, "reviews.csv", b"review,stars\ngood,1\n");
    let err = load_err(&csv, &opts());
    assert!(
        err.contains("reviews.csv: no column \"text\" (it has \"review\", \"stars\")"),
        "{err}"
    );
    assert!(err.contains("--text-column"), "{err}");
    let named = LoadOptions {
        text_column: "review".into(),
        ..opts()
    };
    let err = load_err(&csv, &named);
    assert!(
        err.contains("no column \"label\"") && err.contains("--label-column"),
        "{err}"
    );
    let ok = LoadOptions {
        label_column: "stars".into(),
        ..named
    };
    assert_eq!(load(&csv, &ok).unwrap().splits[0].texts, ["good"]);

    let parquet = dir.join("p.parquet");
    write_parquet(
        &parquet,
        text_column(&["a"]),
        Arc::new(Int64Array::from(vec![0])),
        "body",
    );
    let err = load_err(&parquet, &opts());
    assert!(
        err.contains("p.parquet: no column \"text\" (it has \"body\", \"label\")"),
        "{err}"
    );
}

#[test]
fn columns_of_the_wrong_type_say_which_flag_to_use() {
    let dir = temp_dir("types");
    let ids = || -> ArrayRef { Arc::new(Int64Array::from(vec![0, 1])) };
    let parquet = dir.join("a.parquet");
    write_parquet(&parquet, ids(), ids(), "text");
    let err = load_err(&parquet, &opts());
    assert!(
        err.contains("a.parquet: text column \"text\" holds Int64, not strings")
            && err.contains("--text-column"),
        "{err}"
    );
    let parquet = dir.join("b.parquet");
    write_parquet(
        &parquet,
        text_column(&["x", "y"]),
        Arc::new(BooleanArray::from(vec![true, false])),
        "text",
    );
    let err = load_err(&parquet, &opts());
    assert!(
        err.contains("b.parquet: label column \"label\" holds Boolean")
            && err.contains("--label-column"),
        "{err}"
    );
}

#[test]
fn bad_labels_name_the_file_and_row() {
    let dir = temp_dir("labels");
    let cases: [(&str, &[u8], &str); 6] = [
        (
            "a.jsonl",
            b"{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\", \"label\": \"pos\"}\n",
            "a.jsonl row 2: label \"pos\" is a name, but 1 of the 2 labels read are class ids",
        ),
        (
            "b.jsonl",
            b"{\"text\": \"x\", \"label\": -1}\n",
            "b.jsonl row 1: label -1 is negative",
        ),
        (
            "c.jsonl",
            b"{\"text\": \"x\", \"label\": 1.5}\n",
            "c.jsonl row 1: label 1.5 is not an integer",
        ),
        (
            "d.csv",
            b"text,label\n\"a, \"\"b\"\"\",0\nc,1.5\n",
            "d.csv row 2: label 1.5 is not an integer",
        ),
        (
            "e.tsv",
            b"label\ttext\n0\t\"x\n-3\ty\n",
            "e.tsv row 2: label -3 is negative",
        ),
        (
            "f.tsv",
            b"label\ttext\n0\tx\nnan\ty\n",
            "f.tsv row 2: label nan is not an integer",
        ),
    ];
    for (name, content, expected) in cases {
        let err = load_err(&write(&dir, name, content), &opts());
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("class ids"), "says what labels must be: {err}");
    }
    let file = write(
        &dir,
        "g.jsonl",
        b"{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\", \"label\": 2}\n",
    );
    let err = load_err(&file, &with_labels(&["neg", "pos"]));
    assert!(
        err.contains("g.jsonl row 2: label 2 is outside 0..2 (label names: neg, pos)")
            && err.contains("--labels"),
        "{err}"
    );
    assert_eq!(load(&file, &opts()).unwrap().label_names, ["0", "1", "2"]);
}

/// Arrow and parquet string label columns hold names as CSV and JSONL do: sorted when
/// the data declares none, mapped through its ClassLabel when it does.
#[test]
fn string_label_columns_hold_names() {
    let dir = temp_dir("names");
    let texts = || text_column(&["a", "b", "c"]);
    let names = || -> ArrayRef { Arc::new(StringArray::from(vec!["pos", "neg", "pos"])) };
    let parquet = dir.join("train.parquet");
    write_parquet(&parquet, texts(), names(), "text");
    let data = load(&parquet, &opts()).unwrap();
    assert_eq!(data.label_names, ["neg", "pos"]);
    assert_eq!(data.split("train").unwrap().labels, [1, 0, 1]);
    let large = dir.join("large/train.parquet");
    let labels: ArrayRef = Arc::new(LargeStringArray::from(vec!["pos", "neg", "pos"]));
    write_parquet(&large, texts(), labels, "text");
    assert_eq!(
        load(&large, &with_labels(&["pos", "neg"]))
            .unwrap()
            .split("train")
            .unwrap()
            .labels,
        [0, 1, 0]
    );

    let dict = dir.join("dsdict");
    let split = dict.join("train");
    let labels: ArrayRef = Arc::new(StringArray::from(vec!["positive", "negative", "positive"]));
    write_stream(
        &split.join("data-00000-of-00001.arrow"),
        &batch("text", texts(), labels),
    );
    write_save_to_disk_meta(&dict, &split, &["data-00000-of-00001.arrow"]);
    let data = load(&dict, &opts()).unwrap();
    assert_eq!(data.label_names, ["negative", "positive"]);
    assert_eq!(data.split("train").unwrap().labels, [1, 0, 1]);
    let labels: ArrayRef = Arc::new(StringArray::from(vec!["positive", "neutral", "negative"]));
    write_stream(
        &split.join("data-00000-of-00001.arrow"),
        &batch("text", texts(), labels),
    );
    let err = load_err(&dict, &opts());
    assert!(
        err.contains("data-00000-of-00001.arrow row 2: label \"neutral\" is not one of the label names (negative, positive); fix the row: the data's ClassLabel names its classes"),
        "{err}"
    );
}

#[test]
fn a_label_past_the_class_label_names_its_shard_and_row() {
    let dir = temp_dir("shards");
    let labels = [vec![0, 1], vec![1, 0, 5]];
    let split = dir.join("train");
    for (i, ids) in labels.iter().enumerate() {
        let texts: Vec<String> = ids.iter().map(|id| format!("text {id}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batch = batch(
            "text",
            text_column(&texts),
            Arc::new(Int64Array::from(ids.clone())),
        );
        write_stream(&split.join(format!("data-0000{i}-of-00002.arrow")), &batch);
    }
    write_save_to_disk_meta(
        &dir,
        &split,
        &["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"],
    );
    let err = load_err(&dir, &opts());
    assert!(err.contains("data-00001-of-00002.arrow row 3: label 5 is outside 0..2 (label names: negative, positive)"), "{err}");
    let err = load_err(&dir, &with_labels(&["a", "b", "c"]));
    assert!(
        err.contains("ClassLabel has 2 names (negative, positive) but --labels gives 3"),
        "{err}"
    );
    assert!(err.contains("drop --labels"), "{err}");
}

#[test]
fn text_that_is_not_utf8_names_the_row() {
    let dir = temp_dir("utf8");
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "a.csv",
            b"text,label\nok,0\n\"bad \xff\",1\n",
            "a.csv row 2: text is not UTF-8",
        ),
        (
            "b.tsv",
            b"label\ttext\n0\t\xc3\x28\n",
            "b.tsv row 1: text is not UTF-8",
        ),
        (
            "c.jsonl",
            b"{\"text\": \"ok\", \"label\": 0}\n{\"text\": \"\xe5\xa5\", \"label\": 0}\n",
            "c.jsonl row 2: not UTF-8",
        ),
    ];
    for (name, content, expected) in cases {
        let err = load_err(&write(&dir, name, content), &opts());
        assert!(err.contains(expected) && err.contains("UTF-8"), "{err}");
    }
    let binary: ArrayRef = Arc::new(BinaryArray::from(vec![&b"fine"[..], &[0xe5, 0xa5][..]]));
    let parquet = dir.join("d.parquet");
    write_parquet(
        &parquet,
        binary.clone(),
        Arc::new(Int64Array::from(vec![0, 1])),
        "text",
    );
    let err = load_err(&parquet, &opts());
    assert!(err.contains("d.parquet row 2: text is not UTF-8"), "{err}");
    let split = dir.join("stream");
    write_stream(
        &split.join("dataset.arrow"),
        &batch("text", binary, Arc::new(Int64Array::from(vec![0, 1]))),
    );
    write(
        &split,
        "state.json",
        br#"{"_data_files": [{"filename": "dataset.arrow"}], "_split": null}"#,
    );
    let err = load_err(&split, &opts());
    assert!(
        err.contains("dataset.arrow row 2: text is not UTF-8"),
        "{err}"
    );
}

#[test]
fn null_texts_and_labels_name_the_row() {
    let dir = temp_dir("nulls");
    let err = load_err(
        &write(&dir, "a.jsonl", b"{\"text\": null, \"label\": 0}\n"),
        &opts(),
    );
    assert!(err.contains("a.jsonl row 1: text is null"), "{err}");
    let err = load_err(
        &write(
            &dir,
            "b.jsonl",
            b"{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\"}\n",
        ),
        &opts(),
    );
    assert!(err.contains("b.jsonl row 2: no field \"label\""), "{err}");
    let parquet = dir.join("c.parquet");
    let texts: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None]));
    write_parquet(
        &parquet,
        texts,
        Arc::new(Int64Array::from(vec![0, 1, 0])),
        "text",
    );
    assert!(load_err(&parquet, &opts()).contains("c.parquet row 3: text is null"));
    let parquet = dir.join("d.parquet");
    write_parquet(
        &parquet,
        text_column(&["a", "b"]),
        Arc::new(Int64Array::from(vec![Some(1), None])),
        "text",
    );
    assert!(load_err(&parquet, &opts()).contains("d.parquet row 2: label is null"));
}

#[test]
fn a_shard_layout_folder_names_splits_from_file_names() {
    let dir = temp_dir("hub");
    let labels = || -> ArrayRef { Arc::new(Int64Array::from(vec![0, 1])) };
    write_parquet(
        &dir.join("data/train-00001-of-00002-bb.parquet"),
        text_column(&["c", "d"]),
        labels(),
        "text",
    );
    write_parquet(
        &dir.join("data/train-00000-of-00002-aa.parquet"),
        text_column(&["a", "b"]),
        labels(),
        "text",
    );
    write_parquet(
        &dir.join("data/test-00000-of-00001-cc.parquet"),
        text_column(&["e", "f"]),
        labels(),
        "text",
    );
    write(&dir, "README.md", b"# a dataset card\n");
    let data = load(&dir, &opts()).unwrap();
    assert_eq!(rows(&data), [("train", 4), ("test", 2)]);
    assert_eq!(data.split("train").unwrap().texts, ["a", "b", "c", "d"]);
}

/// An Arrow file state.json lists, replaced by a folder, opened (a folder does) and
/// failed at its first read with the OS's bare "Is a directory", naming no file, in the
/// whole-split reader and the bulk jobs' chunked one alike.
#[test]
fn an_arrow_file_that_is_a_folder_is_named() {
    let dir = temp_dir("arrow-folder");
    for name in ["state.json", "dataset_info.json"] {
        std::fs::copy(fixtures().join("tiny-dataset").join(name), dir.join(name)).unwrap();
    }
    let arrow = dir.join("data-00000-of-00001.arrow");
    std::fs::create_dir_all(&arrow).unwrap();
    let want = format!(
        "{}: a folder, not the Arrow file state.json lists: restore the file save_to_disk wrote",
        arrow.display()
    );
    assert_eq!(load_err(&dir, &opts()), want);
    let chunked = bertcls::data::chunked::open_split(&dir, "train", &opts()).and_then(|split| {
        split
            .chunks(0, split.rows(), 3)
            .try_for_each(|c| c.map(drop))
    });
    assert_eq!(chunked.expect_err("an error").to_string(), want);
}

/// A split's dataset_info.json that does not parse is named with its remedies, in the
/// whole-split reader and the chunked one alike; deleting it, one of them, loses nothing
/// (the Arrow files carry the same ClassLabel names).
#[test]
fn a_dataset_info_that_does_not_parse_says_what_to_do() {
    let dir = temp_dir("bad-dataset-info");
    for name in ["state.json", "data-00000-of-00001.arrow"] {
        std::fs::copy(fixtures().join("tiny-dataset").join(name), dir.join(name)).unwrap();
    }
    let info = write(&dir, "dataset_info.json", b"{\"features\": ");
    let whole = load_err(&dir, &opts());
    let chunked = bertcls::data::chunked::open_split(&dir, "train", &opts())
        .expect_err("an error")
        .to_string();
    for err in [whole, chunked] {
        assert!(
            err.starts_with(&format!(
                "{}: the split's dataset_info.json does not parse as JSON (",
                info.display()
            )),
            "{err}"
        );
        assert!(
            err.ends_with("restore it from the dataset's source, or delete it (its Arrow files carry the same features)"),
            "{err}"
        );
    }
    std::fs::remove_file(&info).unwrap();
    let want = load(&fixtures().join("tiny-dataset"), &opts()).unwrap();
    assert_eq!(want.label_names, ["negative", "positive"]);
    assert_eq!(load(&dir, &opts()).unwrap().label_names, want.label_names);
}

// Writers for Arrow and parquet test files.

fn text_column(texts: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(texts.to_vec()))
}

fn batch(text_name: &str, texts: ArrayRef, labels: ArrayRef) -> RecordBatch {
    RecordBatch::try_from_iter([(text_name, texts), ("label", labels)]).unwrap()
}

fn write_parquet(path: &Path, texts: ArrayRef, labels: ArrayRef, text_name: &str) {
    assert_eq!(texts.len(), labels.len());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = batch(text_name, texts, labels);
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn write_stream(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(file, &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
}

/// A one-split DatasetDict whose labels are ClassLabel ["negative", "positive"].
fn write_save_to_disk_meta(dir: &Path, split: &Path, files: &[&str]) {
    write(dir, "dataset_dict.json", br#"{"splits": ["train"]}"#);
    let entries: Vec<String> = files
        .iter()
        .map(|f| format!(r#"{{"filename": "{f}"}}"#))
        .collect();
    let state = format!(
        r#"{{"_data_files": [{}], "_split": "train"}}"#,
        entries.join(", ")
    );
    write(split, "state.json", state.as_bytes());
    let info = r#"{"features": {"text": {"dtype": "string", "_type": "Value"},
        "label": {"names": ["negative", "positive"], "_type": "ClassLabel"}}}"#;
    write(split, "dataset_info.json", info.as_bytes());
}
