//! `bertcls train` end to end on the tiny fixture model and datasets: the run folder,
//! the feature cache, `--resume`, every data format, and the one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bertcls::checkpoint::load_head;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of the tiny model folder at `to`, for a test to break.
fn copy_tiny_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny/model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn dsdict() -> String {
    fixtures().join("data/tiny-dsdict").display().to_string()
}

/// A test's own folder for runs and caches, emptied first.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("bertcls-cli-train-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn feature_cache(&self) -> PathBuf {
        self.dir.join("features")
    }

    /// `bertcls train` on the tiny model and the CPU, offline, caching under the sandbox.
    fn train(&self, args: &[&str]) -> Output {
        self.train_model(&fixtures().join("tiny/model"), args)
    }

    /// `bertcls train` as [`Sandbox::train`], on the model in `model`.
    fn train_model(&self, model: &Path, args: &[&str]) -> Output {
        self.train_on("cpu", model, args)
    }

    /// `bertcls train` as [`Sandbox::train_model`], with `--device device`.
    fn train_on(&self, device: &str, model: &Path, args: &[&str]) -> Output {
        self.train_on_env(device, model, args, &[])
    }

    /// `bertcls train` as [`Sandbox::train_on`], with `env` set.
    fn train_on_env(
        &self,
        device: &str,
        model: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .envs(env.iter().copied())
            .arg("train")
            .args(["--model", model.to_str().unwrap(), "--device", device])
            .args(["--cache-dir", self.feature_cache().to_str().unwrap()])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("BERTCLS_CACHE", self.dir.join("bertcls-cache"))
            .output()
            .unwrap()
    }

    /// The recipe at a scale the 32-row fixture can learn from in a few epochs.
    fn train_tiny(&self, epochs: usize, extra: &[&str]) -> Output {
        let (data, epochs) = (dsdict(), epochs.to_string());
        let mut args = vec!["--data", &data, "--batch-size", "8", "--epochs", &epochs];
        // --search tries its own learning rates and refuses one given.
        if !extra.contains(&"--search") {
            args.extend_from_slice(&["--lr", "1e-2"]);
        }
        args.extend_from_slice(extra);
        self.train(&args)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "bertcls train failed:\n{}",
        stderr(out)
    );
}

/// A non-zero exit whose last stderr line is the one error line, containing `needle`.
fn failed_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure, got success:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "expected one error line with {needle:?}:\n{err}"
    );
    assert_eq!(
        err.matches("error: ").count(),
        1,
        "more than one error line:\n{err}"
    );
}

fn metrics(run: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(run).join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// metrics.jsonl less the wall times, which differ between runs.
fn metrics_without_time(run: &str) -> Vec<Value> {
    let mut m = metrics(run);
    for epoch in &mut m {
        epoch["seconds"] = Value::Null;
    }
    m
}

fn run_json(run: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("run.json")).unwrap())
        .unwrap()
}

#[test]
fn trains_and_writes_the_run_folder() {
    let sb = Sandbox::new("run");
    let run = sb.path("run");
    let out = sb.train_tiny(3, &["--out", &run, "--json", "--log-every", "2"]);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains("epoch 2 step 4 loss "),
        "no recipe log line:\n{err}"
    );

    for name in [
        "head-epoch-1",
        "head-epoch-2",
        "head-epoch-3",
        "best",
        "last",
    ] {
        assert!(
            Path::new(&run)
                .join(format!("{name}.safetensors"))
                .is_file(),
            "{name} missing"
        );
    }
    let m = metrics(&run);
    assert_eq!(m.len(), 3);
    let loss = |i: usize| m[i]["train_loss"].as_f64().unwrap();
    assert!(loss(2) < loss(0), "training loss did not go down: {m:?}");
    assert!(m
        .iter()
        .all(|e| e["val_acc"].is_f64() && e["val_loss"].is_f64()));

    let info = run_json(&run);
    assert_eq!(info["labels"], serde_json::json!(["negative", "positive"]));
    assert_eq!(info["max_length"], 350);
    assert_eq!(info["hidden_size"], 32);
    assert_eq!(info["weights_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(info["hyperparameters"]["batch_size"], 8);
    assert_eq!(info["hyperparameters"]["lr"], 1e-2);
    assert_eq!(info["hyperparameters"]["epochs"], 3);
    assert!(Path::new(info["model_dir"].as_str().unwrap()).is_absolute());

    let last = load_head(&Path::new(&run).join("last.safetensors"), Some(32)).unwrap();
    assert_eq!((last.head.num_labels, last.head.hidden), (2, 32));
    assert_eq!(last.optim.unwrap().step, 12, "3 epochs of 32 / 8 steps");
    assert_eq!(last.metadata["epoch"], "3");
    assert_eq!(last.metadata["labels"], r#"["negative","positive"]"#);

    let summary: Value =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    let best = summary["best_epoch"].as_u64().unwrap() as usize;
    let best_acc = m
        .iter()
        .map(|e| e["val_acc"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(m[best - 1]["val_acc"].as_f64(), Some(best_acc));
    let best_head = load_head(&Path::new(&run).join("best.safetensors"), None).unwrap();
    assert_eq!(best_head.metadata["epoch"], best.to_string());
    // The temperature fitted on the validation split for the best epoch's head, in its
    // checkpoint, its metrics line and the summary alike.
    let t: f64 = best_head.metadata["temperature"].parse().unwrap();
    assert!(t > 0.0 && t.is_finite(), "temperature {t}");
    assert_eq!(m[best - 1]["temperature"].as_f64(), Some(t));
    assert_eq!(summary["temperature"].as_f64(), Some(t));
    assert!(stderr(&out).contains(&format!("calibration: temperature {t:.4}")));
}

#[test]
fn second_run_reads_the_cache_and_max_length_misses() {
    let sb = Sandbox::new("cache");
    let (a, b) = (sb.path("a"), sb.path("b"));
    let first = sb.train_tiny(1, &["--out", &a]);
    succeeded(&first);
    assert!(stderr(&first).contains("encoded train"));

    let second = sb.train_tiny(1, &["--out", &b]);
    succeeded(&second);
    let err = stderr(&second);
    assert!(
        err.contains("train: 32 cls features from the cache"),
        "{err}"
    );
    assert!(
        err.contains("validation: 8 cls features from the cache"),
        "{err}"
    );
    assert!(
        !err.contains("encoded "),
        "a cached run encoded something:\n{err}"
    );
    assert_eq!(
        metrics_without_time(&a),
        metrics_without_time(&b),
        "cached features train differently"
    );

    let shorter = sb.train_tiny(1, &["--out", &sb.path("c"), "--max-length", "16"]);
    succeeded(&shorter);
    assert!(
        stderr(&shorter).contains("encoded train"),
        "--max-length 16 hit the cache"
    );
}

/// The feature cache entry of `rows` features, and where its data starts.
fn cache_entry_of(cache: &Path, rows: u64) -> (PathBuf, usize) {
    for entry in std::fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        if header["cls"]["shape"][0] == rows {
            return (path, 8 + n);
        }
    }
    panic!("no cache entry of {rows} rows in {}", cache.display());
}

/// Finite floats written over a cache entry's features (the file still reads, its
/// shape is right) are caught by its checksum: the entry is dropped with a warning
/// and the split encoded again, so the run trains as on the original features.
#[test]
fn an_altered_cache_entry_is_encoded_again() {
    let sb = Sandbox::new("cache-altered");
    let (a, b) = (sb.path("a"), sb.path("b"));
    succeeded(&sb.train_tiny(1, &["--out", &a]));
    let (entry, start) = cache_entry_of(&sb.feature_cache(), 32);
    let mut bytes = std::fs::read(&entry).unwrap();
    for chunk in bytes[start..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&0x3f00_0000u32.to_le_bytes());
    }
    std::fs::write(&entry, &bytes).unwrap();

    let second = sb.train_tiny(1, &["--out", &b]);
    succeeded(&second);
    let err = stderr(&second);
    let warning = format!(
        "warning: feature cache entry {} is unusable (its features do not match their checksum",
        entry.display()
    );
    assert!(err.contains(&warning), "{err}");
    assert!(
        !err.contains("train: 32 cls features from the cache"),
        "{err}"
    );
    assert!(err.contains("encoded train"), "{err}");
    assert!(
        err.contains("validation: 8 cls features from the cache"),
        "{err}"
    );
    assert_eq!(metrics_without_time(&a), metrics_without_time(&b));
    assert_ne!(
        std::fs::read(&entry).unwrap(),
        bytes,
        "the entry was not rewritten"
    );
}

#[test]
fn no_cache_stores_nothing() {
    let sb = Sandbox::new("nocache");
    succeeded(&sb.train_tiny(1, &["--out", &sb.path("run"), "--no-cache"]));
    let stored = std::fs::read_dir(sb.feature_cache())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "--no-cache wrote into the feature cache");
}

/// 4 epochs straight and 2 then `--resume` to 4 end on the same head, optimiser and metrics.
#[test]
fn resume_continues_exactly() {
    let sb = Sandbox::new("resume");
    let (straight, split) = (sb.path("straight"), sb.path("split"));
    succeeded(&sb.train_tiny(4, &["--out", &straight]));
    succeeded(&sb.train_tiny(2, &["--out", &split]));
    let resumed = sb.train_tiny(4, &["--resume", &split]);
    succeeded(&resumed);
    assert!(stderr(&resumed).contains("after epoch 2"));

    for name in ["last", "best", "head-epoch-3"] {
        let path = |run: &str| Path::new(run).join(format!("{name}.safetensors"));
        let (a, b) = (
            load_head(&path(&straight), None).unwrap(),
            load_head(&path(&split), None).unwrap(),
        );
        assert_eq!(a.head, b.head, "{name}: heads differ");
        assert_eq!(a.optim, b.optim, "{name}: AdamW states differ");
        assert_eq!(a.metadata, b.metadata, "{name}: metadata differs");
    }
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&split)
    );
    assert_eq!(run_json(&split)["hyperparameters"]["epochs"], 4);
}

/// A run encoded on another backend (run.json says cuda:0) resumes on the CPU, saying
/// that the resumed epochs are not bit for bit an uninterrupted run's; on its own
/// backend nothing is said.
#[test]
fn resume_on_another_backend_says_it_is_not_exact() {
    let sb = Sandbox::new("resume-backend");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &run]));
    let same = sb.train(&["--resume", &run, "--epochs", "2"]);
    succeeded(&same);
    assert!(
        !stderr(&same).contains("note: the run encoded"),
        "{}",
        stderr(&same)
    );
    let path = Path::new(&run).join("run.json");
    let mut info = run_json(&run);
    info["device"] = "cuda:0".into();
    std::fs::write(&path, info.to_string()).unwrap();
    let other = sb.train(&["--resume", &run, "--epochs", "3"]);
    succeeded(&other);
    assert!(
        stderr(&other).contains("note: the run encoded its features on cuda:0, this resume on cpu: the two agree to rounding (about 1e-5), so the epochs from here are close to an uninterrupted run's, not bit for bit"),
        "{}",
        stderr(&other)
    );
    assert_eq!(
        run_json(&run)["device"],
        "cuda:0",
        "the run's record is kept"
    );
}

