//! Issue 8, items 8 and 13: degenerate configs, a workspace or thread count the machine
//! cannot give, and `info` without a model each end in one line and exit 1, never a
//! panic or an abort; `info` shows the build and device before the model's error.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn copy_tiny(name: &str) -> TempDir {
    let dir = TempDir::new(&format!("limits-{name}"));
    copy_files(&fixtures().join("tiny/model"), &dir);
    dir
}

fn bertcls(args: &[&str], model: Option<&Path>) -> Output {
    let home = TempDir::new("limits-hf");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bertcls"));
    cmd.args(args);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home.path())
        .output()
        .unwrap()
}

/// Asserts exit 1 with exactly one `error:` line and no panic; returns that line.
fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_string()
}

#[test]
fn degenerate_configs_fail_in_one_line_naming_config_json() {
    for (key, value) in [
        ("hidden_size", "0"),
        ("intermediate_size", "0"),
        ("type_vocab_size", "0"),
        ("num_attention_heads", "0"),
        ("num_attention_heads", "5"),
        ("num_hidden_layers", "0"),
        ("vocab_size", "0"),
        ("max_position_embeddings", "0"),
        ("hidden_size", "18446744073709551615"),
    ] {
        let dir = copy_tiny(&format!("{key}-{value}"));
        let path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = serde_json::from_str(value).unwrap();
        std::fs::write(&path, config.to_string()).unwrap();
        let out = bertcls(
            &["encode", "--device", "cpu", "--offline", "你好"],
            Some(&dir),
        );
        let line = one_error_line(&out);
        assert!(line.contains("config.json"), "{key}={value}: {line}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_workspace_beyond_memory_is_refused_with_a_smaller_budget_suggested() {
    let model = fixtures().join("tiny/model");
    for tokens in ["1000000000000", "18446744073709551615"] {
        let out = bertcls(
            &[
                "encode",
                "--device",
                "cpu",
                "--offline",
                "--max-batch-tokens",
                tokens,
                "你好",
            ],
            Some(&model),
        );
        let line = one_error_line(&out);
        assert!(
            line.contains("--max-batch-tokens") && line.contains("smaller"),
            "{tokens}: {line}"
        );
    }
}

#[test]
fn threads_beyond_four_per_core_are_refused() {
    let model = fixtures().join("tiny/model");
    let out = bertcls(
        &[
            "encode",
            "--device",
            "cpu",
            "--offline",
            "--threads",
            "1000000",
            "你好",
        ],
        Some(&model),
    );
    let line = one_error_line(&out);
    assert!(line.contains("--threads 1000000"), "{line}");
    // Within the bound it runs.
    let out = bertcls(
        &[
            "encode",
            "--device",
            "cpu",
            "--offline",
            "--threads",
            "3",
            "你好",
        ],
        Some(&model),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn info_without_a_model_offline_shows_build_and_device_then_one_error() {
    let out = bertcls(&["info"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    one_error_line(&out);
    assert!(stdout.contains("bertcls "), "{stdout}");
    assert!(
        stdout.contains("cpu ") && stdout.contains("cores"),
        "{stdout}"
    );
    assert!(stdout.to_lowercase().contains("cuda"), "{stdout}");

    let out = bertcls(&["info", "--json"], None);
    one_error_line(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["cpu"]["cores"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["cuda"]["driver"].is_boolean(), "{v}");
    assert!(
        v["model_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );

    // With a model, both parts.
    let out = bertcls(
        &["info", "--json", "--offline"],
        Some(&fixtures().join("tiny/model")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["cpu"]["cores"].is_u64() && v["config"]["hidden_size"].is_u64(),
        "{v}"
    );
}

/// A one-layer copy of the tiny model whose feed-forward is `intermediate` wide, every
/// tensor F16 and zero: model.safetensors is sparse (its data a hole), so it takes no disk,
/// yet loading it decodes each feed-forward weight to f32 buffers of twice its bytes.
fn wide_sparse_model(name: &str, intermediate: usize) -> TempDir {
    let dir = copy_tiny(name);
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["intermediate_size"] = intermediate.into();
    config["num_hidden_layers"] = 1.into();
    std::fs::write(&path, config.to_string()).unwrap();

    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let old: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&st[8..8 + n]).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, t) in old {
        if name == "__metadata__" || name.starts_with("encoder.layer.1.") {
            continue;
        }
        let mut shape: Vec<u64> = serde_json::from_value(t["shape"].clone()).unwrap();
        if name.contains("intermediate.dense") {
            shape[0] = intermediate as u64;
        } else if name.ends_with(".output.dense.weight") && !name.contains("attention") {
            shape[1] = intermediate as u64;
        }
        let bytes = 2 * shape.iter().product::<u64>();
        header.insert(
            name,
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut file = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    use std::io::Write;
    file.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&json).unwrap();
    file.set_len(8 + json.len() as u64 + offset).unwrap();
    dir
}

/// `bertcls encode` of one text on the CPU with one thread, under a 1 GiB address-space
/// limit (`ulimit -v`), with `flags`.
fn encode_under_1_gib(model: &Path, flags: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {}; exec \"$0\" encode --device cpu --offline --threads 1 \"$@\" hello",
            1 << 20
        ))
        .arg(env!("CARGO_BIN_EXE_bertcls"))
        .args(flags)
        .arg("--model")
        .arg(model)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// Weights that do not fit under the process's memory limit end in one line naming the
/// limit, not in an abort ("memory allocation of N bytes failed", exit 134).
#[test]
fn weights_beyond_the_memory_limit_are_refused_not_aborted() {
    // Feed-forward weights of 256 MiB each in F16, so the file maps 512 MiB and decoding
    // the first needs 512 MiB more: under a 1 GiB limit the map fits beside the program's
    // own few dozen MiB and the decode cannot, whatever the machine.
    let model = wide_sparse_model("ulimit", 4 << 20);
    let out = encode_under_1_gib(&model, &["--max-length", "8", "--max-batch-tokens", "8"]);
    let _ = std::fs::remove_dir_all(&model);
    let line = one_error_line(&out);
    assert!(
        line.contains("cannot allocate 512 MiB for the model's weights")
            && line.contains("memory limit"),
        "{line}"
    );
}

/// A weights file larger than the process's memory limit cannot even be mapped: one line
/// naming the file and the limit, not the bare "Cannot allocate memory".
#[test]
fn a_weights_file_past_the_memory_limit_names_the_limit() {
    // Feed-forward weights of 2 GiB each in F16: the 4 GiB file cannot be mapped under a
    // 1 GiB limit.
    let model = wide_sparse_model("ulimit-map", 32 << 20);
    let out = encode_under_1_gib(&model, &["--max-length", "8", "--max-batch-tokens", "8"]);
    let weights = model.join("model.safetensors");
    let _ = std::fs::remove_dir_all(&model);
    let line = one_error_line(&out);
    assert!(
        line.starts_with(&format!("error: cannot memory-map {} (", weights.display()))
            && line.ends_with("): raise the process's memory limit (ulimit -v)"),
        "{line}"
    );
}

/// A workspace refused under a memory limit names the limit beside the budget: a smaller
/// --max-batch-tokens is not the only way out.
#[test]
fn a_workspace_beyond_the_memory_limit_names_the_limit() {
    // (7 * 32 + 64) floats a token: 1.1 GiB for a million tokens, over a 1 GiB limit.
    let model = fixtures().join("tiny/model");
    let out = encode_under_1_gib(&model, &["--max-batch-tokens", "1000000"]);
    let line = one_error_line(&out);
    assert!(
        line.contains("needs a workspace this machine cannot allocate")
            && line.contains("use a smaller --max-batch-tokens, or free memory or raise the process's memory limit (ulimit -v)"),
        "{line}"
    );
}
