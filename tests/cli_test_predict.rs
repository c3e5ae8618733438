//! `bertcls test` and `bertcls predict` as a user runs them: the binary on the tiny fixture
//! model and dataset, offline, on the CPU, checked against the same numbers computed
//! here through the library.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bertcls::backend::cpu::CpuBackend;
use bertcls::batch::PackedBatch;
use bertcls::calibration::{expected_calibration_error, scaled_cross_entropy, scaled_softmax};
use bertcls::checkpoint::{load_head, save_head};
use bertcls::data::{load, LoadOptions};
use bertcls::features::sha256_file;
use bertcls::head::{argmax, softmax, LinearHead};
use bertcls::model::{Encoder, FeatureEncoder, Keep, ModelDir, Pooling};
use bertcls::optim::AdamW;
use bertcls::tokenize::BertTokenizer;
use common::TempDir;
use safetensors::SafeTensors;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("tiny/model")
}

fn data_dir() -> PathBuf {
    fixtures().join("data/tiny-dsdict")
}

fn recipe_pth() -> PathBuf {
    fixtures().join("recipe-head.pth")
}

/// Runs the binary offline on the CPU with `stdin` piped in (empty when none).
fn bertcls<S: AsRef<OsStr>>(args: &[S], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(args)
        .args(["--device", "cpu"])
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_of(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bertcls failed: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The single `error:` line of a failed run.
fn error_of(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "bertcls succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "the error is not the last line: {stderr}"
    );
    errors[0].to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `test --head` on the tiny model and data, features cached under `cache`.
fn test_args(head: &Path, cache: &Path) -> Vec<String> {
    strings(&[
        "test",
        "--head",
        s(head),
        "--model",
        s(&model_dir()),
        "--data",
        s(&data_dir()),
        "--cache-dir",
        s(cache),
    ])
}

/// [CLS] features of `texts`, each encoded alone, through the library.
fn features(texts: &[String]) -> Vec<f32> {
    let (config, weights) = ModelDir::open(&model_dir()).unwrap().load().unwrap();
    let tokenizer = BertTokenizer::from_dir(&model_dir(), 350).unwrap();
    let mut enc = Encoder::new(CpuBackend::new(1).unwrap(), config, &weights, 512).unwrap();
    texts
        .iter()
        .flat_map(|t| {
            let tokens = tokenizer.encode(t).unwrap();
            enc.forward(&PackedBatch::new([&tokens]), Keep::Cls)
                .unwrap()
                .cls
        })
        .collect()
}

struct Expected {
    loss: f64,
    confusion: [[usize; 2]; 2],
}

/// The test split's loss and confusion matrix, from first principles.
fn expected_test_scores(head: &LinearHead) -> Expected {
    let split = load(&data_dir(), &LoadOptions::default())
        .unwrap()
        .split("test")
        .unwrap()
        .clone();
    let logits = head.logits(&features(&split.texts));
    let mut loss = 0.0;
    let mut confusion = [[0; 2]; 2];
    for (z, &y) in logits.chunks_exact(2).zip(&split.labels) {
        let lse = z.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        loss += lse - z[y] as f64;
        confusion[y][argmax(z)] += 1;
    }
    Expected {
        loss: loss / split.labels.len() as f64,
        confusion,
    }
}

fn recipe_head() -> LinearHead {
    load_head(&recipe_pth(), None).unwrap().head
}

fn check_report(report: &Value, want: &Expected) {
    let confusion: Vec<Vec<usize>> =
        serde_json::from_value(report["confusion_matrix"].clone()).unwrap();
    assert_eq!(confusion, want.confusion.map(|r| r.to_vec()).to_vec());
    assert_eq!(
        confusion.iter().flatten().sum::<usize>(),
        8,
        "every row of the split is scored"
    );
    let diagonal = want.confusion[0][0] + want.confusion[1][1];
    assert_eq!(report["rows"], 8);
    assert_eq!(report["correct"], diagonal);
    assert_eq!(report["accuracy"].as_f64().unwrap(), diagonal as f64 / 8.0);
    let loss = report["loss"].as_f64().unwrap();
    assert!(
        (loss - want.loss).abs() < 1e-5,
        "loss {loss} vs {}",
        want.loss
    );
    assert_eq!(
        report["labels"],
        serde_json::json!(["negative", "positive"])
    );
    let support: Vec<u64> = report["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["support"].as_u64().unwrap())
        .collect();
    assert_eq!(support, [4, 4]);
}

#[test]
fn test_with_the_recipe_pth_scores_every_row() {
    let cache = TempDir::new("test-pth");
    let want = expected_test_scores(&recipe_head());
    let table = stdout_of(&bertcls(&test_args(&recipe_pth(), cache.path()), b""));
    let diagonal = want.confusion[0][0] + want.confusion[1][1];
    assert!(
        table.contains(&format!(
            "accuracy  {:.4}  ({diagonal}/8)",
            diagonal as f64 / 8.0
        )),
        "{table}"
    );
    assert!(
        table.contains(&format!("loss      {:.4}", want.loss)),
        "{table}"
    );
    let c = want.confusion;
    assert!(
        table.contains(&format!("negative   {:<8}  {}\n", c[0][0], c[0][1])),
        "{table}"
    );
    assert!(
        table.contains(&format!("positive   {:<8}  {}\n", c[1][0], c[1][1])),
        "{table}"
    );

    let mut args = test_args(&recipe_pth(), cache.path());
    args.push("--json".into());
    let json: Value = serde_json::from_str(&stdout_of(&bertcls(&args, b""))).unwrap();
    check_report(&json["report"], &want);
    assert_eq!(json["split"], "test");
}

#[test]
fn test_gives_the_same_report_for_the_pth_and_the_safetensors_head() {
    let cache = TempDir::new("test-same");
    let report = |head: &Path| -> Value {
        let mut args = test_args(head, cache.path());
        args.push("--json".into());
        serde_json::from_str::<Value>(&stdout_of(&bertcls(&args, b""))).unwrap()["report"].clone()
    };
    assert_eq!(
        report(&recipe_pth()),
        report(&fixtures().join("recipe-head.safetensors"))
    );
}

/// A run folder as `train` writes it: run.json (RunInfo's fields) and best.safetensors.
fn write_run(dir: &Path, labels: &[&str], weights_sha256: &str) {
    let info = serde_json::json!({
        "bertcls_version": "0.1.0",
        "model": "tiny",
        "model_dir": s(&model_dir()),
        "weights_sha256": weights_sha256,
        "tokenizer_files": [],
        "tokenizer_fingerprint": "",
        "max_length": 350,
        "hidden_size": 32,
        "labels": labels,
        "data": s(&data_dir()),
        "text_column": "text",
        "label_column": "label",
        "hyperparameters": {
            "epochs": 1, "batch_size": 32, "lr": 1e-5, "weight_decay": 0.01, "beta1": 0.9,
            "beta2": 0.999, "eps": 1e-8, "seed": 0, "drop_last": true
        },
        "device": "cpu",
        "precision": "fp32",
        "created": "2026-01-01T00:00:00Z"
    });
    std::fs::write(dir.join("run.json"), info.to_string()).unwrap();
    save_head(
        &dir.join("best.safetensors"),
        &recipe_head(),
        None,
        &BTreeMap::new(),
    )
    .unwrap();
}

/// A run whose model folder has gone since `train`: test, predict and encode --run name
/// the run.json and say to pass --model; with --model they run.
#[test]
fn a_runs_missing_model_is_named_with_its_run() {
    let run = TempDir::new("run-moved-model");
    write_run(run.path(), &["负向评价", "正向评价"], "");
    let run_json = run.path().join("run.json");
    let mut info: Value =
        serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    let gone = run.path().join("moved-away");
    info["model"] = serde_json::json!(s(&gone));
    info["model_dir"] = serde_json::json!(s(&gone));
    std::fs::write(&run_json, info.to_string()).unwrap();
    let r = s(run.path());
    for args in [
        vec!["predict", "--run", r, "酒店很好"],
        vec!["test", "--run", r, "--data", s(&data_dir())],
        vec!["encode", "--run", r, "--json", "酒店很好"],
    ] {
        let err = error_of(&bertcls(&args, b""));
        assert!(
            err.contains(&format!(
                "the model {} names cannot be loaded",
                run_json.display()
            )) && err.contains("pass --model with the folder of the weights it was trained on"),
            "{args:?}: {err}"
        );
    }
    let out = bertcls(
        &[
            "predict",
            "--run",
            r,
            "--model",
            s(&model_dir()),
            "酒店很好",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `test --run` without --data reads the data its run.json names; data moved since is
/// named with that run.json, not as a --data flag the user never gave.
#[test]
fn a_runs_missing_data_is_named_with_its_run() {
    let run = TempDir::new("run-moved-data");
    write_run(run.path(), &["负向评价", "正向评价"], "");
    let run_json = run.path().join("run.json");
    let mut info: Value =
        serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    info["data"] = serde_json::json!(s(&run.path().join("moved-away")));
    std::fs::write(&run_json, info.to_string()).unwrap();
    let err = error_of(&bertcls(&["test", "--run", s(run.path())], b""));
    assert!(
        err.contains(&format!(
            "the data {} names cannot be read",
            run_json.display()
        )) && err.contains("pass --data with where it is now"),
        "{err}"
    );
}

/// A bad max_length or model is blamed on where it came from: the flag, the run.json, or
/// the head checkpoint's metadata, never a flag the user did not pass.
#[test]
fn bad_settings_are_named_with_the_flag_or_file_they_came_from() {
    let run = TempDir::new("run-bad-settings");
    write_run(run.path(), &["neg", "pos"], "");
    let r = s(run.path());
    let data = data_dir();
    for (flag, want) in [
        ("0", "--max-length 0 leaves no room for [CLS] and [SEP]"),
        ("1", "--max-length 1 leaves no room for [CLS] and [SEP]"),
        ("100000", "--max-length 100000: beyond the 512 positions"),
    ] {
        for args in [
            vec!["predict", "--run", r, "--max-length", flag, "好"],
            vec!["test", "--run", r, "--max-length", flag, "--data", s(&data)],
        ] {
            let err = error_of(&bertcls(&args, b""));
            assert!(
                err.starts_with(&format!("error: {want}")),
                "{args:?}: {err}"
            );
        }
    }

    let run_json = run.path().join("run.json");
    let intact: Value = serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    // The tiny model has 2 layers: a pooling of 9 is no width it gives, whatever the
    // head's width says.
    for (key, value, want) in [
        (
            "max_length",
            Value::from(0),
            "records max_length 0, which leaves no room",
        ),
        (
            "pooling",
            "cls+mean-last9".into(),
            "records pooling cls+mean-last9, of 9 layers, but",
        ),
    ] {
        let mut info = intact.clone();
        info[key] = value;
        std::fs::write(&run_json, info.to_string()).unwrap();
        for args in [
            vec!["predict", "--run", r, "好"],
            vec!["test", "--run", r, "--data", s(&data)],
            vec!["encode", "--run", r, "--json", "好"],
        ] {
            let err = error_of(&bertcls(&args, b""));
            assert!(
                err.starts_with(&format!("error: {} {want}", run_json.display())),
                "{args:?}: {err}"
            );
        }
    }

    let dir = TempDir::new("head-bad-settings");
    let head = dir.path().join("head.safetensors");
    let missing = dir.path().join("moved-away");
    for (key, value, want) in [
        (
            "model",
            s(&missing),
            format!("the model {} names cannot be loaded", head.display()),
        ),
        (
            "max_length",
            "0",
            format!(
                "{} records max_length 0, which leaves no room",
                head.display()
            ),
        ),
        (
            "max_length",
            "350 tokens",
            format!(
                "{}: metadata max_length = \"350 tokens\" is not a token count",
                head.display()
            ),
        ),
        (
            "pooling",
            "mean-last9",
            format!(
                "{} records pooling mean-last9, of 9 layers, but {} has 2",
                head.display(),
                s(&model_dir())
            ),
        ),
    ] {
        let mut meta = BTreeMap::from([
            ("model".to_string(), s(&model_dir()).to_string()),
            ("max_length".to_string(), "350".to_string()),
        ]);
        meta.insert(key.to_string(), value.to_string());
        save_head(&head, &recipe_head(), None, &meta).unwrap();
        let err = error_of(&bertcls(&["predict", "--head", s(&head), "好"], b""));
        assert!(
            err.starts_with(&format!("error: {want}")),
            "{key}={value}: {err}"
        );
    }
}

#[test]
fn test_and_predict_take_model_data_and_labels_from_a_run() {
    let run = TempDir::new("run");
    let cache = TempDir::new("run-cache");
    write_run(run.path(), &["负向评价", "正向评价"], "");
    let out = bertcls(
        &[
            "test",
            "--run",
            s(run.path()),
            "--cache-dir",
            s(cache.path()),
            "--json",
        ],
        b"",
    );
    let json: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let want = expected_test_scores(&recipe_head());
    let report = &json["report"];
    assert_eq!(
        report["labels"],
        serde_json::json!(["负向评价", "正向评价"])
    );
    assert_eq!(
        report["confusion_matrix"],
        serde_json::json!(want.confusion)
    );

    let out = bertcls(&["predict", "--run", s(run.path()), "酒店很好"], b"");
    let line = stdout_of(&out);
    let label = line.split('\t').next().unwrap();
    // The run's head (the recipe's) on the text's features names the run's label.
    let logits = recipe_head().logits(&features(&["酒店很好".to_string()]));
    let want = ["负向评价", "正向评价"][usize::from(logits[1] > logits[0])];
    assert_eq!(label, want, "{line}");

    let err = error_of(&bertcls(
        &["test", "--run", s(run.path()), "--checkpoint", "last"],
        b"",
    ));
    assert!(err.contains("last.safetensors does not exist"), "{err}");
    // An epoch the run lacks is named as that epoch, not as a run without any.
    let err = error_of(&bertcls(
        &[
            "predict",
            "--run",
            s(run.path()),
            "--checkpoint",
            "7",
            "酒店很好",
        ],
        b"",
    ));
    assert!(
        err.contains("head-epoch-7.safetensors does not exist: the run has not finished epoch 7;"),
        "{err}"
    );
}

/// A run's label names are fixed by its training: `--labels` in another order would
/// print class 0's predictions under class 1's name with nothing to show it, so it is
/// refused; repeating them, or naming a run that records only ids, is not.
#[test]
fn labels_that_contradict_the_runs_are_refused() {
    let run = TempDir::new("run-labels");
    write_run(run.path(), &["neg", "pos"], "");
    for command in [&["test"][..], &["predict", "酒店很好"]] {
        let mut args = command.to_vec();
        args.extend(["--run", s(run.path()), "--labels", "pos,neg"]);
        let err = error_of(&bertcls(&args, b""));
        assert!(
            err.contains(&format!(
                "--labels pos,neg: {}: its labels are neg,pos, and other names would print a class's predictions under a name it was not trained for: drop --labels",
                run.path().join("run.json").display()
            )),
            "{err}"
        );
    }
    let line = stdout_of(&bertcls(
        &[
            "predict",
            "--run",
            s(run.path()),
            "--labels",
            "neg,pos",
            "酒店很好",
        ],
        b"",
    ));
    assert!(
        line.starts_with("neg\t") || line.starts_with("pos\t"),
        "{line}"
    );

    let ids = TempDir::new("run-ids");
    write_run(ids.path(), &["0", "1"], "");
    let line = stdout_of(&bertcls(
        &[
            "predict",
            "--run",
            s(ids.path()),
            "--labels",
            "bad,good",
            "酒店很好",
        ],
        b"",
    ));
    assert!(
        line.starts_with("bad\t") || line.starts_with("good\t"),
        "{line}"
    );
}

#[test]
fn a_checkpoint_of_ours_names_its_model_and_labels() {
    let dir = TempDir::new("meta");
    let head = dir.path().join("head-epoch-1.safetensors");
    let meta = BTreeMap::from([
        ("labels".to_string(), r#"["差评","好评"]"#.to_string()),
        ("model".to_string(), s(&model_dir()).to_string()),
        ("max_length".to_string(), "350".to_string()),
    ]);
    save_head(&head, &recipe_head(), None, &meta).unwrap();
    let data = data_dir();
    let args = ["predict", "--head", s(&head), "--json", "还行"];
    let row: Value = serde_json::from_str(&stdout_of(&bertcls(&args, b""))).unwrap();
    let probs = expected_probs(&["还行".to_string()]).remove(0);
    assert_eq!(row["label"], ["差评", "好评"][argmax(&probs)]);

    let args = [
        "test",
        "--head",
        s(&head),
        "--data",
        s(&data),
        "--no-cache",
        "--json",
    ];
    let json: Value = serde_json::from_str(&stdout_of(&bertcls(&args, b""))).unwrap();
    assert_eq!(
        json["report"]["labels"],
        serde_json::json!(["差评", "好评"])
    );
}

/// A checkpoint whose `optim.*` metadata is there but whose AdamW moments are not (a
/// head exported without them, say) only stops `train --resume`: test and predict run
/// the head, which needs none, as they run the same head with its full state.
#[test]
fn test_and_predict_need_no_optimiser_state() {
    let dir = TempDir::new("no-moments");
    let head = recipe_head();
    let full = dir.path().join("full.safetensors");
    save_head(
        &full,
        &head,
        Some(&AdamW::for_head(&head)),
        &BTreeMap::new(),
    )
    .unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(header
        .metadata()
        .as_ref()
        .unwrap()
        .contains_key("optim.step"));
    let tensors = SafeTensors::deserialize(&bytes).unwrap().tensors();
    let kept = tensors.into_iter().filter(|(n, _)| n.starts_with("fc."));
    let partial = dir.path().join("partial.safetensors");
    let stripped = bertcls::safetensors_out::serialize(kept, header.metadata().clone()).unwrap();
    std::fs::write(&partial, stripped).unwrap();

    let cache = dir.path().join("cache");
    let text = ["还行"];
    for args in [predict_args(&partial, &text), test_args(&partial, &cache)] {
        let full_args: Vec<String> = args
            .iter()
            .map(|a| a.replace(s(&partial), s(&full)))
            .collect();
        let want = stdout_of(&bertcls(&full_args, b""));
        let got = stdout_of(&bertcls(&args, b""));
        assert_eq!(got.replace(s(&partial), s(&full)), want, "{}", args[0]);
    }
}

#[test]
fn a_model_other_than_the_runs_is_refused() {
    let run = TempDir::new("run-model");
    let sha = sha256_file(&model_dir().join("model.safetensors")).unwrap();
    write_run(run.path(), &["neg", "pos"], &sha);
    let model = model_dir();
    let args = [
        "predict",
        "--run",
        s(run.path()),
        "--model",
        s(&model),
        "好",
    ];
    assert_eq!(stdout_of(&bertcls(&args, b"")).lines().count(), 1);

    write_run(run.path(), &["neg", "pos"], &"0".repeat(64));
    let err = error_of(&bertcls(&args, b""));
    assert!(err.contains("has other weights than the ones"), "{err}");
}

/// Probabilities of each text encoded alone, as `predict` must give them.
fn expected_probs(texts: &[String]) -> Vec<Vec<f32>> {
    let head = recipe_head();
    softmax(&head.logits(&features(texts)), 2)
        .chunks_exact(2)
        .map(<[f32]>::to_vec)
        .collect()
}

fn predict_args(head: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["predict", "--head", s(head), "--model", s(&model_dir())]);
    args.extend(strings(extra));
    args
}

fn predict(extra: &[&str], stdin: &[u8]) -> String {
    stdout_of(&bertcls(&predict_args(&recipe_pth(), extra), stdin))
}

/// Checks `label\tprob\ttext` lines against the library's probabilities.
fn check_lines(out: &str, texts: &[String]) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), texts.len(), "{out}");
    for ((line, text), probs) in lines.iter().zip(texts).zip(expected_probs(texts)) {
        let id = argmax(&probs);
        assert_eq!(*line, format!("{id}\t{:.4}\t{text}", probs[id]));
    }
}

fn texts() -> Vec<String> {
    ["这家酒店的服务很好，房间干净。", "书的质量太差了", "还行"]
        .map(String::from)
        .to_vec()
}

#[test]
fn predict_labels_arguments_a_file_and_standard_input_alike() {
    let texts = texts();
    let args: Vec<&str> = texts.iter().map(String::as_str).collect();
    let from_args = predict(&args, b"");
    check_lines(&from_args, &texts);

    let dir = TempDir::new("predict-file");
    let file = dir.path().join("texts.txt");
    std::fs::write(
        &file,
        format!("{}\r\n\n{}\n{}", texts[0], texts[1], texts[2]),
    )
    .unwrap();
    assert_eq!(predict(&["--file", s(&file)], b""), from_args);
    assert_eq!(predict(&[], texts.join("\n").as_bytes()), from_args);
}

/// A blank line of --file or standard input is skipped; a blank argument (an unset
/// "$TEXT") was labelled, for no text, and is now refused before the model loads.
#[test]
fn a_blank_argument_is_refused() {
    for blank in ["", "  "] {
        let out = bertcls(&predict_args(&recipe_pth(), &["还行", blank]), b"");
        assert_eq!(
            error_of(&out),
            "error: argument 2 is blank: there is no text to label; drop it"
        );
        assert!(out.stdout.is_empty());
    }
}

/// A text argument holding a line break or a tab stays one line of three fields, its
/// breaks and tabs written as \n, \r and \t; --json gives the text as it is.
#[test]
fn predict_lines_hold_one_text_each() {
    let texts = ["书很好\n第二行", "还行\t一般\r"];
    let out = predict(&texts, b"");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, want) in lines.iter().zip(["书很好\\n第二行", "还行\\t一般\\r"]) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[2], want);
    }
    let json = predict(&[&["--json"][..], &texts].concat(), b"");
    let got: Vec<String> = json
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, texts);
}

