//! `train --features-from`: features made by `encode --data --shard K/N` workers taken
//! into the feature cache, so that training on a split encoded in shards encodes
//! nothing; and the refusal of files that are not this run's features (another model,
//! pooling or max_length, a missing or repeated shard, other texts, predictions).

mod common;

use common::{ok, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bertcls::checkpoint::load_head;
use serde_json::Value;

/// A text's feature depends on which texts share its encoder batch to summation order
/// only: shard-made and single-process features agree to the bulk tests' 1e-5. (On the
/// tiny model they came out bitwise equal, measured; a real model's need not.)
const FEATURE_TOL: f32 = 1e-5;
/// Training carries that difference through 12 AdamW steps of lr 1e-2. Adam's step is
/// about lr whatever the gradient's size, so features 1e-5 apart give heads far less
/// than a step apart; 1e-4 is ten times the feature tolerance and a hundredth of one
/// step, so a head that trained on other features or took other steps fails it.
const HEAD_TOL: f32 = 1e-4;

fn model_dir() -> PathBuf {
    common::fixtures().join("tiny/model")
}

fn dsdict() -> PathBuf {
    common::fixtures().join("data/tiny-dsdict")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn bertcls(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(args)
        .args(["--device", "cpu"])
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether a run printed the closing line of encoding a split (`encoded train: ...`).
fn encoded_any(out: &Output) -> bool {
    let err = stderr(out);
    err.contains("encoded train") || err.contains("encoded validation")
}

fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "bertcls succeeded: {}", stderr(out));
    let err = stderr(out);
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "{err}");
    last
}

/// `encode --data` of `split`, shard `k` of `n`, into `out`, with `extra` flags.
fn encode_shard(data: &Path, split: &str, k: usize, n: usize, out: &Path, extra: &[&str]) {
    let shard = format!("{k}/{n}");
    let model = model_dir();
    let mut args = vec![
        "encode",
        "--model",
        s(&model),
        "--data",
        s(data),
        "--split",
        split,
        "--shard",
        &shard,
        "--out",
        s(out),
        "--chunk-rows",
        "3",
    ];
    args.extend_from_slice(extra);
    ok(bertcls(&args));
}

/// `train` of the tiny model on the tiny data with `extra` flags: 3 epochs of 4 steps.
fn train(run: &Path, cache: &Path, extra: &[&str]) -> Output {
    train_model(&model_dir(), run, cache, extra)
}

fn train_model(model: &Path, run: &Path, cache: &Path, extra: &[&str]) -> Output {
    let data = dsdict();
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--data",
        s(&data),
        "--out",
        s(run),
        "--cache-dir",
        s(cache),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--json",
    ];
    // --search tries its own learning rates and refuses one given.
    if !extra.contains(&"--search") {
        args.extend_from_slice(&["--lr", "1e-2"]);
    }
    args.extend_from_slice(extra);
    bertcls(&args)
}

