//! Bulk `predict --data` / `encode --data` as a user runs them, on the tiny fixture model
//! and datasets: every --data form against the texts' own predictions and features,
//! resume after kills at several points, `--shard` + `merge` against one process, and
//! the refusal of parts that do not make one job.

mod common;

use common::{bertcls_env as bertcls, dir_with_tiny_head, merge, ok, write_tiny_head, TempDir};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

/// The tiny encoder packs texts into batches by length; the same text in another batch
/// agrees to summation order, so probabilities and features are compared to 1e-5.
const TOL: f64 = 1e-5;

fn data() -> PathBuf {
    common::fixtures().join("data")
}

fn model_dir() -> PathBuf {
    common::fixtures().join("tiny/model")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "bertcls succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "{stderr}");
    last
}

/// The texts of a tiny split in order, from its TSV copy.
fn split_texts(split: &str) -> Vec<String> {
    std::fs::read_to_string(data().join(format!("tiny-files/{split}.tsv")))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_once('\t').unwrap().1.to_string())
        .collect()
}

/// The `.bulk.json` manifest of the bulk output `out`, parsed.
fn manifest_of(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(format!("{}.bulk.json", s(out))).unwrap()).unwrap()
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Interactive-free `predict --json` of the texts as arguments: the reference.
fn reference_predictions(head: &Path, texts: &[String]) -> Vec<Value> {
    let mut args = vec!["predict", "--head", s(head), "--json"];
    args.extend(texts.iter().map(String::as_str));
    let out = ok(bertcls(&args, &[]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn reference_features(texts: &[String]) -> Vec<Vec<f64>> {
    let model = model_dir();
    let mut args = vec!["encode", "--model", s(&model), "--json"];
    args.extend(texts.iter().map(String::as_str));
    let out = ok(bertcls(&args, &[]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            floats(&v["cls"])
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The closing "time: encoding 0.01s (40%), ... of 0.03s" line: every stage once, and
/// the stages' seconds within the wall time they are shares of (each is rounded to
/// 0.01 s, so within 0.03 of it).
fn assert_time_line(stderr: &str) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("time: "))
        .unwrap_or_else(|| panic!("no time line: {stderr}"));
    let (stages, wall) = line.rsplit_once(" of ").expect(line);
    let wall: f64 = wall.trim_end_matches('s').parse().expect(line);
    let mut names = Vec::new();
    let mut sum = 0.0;
    for stage in stages.split(", ") {
        let (name, rest) = stage.split_once(' ').expect(line);
        let (secs, _share) = rest.split_once("s (").expect(line);
        names.push(name);
        sum += secs.parse::<f64>().expect(line);
    }
    names.sort_unstable();
    assert_eq!(
        names,
        ["assembling", "encoding", "reading", "tokenizing", "writing"],
        "{line}"
    );
    assert!(sum <= wall + 0.03, "{line}");
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < TOL, "{what}: {got:?} vs {want:?}");
    }
}

fn assert_predictions(got: &[Value], want: &[Value], texts: &[String]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g["index"], i, "{g}");
        assert_eq!(g["label_id"], w["label_id"], "row {i}");
        assert_eq!(g["label"], w["label"], "row {i}");
        assert_eq!(g["text"].as_str().unwrap(), texts[i]);
        assert_close(
            &floats(&g["probs"]),
            &floats(&w["probs"]),
            &format!("row {i}"),
        );
    }
}

/// (index, feature) rows of an encode parquet output.
fn parquet_features(path: &Path) -> Vec<(u64, Vec<f64>)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let index = batch
            .column_by_name("index")
            .unwrap()
            .as_primitive::<UInt64Type>()
            .clone();
        let cls = batch
            .column_by_name("cls")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for i in 0..batch.num_rows() {
            let row = cls.value(i);
            let values = row.as_primitive::<Float32Type>();
            rows.push((
                index.value(i),
                values.values().iter().map(|&v| v as f64).collect(),
            ));
        }
    }
    rows
}

/// Writes the tiny train parquet into a fake HF hub cache as dataset `fake/tiny`.
fn hub_cache(root: &Path) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = root.join("datasets--fake--tiny");
    let snap = repo.join("snapshots").join(commit).join("data");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::copy(
        data().join("tiny-files/train.parquet"),
        snap.join("train-00000-of-00001.parquet"),
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
}

#[test]
fn every_data_form_in_bulk_predict_and_encode() {
    let (dir, head) = dir_with_tiny_head("bulk-forms");
    let hub = dir.join("hub");
    hub_cache(&hub);
    let texts = split_texts("train");
    let want = reference_predictions(&head, &texts);
    let want_x = reference_features(&texts);
    let forms = [
        s(&data().join("tiny-dsdict")).to_string(),
        s(&data().join("tiny-dataset")).to_string(),
        s(&data().join("tiny-sharded")).to_string(),
        s(&data().join("tiny-files")).to_string(),
        s(&data().join("tiny-files/train.parquet")).to_string(),
        s(&data().join("tiny-files/train.jsonl")).to_string(),
        s(&data().join("tiny-files/train.csv")).to_string(),
        s(&data().join("tiny-files/train.tsv")).to_string(),
        "fake/tiny".to_string(),
    ];
    let env = [("HF_HUB_CACHE", s(&hub))];
    for (n, form) in forms.iter().enumerate() {
        let out = dir.join(format!("p{n}.jsonl"));
        let run = ok(bertcls(
            &[
                "predict",
                "--head",
                s(&head),
                "--data",
                form,
                "--out",
                s(&out),
                "--with-text",
                "--chunk-rows",
                "7",
            ],
            &env,
        ));
        assert_predictions(&jsonl(&out), &want, &texts);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("labelled train: 32 rows, 771 tokens in"),
            "{form}: {stderr}"
        );
        // The tiny train split has labels: accuracy as test gives it.
        let correct = want
            .iter()
            .zip(split_labels())
            .filter(|(w, l)| w["label_id"] == *l)
            .count();
        assert!(
            stderr.contains(&format!("({correct}/32 labelled rows)")),
            "{stderr}"
        );
        assert_time_line(&stderr);

        let out = dir.join(format!("f{n}.parquet"));
        ok(bertcls(
            &[
                "encode",
                "--model",
                s(&model_dir()),
                "--data",
                form,
                "--out",
                s(&out),
                "--chunk-rows",
                "5",
            ],
            &env,
        ));
        let rows = parquet_features(&out);
        assert_eq!(rows.len(), 32, "{form}");
        for (i, (index, x)) in rows.iter().enumerate() {
            assert_eq!(*index, i as u64);
            assert_close(x, &want_x[i], &format!("{form} row {i}"));
        }
    }
    // safetensors: one [rows, hidden] tensor per chunk, named by its first row.
    let out = dir.join("f.safetensors");
    ok(bertcls(
        &[
            "encode",
            "--model",
            s(&model_dir()),
            "--data",
            &forms[0],
            "--out",
            s(&out),
            "--chunk-rows",
            "10",
        ],
        &[],
    ));
    let tensors = common::read_tensors(&out);
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cls.000000000000",
            "cls.000000000010",
            "cls.000000000020",
            "cls.000000000030"
        ]
    );
    let mut row = 0;
    for name in names {
        let t = &tensors[name];
        for x in t.f32.chunks_exact(32) {
            let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            assert_close(&x, &want_x[row], name);
            row += 1;
        }
    }
    assert_eq!(row, 32);
}

