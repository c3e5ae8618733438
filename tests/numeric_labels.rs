//! `train --numeric-labels names`: labels written as numbers that are not class ids
//! 0, 1, ... (-1/0/1 sentiment, star ratings) are read as class names, numbered in numeric
//! order; the head records it, and `test`, `predict` and bulk `predict --data` read the
//! scored data the same way. Numbers stay ids by default, and data whose ClassLabel makes
//! its numbers ids is refused with the flag.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// The tiny fixture texts of `split`, labelled in turn by `labels` (as JSON values).
fn write_split(dir: &Path, split: &str, labels: &[&str]) {
    let src = fixtures().join(format!("data/tiny-files/{split}.jsonl"));
    let lines: Vec<String> = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let row: Value = serde_json::from_str(line).unwrap();
            let label = labels[i % labels.len()];
            format!("{{\"text\": {}, \"label\": {label}}}", row["text"])
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{split}.jsonl")), lines.join("\n") + "\n").unwrap();
}

fn model() -> String {
    fixtures().join("tiny/model").display().to_string()
}

/// `train --numeric-labels names` of the tiny model on `data` into `out`, with `extra`.
fn train_with_names(data: &Path, out: &Path, extra: &[&str]) {
    let (model, data, out) = (model(), data.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "train",
        "--model",
        &model,
        "--data",
        data,
        "--numeric-labels",
        "names",
        "--out",
        out,
    ];
    ok(bertcls_cpu(&[&args[..], extra].concat()));
}

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_slice(&ok(out.clone()).stdout).unwrap()
}

/// "accuracy 0.2500 (2/8 labelled rows)" of a bulk job.
fn accuracy_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("accuracy "))
        .unwrap_or_else(|| panic!("no accuracy line: {}", String::from_utf8_lossy(&out.stderr)))
        .to_string()
}

#[test]
fn minus_one_zero_one_go_through_train_test_and_predict_as_three_classes() {
    let tmp = TempDir::new("numeric-labels");
    let data = tmp.join("data");
    // Written every way a number can be: integers, an integral float, digit strings.
    for split in ["train", "validation", "test"] {
        write_split(&data, split, &["-1", "0", "1", "\"-1\"", "0.0", "\"1\""]);
    }
    let train = data.join("train.jsonl");
    let (train, model) = (train.to_str().unwrap(), model());

    let refused = refusal(&["train", "--model", &model, "--data", train]);
    assert!(
        refused.contains("label -1 is negative")
            && refused.contains("--numeric-labels names reads numbers as class names"),
        "{refused}"
    );

    let run = tmp.join("run");
    let run = run.to_str().unwrap();
    train_with_names(
        Path::new(train),
        Path::new(run),
        &["--epochs", "2", "--batch-size", "4"],
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("run/run.json")).unwrap()).unwrap();
    assert_eq!(info["labels"], serde_json::json!(["-1", "0", "1"]));
    assert_eq!(info["numeric_labels"], "names");

    // The run, and its best checkpoint alone (which records the reading in its metadata),
    // score the test split alike.
    let test = data.join("test.jsonl");
    let test = test.to_str().unwrap();
    let report = json_out(&bertcls_cpu(&[
        "test", "--run", run, "--data", test, "--json",
    ]))["report"]
        .clone();
    assert_eq!(report["labels"], serde_json::json!(["-1", "0", "1"]));
    let supports: Vec<u64> = report["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["support"].as_u64().unwrap())
        .collect();
    // test.jsonl has 8 rows labelled -1, 0, 1, -1, 0, 1, -1, 0.
    assert_eq!(supports, [3, 3, 2], "{report}");
    let best = tmp.join("run/best.safetensors");
    let by_head = json_out(&bertcls_cpu(&[
        "test",
        "--head",
        best.to_str().unwrap(),
        "--model",
        &model,
        "--data",
        test,
        "--json",
    ]))["report"]
        .clone();
    assert_eq!(by_head, report);

    let out = tmp.join("pred.jsonl");
    let bulk = ok(bertcls_cpu(&[
        "predict",
        "--run",
        run,
        "--data",
        test,
        "--out",
        out.to_str().unwrap(),
    ]));
    let correct = &report["correct"];
    assert!(
        accuracy_line(&bulk).ends_with(&format!("({correct}/8 labelled rows)")),
        "{} vs {report}",
        accuracy_line(&bulk)
    );
    let line =
        String::from_utf8(ok(bertcls_cpu(&["predict", "--run", run, "酒店很好"])).stdout).unwrap();
    let label = line.split('\t').next().unwrap();
    assert!(["-1", "0", "1"].contains(&label), "{line}");

    // A resume reads the data as the run did, without the flag.
    ok(bertcls_cpu(&["train", "--resume", run, "--epochs", "3"]));
}

#[test]
fn star_ratings_are_classes_in_numeric_order() {
    let tmp = TempDir::new("star-ratings");
    let data = tmp.join("data");
    for split in ["train", "validation"] {
        write_split(&data, split, &["1", "2", "3", "4", "5", "10", "\"07\""]);
    }
    let train = data.join("train.jsonl");
    let run = tmp.join("run");
    train_with_names(&train, &run, &["--epochs", "1"]);
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    // Numeric order ("10" last, not after "1"); "07" is the number 7.
    assert_eq!(
        info["labels"],
        serde_json::json!(["1", "2", "3", "4", "5", "7", "10"])
    );
}