/// The cache's entries: file name and tensor, by name.
fn cache_entries(cache: &Path) -> Vec<(String, Vec<f32>)> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = common::read_tensors(&cache.join(&n));
            (n, t["cls"].f32.clone())
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn train_on_features_encoded_by_four_shards_encodes_nothing() {
    let dir = TempDir::new("shardfeat-import");
    // Four workers at once over train (parquet, unmerged), as a job array runs them;
    // validation in two safetensors shards, merged.
    let children: Vec<_> = (0..4)
        .map(|k| {
            let out = dir.join(format!("train-{k}.parquet"));
            let shard = format!("{k}/4");
            let child = Command::new(env!("CARGO_BIN_EXE_bertcls"))
                .args(["encode", "--model", s(&model_dir()), "--data", s(&dsdict())])
                .args(["--shard", &shard, "--out", s(&out), "--chunk-rows", "3"])
                .args(["--device", "cpu", "--threads", "1"])
                .env("HF_HUB_OFFLINE", "1")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (out, child)
        })
        .collect();
    let train_parts: Vec<PathBuf> = children
        .into_iter()
        .map(|(out, child)| {
            ok(child.wait_with_output().unwrap());
            out
        })
        .collect();
    let val_parts: Vec<PathBuf> = (0..2)
        .map(|k| {
            let out = dir.join(format!("val-{k}.safetensors"));
            encode_shard(&dsdict(), "validation", k, 2, &out, &[]);
            out
        })
        .collect();
    let val = dir.join("validation.safetensors");
    ok(Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["merge", s(&val), s(&val_parts[1]), s(&val_parts[0])])
        .output()
        .unwrap());
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("validation.safetensors.bulk.json")).unwrap(),
    )
    .unwrap();
    let ranges = manifest["ranges"].as_array().unwrap();
    // Shards 0..4 and 4..8 in chunks of 3 rows: 0..3, 3..4, 4..7, 7..8.
    let bounds: Vec<(u64, u64)> = ranges
        .iter()
        .map(|r| (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap()))
        .collect();
    assert_eq!(bounds, [(0, 3), (3, 4), (4, 7), (7, 8)]);

    let cache = dir.join("cache");
    let mut from = Vec::new();
    for p in train_parts.iter().rev().chain([&val]) {
        from.extend(["--features-from", s(p)]);
    }
    let run = dir.join("run-imported");
    let out = ok(train(&run, &cache, &from));
    let err = stderr(&out);
    assert!(
        err.contains("train: 32 cls features imported from 4 --features-from files"),
        "{err}"
    );
    assert!(
        err.contains("validation: 8 cls features imported from 1 --features-from file "),
        "{err}"
    );
    assert!(err.contains("(all from the cache)"), "{err}");
    assert!(!encoded_any(&out), "the import run encoded: {err}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["features_cached"], true);
    assert_eq!(summary["features_imported"], false);

    // A later run without the files reads the same entries.
    let again = ok(train(&dir.join("run-again"), &cache, &[]));
    assert!(stderr(&again).contains("(all from the cache)"));

    // A run that encodes itself, into its own cache: the same two entries (so the import
    // used train's own keys), features within the batch tolerance, heads within HEAD_TOL.
    let own_cache = dir.join("own-cache");
    let own = ok(train(&dir.join("run-own"), &own_cache, &[]));
    assert!(stderr(&own).contains("(encoded)"), "{}", stderr(&own));
    let imported = cache_entries(&cache);
    let encoded = cache_entries(&own_cache);
    assert_eq!(imported.len(), 2);
    assert_eq!(encoded.len(), 2);
    for ((name_i, x_i), (name_e, x_e)) in imported.iter().zip(&encoded) {
        assert_eq!(name_i, name_e);
        assert!(x_i.len() == 32 * 32 || x_i.len() == 8 * 32, "{}", x_i.len());
        let d = max_diff(x_i, x_e);
        assert!(d <= FEATURE_TOL, "{name_i}: features differ by {d}");
    }
    for ckpt in ["last.safetensors", "best.safetensors"] {
        let a = load_head(&run.join(ckpt), Some(32)).unwrap().head;
        let b = load_head(&dir.join("run-own").join(ckpt), Some(32))
            .unwrap()
            .head;
        let d = max_diff(&a.weight, &b.weight).max(max_diff(&a.bias, &b.bias));
        assert!(d <= HEAD_TOL, "{ckpt}: heads differ by {d}");
    }
    // The heads did train, so agreeing within HEAD_TOL says something: the 8 steps of
    // lr 1e-2 after epoch 1 moved the head far beyond the tolerance.
    let first = load_head(&run.join("head-epoch-1.safetensors"), Some(32))
        .unwrap()
        .head;
    let last = load_head(&run.join("last.safetensors"), Some(32))
        .unwrap()
        .head;
    assert!(max_diff(&first.weight, &last.weight) > 10.0 * HEAD_TOL);
}

