//! Helpers shared by the integration tests: fixture paths and safetensors reading.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use bertcls::checkpoint::save_head;
use bertcls::head::LinearHead;
use bertcls::tokenize::TokenizedText;
use safetensors::{Dtype, SafeTensors};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// `../shared` beside the checkout, when this machine has it.
pub fn shared() -> Option<PathBuf> {
    let p = repo().join("../shared");
    p.is_dir().then_some(p)
}

/// Prints why a test does nothing and returns true, so tests read `if skip(..) { return; }`.
pub fn skip_unless(present: bool, what: &str) -> bool {
    if !present {
        eprintln!("SKIPPED: {what}");
    }
    !present
}

pub struct Tensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

/// Every tensor of a safetensors file, F32 as `f32` and I64 as `i64`.
pub fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let (f32, i64) = match view.dtype() {
                Dtype::F32 => (
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    vec![],
                ),
                Dtype::I64 => (
                    vec![],
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    f32,
                    i64,
                },
            )
        })
        .collect()
}

/// The unpadded texts of a padded (B, L) HF batch.
pub fn unpad(t: &HashMap<String, Tensor>) -> Vec<TokenizedText> {
    let ids = &t["input_ids"];
    let (b, l) = (ids.shape[0], ids.shape[1]);
    (0..b)
        .map(|i| {
            let n = t["attention_mask"].i64[i * l..(i + 1) * l]
                .iter()
                .filter(|&&m| m == 1)
                .count();
            TokenizedText {
                ids: ids.i64[i * l..i * l + n]
                    .iter()
                    .map(|&v| v as u32)
                    .collect(),
                type_ids: t["token_type_ids"].i64[i * l..i * l + n]
                    .iter()
                    .map(|&v| v as u32)
                    .collect(),
            }
        })
        .collect()
}

/// Largest |a - b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A fresh folder under the system's temporary folder, `bertcls-<tag>-<pid>-<n>`,
/// removed when dropped, so that test runs leave nothing there. The pid keeps test
/// binaries apart and n the calls within one, which run in parallel.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bertcls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `out` of a bertcls run that must have succeeded; its stderr in the failure message.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "bertcls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Copies the files of folder `from` (not its subfolders) into `to`, made if missing:
/// a model folder a test may break without touching the fixture.
pub fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The binary offline on the CPU.
pub fn bertcls_cpu(args: &[&str]) -> Output {
    bertcls_env(args, &[])
}

/// `bertcls_cpu` with more environment; standard input is empty, so that a command
/// given no texts reads none rather than waiting on the test runner's.
pub fn bertcls_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(args)
        .args(["--device", "cpu"])
        .env("HF_HUB_OFFLINE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The one `error:` line of a refused command, which must have written nothing.
pub fn refusal(args: &[&str]) -> String {
    let out = bertcls_cpu(args);
    assert!(!out.status.success(), "{args:?} was not refused");
    assert!(out.stdout.is_empty(), "{args:?} wrote output");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

/// A run trained for one epoch on the tiny fixture model and data, in `dir/name`, with
/// `spec` (feature flags), nothing cached.
pub fn train_run(dir: &Path, name: &str, spec: &[&str]) -> PathBuf {
    train_run_on(
        dir,
        name,
        &fixtures().join("tiny/model"),
        &fixtures().join("data/tiny-dsdict"),
        spec,
    )
}

/// `train_run` on another model folder or data.
pub fn train_run_on(dir: &Path, name: &str, model: &Path, data: &Path, spec: &[&str]) -> PathBuf {
    train_run_on_output(dir, name, model, data, spec).0
}

/// `train_run_on`, with the training command's output beside the run folder.
pub fn train_run_on_output(
    dir: &Path,
    name: &str,
    model: &Path,
    data: &Path,
    spec: &[&str],
) -> (PathBuf, Output) {
    let run = dir.join(name);
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--log-every",
        "0",
        "--out",
        run.to_str().unwrap(),
        "--no-cache",
    ];
    args.extend_from_slice(spec);
    let out = ok(bertcls_cpu(&args));
    (run, out)
}

/// `bertcls merge` with `args`, as a user runs it (it loads no model).
pub fn merge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .arg("merge")
        .args(args)
        .output()
        .unwrap()
}

/// The float list `field` (`probs`, `cls`, ...) of each JSON line of `stdout`.
pub fn json_floats(stdout: &str, field: &str) -> Vec<Vec<f32>> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_value(
                serde_json::from_str::<serde_json::Value>(l).unwrap()[field].clone(),
            )
            .unwrap()
        })
        .collect()
}

/// Writes to `path` a tiny-model head whose labels vary across texts, plus `extra` metadata.
pub fn write_tiny_head(path: &Path, extra: &[(&str, &str)]) {
    let head = LinearHead {
        weight: (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect(),
        bias: vec![0.1, -0.1],
        num_labels: 2,
        hidden: 32,
    };
    let meta = BTreeMap::from([
        (
            "labels".to_string(),
            r#"["negative","positive"]"#.to_string(),
        ),
        (
            "model".to_string(),
            fixtures().join("tiny/model").to_str().unwrap().to_string(),
        ),
        ("max_length".to_string(), "350".to_string()),
    ]);
    let meta = meta
        .into_iter()
        .chain(extra.iter().map(|&(k, v)| (k.to_string(), v.to_string())))
        .collect();
    save_head(path, &head, None, &meta).unwrap();
}

/// A fresh `TempDir` tagged `tag` holding a `write_tiny_head` head at `head.safetensors`.
pub fn dir_with_tiny_head(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let head = dir.join("head.safetensors");
    write_tiny_head(&head, &[]);
    (dir, head)
}
