//! `--long chunk`: the windows against HF tokenizers' (tools/reference/chunk_reference.py),
//! and a chunked run's features, end to end, against the mean of its windows' [CLS]
//! vectors computed here through the library.

mod common;

use std::path::Path;
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
}

/// `train --long chunk` then `predict`: each text's feature is the mean of its windows'
/// [CLS] vectors, each window encoded alone here.
#[test]
fn a_chunked_run_predicts_from_the_mean_of_its_windows() {
    let dir = std::env::temp_dir().join(format!("bertcls-chunk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    let out = common("train")
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
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["long"], serde_json::json!({"chunk": {"stride": 3}}));
    let best = load_head(&run.join("best.safetensors"), None).unwrap();
    assert_eq!(best.metadata["long"], "chunk:3");

    let texts = [
        "酒店位置很好，离地铁站很近，房间干净整洁，服务也很周到。",
        "好",
    ];
    let out = common("predict")
        .args(["--run", run.to_str().unwrap(), "--json", "--no-calibration"])
        .args(texts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<Vec<f32>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_value(serde_json::from_str::<Value>(l).unwrap()["probs"].clone())
                .unwrap()
        })
        .collect();

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
    let out = common("encode")
        .args([
            "--model",
            tiny_model().to_str().unwrap(),
            "--max-length",
            "12",
        ])
        .args(["--long", "chunk", "--stride", "3", "--json"])
        .args(texts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encoded: Vec<f32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| {
            serde_json::from_value::<Vec<f32>>(
                serde_json::from_str::<Value>(l).unwrap()["cls"].clone(),
            )
            .unwrap()
        })
        .collect();
    assert!(max_abs_diff(&encoded, &features) < 1e-5);

    let want = softmax(&best.head.logits(&features), 2);
    // Windows batched together vs one at a time: GEMM blocking may differ by a few ulps.
    for (g, w) in got.iter().flatten().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
