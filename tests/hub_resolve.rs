//! Model and dataset resolution against fake HF cache trees built in temp folders,
//! laid out as `huggingface_hub` and `hf-hub` write them (snapshot files are symlinks
//! into `blobs/`). Nothing here touches the network: every lookup that misses the
//! cache is made offline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bertcls::hub::{resolve_dataset_in, resolve_model_in, CacheRoots, Origin};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A fresh folder per call, since tests run in parallel in one process; removed when
/// the test ends.
struct TempRoot(PathBuf);

impl std::ops::Deref for TempRoot {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_root(name: &str) -> TempRoot {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bertcls-hub-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempRoot(dir)
}

/// Writes `files` into `<root>/<repo_folder>/snapshots/<commit>/` as links into
/// `blobs/`, and `refs/<reference>` naming the commit when `reference` is given.
fn snapshot(
    root: &Path,
    repo_folder: &str,
    reference: Option<&str>,
    files: &[(&str, &str)],
) -> PathBuf {
    let repo = root.join(repo_folder);
    let snap = repo.join("snapshots").join(COMMIT);
    for (i, (name, content)) in files.iter().enumerate() {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, content).unwrap();
        let link = snap.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
    std::fs::create_dir_all(&snap).unwrap();
    if let Some(reference) = reference {
        let ref_file = repo.join("refs").join(reference);
        std::fs::create_dir_all(ref_file.parent().unwrap()).unwrap();
        std::fs::write(ref_file, format!("{COMMIT}\n")).unwrap();
    }
    snap
}

const BERT_FILES: &[(&str, &str)] = &[
    ("config.json", "{}"),
    ("vocab.txt", "[PAD]\n"),
    ("tokenizer.json", "{}"),
    ("model.safetensors", "weights"),
];

fn roots(dirs: &[&Path]) -> CacheRoots {
    CacheRoots::new(dirs.iter().map(|d| d.to_path_buf()).collect())
}

#[test]
fn local_folder_is_taken_as_is() {
    let dir = temp_root("local");
    let got = resolve_model_in(dir.to_str().unwrap(), true, &roots(&[])).unwrap();
    assert_eq!(got.dir, dir.0);
    assert_eq!(got.origin, Origin::LocalDir);
    let got = resolve_dataset_in(dir.to_str().unwrap(), true, &roots(&[])).unwrap();
    assert_eq!(got.path, dir.0);
}

#[test]
fn refs_main_leads_to_the_snapshot() {
    let root = temp_root("refs-main");
    let snap = snapshot(&root, "models--bert-base-chinese", Some("main"), BERT_FILES);
    let got = resolve_model_in("bert-base-chinese", true, &roots(&[&root])).unwrap();
    assert_eq!(got.dir, snap);
    assert_eq!(got.id, "bert-base-chinese");
    assert_eq!(
        got.origin,
        Origin::HfCache {
            revision: COMMIT.to_string()
        }
    );
}

#[test]
fn org_names_and_revisions_resolve() {
    let root = temp_root("org-rev");
    let snap = snapshot(&root, "models--org--tiny-bert", Some("v1"), BERT_FILES);
    let got = resolve_model_in("org/tiny-bert@v1", true, &roots(&[&root])).unwrap();
    assert_eq!((got.dir, got.id.as_str()), (snap.clone(), "org/tiny-bert"));
    // A commit hash needs no ref.
    let got = resolve_model_in(&format!("org/tiny-bert@{COMMIT}"), true, &roots(&[&root])).unwrap();
    assert_eq!(got.dir, snap);
}

#[test]
fn later_roots_are_searched_when_the_first_lacks_the_model() {
    let (empty, full) = (temp_root("first"), temp_root("second"));
    let snap = snapshot(&full, "models--bert-base-chinese", Some("main"), BERT_FILES);
    let got = resolve_model_in("bert-base-chinese", true, &roots(&[&empty, &full])).unwrap();
    assert_eq!(got.dir, snap);
}

#[test]
fn missing_ref_is_not_cached() {
    let root = temp_root("no-ref");
    snapshot(&root, "models--bert-base-chinese", None, BERT_FILES);
    let err = resolve_model_in("bert-base-chinese", true, &roots(&[&root]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no refs/main"), "{err}");
}

#[test]
fn snapshot_without_weights_is_not_cached() {
    let root = temp_root("no-weights");
    snapshot(
        &root,
        "models--bert-base-chinese",
        Some("main"),
        &BERT_FILES[..3],
    );
    let err = resolve_model_in("bert-base-chinese", true, &roots(&[&root]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn dangling_blob_link_is_not_cached() {
    let root = temp_root("dangling");
    let snap = snapshot(&root, "models--bert-base-chinese", Some("main"), BERT_FILES);
    std::fs::remove_file(std::fs::read_link(snap.join("model.safetensors")).unwrap()).unwrap();
    assert!(resolve_model_in("bert-base-chinese", true, &roots(&[&root])).is_err());
}

#[test]
fn offline_and_not_cached_is_one_line_naming_every_place() {
    let (a, b) = (temp_root("offline-a"), temp_root("offline-b"));
    let err = resolve_model_in("org/absent", true, &roots(&[&a, &b])).unwrap_err();
    let msg = format!("{err:#}");
    let want = format!(
        "model \"org/absent\" is not in the HF cache (searched {}, {}) and HF_HUB_OFFLINE=1 / \
         --offline forbids downloading: pass --model with a local folder (config.json, \
         model.safetensors, tokenizer.json or vocab.txt)",
        a.join("models--org--absent").display(),
        b.join("models--org--absent").display()
    );
    assert_eq!(msg, want);
    assert!(!msg.contains('\n'));
}

#[test]
fn sharded_checkpoint_needs_every_shard() {
    let root = temp_root("sharded");
    let index = r#"{"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors"}}"#;
    let mut files = vec![
        ("config.json", "{}"),
        ("vocab.txt", "[PAD]\n"),
        ("model.safetensors.index.json", index),
        ("model-00001-of-00002.safetensors", "w1"),
    ];
    snapshot(&root, "models--org--sharded", Some("main"), &files);
    let err = resolve_model_in("org/sharded", true, &roots(&[&root]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing shards model-00002-of-00002.safetensors"),
        "{err}"
    );

    let complete = temp_root("sharded-complete");
    files.push(("model-00002-of-00002.safetensors", "w2"));
    let snap = snapshot(&complete, "models--org--sharded", Some("main"), &files);
    assert_eq!(
        resolve_model_in("org/sharded", true, &roots(&[&complete]))
            .unwrap()
            .dir,
        snap
    );
}

#[test]
fn not_a_folder_nor_a_hub_id() {
    let err = resolve_model_in("./no/such/model", true, &roots(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--model ./no/such/model: no such folder"),
        "{err}"
    );
}

#[test]
fn dataset_with_its_own_parquet_files() {
    let root = temp_root("ds-own");
    let snap = snapshot(
        &root,
        "datasets--lansinuote--ChnSentiCorp",
        Some("main"),
        &[
            ("README.md", "# ChnSentiCorp"),
            ("data/train-00000-of-00001.parquet", "PAR1"),
            ("data/test-00000-of-00001.parquet", "PAR1"),
        ],
    );
    let got = resolve_dataset_in("lansinuote/ChnSentiCorp", true, &roots(&[&root])).unwrap();
    assert_eq!(got.path, snap);
    assert_eq!(got.id, "lansinuote/ChnSentiCorp");
    assert_eq!(
        got.origin,
        Origin::HfCache {
            revision: COMMIT.to_string()
        }
    );
}

#[test]
fn dataset_from_the_parquet_conversion_branch() {
    let root = temp_root("ds-convert");
    // hf-hub and huggingface_hub store the ref of revision `refs/convert/parquet`
    // under `refs/` as they store `main`.
    let snap = snapshot(
        &root,
        "datasets--org--csv-data",
        Some("refs/convert/parquet"),
        &[("default/train/0000.parquet", "PAR1")],
    );
    let got = resolve_dataset_in("org/csv-data", true, &roots(&[&root])).unwrap();
    assert_eq!(got.path, snap);
}

#[test]
fn dataset_snapshot_without_parquet_is_not_cached() {
    let root = temp_root("ds-none");
    snapshot(
        &root,
        "datasets--org--csv-data",
        Some("main"),
        &[("train.csv", "text,label\n")],
    );
    let err = resolve_dataset_in("org/csv-data", true, &roots(&[&root]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("dataset \"org/csv-data\" is not in the HF cache"),
        "{err}"
    );
    assert!(err.contains("no .parquet files"), "{err}");
    assert!(
        err.ends_with(
            "pass --data with a local path (a save_to_disk folder, parquet, .jsonl, .csv or .tsv)"
        ),
        "{err}"
    );
}

/// The only test that reads the process environment: it sets every variable the
/// resolution reads, so no other test in this file depends on them.
#[test]
fn environment_selects_cache_and_offline_mode() {
    let (hub_cache, home) = (temp_root("env-cache"), temp_root("env-home"));
    let snap = snapshot(
        &hub_cache,
        "models--org--env-model",
        Some("main"),
        BERT_FILES,
    );
    std::env::set_var("HF_HUB_CACHE", &hub_cache.0);
    std::env::set_var("HF_HOME", &home.0);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let got = bertcls::hub::resolve_model("org/env-model", false).unwrap();
    assert_eq!(got.dir, snap);
    // Offline from the variable alone: resolving a missing id must fail fast, without
    // a download, and name both cache folders that come from the environment.
    let err = bertcls::hub::resolve_model("org/absent", false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&hub_cache.join("models--org--absent").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains(
            &home
                .join("hub")
                .join("models--org--absent")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.contains("forbids downloading"), "{err}");
}