#[test]
fn numbers_that_a_class_label_makes_ids_are_refused_as_names() {
    let tmp = TempDir::new("class-label-names");
    let dsdict = fixtures().join("data/tiny-dsdict");
    let refused = refusal(&[
        "train",
        "--model",
        &model(),
        "--data",
        dsdict.to_str().unwrap(),
        "--numeric-labels",
        "names",
        "--out",
        tmp.join("run").to_str().unwrap(),
    ]);
    assert!(
        refused.contains(
            "has a ClassLabel, so its labels are ids of its names: drop --numeric-labels names"
        ),
        "{refused}"
    );

    // A head that reads numbers as names cannot score such data, whole or in chunks.
    let data = tmp.join("data");
    for split in ["train", "validation"] {
        write_split(&data, split, &["0", "1"]);
    }
    let run = tmp.join("names-run");
    train_with_names(&data.join("train.jsonl"), &run, &["--epochs", "1"]);
    let run = run.to_str().unwrap();
    let dsdict = dsdict.to_str().unwrap();
    let want = "has a ClassLabel, so its labels are ids of its names, but the head reads numbers as class names";
    let refused = refusal(&["test", "--run", run, "--data", dsdict]);
    assert!(refused.contains(want), "{refused}");
    let out = tmp.join("pred.jsonl");
    let refused = refusal(&[
        "predict",
        "--run",
        run,
        "--data",
        dsdict,
        "--split",
        "test",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(refused.contains(want), "{refused}");
}

#[test]
fn zero_one_read_as_names_take_label_names_as_ids_do() {
    let tmp = TempDir::new("zero-one-names");
    let data = tmp.join("data");
    for split in ["train", "validation", "test"] {
        write_split(&data, split, &["0", "1"]);
    }
    let run = tmp.join("run");
    train_with_names(&data.join("train.jsonl"), &run, &["--epochs", "1"]);
    let (run, test) = (run.to_str().unwrap(), data.join("test.jsonl"));
    let test = test.to_str().unwrap();
    // Names "0" and "1" are the ids: --labels names them, and the data's 0 and 1 are
    // still those classes, as for a head trained on ids.
    let plain = json_out(&bertcls_cpu(&[
        "test", "--run", run, "--data", test, "--json",
    ]));
    let named = json_out(&bertcls_cpu(&[
        "test", "--run", run, "--data", test, "--labels", "neg,pos", "--json",
    ]));
    assert_eq!(named["report"]["labels"], serde_json::json!(["neg", "pos"]));
    assert_eq!(
        named["report"]["confusion_matrix"],
        plain["report"]["confusion_matrix"]
    );
    let out = tmp.join("pred.jsonl");
    let bulk = ok(bertcls_cpu(&[
        "predict",
        "--run",
        run,
        "--labels",
        "neg,pos",
        "--data",
        test,
        "--out",
        out.to_str().unwrap(),
    ]));
    let correct = &plain["report"]["correct"];
    assert!(
        accuracy_line(&bulk).ends_with(&format!("({correct}/8 labelled rows)")),
        "{}",
        accuracy_line(&bulk)
    );
}

#[test]
fn a_resume_refuses_another_reading_of_the_numbers() {
    let tmp = TempDir::new("resume-numeric-labels");
    let data = tmp.join("data");
    for split in ["train", "validation"] {
        write_split(&data, split, &["0", "1"]);
    }
    let run = tmp.join("run");
    train_with_names(&data.join("train.jsonl"), &run, &["--epochs", "1"]);
    // 0/1 read as ids give the same classes: only the flag tells the readings apart.
    let out = bertcls_cpu(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--numeric-labels",
        "ids",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--numeric-labels (run: names, now: ids)"),
        "{stderr}"
    );
}

#[test]
fn a_class_that_train_lacks_is_not_blamed_on_reading_numbers_as_ids() {
    let tmp = TempDir::new("names-absent-class");
    let data = tmp.join("data");
    for split in ["train", "validation"] {
        write_split(&data, split, &["0", "1"]);
    }
    let (model, train) = (model(), data.join("train.jsonl"));
    let out = ok(bertcls_cpu(&[
        "train",
        "--model",
        &model,
        "--data",
        train.to_str().unwrap(),
        "--numeric-labels",
        "names",
        "--labels=0,1,2",
        "--epochs",
        "1",
        "--out",
        tmp.join("run").to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("has no rows of label \"2\""))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    // The flag is given already: the class comes from --labels.
    assert!(
        warning.ends_with(
            "add examples, or leave the name out of --labels if the data has no ClassLabel"
        ),
        "{warning}"
    );
}

#[test]
fn labels_may_start_with_a_minus_sign() {
    let tmp = TempDir::new("minus-labels");
    let data = tmp.join("data");
    for split in ["train", "validation"] {
        write_split(&data, split, &["-1", "0", "1"]);
    }
    let run = tmp.join("run");
    // As users write it, and as a resume prints it: no `=`.
    train_with_names(
        &data.join("train.jsonl"),
        &run,
        &["--epochs", "1", "--labels", "-1,1,0"],
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["labels"], serde_json::json!(["-1", "1", "0"]));
    let run = run.to_str().unwrap();
    ok(bertcls_cpu(&[
        "predict", "--run", run, "--labels", "-1,1,0", "好",
    ]));
}
