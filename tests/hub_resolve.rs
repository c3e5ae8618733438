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
    let err = resolve_model_in("bert-base-chinese", true, &roots(&[&root]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no model.safetensors"), "{err}");
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
fn a_missing_path_under_a_folder_here_is_no_such_folder() {
    // The tests run in the package root, where `tests/` is a folder.
    let err = resolve_model_in("tests/no-such-model", true, &roots(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--model tests/no-such-model: no such folder;")
            && err.ends_with("write tests/no-such-model@main)"),
        "{err}"
    );
    let err = resolve_dataset_in("tests/no-such-data", true, &roots(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "--data tests/no-such-data: no such file or folder");
    // A revision, or an owner that is no folder here, keeps it a hub id.
    for spec in ["tests/no-such-model@main", "no-such-owner/model"] {
        let err = resolve_model_in(spec, true, &roots(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not in the HF cache"), "{spec}: {err}");
    }
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

/// A stand-in for the hub, enough of its HTTP API for hf-hub: repo info under
/// `/api/...`, files under `/.../resolve/<revision>/...` with the headers hf-hub reads
/// (`X-Repo-Commit`, `ETag`, `Content-Range`). One server for every download test,
/// because its address reaches the code through `HF_ENDPOINT`, a process-wide
/// variable that no other test reads.
mod fake_hub {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, OnceLock};

    pub const MAIN: &str = "1111111111111111111111111111111111111111";
    pub const CONVERTED: &str = "2222222222222222222222222222222222222222";
    pub const ESCAPED_BRANCH: &str = "refs%2Fconvert%2Fparquet";

    /// Starts the server once and returns its endpoint, or `None` when a proxy
    /// variable is set: ureq would send the requests for 127.0.0.1 to the proxy.
    pub fn endpoint() -> Option<&'static str> {
        let proxied = [
            "ALL_PROXY",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "all_proxy",
            "https_proxy",
            "http_proxy",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        if proxied {
            eprintln!(
                "SKIPPED: a proxy variable is set, so hf-hub cannot reach the local fake hub"
            );
            return None;
        }
        static ENDPOINT: OnceLock<String> = OnceLock::new();
        Some(ENDPOINT.get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let routes = Arc::new(routes());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let routes = Arc::clone(&routes);
                    std::thread::spawn(move || answer(stream, &routes));
                }
            });
            std::env::set_var("HF_ENDPOINT", &endpoint);
            endpoint
        }))
    }

    fn info(sha: &str, files: &[&str]) -> Vec<u8> {
        let siblings: Vec<_> = files
            .iter()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        serde_json::json!({ "sha": sha, "siblings": siblings })
            .to_string()
            .into_bytes()
    }

    fn routes() -> HashMap<String, Vec<u8>> {
        let mut r = HashMap::new();
        let mut model = |repo: &str, files: &[(&str, &str)], listed_only: &[&str]| {
            let mut names: Vec<&str> = files.iter().map(|f| f.0).collect();
            names.extend_from_slice(listed_only);
            r.insert(
                format!("/api/models/{repo}/revision/main"),
                info(MAIN, &names),
            );
            for (name, body) in files {
                r.insert(
                    format!("/{repo}/resolve/main/{name}"),
                    body.as_bytes().to_vec(),
                );
            }
        };
        model(
            "fake/bert-vocab",
            &[
                ("config.json", "{}"),
                ("vocab.txt", "[PAD]\n"),
                ("tokenizer_config.json", "{}"),
                ("model.safetensors", "weights"),
            ],
            &["pytorch_model.bin"],
        );
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        model(
            "fake/bert-sharded",
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors.index.json", index),
                ("model-00001-of-00002.safetensors", "w1"),
                ("model-00002-of-00002.safetensors", "w2"),
            ],
            &[],
        );
        model(
            "fake/bert-bin-only",
            &[("config.json", "{}"), ("vocab.txt", "[PAD]\n")],
            &["pytorch_model.bin"],
        );

        let ds = "fake/csv-data";
        r.insert(
            format!("/api/datasets/{ds}/revision/main"),
            info(MAIN, &["README.md", "train.csv"]),
        );
        let converted = [
            "default/train/0000.parquet",
            "default/test/0000.parquet",
            "other/train/0000.parquet",
        ];
        r.insert(
            format!("/api/datasets/{ds}/revision/{ESCAPED_BRANCH}"),
            info(CONVERTED, &converted),
        );
        for name in converted {
            r.insert(
                format!("/datasets/{ds}/resolve/{ESCAPED_BRANCH}/{name}"),
                format!("PAR1 {name}").into_bytes(),
            );
        }
        r
    }

    fn answer(mut stream: TcpStream, routes: &HashMap<String, Vec<u8>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        let _ = reader.read_line(&mut request);
        let path = request
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header != "\r\n" {
            header.clear();
        }
        // Errors are the client hanging up after the headers, as hf-hub does when it
        // only wants a file's metadata.
        let _ = match routes.get(&path) {
            Some(body) => {
                let commit = if path.contains(ESCAPED_BRANCH) {
                    CONVERTED
                } else {
                    MAIN
                };
                let mut h = std::collections::hash_map::DefaultHasher::new();
                path.hash(&mut h);
                let n = body.len();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Range: bytes 0-{}/{n}\r\n\
                     ETag: \"{:016x}\"\r\nX-Repo-Commit: {commit}\r\nConnection: close\r\n\r\n",
                    n - 1,
                    h.finish()
                )
                .and_then(|_| stream.write_all(body))
            }
            None => write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        };
    }
}

