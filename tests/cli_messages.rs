//! Bad input found by an audit of the binary, each refused in one line that names the
//! file or flag at fault and says what to do, before anything is printed.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model() -> String {
    fixtures().join("tiny/model").display().to_string()
}

/// The last stderr line of a command that failed, which must be its one error line.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "bertcls succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

#[test]
fn a_folder_given_to_file_is_named_as_a_folder() {
    let dir = TempDir::new("msg-file-folder");
    let run = train_run(&dir.0, "run", &[]);
    let folder = dir.join("texts");
    fs::create_dir_all(&folder).unwrap();
    let want = format!(
        "error: --file {}: a folder, not a file; pass a text file with one text per line",
        s(&folder)
    );
    let line = refusal(&["predict", "--run", s(&run), "--file", s(&folder)]);
    assert_eq!(line, want);
    let line = refusal(&["encode", "--model", &model(), "--file", s(&folder)]);
    assert_eq!(line, want);
}

/// A run's file given for its folder (--run or --resume its run.json or a checkpoint)
/// was refused as a folder without run.json, and --resume said to start the run again
/// with --out naming the file; a run folder given to --head was refused with the OS's
/// "Is a directory". Each names what it was given and the flag that takes it.
#[test]
fn a_run_file_given_for_its_folder_and_back_names_the_right_flag() {
    let dir = TempDir::new("msg-run-file");
    let run = train_run(&dir.0, "run", &[]);
    let (json, best) = (run.join("run.json"), run.join("best.safetensors"));
    let folder_for = |flag: &str, file: &Path| {
        format!(
            "error: {flag} {}: a file, not a run folder: pass {flag} {} (the run folder holding it)",
            s(file),
            s(&run)
        )
    };
    assert_eq!(
        refusal(&["predict", "--run", s(&best), "x"]),
        folder_for("--run", &best)
    );
    assert_eq!(
        refusal(&["encode", "--run", s(&json), "x"]),
        folder_for("--run", &json)
    );
    let data = fixtures().join("data/tiny-dsdict");
    assert_eq!(
        refusal(&["test", "--run", s(&json), "--data", s(&data)]),
        folder_for("--run", &json)
    );
    assert_eq!(
        refusal(&["train", "--resume", s(&best), "--epochs", "3"]),
        folder_for("--resume", &best)
    );
    assert_eq!(
        refusal(&["predict", "--head", s(&run), "x"]),
        format!(
            "error: {} is a folder, not a head checkpoint: pass --run {} for a run folder, or --head with a head-*.safetensors file",
            s(&run),
            s(&run)
        )
    );
}

#[test]
fn a_label_the_head_lacks_names_its_file_and_row() {
    let dir = TempDir::new("msg-label-range");
    let run = train_run(&dir.0, "run", &[]);
    let data = dir.join("reviews.jsonl");
    fs::write(
        &data,
        "{\"text\": \"好\", \"label\": 0}\n{\"text\": \"差\", \"label\": 1}\n{\"text\": \"中\", \"label\": 2}\n",
    )
    .unwrap();
    let out = bertcls_env(
        &[
            "predict",
            "--run",
            s(&run),
            "--data",
            s(&data),
            "--out",
            s(&dir.join("pred.jsonl")),
        ],
        &[],
    );
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!(
            "error: {} row 3: label 2 is outside 0..2 (the head has 2 classes: ",
            s(&data)
        )),
        "{line}"
    );
}

#[test]
fn a_long_value_in_the_label_column_is_cut() {
    let dir = TempDir::new("msg-long-label");
    let long = format!("{}END", "很长的评论".repeat(40));
    let data = dir.join("train.jsonl");
    // A long text among ids: the mix is refused at that row, which quotes it cut.
    let mut rows = format!("{{\"text\": \"x\", \"label\": \"{long}\"}}\n");
    for id in [0, 1, 0] {
        rows.push_str(&format!("{{\"text\": \"x\", \"label\": {id}}}\n"));
    }
    fs::write(&data, rows).unwrap();
    let line = refusal(&[
        "train",
        "--model",
        &model(),
        "--data",
        s(&data),
        "--out",
        s(&dir.join("run")),
        "--no-cache",
    ]);
    let cut: String = long.chars().take(80).collect();
    assert!(
        line.contains(&format!("row 1: label \"{cut}…\" is a name")),
        "{line}"
    );
    assert!(!line.contains("END"), "{line}");
}

