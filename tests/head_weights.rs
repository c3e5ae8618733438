//! A head runs only on the weights it was trained on: `predict`, `test` and `encode`
//! compare the weights' sha256 with the one its run.json or checkpoint records.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the tiny model folder in `dir`, which a test may change under its run.
fn copy_tiny(dir: &TempDir) -> PathBuf {
    let model = dir.join("model");
    copy_files(&fixtures().join("tiny/model"), &model);
    model
}

/// Zeroes the values of the last layer's tensors in place: the file keeps its size,
/// header and tensor names, as a fine-tuned copy of the same architecture would.
fn zero_last_layer(weights: &Path) {
    let mut bytes = std::fs::read(weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = 8 + header_len;
    let mut zeroed = 0;
    for (name, tensor) in header.as_object().unwrap() {
        if name.contains("encoder.layer.1.") {
            let offsets = &tensor["data_offsets"];
            let (start, end) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
            bytes[data + start as usize..data + end as usize].fill(0);
            zeroed += 1;
        }
    }
    assert!(
        zeroed > 0,
        "no tensor of encoder.layer.1 in {}",
        weights.display()
    );
    std::fs::write(weights, bytes).unwrap();
}

#[test]
fn other_weights_under_a_run_or_head_are_refused_naming_both_files() {
    let dir = TempDir::new("head-weights-changed");
    let model = copy_tiny(&dir);
    let run = train_run_on(
        &dir.0,
        "run",
        &model,
        &fixtures().join("data/tiny-dsdict"),
        &[],
    );
    let data = fixtures().join("data/tiny-dsdict");
    let weights = model.join("model.safetensors");
    let (run_json, best) = (run.join("run.json"), run.join("best.safetensors"));
    let (r, b, m) = (s(&run), s(&best), s(&model));
    let uses: [Vec<&str>; 5] = [
        vec!["predict", "--run", r, "好"],
        vec!["test", "--run", r, "--no-cache"],
        vec!["encode", "--run", r, "好"],
        vec!["predict", "--head", b, "好"],
        vec![
            "test",
            "--head",
            b,
            "--model",
            m,
            "--data",
            s(&data),
            "--no-cache",
        ],
    ];
    for args in &uses {
        ok(bertcls_cpu(args));
    }

    zero_last_layer(&weights);
    for args in &uses {
        let err = refusal(args);
        let record = if args.contains(&"--head") {
            &best
        } else {
            &run_json
        };
        assert!(
            err.contains(&format!(
                "{} has other weights than the ones {} was trained on",
                weights.display(),
                record.display()
            )) && err.contains("pass --model with the folder of the weights it was trained on"),
            "{args:?}: {err}"
        );
    }
}
