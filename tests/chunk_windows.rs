//! `--long chunk`: the windows against HF tokenizers' (tools/reference/chunk_reference.py),
//! and a chunked run's features, end to end, against the mean of its windows' [CLS]
//! vectors computed here through the library.

mod common;

use std::process::Command;

use bertcls::backend::cpu::CpuBackend;
use bertcls::batch::PackedBatch;
use bertcls::checkpoint::load_head;
use bertcls::chunk::WindowTokenizer;
use bertcls::head::softmax;
use bertcls::model::{Encoder, Keep, ModelDir};
use bertcls::tokenize::BertTokenizer;
use common::*;
use serde_json::Value;

fn tiny_model() -> std::path::PathBuf {
    fixtures().join("tiny/model")
}

#[test]
fn windows_match_hf_tokenizers() {
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny/chunk-windows.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases.len(), 16);
    for case in &cases {
        let (max_length, stride) = (
            case["max_length"].as_u64().unwrap() as usize,
            case["stride"].as_u64().unwrap() as usize,
        );
        let tok = BertTokenizer::from_dir(&tiny_model(), max_length).unwrap();
        let windows = WindowTokenizer::new(&tok, stride)
            .unwrap()
            .windows(case["text"].as_str().unwrap())
            .unwrap();
        let ours: Vec<Vec<u32>> = windows.into_iter().map(|w| w.ids).collect();
        let want: Vec<Vec<u32>> = serde_json::from_value(case["windows"].clone()).unwrap();
        assert_eq!(
            ours, want,
            "max_length {max_length} stride {stride}: {}",
            case["text"]
        );
    }
    let tok = BertTokenizer::from_dir(&tiny_model(), 8).unwrap();
    let err = WindowTokenizer::new(&tok, 6).err().unwrap().to_string();
    assert!(
        err.contains("--stride 6: windows of --max-length 8 hold 6 tokens"),
        "{err}"
    );
    // At --max-length 2 no stride is below the 0 tokens a window holds: the flag to
    // change is --max-length (it said "pass a stride below that").
    let tok = BertTokenizer::from_dir(&tiny_model(), 2).unwrap();
    let err = WindowTokenizer::new(&tok, 0).err().unwrap().to_string();
    assert_eq!(
        err,
        "--long chunk: windows of --max-length 2 hold no tokens besides [CLS] and [SEP]; pass --max-length 3 or more"
    );
}

/// A token can cover a whole word: BERT WordPiece makes one [UNK] of a word over 100
/// characters. Of 300 words of 120 letters, each followed by its number, HF tokenizers
/// (Python 0.x, the crate's wrapper, same tokenizer.json, max_length 8, stride 2) makes
/// 272 windows from 37,389 characters, the 64th [2, 622, 721, 1, 622, 722, 1, 3]. bertcls
/// tokenized only the first 64 * 8 = 512 characters and kept 1 window: every window it
/// keeps must be the whole text's, in order, exactly (ids are integers).
#[test]
fn the_first_windows_of_a_text_of_long_words_are_all_kept() {
    let text: String = (0..300)
        .map(|i| format!("{} {i}", "a".repeat(120)))
        .collect::<Vec<_>>()
        .join(" ");
    let tok = BertTokenizer::from_dir(&tiny_model(), 8).unwrap();
    let ours: Vec<Vec<u32>> = WindowTokenizer::new(&tok, 2)
        .unwrap()
        .windows(&text)
        .unwrap()
        .into_iter()
        .map(|w| w.ids)
        .collect();
    assert_eq!(ours.len(), bertcls::chunk::MAX_WINDOWS);
    assert_eq!(ours[63], [2, 622, 721, 1, 622, 722, 1, 3]);
    let mut hf = tokenizers::Tokenizer::from_file(tiny_model().join("tokenizer.json")).unwrap();
    hf.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 8,
        stride: 2,
        ..Default::default()
    }))
    .unwrap();
    let enc = hf.encode(text.as_str(), true).unwrap();
    let all: Vec<Vec<u32>> = std::iter::once(enc.get_ids().to_vec())
        .chain(enc.get_overflowing().iter().map(|o| o.get_ids().to_vec()))
        .collect();
    assert_eq!(all.len(), 272);
    assert_eq!(ours, all[..64]);
}

