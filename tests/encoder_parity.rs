//! The CPU encoder against HF transformers (fp32, eager attention): every hidden state of
//! a tiny random BERT, and [CLS] of real checkpoints. Fixtures: tools/reference/make_fixtures.py.

mod common;

use bertcls::backend::cpu::CpuBackend;
use bertcls::batch::PackedBatch;
use bertcls::model::{Checkpoint, Encoder, FeatureEncoder, Keep, ModelDir, Pooling};
use bertcls::tokenize::TokenizedText;
use common::*;

/// HF computes in fp32 too; the differences are summation order in GEMMs and our
/// polynomial erf/exp (< 2e-7 each). 1e-4 absolute on activations of order 1 (the issue's
/// bound for the tiny model) leaves room for that and nothing else.
const TINY_TOL: f32 = 1e-4;

/// Through `Encoder::load`, the commands' path (each tensor read straight into the
/// backend), which must give exactly the floats of `Encoder::new` on host weights: the
/// same weights and the same ops.
fn check_all_hidden_states(model: &str, reference: &str) {
    let dir = ModelDir::open(&fixtures().join(model)).unwrap();
    let (config, weights) = dir.load().unwrap();
    let r = read_tensors(&fixtures().join(reference));
    let texts = unpad(&r);
    let (c, l) = (config.hidden_size, r["input_ids"].shape[1]);
    let layers = config.num_hidden_layers;
    let ckpt = Checkpoint::open(&dir.dir).unwrap();
    let mut enc = Encoder::load(CpuBackend::new(2).unwrap(), config.clone(), &ckpt, 1024).unwrap();
    let batch = PackedBatch::new(&texts);
    let out = enc.forward(&batch, Keep::AllHiddenStates).unwrap();
    let mut from_host = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 1024).unwrap();
    let host_out = from_host.forward(&batch, Keep::AllHiddenStates).unwrap();
    assert_eq!(
        out.hidden_states, host_out.hidden_states,
        "{model}: Encoder::load and Encoder::new differ"
    );
    assert_eq!(out.hidden_states.len(), layers + 1);
    for (layer, ours) in out.hidden_states.iter().enumerate() {
        let want = &r[&format!("hidden_states.{layer}")].f32;
        for (i, t) in texts.iter().enumerate() {
            let n = t.ids.len();
            let start = batch.offsets[i];
            let got = &ours[start * c..(start + n) * c];
            let exp = &want[i * l * c..(i * l + n) * c];
            let d = max_abs_diff(got, exp);
            assert!(
                d < TINY_TOL,
                "{model}: layer {layer} text {i}: max |diff| {d:e}"
            );
        }
    }
    assert!(max_abs_diff(&out.cls, &r["cls"].f32) < TINY_TOL);
    // The [CLS]-only path (last layer for one row per text) gives the same vectors.
    let cls_only = enc.forward(&batch, Keep::Cls).unwrap();
    let d = max_abs_diff(&cls_only.cls, &r["cls"].f32);
    assert!(d < TINY_TOL, "{model}: [CLS]-only path off by {d:e}");
}

#[test]
fn tiny_f32_every_hidden_state_matches_transformers() {
    check_all_hidden_states("tiny/model", "tiny/reference.safetensors");
}

/// `--pooling mean` against HF's last hidden state mean-pooled over the attention mask in
/// Python (tools/reference/mean_pool_reference.py), texts of 2 to 40 tokens in one batch.
#[test]
fn tiny_mean_pooling_matches_transformers() {
    let dir = ModelDir::open(&fixtures().join("tiny/model")).unwrap();
    let (config, weights) = dir.load().unwrap();
    let r = read_tensors(&fixtures().join("tiny/reference.safetensors"));
    let want = read_tensors(&fixtures().join("tiny/mean-pooled.safetensors"));
    let texts = unpad(&r);
    let mut enc = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 1024).unwrap();
    let out = enc.forward(&PackedBatch::new(&texts), Keep::Mean).unwrap();
    // A mean of hidden states each within TINY_TOL of HF's is within TINY_TOL too.
    let d = max_abs_diff(&out.mean, &want["mean"].f32);
    assert!(d < TINY_TOL, "mean pooling off by {d:e}");
    // The full last layer gives the same [CLS] rows as the [CLS]-only one.
    let d = max_abs_diff(&out.cls, &r["cls"].f32);
    assert!(d < TINY_TOL, "[CLS] beside mean pooling off by {d:e}");
}