#[test]
fn features_that_are_not_this_runs_are_refused_before_encoding() {
    let dir = TempDir::new("shardfeat-refuse");
    let part = |name: &str, k: usize, n: usize, extra: &[&str]| {
        let out = dir.join(name);
        encode_shard(&dsdict(), "train", k, n, &out, extra);
        out
    };
    let quarters: Vec<PathBuf> = (0..4)
        .map(|k| part(&format!("q{k}.parquet"), k, 4, &[]))
        .collect();
    let cache = dir.join("cache");
    let refused_with = |model: &Path, files: &[&Path]| {
        let mut args = Vec::new();
        for f in files {
            args.extend(["--features-from", s(f)]);
        }
        let out = train_model(model, &dir.join("run"), &cache, &args);
        let err = error_line(&out);
        assert!(!encoded_any(&out), "{}", stderr(&out));
        assert!(
            cache_entries(&cache).is_empty(),
            "a refused import stored features"
        );
        assert!(!dir.join("run").exists(), "a refused run left its folder");
        err
    };
    let refused = |files: &[&Path]| refused_with(&model_dir(), files);
    let q: Vec<&Path> = quarters.iter().map(PathBuf::as_path).collect();

    let short = part("short.parquet", 0, 1, &["--max-length", "64"]);
    let err = refused(&[&short]);
    assert!(
        err.contains(&format!("{} was encoded with other settings", s(&short))),
        "{err}"
    );
    assert!(err.contains("--max-length (file: 64, train: 350)"), "{err}");
    // The tokenizer's fingerprint covers max_length too, so both are named.
    assert!(err.contains("tokenizer fingerprint (file: "), "{err}");

    let mean = part("mean.safetensors", 0, 1, &["--pooling", "mean"]);
    let err = refused(&[&mean]);
    assert!(err.contains("--pooling (file: mean, train: cls)"), "{err}");
    // A search names every pooling it would take, not only its first.
    let err = error_line(&train_model(
        &model_dir(),
        &dir.join("run"),
        &cache,
        &[
            "--search",
            "--pooling",
            "cls,cls+mean",
            "--features-from",
            s(&mean),
        ],
    ));
    assert!(
        err.contains("--pooling (file: mean, train: cls,cls+mean)"),
        "{err}"
    );
    assert!(cache_entries(&cache).is_empty());

    let other_model = common::fixtures().join("tiny/model-f16-prefixed");
    let err = refused_with(&other_model, &q);
    assert!(err.contains("model weights sha256 (file: "), "{err}");

    let err = refused(&[q[0], q[1], q[3]]);
    assert_eq!(
        err,
        "error: rows 16..24 of split \"train\" are in none of the --features-from files: pass that shard's output too"
    );
    let half = part("h0.parquet", 0, 2, &[]);
    let err = refused(&[q[0], q[1], q[2], q[3], &half]);
    assert!(err.contains("overlaps"), "{err}");

    // Other texts with the same split name and row count: row 5 changed, so the chunk
    // of rows 3..6 (--chunk-rows 3) hashes differently.
    let texts =
        std::fs::read_to_string(common::fixtures().join("data/tiny-files/train.jsonl")).unwrap();
    let edited: Vec<String> = texts
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut row: Value = serde_json::from_str(l).unwrap();
            if i == 5 {
                row["text"] = format!("{}!", row["text"].as_str().unwrap()).into();
            }
            row.to_string()
        })
        .collect();
    let other_data = dir.join("other");
    std::fs::create_dir_all(&other_data).unwrap();
    std::fs::write(other_data.join("train.jsonl"), edited.join("\n") + "\n").unwrap();
    let other = dir.join("other.parquet");
    encode_shard(&other_data, "train", 0, 1, &other, &[]);
    let err = refused(&[&other]);
    assert_eq!(
        err,
        format!("error: {}: the texts of rows 3..6 of split \"train\" differ from this run's (other data, or another --text-column): encode this run's --data", s(&other))
    );

    let test_split = dir.join("test.parquet");
    encode_shard(&dsdict(), "test", 0, 1, &test_split, &[]);
    let err = refused(&[&test_split]);
    assert!(
        err.contains("holds split \"test\"; this run uses \"train\" and \"validation\""),
        "{err}"
    );

    std::fs::remove_file(dir.join("q2.parquet.bulk.json")).unwrap();
    let err = refused(&q);
    assert!(err.contains("not a finished bulk encode output"), "{err}");

    let err = error_line(&train(
        &dir.join("run"),
        &cache,
        &["--features-from", s(q[0]), "--no-cache"],
    ));
    assert!(err.contains("--no-cache"), "{err}");
}