#[test]
fn a_bad_long_in_run_json_says_what_it_takes() {
    let dir = TempDir::new("msg-run-long");
    let run = train_run(&dir.0, "run", &[]);
    let json = run.join("run.json");
    let text = fs::read_to_string(&json).unwrap();
    assert!(text.contains("\"long\": \"truncate\""), "{text}");
    fs::write(
        &json,
        text.replace("\"long\": \"truncate\"", "\"long\": \"chunk\""),
    )
    .unwrap();
    let line = refusal(&["test", "--run", s(&run)]);
    assert!(
        line.contains(s(&json))
            && line.contains(r#""long" is "chunk", not "truncate" or {"chunk": {"stride": N}}"#),
        "{line}"
    );
}

#[test]
fn info_with_a_model_that_does_not_load_prints_nothing_first() {
    let dir = TempDir::new("msg-info");
    fs::write(dir.join("config.json"), "{").unwrap();
    for json in [false, true] {
        let mut args = vec!["info", "--model", s(&dir.0)];
        if json {
            args.push("--json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("config.json"), "{stderr}");
    }
}

#[test]
fn an_unreadable_chunk_says_to_delete_it_and_deleting_it_works() {
    let dir = TempDir::new("msg-parts");
    let data = fixtures().join("data/tiny-files/train.jsonl");
    let args = |out: &Path| {
        vec![
            "encode".to_string(),
            "--model".into(),
            model(),
            "--data".into(),
            s(&data).into(),
            "--chunk-rows".into(),
            "8".into(),
            "--out".into(),
            s(out).into(),
        ]
    };
    let encode = |out: &Path, env: &[(&str, &str)]| {
        let a = args(out);
        bertcls_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };
    let clean = dir.join("clean.safetensors");
    ok(encode(&clean, &[]));
    let out = dir.join("f.safetensors");
    let killed = encode(&out, &[("BERTCLS_TEST_ABORT_AFTER_CHUNKS", "2")]);
    assert!(!killed.status.success());
    let parts = dir.join("f.safetensors.parts");
    let chunk = parts.join("chunk-000000000000.safetensors");
    let bytes = fs::read(&chunk).unwrap();
    fs::write(&chunk, &bytes[..20]).unwrap();

    let line = error_line(&encode(&out, &[]));
    assert!(
        line.contains(&format!("{}: not a readable safetensors part", s(&chunk)))
            && line.ends_with(&format!(
                "delete that chunk file (or all of {}) and run the command again",
                s(&parts)
            )),
        "{line}"
    );
    fs::remove_file(&chunk).unwrap();
    ok(encode(&out, &[]));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&clean).unwrap());
}

#[test]
fn a_stride_where_texts_are_truncated_is_refused() {
    let dir = TempDir::new("msg-stride");
    let run = train_run(&dir.0, "run", &[]);
    let want = "error: --stride 8 only applies to --long chunk, and long texts are truncated here: add --long chunk, or drop --stride";
    let out = dir.join("new-run");
    let data = fixtures().join("data/tiny-dsdict");
    let line = refusal(&[
        "train",
        "--model",
        &model(),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--stride",
        "8",
    ]);
    assert_eq!(line, want);
    assert!(!out.exists());
    // A resume names the settings it takes from run.json, then refuses.
    let resumed = bertcls_cpu(&["train", "--resume", s(&run), "--stride", "8"]);
    assert_eq!(error_line(&resumed), want);
    assert_eq!(
        refusal(&["encode", "--model", &model(), "--stride", "8", "x"]),
        want
    );
    assert_eq!(
        refusal(&["encode", "--run", s(&run), "--stride", "8", "x"]),
        want
    );
    ok(bertcls_cpu(&[
        "encode",
        "--model",
        &model(),
        "--long",
        "chunk",
        "--stride",
        "8",
        "x",
    ]));
}

/// A run or head trained on windows sharing 100 tokens, used with a --max-length whose
/// windows cannot share that many, was refused as "--stride 100 ... pass a stride below
/// that": predict and test have no --stride, and none was passed. The file that records
/// the stride is named, and the --max-length that would do.
#[test]
fn a_max_length_too_short_for_a_recorded_stride_names_the_file() {
    let dir = TempDir::new("msg-recorded-stride");
    let run = train_run(&dir.0, "run", &["--long", "chunk", "--stride", "100"]);
    let json = run.join("run.json");
    let best = run.join("best.safetensors");
    let want = |file: &Path| {
        format!(
            "error: --max-length 50: {} records windows sharing 100 tokens (--long chunk), leaving windows of 50 tokens no room for new ones besides [CLS] and [SEP]: pass --max-length 103 or more",
            s(file)
        )
    };
    let short = ["--max-length", "50", "x"];
    let predict = [&["predict", "--run", s(&run)][..], &short].concat();
    assert_eq!(refusal(&predict), want(&json));
    let head = [&["predict", "--head", s(&best)][..], &short].concat();
    assert_eq!(refusal(&head), want(&best));
    let data = fixtures().join("data/tiny-dsdict");
    let test = [
        "test",
        "--run",
        s(&run),
        "--max-length",
        "50",
        "--data",
        s(&data),
    ];
    assert_eq!(error_line(&bertcls_cpu(&test)), want(&json));
    ok(bertcls_cpu(&[
        "predict",
        "--run",
        s(&run),
        "--max-length",
        "103",
        "x",
    ]));

    // Both from run.json, the stride too long for the max_length: the file is damaged.
    // predict reads the checkpoint too, whose stride is now another.
    let text = fs::read_to_string(&json).unwrap();
    fs::write(&json, text.replace("\"stride\": 100", "\"stride\": 400")).unwrap();
    let damaged = format!(
        "error: {} records windows of max_length 350 sharing 400 tokens (--long chunk), leaving no room for new tokens besides [CLS] and [SEP]: the file is damaged; restore the max_length and stride the head was trained with",
        s(&json)
    );
    assert_eq!(refusal(&["encode", "--run", s(&run), "x"]), damaged);
    let refused = refusal(&["predict", "--run", s(&run), "x"]);
    let disagree = format!(
        "error: {} records long chunk:100, but {} records chunk:400: the two are not of one run",
        s(&best),
        s(&json)
    );
    assert!(refused.starts_with(&disagree), "{refused}");
}

#[test]
fn a_batch_budget_below_one_text_is_refused() {
    let dir = TempDir::new("msg-batch-tokens");
    let run = train_run(&dir.0, "run", &[]);
    for tokens in ["0", "1", "349"] {
        let line = refusal(&[
            "encode",
            "--model",
            &model(),
            "--max-batch-tokens",
            tokens,
            "x",
        ]);
        assert_eq!(
            line,
            format!("error: --max-batch-tokens {tokens}: a batch holds at least one text of up to 350 tokens (max_length); pass at least 350")
        );
    }
    let line = refusal(&["predict", "--run", s(&run), "--max-batch-tokens", "1", "x"]);
    assert!(line.starts_with("error: --max-batch-tokens 1: "), "{line}");
    ok(bertcls_cpu(&[
        "encode",
        "--model",
        &model(),
        "--max-batch-tokens",
        "350",
        "x",
    ]));
    // The default budget still grows to a --max-length past it.
    ok(bertcls_cpu(&[
        "encode",
        "--model",
        &model(),
        "--max-length",
        "512",
        "--max-batch-tokens",
        "512",
        "x",
    ]));
}

#[test]
fn a_shard_without_rows_says_how_many_shards_fit() {
    let dir = TempDir::new("msg-shards");
    let data = fixtures().join("data/tiny-files/train.jsonl");
    let (model, out) = (model(), dir.join("f.parquet"));
    let encode = |data: &Path, extra: &[&str]| {
        let mut args = vec![
            "encode",
            "--model",
            &model,
            "--data",
            s(data),
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        error_line(&bertcls_env(&args, &[]))
    };
    let no_rows = "error: --shard 0/50 holds no rows: split \"train\" has 32 rows, so at most 32 shards can each hold one; pass --shard K/N with N at most 32";
    assert_eq!(encode(&data, &["--shard", "0/50"]), no_rows);
    // Refused before the model loads: a model that would fail to load is not reached.
    let missing = dir.join("no-model");
    let args = [
        "encode",
        "--model",
        s(&missing),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--shard",
        "0/50",
    ];
    assert_eq!(error_line(&bertcls_env(&args, &[])), no_rows);
    let empty = dir.join("train.jsonl");
    fs::write(&empty, "").unwrap();
    assert_eq!(
        encode(&empty, &[]),
        format!(
            "error: split \"train\" of {} has no rows: add rows, or pick another with --split",
            s(&empty)
        )
    );
}

/// Standard error that cannot be written (`2>` a file on a full disk) does not turn a
/// command into a panic (exit status 101, nothing done): its diagnostics are dropped, and
/// it writes its output and exits as it would have, 0 on success and 1 on an error.
#[test]
fn an_unwritable_standard_error_is_no_panic() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args(args)
            .args(["--device", "cpu"])
            .env("HF_HUB_OFFLINE", "1")
            .stdin(std::process::Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .output()
            .unwrap()
    };
    let model = model();
    let done = run(&["encode", "--model", &model, "a text"]);
    assert_eq!(done.status.code(), Some(0));
    let line = String::from_utf8(done.stdout).unwrap();
    assert!(line.starts_with('{') && line.ends_with("}\n"), "{line}");
    let dir = TempDir::new("msg-stderr-full");
    let failed = run(&["encode", "--model", s(&dir.join("absent"))]);
    assert_eq!(failed.status.code(), Some(1));
}