/// `--pooling cls+mean-last2` (and `mean-last2`): each layer's [CLS] and mean, the earlier
/// layer first, against the same pooling done on HF's `hidden_states` (within TINY_TOL,
/// the hidden states' own bound: a mean of values each within it stays within it).
#[test]
fn tiny_pooling_of_the_last_layers_matches_transformers_hidden_states() {
    let dir = ModelDir::open(&fixtures().join("tiny/model")).unwrap();
    let (config, weights) = dir.load().unwrap();
    let (c, layers) = (config.hidden_size, config.num_hidden_layers);
    assert_eq!(layers, 2, "the fixture pools both of its layers");
    let r = read_tensors(&fixtures().join("tiny/reference.safetensors"));
    let l = r["input_ids"].shape[1];
    let texts = unpad(&r);
    let batch = PackedBatch::new(&texts);
    // HF's [CLS] and mean of layer `layer` (1-based: hidden_states.0 is the embeddings).
    let hf = |layer: usize, i: usize| -> (Vec<f32>, Vec<f32>) {
        let h = &r[&format!("hidden_states.{layer}")].f32;
        let n = texts[i].ids.len();
        let row = |t: usize| &h[(i * l + t) * c..(i * l + t + 1) * c];
        let mut mean = vec![0f32; c];
        for t in 0..n {
            for (m, v) in mean.iter_mut().zip(row(t)) {
                *m += v / n as f32;
            }
        }
        (row(0).to_vec(), mean)
    };
    let mut enc = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 1024).unwrap();
    for (name, with_cls) in [("cls+mean-last2", true), ("mean-last2", false)] {
        let pooling: Pooling = name.parse().unwrap();
        let x = enc.encode_batch(&batch, pooling).unwrap();
        let w = pooling.width(c);
        assert_eq!(x.len(), texts.len() * w, "{name}");
        for i in 0..texts.len() {
            let want: Vec<f32> = (1..=layers)
                .flat_map(|layer| {
                    let (cls, mean) = hf(layer, i);
                    if with_cls {
                        [cls, mean].concat()
                    } else {
                        mean
                    }
                })
                .collect();
            let d = max_abs_diff(&x[i * w..(i + 1) * w], &want);
            assert!(d < TINY_TOL, "{name}: text {i} off HF's by {d:e}");
        }
    }
}

/// A search over several poolings runs one forward of the widest and takes each one's
/// features from it (`Pooling::take_from`): exactly the floats of each one's own forward,
/// `cls` too on the CPU, whose [CLS]-only last layer gives the whole layer's [CLS] rows.
/// The reference texts and texts of 17 to 300 tokens: past 16 tokens the gemm crate
/// scores one query row with other kernels than a block of rows.
#[test]
fn poolings_taken_from_the_widest_forward_are_their_own_forwards_floats() {
    let dir = ModelDir::open(&fixtures().join("tiny/model")).unwrap();
    let (config, weights) = dir.load().unwrap();
    let c = config.hidden_size;
    let mut texts = unpad(&read_tensors(
        &fixtures().join("tiny/reference.safetensors"),
    ));
    texts.extend([17, 40, 129, 300].map(|n: u32| TokenizedText {
        ids: (0..n).map(|i| (i * 37 + n) % 700 + 5).collect(),
        type_ids: vec![0; n as usize],
    }));
    let batch = PackedBatch::new(&texts);
    let mut enc = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 1024).unwrap();
    let widest = enc
        .encode_batch(&batch, "cls+mean-last2".parse().unwrap())
        .unwrap();
    for name in [
        "cls",
        "mean",
        "cls+mean",
        "cls-last2",
        "mean-last2",
        "cls+mean-last2",
    ] {
        let pooling: Pooling = name.parse().unwrap();
        let own = enc.encode_batch(&batch, pooling).unwrap();
        assert_eq!(pooling.take_from(&widest, c, 2), own, "{name}");
    }
}

/// `--pooling cls+mean`: each text's [CLS] then its mean, side by side (2C), each half
/// HF's within TINY_TOL, and exactly the two vectors of the one forward it comes from.
#[test]
fn tiny_cls_mean_pooling_is_cls_then_mean_of_transformers() {
    let dir = ModelDir::open(&fixtures().join("tiny/model")).unwrap();
    let (config, weights) = dir.load().unwrap();
    let c = config.hidden_size;
    let r = read_tensors(&fixtures().join("tiny/reference.safetensors"));
    let want = read_tensors(&fixtures().join("tiny/mean-pooled.safetensors"));
    let texts = unpad(&r);
    let batch = PackedBatch::new(&texts);
    let mut enc = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 1024).unwrap();
    let both = enc.encode_batch(&batch, Pooling::CLS_MEAN).unwrap();
    assert_eq!(both.len(), texts.len() * 2 * c);
    let out = enc.forward(&batch, Keep::Mean).unwrap();
    for (i, row) in both.chunks_exact(2 * c).enumerate() {
        let (cls, mean) = row.split_at(c);
        assert_eq!(cls, &out.cls[i * c..(i + 1) * c], "text {i}: [CLS] half");
        assert_eq!(mean, &out.mean[i * c..(i + 1) * c], "text {i}: mean half");
        let d = max_abs_diff(cls, &r["cls"].f32[i * c..(i + 1) * c]);
        assert!(d < TINY_TOL, "text {i}: [CLS] half off HF's by {d:e}");
        let d = max_abs_diff(mean, &want["mean"].f32[i * c..(i + 1) * c]);
        assert!(d < TINY_TOL, "text {i}: mean half off HF's by {d:e}");
    }
}