#[test]
fn predict_json_gives_probabilities_in_label_order() {
    let texts = texts();
    let out = predict(
        &["--json", "--labels", "neg,pos"],
        texts.join("\n").as_bytes(),
    );
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for ((row, text), want) in rows.iter().zip(&texts).zip(expected_probs(&texts)) {
        let probs: Vec<f32> = serde_json::from_value(row["probs"].clone()).unwrap();
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(
            probs.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{probs:?} vs {want:?}"
        );
        let id = argmax(&probs);
        assert_eq!(row["label_id"], id);
        assert_eq!(row["label"], ["neg", "pos"][id]);
        assert_eq!(row["text"], text.as_str());
    }
}

#[test]
fn a_head_for_another_hidden_size_is_refused_before_encoding() {
    let dir = TempDir::new("hidden");
    let head = dir.path().join("h16.safetensors");
    let narrow = LinearHead {
        weight: vec![0.0; 2 * 16],
        bias: vec![0.0; 2],
        num_labels: 2,
        hidden: 16,
    };
    save_head(&head, &narrow, None, &BTreeMap::new()).unwrap();
    let err = error_of(&bertcls(&test_args(&head, dir.path()), b""));
    assert!(
        err.contains(
            "head takes features of 16 floats but the model gives 32 (hidden size 32, pooling cls;"
        ),
        "{err}"
    );
    let err = error_of(&bertcls(&predict_args(&head, &["x"]), b""));
    assert!(
        err.contains(
            "head takes features of 16 floats but the model gives 32 (hidden size 32, pooling cls;"
        ),
        "{err}"
    );
}

