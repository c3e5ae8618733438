//! Issue 8, items 8 and 13: degenerate configs, a workspace or thread count the machine
//! cannot give, and `info` without a model each end in one line and exit 1, never a
//! panic or an abort; `info` shows the build and device before the model's error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn copy_tiny(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bertcls-limits-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_files(&fixtures().join("tiny/model"), &dir);
    dir
}

fn bertcls(args: &[&str], model: Option<&Path>) -> Output {
    let home = std::env::temp_dir().join(format!("bertcls-limits-hf-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bertcls"));
    cmd.args(args);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home)
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