#[test]
fn tiny_f16_prefixed_legacy_names_match_transformers() {
    check_all_hidden_states("tiny/model-f16-prefixed", "tiny/reference-f16.safetensors");
}

/// A text's [CLS] must not depend on its batch: alone, or packed with others in any order.
/// Only rounding may differ, if a row's place in the kernels' tiles (a full or an edge
/// tile) ever changed the order of its sums; with today's packed kernels, whose sums run
/// in one fixed K order per row, the outputs measured bit-identical (2026-11-29; 1.2e-6
/// when the dense layers used the `gemm` crate, whose blocking follows the matrix size).
/// A leak between texts (attention across a boundary, a wrong offset) would show at 1e-2.
#[test]
fn cls_is_independent_of_batch_composition() {
    let dir = ModelDir::open(&fixtures().join("tiny/model")).unwrap();
    let (config, weights) = dir.load().unwrap();
    let c = config.hidden_size;
    let r = read_tensors(&fixtures().join("tiny/reference.safetensors"));
    let texts = unpad(&r);
    let mut enc = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 1024).unwrap();
    let together = enc
        .forward(&PackedBatch::new(texts.iter().rev()), Keep::Cls)
        .unwrap()
        .cls;
    let n = texts.len();
    for (i, t) in texts.iter().enumerate() {
        let alone = enc.forward(&PackedBatch::new([t]), Keep::Cls).unwrap().cls;
        let row = n - 1 - i;
        let d = max_abs_diff(&alone, &together[row * c..(row + 1) * c]);
        assert!(d < 1e-5, "text {i}: alone vs packed differ by {d:e}");
    }
}

/// A real checkpoint's folder: `$env` if set, else `models/<name>` (scripts/fetch-models.sh).
fn real_model(env: &str, name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os(env)
        .map(Into::into)
        .unwrap_or_else(|| repo().join("models").join(name));
    dir.join("model.safetensors").is_file().then_some(dir)
}

/// Real pretrained weights have larger activations than the tiny model (hidden states of
/// order 1-10 after 6-12 layers), so fp32 summation-order differences grow: the issue's
/// bound for real checkpoints is 2e-4 absolute on every hidden state of every real token.
const REAL_TOL: f32 = 2e-4;

fn check_real_model(env: &str, name: &str, fixture: &str) {
    let Some(dir) = real_model(env, name) else {
        skip_unless(
            false,
            &format!("{name} not found (set {env} or run scripts/fetch-models.sh)"),
        );
        return;
    };
    let r = read_tensors(&fixtures().join(fixture).join("reference.safetensors"));
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(fixture).join("texts.json")).unwrap(),
    )
    .unwrap();
    let want_tokens = unpad(&r);
    let tok = bertcls::tokenize::BertTokenizer::from_dir(&dir, 350).unwrap();
    let ours = tok.encode_many(&texts).unwrap();
    for (i, (a, b)) in ours.iter().zip(&want_tokens).enumerate() {
        assert_eq!(a.ids, b.ids, "{name}: ids of text {i}");
    }
    let model = ModelDir::open(&dir).unwrap();
    let (config, weights) = model.load().unwrap();
    let (c, l) = (config.hidden_size, r["input_ids"].shape[1]);
    let mut enc = Encoder::new(CpuBackend::new(2).unwrap(), config, &weights, 4096).unwrap();
    let batch = PackedBatch::new(&ours);
    let out = enc.forward(&batch, Keep::AllHiddenStates).unwrap();
    let last = out.hidden_states.last().unwrap();
    let want = &r["last_hidden_state"].f32;
    for (i, t) in ours.iter().enumerate() {
        let (n, start) = (t.ids.len(), batch.offsets[i]);
        let d = max_abs_diff(
            &last[start * c..(start + n) * c],
            &want[i * l * c..(i * l + n) * c],
        );
        assert!(
            d < REAL_TOL,
            "{name}: text {i} last hidden state off by {d:e}"
        );
    }
    let cls = enc.forward(&batch, Keep::Cls).unwrap().cls;
    let d = max_abs_diff(&cls, &r["cls"].f32);
    assert!(d < REAL_TOL, "{name}: [CLS] off by {d:e}");
    // Mean pooling against tools/reference/mean_pool_reference.py's mean of HF's output.
    let want = read_tensors(&fixtures().join(fixture).join("mean-pooled.safetensors"));
    let mean = enc.forward(&batch, Keep::Mean).unwrap().mean;
    let d = max_abs_diff(&mean, &want["mean"].f32);
    assert!(d < REAL_TOL, "{name}: mean pooling off by {d:e}");
}

#[test]
fn all_minilm_l6_v2_matches_transformers() {
    check_real_model("BERTCLS_MINILM_DIR", "all-MiniLM-L6-v2", "minilm");
}

#[test]
fn multilingual_e5_small_matches_transformers() {
    check_real_model("BERTCLS_E5_DIR", "multilingual-e5-small", "e5-small");
}