#[test]
fn a_head_with_other_labels_than_the_data_is_refused() {
    let dir = TempDir::new("labels");
    let head = dir.path().join("three.safetensors");
    let three = LinearHead {
        weight: vec![0.0; 3 * 32],
        bias: vec![0.0; 3],
        num_labels: 3,
        hidden: 32,
    };
    save_head(&head, &three, None, &BTreeMap::new()).unwrap();
    let err = error_of(&bertcls(&test_args(&head, dir.path()), b""));
    assert!(
        err.contains("has 3 labels but there are 2 labels in the data"),
        "{err}"
    );
}

#[test]
fn input_errors_are_one_line() {
    let dir = TempDir::new("errors");
    let file = dir.path().join("gbk.txt");
    std::fs::write(&file, b"fine\n\xc4\xe3\xba\xc3\n").unwrap();
    let err = error_of(&bertcls(
        &predict_args(&recipe_pth(), &["--file", s(&file)]),
        b"",
    ));
    assert!(err.contains("gbk.txt line 2: text is not UTF-8"), "{err}");

    let err = error_of(&bertcls(&predict_args(&recipe_pth(), &[]), b"\n\n"));
    assert!(err.contains("no texts to label"), "{err}");

    let missing = dir.path().join("no-such-run");
    let err = error_of(&bertcls(&["test", "--run", s(&missing)], b""));
    assert!(err.contains("run.json") && err.contains("--run"), "{err}");
    let err = error_of(&bertcls(&["predict", "--run", s(&missing), "x"], b""));
    assert!(err.contains("run.json"), "{err}");

    let mut args = test_args(&recipe_pth(), dir.path());
    args.extend(strings(&["--split", "dev"]));
    let err = error_of(&bertcls(&args, b""));
    assert!(
        err.contains("unknown split \"dev\"") && err.contains("validation"),
        "{err}"
    );
}

