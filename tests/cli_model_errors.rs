//! Bad model folders: each gives one clear line naming the file and what to do, and a
//! non-zero exit, never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A fresh copy of the tiny model folder to break.
fn copy_tiny(name: &str) -> TempDir {
    let dir = TempDir::new(&format!("bad-model-{name}"));
    copy_files(&fixtures().join("tiny/model"), &dir);
    dir
}

/// Runs `bertcls encode` on the folder; returns stderr after asserting a clean failure.
fn encode_fails(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["encode", "--device", "cpu", "--offline", "--model"])
        .arg(dir)
        .arg("你好")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, stderr: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    errors[0].to_string()
}

/// Rewrites model.safetensors through `edit` (name -> (dtype, shape, bytes)).
fn rewrite_weights(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(&views, None).unwrap()).unwrap();
}

#[test]
fn missing_folder() {
    let e = encode_fails(Path::new("/nonexistent/bertcls-model"));
    assert!(e.contains("/nonexistent/bertcls-model"), "{e}");
}

#[test]
fn missing_config() {
    let dir = copy_tiny("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = encode_fails(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn corrupt_config() {
    let dir = copy_tiny("bad-config");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = encode_fails(&dir);
    assert!(
        e.contains("config.json") && e.contains("not a BERT config.json"),
        "{e}"
    );
}

#[test]
fn unsupported_activation() {
    let dir = copy_tiny("swish");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace("\"gelu\"", "\"swish\""),
    )
    .unwrap();
    let e = encode_fails(&dir);
    assert!(
        e.contains("hidden_act \"swish\"") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn missing_weights() {
    let dir = copy_tiny("no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = encode_fails(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn truncated_weights() {
    let dir = copy_tiny("truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = encode_fails(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let dir = copy_tiny("missing-tensor");
    rewrite_weights(&dir, |t| {
        t.remove("encoder.layer.1.output.dense.weight").unwrap();
    });
    let e = encode_fails(&dir);
    assert!(
        e.contains("missing tensor encoder.layer.1.output.dense.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape() {
    let dir = copy_tiny("wrong-shape");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace("\"intermediate_size\": 64", "\"intermediate_size\": 48"),
    )
    .unwrap();
    let e = encode_fails(&dir);
    assert!(e.contains("has shape [64, 32], expected [48, 32]"), "{e}");
}

#[test]
fn unsupported_dtype() {
    let dir = copy_tiny("f64");
    rewrite_weights(&dir, |t| {
        let (_, shape, bytes) = t.remove("embeddings.LayerNorm.weight").unwrap();
        let doubled: Vec<u8> = bytes
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes())
            .collect();
        t.insert(
            "embeddings.LayerNorm.weight".into(),
            (Dtype::F64, shape, doubled),
        );
    });
    let e = encode_fails(&dir);
    assert!(
        e.contains("embeddings.LayerNorm.weight") && e.contains("F64"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer() {
    let dir = copy_tiny("no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::remove_file(dir.join("vocab.txt")).unwrap();
    let e = encode_fails(&dir);
    assert!(e.contains("neither tokenizer.json nor vocab.txt"), "{e}");
}

#[test]
fn corrupt_tokenizer() {
    let dir = copy_tiny("bad-tokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{\"version\": 3").unwrap();
    let e = encode_fails(&dir);
    assert!(e.contains("tokenizer.json"), "{e}");
}

/// The tiny model with its tokenizer built from vocab.txt and tokenizer_config.json, as
/// a folder without tokenizer.json has it; the config's path.
fn copy_tiny_vocab_only(name: &str) -> (TempDir, PathBuf) {
    let dir = copy_tiny(name);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let config = dir.join("tokenizer_config.json");
    (dir, config)
}

/// A tokenizer_config.json that does not parse is named with its remedy.
#[test]
fn corrupt_tokenizer_config() {
    let (dir, config) = copy_tiny_vocab_only("bad-tokenizer-config");
    std::fs::write(&config, "{\"do_lower_case\": tru").unwrap();
    let e = encode_fails(&dir);
    assert!(
        e.starts_with(&format!(
            "error: {}: the model's tokenizer_config.json does not parse as JSON (",
            config.display()
        )),
        "{e}"
    );
    assert!(e.ends_with("restore it from the model's source (deleting it suits only an uncased model: without it the text is lower-cased, as BertTokenizer's defaults say)"), "{e}");
}

/// A flag of tokenizer_config.json that is not a boolean is refused rather than read as
/// absent (HF's default lower-cases the text of a cased model).
#[test]
fn tokenizer_config_flags_that_are_not_booleans() {
    let (dir, config) = copy_tiny_vocab_only("tokenizer-config-flags");
    for (key, value) in [
        ("do_lower_case", "\"yes\""),
        ("tokenize_chinese_chars", "1"),
        ("strip_accents", "\"false\""),
    ] {
        std::fs::write(&config, format!("{{\"{key}\": {value}}}")).unwrap();
        assert_eq!(
            encode_fails(&dir),
            format!(
                "error: {}: \"{key}\" is {value}, not true or false: restore the file from the model's source, or set it to true or false",
                config.display()
            )
        );
    }
    std::fs::write(
        &config,
        "{\"do_lower_case\": false, \"strip_accents\": null}",
    )
    .unwrap();
    ok(bertcls_cpu(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "hello",
    ]));
}

/// `info --model DIR`, which must fail with the same one line as `encode`.
fn info_fails(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["info", "--offline", "--model"])
        .arg(dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_string()
}

/// A tokenizer whose ids run past config.json's vocab_size is refused at load, whatever
/// the text: "好" is an id every tokenizer here has below it.
#[test]
fn tokenizer_ids_past_vocab_size() {
    let dir = copy_tiny("tokenizer-past-vocab");
    let path = dir.join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tokenizer["model"]["vocab"]["外来词"] = 5000.into();
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let e = encode_fails(&dir);
    let want = format!(
        "{} has token ids up to 5000 but {} has vocab_size 732",
        path.display(),
        dir.join("config.json").display()
    );
    assert!(e.contains(&want), "{e}");
    assert_eq!(info_fails(&dir), e);
}

/// A tokenizer.json whose vocabulary lacks its unk_token loaded, then failed on the first
/// text with a word it had no pieces for (hours into a bulk job, naming no file); one
/// whose post-processor gives [CLS] an id past vocab_size failed only once encoding, also
/// naming no file; and one the load's probes cannot encode with named none. Each is now
/// refused when the model loads, naming tokenizer.json.
#[test]
fn tokenizer_flaws_found_only_mid_run_are_refused_at_load() {
    let edit = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> (TempDir, String) {
        let dir = copy_tiny(name);
        let path = dir.join("tokenizer.json");
        let mut tokenizer: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut tokenizer);
        std::fs::write(&path, tokenizer.to_string()).unwrap();
        let e = encode_fails(&dir);
        assert!(e.starts_with(&format!("error: {}", path.display())), "{e}");
        assert_eq!(info_fails(&dir), e);
        (dir, e)
    };
    let no_unk = "its unk_token \"[UNK]\" is not in its vocabulary";
    let (_, e) = edit("no-unk", &|t| {
        t["model"]["vocab"].as_object_mut().unwrap().remove("[UNK]");
    });
    assert!(e.contains(no_unk), "{e}");
    let (_, e) = edit("bpe-no-unk", &|t| {
        let vocab = t["model"]["vocab"].take();
        t["model"] =
            serde_json::json!({"type": "BPE", "vocab": vocab, "merges": [], "unk_token": "[ZZ]"});
    });
    assert!(
        e.contains("its unk_token \"[ZZ]\" is not in its vocabulary"),
        "{e}"
    );
    let (dir, e) = edit("cls-id", &|t| {
        t["post_processor"]["special_tokens"]["[CLS]"]["ids"] = serde_json::json!([99999]);
    });
    let want = format!(
        "has token ids up to 99999 but {} has vocab_size 732",
        dir.join("config.json").display()
    );
    assert!(e.contains(&want), "{e}");
    let (_, e) = edit("unigram-empty", &|t| {
        t["model"] = serde_json::json!({"type": "Unigram", "vocab": [], "unk_id": null});
    });
    assert!(e.contains("the tokenizer cannot encode"), "{e}");
    assert!(e.ends_with("use the model's own tokenizer files"), "{e}");
}

/// The audit's case: e5's 250,002-piece tokenizer beside MiniLM's config and weights
/// (30,522). e5's own folder, whose tokenizer is smaller than its padded vocab_size
/// (250,037), loads.
#[test]
fn another_models_tokenizer_is_refused_and_a_smaller_one_allowed() {
    let models = repo().join("models");
    let (minilm, e5) = (
        models.join("all-MiniLM-L6-v2"),
        models.join("multilingual-e5-small"),
    );
    if skip_unless(
        minilm.is_dir() && e5.is_dir(),
        "models/all-MiniLM-L6-v2 and models/multilingual-e5-small are absent (scripts/fetch-models.sh)",
    ) {
        return;
    }
    let dir = TempDir::new("bad-model-mixed");
    std::fs::copy(minilm.join("config.json"), dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink(
        minilm.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(e5.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let e = encode_fails(&dir);
    assert!(
        e.contains("tokenizer.json has token ids up to 250001")
            && e.contains("config.json has vocab_size 30522"),
        "{e}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["info", "--offline", "--model"])
        .arg(&e5)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Weights with more layers than config.json's num_hidden_layers: running the first ones
/// only would be a shallower model than the weights'.
#[test]
fn weights_with_layers_past_num_hidden_layers() {
    let dir = copy_tiny("layers-past-config");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    let e = encode_fails(&dir);
    assert!(
        e.contains(&format!(
            "{}: tensor encoder.layer.1.",
            dir.join("model.safetensors").display()
        )) && e.contains("is of layer 1, but config.json has num_hidden_layers 1"),
        "{e}"
    );
    // info reports config.json's layer count, so it refuses the same folder.
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(["info", "--offline", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    let info_err = String::from_utf8_lossy(&out.stderr);
    assert!(
        info_err.contains("is of layer 1, but config.json has num_hidden_layers 1"),
        "{info_err}"
    );
}

/// A RoBERTa config: its position ids start at pad_token_id + 1, so BERT's forward would
/// give wrong features from weights that load.
#[test]
fn roberta_and_relative_positions_are_refused() {
    for (from, to, want) in [
        (
            "\"model_type\": \"bert\"",
            "\"model_type\": \"roberta\"",
            "model_type \"roberta\"",
        ),
        (
            "\"model_type\": \"bert\"",
            "\"model_type\": \"bert\", \"position_embedding_type\": \"relative_key\"",
            "position_embedding_type \"relative_key\"",
        ),
    ] {
        let dir = copy_tiny("roberta");
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(text.contains(from));
        std::fs::write(dir.join("config.json"), text.replace(from, to)).unwrap();
        let e = encode_fails(&dir);
        assert!(e.contains("config.json: ") && e.contains(want), "{e}");
    }
}