/// A NaN in a shard's features would end in a NaN loss at the first step, blamed on
/// --lr; it is refused at import, naming the file and the row, before anything is
/// stored, encoded or kept.
#[test]
fn a_non_finite_feature_in_a_file_is_refused() {
    let dir = TempDir::new("shardfeat-nan");
    let file = dir.join("train.safetensors");
    encode_shard(&dsdict(), "train", 0, 1, &file, &[]);
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // `cls.000000000003` holds rows 3..6 (--chunk-rows 3); its second row's first float.
    let tensor = &header["cls.000000000003"];
    let width = tensor["shape"][1].as_u64().unwrap() as usize;
    let at = 8 + n + tensor["data_offsets"][0].as_u64().unwrap() as usize + 4 * width;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();

    let cache = dir.join("cache");
    let out = train(&dir.join("run"), &cache, &["--features-from", s(&file)]);
    assert_eq!(
        error_line(&out),
        format!("error: {}: row 4 holds a non-finite feature (NaN): the encode that wrote it went wrong; encode that shard again, or train without --features-from", s(&file))
    );
    assert!(!encoded_any(&out), "{}", stderr(&out));
    assert!(
        cache_entries(&cache).is_empty(),
        "the NaN features were stored"
    );
    assert!(!dir.join("run").exists(), "a refused run left its folder");
}

#[test]
fn a_search_over_both_poolings_imports_the_features_of_each() {
    let dir = TempDir::new("shardfeat-search");
    let mut args = vec!["--search", "--pooling", "cls,mean"];
    let mut files = Vec::new();
    for pooling in ["cls", "mean"] {
        for split in ["train", "validation"] {
            let out = dir.join(format!("{split}-{pooling}.parquet"));
            encode_shard(&dsdict(), split, 0, 1, &out, &["--pooling", pooling]);
            files.push(out);
        }
    }
    for f in &files {
        args.extend(["--features-from", s(f)]);
    }
    let cache = dir.join("cache");
    let out = ok(train(&dir.join("run"), &cache, &args));
    let err = stderr(&out);
    for (split, rows) in [("train", 32), ("validation", 8)] {
        for pooling in ["cls", "mean"] {
            let line =
                format!("{split}: {rows} {pooling} features imported from 1 --features-from file ");
            assert!(err.contains(&line), "{err}");
        }
    }
    assert!(!encoded_any(&out), "the search encoded: {err}");
    // Four entries (two splits, two poolings), and trials of both poolings ran on them.
    assert_eq!(cache_entries(&cache).len(), 4);
    let search: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/search.json")).unwrap())
            .unwrap();
    let poolings: std::collections::BTreeSet<&str> = search
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pooling"].as_str().unwrap())
        .collect();
    assert_eq!(poolings.into_iter().collect::<Vec<_>>(), ["cls", "mean"]);
}

