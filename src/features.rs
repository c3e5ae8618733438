//! The feature cache: [CLS] vectors of a split, stored once and reused by every run
//! that would compute the same ones.
//!
//! The encoder is frozen and deterministic, so its output is a function of the
//! weights, the tokenizer, `max_length`, the backend and precision that ran it, and the
//! texts. [`FeatureKey`] names all of these; an entry is `<digest>.safetensors` holding
//! the tensor `cls` [rows, hidden] with the key's fields and the sha256 of the tensor's
//! bytes as metadata.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsio::atomic_write;
use crate::le_floats;

/// Bumped whenever the meaning of a cached entry changes (how features are computed,
/// how the key is serialised), so that old entries miss instead of being misread.
const FORMAT_VERSION: u32 = 1;
const TENSOR: &str = "cls";
/// The metadata key of the sha256 of the tensor's bytes. Floats overwritten in place (a
/// disk fault, a stray write) keep the file readable and the shape right: only a
/// checksum tells them from the features that were stored. Entries written before it
/// have none: they are read with the other checks and rewritten with one, so that a
/// cache of hours of encoding survives the upgrade.
const CHECKSUM: &str = "cls_sha256";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureKey {
    pub weights_sha256: String,
    /// A fingerprint of the tokenizer (its files' hashes, say): two tokenizers that
    /// split text differently must not share features.
    pub tokenizer: String,
    pub max_length: usize,
    /// "cpu" or "cuda".
    pub backend: String,
    /// "fp32" or "tf32".
    pub precision: String,
    /// [`hash_split`] of the texts and labels.
    pub data_hash: String,
    /// "cls" or "mean". Left out of the key and the metadata when "cls", so entries
    /// written before pooling was a choice (all [CLS]) keep their digests.
    #[serde(skip_serializing_if = "is_cls")]
    pub pooling: String,
    /// "truncate" or "chunk:<stride>"; left out when "truncate", as pooling.
    #[serde(skip_serializing_if = "is_truncate")]
    pub long: String,
    /// For chunked features, the revision of how a text's windows are cut: 2 since they
    /// are its first `MAX_WINDOWS` whatever its characters per token (1 cut the text at
    /// 64 * max_length characters first, losing windows of English and other multi-
    /// character tokens). Entries of 1 would hit a key without it; truncated keys leave
    /// it out and keep their digests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<u32>,
}

/// [`FeatureKey::windows`] of chunked features made now.
pub const WINDOWS_REVISION: u32 = 2;

/// The window revision features of long-text mode `long` are made with now: none for
/// truncated ones, whose cut never changed.
pub fn windows_revision(long: &str) -> Option<u32> {
    (!is_truncate(long)).then_some(WINDOWS_REVISION)
}

/// What a text's feature depends on besides the text itself: a [`FeatureKey`] without
/// its data. Bulk `encode` records it in its manifest, and `train --features-from`
/// compares a file's with its own before taking the file's features into the cache, so
/// that the cache, the bulk manifest and the import check name the same fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeSpec {
    pub weights_sha256: String,
    pub tokenizer: String,
    pub max_length: usize,
    pub backend: String,
    pub precision: String,
    pub pooling: String,
    pub long: String,
    /// [`FeatureKey::windows`]: bulk outputs of chunked features made before the window
    /// fix have none in their manifest, and are refused by what reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<u32>,
}

impl FeatureKey {
    /// The key of `spec`'s features of the split whose content hash is `data_hash`.
    pub fn new(spec: &EncodeSpec, data_hash: &str) -> FeatureKey {
        FeatureKey {
            weights_sha256: spec.weights_sha256.clone(),
            tokenizer: spec.tokenizer.clone(),
            max_length: spec.max_length,
            backend: spec.backend.clone(),
            precision: spec.precision.clone(),
            data_hash: data_hash.to_string(),
            pooling: spec.pooling.clone(),
            long: spec.long.clone(),
            windows: spec.windows,
        }
    }