fn split_labels() -> Vec<Value> {
    std::fs::read_to_string(data().join("tiny-files/train.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_once('\t').unwrap().0.parse::<u64>().unwrap().into())
        .collect()
}

/// The bulk job `command` (its leading arguments) over `data` into `out`, in chunks of
/// `chunk_rows` rows.
fn chunked_job(command: &[&str], data: &Path, out: &Path, chunk_rows: usize) -> Vec<String> {
    let job = ["--data", s(data), "--out", s(out), "--chunk-rows"];
    command
        .iter()
        .chain(&job)
        .map(|a| a.to_string())
        .chain([chunk_rows.to_string()])
        .collect()
}

/// Runs `chunked_job(command, data, out, chunk_rows)` with more environment `env`.
fn run_chunked_job(
    command: &[&str],
    data: &Path,
    out: &Path,
    chunk_rows: usize,
    env: &[(&str, &str)],
) -> Output {
    let args = chunked_job(command, data, out, chunk_rows);
    bertcls(&args.iter().map(String::as_str).collect::<Vec<_>>(), env)
}

/// The `count` shard parts of bulk job `command` on the tiny dsdict, `dir/name` with K the shard.
fn shard_parts(
    dir: &Path,
    name: &str,
    command: &[&str],
    count: usize,
    extra: &[&str],
) -> Vec<PathBuf> {
    let dsdict = data().join("tiny-dsdict");
    (0..count)
        .map(|k| {
            let out = dir.join(name.replace('K', &k.to_string()));
            let shard = format!("{k}/{count}");
            let mut args = command.to_vec();
            args.extend(["--data", s(&dsdict), "--out", s(&out), "--shard", &shard]);
            args.extend_from_slice(extra);
            ok(bertcls(&args, &[]));
            out
        })
        .collect()
}

#[test]
fn a_job_killed_at_any_point_resumes_to_the_same_output() {
    let (dir, head) = dir_with_tiny_head("bulk-resume");
    let dsdict = data().join("tiny-dsdict");
    for ext in ["jsonl", "parquet"] {
        let clean = dir.join(format!("clean.{ext}"));
        let run = |out: &Path, env: &[(&str, &str)]| {
            run_chunked_job(&["predict", "--head", s(&head)], &dsdict, out, 4, env)
        };
        ok(run(&clean, &[]));
        let want = std::fs::read(&clean).unwrap();

        let out = dir.join(format!("killed.{ext}"));
        let parts = PathBuf::from(format!("{}.parts", out.display()));
        // Killed after 1 chunk, then after 3 more, then after assembly but before the
        // manifest; a stray temporary as a kill mid-write leaves one.
        for (env, chunks) in [("1", 1), ("3", 4)] {
            let killed = run(&out, &[("BERTCLS_TEST_ABORT_AFTER_CHUNKS", env)]);
            assert!(!killed.status.success());
            assert!(!out.exists());
            let done = std::fs::read_dir(&parts)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(ext)
                })
                .count();
            assert_eq!(done, chunks);
        }
        std::fs::write(parts.join(".chunk-000000000016.jsonl.tmp-1"), b"torn").unwrap();
        let killed = run(&out, &[("BERTCLS_TEST_ABORT_BEFORE_MANIFEST", "1")]);
        assert!(!killed.status.success());
        let resumed = ok(run(&out, &[]));
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(stderr.contains("wrote "), "{stderr}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            want,
            "{ext}: resumed output differs"
        );
        assert!(!parts.exists(), "parts left behind");
        // The same command again finds the job complete.
        let again = ok(run(&out, &[]));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already complete"));
    }
}

#[test]
fn four_shards_merged_equal_one_process() {
    let (dir, head) = dir_with_tiny_head("bulk-shards");
    let dsdict = data().join("tiny-dsdict");
    let single = dir.join("single.jsonl");
    ok(bertcls(
        &[
            "predict",
            "--head",
            s(&head),
            "--data",
            s(&dsdict),
            "--out",
            s(&single),
            "--with-text",
        ],
        &[],
    ));
    // Four processes at once, as a job array would run them.
    let children: Vec<_> = (0..4)
        .map(|k| {
            let out = dir.join(format!("part-{k}.jsonl"));
            let shard = format!("{k}/4");
            let child = Command::new(env!("CARGO_BIN_EXE_bertcls"))
                .args([
                    "predict",
                    "--head",
                    s(&head),
                    "--data",
                    s(&dsdict),
                    "--out",
                    s(&out),
                ])
                .args([
                    "--with-text",
                    "--shard",
                    &shard,
                    "--device",
                    "cpu",
                    "--chunk-rows",
                    "3",
                ])
                .env("HF_HUB_OFFLINE", "1")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (out, child)
        })
        .collect();
    let parts: Vec<PathBuf> = children
        .into_iter()
        .map(|(out, child)| {
            ok(child.wait_with_output().unwrap());
            out
        })
        .collect();
    let merged = dir.join("merged.jsonl");
    let mut args: Vec<&str> = vec![s(&merged)];
    args.extend(parts.iter().rev().map(|p| s(p)));
    ok(merge(&args));
    let texts = split_texts("train");
    assert_predictions(&jsonl(&merged), &jsonl(&single), &texts);
    let manifest = manifest_of(&merged);
    assert_eq!(
        (manifest["start"].as_u64(), manifest["end"].as_u64()),
        (Some(0), Some(32))
    );

    // Encode shards merge into one parquet with the single run's features.
    let model = model_dir();
    let encode = ["encode", "--model", s(&model)];
    let enc_parts = shard_parts(&dir.0, "f-K.parquet", &encode, 4, &[]);
    let merged = dir.join("features.parquet");
    let mut args: Vec<&str> = vec![s(&merged)];
    args.extend(enc_parts.iter().map(|p| s(p)));
    ok(merge(&args));
    let want = reference_features(&texts);
    let rows = parquet_features(&merged);
    assert_eq!(rows.len(), 32);
    for (i, (index, x)) in rows.iter().enumerate() {
        assert_eq!(*index, i as u64);
        assert_close(x, &want[i], &format!("row {i}"));
    }
}

#[test]
fn parts_that_do_not_make_one_job_are_refused() {
    let (dir, head) = dir_with_tiny_head("bulk-refuse");
    let dsdict = data().join("tiny-dsdict");
    let part = |name: &str, shard: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = vec![
            "predict",
            "--head",
            s(&head),
            "--data",
            s(&dsdict),
            "--out",
            s(&out),
            "--shard",
            shard,
        ];
        args.extend_from_slice(extra);
        ok(bertcls(&args, &[]));
        out
    };
    let p0 = part("a0.jsonl", "0/3", &[]);
    let p1 = part("a1.jsonl", "1/3", &[]);
    let p2 = part("a2.jsonl", "2/3", &[]);
    let other_split = part("b2.jsonl", "2/3", &["--split", "test"]);
    let halves = part("h0.jsonl", "0/2", &[]);
    let out = dir.join("m.jsonl");
    let err = error_line(&merge(&[s(&out), s(&p0), s(&p1), s(&other_split)]));
    assert!(err.contains("comes from another job"), "{err}");
    let err = error_line(&merge(&[s(&out), s(&p0), s(&p1), s(&halves), s(&p2)]));
    assert!(err.contains("overlaps"), "{err}");
    let err = error_line(&merge(&[s(&out), s(&p0), s(&p2)]));
    assert!(err.contains("rows 10..21 are in no part"), "{err}");
    let err = error_line(&merge(&[s(&out), s(&p0), s(&p1)]));
    assert!(err.contains("rows 21..32 are in no part"), "{err}");
    assert!(!out.exists(), "a refused merge wrote its output");
    std::fs::remove_file(dir.join("a1.jsonl.bulk.json")).unwrap();
    let err = error_line(&merge(&[s(&out), s(&p0), s(&p1), s(&p2)]));
    assert!(err.contains("not a finished bulk output"), "{err}");

    // A parts folder left by another job is not mixed into this one.
    let busy = dir.join("busy.jsonl");
    let predict = ["predict", "--head", s(&head)];
    let killed = run_chunked_job(
        &predict,
        &dsdict,
        &busy,
        4,
        &[("BERTCLS_TEST_ABORT_AFTER_CHUNKS", "1")],
    );
    assert!(!killed.status.success());
    let err = error_line(&run_chunked_job(&predict, &dsdict, &busy, 5, &[]));
    assert!(err.contains("holds the parts of another job"), "{err}");
    let _ = std::io::stderr().flush();
}