/// A checkpoint's temperature divides the logits in `predict` and `test`;
/// `--no-calibration` and the recipe's .pth (which has none) give the raw softmax; `test`
/// reports the ECE of both.
#[test]
fn the_checkpoint_temperature_calibrates_predict_and_test() {
    let dir = TempDir::new("temperature");
    let head = recipe_head();
    let t = 2.5f64;
    let calibrated = dir.path().join("calibrated.safetensors");
    let meta = BTreeMap::from([("temperature".to_string(), t.to_string())]);
    save_head(&calibrated, &head, None, &meta).unwrap();

    let texts = texts();
    let logits = head.logits(&features(&texts));
    let predicted = |extra: &[&str]| -> Vec<Vec<f32>> {
        let mut args = predict_args(&calibrated, &["--json"]);
        args.extend(strings(extra));
        args.extend(texts.iter().cloned());
        common::json_floats(&stdout_of(&bertcls(&args, b"")), "probs")
    };
    let check = |got: Vec<Vec<f32>>, temperature: f64| {
        let want = scaled_softmax(&logits, 2, temperature);
        assert_eq!(got.concat().len(), want.len(), "one row of 2 per text");
        for (g, w) in got.iter().flatten().zip(&want) {
            // f32 features through the same head; the binary's and ours agree to ~1e-7.
            assert!(
                (g - w).abs() < 1e-5,
                "T = {temperature}: {got:?} vs {want:?}"
            );
        }
    };
    check(predicted(&[]), t);
    check(predicted(&["--no-calibration"]), 1.0);

    let report = |head: &Path| -> Value {
        let mut args = test_args(head, dir.path());
        args.push("--json".into());
        serde_json::from_str::<Value>(&stdout_of(&bertcls(&args, b""))).unwrap()["report"].clone()
    };
    let split = load(&data_dir(), &LoadOptions::default())
        .unwrap()
        .split("test")
        .unwrap()
        .clone();
    let test_logits = head.logits(&features(&split.texts));
    let ece =
        |t: f64| expected_calibration_error(&scaled_softmax(&test_logits, 2, t), &split.labels, 2);
    let r = report(&calibrated);
    assert_eq!(r["temperature"].as_f64(), Some(t));
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-5;
    assert!(close(&r["ece_uncalibrated"], ece(1.0)), "{r}");
    assert!(close(&r["ece_calibrated"], ece(t)), "{r}");
    assert!(
        close(
            &r["calibrated_loss"],
            scaled_cross_entropy(&test_logits, &split.labels, 2, t)
        ),
        "{r}"
    );
    let raw = report(&recipe_pth());
    assert_eq!(raw["temperature"].as_f64(), Some(1.0));
    assert_eq!(raw["ece_uncalibrated"], raw["ece_calibrated"]);
    assert_eq!(raw["ece_uncalibrated"], r["ece_uncalibrated"]);

    let bad = dir.path().join("bad.safetensors");
    let meta = BTreeMap::from([("temperature".to_string(), "-1".to_string())]);
    save_head(&bad, &head, None, &meta).unwrap();
    let err = error_of(&bertcls(&predict_args(&bad, &["x"]), b""));
    assert!(
        err.contains(
            "metadata temperature = \"-1\" is not a temperature between 0.01 and 100, the range train fits it in: pass --no-calibration"
        ),
        "{err}"
    );
}