/// A run killed after writing epoch 3's metrics but before its last.safetensors resumes
/// after epoch 2, and its metrics.jsonl ends up as an uninterrupted run's.
#[test]
fn resume_after_a_kill_between_writes() {
    let sb = Sandbox::new("resume-kill");
    let (straight, killed) = (sb.path("straight"), sb.path("killed"));
    succeeded(&sb.train_tiny(3, &["--out", &straight]));
    succeeded(&sb.train_tiny(3, &["--out", &killed]));
    let dir = Path::new(&killed);
    std::fs::copy(
        dir.join("head-epoch-2.safetensors"),
        dir.join("last.safetensors"),
    )
    .unwrap();

    let resumed = sb.train_tiny(3, &["--resume", &killed]);
    succeeded(&resumed);
    assert!(stderr(&resumed).contains("after epoch 2"));
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&killed)
    );
    let last = |run: &str| load_head(&Path::new(run).join("last.safetensors"), None).unwrap();
    assert_eq!(last(&straight).head, last(&killed).head);
}

#[test]
fn resume_refuses_a_different_setup() {
    let sb = Sandbox::new("resume-refuse");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &run]));
    failed_with(
        &sb.train_tiny(2, &["--resume", &run, "--max-length", "16"]),
        "--max-length (run: 350, now: 16)",
    );
    failed_with(
        &sb.train_tiny(2, &["--resume", &run, "--seed", "7"]),
        "--seed (run: 0, now: 7)",
    );
    failed_with(
        &sb.train_tiny(1, &["--resume", &run]),
        "has done 1 epoch already",
    );
    failed_with(
        &sb.train_tiny(2, &["--resume", &sb.path("nothing")]),
        "no run.json there",
    );
    let tsv = fixtures().join("data/tiny-files/train.tsv");
    failed_with(
        &sb.train(&[
            "--data",
            tsv.to_str().unwrap(),
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--epochs",
            "2",
            "--labels",
            "0,1",
            "--resume",
            &run,
        ]),
        "labels (run: negative,positive, now: 0,1)",
    );
}

/// `--resume DIR` (the sandbox adds only --model) continues with the run's data, features
/// and hyper-parameters, to its own --epochs unless given, and ends where an
/// uninterrupted run does.
#[test]
fn resume_takes_the_runs_settings() {
    let sb = Sandbox::new("resume-settings");
    let (straight, split) = (sb.path("straight"), sb.path("split"));
    let flags = ["--seed", "3", "--weight-decay", "0.1", "--max-length", "64"];
    succeeded(&sb.train_tiny(4, &[&flags[..], &["--out", &straight]].concat()));
    succeeded(&sb.train_tiny(2, &[&flags[..], &["--out", &split]].concat()));
    let resumed = sb.train(&["--resume", &split, "--epochs", "4"]);
    succeeded(&resumed);
    let err = stderr(&resumed);
    assert!(
        err.contains("run.json's settings: --max-length 64")
            && err.contains("--batch-size 8 --lr 0.01 --weight-decay 0.1")
            && err.contains("--seed 3")
            && !err.contains("--epochs"),
        "{err}"
    );
    assert!(err.contains("after epoch 2"), "{err}");
    let last = |run: &str| load_head(&Path::new(run).join("last.safetensors"), None).unwrap();
    assert_eq!(last(&straight).head, last(&split).head);
    assert_eq!(last(&straight).optim, last(&split).optim);
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&split)
    );
    failed_with(
        &sb.train(&["--resume", &split]),
        "has done 4 epochs already",
    );
}

/// A run.json whose max_length was damaged since is blamed, with its field, on that
/// file, not on the --max-length flag the resume never gave; one that no longer parses
/// is named and the way out said.
#[test]
fn resume_blames_a_damaged_run_json() {
    let sb = Sandbox::new("resume-damaged");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &run]));
    let path = Path::new(&run).join("run.json");
    let original = run_json(&run);
    let resume_with = |max_length: Value| {
        let mut info = original.clone();
        info["max_length"] = max_length;
        std::fs::write(&path, info.to_string()).unwrap();
        sb.train(&["--resume", &run, "--epochs", "2"])
    };
    let file = path.display();
    failed_with(
        &resume_with(0.into()),
        &format!("error: {file} records max_length 0, which leaves no room for [CLS] and [SEP]: the file is damaged; restore the max_length the head was trained with"),
    );
    failed_with(
        &resume_with(99999.into()),
        &format!("error: {file} records max_length 99999, beyond the 512 positions"),
    );
    let mut info = original.clone();
    info["pooling"] = "cls+mean-last9".into();
    std::fs::write(&path, info.to_string()).unwrap();
    failed_with(
        &sb.train(&["--resume", &run, "--epochs", "2"]),
        &format!("error: {file} records pooling cls+mean-last9, of 9 layers, but"),
    );
    let out = resume_with("64".into());
    failed_with(
        &out,
        &format!("error: {file} is not a bertcls run.json (\"max_length\" is \"64\", not a whole number of tokens"),
    );
    let last = stderr(&out);
    assert!(
        last.trim_end().ends_with(
            "it is damaged or from another tool; restore it from a copy, or train the run again"
        ),
        "{last}"
    );
}

/// A run whose model folder moved since is resumed with no --model: the error names the
/// run.json that names the model, not a --model flag the user never gave.
#[test]
fn resume_blames_a_moved_model_on_run_json() {
    let sb = Sandbox::new("resume-moved-model");
    let (model, moved) = (sb.dir.join("model"), sb.dir.join("moved"));
    copy_tiny_model(&model);
    let run = sb.path("run");
    succeeded(&sb.train_model(
        &model,
        &["--data", &dsdict(), "--epochs", "1", "--out", &run],
    ));
    std::fs::rename(&model, &moved).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args([
            "train", "--resume", &run, "--epochs", "2", "--device", "cpu",
        ])
        .args(["--cache-dir", sb.feature_cache().to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("BERTCLS_CACHE", sb.dir.join("bertcls-cache"))
        .output()
        .unwrap();
    failed_with(
        &out,
        &format!("error: the model {}/run.json names cannot be loaded (", run),
    );
    failed_with(
        &out,
        "): pass --model with the folder of the weights it was trained on",
    );
}

#[test]
fn every_file_format_trains() {
    let sb = Sandbox::new("formats");
    for ext in ["parquet", "jsonl", "csv", "tsv"] {
        let data = fixtures().join(format!("data/tiny-files/train.{ext}"));
        let out = sb.train(&[
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--out",
            &sb.path(ext),
        ]);
        succeeded(&out);
        let m = metrics(&sb.path(ext));
        assert!(m.len() == 1 && m[0]["val_acc"].is_f64(), "{ext}: {m:?}");
    }
}

#[test]
fn without_validation_split_best_is_last() {
    let sb = Sandbox::new("noval");
    let data = fixtures().join("data/tiny-dataset");
    let run = sb.path("run");
    let out = sb.train(&[
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--out",
        &run,
    ]);
    succeeded(&out);
    assert!(stderr(&out).contains("no validation split"));
    let lines = metrics(&run);
    assert_eq!(lines.len(), 2, "one metrics line per epoch");
    assert!(lines.iter().all(|m| m["val_acc"].is_null()));
    let load = |name: &str| load_head(&Path::new(&run).join(name), None).unwrap();
    assert_eq!(load("best.safetensors").head, load("last.safetensors").head);
    failed_with(
        &sb.train(&[
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "8",
            "--validation-split",
            "validation",
            "--out",
            &sb.path("x"),
        ]),
        "unknown split \"validation\"",
    );
}

#[test]
fn errors_are_one_line() {
    let sb = Sandbox::new("errors");
    let out = sb.path("run");
    let data = dsdict();
    failed_with(
        &sb.train_tiny(1, &["--out", &out, "--split", "nope"]),
        "unknown split \"nope\"",
    );
    failed_with(
        &sb.train_tiny(1, &["--out", &out, "--text-column", "nope"]),
        "no column \"nope\"",
    );
    failed_with(
        &sb.train(&["--data", &data, "--batch-size", "64", "--out", &out]),
        "train split has 32 rows, fewer than --batch-size 64: lower --batch-size",
    );
    failed_with(
        &sb.train(&["--data", &data, "--batch-size", "0", "--out", &out]),
        "--batch-size 0",
    );
    failed_with(&sb.train_tiny(0, &["--out", &out]), "--epochs 0");
    // Refused before training, where the weights overflowed an epoch in with a hint at
    // --lr alone.
    failed_with(
        &sb.train_tiny(1, &["--out", &out, "--weight-decay", "1e308"]),
        "--weight-decay 1e308 with --lr 1e-2: each step scales the weights by 1 - lr x weight decay = -1.000e306, which wipes or flips them: keep lr x weight decay below 1",
    );
    failed_with(
        &sb.train_tiny(1, &["--out", &out, "--head-device", "cuda"]),
        "--head-device cuda needs the encoder on a GPU",
    );
    assert!(
        !Path::new(&out).exists(),
        "a failed run left its folder behind"
    );

    succeeded(&sb.train_tiny(1, &["--out", &out]));
    failed_with(&sb.train_tiny(1, &["--out", &out]), "already holds a run");
    let file = sb.path("a-file");
    std::fs::write(&file, "x").unwrap();
    failed_with(
        &sb.train_tiny(1, &["--out", &file]),
        "is a file, not a folder",
    );
}

/// A resume takes run.json's hyperparameters for the flags not given, past the flags'
/// own checks: a damaged lr (-1) was run and kept in run.json, and a damaged beta1 was
/// refused as a flag "differing" that the user never passed. Both name run.json now.
#[test]
fn a_resume_refuses_damaged_hyperparameters_in_run_json() {
    let sb = Sandbox::new("resume-damaged");
    let out = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &out]));
    let json = Path::new(&out).join("run.json");
    let good = std::fs::read_to_string(&json).unwrap();
    for (key, value, want) in [
        (
            "lr",
            "-1",
            "its lr is -1, where train writes a finite number above 0",
        ),
        (
            "beta1",
            "1.0",
            "its beta1 is 1, where train writes a number of at least 0 and below 1",
        ),
        (
            "batch_size",
            "0",
            "its batch_size is 0, where train writes 1 or more",
        ),
        (
            "class_weights",
            "\"some\"",
            "its class_weights is some, where train writes none or balanced",
        ),
    ] {
        let mut run: serde_json::Value = serde_json::from_str(&good).unwrap();
        run["hyperparameters"][key] = serde_json::from_str(value).unwrap();
        std::fs::write(&json, run.to_string()).unwrap();
        failed_with(
            &sb.train(&["--resume", &out, "--epochs", "2"]),
            &format!(
                "{}: {want}: the file is damaged; restore it from a copy, or train the run again",
                json.display()
            ),
        );
    }
    std::fs::write(&json, good).unwrap();
    succeeded(&sb.train(&["--resume", &out, "--epochs", "2"]));
}