/// While a process holds `<out>.lock` (here the test itself, through the same advisory
/// lock), a job into that output refuses in one line before writing anything; once the
/// lock is released the same command runs.
#[test]
fn an_output_has_one_writer() {
    let dir = TempDir::new("bulk-one-writer");
    let out = dir.join("features.parquet");
    let dsdict = data().join("tiny-dsdict");
    let model = model_dir();
    let args = [
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&dsdict),
        "--out",
        s(&out),
    ];
    let held = File::create(dir.join("features.parquet.lock")).unwrap();
    fs4::FileExt::try_lock(&held).unwrap();
    let refused = bertcls(&args, &[]);
    let line = error_line(&refused);
    assert!(
        line.contains("another bertcls process is writing it"),
        "{line}"
    );
    assert!(line.contains(s(&out)), "{line}");
    assert!(!out.exists());
    assert!(!dir.join("features.parquet.parts").exists());
    drop(held);
    ok(bertcls(&args, &[]));
    assert_eq!(parquet_features(&out).len(), split_texts("train").len());
}

/// Predictions of a head on chunked features, bulk-made before the window fix (their
/// manifest records no window revision), came from too few windows of long texts:
/// `merge` refuses them, naming the file and saying to predict again, as it refuses
/// such encode outputs; outputs made now record the revision and merge.
#[test]
fn chunked_predictions_of_another_window_revision_are_refused() {
    let dir = TempDir::new("bulk-windows");
    let head = dir.join("head.safetensors");
    write_tiny_head(&head, &[("long", "chunk:8")]);
    let out = dir.join("p.jsonl");
    let dsdict = data().join("tiny-dsdict");
    ok(bertcls(
        &[
            "predict",
            "--head",
            s(&head),
            "--data",
            s(&dsdict),
            "--out",
            s(&out),
        ],
        &[],
    ));
    let manifest = PathBuf::from(format!("{}.bulk.json", s(&out)));
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["identity"]["model"]["windows"], 2);
    let merged = dir.join("merged.jsonl");
    ok(merge(&[s(&merged), s(&out)]));
    std::fs::remove_file(&merged).unwrap();

    m["identity"]["model"]
        .as_object_mut()
        .unwrap()
        .remove("windows");
    std::fs::write(&manifest, m.to_string()).unwrap();
    assert_eq!(
        error_line(&merge(&[s(&merged), s(&out)])),
        format!("error: {}: its predictions come from chunked features cut into windows by no recorded window revision (this bertcls cuts by revision 2; before it, texts lost windows): predict it again", s(&out))
    );
    assert!(!merged.exists());
}

/// Files in `dir` a write left behind under a temporary name.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// A part whose rows are not the ones its manifest gives (cut, torn, emptied, a row
/// repeated, another shard's file copied over it) is refused in one line naming it,
/// in every format, and the merge leaves neither an output nor a temporary behind.
#[test]
fn merge_refuses_parts_that_do_not_hold_their_manifests_rows() {
    let (dir, head) = dir_with_tiny_head("bulk-merge-rows");
    let shards = |name: &str, command: &[&str]| {
        shard_parts(&dir.0, name, command, 3, &["--chunk-rows", "4"])
    };
    let refused = |out: &Path, parts: &[PathBuf], bad: &Path| -> String {
        let mut args = vec![s(out)];
        args.extend(parts.iter().map(|p| s(p)));
        let err = error_line(&merge(&args));
        assert!(err.contains(&format!("{}: ", s(bad))), "{err}");
        assert!(!out.exists(), "a refused merge left {}", out.display());
        assert_eq!(temporaries(&dir.0), Vec::<String>::new());
        err
    };

    let p = shards("pK.jsonl", &["predict", "--head", s(&head)]);
    let good = std::fs::read_to_string(&p[1]).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert_eq!(lines.len(), 11);
    let out = dir.join("m.jsonl");
    let five = lines[..5].join("\n") + "\n";
    let torn = &good[..good.len() - 7];
    let repeated = format!("{}\n{}\n", lines[0], lines[..10].join("\n"));
    for (broken, why) in [
        (five.as_str(), "ends after row 14"),
        (torn, "is not a row with an index"),
        ("", "holds no rows"),
        (
            repeated.as_str(),
            "line 2 holds row 10 where row 11 belongs",
        ),
    ] {
        std::fs::write(&p[1], broken).unwrap();
        let err = refused(&out, &p, &p[1]);
        assert!(err.contains(why), "{err}");
        assert!(err.contains("should hold rows 10..21"), "{err}");
        assert!(err.contains("rerun that shard"), "{err}");
    }
    std::fs::write(&p[1], &good).unwrap();
    ok(merge(&[s(&out), s(&p[0]), s(&p[1]), s(&p[2])]));
    assert_eq!(jsonl(&out).len(), 32);

    // The output among the parts, or a part twice, is refused before anything is written.
    let before = std::fs::read(&p[0]).unwrap();
    let err = error_line(&merge(&[s(&p[0]), s(&p[0]), s(&p[1]), s(&p[2])]));
    assert!(
        err.contains("the merged output is also given as the part"),
        "{err}"
    );
    assert_eq!(std::fs::read(&p[0]).unwrap(), before);
    let again = dir.join("again.jsonl");
    let err = error_line(&merge(&[s(&again), s(&p[0]), s(&p[0]), s(&p[1]), s(&p[2])]));
    assert!(err.contains("is given twice"), "{err}");
    assert!(!again.exists());

    // Another shard's file copied over a part: its index column gives it away.
    let q = shards("qK.parquet", &["predict", "--head", s(&head)]);
    std::fs::copy(&q[0], &q[1]).unwrap();
    let err = refused(&dir.join("m.parquet"), &q, &q[1]);
    assert!(err.contains("holds row 0 where row 10 belongs"), "{err}");

    let f = shards("fK.safetensors", &["encode", "--model", s(&model_dir())]);
    std::fs::copy(&f[0], &f[1]).unwrap();
    let err = refused(&dir.join("m.safetensors"), &f, &f[1]);
    assert!(err.contains("holds row 0 where row 10 belongs"), "{err}");
}