/// Mean features of `texts`, each encoded alone, through the library.
fn mean_features(texts: &[String]) -> Vec<f32> {
    pooled_features(texts, Pooling::MEAN)
}

/// `pooling` features of each of `texts`, encoded alone, through the library.
fn pooled_features(texts: &[String], pooling: Pooling) -> Vec<f32> {
    let (config, weights) = ModelDir::open(&model_dir()).unwrap().load().unwrap();
    let tokenizer = BertTokenizer::from_dir(&model_dir(), 350).unwrap();
    let mut enc = Encoder::new(CpuBackend::new(1).unwrap(), config, &weights, 512).unwrap();
    texts
        .iter()
        .flat_map(|t| {
            let tokens = tokenizer.encode(t).unwrap();
            enc.encode_batch(&PackedBatch::new([&tokens]), pooling)
                .unwrap()
        })
        .collect()
}

/// `train` on the tiny data with `--pooling pooling` into `out` (2 epochs at lr 1e-2),
/// then `extra`.
fn pooling_train_args(pooling: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "train",
        "--model",
        s(&model_dir()),
        "--data",
        s(&data_dir()),
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--epochs",
        "2",
        "--pooling",
        pooling,
        "--out",
        s(out),
    ]);
    args.extend(strings(extra));
    args
}