    /// For chunked features, the key of the same split's truncated features, from which
    /// every text that fits one window takes its feature; `None` for truncated ones.
    pub fn truncated(&self) -> Option<FeatureKey> {
        (!is_truncate(&self.long)).then(|| FeatureKey {
            long: "truncate".to_string(),
            windows: None,
            ..self.clone()
        })
    }
}

fn is_truncate(long: &str) -> bool {
    long == "truncate"
}

fn is_cls(pooling: &str) -> bool {
    pooling == "cls"
}

impl FeatureKey {
    /// The sha256 of the key's JSON form (fields in declaration order, strings escaped,
    /// so distinct keys cannot serialise alike) prefixed by the format version.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(&(FORMAT_VERSION, self))
            .expect("a struct of strings and integers serialises");
        hex(&Sha256::digest(&canonical))
    }

    fn metadata(&self) -> HashMap<String, String> {
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT_VERSION.to_string()),
            ("weights_sha256".to_string(), self.weights_sha256.clone()),
            ("tokenizer".to_string(), self.tokenizer.clone()),
            ("max_length".to_string(), self.max_length.to_string()),
            ("backend".to_string(), self.backend.clone()),
            ("precision".to_string(), self.precision.clone()),
            ("data_hash".to_string(), self.data_hash.clone()),
        ]);
        if !is_cls(&self.pooling) {
            meta.insert("pooling".to_string(), self.pooling.clone());
        }
        if !is_truncate(&self.long) {
            meta.insert("long".to_string(), self.long.clone());
        }
        if let Some(revision) = self.windows {
            meta.insert("windows".to_string(), revision.to_string());
        }
        meta
    }
}

/// The folder that holds everything bertcls caches: `$BERTCLS_CACHE`, else
/// `bertcls` in the user's cache folder (`~/.cache` on Linux).
pub fn cache_root() -> PathBuf {
    match std::env::var_os("BERTCLS_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("bertcls"),
    }
}

#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `features` under [`cache_root`].
    pub fn default_dir() -> PathBuf {
        cache_root().join("features")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `key` lives, whether or not it exists.
    pub fn path(&self, key: &FeatureKey) -> PathBuf {
        self.dir.join(format!("{}.safetensors", key.digest()))
    }

    /// The stored features for `key`, row-major [rows, hidden], or `None` on a miss.
    /// An entry that cannot be read back as this key's features (truncated, wrong
    /// dtype or rank, another key's metadata, a checksum its bytes do not match, a NaN
    /// or infinity) is a miss: it is removed with a one-line warning so that the
    /// caller's `put` replaces it. An entry from before checksums gets one here.
    pub fn get(&self, key: &FeatureKey) -> Result<Option<Vec<f32>>> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Below a file (NotADirectory) no entry can exist either: a miss, and the
            // `put` that follows says why the cache cannot be written.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                    "cannot read feature cache entry {}: fix its permissions or pass --no-cache",
                    path.display()
                )
                })
            }
        };
        match decode(&bytes, key) {
            Ok(entry) => {
                if !entry.checksummed {
                    // A cache that cannot be written stays readable: the entry is only
                    // checked again on its next read.
                    let _ = self.put(key, &entry.features, entry.rows, entry.hidden);
                }
                Ok(Some(entry.features))
            }
            Err(why) => {
                eprintln!(
                    "warning: feature cache entry {} is unusable ({why}); removing it and encoding afresh",
                    path.display()
                );
                // Failing to remove it is harmless: the next `put` writes over it.
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Stores `features` (row-major [rows, hidden]) for `key`, atomically: a run killed
    /// mid-write leaves the old entry or none, never a torn one.
    pub fn put(
        &self,
        key: &FeatureKey,
        features: &[f32],
        rows: usize,
        hidden: usize,
    ) -> Result<()> {
        if rows.checked_mul(hidden) != Some(features.len()) {
            bail!(
                "cannot cache {} floats as {rows} rows of {hidden}: the encoder returned the wrong count",
                features.len()
            );
        }
        let bytes = le_floats::f32_bytes(features);
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![rows, hidden], &bytes)
            .context("cannot lay out the features as a tensor")?;
        let mut metadata = key.metadata();
        metadata.insert(CHECKSUM.to_string(), sha256_hex(&bytes));
        let file = crate::safetensors_out::serialize([(TENSOR, view)], Some(metadata))
            .context("cannot serialise the features")?;
        let removed = crate::fsio::remove_abandoned_temp_files(&self.dir);
        if removed > 0 {
            eprintln!(
                "removed {removed} temporary file(s) of killed writes from the feature cache {}",
                self.dir.display()
            );
        }
        atomic_write(&self.path(key), &file)
    }
}