#[test]
fn help_names_the_recipe_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["train", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--epochs <EPOCHS>",
        "[default: 100]",
        "[default: 32]",
        "[default: 0.00001]",
        "--resume <DIR>",
        "runs/<UTC date-time>",
        "--head-device",
        "--no-cache",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

/// `--class-weights balanced`: n / (k n_c) from the train split, in run.json, and one
/// line when a class has no example.
#[test]
fn balanced_class_weights_come_from_the_train_split() {
    let sb = Sandbox::new("class-weights");
    // The tiny train split less half of its positives: 16 negative, 8 positive rows,
    // so the weights are 24 / (2 * 16) = 0.75 and 24 / (2 * 8) = 1.5.
    let text = std::fs::read_to_string(fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let mut kept_positive = 0;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let positive = l.ends_with("\"label\": 1}");
            kept_positive += usize::from(positive);
            !positive || kept_positive <= 8
        })
        .collect();
    assert_eq!(lines.len(), 24);
    let write_split = |folder: &str, lines: &[&str]| {
        let dir = sb.dir.join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.jsonl"), lines.join("\n")).unwrap();
        dir.join("train.jsonl").display().to_string()
    };
    let data = write_split("imbalanced", &lines);
    let train = |run: &str, weighting: &str| {
        sb.train(&[
            "--data",
            &data,
            "--labels",
            "neg,pos",
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--epochs",
            "2",
            "--class-weights",
            weighting,
            "--out",
            run,
        ])
    };
    let (plain, balanced) = (sb.path("none"), sb.path("balanced"));
    succeeded(&train(&plain, "none"));
    let out = train(&balanced, "balanced");
    succeeded(&out);
    assert!(
        stderr(&out).contains("class weights (balanced): 0.7500, 1.5000"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        run_json(&balanced)["hyperparameters"]["class_weights"],
        "balanced"
    );
    assert_eq!(run_json(&plain)["hyperparameters"]["class_weights"], "none");
    // Same seed, same batches: only the loss's weights differ, so the heads must.
    let head = |run: &str| load_head(&Path::new(run).join("last.safetensors"), None).unwrap();
    assert_ne!(head(&plain).head.weight, head(&balanced).head.weight);

    let negatives: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.ends_with("\"label\": 0}"))
        .collect();
    let only_negative = write_split("negative", &negatives);
    failed_with(
        &sb.train(&[
            "--data",
            &only_negative,
            "--labels",
            "neg,pos",
            "--batch-size",
            "8",
            "--class-weights",
            "balanced",
            "--out",
            &sb.path("x"),
        ]),
        "--class-weights balanced: label 1 has no training example",
    );
    // clap's own error: one line naming the flag, then its usage hint.
    let out = sb.train_tiny(1, &["--class-weights", "equal", "--out", &sb.path("y")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("'--class-weights <none|balanced>': `equal` is not a class weighting: use none or balanced"),
        "{}",
        stderr(&out)
    );
}

/// `train --search`: every trial of the grid in search.json, the same for the same seed,
/// the best one in best.safetensors and run.json.
#[test]
fn search_is_deterministic_and_records_the_best_trial() {
    let sb = Sandbox::new("search");
    let search = |out: &str, extra: &[&str]| {
        let mut args = vec!["--search", "--out", out, "--seed", "3"];
        args.extend_from_slice(extra);
        let out = sb.train_tiny(20, &args);
        succeeded(&out);
        out
    };
    let (a, b) = (sb.path("a"), sb.path("b"));
    let first = search(&a, &["--json"]);
    search(&b, &[]);
    let table = |run: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("search.json")).unwrap())
            .unwrap()
    };
    let trials = table(&a);
    assert_eq!(
        trials.as_array().unwrap().len(),
        27,
        "9 learning rates x 3 weight decays"
    );
    assert_eq!(trials, table(&b), "the same seed gives the same trials");
    assert!(stderr(&first).contains("   pooling  lr       decay  epoch/run  val loss  val acc"));

    // The best trial: highest validation accuracy, ties to the lower validation loss.
    let rows = trials.as_array().unwrap();
    let key = |t: &Value| {
        (
            t["val_acc"].as_f64().unwrap(),
            -t["val_loss"].as_f64().unwrap(),
        )
    };
    let best = rows
        .iter()
        .fold(&rows[0], |b, t| if key(t) > key(b) { t } else { b });
    let info = run_json(&a);
    assert_eq!(info["hyperparameters"]["lr"], best["lr"]);
    assert_eq!(
        info["hyperparameters"]["weight_decay"],
        best["weight_decay"]
    );
    assert_eq!(info["hyperparameters"]["epochs"], best["best_epoch"]);
    assert_eq!(info["search"]["validation"], "validation");
    assert_eq!(info["search"]["best_val_acc"], best["val_acc"]);
    let summary: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(summary["best"]["lr"], best["lr"]);
    let head = load_head(&Path::new(&a).join("best.safetensors"), None).unwrap();
    assert_eq!(head.metadata["epoch"], best["best_epoch"].to_string());
    assert!(head.metadata["temperature"].parse::<f64>().unwrap() > 0.0);

    // Both poolings: the grid once per pooling.
    let both = sb.path("both");
    search(&both, &["--pooling", "cls,mean"]);
    let rows = table(&both);
    let poolings: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pooling"].as_str().unwrap())
        .collect();
    assert_eq!(poolings.len(), 54);
    assert_eq!(poolings.iter().filter(|&&p| p == "mean").count(), 27);
    assert_eq!(
        run_json(&both)["search"]["poolings"],
        serde_json::json!(["cls", "mean"])
    );

    failed_with(
        &sb.train_tiny(1, &["--pooling", "cls,mean", "--out", &sb.path("x")]),
        "--pooling cls,mean: trying several poolings needs --search",
    );
    // -1e-1 too: clap's own negative-number test would take it for flags -1, -e...
    for (given, shown) in [("1.5", "1.5"), ("-1e-1", "-0.1")] {
        failed_with(
            &sb.train_tiny(
                1,
                &[
                    "--search",
                    "--validation-fraction",
                    given,
                    "--out",
                    &sb.path("y"),
                ],
            ),
            &format!("--validation-fraction {shown}: pass a fraction of train between 0 and 1"),
        );
    }
}

/// With a validation split, --search validates on it and holds nothing out: a
/// --validation-fraction given would change nothing, and is refused before anything is
/// encoded, as the search-only flags are without --search.
#[test]
fn search_refuses_a_validation_fraction_beside_a_validation_split() {
    let sb = Sandbox::new("search-fraction-unused");
    let out = sb.train_tiny(
        1,
        &[
            "--search",
            "--validation-fraction",
            "0.25",
            "--out",
            &sb.path("run"),
        ],
    );
    failed_with(
        &out,
        "--validation-fraction 0.25: the validation split validates the search",
    );
    nothing_encoded(&out);
    assert!(!Path::new(&sb.path("run")).exists());
}

/// Without a validation split, --search holds out --validation-fraction of train.
#[test]
fn search_without_validation_holds_out_a_fraction() {
    let sb = Sandbox::new("search-holdout");
    let dir = sb.dir.join("only-train");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("data/tiny-files/train.jsonl"),
        dir.join("train.jsonl"),
    )
    .unwrap();
    let data = dir.join("train.jsonl").display().to_string();
    let run = sb.path("run");
    let out = sb.train(&[
        "--data",
        &data,
        "--labels",
        "neg,pos",
        "--batch-size",
        "8",
        "--epochs",
        "10",
        "--search",
        "--validation-fraction",
        "0.25",
        "--out",
        &run,
    ]);
    succeeded(&out);
    assert!(
        stderr(&out)
            .contains("no validation split: holding out 8 of 32 train rows (0.25, by --seed 0)"),
        "{}",
        stderr(&out)
    );
    let info = run_json(&run);
    assert_eq!(info["search"]["validation"], "held-out");
    assert_eq!(info["search"]["validation_fraction"], 0.25);
    assert_eq!(info["search"]["validation_rows"], 8);
}

/// A run that ends with its validation loss still falling by more than 1% over its last
/// 10% of epochs says so in one line. The tiny validation split is too small to fall
/// steadily, so the train split validates here.
#[test]
fn a_head_still_learning_suggests_search() {
    let sb = Sandbox::new("still-learning");
    let out = sb.train_tiny(
        10,
        &[
            "--validation-split",
            "train",
            "--log-every",
            "0",
            "--json",
            "--out",
            &sb.path("run"),
        ],
    );
    succeeded(&out);
    let m = metrics(&sb.path("run"));
    let (from, to) = (
        m[8]["val_loss"].as_f64().unwrap(),
        m[9]["val_loss"].as_f64().unwrap(),
    );
    assert!(
        (from - to) / from > 0.01,
        "the fixture's loss no longer falls: {from} -> {to}"
    );
    let hint = format!(
        "the head is still learning: validation loss {from:.4} -> {to:.4} ({:.1}% lower) over the last epoch; try --search, or a larger --lr",
        (from - to) / from * 100.0
    );
    assert!(stderr(&out).contains(&hint), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["still_learning"], true);
}

/// No encoder work was done: the model was not loaded, nothing was encoded.
fn nothing_encoded(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("encoded ") && !err.contains("loaded "),
        "the check came after loading or encoding:\n{err}"
    );
}