/// The `encode --pooling pooling --json` lines of `texts`, parsed.
fn encode_json(pooling: &str, texts: &[String]) -> Vec<Value> {
    let mut args = strings(&[
        "encode",
        "--model",
        s(&model_dir()),
        "--pooling",
        pooling,
        "--json",
    ]);
    args.extend(texts.iter().cloned());
    stdout_of(&bertcls(&args, b""))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `train --pooling cls+mean` trains a head on [CLS] and mean side by side (64 floats for
/// the 32-wide model), `mean-last2` on the means of both layers (64 too), which
/// `predict` and `encode` compute the same way.
#[test]
fn poolings_side_by_side_go_from_train_to_predict_and_encode() {
    let dir = TempDir::new("side-by-side");
    for name in ["cls+mean", "mean-last2"] {
        let pooling: Pooling = name.parse().unwrap();
        let run = dir.path().join(name);
        let args = pooling_train_args(name, &run, &["--no-cache"]);
        let out = bertcls(&args, b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
        assert_eq!(info["pooling"], name);
        let best = load_head(&run.join("best.safetensors"), None).unwrap();
        assert_eq!(best.metadata["pooling"], name);
        assert_eq!(best.head.hidden, 64, "{name}");

        let texts = texts();
        let want = pooled_features(&texts, pooling);
        let mut args = strings(&["predict", "--run", s(&run), "--json", "--no-calibration"]);
        args.extend(texts.iter().cloned());
        let got = common::json_floats(&stdout_of(&bertcls(&args, b"")), "probs").concat();
        let probs = softmax(&best.head.logits(&want), 2);
        assert_eq!(got.len(), probs.len(), "{name}: one row of 2 per text");
        assert!(
            max_diff(&got, &probs) < 1e-5,
            "{name}: {got:?} vs {probs:?}"
        );

        let rows = encode_json(name, &texts);
        assert_eq!(rows.len(), texts.len());
        for (i, row) in rows.iter().enumerate() {
            let got: Vec<f32> = serde_json::from_value(row[name].clone()).unwrap();
            // Batched with the others vs alone: GEMM blocking may differ by a few ulps.
            assert!(
                max_diff(&got, &want[i * 64..(i + 1) * 64]) < 1e-5,
                "{name}: text {i}"
            );
        }
    }
}

/// `train --pooling mean` records it in run.json and the checkpoint; `predict` and
/// `encode` then compute mean features, and the cache keeps them apart from [CLS] ones.
#[test]
fn mean_pooling_goes_from_train_to_predict_and_encode() {
    let dir = TempDir::new("pooling");
    let run = dir.path().join("run");
    let cache = dir.path().join("cache");
    let train = |pooling: &str, out: &Path| {
        let args = pooling_train_args(
            pooling,
            out,
            &["--cache-dir", s(&cache), "--log-every", "0"],
        );
        let out = bertcls(&args, b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = train("mean", &run);
    assert!(first.contains("encoded train"), "{first}");
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["pooling"], "mean");
    let best = load_head(&run.join("best.safetensors"), None).unwrap();
    assert_eq!(best.metadata["pooling"], "mean");
    // [CLS] features are another cache entry: a cls run encodes afresh.
    let cls = train("cls", &dir.path().join("cls-run"));
    assert!(cls.contains("encoded train"), "{cls}");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        4,
        "train and validation, twice"
    );

    let texts = texts();
    let mut args = strings(&["predict", "--run", s(&run), "--json", "--no-calibration"]);
    args.extend(texts.iter().cloned());
    let got = common::json_floats(&stdout_of(&bertcls(&args, b"")), "probs");
    let want = softmax(&best.head.logits(&mean_features(&texts)), 2);
    assert_eq!(got.concat().len(), want.len(), "one row of 2 per text");
    for (g, w) in got.iter().flatten().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }

    let rows = encode_json("mean", &texts);
    let want = mean_features(&texts);
    assert_eq!(rows.len(), texts.len());
    for (i, row) in rows.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(row["mean"].clone()).unwrap();
        // Batched with the others vs alone: GEMM blocking may differ by a few ulps.
        assert!(
            max_diff(&got, &want[i * 32..(i + 1) * 32]) < 1e-5,
            "text {i}"
        );
        assert!(row.get("cls").is_none());
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// A reader that stops early (`bertcls predict ... | head -1`) closes the pipe: the
/// command ends as Unix filters do, by SIGPIPE, with no error line and no panic. Before,
/// predict printed "error: Broken pipe" and info, train and search panicked in println!.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let on_cpu = |extra: &[&str]| {
        let mut args = predict_args(&recipe_pth(), extra);
        args.extend(strings(&["--device", "cpu"]));
        args
    };
    let info = strings(&["info", "--model", s(&model_dir())]);
    for args in [on_cpu(&[]), on_cpu(&["--json"]), info] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .stdin(Stdio::piped())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child may be gone before it reads all of its input.
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all("书的质量太差了\n".repeat(50).as_bytes());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

/// Standard output on a full disk (`> /dev/full`): exit 1 and a last line naming it,
/// where info, and train and search with --json, panicked in println!, and predict,
/// encode and test said only "No space left on device", as if a cache were full.
#[cfg(target_os = "linux")]
#[test]
fn output_that_cannot_be_written_is_one_error_line() {
    let dir = TempDir::new("dev-full");
    let info = strings(&["info", "--model", s(&model_dir())]);
    let info_json = [info.clone(), strings(&["--json"])].concat();
    let on_cpu = |args: Vec<String>| [args, strings(&["--device", "cpu"])].concat();
    let predict = on_cpu(predict_args(&recipe_pth(), &["good"]));
    let encode = on_cpu(strings(&["encode", "--model", s(&model_dir()), "good"]));
    let test = on_cpu(test_args(&recipe_pth(), dir.path()));
    let test_json = [test.clone(), strings(&["--json"])].concat();
    for args in [info, info_json, predict, encode, test, test_json] {
        let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().last(),
            Some("error: cannot write to standard output (No space left on device (os error 28))"),
            "{args:?}: {stderr}"
        );
    }
}

/// `predict --json` with nothing but a terminal: the prompt printed 请输入文本: and
/// 模型预测 lines, --json ignored; it is refused before the model loads.
#[cfg(target_os = "linux")]
#[test]
fn json_is_refused_at_the_interactive_prompt() {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes the two descriptors it opens; null for the optional rest.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty failed");
    // SAFETY: both descriptors are open and owned by nothing else.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    // Typed ahead: a prompt that reads it labels one text and quits.
    master.write_all(b"good\nq\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(predict_args(&recipe_pth(), &["--json", "--device", "cpu"]))
        .env("HF_HUB_OFFLINE", "1")
        .stdin(slave)
        .output()
        .unwrap();
    let err = error_of(&out);
    assert!(
        err.starts_with(
            "error: --json labels texts given as arguments, with --file or on standard input"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
