//! A split the command does not use cannot fail it: `test` reads only the split it
//! scores and `train` only its train and validation splits, so a sibling file of
//! another schema is left unread.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny JSONL splits in `dir`, with `unlabelled` written without its label column.
fn splits_with_one_unlabelled(dir: &Path, unlabelled: &str) -> PathBuf {
    let source = fixtures().join("data/tiny-files");
    for split in ["train", "validation", "test"] {
        let text = fs::read_to_string(source.join(format!("{split}.jsonl"))).unwrap();
        let text = if split == unlabelled {
            text.replace("\"label\"", "\"stars\"")
        } else {
            text
        };
        fs::write(dir.join(format!("{split}.jsonl")), text).unwrap();
    }
    dir.join("train.jsonl")
}

#[test]
fn test_reads_only_the_split_it_scores() {
    let dir = TempDir::new("unused-splits-test");
    let run = train_run(&dir.0, "run", &[]);
    let data_dir = dir.join("data");
    fs::create_dir_all(&data_dir).unwrap();
    let data = splits_with_one_unlabelled(&data_dir, "validation");
    let test = |split: &str| {
        bertcls_cpu(&[
            "test",
            "--run",
            s(&run),
            "--data",
            s(&data),
            "--split",
            split,
            "--no-cache",
            "--json",
        ])
    };
    let out = ok(test("test"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["split"], "test");
    let line = refusal(&[
        "test",
        "--run",
        s(&run),
        "--data",
        s(&data),
        "--split",
        "nope",
        "--no-cache",
    ]);
    assert!(
        line.contains("unknown split \"nope\"") && line.contains("it has train, validation, test"),
        "{line}"
    );
    // The split asked for is still read, and its fault still reported.
    let out = test("validation");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("validation.jsonl: no column \"label\""),
        "{stderr}"
    );
}

#[test]
fn train_reads_only_its_train_and_validation_splits() {
    let dir = TempDir::new("unused-splits-train");
    let data = splits_with_one_unlabelled(&dir.0, "test");
    let run = train_run_on(&dir.0, "run", &fixtures().join("tiny/model"), &data, &[]);
    assert!(run.join("best.safetensors").is_file());
}

/// `train` and `test` given a split's file read their own split from its sibling (the
/// sibling rule, and what `test --run` of a run trained on train.jsonl relies on), so
/// they say in one note which file they read when it is not the one named.
#[test]
fn reading_a_sibling_of_the_file_named_is_noted() {
    let dir = TempDir::new("unused-splits-note");
    let data_dir = dir.join("data");
    fs::create_dir_all(&data_dir).unwrap();
    splits_with_one_unlabelled(&data_dir, "none");
    let file = |split: &str| data_dir.join(format!("{split}.jsonl"));
    let note = |named: &str, verb: &str, read: &str| {
        format!(
            "note: --data {} is split {named}: {verb} split {read} from its sibling {} (pass --split {named} to read the file itself)",
            s(&file(named)),
            s(&file(read))
        )
    };
    let model = fixtures().join("tiny/model");
    let (run, trained) = train_run_on_output(&dir.0, "run", &model, &file("test"), &[]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l == note("test", "training on", "train")),
        "{stderr}"
    );
    let test = |data: &str, json: &[&str]| {
        let args = [
            &["test", "--run", s(&run), "--data", data, "--no-cache"],
            json,
        ]
        .concat();
        let out = ok(bertcls_cpu(&args));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The heading and the JSON's "data" name the file scored, whichever was named.
    let heading = format!("test split of {}, head ", s(&file("test")));
    let (stdout, stderr) = test(s(&file("train")), &[]);
    assert!(
        stderr
            .lines()
            .any(|l| l == note("train", "scoring", "test")),
        "{stderr}"
    );
    assert!(stdout.starts_with(&heading), "{stdout}");
    let (stdout, stderr) = test(s(&file("test")), &[]);
    assert!(!stderr.contains("note:"), "{stderr}");
    assert!(stdout.starts_with(&heading), "{stdout}");
    for named in ["train", "test"] {
        let (stdout, _) = test(s(&file(named)), &["--json"]);
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            json["data"],
            s(&file("test")),
            "--data {named}.jsonl: {stdout}"
        );
    }
}