/// A cache entry that passed every check.
struct Entry {
    features: Vec<f32>,
    rows: usize,
    hidden: usize,
    /// Written with a checksum, and matching it; false for an entry from before them.
    checksummed: bool,
}

fn decode(bytes: &[u8], key: &FeatureKey) -> Result<Entry, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    let checksum = metadata.remove(CHECKSUM);
    if metadata != key.metadata() {
        return Err("its metadata does not match its key".to_string());
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let cls = tensors.tensor(TENSOR).map_err(|e| e.to_string())?;
    if cls.dtype() != Dtype::F32 || cls.shape().len() != 2 {
        return Err(format!(
            "`{TENSOR}` is {:?} {:?}, not F32 [rows, hidden]",
            cls.dtype(),
            cls.shape()
        ));
    }
    let (rows, hidden) = (cls.shape()[0], cls.shape()[1]);
    let data = cls.data();
    if data.len() != rows * hidden * 4 {
        return Err(format!(
            "`{TENSOR}` holds {} bytes for shape [{rows}, {hidden}]",
            data.len()
        ));
    }
    if checksum
        .as_ref()
        .is_some_and(|sum| *sum != sha256_hex(data))
    {
        return Err("its features do not match their checksum: the file was altered".to_string());
    }
    let features = le_floats::f32s(data);
    if let Some((row, value)) = first_non_finite(&features, hidden) {
        return Err(format!("row {row} holds a non-finite feature ({value})"));
    }
    Ok(Entry {
        features,
        rows,
        hidden,
        checksummed: checksum.is_some(),
    })
}

/// The row and value of the first NaN or infinity in row-major `features` [rows,
/// hidden]. One in the features makes the first step's loss NaN, which reads as too
/// large a learning rate: where features come in, they are checked for it instead.
pub fn first_non_finite(features: &[f32], hidden: usize) -> Option<(usize, f32)> {
    let at = features.iter().position(|v| !v.is_finite())?;
    Some((at / hidden, features[at]))
}

/// The content hash of a split: texts and labels, each length-prefixed so that
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn hash_split(texts: &[String], labels: &[usize]) -> String {
    let mut h = Sha256::new();
    h.update(b"bertcls-split-v1");
    update_texts(&mut h, texts);
    h.update((labels.len() as u64).to_le_bytes());
    for &label in labels {
        h.update((label as u64).to_le_bytes());
    }
    hex(&h.finalize())
}

/// The content hash of a run of texts (length-prefixed, as [`hash_split`]'s), without
/// labels: features depend on the texts only. Bulk `encode` records it for every chunk
/// of rows it writes, so that `train --features-from` can tell the file's texts are the
/// ones it loaded.
pub fn hash_texts(texts: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"bertcls-texts-v1");
    update_texts(&mut h, texts);
    hex(&h.finalize())
}