/// Finite garbage written over an encode output's features (same size) would train a
/// head on it and store it in the cache: each range's features_sha256 refuses it, in
/// one line naming the file and the rows, before anything is stored. The untouched
/// file imports as before; a manifest of a bertcls before feature hashes (none) is
/// taken unchecked.
#[test]
fn features_changed_since_encode_are_refused() {
    let dir = TempDir::new("shardfeat-sum");
    let file = dir.join("train.safetensors");
    encode_shard(&dsdict(), "train", 0, 1, &file, &[]);
    let good = std::fs::read(&file).unwrap();
    let mut bytes = good.clone();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // `cls.000000000003` holds rows 3..6 (--chunk-rows 3).
    let offsets = &header["cls.000000000003"]["data_offsets"];
    let from = 8 + n + offsets[0].as_u64().unwrap() as usize;
    let to = 8 + n + offsets[1].as_u64().unwrap() as usize;
    for at in (from..to).step_by(4) {
        bytes[at..at + 4].copy_from_slice(&0.25f32.to_le_bytes());
    }
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(bytes.len(), good.len());

    let cache = dir.join("cache");
    let out = train(&dir.join("run"), &cache, &["--features-from", s(&file)]);
    assert_eq!(
        error_line(&out),
        format!("error: {}: the features of rows 3..6 do not hash to the features_sha256 its manifest gives (they changed after encode wrote them): encode that shard again", s(&file))
    );
    assert!(!encoded_any(&out), "{}", stderr(&out));
    assert!(cache_entries(&cache).is_empty(), "the garbage was stored");
    assert!(!dir.join("run").exists(), "a refused run left its folder");

    // A manifest without feature hashes (written before they were) cannot be checked.
    let manifest_path = dir.join("train.safetensors.bulk.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let mut old: Value = serde_json::from_str(&manifest).unwrap();
    for r in old["ranges"].as_array_mut().unwrap() {
        assert!(r["features_sha256"].is_string(), "{r}");
        r.as_object_mut().unwrap().remove("features_sha256");
    }
    std::fs::write(&manifest_path, old.to_string()).unwrap();
    let old_cache = dir.join("old-cache");
    ok(train(
        &dir.join("run-old"),
        &old_cache,
        &["--features-from", s(&file)],
    ));
    // Train's 32 rows imported (validation's 8 encoded), garbage and all.
    let entries = cache_entries(&old_cache);
    let train_x = &entries.iter().find(|e| e.1.len() == 32 * 32).unwrap().1;
    assert_eq!(train_x[3 * 32..6 * 32], [0.25f32; 96]);

    // Untouched, it imports and is what train would have encoded itself.
    std::fs::write(&file, &good).unwrap();
    std::fs::write(&manifest_path, manifest).unwrap();
    let out = ok(train(
        &dir.join("run-ok"),
        &cache,
        &["--features-from", s(&file)],
    ));
    assert!(!stderr(&out).contains("encoded train"), "{}", stderr(&out));
    let imported = cache_entries(&cache);
    let own_cache = dir.join("own-cache");
    let own = train(&dir.join("run-own"), &own_cache, &[]);
    ok(own);
    let encoded = cache_entries(&own_cache);
    assert_eq!(imported.len(), encoded.len());
    for (i, e) in imported.iter().zip(&encoded) {
        assert_eq!(i.0, e.0);
        assert!(max_diff(&i.1, &e.1) <= FEATURE_TOL);
    }
}

/// Chunked features bulk-encoded before the window fix (their manifest records no
/// window revision) hold too few windows for long texts: `train --features-from` and
/// `merge` refuse them, naming the file and saying to encode it again, while outputs
/// made now record the revision and import; truncated outputs never record one.
#[test]
fn chunked_features_of_another_window_revision_are_refused() {
    let dir = TempDir::new("shardfeat-windows");
    let cache = dir.join("cache");
    let chunk = ["--long", "chunk", "--stride", "64"];
    let out = dir.join("chunk.parquet");
    encode_shard(&dsdict(), "train", 0, 1, &out, &chunk);
    let manifest_of = |p: &Path| PathBuf::from(format!("{}.bulk.json", s(p)));
    let read = |p: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(manifest_of(p)).unwrap()).unwrap()
    };
    assert_eq!(read(&out)["identity"]["model"]["windows"], 2);
    let truncated = dir.join("truncated.parquet");
    encode_shard(&dsdict(), "train", 0, 1, &truncated, &[]);
    assert!(read(&truncated)["identity"]["model"]
        .get("windows")
        .is_none());

    let rewritten = |windows: Option<u64>| {
        let mut m = read(&out);
        let model = m["identity"]["model"].as_object_mut().unwrap();
        match windows {
            Some(w) => model.insert("windows".into(), w.into()),
            None => model.remove("windows"),
        };
        std::fs::write(manifest_of(&out), m.to_string()).unwrap();
    };
    for (windows, said) in [
        (None, "no recorded window revision"),
        (Some(1), "window revision 1"),
    ] {
        rewritten(windows);
        let mut args = vec!["--features-from", s(&out)];
        args.extend_from_slice(&chunk);
        let refused = train(&dir.join("run"), &cache, &args);
        let err = error_line(&refused);
        assert_eq!(
            err,
            format!("error: {}: its chunked features were cut into windows by {said} (this bertcls cuts by revision 2; before it, texts lost windows): encode it again", s(&out))
        );
        assert!(!encoded_any(&refused), "{}", stderr(&refused));

        let merged = dir.join("merged.parquet");
        let out_merge = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args(["merge", s(&merged), s(&out)])
            .output()
            .unwrap();
        assert!(error_line(&out_merge).contains("encode it again"));
    }
    rewritten(Some(2));
    let mut args = vec!["--features-from", s(&out)];
    args.extend_from_slice(&chunk);
    let imported = train(&dir.join("run"), &cache, &args);
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(
        stderr(&imported).contains("train: 32 cls features imported"),
        "{}",
        stderr(&imported)
    );
}