/// `train --long chunk` then `predict`: each text's feature is the mean of its windows'
/// [CLS] vectors, each window encoded alone here.
#[test]
fn a_chunked_run_predicts_from_the_mean_of_its_windows() {
    let dir = TempDir::new("chunk");
    let run = dir.join("run");
    let bin = env!("CARGO_BIN_EXE_bertcls");
    let (max_length, stride) = (12usize, 3usize);
    let common = |cmd: &str| {
        let mut c = Command::new(bin);
        c.arg(cmd)
            .args(["--device", "cpu"])
            .env("HF_HUB_OFFLINE", "1");
        c
    };
    ok(common("train")
        .args(["--model", tiny_model().to_str().unwrap()])
        .args([
            "--data",
            fixtures().join("data/tiny-dsdict").to_str().unwrap(),
        ])
        .args(["--max-length", "12", "--long", "chunk", "--stride", "3"])
        .args([
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--lr",
            "1e-2",
            "--log-every",
            "0",
        ])
        .args(["--cache-dir", dir.join("cache").to_str().unwrap()])
        .args(["--out", run.to_str().unwrap()])
        .output()
        .unwrap());
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["long"], serde_json::json!({"chunk": {"stride": 3}}));
    let best = load_head(&run.join("best.safetensors"), None).unwrap();
    assert_eq!(best.metadata["long"], "chunk:3");

    let texts = [
        "酒店位置很好，离地铁站很近，房间干净整洁，服务也很周到。",
        "好",
    ];
    let out = ok(common("predict")
        .args(["--run", run.to_str().unwrap(), "--json", "--no-calibration"])
        .args(texts)
        .output()
        .unwrap());
    let got = json_floats(&String::from_utf8_lossy(&out.stdout), "probs");

    let (config, weights) = ModelDir::open(&tiny_model()).unwrap().load().unwrap();
    let hidden = config.hidden_size;
    let mut enc = Encoder::new(CpuBackend::new(1).unwrap(), config, &weights, 512).unwrap();
    let tok = BertTokenizer::from_dir(&tiny_model(), max_length).unwrap();
    let windows = WindowTokenizer::new(&tok, stride).unwrap();
    let mut features = Vec::new();
    for text in texts {
        let ws = windows.windows(text).unwrap();
        assert!(
            text.chars().count() < 5 || ws.len() > 1,
            "the long text must need windows"
        );
        let mut mean = vec![0.0f64; hidden];
        for w in &ws {
            let cls = enc.forward(&PackedBatch::new([w]), Keep::Cls).unwrap().cls;
            for (m, v) in mean.iter_mut().zip(cls) {
                *m += v as f64 / ws.len() as f64;
            }
        }
        features.extend(mean.iter().map(|&v| v as f32));
    }
    // encode --long chunk gives the same features.
    let out = ok(common("encode")
        .args([
            "--model",
            tiny_model().to_str().unwrap(),
            "--max-length",
            "12",
        ])
        .args(["--long", "chunk", "--stride", "3", "--json"])
        .args(texts)
        .output()
        .unwrap());
    let encoded = json_floats(&String::from_utf8_lossy(&out.stdout), "cls").concat();
    assert!(max_abs_diff(&encoded, &features) < 1e-5);

    let want = softmax(&best.head.logits(&features), 2);
    assert_eq!(got.concat().len(), want.len(), "one row of 2 per text");
    // Windows batched together vs one at a time: GEMM blocking may differ by a few ulps.
    for (g, w) in got.iter().flatten().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

/// A chunked run whose cache holds the truncated features encodes only the texts with
/// several windows and takes the others' features from that entry: its cached chunk
/// features equal those of a chunked run that encoded every window (same tolerance as
/// above: rows packed with other rows).
#[test]
fn a_chunked_run_reuses_the_truncated_features_of_texts_that_fit() {
    let dir = TempDir::new("chunk-reuse");
    let train = |long: &str, cache: &str, out: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .arg("train")
            .args(["--device", "cpu", "--model", tiny_model().to_str().unwrap()])
            .args([
                "--data",
                fixtures().join("data/tiny-dsdict").to_str().unwrap(),
            ])
            .args(["--max-length", "24", "--long", long])
            // A stride beside truncation is refused.
            .args(if long == "chunk" {
                &["--stride", "3"][..]
            } else {
                &[]
            })
            .args(["--epochs", "1", "--log-every", "0"])
            .args(["--cache-dir", dir.join(cache).to_str().unwrap()])
            .args(["--out", dir.join(out).to_str().unwrap()])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let fresh = train("chunk", "fresh", "run-fresh");
    assert!(!fresh.contains("fit one window"), "{fresh}");
    train("truncate", "primed", "run-truncate");
    let reused = train("chunk", "primed", "run-reused");
    assert!(reused.contains("texts fit one window"), "{reused}");
    // At --max-length 24 the fixture's train split has both kinds (20 texts of one
    // window, 12 of several): both paths of the reuse are exercised.
    assert!(
        reused.contains("train: 20 of 32 texts fit one window"),
        "{reused}"
    );
    let entries = |cache: &str| {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(cache))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".safetensors"))
            .collect();
        names.sort();
        names
    };
    let chunk_entries = entries("fresh");
    assert!(!chunk_entries.is_empty());
    for name in &chunk_entries {
        let read = |cache: &str| {
            let bytes = std::fs::read(dir.join(cache).join(name)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let cls = st.tensor("cls").unwrap();
            (
                cls.shape().to_vec(),
                cls.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect::<Vec<f32>>(),
            )
        };
        let (fresh_shape, fresh_x) = read("fresh");
        let (reused_shape, reused_x) = read("primed");
        assert_eq!(fresh_shape, reused_shape);
        assert!(max_abs_diff(&fresh_x, &reused_x) < 1e-5, "{name:?}");
    }
}

/// A --stride the windows cannot hold is refused before the weights load (it was refused
/// after the "loaded" line, once the tokenizer was set to cut windows), for texts and for
/// a bulk --data job alike.
#[test]
fn a_bad_stride_is_refused_before_the_model_loads() {
    let dir = TempDir::new("stride");
    let model = tiny_model();
    let data = fixtures().join("data/tiny-dsdict");
    let out = dir.join("x.parquet");
    let flags = ["--max-length", "8", "--long", "chunk", "--stride", "6"];
    let texts: &[&str] = &["a text"];
    let bulk: &[&str] = &[
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for input in [texts, bulk] {
        let got = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args([
                "encode",
                "--device",
                "cpu",
                "--model",
                model.to_str().unwrap(),
            ])
            .args(flags)
            .args(input)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(!got.status.success());
        let err = String::from_utf8_lossy(&got.stderr);
        assert!(!err.contains("loaded "), "{err}");
        assert_eq!(
            err.lines().last().unwrap(),
            "error: --stride 6: windows of --max-length 8 hold 6 tokens besides [CLS] and [SEP]; pass a --stride below that, or a --max-length above 8",
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