#[test]
fn download_falls_back_to_vocab_txt_and_lands_in_the_cache_layout() {
    let Some(_) = fake_hub::endpoint() else {
        return;
    };
    let root = temp_root("dl-vocab");
    let got = resolve_model_in("fake/bert-vocab", false, &roots(&[&root])).unwrap();
    let snap = root
        .join("models--fake--bert-vocab/snapshots")
        .join(fake_hub::MAIN);
    assert_eq!(
        (got.dir.as_path(), got.origin),
        (snap.as_path(), Origin::Downloaded)
    );
    assert_eq!(
        std::fs::read_to_string(snap.join("model.safetensors")).unwrap(),
        "weights"
    );
    assert!(snap.join("tokenizer_config.json").exists());
    assert!(!snap.join("pytorch_model.bin").exists());
    // What hf-hub wrote is what the cache lookup reads.
    let again = resolve_model_in("fake/bert-vocab", true, &roots(&[&root])).unwrap();
    assert_eq!(
        again.origin,
        Origin::HfCache {
            revision: fake_hub::MAIN.to_string()
        }
    );
}

#[test]
fn download_fetches_every_shard() {
    let Some(_) = fake_hub::endpoint() else {
        return;
    };
    let root = temp_root("dl-sharded");
    let got = resolve_model_in("fake/bert-sharded", false, &roots(&[&root])).unwrap();
    assert_eq!(
        std::fs::read_to_string(got.dir.join("model-00002-of-00002.safetensors")).unwrap(),
        "w2"
    );
    assert!(resolve_model_in("fake/bert-sharded", true, &roots(&[&root])).is_ok());
}

#[test]
fn download_refuses_a_model_without_safetensors() {
    let Some(_) = fake_hub::endpoint() else {
        return;
    };
    let root = temp_root("dl-bin");
    let err = resolve_model_in("fake/bert-bin-only", false, &roots(&[&root]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model \"fake/bert-bin-only\" on http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("has no model.safetensors"), "{err}");
}

#[test]
fn download_failure_is_one_line_naming_the_url() {
    let Some(endpoint) = fake_hub::endpoint() else {
        return;
    };
    let root = temp_root("dl-absent");
    let err = format!(
        "{:#}",
        resolve_model_in("fake/absent", false, &roots(&[&root])).unwrap_err()
    );
    let url = format!("{endpoint}/api/models/fake/absent/revision/main");
    assert!(
        err.starts_with(&format!(
            "cannot download model \"fake/absent\" from {url}: "
        )),
        "{err}"
    );
    assert!(err.ends_with("or pass --model with a local folder (config.json, model.safetensors, tokenizer.json or vocab.txt)"), "{err}");
    assert!(err.contains("status code 404"), "{err}");
    assert_eq!(err.matches(&url).count(), 1, "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn dataset_download_takes_one_config_of_the_parquet_conversion() {
    let Some(_) = fake_hub::endpoint() else {
        return;
    };
    let root = temp_root("dl-dataset");
    let got = resolve_dataset_in("fake/csv-data", false, &roots(&[&root])).unwrap();
    let snap = root
        .join("datasets--fake--csv-data/snapshots")
        .join(fake_hub::CONVERTED);
    assert_eq!(
        (got.path.as_path(), got.origin),
        (snap.as_path(), Origin::Downloaded)
    );
    assert!(snap.join("default/train/0000.parquet").exists());
    assert!(snap.join("default/test/0000.parquet").exists());
    assert!(!snap.join("other").exists());
    let again = resolve_dataset_in("fake/csv-data", true, &roots(&[&root])).unwrap();
    assert_eq!(
        again.origin,
        Origin::HfCache {
            revision: fake_hub::CONVERTED.to_string()
        }
    );
}