/// Two real processes into one folder: while one trains (holding run.lock), a second
/// `train --out` and a `--resume` of it each get one line saying the folder is in use
/// and by which process, and leave run.json as the first one wrote it.
#[test]
fn a_run_folder_has_one_writer() {
    let sb = Sandbox::new("one-writer");
    let run = sb.path("run");
    let model = fixtures().join("tiny/model");
    let mut first = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args([
            "train",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .args([
            "--data",
            &dsdict(),
            "--batch-size",
            "8",
            "--epochs",
            "100000000",
        ])
        .args(["--out", &run, "--log-every", "0"])
        .args(["--cache-dir", sb.feature_cache().to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run_json = Path::new(&run).join("run.json");
    let started = std::time::Instant::now();
    while !run_json.exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the first run never wrote run.json"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = std::fs::read(&run_json).unwrap();
    let second = sb.train_tiny(2, &["--out", &run, "--seed", "9"]);
    let resumed = sb.train_tiny(200_000_000, &["--resume", &run]);
    let first_running = first.try_wait().unwrap().is_none();
    let _ = first.kill();
    let _ = first.wait();
    assert!(first_running, "the first run ended before the check");
    // Named by its pid: a stopped (Ctrl-Z) or hung process holds the lock as long.
    let holder = format!(
        "the run folder is in use by another bertcls process (pid {})",
        first.id()
    );
    failed_with(&second, &holder);
    failed_with(&resumed, &holder);
    assert!(stderr(&second).contains(&format!("--out {run}")));
    nothing_encoded(&second);
    assert_eq!(std::fs::read(&run_json).unwrap(), before);
}

/// A train still encoding holds run.lock but has written no run.json yet (on the CPU the
/// features of a large split take minutes): a `--resume` of its folder then is refused as
/// in use, naming the process, not as "no run.json there ... start the run again with
/// --out", which would send the user to a second writer. The lock is held here by the
/// test process, as the encoding train holds it, and nothing in the folder is touched.
#[test]
fn resume_of_a_run_still_encoding_says_it_is_in_use() {
    let sb = Sandbox::new("resume-encoding");
    let run = sb.path("run");
    std::fs::create_dir_all(&run).unwrap();
    let lock_file = Path::new(&run).join("run.lock");
    let held = bertcls::fsio::try_lock(&lock_file).unwrap().unwrap();
    let before = std::fs::read(&lock_file).unwrap();
    let resumed = sb.train_tiny(2, &["--resume", &run]);
    failed_with(
        &resumed,
        &format!(
            "--resume {run}: the run folder is in use by another bertcls process (pid {})",
            std::process::id()
        ),
    );
    nothing_encoded(&resumed);
    assert_eq!(std::fs::read(&lock_file).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["run.lock"]);
    drop(held);
    // No process holds it now: the folder is what it is, one that never got its run.json.
    let resumed = sb.train_tiny(2, &["--resume", &run]);
    failed_with(&resumed, "no run.json there");
    assert_eq!(std::fs::read(&lock_file).unwrap(), before);
}

/// A run killed before its first epoch ended (run.json, no checkpoint) resumes from the
/// start and ends on the uninterrupted run's head, optimiser and metrics.
#[test]
fn resume_before_the_first_checkpoint_starts_over() {
    let sb = Sandbox::new("resume-empty");
    let (straight, killed) = (sb.path("straight"), sb.path("killed"));
    succeeded(&sb.train_tiny(3, &["--out", &straight]));
    succeeded(&sb.train_tiny(3, &["--out", &killed]));
    for entry in std::fs::read_dir(&killed).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "run.json" {
            std::fs::remove_file(path).unwrap();
        }
    }
    let resumed = sb.train_tiny(3, &["--resume", &killed]);
    succeeded(&resumed);
    assert!(
        stderr(&resumed).contains("no epoch was finished, starting from the first"),
        "{}",
        stderr(&resumed)
    );
    let last = |run: &str| load_head(&Path::new(run).join("last.safetensors"), None).unwrap();
    let (a, b) = (last(&straight), last(&killed));
    assert_eq!(a.head, b.head);
    assert_eq!(a.optim, b.optim);
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&killed)
    );
}

/// A run stopped while epoch 1 was being saved (killed, or the disk full), after
/// metrics.jsonl and head-epoch-1 but before best and last, resumes by redoing epoch 1:
/// it ends as an uninterrupted run, best.safetensors included, instead of being refused
/// as if finished epochs had been lost.
#[test]
fn resume_after_a_stop_while_epoch_1_was_saved_starts_over() {
    let sb = Sandbox::new("resume-epoch-1");
    let (straight, stopped) = (sb.path("straight"), sb.path("stopped"));
    succeeded(&sb.train_tiny(3, &["--out", &straight]));
    succeeded(&sb.train_tiny(1, &["--out", &stopped]));
    let dir = Path::new(&stopped);
    for name in ["best.safetensors", "last.safetensors"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    let resumed = sb.train_tiny(3, &["--resume", &stopped]);
    succeeded(&resumed);
    assert!(
        stderr(&resumed).contains("no epoch was finished, starting from the first"),
        "{}",
        stderr(&resumed)
    );
    for name in ["best", "last"] {
        let head = |run: &str| {
            load_head(&Path::new(run).join(format!("{name}.safetensors")), None).unwrap()
        };
        let (a, b) = (head(&straight), head(&stopped));
        assert_eq!((a.head, a.optim), (b.head, b.optim), "{name} differs");
    }
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&stopped)
    );
}

/// A last.safetensors that does not load said only to re-save it, which a resume cannot
/// do; the head-epoch checkpoint that holds the same state is named, and copying it
/// resumes the run.
#[test]
fn resume_with_a_damaged_last_checkpoint_names_the_copy_that_resumes() {
    let sb = Sandbox::new("resume-damaged-last");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(2, &["--out", &run]));
    let dir = Path::new(&run);
    let (last, epoch2) = (
        dir.join("last.safetensors"),
        dir.join("head-epoch-2.safetensors"),
    );
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..100]).unwrap();
    let out = sb.train_tiny(3, &["--resume", &run]);
    failed_with(
        &out,
        &format!(
            ", or copy {} (the same checkpoint) to it to resume after epoch 2",
            epoch2.display()
        ),
    );
    assert!(stderr(&out).contains(&format!("error: cannot resume {run}: {}: ", last.display())));
    std::fs::copy(&epoch2, &last).unwrap();
    succeeded(&sb.train_tiny(3, &["--resume", &run]));
}

/// A damaged metrics.jsonl line was named by its count among the non-blank lines, not
/// its line in the file, and with nothing to do about it.
#[test]
fn resume_with_a_damaged_metrics_line_names_that_line() {
    let sb = Sandbox::new("resume-damaged-metrics");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(2, &["--out", &run]));
    let metrics = Path::new(&run).join("metrics.jsonl");
    let good = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    std::fs::write(
        &metrics,
        format!("\n\n{}\ngarbage\n{}\n", lines[0], lines[1]),
    )
    .unwrap();
    failed_with(
        &sb.train_tiny(3, &["--resume", &run]),
        &format!(
            "{} line 4: not a metrics line (expected value at line 1 column 1): the file is damaged; restore it from a copy, or delete that line (that epoch's metrics are then lost)",
            metrics.display()
        ),
    );
}

/// A train --search stopped after its run.json (which records the hyper-parameters it
/// chose) but before search.json and the chosen head (killed, or the disk full) is not
/// resumed as a plain run from a fresh head under the search's record: --resume, and
/// the search run again into it, refuse it in one line saying to remove the folder and
/// search again, and change nothing.
#[test]
fn resume_of_a_search_stopped_before_its_head_is_refused() {
    let sb = Sandbox::new("resume-search");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(20, &["--search", "--out", &run]));
    let dir = Path::new(&run);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !["run.json", "run.lock"].contains(&path.file_name().unwrap().to_str().unwrap()) {
            std::fs::remove_file(path).unwrap();
        }
    }
    let out = sb.train(&["--resume", &run]);
    failed_with(
        &out,
        &format!("--resume {run}: its train --search stopped before saving the head it chose ({run}/last.safetensors is missing), and a search does not resume: remove {run} and run the train --search again"),
    );
    nothing_encoded(&out);
    // Run again as it was first run, the search is refused the same way: not sent to
    // --resume, which refuses it.
    let again = sb.train_tiny(20, &["--search", "--out", &run]);
    failed_with(
        &again,
        &format!("--out {run}: its train --search stopped before saving the head it chose ({run}/last.safetensors is missing), and a search does not resume: remove {run} and run the train --search again"),
    );
    nothing_encoded(&again);
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["run.json", "run.lock"]);
}

/// A temporary file a killed write left is removed when the run is resumed, and a run
/// leaves none of its own.
#[test]
fn resume_removes_stale_temporary_files() {
    let sb = Sandbox::new("stale-temp");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &run]));
    let temps = || -> Vec<String> {
        std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| bertcls::fsio::is_temp_name(n))
            .collect()
    };
    assert!(temps().is_empty(), "a run left {:?}", temps());
    let stale = Path::new(&run).join(".last.safetensors.bertcls-tmp-4194304");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let resumed = sb.train_tiny(2, &["--resume", &run]);
    succeeded(&resumed);
    assert!(stderr(&resumed).contains("removed 1 stale temporary file(s)"));
    assert!(!stale.exists());
    assert!(temps().is_empty());
}

/// Non-finite or out-of-range hyper-parameters are refused when parsed, naming the
/// flag; non-finite weights at load, naming the tensor; a loss that overflows stops
/// training with one line and writes no checkpoint; a NaN head is never loaded.
#[test]
fn non_finite_numbers_are_refused() {
    let sb = Sandbox::new("non-finite");
    let out = sb.path("run");
    for (flag, value) in [
        ("--lr", "NaN"),
        ("--lr", "-0.001"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--weight-decay", "-1"),
        ("--weight-decay", "NaN"),
    ] {
        let run = sb.train(&[
            "--data",
            &dsdict(),
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--out",
            &out,
            flag,
            value,
        ]);
        assert!(!run.status.success(), "{flag} {value} was accepted");
        let err = stderr(&run);
        assert!(
            err.starts_with(&format!("error: invalid value '{value}' for '{flag} ")),
            "{flag} {value}:\n{err}"
        );
        assert!(!Path::new(&out).exists());
    }

    // lr 1e38 overflows the head in its first step.
    let diverged = sb.train(&[
        "--data",
        &dsdict(),
        "--batch-size",
        "8",
        "--lr",
        "1e38",
        "--epochs",
        "2",
        "--out",
        &out,
    ]);
    failed_with(&diverged, "training stopped before saving");
    assert!(!Path::new(&out).join("last.safetensors").exists());
    assert!(!Path::new(&out).join("best.safetensors").exists());

    // A NaN in the weights is named at load.
    let model = sb.dir.join("nan-model");
    copy_tiny_model(&model);
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let name = "embeddings.word_embeddings.weight";
    let tensor = &header[name];
    assert_eq!(tensor["dtype"], "F32");
    let start = 8 + header_len + tensor["data_offsets"][0].as_u64().unwrap() as usize + 4 * 5;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, bytes).unwrap();
    let run = sb.train_model(
        &model,
        &[
            "--data",
            &dsdict(),
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--out",
            &sb.path("nan-run"),
        ],
    );
    failed_with(
        &run,
        &format!("tensor {name} holds a non-finite value (NaN) at index 5"),
    );

    // A head with a NaN is refused at load: test and predict never use one.
    let good = sb.path("good");
    succeeded(&sb.train_tiny(1, &["--out", &good]));
    let mut loaded = load_head(&Path::new(&good).join("best.safetensors"), None).unwrap();
    loaded.head.bias[1] = f32::NAN;
    let bad = sb.dir.join("nan-head.safetensors");
    bertcls::checkpoint::save_head(&bad, &loaded.head, None, &loaded.metadata).unwrap();
    let err = load_head(&bad, None).err().unwrap().to_string();
    assert!(
        err.contains("fc.bias holds a non-finite value (NaN)"),
        "{err}"
    );
}

