//! `encode --run DIR` (issue 9): a run's features spec (model, max_length, pooling, long
//! texts) comes from its run.json, so the vectors are the ones its head was trained on.
//! Checked against `encode` given the same spec as flags, for texts, `--file` and bulk
//! `--data`: the same binary, model, device and batches, so the floats must be equal
//! exactly (no tolerance). A flag that contradicts the run is refused with one line.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::Value;

fn model_dir() -> String {
    fixtures().join("tiny/model").display().to_string()
}

fn data_dir() -> String {
    fixtures().join("data/tiny-dsdict").display().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TEXTS: [&str; 4] = [
    "酒店位置很好，离地铁站很近，房间干净整洁，服务也很周到，下次还会再来。",
    "房间又小又暗",
    "这本书写得非常精彩，读完让人回味无穷，强烈推荐给每一个喜欢历史的朋友！",
    "快递太慢了，等了一个星期。",
];

/// `encode --run run` and `encode --model <tiny> <spec>`, each with `extra`.
fn both(run: &Path, spec: &[&str], extra: &[&str]) -> (Output, Output) {
    let mut by_run = vec!["encode", "--run", s(run)];
    by_run.extend_from_slice(extra);
    let model = model_dir();
    let mut by_flags = vec!["encode", "--model", &model];
    by_flags.extend_from_slice(spec);
    by_flags.extend_from_slice(extra);
    (ok(bertcls_cpu(&by_run)), ok(bertcls_cpu(&by_flags)))
}

fn check_equal_tensors(a: &Path, b: &Path, what: &str) {
    let (a, b) = (read_tensors(a), read_tensors(b));
    assert!(!a.is_empty(), "{what}: no tensors");
    let mut names: Vec<_> = a.keys().collect();
    names.sort();
    let mut other: Vec<_> = b.keys().collect();
    other.sort();
    assert_eq!(names, other, "{what}");
    for name in names {
        assert_eq!(a[name].shape, b[name].shape, "{what} {name}");
        assert_eq!(a[name].f32, b[name].f32, "{what} {name}: values differ");
    }
}

fn check_run_matches_flags(dir: &Path, name: &str, spec: &[&str], key: &str) {
    let run = train_run(dir, name, spec);

    // Texts as arguments, JSON lines: byte for byte the same output.
    let mut extra = vec!["--json"];
    extra.extend_from_slice(&TEXTS);
    let (by_run, by_flags) = both(&run, spec, &extra);
    assert!(
        by_run.stdout == by_flags.stdout,
        "{name}: the vectors of --run and of the flags differ"
    );
    let rows: Vec<Value> = String::from_utf8(by_run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), TEXTS.len());
    for row in &rows {
        assert_eq!(row[key].as_array().map(Vec::len), Some(32), "{name}: {row}");
    }

    // --file, to safetensors.
    let file = dir.join(format!("{name}-texts.txt"));
    std::fs::write(&file, TEXTS.join("\n")).unwrap();
    let (a, b) = (
        dir.join(format!("{name}-run.safetensors")),
        dir.join(format!("{name}-flags.safetensors")),
    );
    ok(bertcls_cpu(&[
        "encode",
        "--run",
        s(&run),
        "--file",
        s(&file),
        "--out",
        s(&a),
    ]));
    let model = model_dir();
    let mut args = vec![
        "encode",
        "--model",
        &model,
        "--file",
        s(&file),
        "--out",
        s(&b),
    ];
    args.extend_from_slice(spec);
    ok(bertcls_cpu(&args));
    check_equal_tensors(&a, &b, &format!("{name} --file"));
    assert_eq!(read_tensors(&a)[key].shape, vec![TEXTS.len(), 32]);

    // Bulk --data over the test split, in chunks of 5 rows.
    let (a, b) = (
        dir.join(format!("{name}-bulk-run.safetensors")),
        dir.join(format!("{name}-bulk-flags.safetensors")),
    );
    let data = data_dir();
    let bulk = [
        "--data",
        &data,
        "--split",
        "test",
        "--chunk-rows",
        "5",
        "--out",
    ];
    let mut args = vec!["encode", "--run", s(&run)];
    args.extend_from_slice(&bulk);
    args.push(s(&a));
    ok(bertcls_cpu(&args));
    let mut args = vec!["encode", "--model", &model];
    args.extend_from_slice(spec);
    args.extend_from_slice(&bulk);
    args.push(s(&b));
    ok(bertcls_cpu(&args));
    check_equal_tensors(&a, &b, &format!("{name} --data"));
    assert!(
        read_tensors(&a)
            .keys()
            .all(|k| k.starts_with(&format!("{key}."))),
        "{name}: bulk tensors are named after the run's pooling"
    );
}

#[test]
fn encode_run_gives_the_features_of_the_runs_spec_exactly() {
    let dir = TempDir::new("encode-run");
    // Neither spec is the default (cls, 350, truncate): taking a default instead of the
    // run's would show. Max length 12 cuts the longer texts above into several windows.
    check_run_matches_flags(
        &dir,
        "mean",
        &["--pooling", "mean", "--max-length", "16"],
        "mean",
    );
    check_run_matches_flags(
        &dir,
        "chunk",
        &["--max-length", "12", "--long", "chunk", "--stride", "3"],
        "cls",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flags_that_contradict_the_run_are_refused() {
    let dir = TempDir::new("encode-refuse");
    let mean = train_run(&dir, "mean", &["--pooling", "mean", "--max-length", "16"]);
    let chunk = train_run(
        &dir,
        "chunk",
        &["--max-length", "12", "--long", "chunk", "--stride", "3"],
    );
    let (mean, chunk) = (s(&mean), s(&chunk));
    let other_weights = fixtures().join("tiny/model-f16-prefixed");
    let cases: [(&[&str], &str); 7] = [
        (
            &["--run", mean, "--pooling", "cls"],
            "--pooling cls: the run's features were made with --pooling mean",
        ),
        (
            &["--run", mean, "--max-length", "20"],
            "--max-length 20: the run's features were made with --max-length 16",
        ),
        (
            &["--run", mean, "--long", "chunk"],
            "--long chunk: the run's features were made with --long truncate",
        ),
        (
            &["--run", chunk, "--stride", "4"],
            "--stride 4: the run's features were made with --long chunk --stride 3",
        ),
        (
            &["--run", chunk, "--long", "truncate"],
            "--long truncate: the run's features were made with --long chunk --stride 3",
        ),
        (
            &["--run", mean, "--precision", "bf16"],
            "--precision bf16: the run's features were made with --precision fp32",
        ),
        (
            &["--run", mean, "--model", s(&other_weights)],
            "has other weights than the ones",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["encode"];
        args.extend_from_slice(flags);
        args.push("房间又小又暗");
        let err = refusal(&args);
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    // Repeating what the run says is no contradiction.
    let out = ok(bertcls_cpu(&[
        "encode",
        "--run",
        mean,
        "--pooling",
        "mean",
        "--max-length",
        "16",
        "--long",
        "truncate",
        "--precision",
        "fp32",
        "--model",
        &model_dir(),
        "房间又小又暗",
    ]));
    assert!(!out.stdout.is_empty());
    let err = refusal(&["encode", "--run", s(&dir.join("none")), "x"]);
    assert!(err.contains("run.json does not exist"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