/// The count, then each text length-prefixed, so that `["ab", "c"]` and `["a", "bc"]`
/// hash apart.
fn update_texts(h: &mut Sha256, texts: &[String]) {
    h.update((texts.len() as u64).to_le_bytes());
    for text in texts {
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
}

/// The sha256 of a file, remembered in `sha256/` under [`cache_root`] per (path, size,
/// modification time, inode, status-change time), so that a second run does not re-read
/// a 400 MB weights file.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_file_memo(path, &cache_root().join("sha256"))
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Memo {
    path: String,
    size: u64,
    mtime_ns: u128,
    /// Size and mtime alone take a same-size file whose mtime was carried over (`cp -p`,
    /// `rsync -a`, `tar`) for the one hashed. Such a copy is a new inode, or the old one
    /// rewritten, which moves its ctime; no user can set a ctime.
    inode: u64,
    ctime_ns: i128,
    sha256: String,
}

impl Memo {
    /// Whether both describe the same file in the same state: every field but the hash.
    fn is_of_the_file(&self, other: &Memo) -> bool {
        self.path == other.path
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.inode == other.inode
            && self.ctime_ns == other.ctime_ns
    }
}

/// The inode and ctime (ns) of a file; zero where the platform has neither, which leaves
/// path, size and mtime to tell files apart.
#[cfg(unix)]
fn inode_and_ctime(meta: &std::fs::Metadata) -> (u64, i128) {
    use std::os::unix::fs::MetadataExt;
    (
        meta.ino(),
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    )
}

#[cfg(not(unix))]
fn inode_and_ctime(_meta: &std::fs::Metadata) -> (u64, i128) {
    (0, 0)
}

fn sha256_file_memo(path: &Path, memo_dir: &Path) -> Result<String> {
    // Canonical, so that the HF cache's symlinked snapshot files share one memo entry
    // with the content-addressed blob they point to.
    let real = path
        .canonicalize()
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta =
        std::fs::metadata(&real).with_context(|| format!("cannot stat {}", real.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos());
    let real_name = real.to_string_lossy().into_owned();
    let memo_path = memo_dir.join(format!(
        "{}.json",
        &hex(&Sha256::digest(real_name.as_bytes()))[..32]
    ));

    let Some(mtime_ns) = mtime_ns else {
        // No modification time, no way to tell a changed file: hash every time.
        return hash_file(&real);
    };
    let (inode, ctime_ns) = inode_and_ctime(&meta);
    let mut memo = Memo {
        path: real_name,
        size: meta.len(),
        mtime_ns,
        inode,
        ctime_ns,
        sha256: String::new(),
    };
    // A memo written before a key field existed does not parse: the file is hashed again.
    if let Some(stored) = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
    {
        if stored.is_of_the_file(&memo) {
            return Ok(stored.sha256);
        }
    }
    memo.sha256 = hash_file(&real)?;
    // A memo write killed between its temporary file and the rename leaves the
    // temporary: cleared here, where memos are written, as the feature cache's are.
    crate::fsio::remove_abandoned_temp_files(memo_dir);
    // The memo only saves time: a read-only cache folder must not stop the run.
    let _ = serde_json::to_vec(&memo).map(|json| atomic_write(&memo_path, &json));
    Ok(memo.sha256)
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The sha256 of features as little-endian f32 bytes in row order: the same bytes
/// whatever file holds them (a bulk encode's parquet, safetensors or the cache).
pub fn hash_features(x: &[f32]) -> String {
    sha256_hex(&le_floats::f32_bytes(x))
}

/// The sha256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> crate::testdir::TestDir {
        crate::testdir::TestDir::new(&format!("features-{name}"))
    }

    fn key() -> FeatureKey {
        FeatureKey {
            weights_sha256: "ab".repeat(32),
            tokenizer: "tok".to_string(),
            max_length: 350,
            backend: "cpu".to_string(),
            precision: "fp32".to_string(),
            data_hash: hash_split(&["好".to_string()], &[1]),
            pooling: "cls".to_string(),
            long: "truncate".to_string(),
            windows: None,
        }
    }

    /// [CLS] keys serialise as before pooling was a key field, so caches written then
    /// still hit: the digest is that of the old six-field form.
    #[test]
    fn a_cls_key_keeps_the_digest_it_had_before_pooling() {
        let k = key();
        let old_form = format!(
            r#"[{FORMAT_VERSION},{{"weights_sha256":"{}","tokenizer":"tok","max_length":350,"backend":"cpu","precision":"fp32","data_hash":"{}"}}]"#,
            k.weights_sha256, k.data_hash
        );
        assert_eq!(k.digest(), hex(&Sha256::digest(old_form.as_bytes())));
        assert!(!k.metadata().contains_key("pooling"));
        let mean = FeatureKey {
            pooling: "mean".to_string(),
            ..key()
        };
        assert_eq!(mean.metadata()["pooling"], "mean");
    }

    #[test]
    fn put_then_get_round_trips() {
        let dir = temp_dir("roundtrip");
        let cache = FeatureCache::new(dir.to_path_buf());
        let features: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        assert_eq!(cache.get(&key()).unwrap(), None);
        cache.put(&key(), &features, 2, 3).unwrap();
        assert_eq!(cache.get(&key()).unwrap(), Some(features));
    }

    #[test]
    fn every_key_field_changes_the_digest() {
        let base = key();
        let variants = [
            FeatureKey {
                weights_sha256: "cd".repeat(32),
                ..base.clone()
            },
            FeatureKey {
                tokenizer: "other".to_string(),
                ..base.clone()
            },
            FeatureKey {
                max_length: 128,
                ..base.clone()
            },
            FeatureKey {
                backend: "cuda".to_string(),
                ..base.clone()
            },
            FeatureKey {
                precision: "tf32".to_string(),
                ..base.clone()
            },
            FeatureKey {
                data_hash: hash_split(&[], &[]),
                ..base.clone()
            },
            FeatureKey {
                pooling: "mean".to_string(),
                ..base.clone()
            },
            FeatureKey {
                long: "chunk:64".to_string(),
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(v.digest(), base.digest(), "{v:?}");
        }
        assert_eq!(base.digest(), key().digest());
    }

    /// Chunked entries written when windows were cut at 64 * max_length characters
    /// (their key had no `windows`) hold too few windows for long texts of multi-character
    /// tokens: today's chunk key must not hit them, while truncated keys are unchanged.
    #[test]
    fn chunk_keys_from_before_the_window_fix_miss() {
        let spec = |long: &str| EncodeSpec {
            weights_sha256: key().weights_sha256,
            tokenizer: key().tokenizer,
            max_length: 350,
            backend: "cpu".to_string(),
            precision: "fp32".to_string(),
            pooling: "cls".to_string(),
            long: long.to_string(),
            windows: windows_revision(long),
        };
        let data = key().data_hash;
        let now = FeatureKey::new(&spec("chunk:64"), &data);
        let before = FeatureKey {
            windows: None,
            ..now.clone()
        };
        assert_eq!(now.windows, Some(2));
        assert_ne!(now.digest(), before.digest());
        assert_eq!(now.metadata()["windows"], "2");
        assert_eq!(
            FeatureKey::new(&spec("truncate"), &data).digest(),
            key().digest()
        );
    }

    #[test]
    fn a_changed_max_length_misses() {
        let dir = temp_dir("maxlen");
        let cache = FeatureCache::new(dir.to_path_buf());
        cache.put(&key(), &[1.0, 2.0], 1, 2).unwrap();
        let shorter = FeatureKey {
            max_length: 128,
            ..key()
        };
        assert_eq!(cache.get(&shorter).unwrap(), None);
        assert!(cache.get(&key()).unwrap().is_some());
    }

    #[test]
    fn a_corrupt_entry_is_a_miss_and_is_removed() {
        let dir = temp_dir("corrupt");
        let cache = FeatureCache::new(dir.to_path_buf());
        cache.put(&key(), &[1.0; 8], 2, 4).unwrap();
        let path = cache.path(&key());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert_eq!(cache.get(&key()).unwrap(), None);
        assert!(!path.exists());
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert_eq!(cache.get(&key()).unwrap(), None);
        assert!(!path.exists());
    }

    /// The data region of `path` (after the 8-byte length and the header).
    fn data_start(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }

    #[test]
    fn put_records_the_checksum_of_the_features_and_writes_the_same_bytes_twice() {
        let dir = temp_dir("checksum");
        let cache = FeatureCache::new(dir.to_path_buf());
        let features = [1.0, -2.0, 0.25, 8.0];
        cache.put(&key(), &features, 2, 2).unwrap();
        let path = cache.path(&key());
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let data: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            header.metadata().as_ref().unwrap()[CHECKSUM],
            hex(&Sha256::digest(&data))
        );
        cache.put(&key(), &features, 2, 2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    /// The audit's case: finite floats written over the data keep the file readable
    /// and its shape right; only the checksum tells.
    #[test]
    fn an_entry_whose_features_were_overwritten_is_a_miss_and_is_removed() {
        let dir = temp_dir("overwritten");
        let cache = FeatureCache::new(dir.to_path_buf());
        cache.put(&key(), &[1.0; 8], 2, 4).unwrap();
        let path = cache.path(&key());
        let start = data_start(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        for chunk in bytes[start..].chunks_exact_mut(4) {
            chunk.copy_from_slice(&0x3f00_0000u32.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.get(&key()).unwrap(), None);
        assert!(!path.exists());
    }

    /// An entry written before checksums is read, and rewritten with one, byte for byte
    /// what `put` writes now.
    #[test]
    fn an_entry_without_a_checksum_is_read_and_given_one() {
        let dir = temp_dir("no-checksum");
        let cache = FeatureCache::new(dir.to_path_buf());
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 2], &data).unwrap();
        let old =
            crate::safetensors_out::serialize([(TENSOR, view)], Some(key().metadata())).unwrap();
        let path = cache.path(&key());
        std::fs::write(&path, old).unwrap();
        assert_eq!(cache.get(&key()).unwrap(), Some(vec![1.0, 2.0]));
        let upgraded = std::fs::read(&path).unwrap();
        cache.put(&key(), &[1.0, 2.0], 1, 2).unwrap();
        assert_eq!(upgraded, std::fs::read(&path).unwrap());
    }

    /// bertcls stores no such entry (its callers refuse non-finite features first),
    /// but one would train a NaN head: encoding afresh is the way out of it.
    #[test]
    fn an_entry_holding_a_non_finite_feature_is_a_miss_and_is_removed() {
        let dir = temp_dir("non-finite");
        let cache = FeatureCache::new(dir.to_path_buf());
        for bad in [f32::NAN, f32::INFINITY] {
            cache.put(&key(), &[1.0, 2.0, 3.0, bad], 2, 2).unwrap();
            assert_eq!(cache.get(&key()).unwrap(), None);
            assert!(!cache.path(&key()).exists());
        }
    }

    #[test]
    fn the_first_non_finite_value_is_found_with_its_row() {
        assert_eq!(first_non_finite(&[0.0, 1.0, 2.0, 3.0], 2), None);
        assert_eq!(first_non_finite(&[], 0), None);
        let found = first_non_finite(&[0.0, 1.0, 2.0, f32::NEG_INFINITY, f32::NAN], 2);
        assert_eq!(found, Some((1, f32::NEG_INFINITY)));
    }

    #[test]
    fn an_entry_under_another_keys_name_is_a_miss() {
        let dir = temp_dir("renamed");
        let cache = FeatureCache::new(dir.to_path_buf());
        let other = FeatureKey {
            backend: "cuda".to_string(),
            ..key()
        };
        cache.put(&other, &[1.0, 2.0], 1, 2).unwrap();
        std::fs::rename(cache.path(&other), cache.path(&key())).unwrap();
        assert_eq!(cache.get(&key()).unwrap(), None);
    }

    #[test]
    fn put_refuses_a_shape_that_does_not_fit() {
        let dir = temp_dir("shape");
        let cache = FeatureCache::new(dir.to_path_buf());
        assert!(cache.put(&key(), &[1.0; 5], 2, 3).is_err());
    }

    #[test]
    fn a_key_made_from_a_spec_is_the_key_with_those_fields() {
        let k = key();
        let spec = EncodeSpec {
            weights_sha256: k.weights_sha256.clone(),
            tokenizer: k.tokenizer.clone(),
            max_length: k.max_length,
            backend: k.backend.clone(),
            precision: k.precision.clone(),
            pooling: k.pooling.clone(),
            long: k.long.clone(),
            windows: k.windows,
        };
        assert_eq!(FeatureKey::new(&spec, &k.data_hash), k);
        assert_eq!(FeatureKey::new(&spec, &k.data_hash).digest(), k.digest());
    }

    #[test]
    fn text_hash_is_length_prefixed_and_ignores_labels() {
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_ne!(hash_texts(&s(&["ab", "c"])), hash_texts(&s(&["a", "bc"])));
        assert_ne!(hash_texts(&s(&["a"])), hash_texts(&s(&["a", ""])));
        assert_eq!(hash_texts(&s(&["a", "b"])), hash_texts(&s(&["a", "b"])));
        // Fixed (computed with Python's hashlib over the tag, the count and the
        // length-prefixed UTF-8), so that manifests written today keep matching.
        assert_eq!(
            hash_texts(&s(&["好"])),
            "1cea3c04284f5d6e0912f38bf0b8007e459718cf659b7f67d5e371dab5e74834"
        );
    }

    #[test]
    fn split_hash_is_length_prefixed_and_sees_labels() {
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_ne!(
            hash_split(&s(&["ab", "c"]), &[0, 0]),
            hash_split(&s(&["a", "bc"]), &[0, 0])
        );
        assert_ne!(hash_split(&s(&["a"]), &[0]), hash_split(&s(&["a"]), &[1]));
        assert_eq!(hash_split(&s(&["a"]), &[1]), hash_split(&s(&["a"]), &[1]));
    }

    #[test]
    fn file_hash_matches_sha256_and_is_remembered_until_the_file_changes() {
        let dir = temp_dir("sha");
        let file = dir.join("weights.bin");
        std::fs::write(&file, b"abc").unwrap();
        let memo_dir = dir.join("sha256");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file_memo(&file, &memo_dir).unwrap(), abc);
        assert_eq!(std::fs::read_dir(&memo_dir).unwrap().count(), 1);

        // A memo is trusted while path, size and mtime agree: prove it is read by
        // planting a wrong hash in it.
        let memo_file = std::fs::read_dir(&memo_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = std::fs::read_to_string(&memo_file)
            .unwrap()
            .replace(abc, "planted");
        std::fs::write(&memo_file, text).unwrap();
        assert_eq!(sha256_file_memo(&file, &memo_dir).unwrap(), "planted");

        // The temporary of a memo write that was killed before its rename goes with the
        // next memo written; the memo beside it stays.
        let killed = memo_dir.join(".0123.json.bertcls-tmp-999999");
        std::fs::write(&killed, b"{").unwrap();
        std::fs::write(&file, b"abcd").unwrap();
        assert_eq!(
            sha256_file_memo(&file, &memo_dir).unwrap(),
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
        assert!(!killed.exists());
        assert_eq!(std::fs::read_dir(&memo_dir).unwrap().count(), 1);
    }

    /// The file's size and mtime stay, its content changes: what `rsync -a` (a new file
    /// renamed over the old) and `cp -p` (the old file rewritten) do.
    #[cfg(unix)]
    #[test]
    fn a_same_size_copy_with_the_old_mtime_is_hashed_again() {
        let dir = temp_dir("sha-mtime-kept");
        let file = dir.join("weights.bin");
        let memo_dir = dir.join("sha256");
        std::fs::write(&file, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let xyz = "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282";
        assert_eq!(sha256_file_memo(&file, &memo_dir).unwrap(), abc);
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();

        let copy = dir.join("weights.bin.partial");
        std::fs::write(&copy, b"xyz").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&copy, &file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
        assert_eq!(sha256_file_memo(&file, &memo_dir).unwrap(), xyz);

        // File timestamps tick at the kernel's clock tick (up to 10 ms): wait past it so
        // that the rewrite's ctime is not the one the memo holds.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let rewritten = std::fs::File::options().write(true).open(&file).unwrap();
        std::io::Write::write_all(&mut &rewritten, b"abc").unwrap();
        rewritten.set_modified(mtime).unwrap();
        drop(rewritten);
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
        assert_eq!(sha256_file_memo(&file, &memo_dir).unwrap(), abc);
    }
}
