//! Issue 8, item 12: a lone data file is split `train`, as HF
//! `load_dataset("json", data_files=file)` makes it, unless its name names a split.

mod common;

use bertcls::data::{load, LoadOptions};
use common::TempDir;

fn write(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 0}\n",
    )
    .unwrap();
    path
}

#[test]
fn a_lone_file_is_train_unless_named_for_a_split() {
    let dir = TempDir::new("lone");
    for (name, split) in [
        ("reviews.jsonl", "train"),
        ("reviews_test.jsonl", "test"),
        ("reviews-dev.jsonl", "validation"),
        ("attest.jsonl", "train"),
    ] {
        let sub = dir.join(name.replace('.', "-"));
        std::fs::create_dir_all(&sub).unwrap();
        let data = load(&write(&sub, name), &LoadOptions::default()).unwrap();
        let names: Vec<&str> = data.splits.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [split], "{name}");
        assert_eq!(data.split(split).unwrap().texts, ["good", "bad"]);
    }
    // Named exactly as a split, its split-named siblings come along.
    let both = dir.join("both");
    std::fs::create_dir_all(&both).unwrap();
    write(&both, "test.jsonl");
    let data = load(&write(&both, "train.jsonl"), &LoadOptions::default()).unwrap();
    let names: Vec<&str> = data.splits.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["train", "test"]);
    let _ = std::fs::remove_dir_all(&dir);
}