/// Non-finite features are caught where they come in, not at the first step's NaN
/// loss (which blames --lr): a fresh encoding is refused naming the model folder, before
/// the run folder is kept or the cache written; a cache entry holding one (with a
/// checksum that matches: only a forged or foreign entry) is encoded again.
#[test]
fn non_finite_features_are_refused_where_they_come_in() {
    let sb = Sandbox::new("non-finite-features");
    // Position 0's embedding at 3e38 in every dimension: finite weights (the load
    // check passes them), but the embeddings' LayerNorm sums them to infinity.
    let model = sb.dir.join("huge-model");
    copy_tiny_model(&model);
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let tensor = &header["embeddings.position_embeddings.weight"];
    let start = 8 + header_len + tensor["data_offsets"][0].as_u64().unwrap() as usize;
    let width = tensor["shape"][1].as_u64().unwrap() as usize;
    for at in (start..start + 4 * width).step_by(4) {
        bytes[at..at + 4].copy_from_slice(&3e38f32.to_le_bytes());
    }
    std::fs::write(&weights, bytes).unwrap();
    let out = sb.path("run");
    let tiny = ["--data", &dsdict(), "--batch-size", "8", "--epochs", "1"];
    for extra in [&[][..], &["--no-cache"][..]] {
        let run = sb.train_model(&model, &[&tiny[..], &["--out", &out], extra].concat());
        failed_with(
            &run,
            &format!(
                "error: train: the encoder gave a non-finite feature (NaN) for row 0: the weights in {} are out of range or corrupt; check them, or fetch the model again",
                model.canonicalize().unwrap().display()
            ),
        );
        assert!(
            !Path::new(&out).exists(),
            "{extra:?}: the run folder was kept"
        );
        let stored = std::fs::read_dir(sb.feature_cache()).map_or(0, |d| d.count());
        assert_eq!(stored, 0, "{extra:?}: non-finite features were cached");
    }

    // A NaN in the train entry, its checksum recomputed so that only the NaN is wrong.
    let (a, b) = (sb.path("a"), sb.path("b"));
    succeeded(&sb.train_tiny(1, &["--out", &a]));
    let (entry, start) = cache_entry_of(&sb.feature_cache(), 32);
    let mut bytes = std::fs::read(&entry).unwrap();
    let old = hex(&Sha256::digest(&bytes[start..]));
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let new = hex(&Sha256::digest(&bytes[start..]));
    let header = String::from_utf8(bytes[8..start].to_vec()).unwrap();
    assert_eq!(header.matches(&old).count(), 1, "{header}");
    bytes[8..start].copy_from_slice(header.replace(&old, &new).as_bytes());
    std::fs::write(&entry, &bytes).unwrap();
    let second = sb.train_tiny(1, &["--out", &b]);
    succeeded(&second);
    let err = stderr(&second);
    let warning = format!(
        "warning: feature cache entry {} is unusable (row 0 holds a non-finite feature (NaN)); removing it and encoding afresh",
        entry.display()
    );
    assert!(err.contains(&warning), "{err}");
    assert!(err.contains("encoded train"), "{err}");
    assert_eq!(metrics_without_time(&a), metrics_without_time(&b));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--resume` compares every input of the features: a tokenizer that differs (same
/// weights) is refused, as are other weights and other data, before anything is encoded.
#[test]
fn resume_compares_the_feature_spec() {
    let sb = Sandbox::new("resume-spec");
    let model = sb.dir.join("model");
    copy_tiny_model(&model);
    let run = sb.path("run");
    let base = |extra: &[&str]| {
        let mut args = vec!["--data", &dsdict(), "--batch-size", "8", "--lr", "1e-2"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let train = |extra: &[&str]| {
        let args = base(extra);
        sb.train_model(&model, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    succeeded(&train(&["--epochs", "1", "--out", &run]));
    // Same vocabulary and weights, another tokenizer file: its fingerprint differs.
    let tokenizer = model.join("tokenizer.json");
    let mut text = std::fs::read_to_string(&tokenizer).unwrap();
    text.push('\n');
    std::fs::write(&tokenizer, text).unwrap();
    let out = train(&["--epochs", "2", "--resume", &run]);
    failed_with(&out, "tokenizer fingerprint (run: ");
    nothing_encoded(&out);

    let other = fixtures().join("tiny/model-f16-prefixed");
    let out = sb.train_model(
        &other,
        &[
            "--data",
            &dsdict(),
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--epochs",
            "2",
            "--resume",
            &run,
        ],
    );
    failed_with(&out, "model weights sha256 (run: ");
    nothing_encoded(&out);
}

/// Checks that need no encoder output fail before the model is loaded or a text
/// encoded.
#[test]
fn cheap_checks_come_before_encoding() {
    let sb = Sandbox::new("fail-fast");
    let file = sb.path("a-file");
    std::fs::write(&file, "x").unwrap();
    let cases: [(Vec<String>, &str); 6] = [
        (
            vec!["--out".into(), format!("{file}/run")],
            "a-file is a file, not a folder",
        ),
        (
            vec![
                "--out".into(),
                sb.path("r1"),
                "--max-length".into(),
                "600".into(),
            ],
            "--max-length 600: beyond the 512 positions",
        ),
        (
            vec![
                "--out".into(),
                sb.path("r2"),
                "--labels".into(),
                "only".into(),
            ],
            "label",
        ),
        (
            vec!["--resume".into(), sb.path("none")],
            "no run.json there",
        ),
        // Search-only flags without --search would change nothing.
        (
            vec![
                "--out".into(),
                sb.path("r4"),
                "--patience".into(),
                "2".into(),
            ],
            "--search",
        ),
        (
            vec![
                "--out".into(),
                sb.path("r5"),
                "--validation-fraction".into(),
                "0.5".into(),
            ],
            "--search",
        ),
    ];
    for (extra, needle) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = sb.train_tiny(1, &extra);
        failed_with(&out, needle);
        nothing_encoded(&out);
    }
    let out = sb.train(&[
        "--data",
        &dsdict(),
        "--batch-size",
        "33",
        "--out",
        &sb.path("r3"),
    ]);
    failed_with(&out, "fewer than --batch-size 33");
    nothing_encoded(&out);
    // --search tries its own grid of lr and weight decay: one given would be ignored.
    for (name, flag, value, grid) in [
        ("r6", "--lr", "1e-3", "1e-5 to 1e-1"),
        ("r7", "--weight-decay", "0.1", "0, 0.01 and 0.1"),
    ] {
        let out = sb.train(&[
            "--data",
            &dsdict(),
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--search",
            flag,
            value,
            "--out",
            &sb.path(name),
        ]);
        failed_with(
            &out,
            &format!("--search tries its own ({grid}) and keeps the best; drop {flag}"),
        );
        nothing_encoded(&out);
    }
    // Nor does a search log steps.
    let out = sb.train(&[
        "--data",
        &dsdict(),
        "--epochs",
        "1",
        "--search",
        "--log-every",
        "1",
        "--out",
        &sb.path("r8"),
    ]);
    failed_with(
        &out,
        "--log-every 1: --search prints one line a trial, not training steps; drop --log-every",
    );
    nothing_encoded(&out);
    for name in ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"] {
        assert!(
            !Path::new(&sb.path(name)).exists(),
            "{name} was left behind"
        );
    }

    // A read-only folder (root writes there anyway: then the case is skipped).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = sb.dir.join("read-only");
        std::fs::create_dir_all(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(locked.join("probe"), b"x").is_ok() {
            println!("SKIPPED: read-only --out: this user writes into read-only folders (root)");
        } else {
            let run = locked.join("run").display().to_string();
            let out = sb.train_tiny(1, &["--out", &run]);
            failed_with(&out, "cannot create the run folder");
            nothing_encoded(&out);
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // A resume on other data: refused before encoding.
    let run = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &run]));
    // The same rows in another order: same labels, other content.
    let text = std::fs::read_to_string(fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let reversed: Vec<&str> = text.lines().rev().collect();
    let other = sb.dir.join("reversed");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("train.jsonl"), reversed.join("\n")).unwrap();
    let data = other.join("train.jsonl").display().to_string();
    let out = sb.train(&[
        "--labels",
        "negative,positive",
        "--data",
        &data,
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--epochs",
        "2",
        "--resume",
        &run,
    ]);
    failed_with(&out, "train split content (run: ");
    nothing_encoded(&out);
}

/// Training data of one class: a warning in `train`, and `test` says so in its report
/// and its JSON.
#[test]
fn a_single_class_is_reported() {
    let sb = Sandbox::new("single-class");
    let text = std::fs::read_to_string(fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let negatives: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with("\"label\": 0}"))
        .collect();
    let dir = sb.dir.join("negative");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.jsonl"), negatives.join("\n")).unwrap();
    std::fs::write(dir.join("test.jsonl"), &text).unwrap();
    let data = dir.join("train.jsonl").display().to_string();
    let run = sb.path("run");
    let out = sb.train(&[
        "--data",
        &data,
        "--labels",
        "neg,pos",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--out",
        &run,
    ]);
    succeeded(&out);
    assert!(
        stderr(&out).contains(&format!(
            "warning: the train split has a single class (\"neg\", {} rows)",
            negatives.len()
        )),
        "{}",
        stderr(&out)
    );
    let test = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bertcls"));
        cmd.args(["test", "--run", &run, "--device", "cpu", "--split", "test"])
            .args(["--cache-dir", sb.feature_cache().to_str().unwrap()])
            .env("HF_HUB_OFFLINE", "1");
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let table = test(false);
    assert!(table.status.success(), "{}", stderr(&table));
    assert!(String::from_utf8_lossy(&table.stdout)
        .contains("warning: this head was trained on a single class (label 0)"));
    let json = test(true);
    assert!(json.status.success(), "{}", stderr(&json));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["trained_on_single_class"], true);
}

/// A label with no train rows (a gap in the ids, or a name `--labels` adds) gets its
/// warning, and the head still trains with an output for it.
#[test]
fn labels_absent_from_train_are_named() {
    let sb = Sandbox::new("absent-label");
    let data = fixtures().join("data/tiny-files/train.jsonl");
    let run = sb.path("run");
    let out = sb.train(&[
        "--data",
        data.to_str().unwrap(),
        "--labels",
        "neg,pos,neutral",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--out",
        &run,
    ]);
    succeeded(&out);
    assert!(
        stderr(&out).contains(
            "warning: the train split has no rows of label \"neutral\" (of 3 labels): the head cannot learn to predict them"
        ),
        "{}",
        stderr(&out)
    );
    let run_json: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.dir.join("run/run.json")).unwrap())
            .unwrap();
    assert_eq!(
        run_json["labels"],
        serde_json::json!(["neg", "pos", "neutral"])
    );
    let best = load_head(&sb.dir.join("run/best.safetensors"), None).unwrap();
    assert_eq!((best.head.num_labels, best.head.bias.len()), (3, 3));
}

/// `--device auto` without a usable GPU runs on the CPU and says so in one line, however
/// many steps need the device: the head's device, `--features-from`'s cache keys and
/// the encoder in train, the import and the encoder in a search.
#[test]
fn auto_device_prints_its_cpu_notice_once() {
    if bertcls::backend::cuda::check_device(0).is_ok() {
        println!("SKIPPED: auto picks this machine's GPU, so there is no CPU notice to count");
        return;
    }
    let sb = Sandbox::new("auto-notice");
    let features = sb.path("train.parquet");
    let model = fixtures().join("tiny/model");
    let encoded = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args([
            "encode",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .args(["--data", &dsdict(), "--split", "train", "--out", &features])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    succeeded(&encoded);
    let (data, from) = (dsdict(), ["--features-from", features.as_str()]);
    let common = ["--data", &data, "--batch-size", "8", "--epochs", "2"];
    let cases: [(&str, &[&str]); 3] = [
        ("plain", &[]),
        ("features-from", &from),
        ("search", &["--search", from[0], from[1]]),
    ];
    for (name, extra) in cases {
        let mut args = common.to_vec();
        let out_dir = sb.path(name);
        args.extend_from_slice(&["--out", &out_dir]);
        args.extend_from_slice(extra);
        let out = sb.train_on("auto", &model, &args);
        succeeded(&out);
        let err = stderr(&out);
        if !extra.is_empty() {
            assert!(
                err.contains("train: 32 cls features imported from 1 --features-from file "),
                "{name}: the import did not run:\n{err}"
            );
        }
        let notices = err
            .lines()
            .filter(|l| l.starts_with("note: running on the CPU ("))
            .count();
        assert_eq!(notices, 1, "{name}: the CPU notice {notices} times:\n{err}");
    }
}

/// `--resume DIR` without DIR/run.json (a train stopped before writing it, a path that
/// does not exist) is refused in one line naming it, before anything is loaded, with or
/// without other flags: not a fall-back to the default hub dataset.
#[test]
fn resume_without_run_json_is_refused_whatever_the_flags() {
    let sb = Sandbox::new("resume-no-json");
    let stopped = sb.path("stopped");
    std::fs::create_dir_all(&stopped).unwrap();
    std::fs::write(Path::new(&stopped).join("run.lock"), "").unwrap();
    for dir in [stopped, sb.path("absent")] {
        for extra in [&[][..], &["--epochs", "3", "--lr", "1e-2"]] {
            let mut args = vec!["--resume", dir.as_str()];
            args.extend_from_slice(extra);
            let out = sb.train(&args);
            failed_with(&out, &format!("--resume {dir}: no run.json there"));
            nothing_encoded(&out);
        }
    }
}

/// A run whose last.safetensors is gone while metrics.jsonl records finished epochs is
/// not started over (that would train and overwrite those epochs): it is refused in one
/// line naming the missing file and the way back, and nothing in the run changes.
#[test]
fn resume_without_last_checkpoint_after_finished_epochs_is_refused() {
    let sb = Sandbox::new("resume-no-last");
    let run = sb.path("run");
    succeeded(&sb.train_tiny(2, &["--out", &run]));
    let dir = Path::new(&run);
    std::fs::remove_file(dir.join("last.safetensors")).unwrap();
    let before = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let out = sb.train_tiny(3, &["--resume", &run]);
    failed_with(&out, &format!("{run}/last.safetensors is missing"));
    failed_with(&out, "records 2 finished epoch(s)");
    failed_with(&out, &format!("copy {run}/head-epoch-2.safetensors"));
    std::fs::remove_file(dir.join("head-epoch-2.safetensors")).unwrap();
    let out = sb.train_tiny(3, &["--resume", &run]);
    failed_with(&out, &format!("remove {run}/metrics.jsonl"));
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), before);
    assert!(!dir.join("last.safetensors").exists());
}

/// Label names that cannot name a head's classes (two alike, an empty one, one with a
/// tab or line break, which split predict's tab-separated lines) are refused in one line
/// naming where they came from: --labels, or a run.json that says so.
#[test]
fn label_names_that_cannot_name_classes_are_refused() {
    let sb = Sandbox::new("label-names");
    let tsv = fixtures().join("data/tiny-files/train.tsv");
    for (labels, needle) in [
        ("a,a", "--labels: labels 0 and 1 are both named \"a\""),
        // Spaces around a name are not part of it: " a" would print like "a".
        (" a,a ", "--labels: labels 0 and 1 are both named \"a\""),
        ("a,", "--labels: label 1 has an empty name"),
        ("a\tb,c", "--labels: label 0 (\"a\\tb\") holds a tab"),
        (
            "a\nb,c",
            "--labels: label 0 (\"a\\nb\") holds a tab, line break",
        ),
    ] {
        let out = sb.train(&[
            "--data",
            tsv.to_str().unwrap(),
            "--labels",
            labels,
            "--out",
            &sb.path("never"),
        ]);
        failed_with(&out, needle);
        nothing_encoded(&out);
    }
    assert!(!Path::new(&sb.path("never")).exists());

    let spaced = sb.path("spaced");
    succeeded(&sb.train(&[
        "--data",
        tsv.to_str().unwrap(),
        "--labels",
        "neg, pos",
        "--epochs",
        "1",
        "--out",
        &spaced,
    ]));
    assert_eq!(
        run_json(&spaced)["labels"],
        serde_json::json!(["neg", "pos"])
    );

    let run = sb.path("run");
    succeeded(&sb.train_tiny(1, &["--out", &run]));
    let json_path = Path::new(&run).join("run.json");
    let mut json = run_json(&run);
    json["labels"] = serde_json::json!(["negative", "negative"]);
    std::fs::write(&json_path, json.to_string()).unwrap();
    let needle = format!(
        "{}: its labels: labels 0 and 1 are both named \"negative\"",
        json_path.display()
    );
    failed_with(&sb.train_tiny(2, &["--resume", &run]), &needle);
    let predicted = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["predict", "--run", &run, "--device", "cpu", "房间很干净"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    failed_with(&predicted, &needle);
}

/// A write into the feature cache that was killed (kill -9, SIGXFSZ) leaves its
/// temporary, as large as the entry; the next write into the cache removes the ones no
/// live process holds, saying so, and keeps another process's write in progress.
#[test]
fn abandoned_cache_temporaries_are_removed() {
    let sb = Sandbox::new("cache-temporaries");
    let cache = sb.feature_cache();
    std::fs::create_dir_all(&cache).unwrap();
    let (stale, live, other) = (
        cache.join(".0123.safetensors.bertcls-tmp-1"),
        cache.join(".4567.safetensors.bertcls-tmp-2"),
        cache.join(".notes"),
    );
    for path in [&stale, &live, &other] {
        std::fs::write(path, b"partial").unwrap();
    }
    let held = std::fs::File::open(&live).unwrap();
    fs4::FileExt::try_lock(&held).unwrap();
    let out = sb.train_tiny(1, &["--out", &sb.path("run")]);
    succeeded(&out);
    let needle = format!(
        "removed 1 temporary file(s) of killed writes from the feature cache {}",
        cache.display()
    );
    assert!(stderr(&out).contains(&needle), "{}", stderr(&out));
    assert!(!stale.exists());
    assert!(live.exists() && other.exists());
}

/// A feature cache that cannot be written ($BERTCLS_CACHE below a file here, which
/// fails for root too, as a read-only folder does for other users) costs one warning
/// line naming it and the ways around it, not the run: training goes on and saves.
#[test]
fn an_unwritable_feature_cache_is_a_warning() {
    let sb = Sandbox::new("cache-unwritable");
    let blocker = sb.dir.join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let cache = blocker.join("cache");
    let run = sb.path("run");
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args([
            "train",
            "--model",
            fixtures().join("tiny/model").to_str().unwrap(),
        ])
        .args(["--data", &dsdict(), "--batch-size", "8", "--epochs", "1"])
        .args(["--device", "cpu", "--out", &run])
        .env("HF_HUB_OFFLINE", "1")
        .env("BERTCLS_CACHE", &cache)
        .output()
        .unwrap();
    succeeded(&out);
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    let folder = cache.join("features").display().to_string();
    assert!(
        warnings[0].contains(&format!("cannot store features in the cache {folder} ")),
        "{err}"
    );
    assert!(
        warnings[0].contains("--cache-dir") && warnings[0].contains("BERTCLS_CACHE"),
        "{err}"
    );
    assert!(Path::new(&run).join("best.safetensors").is_file());
}

/// A validation split of one row has no temperature that minimises its loss: with two
/// labels the row is either right (the loss falls without end as T goes to 0) or wrong
/// (it falls as T grows), so the fit stops at a bound, 0.01 or 100. train says so
/// instead of reporting the bound as a fitted temperature.
#[test]
fn a_temperature_at_its_bound_is_named_as_such() {
    let sb = Sandbox::new("temperature-bound");
    let data = sb.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let files = fixtures().join("data/tiny-files");
    std::fs::copy(files.join("train.jsonl"), data.join("train.jsonl")).unwrap();
    let validation = std::fs::read_to_string(files.join("validation.jsonl")).unwrap();
    let first = validation.lines().next().unwrap();
    std::fs::write(data.join("validation.jsonl"), format!("{first}\n")).unwrap();
    let out = sb.train(&[
        "--data",
        data.join("train.jsonl").to_str().unwrap(),
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--lr",
        "1e-2",
        "--log-every",
        "0",
        "--out",
        &sb.path("run"),
    ]);
    succeeded(&out);
    let err = stderr(&out);
    let head = load_head(&sb.dir.join("run/best.safetensors"), None).unwrap();
    let t: f64 = head.metadata["temperature"].parse().unwrap();
    assert!(t == 0.01 || t == 100.0, "one row fitted T = {t}");
    assert!(
        err.contains(&format!(
            "warning: no temperature minimises the validation loss: T stopped at its bound {t}, as "
        )),
        "{err}"
    );
}

/// `--search` without a validation split holds out rows by the seed alone, so the one
/// row of a rare class can go to validation: the trials then train without that class,
/// which train must say (and `--class-weights balanced` must not blame the train split,
/// which has the row).
#[test]
fn a_hold_out_that_takes_a_whole_class_is_named() {
    let sb = Sandbox::new("held-out-class");
    let data = sb.dir.join("one-rare.jsonl");
    let train = std::fs::read_to_string(fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let rows = train.lines().count();
    std::fs::write(
        &data,
        format!("{train}{{\"text\": \"很一般\", \"label\": 2}}\n"),
    )
    .unwrap();
    // The first seed whose hold-out takes the last row, the rare one.
    let seed = (0u64..)
        .find(|&s| {
            bertcls::train::search::hold_out(rows + 1, 0.1, s)
                .1
                .contains(&rows)
        })
        .unwrap()
        .to_string();
    let args = |extra: &'static str| {
        let mut a = vec![
            "--search",
            "--data",
            data.to_str().unwrap(),
            "--labels",
            "neg,pos,meh",
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--log-every",
            "0",
            "--seed",
            &seed,
        ];
        a.extend(extra.split_whitespace());
        a
    };
    let out = sb.train(&[&args("")[..], &["--out", &sb.path("run")]].concat());
    succeeded(&out);
    assert!(
        stderr(&out).contains("warning: holding out validation rows took every train row of label \"meh\" (1 row): the trials cannot learn it"),
        "{}",
        stderr(&out)
    );
    let out = sb.train(
        &[
            &args("--class-weights balanced")[..],
            &["--out", &sb.path("w")],
        ]
        .concat(),
    );
    failed_with(
        &out,
        "--class-weights balanced: label 2 has no training example, so it has no balanced weight in the train rows left after holding out validation rows",
    );
}

/// Rows that lost their text still train: each is [CLS] [SEP] alone under its label,
/// which nothing downstream shows, so train names them.
#[test]
fn blank_texts_are_named() {
    let sb = Sandbox::new("blank-texts");
    let data = sb.dir.join("train.jsonl");
    let train = std::fs::read_to_string(fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let mut lines: Vec<String> = train.lines().map(String::from).collect();
    lines[1] = r#"{"text": "", "label": 0}"#.into();
    lines[4] = r#"{"text": " \t ", "label": 1}"#.into();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = sb.train(&[
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--out",
        &sb.path("run"),
    ]);
    succeeded(&out);
    assert!(
        stderr(&out).contains("warning: the train split has 2 rows whose text is empty or only whitespace (rows 2, 5): each is encoded as [CLS] [SEP] alone and keeps its label; drop or fill them"),
        "{}",
        stderr(&out)
    );
}

/// An empty validation.jsonl beside train.jsonl is a validation split with no rows, not
/// a missing one: train names the file, for plain runs and the search's hold-out alike.
#[test]
fn an_empty_validation_file_is_named() {
    let sb = Sandbox::new("empty-validation");
    let data = sb.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        fixtures().join("data/tiny-files/train.jsonl"),
        data.join("train.jsonl"),
    )
    .unwrap();
    std::fs::write(data.join("validation.jsonl"), "").unwrap();
    let train = data.join("train.jsonl");
    let common = [
        "--data",
        train.to_str().unwrap(),
        "--batch-size",
        "8",
        "--epochs",
        "1",
    ];
    let named = format!(
        "the validation split ({}) has no rows: ",
        data.join("validation.jsonl").display()
    );
    let out = sb.train(&[&common[..], &["--out", &sb.path("run")]].concat());
    succeeded(&out);
    assert!(
        stderr(&out).contains(&format!(
            "{named}training without validation, best.safetensors is the last epoch"
        )),
        "{}",
        stderr(&out)
    );
    let out = sb.train(&[&common[..], &["--search", "--out", &sb.path("search")]].concat());
    succeeded(&out);
    assert!(
        stderr(&out).contains(&format!("{named}holding out 3 of 32 train rows")),
        "{}",
        stderr(&out)
    );
}

/// The fixture's ClassLabel names its ids negative, positive; --labels with other names
/// (or the same in another order) was dropped without a word and the run labelled by the
/// data, so it is refused, before anything is encoded; the same names pass.
#[test]
fn labels_that_contradict_the_datas_class_label_are_refused() {
    let sb = Sandbox::new("classlabel-flag");
    let data = dsdict();
    for flag in ["positive,negative", "bad,good"] {
        let out = sb.train(&[
            "--data",
            &data,
            "--labels",
            flag,
            "--out",
            &sb.path("never"),
        ]);
        failed_with(
            &out,
            &format!("--labels {flag}: {data} names its labels negative,positive in its ClassLabel, which train uses; drop --labels, or give those names in that order"),
        );
        nothing_encoded(&out);
    }
    assert!(!Path::new(&sb.path("never")).exists());
    let run = sb.path("run");
    let out = sb.train_tiny(1, &["--labels", "negative,positive", "--out", &run]);
    succeeded(&out);
    assert_eq!(
        run_json(&run)["labels"],
        serde_json::json!(["negative", "positive"])
    );
}

/// A text labelled two ways in train, and validation rows copied from train, fail
/// nothing but mislead: train names both.
#[test]
fn conflicting_and_leaked_duplicates_are_named() {
    let sb = Sandbox::new("duplicates");
    let data = sb.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let files = fixtures().join("data/tiny-files");
    let train = std::fs::read_to_string(files.join("train.jsonl")).unwrap();
    let first: Value = serde_json::from_str(train.lines().next().unwrap()).unwrap();
    let flipped =
        serde_json::json!({"text": first["text"], "label": 1 - first["label"].as_i64().unwrap()});
    // Twice: a text three times under two labels is still one text labelled two ways.
    std::fs::write(
        data.join("train.jsonl"),
        format!("{train}{flipped}\n{flipped}\n"),
    )
    .unwrap();
    let validation = std::fs::read_to_string(files.join("validation.jsonl")).unwrap();
    let copied: Vec<&str> = train.lines().skip(1).take(2).collect();
    std::fs::write(
        data.join("validation.jsonl"),
        format!("{validation}{}\n", copied.join("\n")),
    )
    .unwrap();
    let rows = validation.lines().count() + 2;
    let names = ["negative", "positive"];
    let (a, b) = (
        first["label"].as_u64().unwrap() as usize,
        1 - first["label"].as_u64().unwrap() as usize,
    );
    let out = sb.train(&[
        "--data",
        data.join("train.jsonl").to_str().unwrap(),
        "--labels",
        "negative,positive",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--out",
        &sb.path("run"),
    ]);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("warning: the train split labels 1 repeated text two ways (first: rows 1 and 33, labels {:?} and {:?}): the head cannot fit both", names[a], names[b])),
        "{err}"
    );
    assert!(
        err.contains(&format!("warning: 2 of the {rows} validation split rows have a text that is also in the train split")),
        "{err}"
    );
}

/// A checkpoint copied into a run folder from another run is refused by the commands
/// that read the run and by a resume, naming the setting that differs: a head of mean features where
/// run.json says [CLS] has the same width, and was fed [CLS] features without a word. The
/// same file given with --head is read with its own settings.
#[test]
fn a_checkpoint_from_another_run_is_refused() {
    let sb = Sandbox::new("foreign-checkpoint");
    let (mean, cls) = (sb.path("mean"), sb.path("cls"));
    succeeded(&sb.train_tiny(1, &["--pooling", "mean", "--out", &mean]));
    succeeded(&sb.train_tiny(1, &["--out", &cls]));
    let foreign = Path::new(&cls).join("best.safetensors");
    std::fs::copy(Path::new(&mean).join("best.safetensors"), &foreign).unwrap();
    let want = format!(
        "error: {} records pooling mean, but {} records cls: the two are not of one run",
        foreign.display(),
        Path::new(&cls).join("run.json").display()
    );
    for args in [
        vec!["predict", "--run", &cls, "酒店很好"],
        vec!["test", "--run", &cls],
    ] {
        failed_with(&bertcls_in(&sb, &args), &want);
    }
    let head = foreign.to_str().unwrap();
    succeeded(&bertcls_in(&sb, &["predict", "--head", head, "酒店很好"]));

    // A resume would train the copied head on the run's features.
    let last = Path::new(&cls).join("last.safetensors");
    std::fs::copy(Path::new(&mean).join("last.safetensors"), &last).unwrap();
    failed_with(
        &sb.train(&["--resume", &cls, "--epochs", "2"]),
        &format!(
            "error: cannot resume {cls}: {} records pooling mean, but {} records cls: the two are not of one run",
            last.display(),
            Path::new(&cls).join("run.json").display()
        ),
    );
}

/// `bertcls` with `args` on the CPU, offline, caching under the sandbox.
fn bertcls_in(sb: &Sandbox, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(args)
        .args(["--device", "cpu"])
        .env("HF_HUB_OFFLINE", "1")
        .env("BERTCLS_CACHE", sb.dir.join("bertcls-cache"))
        .output()
        .unwrap()
}

/// The tiny data's splits as CSV files in `dir`, each label id written as its name.
fn write_named_csv(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for split in ["train", "validation", "test"] {
        let jsonl = fixtures().join(format!("data/tiny-files/{split}.jsonl"));
        let mut csv = String::from("text,label\n");
        for line in std::fs::read_to_string(jsonl).unwrap().lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            let name = ["negative", "positive"][row["label"].as_u64().unwrap() as usize];
            let text = row["text"].as_str().unwrap().replace('"', "\"\"");
            csv.push_str(&format!("\"{text}\",{name}\n"));
        }
        std::fs::write(dir.join(format!("{split}.csv")), csv).unwrap();
    }
}

/// The accuracy line a bulk predict prints.
fn accuracy_line(out: &Output) -> String {
    let err = stderr(out);
    let line = err.lines().find(|l| l.starts_with("accuracy "));
    line.unwrap_or_else(|| panic!("no accuracy line:\n{err}"))
        .to_string()
}

/// Labels given by name, as CSV users write them: train numbers the names in their
/// sorted order (the first row's "positive" is id 1) and records them; test and bulk
/// predict score them as they score the same rows given by id; predict prints them; a
/// name the run lacks is refused at its row, and a text column read as the labels by
/// its many values.
#[test]
fn labels_given_by_name_go_through_train_test_and_predict() {
    let sb = Sandbox::new("named-labels");
    let named = sb.dir.join("named");
    write_named_csv(&named);
    let train = named.join("train.csv").display().to_string();
    let run = sb.path("run");
    let tiny = ["--batch-size", "8", "--epochs", "1"];
    succeeded(&sb.train(&[&["--data", &train, "--out", &run][..], &tiny].concat()));
    assert_eq!(
        run_json(&run)["labels"],
        serde_json::json!(["negative", "positive"])
    );

    let ids = fixtures().join("data/tiny-files/test.jsonl");
    let named_test = named.join("test.csv");
    let report = |data: &Path| -> Value {
        let out = bertcls_in(
            &sb,
            &[
                "test",
                "--run",
                &run,
                "--data",
                data.to_str().unwrap(),
                "--json",
            ],
        );
        succeeded(&out);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["report"].clone()
    };
    let by_name = report(&named_test);
    assert_eq!(
        by_name["labels"],
        serde_json::json!(["negative", "positive"])
    );
    assert_eq!(by_name, report(&ids));

    let out = bertcls_in(&sb, &["predict", "--run", &run, "酒店很好"]);
    succeeded(&out);
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with("negative\t") || line.starts_with("positive\t"),
        "{line}"
    );
    let bulk = |data: &Path, out: &str| {
        let out = sb.path(out);
        bertcls_in(
            &sb,
            &[
                "predict",
                "--run",
                &run,
                "--data",
                data.to_str().unwrap(),
                "--out",
                &out,
            ],
        )
    };
    let by_name = bulk(&named_test, "named.jsonl");
    succeeded(&by_name);
    assert!(accuracy_line(&by_name).ends_with("/8 labelled rows)"));
    assert_eq!(
        accuracy_line(&by_name),
        accuracy_line(&bulk(&ids, "ids.jsonl"))
    );

    let bad = sb.dir.join("bad");
    write_named_csv(&bad);
    let test_csv = std::fs::read_to_string(bad.join("test.csv")).unwrap();
    let lines: Vec<&str> = test_csv.lines().collect();
    let third = lines[3]
        .replace("negative", "neutral")
        .replace("positive", "neutral");
    let changed = [&lines[..3], &[third.as_str()], &lines[4..]]
        .concat()
        .join("\n");
    std::fs::write(bad.join("test.csv"), changed).unwrap();
    let unknown =
        "test.csv row 3: label \"neutral\" is not one of the head's labels (negative, positive)";
    let bad_test = bad.join("test.csv");
    failed_with(
        &bertcls_in(
            &sb,
            &["test", "--run", &run, "--data", bad_test.to_str().unwrap()],
        ),
        unknown,
    );
    failed_with(&bulk(&bad_test, "bad.jsonl"), unknown);
    failed_with(
        &bertcls_in(
            &sb,
            &[
                "predict",
                "--run",
                &run,
                "--labels",
                "positive,negative",
                "x",
            ],
        ),
        "are negative,positive",
    );

    let swapped_run = sb.path("swapped");
    let swapped = [
        &[
            "--data",
            &train,
            "--text-column",
            "label",
            "--label-column",
            "text",
        ][..],
        &["--out", &swapped_run],
        &tiny,
    ]
    .concat();
    failed_with(
        &sb.train(&swapped),
        "label column \"text\" holds 40 distinct values in 40 rows, too many to be classes: are --label-column and --text-column right?",
    );
    let ordered = sb.path("ordered");
    let flagged = [
        &[
            "--data",
            &train,
            "--labels",
            "positive,negative",
            "--out",
            &ordered,
        ][..],
        &tiny,
    ]
    .concat();
    succeeded(&sb.train(&flagged));
    assert_eq!(
        run_json(&ordered)["labels"],
        serde_json::json!(["positive", "negative"])
    );
}

/// `train --search` without a validation split holds rows of train out: a train split of
/// one row panicked in `hold_out` (`clamp(1, 0)`: "min > max").
#[test]
fn search_on_one_train_row_without_validation_is_refused() {
    let sb = Sandbox::new("search-one-row");
    let data = sb.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows = std::fs::read_to_string(fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let first = rows.lines().next().unwrap();
    std::fs::write(data.join("train.jsonl"), format!("{first}\n")).unwrap();
    let data = data.to_str().unwrap().to_string();
    let args = [
        "--data",
        &data,
        "--labels",
        "a,b",
        "--batch-size",
        "1",
        "--search",
    ];
    let out = sb.train(&[&args[..], &["--out", &sb.path("run")]].concat());
    failed_with(
        &out,
        "--search: train split has 1 row and no validation split, so no row can be held out",
    );
}

/// A name only the validation split gives (a misspelt label there) becomes a class with no
/// train rows: the warning names that split and its row, not a gap in the ids.
#[test]
fn a_name_only_validation_gives_is_traced_to_its_row() {
    let sb = Sandbox::new("validation-only-name");
    let named = sb.dir.join("named");
    write_named_csv(&named);
    let validation = std::fs::read_to_string(named.join("validation.csv")).unwrap();
    let mut lines: Vec<String> = validation.lines().map(str::to_string).collect();
    lines[2] = lines[2]
        .replace(",negative", ",neutral")
        .replace(",positive", ",neutral");
    std::fs::write(named.join("validation.csv"), lines.join("\n") + "\n").unwrap();
    let train = named.join("train.csv").display().to_string();
    let run = sb.path("run");
    let out = sb.train(&[
        "--data",
        &train,
        "--out",
        &run,
        "--batch-size",
        "8",
        "--epochs",
        "1",
    ]);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: the train split has no rows of label \"neutral\" (of 3 labels): the head cannot learn to predict them; the validation split gives \"neutral\" at row 2"
        ),
        "{err}"
    );
    assert!(!err.contains("without gaps"), "{err}");
}

/// The feature bytes of every entry in a feature cache folder, by file name.
fn cached_features(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, tensors.tensor("cls").unwrap().data().to_vec())
        })
        .collect()
}

/// A search over several poolings encodes each split once: the widest forward, each
/// pooling's features ([CLS] too, on the CPU) taken from it and cached, the very floats
/// each one's own training run encodes and caches.
#[test]
fn a_search_over_poolings_shares_one_forward() {
    let sb = Sandbox::new("shared-forward");
    let out = sb.train_tiny(
        2,
        &[
            "--search",
            "--pooling",
            "cls,mean,cls+mean-last2",
            "--out",
            &sb.path("s"),
        ],
    );
    succeeded(&out);
    let err = stderr(&out);
    // One forward for all three: on the CPU [CLS]'s own last-layer path gives the whole
    // layer's [CLS] rows, so `cls` is taken from the shared forward too.
    assert_eq!(err.matches("encoded train:").count(), 1, "{err}");
    assert_eq!(err.matches("encoded validation:").count(), 1, "{err}");
    assert_eq!(
        err.matches("features from the shared forward").count(),
        6,
        "{err}"
    );
    assert_cached_as_own_forwards(&sb, &["cls", "mean", "cls+mean-last2"]);
}

/// Without a cache a search over poolings shares one forward too, and picks the head a
/// cached search picks: the same floats.
#[test]
fn a_search_without_a_cache_shares_one_forward() {
    let sb = Sandbox::new("shared-forward-no-cache");
    let search = |out: &str, cache: &[&'static str]| {
        let args = [&["--search", "--pooling", "cls,mean", "--out", out], cache].concat();
        let out = sb.train_tiny(2, &args);
        succeeded(&out);
        stderr(&out)
    };
    let (uncached, cached) = (sb.path("uncached"), sb.path("cached"));
    let err = search(&uncached, &["--no-cache"]);
    assert_eq!(err.matches("encoded train:").count(), 1, "{err}");
    assert_eq!(err.matches("encoded validation:").count(), 1, "{err}");
    assert_eq!(
        err.matches("features from the shared forward").count(),
        4,
        "{err}"
    );
    assert!(!sb.feature_cache().exists());
    search(&cached, &[]);
    let best = |run: &str| std::fs::read(Path::new(run).join("best.safetensors")).unwrap();
    assert_eq!(best(&uncached), best(&cached));
}

/// With `--long chunk` a search over poolings shares one forward of every window, and
/// caches what each pooling's own run caches; a pooling whose truncated features are
/// cached is left to its own path, which encodes only the long texts' windows.
#[test]
fn a_chunked_search_over_poolings_shares_one_forward() {
    let sb = Sandbox::new("shared-forward-chunk");
    // Windows of 12 tokens: most of the fixture's texts (about 24 tokens) have several.
    let chunk = ["--long", "chunk", "--stride", "4", "--max-length", "12"];
    let search = |out: &str, long: &[&str]| {
        let args = [&["--search", "--pooling", "cls,mean", "--out", out], long].concat();
        let out = sb.train_tiny(2, &args);
        succeeded(&out);
        stderr(&out)
    };
    let err = search(&sb.path("chunked"), &chunk);
    assert_eq!(err.matches("encoded train:").count(), 1, "{err}");
    assert_eq!(
        err.matches("features from the shared forward").count(),
        4,
        "{err}"
    );
    assert_cached_as_own_forwards_with(&sb, &["cls", "mean"], &chunk);

    let again = Sandbox::new("shared-forward-chunk-reuse");
    let truncate = ["--max-length", "12"];
    succeeded(
        &again.train_tiny(
            2,
            &[
                &[
                    "--search",
                    "--pooling",
                    "cls,mean",
                    "--out",
                    &again.path("t"),
                ],
                &truncate[..],
            ]
            .concat(),
        ),
    );
    let out = again.train_tiny(
        2,
        &[
            &[
                "--search",
                "--pooling",
                "cls,mean",
                "--out",
                &again.path("c"),
            ],
            &chunk[..],
        ]
        .concat(),
    );
    succeeded(&out);
    let err = stderr(&out);
    assert!(!err.contains("shared forward"), "{err}");
    assert_eq!(
        err.matches("features from the truncate cache entry")
            .count(),
        4,
        "{err}"
    );
}

/// `sb`'s feature cache holds, byte for byte, the entries that runs of each of
/// `poolings` alone write (train and validation of each).
fn assert_cached_as_own_forwards(sb: &Sandbox, poolings: &[&str]) {
    assert_cached_as_own_forwards_with(sb, poolings, &[]);
}

/// [`assert_cached_as_own_forwards`], each run alone also given `extra`.
fn assert_cached_as_own_forwards_with(sb: &Sandbox, poolings: &[&str], extra: &[&str]) {
    let name = sb.dir.file_name().unwrap().to_string_lossy();
    let alone = Sandbox::new(&format!("{name}-alone"));
    for pooling in poolings {
        let run = alone.path(pooling);
        let args = [&["--pooling", pooling, "--out", &run], extra].concat();
        succeeded(&alone.train_tiny(1, &args));
    }
    let (shared, own) = (
        cached_features(&sb.feature_cache()),
        cached_features(&alone.feature_cache()),
    );
    assert_eq!(own.len(), 2 * poolings.len(), "train and validation each");
    assert_eq!(shared, own);
}

/// A shared forward whose widest features do not fit in memory (a cap stands in for a
/// machine's memory: 8,192 bytes hold the 32 train rows' mean-last2, not their
/// cls+mean-last2) is given up for that split with a line saying so, not failed with
/// the name of a pooling the user never asked for: each pooling is encoded on its own,
/// to the same features.
#[test]
fn a_shared_forward_too_wide_for_memory_encodes_each_pooling_alone() {
    let sb = Sandbox::new("shared-forward-memory");
    let args = [
        "--data",
        &dsdict(),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--search",
        "--pooling",
        "mean,mean-last2",
        "--out",
        &sb.path("s"),
    ];
    let model = fixtures().join("tiny/model");
    let cap = [("BERTCLS_TEST_FEATURE_BYTES", "8192")];
    let out = sb.train_on_env("cpu", &model, &args, &cap);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains("train: one forward for 2 poolings would hold their cls+mean-last2 features (0 MiB), more than memory allows: each pooling is encoded on its own"),
        "{err}"
    );
    assert!(!err.contains("validation: one forward"), "{err}");
    assert_eq!(err.matches("encoded train:").count(), 2, "{err}");
    assert_eq!(err.matches("encoded validation:").count(), 1, "{err}");
    assert_eq!(
        err.matches("features from the shared forward").count(),
        2,
        "{err}"
    );
    assert_cached_as_own_forwards(&sb, &["mean", "mean-last2"]);
}

/// A pooling of more layers than the model has is refused before anything is encoded or
/// sized: a search's later poolings too (they used to fail at their own forward, after
/// the earlier poolings' encoding, with nothing to do about it), and an N so large that
/// the head sized by it aborted the process allocating it.
#[test]
fn poolings_of_more_layers_than_the_model_has_are_refused_first() {
    let sb = Sandbox::new("pooling-layers");
    for (i, extra) in [
        &["--search", "--pooling", "cls,mean-last3"][..],
        &["--pooling", "mean-last99999999999"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let run = sb.path(&format!("r{i}"));
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--out", &run]);
        let out = sb.train_tiny(1, &args);
        failed_with(&out, "has 2 layers; pool at most that many");
        nothing_encoded(&out);
        assert!(!Path::new(&run).exists(), "{run} was left behind");
    }
}

/// A pooling named twice in a search's list is searched once, wherever the repeat is.
#[test]
fn a_pooling_repeated_in_a_search_list_is_searched_once() {
    let sb = Sandbox::new("pooling-repeats");
    let run = sb.path("s");
    let out = sb.train_tiny(
        1,
        &[
            "--search",
            "--pooling",
            "mean,cls,mean-last02,mean,mean-last2",
            "--out",
            &run,
        ],
    );
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains(
            "searching 81 trials (lr 9 values, weight decay 3 values, pooling mean,cls,mean-last2)"
        ),
        "{err}"
    );
    let trials: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&run).join("search.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(trials.as_array().map(Vec::len), Some(81), "{trials}");
}