/// The job's manifest records the head's temperature as a JSON number; a resume compares
/// it with the one it reads back, so that number must read back as the very f64 written.
/// 1.1509457233370795 is one that serde_json's default (fast, inexact) parser does not:
/// the resume of the same command was refused as "another job".
#[test]
fn a_job_with_any_temperature_resumes() {
    let dir = TempDir::new("bulk-resume-temperature");
    let head = dir.join("head.safetensors");
    write_tiny_head(&head, &[("temperature", "1.1509457233370795")]);
    let out = dir.join("p.jsonl");
    let dsdict = data().join("tiny-dsdict");
    let run = |out: &Path, env: &[(&str, &str)]| {
        run_chunked_job(&["predict", "--head", s(&head)], &dsdict, out, 4, env)
    };
    let killed = run(&out, &[("BERTCLS_TEST_ABORT_AFTER_CHUNKS", "1")]);
    assert!(!killed.status.success());
    let resumed = ok(run(&out, &[]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("wrote "), "{stderr}");
    let clean = dir.join("clean.jsonl");
    ok(run(&clean, &[]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&clean).unwrap());
}

/// A data folder `dir/data` whose train.jsonl the tests write as the tiny train split.
struct TrainFolder {
    folder: PathBuf,
    file: PathBuf,
    original: String,
}

impl TrainFolder {
    /// The folder, made in `dir`, with no train.jsonl yet.
    fn new(dir: &TempDir) -> Self {
        let folder = dir.join("data");
        std::fs::create_dir_all(&folder).unwrap();
        TrainFolder {
            file: folder.join("train.jsonl"),
            folder,
            original: std::fs::read_to_string(data().join("tiny-files/train.jsonl")).unwrap(),
        }
    }

    /// Writes train.jsonl as the tiny train split is.
    fn write_original(&self) {
        std::fs::write(&self.file, &self.original).unwrap();
    }

    /// Writes train.jsonl with rows `a` and `b` swapped: the same size, other texts.
    fn write_swapped(&self, a: usize, b: usize) {
        let mut lines: Vec<&str> = self.original.lines().collect();
        lines.swap(a, b);
        std::fs::write(&self.file, lines.join("\n") + "\n").unwrap();
    }
}

/// The data is known to a job by its files' names and sizes; a resume hashes again the
/// texts of the chunks it keeps, so rows edited in place (same size) since they were
/// written are refused, while edits to rows not yet written are simply encoded.
#[test]
fn a_resume_refuses_chunks_whose_texts_changed() {
    let (dir, head) = dir_with_tiny_head("bulk-resume-edited");
    let train = TrainFolder::new(&dir);
    let run = |out: &Path, env: &[(&str, &str)]| {
        run_chunked_job(&["predict", "--head", s(&head)], &train.folder, out, 4, env)
    };
    let out = dir.join("p.jsonl");
    let kill_after_two = [("BERTCLS_TEST_ABORT_AFTER_CHUNKS", "2")];

    train.write_original();
    assert!(!run(&out, &kill_after_two).status.success());
    train.write_swapped(0, 1);
    let refused = run(&out, &[]);
    let err = error_line(&refused);
    assert!(err.contains(&format!("--out {}: ", s(&out))), "{err}");
    assert!(err.contains("rows 0..4"), "{err}");
    assert!(err.contains(&format!("{}.parts", s(&out))), "{err}");
    assert!(!out.exists());
    // A refused resume resumed nothing, and says nothing of resuming.
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!stderr.contains("resuming"), "{stderr}");

    // Rows past the chunks written are read fresh: the resume equals a clean run.
    train.write_swapped(20, 21);
    let resumed = ok(run(&out, &[]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    let line = format!("resuming {}: 2 of 8 chunks already done", s(&out));
    assert_eq!(stderr.matches(&line).count(), 1, "{stderr}");
    let clean = dir.join("clean.jsonl");
    ok(run(&clean, &[]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&clean).unwrap());
}

/// A label the head lacks is found as the split's rows are counted, so the job is
/// refused, naming the file and row, before it encodes anything, however far into the
/// data the row is: no chunk is written, in whichever form the data comes.
#[test]
fn a_label_the_head_lacks_is_refused_before_any_chunk() {
    let (dir, head) = dir_with_tiny_head("bulk-label-range");
    let texts = split_texts("train");
    let mut labels: Vec<i64> = split_labels().iter().map(|l| l.as_i64().unwrap()).collect();
    // Split row 29: in the last chunk of 4 rows, the second file's 14th row.
    labels[29] = 5;
    let lines = |rows: std::ops::Range<usize>| -> String {
        rows.map(|i| serde_json::json!({"text": texts[i], "label": labels[i]}).to_string() + "\n")
            .collect()
    };
    let jsonl_file = dir.join("reviews.jsonl");
    std::fs::write(&jsonl_file, lines(0..32)).unwrap();
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(sharded.join("train-00000-of-00002.jsonl"), lines(0..16)).unwrap();
    let second = sharded.join("train-00001-of-00002.jsonl");
    std::fs::write(&second, lines(16..32)).unwrap();
    let parquet_file = dir.join("reviews.parquet");
    let batch = arrow_array::RecordBatch::try_from_iter([
        (
            "text",
            Arc::new(arrow_array::StringArray::from(texts.clone())) as arrow_array::ArrayRef,
        ),
        (
            "label",
            Arc::new(arrow_array::Int64Array::from(labels.clone())) as arrow_array::ArrayRef,
        ),
    ])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        File::create(&parquet_file).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    for (data, file, row) in [
        (&jsonl_file, &jsonl_file, 30),
        (&parquet_file, &parquet_file, 30),
        (&sharded, &second, 14),
    ] {
        let out = dir.join("p.jsonl");
        let err = error_line(&run_chunked_job(
            &["predict", "--head", s(&head)],
            data,
            &out,
            4,
            &[],
        ));
        assert_eq!(
            err,
            format!(
                "error: {} row {row}: label 5 is outside 0..2 (the head has 2 classes: negative, positive); fix the row, or use the head trained for these labels",
                s(file)
            )
        );
        assert!(!dir.join("p.jsonl.parts").exists(), "{}", s(data));
    }
}

/// A folder where the manifest goes would stop the job only when the finished output's
/// manifest is written: it is refused before the model loads or any chunk is encoded.
#[test]
fn a_folder_where_the_manifest_goes_is_refused_before_any_chunk() {
    let (dir, head) = dir_with_tiny_head("bulk-manifest-folder");
    let dsdict = data().join("tiny-dsdict");
    let model = model_dir();
    for (name, command) in [
        ("p.jsonl", ["predict", "--head", s(&head)]),
        ("f.parquet", ["encode", "--model", s(&model)]),
    ] {
        let out = dir.join(name);
        let manifest = dir.join(format!("{name}.bulk.json"));
        std::fs::create_dir_all(&manifest).unwrap();
        let mut args = command.to_vec();
        args.extend(["--data", s(&dsdict), "--out", s(&out), "--chunk-rows", "4"]);
        assert_eq!(
            common::refusal(&args),
            format!(
                "error: --out {}: {} (where its .bulk.json manifest goes) is a folder: remove it, or pick another --out",
                s(&out),
                s(&manifest)
            )
        );
        assert!(!out.exists(), "{name}");
        assert!(!dir.join(format!("{name}.parts")).exists(), "{name}");
    }
}

/// A merge whose output, or its manifest, has a folder in its place is refused before
/// anything is written: the manifest was renamed last, leaving the merged output in
/// place without one.
#[test]
fn merge_refuses_a_folder_where_its_output_or_manifest_goes() {
    let dir = TempDir::new("bulk-merge-folder");
    let model = model_dir();
    let encode = ["encode", "--model", s(&model)];
    let shards = shard_parts(&dir.0, "sK.parquet", &encode, 2, &[]);
    let taken = dir.join("taken.parquet");
    std::fs::create_dir_all(&taken).unwrap();
    let out = dir.join("m.parquet");
    let manifest = dir.join("m.parquet.bulk.json");
    std::fs::create_dir_all(&manifest).unwrap();
    for (out, want) in [
        (
            &taken,
            format!(
                "error: {}: is a folder: pass the path of the file to write",
                s(&taken)
            ),
        ),
        (
            &out,
            format!(
                "error: {}: {} (where its .bulk.json manifest goes) is a folder: remove it, or write the merge to another file",
                s(&out),
                s(&manifest)
            ),
        ),
    ] {
        let refused = merge(&[s(out), s(&shards[0]), s(&shards[1])]);
        assert_eq!(String::from_utf8_lossy(&refused.stderr).lines().count(), 1);
        assert_eq!(error_line(&refused), want);
    }
    assert!(!out.exists());
    assert_eq!(temporaries(&dir.0), Vec::<String>::new());
}

/// A split of a save_to_disk DatasetDict that the job does not ask for is not read: one
/// missing its state.json fails only a job on that split.
#[test]
fn a_split_not_asked_for_needs_no_state_json() {
    let (dir, head) = dir_with_tiny_head("bulk-unused-split");
    let dsdict = dir.join("dsdict");
    let source = data().join("tiny-dsdict");
    common::copy_files(&source, &dsdict);
    for split in ["train", "validation", "test"] {
        common::copy_files(&source.join(split), &dsdict.join(split));
    }
    let state = dsdict.join("validation/state.json");
    std::fs::remove_file(&state).unwrap();
    let model = model_dir();
    for (split, name, command) in [
        ("train", "p.jsonl", ["predict", "--head", s(&head)]),
        ("test", "f.parquet", ["encode", "--model", s(&model)]),
    ] {
        let out = dir.join(name);
        let mut args = command.to_vec();
        args.extend(["--data", s(&dsdict), "--split", split, "--out", s(&out)]);
        ok(bertcls(&args, &[]));
        assert!(out.is_file(), "{split}");
    }
    let out = dir.join("v.jsonl");
    let args = [
        "predict",
        "--head",
        s(&head),
        "--data",
        s(&dsdict),
        "--split",
        "validation",
        "--out",
        s(&out),
    ];
    let err = error_line(&bertcls(&args, &[]));
    assert!(
        err.starts_with(&format!("error: {}: cannot read (", s(&state))),
        "{err}"
    );
    assert!(
        err.ends_with(
            "restore it from the dataset's source, or save the dataset again with save_to_disk"
        ),
        "{err}"
    );
}

/// A finished output that lost rows since (cut short, emptied) is not "already
/// complete": the same command writes it again, whole.
#[test]
fn a_finished_output_that_lost_rows_is_written_again() {
    let (dir, head) = dir_with_tiny_head("bulk-done-truncated");
    let dsdict = data().join("tiny-dsdict");
    let model = model_dir();
    for (name, command) in [
        ("p.jsonl", ["predict", "--head", s(&head)]),
        ("p.parquet", ["predict", "--head", s(&head)]),
        ("f.safetensors", ["encode", "--model", s(&model)]),
    ] {
        let out = dir.join(name);
        let run = || run_chunked_job(&command, &dsdict, &out, 4, &[]);
        ok(run());
        let whole = std::fs::read(&out).unwrap();
        for cut in [whole.len() / 2, 0] {
            std::fs::write(&out, &whole[..cut]).unwrap();
            let again = ok(run());
            let stderr = String::from_utf8_lossy(&again.stderr);
            assert!(stderr.contains("writing it again"), "{name}: {stderr}");
            assert_eq!(std::fs::read(&out).unwrap(), whole, "{name}");
        }
        let again = ok(run());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already complete"));
    }
}

/// A finished output is "already complete" only for the data it was made from: rows
/// swapped in place (same size, so same identity) since are refused as a resume refuses
/// them, and the output is left as it was; a run with another --chunk-rows still checks
/// the ranges the output was written in.
#[test]
fn a_finished_output_whose_texts_changed_is_refused() {
    let (dir, head) = dir_with_tiny_head("bulk-done-edited");
    let train = TrainFolder::new(&dir);
    let out = dir.join("p.jsonl");
    let run = |chunk_rows: usize| {
        run_chunked_job(
            &["predict", "--head", s(&head)],
            &train.folder,
            &out,
            chunk_rows,
            &[],
        )
    };

    train.write_original();
    ok(run(4));
    let written = std::fs::read(&out).unwrap();
    for chunk_rows in [4, 3] {
        let again = ok(run(chunk_rows));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already complete"));
    }
    for (a, b, rows) in [(0, 1, "rows 0..4"), (20, 21, "rows 20..24")] {
        train.write_swapped(a, b);
        for chunk_rows in [4, 3] {
            let err = error_line(&run(chunk_rows));
            assert!(err.contains(&format!("--out {}: ", s(&out))), "{err}");
            assert!(err.contains(rows), "{err}");
            assert!(err.contains("delete it"), "{err}");
            assert_eq!(std::fs::read(&out).unwrap(), written);
        }
    }
}

/// A finished output of another job at the same --out (here another pooling) is
/// replaced, with a line naming what differs; a job stopped before its end leaves the
/// old output as it was, as the line promises.
#[test]
fn a_finished_output_of_another_job_is_named_and_replaced_only_at_the_end() {
    let dir = TempDir::new("bulk-other-job");
    let model = model_dir();
    let dsdict = data().join("tiny-dsdict");
    let encode = |pooling: &str, out: &Path, env: &[(&str, &str)]| {
        let command = ["encode", "--model", s(&model), "--pooling", pooling];
        run_chunked_job(&command, &dsdict, out, 4, env)
    };
    let out = dir.join("f.safetensors");
    let first = ok(encode("cls", &out, &[]));
    assert!(!String::from_utf8_lossy(&first.stderr).contains("another job"));
    let cls = std::fs::read(&out).unwrap();
    let note = r#"holds the output of another job (its model.pooling is "cls", this job's "mean")"#;

    let killed = encode("mean", &out, &[("BERTCLS_TEST_ABORT_AFTER_CHUNKS", "1")]);
    assert!(!killed.status.success());
    assert!(String::from_utf8_lossy(&killed.stderr).contains(note));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        cls,
        "the stopped job kept the old output"
    );

    let replaced = ok(encode("mean", &out, &[]));
    assert!(String::from_utf8_lossy(&replaced.stderr).contains(note));
    let fresh = dir.join("fresh.safetensors");
    ok(encode("mean", &fresh, &[]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fresh).unwrap());
    assert_ne!(std::fs::read(&out).unwrap(), cls);
}

/// `--data` naming a split's file reads that split when --split is not given (its
/// siblings are the other splits, as for train and test): `--data test.jsonl` labels
/// test.jsonl, not the sibling train.jsonl. A given --split still wins.
#[test]
fn a_split_file_is_read_as_its_own_split_unless_split_is_given() {
    let (dir, head) = dir_with_tiny_head("bulk-file-split");
    let hub_named = dir.join("hub-named");
    std::fs::create_dir_all(&hub_named).unwrap();
    for split in ["train", "test"] {
        std::fs::copy(
            data().join(format!("tiny-files/{split}.parquet")),
            hub_named.join(format!("{split}-00000-of-00001.parquet")),
        )
        .unwrap();
    }
    let lone = dir.join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(
        data().join("tiny-files/test.jsonl"),
        lone.join("reviews_test.jsonl"),
    )
    .unwrap();
    let model = model_dir();
    let cases = [
        (data().join("tiny-files/test.jsonl"), None, "test"),
        (data().join("tiny-files/validation.csv"), None, "validation"),
        (hub_named.join("test-00000-of-00001.parquet"), None, "test"),
        (lone.join("reviews_test.jsonl"), None, "test"),
        (data().join("tiny-files/test.jsonl"), Some("train"), "train"),
    ];
    for (n, (file, given, split)) in cases.iter().enumerate() {
        let texts = split_texts(split);
        let mut args = vec!["predict", "--head", s(&head), "--data", s(file)];
        args.extend(given.iter().flat_map(|g| ["--split", g]));
        let out = dir.join(format!("p{n}.jsonl"));
        args.extend(["--out", s(&out), "--with-text"]);
        ok(bertcls(&args, &[]));
        let rows = jsonl(&out);
        let got: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
        assert_eq!(got, texts, "{}", file.display());

        let mut args = vec!["encode", "--model", s(&model), "--data", s(file)];
        args.extend(given.iter().flat_map(|g| ["--split", g]));
        let out = dir.join(format!("f{n}.parquet"));
        args.extend(["--out", s(&out)]);
        ok(bertcls(&args, &[]));
        let manifest = manifest_of(&out);
        assert_eq!(
            manifest["identity"]["data"]["split"],
            *split,
            "{}",
            file.display()
        );
        assert_eq!(manifest["end"], texts.len(), "{}", file.display());
    }
}

/// Overwrites the first float data of tensor `name` of a safetensors file with 0.25s,
/// in place: the same size, a readable file, finite features, other values.
fn overwrite_tensor(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let (from, to) = (
        8 + n + offsets[0].as_u64().unwrap() as usize,
        8 + n + offsets[1].as_u64().unwrap() as usize,
    );
    for at in (from..to).step_by(4) {
        bytes[at..at + 4].copy_from_slice(&0.25f32.to_le_bytes());
    }
    let size = std::fs::metadata(path).unwrap().len();
    std::fs::write(path, &bytes).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), size);
}