/// A feature cache that cannot be written (here a regular file, which stops root too)
/// costs an import what it costs plain `train`: a warning, and the imported features
/// used from memory, not a failed run.
#[test]
fn features_from_with_an_unwritable_cache_warns_and_trains_on_them() {
    let dir = TempDir::new("shard-unwritable-cache");
    let (train_out, val_out) = (dir.join("train.parquet"), dir.join("val.parquet"));
    encode_shard(&dsdict(), "train", 0, 1, &train_out, &[]);
    encode_shard(&dsdict(), "validation", 0, 1, &val_out, &[]);
    let cache = dir.join("cache-is-a-file");
    std::fs::write(&cache, "not a folder").unwrap();
    let from = [
        "--features-from",
        s(&train_out),
        "--features-from",
        s(&val_out),
    ];
    let out = ok(train(&dir.join("run"), &cache, &from));
    let err = stderr(&out);
    assert_eq!(
        err.matches("warning: cannot store features in the cache")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains(
            "train: 32 cls features imported from 1 --features-from file for this run only"
        ),
        "{err}"
    );
    assert!(!encoded_any(&out), "the import run encoded: {err}");
    // Held in memory, not cached: the summary says so rather than "from the cache".
    assert!(
        err.contains(
            "(none encoded; --features-from held in memory, the cache could not take them)"
        ),
        "{err}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["features_cached"], false);
    assert_eq!(summary["features_imported"], true);
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), "not a folder");
}

/// A manifest that is not a JSON object was read as one of no kind ("the output of bulk
/// null"), and one that is not JSON named no remedy: both say the shard is corrupt.
#[test]
fn a_damaged_manifest_says_to_encode_the_shard_again() {
    let dir = TempDir::new("shardfeat-manifest");
    let file = dir.join("train.safetensors");
    encode_shard(&dsdict(), "train", 0, 1, &file, &[]);
    let manifest = dir.join("train.safetensors.bulk.json");
    for (damage, why) in [
        ("null", "is not a bertcls bulk manifest (a JSON object)"),
        ("[1]", "is not a bertcls bulk manifest (a JSON object)"),
        ("{", "is not valid JSON"),
    ] {
        std::fs::write(&manifest, damage).unwrap();
        let out = train(
            &dir.join("run"),
            &dir.join("cache"),
            &["--features-from", s(&file)],
        );
        let err = error_line(&out);
        assert!(
            err.starts_with(&format!("error: {} {why}", s(&manifest))),
            "{err}"
        );
        assert!(
            err.ends_with("it is corrupt: encode that shard again"),
            "{err}"
        );
        assert!(!dir.join("run").exists(), "a refused run left its folder");
    }
}