/// Rewrites a parquet file with every feature of its `cls` column 0.25, its index kept.
fn overwrite_parquet_features(path: &Path) {
    use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
    use std::sync::Arc;
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let mut rewritten = Vec::new();
    for batch in &batches {
        let cls = batch.column_by_name("cls").unwrap().as_fixed_size_list();
        let arrow_schema::DataType::FixedSizeList(field, width) = cls.data_type().clone() else {
            panic!("cls is not a fixed-size list");
        };
        let values = Float32Array::from(vec![0.25f32; cls.values().len()]);
        let garbage: ArrayRef =
            Arc::new(FixedSizeListArray::try_new(field, width, Arc::new(values), None).unwrap());
        let columns: Vec<ArrayRef> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| {
                if f.name() == "cls" {
                    garbage.clone()
                } else {
                    c.clone()
                }
            })
            .collect();
        rewritten.push(RecordBatch::try_new(batch.schema(), columns).unwrap());
    }
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, rewritten[0].schema(), None).unwrap();
    for batch in &rewritten {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Encode records each chunk's features_sha256 (over the f32 values, so a parquet and
/// a safetensors output of one job agree); finite garbage written over a part's
/// features since is refused by merge in one line naming the part, leaving nothing
/// behind, while the untouched parts merge to the same bytes as before.
#[test]
fn merge_refuses_parts_whose_features_changed() {
    let dir = TempDir::new("bulk-merge-features");
    let model = model_dir();
    let shards = |ext: &str| {
        let encode = ["encode", "--model", s(&model)];
        shard_parts(
            &dir.0,
            &format!("fK.{ext}"),
            &encode,
            3,
            &["--chunk-rows", "4"],
        )
    };
    let sums = |p: &Path| -> Vec<String> {
        manifest_of(p)["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["features_sha256"].as_str().unwrap().to_string())
            .collect()
    };
    let f = shards("safetensors");
    let q = shards("parquet");
    for k in 0..3 {
        assert_eq!(sums(&f[k]), sums(&q[k]), "shard {k}");
    }

    for (parts, ext) in [(&f, "safetensors"), (&q, "parquet")] {
        let out = dir.join(format!("m.{ext}"));
        let mut args = vec![s(&out)];
        args.extend(parts.iter().map(|p| s(p)));
        ok(merge(&args));
        let merged = std::fs::read(&out).unwrap();
        let all: Vec<String> = parts.iter().flat_map(|p| sums(p)).collect();
        assert_eq!(sums(&out), all);
        std::fs::remove_file(&out).unwrap();

        let good = std::fs::read(&parts[1]).unwrap();
        if ext == "safetensors" {
            // Shard 1 holds rows 10..21: tensors of rows 10..14, 14..18, 18..21.
            overwrite_tensor(&parts[1], "cls.000000000014");
        } else {
            overwrite_parquet_features(&parts[1]);
        }
        let err = error_line(&merge(&args));
        assert!(err.contains(&format!("{}: ", s(&parts[1]))), "{err}");
        let rows = if ext == "safetensors" {
            "14..18"
        } else {
            "10..14"
        };
        assert!(
            err.contains(&format!("the features of rows {rows} do not hash")),
            "{err}"
        );
        assert!(err.contains("rerun that shard"), "{err}");
        assert!(!out.exists(), "a refused merge left {}", out.display());
        assert_eq!(temporaries(&dir.0), Vec::<String>::new());

        std::fs::write(&parts[1], &good).unwrap();
        ok(merge(&args));
        assert_eq!(std::fs::read(&out).unwrap(), merged);
    }
}

/// `cmd` with files limited to `limit` bytes (`ulimit -f`): with `ignore_sigxfsz` a
/// write past it fails with EFBIG, as one on a full disk fails with ENOSPC; without,
/// the kernel kills the process mid-write with SIGXFSZ.
fn with_file_limit(mut cmd: Command, limit: u64, ignore_sigxfsz: bool) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if ignore_sigxfsz {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `bertcls` as `bertcls_env` does, under `with_file_limit`.
fn bertcls_file_limit(args: &[&str], limit: u64, ignore_sigxfsz: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bertcls"));
    cmd.args(args)
        .args(["--device", "cpu"])
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null());
    with_file_limit(cmd, limit, ignore_sigxfsz)
        .output()
        .unwrap()
}

/// Encodes the tiny split in 8-row chunks, in both formats, under a 4000-byte file
/// limit that every chunk part fits and the assembled output does not; checks the
/// failed run's temporaries with `check` (given its output and the temporaries named
/// after it), then runs the job again without the limit and checks that it writes the
/// output an uninterrupted job writes and leaves no temporary.
fn assembly_past_a_file_limit(
    tag: &str,
    ignore_sigxfsz: bool,
    check: impl Fn(&Output, &Path, &[String]),
) {
    let dir = TempDir::new(tag);
    let dsdict = data().join("tiny-dsdict");
    let model = model_dir();
    for ext in ["safetensors", "parquet"] {
        let encode = ["encode", "--model", s(&model)];
        let clean = dir.join(format!("clean.{ext}"));
        ok(run_chunked_job(&encode, &dsdict, &clean, 8, &[]));
        let want = std::fs::read(&clean).unwrap();
        assert!(want.len() > 4000, "{ext}: the output fits the limit");
        let out = dir.join(format!("out.{ext}"));
        let named_after_out = || -> Vec<String> {
            temporaries(&dir.0)
                .into_iter()
                .filter(|n| n.starts_with(&format!(".out.{ext}.")))
                .collect()
        };
        let a = chunked_job(&encode, &dsdict, &out, 8);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let failed = bertcls_file_limit(&a, 4000, ignore_sigxfsz);
        assert!(!failed.status.success(), "{ext}: the limit was not hit");
        assert!(!out.exists());
        check(&failed, &out, &named_after_out());
        let resumed = ok(bertcls(&a, &[]));
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(stderr.contains("wrote "), "{stderr}");
        assert_eq!(std::fs::read(&out).unwrap(), want, "{ext}: output differs");
        assert_eq!(
            named_after_out(),
            Vec::<String>::new(),
            "{ext}: left behind"
        );
    }
}

/// A write that fails while the output is assembled (a full disk; here EFBIG past
/// `ulimit -f`) is refused in one line naming the output, and leaves no temporary.
#[test]
fn a_failed_assembly_write_names_the_output() {
    assembly_past_a_file_limit("bulk-assembly-fails", true, |failed, out, stray| {
        let line = error_line(failed);
        assert!(
            line.contains(&format!("cannot write {}", out.display())),
            "{line}"
        );
        assert!(stray.is_empty(), "{stray:?}");
    });
}

/// A job killed while it assembles its output (SIGXFSZ past `ulimit -f`, as kill -9
/// would) leaves the output's temporary beside it, as large as the output; the next run
/// of the job removes it, saying so.
#[test]
fn a_killed_assembly_leaves_no_temporary_after_the_rerun() {
    assembly_past_a_file_limit("bulk-assembly-killed", false, |killed, _, stray| {
        assert_eq!(stray.len(), 1, "the kill left no temporary: {stray:?}");
        assert!(killed.status.code().is_none(), "not killed by a signal");
    });
}

/// A merge killed while it writes its output (SIGXFSZ past `ulimit -f`, as kill -9
/// would) leaves the output's temporary beside it; the merge run again removes it (not
/// the temporary of a merge still alive) and writes the output an unkilled merge writes.
#[test]
fn a_killed_merge_leaves_no_temporary_after_the_rerun() {
    let dir = TempDir::new("bulk-merge-killed");
    let model = model_dir();
    let encode = ["encode", "--model", s(&model)];
    let shards = shard_parts(&dir.0, "part-K.parquet", &encode, 2, &[]);
    let clean = dir.join("clean.parquet");
    ok(merge(&[s(&clean), s(&shards[0]), s(&shards[1])]));
    let want = std::fs::read(&clean).unwrap();
    assert!(want.len() > 4000, "the output fits the limit");
    let out = dir.join("out.parquet");
    let args = ["merge", s(&out), s(&shards[0]), s(&shards[1])];
    let mut killed = Command::new(env!("CARGO_BIN_EXE_bertcls"));
    killed.args(args);
    let killed = with_file_limit(killed, 4000, false).output().unwrap();
    assert!(killed.status.code().is_none(), "not killed by a signal");
    let stray = || -> Vec<String> {
        temporaries(&dir.0)
            .into_iter()
            .filter(|n| n.starts_with(".out.parquet."))
            .collect()
    };
    assert_eq!(stray().len(), 1, "the kill left no temporary");
    // Another merge of the same output, alive: its temporary is held, and kept.
    let live = dir.join(".out.parquet.tmp-1");
    let held = File::create(&live).unwrap();
    fs4::FileExt::try_lock(&held).unwrap();
    ok(merge(&args[1..]));
    assert_eq!(std::fs::read(&out).unwrap(), want);
    assert_eq!(stray(), [".out.parquet.tmp-1"]);
}

/// The parquet crate panics on some corrupt footers, lazily too (issue 8's guard): a
/// parquet output whose footer bytes are overwritten one at a time must, read back by
/// `merge`, by a rerun of its job and by `train --features-from`, end in a one-line
/// error or a rewrite, never a panic. Each sweep found panics before those reads were
/// guarded.
#[test]
fn corrupt_parquet_footers_of_outputs_are_refused_not_panicked_on() {
    let dir = TempDir::new("bulk-corrupt-footer");
    let files = data().join("tiny-files");
    let model = model_dir();
    let encode = |out: &Path, shard: &str| {
        let mut args = vec!["encode", "--model", s(&model), "--data", s(&files)];
        args.extend(["--split", "train", "--out", s(out)]);
        if !shard.is_empty() {
            args.extend(["--shard", shard]);
        }
        bertcls(&args, &[])
    };
    let (p0, p1, whole) = (
        dir.join("p0.parquet"),
        dir.join("p1.parquet"),
        dir.join("w.parquet"),
    );
    ok(encode(&p0, "0/2"));
    ok(encode(&p1, "1/2"));
    ok(encode(&whole, ""));
    let (merged, run, cache) = (dir.join("m.parquet"), dir.join("run"), dir.join("cache"));
    let readers: [(&Path, &dyn Fn() -> Output); 3] = [
        (&p0, &|| merge(&[s(&merged), s(&p0), s(&p1)])),
        (&whole, &|| encode(&whole, "")),
        (&whole, &|| {
            let _ = std::fs::remove_dir_all(&cache);
            let _ = std::fs::remove_dir_all(&run);
            let mut args = vec!["train", "--model", s(&model), "--data", s(&files)];
            args.extend(["--features-from", s(&whole), "--out", s(&run)]);
            args.extend(["--cache-dir", s(&cache), "--epochs", "1"]);
            bertcls(&args, &[])
        }),
    ];
    for (file, read) in readers {
        let valid = std::fs::read(file).unwrap();
        let n = valid.len();
        let footer = u32::from_le_bytes(valid[n - 8..n - 4].try_into().unwrap()) as usize;
        // The footer's first bytes (its schema) are where the decoders panicked; the
        // whole footer takes minutes of processes.
        let start = n - 8 - footer;
        for at in start..(start + 256).min(n - 8) {
            for byte in [valid[at] ^ 0x01, valid[at] ^ 0x80] {
                let mut bytes = valid.clone();
                bytes[at] = byte;
                std::fs::write(file, &bytes).unwrap();
                let out = read();
                let stderr = String::from_utf8_lossy(&out.stderr);
                let case = format!("{}, byte {at} set to {byte:#04x}", file.display());
                assert!(
                    out.status.code() != Some(101) && !stderr.contains("panicked"),
                    "{case}: {stderr}"
                );
                if !out.status.success() {
                    assert!(error_line(&out).contains(s(file)), "{case}: {stderr}");
                }
            }
        }
        std::fs::write(file, &valid).unwrap();
    }
}

/// A safetensors file of zero-width tensors `(name, rows)`: any row count is valid
/// safetensors, as the rows hold no bytes.
fn write_zero_width_tensors(path: &Path, tensors: &[(&str, usize)]) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|&(name, rows)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, 0], &[])
                    .unwrap();
            (name, view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Row counts read from a safetensors output are the file's numbers: summed unchecked,
/// tensors of 2^64 - 1 and 33 rows came to the 32 a finished output's manifest gives,
/// and a rerun took the file as complete; and a merge part's tensors of 10, 2^64 - 8 and
/// 30 rows (named so that they sort in that order) passed for its 32 rows, merged.
#[test]
fn safetensors_row_counts_that_overflow_are_refused() {
    let dir = TempDir::new("bulk-rows-overflow");
    let files = data().join("tiny-files");
    let model = model_dir();
    let out = dir.join("o.safetensors");
    let mut args = vec!["encode", "--model", s(&model), "--data", s(&files)];
    args.extend(["--split", "train", "--out", s(&out)]);
    ok(bertcls(&args, &[]));
    write_zero_width_tensors(&out, &[("cls.0", usize::MAX), ("cls.1", 33)]);
    let again = ok(bertcls(&args, &[]));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("writing it again"), "{stderr}");

    // The part's manifest without its ranges, as outputs before them have: with them,
    // the merge would hash 2^64 rows of features before refusing.
    let manifest = dir.join("o.safetensors.bulk.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("ranges");
    std::fs::write(&manifest, m.to_string()).unwrap();
    write_zero_width_tensors(
        &out,
        &[("cls.0", 10), ("cls.10", usize::MAX - 7), ("cls.2", 30)],
    );
    let merged = dir.join("m.safetensors");
    let line = error_line(&merge(&[s(&merged), s(&out)]));
    assert!(line.contains("holds") && line.contains(s(&out)), "{line}");
}

/// `--chunk-rows` as large as usize allows means one chunk: a shard that does not start
/// at row 0 summed its first row and the chunk size past usize::MAX, and its finished
/// job refused its own chunk ("should hold rows 16..15"), telling the user to delete it.
#[test]
fn the_largest_chunk_rows_make_one_chunk_of_any_shard() {
    let dir = TempDir::new("bulk-chunk-rows-max");
    let files = data().join("tiny-files");
    let model = model_dir();
    let chunk_rows = usize::MAX.to_string();
    let (one, small) = (dir.join("one.parquet"), dir.join("small.parquet"));
    for (out, rows) in [(&one, chunk_rows.as_str()), (&small, "5")] {
        let mut args = vec!["encode", "--model", s(&model), "--data", s(&files)];
        args.extend(["--split", "train", "--shard", "1/2", "--out", s(out)]);
        args.extend(["--chunk-rows", rows]);
        ok(bertcls(&args, &[]));
    }
    assert_eq!(parquet_features(&one), parquet_features(&small));
    let manifest = manifest_of(&one);
    let ranges = manifest["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{manifest}");
    assert_eq!(
        (ranges[0]["start"].as_u64(), ranges[0]["end"].as_u64()),
        (Some(16), Some(32))
    );
}

/// A head whose names list the classes in another order than the data's ClassLabel (a
/// run trained on names sorted one way, scored on a dataset that numbers them another)
/// scores each row by its label's name: `test` and bulk `predict` both map the
/// ClassLabel's ids to the head's, so reversing the head's names turns each right row
/// wrong and each wrong one right.
#[test]
fn a_class_label_in_another_order_is_mapped_to_the_heads_names() {
    let dir = TempDir::new("bulk-classlabel-order");
    let dsdict = data().join("tiny-dsdict");
    let correct = |head: &Path, name: &str| -> (usize, usize) {
        let test = bertcls(
            &[
                "test",
                "--head",
                s(head),
                "--data",
                s(&dsdict),
                "--split",
                "train",
                "--json",
            ],
            &[],
        );
        let report: Value = serde_json::from_slice(&test.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&test.stderr)));
        let out = dir.join(format!("{name}.jsonl"));
        let bulk = bertcls(
            &[
                "predict",
                "--head",
                s(head),
                "--data",
                s(&dsdict),
                "--split",
                "train",
                "--out",
                s(&out),
            ],
            &[],
        );
        ok(bulk);
        let counts = manifest_of(&out);
        let test_correct = report["report"]["correct"].as_u64().unwrap() as usize;
        assert_eq!(
            counts["counts"]["correct"].as_u64(),
            Some(test_correct as u64),
            "bulk predict and test disagree: {counts}"
        );
        (
            test_correct,
            report["report"]["rows"].as_u64().unwrap() as usize,
        )
    };
    let head = dir.join("head.safetensors");
    write_tiny_head(&head, &[]);
    let reversed = dir.join("reversed.safetensors");
    write_tiny_head(&reversed, &[("labels", r#"["positive","negative"]"#)]);
    let (right, rows) = correct(&head, "head");
    assert!(
        right * 2 != rows,
        "the fixture head must not score half right"
    );
    assert_eq!(correct(&reversed, "reversed"), (rows - right, rows));
}

/// What a damage is refused for, and the damage done to a file.
type Damage<'a> = (&'static str, Box<dyn Fn(&Path) + 'a>);

/// Rewrites the JSON in `path` (a chunk record or a manifest) as `edit` changes it.
fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// A resume sums the counts the chunk records of a killed run give; damaged ones wrapped
/// the sums (a row count and accuracy of nothing the data holds, in a manifest that looks
/// whole). Each damage is refused naming the record and the part to delete, and deleting
/// it gives the output of a run never killed.
#[test]
fn a_resume_refuses_damaged_chunk_records() {
    let (dir, head) = dir_with_tiny_head("bulk-records");
    let dsdict = data().join("tiny-dsdict");
    let run = |out: &Path, env: &[(&str, &str)]| {
        run_chunked_job(&["predict", "--head", s(&head)], &dsdict, out, 8, env)
    };
    let clean = dir.join("clean.jsonl");
    ok(run(&clean, &[]));
    let out = dir.join("p.jsonl");
    let parts = PathBuf::from(format!("{}.parts", s(&out)));
    let record = parts.join("chunk-000000000000.json");
    let part = parts.join("chunk-000000000000.jsonl");
    let max = Value::from(u64::MAX);
    let damages: [Damage; 6] = [
        (
            "not a readable chunk record",
            Box::new(|p| std::fs::write(p, "{\"rows\":").unwrap()),
        ),
        (
            "not a bertcls chunk record",
            Box::new(|p| std::fs::write(p, "[]").unwrap()),
        ),
        (
            "are not those of its 8 rows",
            Box::new(|p| edit_json(p, |v| v["rows"] = max.clone())),
        ),
        (
            "are not those of its 8 rows",
            Box::new(|p| edit_json(p, |v| v["correct"] = 9.into())),
        ),
        (
            "are not those of its 8 rows",
            Box::new(|p| edit_json(p, |v| v["tokens"] = max.clone())),
        ),
        (
            "have no whole number \"labelled\"",
            Box::new(|p| edit_json(p, |v| v["labelled"] = (-1).into())),
        ),
    ];
    for (why, damage) in damages {
        let _ = std::fs::remove_dir_all(&parts);
        let killed = run(&out, &[("BERTCLS_TEST_ABORT_AFTER_CHUNKS", "2")]);
        assert!(!killed.status.success());
        damage(&record);
        let err = error_line(&run(&out, &[]));
        assert!(
            err.starts_with(&format!("error: {}: ", s(&record))),
            "{err}"
        );
        assert!(err.contains(why), "{why}: {err}");
        assert!(
            err.ends_with(&format!(
                "delete {} (or all of {}) and run the command again",
                s(&part),
                s(&parts)
            )),
            "{err}"
        );
        assert!(!out.exists());
    }
    let job = parts.join("job.json");
    let job_bytes = std::fs::read(&job).unwrap();
    std::fs::write(&job, "{").unwrap();
    let err = error_line(&run(&out, &[]));
    assert!(err.starts_with(&format!("error: {}", s(&job))), "{err}");
    let remove = format!("remove {}, or pick another --out", s(&parts));
    assert!(err.ends_with(&remove), "{err}");
    std::fs::write(&job, job_bytes).unwrap();
    std::fs::remove_file(&part).unwrap();
    ok(run(&out, &[]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&clean).unwrap());
    assert_eq!(manifest_of(&out)["counts"], manifest_of(&clean)["counts"]);
    // A finished output's manifest, damaged, is refused the same way.
    std::fs::write(format!("{}.bulk.json", s(&out)), "{").unwrap();
    let err = error_line(&run(&out, &[]));
    let again = format!("delete it and {} to run the job again", s(&out));
    assert!(err.ends_with(&again), "{err}");
}

/// Merge sums its parts' manifest counts the same way: a damaged manifest is refused
/// naming it, before anything is written, where it wrapped the merged counts.
#[test]
fn merge_refuses_manifests_with_damaged_counts() {
    let (dir, head) = dir_with_tiny_head("bulk-merge-counts");
    let p = shard_parts(&dir.0, "pK.jsonl", &["predict", "--head", s(&head)], 2, &[]);
    let manifest = PathBuf::from(format!("{}.bulk.json", s(&p[0])));
    let good = std::fs::read(&manifest).unwrap();
    let out = dir.join("m.jsonl");
    let max = Value::from(u64::MAX);
    let damages: [Damage; 5] = [
        (
            "are not those of its 16 rows",
            Box::new(|m| edit_json(m, |v| v["counts"]["rows"] = max.clone())),
        ),
        (
            "are not those of its 16 rows",
            Box::new(|m| edit_json(m, |v| v["counts"]["correct"] = 17.into())),
        ),
        (
            "are not those of its 16 rows",
            Box::new(|m| edit_json(m, |v| v["counts"]["tokens"] = max.clone())),
        ),
        (
            "not a bertcls bulk manifest",
            Box::new(|m| std::fs::write(m, "null").unwrap()),
        ),
        (
            "is not valid JSON",
            Box::new(|m| std::fs::write(m, "{").unwrap()),
        ),
    ];
    for (why, damage) in damages {
        std::fs::write(&manifest, &good).unwrap();
        damage(&manifest);
        let err = error_line(&merge(&[s(&out), s(&p[0]), s(&p[1])]));
        assert!(
            err.starts_with(&format!("error: {}", s(&manifest))),
            "{err}"
        );
        assert!(err.contains(why), "{why}: {err}");
        assert!(err.ends_with("it is corrupt: rerun that shard"), "{err}");
        assert!(!out.exists());
    }
    std::fs::write(&manifest, &good).unwrap();
    let merged = ok(merge(&[s(&out), s(&p[0]), s(&p[1])]));
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert!(stderr.contains("labelled rows)"), "{stderr}");
}
