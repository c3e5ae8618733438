//! Where a model or a dataset comes from: a path the user gave, the Hugging Face hub
//! cache, or a download through `hf-hub`.
//!
//! The cache is read by hand rather than through `hf_hub::Cache` because we need to
//! say *why* a cached copy is unusable (no ref, missing shard) and to search more than
//! one cache folder; `hf-hub` is only used to download. `hf-hub` knows nothing of
//! `HF_HUB_OFFLINE` or `HF_HUB_CACHE`, so both are handled here.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

pub const DEFAULT_MODEL: &str = "bert-base-chinese";
pub const DEFAULT_DATASET: &str = "lansinuote/ChnSentiCorp";

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The branch where the hub keeps its parquet conversion of datasets stored in other
/// formats; `hf-hub` and `huggingface_hub` both record it as `refs/refs/convert/parquet`.
const PARQUET_BRANCH: &str = "refs/convert/parquet";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A path given by the user (for data, a file or a folder).
    LocalDir,
    /// A snapshot already in the HF cache; `revision` is its commit hash.
    HfCache { revision: String },
    /// Fetched from the hub into the first cache folder just now.
    Downloaded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::LocalDir => f.write_str("local path"),
            Origin::HfCache { revision } => write!(f, "HF cache, revision {revision}"),
            Origin::Downloaded => f.write_str("downloaded from the hub"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// A folder with `config.json`, the tokenizer and the weights.
    pub dir: PathBuf,
    /// The hub id (without `@revision`), or the canonical folder for a local model.
    pub id: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDataset {
    /// The user's file or folder, or a hub snapshot folder holding parquet files.
    pub path: PathBuf,
    /// The hub id (without `@revision`), or the canonical path for local data.
    pub id: String,
    pub origin: Origin,
}

/// The HF cache folders to search, in order; downloads go into the first.
///
/// More than one is searched because a model cached before the user set `HF_HOME`
/// or `HF_HUB_CACHE` is still a good copy, and re-downloading 400 MB (or failing
/// offline) when it sits in the default folder helps no one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRoots {
    roots: Vec<PathBuf>,
}

impl CacheRoots {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        let mut seen = BTreeSet::new();
        let roots = roots
            .into_iter()
            .filter(|r| seen.insert(r.clone()))
            .collect();
        Self { roots }
    }

    /// `HF_HUB_CACHE`, then `$HF_HOME/hub`, then `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("HF_HUB_CACHE"),
            std::env::var_os("HF_HOME"),
            dirs::home_dir(),
        )
    }

    /// The rule behind [`CacheRoots::from_env`], apart from the process environment so
    /// that it can be tested without racing other tests. Empty variables count as unset.
    pub fn from_vars(
        hf_hub_cache: Option<OsString>,
        hf_home: Option<OsString>,
        home: Option<PathBuf>,
    ) -> Self {
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
        let roots = [
            set(hf_hub_cache),
            set(hf_home).map(|h| h.join("hub")),
            home.map(|h| h.join(".cache").join("huggingface").join("hub")),
        ];
        Self::new(roots.into_iter().flatten().collect())
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

/// Whether `HF_HUB_OFFLINE` forbids the network, read as `huggingface_hub` does.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| is_truthy(&v))
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// Resolves `--model`: a folder, else a hub id (`name`, `org/name`, `org/name@rev`)
/// found in the HF cache or, when online, downloaded into it.
pub fn resolve_model(spec: &str, offline: bool) -> Result<ResolvedModel> {
    resolve_model_in(spec, offline || offline_from_env(), &CacheRoots::from_env())
}

/// [`resolve_model`] with the cache folders given and `offline` taken as final.
pub fn resolve_model_in(spec: &str, offline: bool, roots: &CacheRoots) -> Result<ResolvedModel> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ResolvedModel {
            dir: path.to_path_buf(),
            id: canonical_name(path),
            origin: Origin::LocalDir,
        });
    }
    if path.exists() {
        bail!(
            "--model {spec} is a file, not a folder: pass the folder that holds config.json, \
             model.safetensors and tokenizer.json or vocab.txt"
        );
    }
    let Some(id) = HubId::parse(spec) else {
        bail!(
            "--model {spec}: no such folder, and not a hub id (name, org/name or org/name@revision)"
        );
    };
    if names_a_local_folder(spec) {
        bail!(
            "--model {spec}: no such folder; pass a folder that holds config.json, \
             model.safetensors and tokenizer.json or vocab.txt (for the hub model of that id, \
             write {spec}@main)"
        );
    }
    let kind = Kind::Model;
    match find_in_cache(roots, kind, &id) {
        Ok((dir, revision)) => Ok(ResolvedModel {
            dir,
            id: id.repo,
            origin: Origin::HfCache { revision },
        }),
        Err(searched) => {
            if offline {
                bail!("{}", offline_message(kind, &id, &searched));
            }
            let dir = download_model(&id, download_root(roots, kind, &id)?)?;
            Ok(ResolvedModel {
                dir,
                id: id.repo,
                origin: Origin::Downloaded,
            })
        }
    }
}

/// Resolves `--data`: an existing file or folder, else a hub dataset id whose parquet
/// files are found in the HF cache or, when online, downloaded into it. A hub dataset
/// resolves to its snapshot folder, which holds the parquet files.
pub fn resolve_dataset(spec: &str, offline: bool) -> Result<ResolvedDataset> {
    resolve_dataset_in(spec, offline || offline_from_env(), &CacheRoots::from_env())
}

/// [`resolve_dataset`] with the cache folders given and `offline` taken as final.
pub fn resolve_dataset_in(
    spec: &str,
    offline: bool,
    roots: &CacheRoots,
) -> Result<ResolvedDataset> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(ResolvedDataset {
            path: path.to_path_buf(),
            id: canonical_name(path),
            origin: Origin::LocalDir,
        });
    }
    // `train.jsonl` and `data/train.parquet` are valid hub ids too; a user who typed
    // one meant a file, and "not in the HF cache" would send them the wrong way.
    let id = HubId::parse(spec).filter(|_| !has_data_extension(spec));
    let Some(id) = id.filter(|_| !names_a_local_folder(spec)) else {
        bail!("--data {spec}: no such file or folder");
    };
    let kind = Kind::Dataset;
    match find_in_cache(roots, kind, &id) {
        Ok((path, revision)) => Ok(ResolvedDataset {
            path,
            id: id.repo,
            origin: Origin::HfCache { revision },
        }),
        Err(searched) => {
            if offline {
                bail!("{}", offline_message(kind, &id, &searched));
            }
            let path = download_dataset(&id, download_root(roots, kind, &id)?)?;
            Ok(ResolvedDataset {
                path,
                id: id.repo,
                origin: Origin::Downloaded,
            })
        }
    }
}

fn canonical_name(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Whether an `owner/name` spec is a path: its owner is a folder here (`models/x`,
/// `data/x`), so a cache miss for a hub repo `models/x` would send the user the wrong
/// way. An `@revision` makes it a hub id whatever folders there are.
fn names_a_local_folder(spec: &str) -> bool {
    !spec.contains('@')
        && spec
            .split_once('/')
            .is_some_and(|(owner, _)| Path::new(owner).is_dir())
}

fn has_data_extension(spec: &str) -> bool {
    let ext = Path::new(spec).extension().and_then(|e| e.to_str());
    let ext = ext.map(str::to_ascii_lowercase);
    matches!(
        ext.as_deref(),
        Some("parquet" | "jsonl" | "json" | "csv" | "tsv" | "arrow")
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Dataset,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Dataset => "dataset",
        }
    }

    fn repo_type(self) -> RepoType {
        match self {
            Kind::Model => RepoType::Model,
            Kind::Dataset => RepoType::Dataset,
        }
    }

    /// The folder name the hub cache gives a repo: `models--org--name`.
    fn cache_folder(self, repo: &str) -> String {
        format!("{}s--{}", self.noun(), repo.replace('/', "--"))
    }

    fn instead(self) -> &'static str {
        match self {
            Kind::Model => {
                "pass --model with a local folder (config.json, model.safetensors, \
                 tokenizer.json or vocab.txt)"
            }
            Kind::Dataset => {
                "pass --data with a local path (a save_to_disk folder, parquet, .jsonl, \
                 .csv or .tsv)"
            }
        }
    }
}

/// A hub repo id with an optional `@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HubId {
    repo: String,
    revision: Option<String>,
}

impl HubId {
    /// Follows the hub's naming rules, so that a mistyped path is not taken for an id.
    fn parse(spec: &str) -> Option<HubId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_name(p)) {
            return None;
        }
        if let Some(rev) = revision {
            let bad = rev.is_empty()
                || rev.chars().any(|c| c.is_whitespace() || c == '\\')
                || rev
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                return None;
            }
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 96
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("--")
        && !name.contains("..")
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// Looks for a usable snapshot of `id` in every cache root. On failure returns, per
/// root, the repo folder searched and what was wrong with it.
fn find_in_cache(
    roots: &CacheRoots,
    kind: Kind,
    id: &HubId,
) -> Result<(PathBuf, String), Vec<String>> {
    let mut searched = Vec::new();
    for root in roots.roots() {
        let repo_dir = root.join(kind.cache_folder(&id.repo));
        if !repo_dir.is_dir() {
            searched.push(repo_dir.display().to_string());
            continue;
        }
        // A dataset stored as CSV or JSON on the hub has parquet files only on the
        // conversion branch; an explicit revision means the user wants that one alone.
        let mut revisions = vec![id.revision()];
        if kind == Kind::Dataset && id.revision.is_none() {
            revisions.push(PARQUET_BRANCH);
        }
        let mut notes = Vec::new();
        for revision in revisions {
            match usable_snapshot(&repo_dir, kind, revision) {
                Ok(found) => return Ok(found),
                Err(note) => notes.push(note),
            }
        }
        searched.push(format!("{} [{}]", repo_dir.display(), notes.join("; ")));
    }
    Err(searched)
}

fn usable_snapshot(
    repo_dir: &Path,
    kind: Kind,
    revision: &str,
) -> Result<(PathBuf, String), String> {
    let snapshots = repo_dir.join("snapshots");
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit && snapshots.join(revision).is_dir() {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        match std::fs::read_to_string(&ref_path) {
            Ok(text) => text.trim().to_string(),
            Err(_) => return Err(format!("no refs/{revision}")),
        }
    };
    // By characters: a hand-edited ref may hold anything.
    let short: String = commit.chars().take(12).collect();
    let dir = snapshots.join(&commit);
    if commit.is_empty() || !dir.is_dir() {
        return Err(format!(
            "refs/{revision} names snapshot {short}, which is missing"
        ));
    }
    let gaps = match kind {
        Kind::Model => model_gaps(&dir),
        Kind::Dataset if has_parquet(&dir, 4) => Vec::new(),
        Kind::Dataset => vec!["no .parquet files".to_string()],
    };
    if gaps.is_empty() {
        Ok((dir, commit))
    } else {
        Err(format!(
            "snapshot {short} of {revision}: {}",
            gaps.join(", ")
        ))
    }
}

/// What a model folder lacks for bertcls to load it; empty when complete. A snapshot
/// file whose blob is gone is a dangling link, which `exists` reports as missing.
fn model_gaps(dir: &Path) -> Vec<String> {
    let mut gaps = Vec::new();
    if !dir.join("config.json").exists() {
        gaps.push("no config.json".to_string());
    }
    if !dir.join("tokenizer.json").exists() && !dir.join("vocab.txt").exists() {
        gaps.push("no tokenizer.json or vocab.txt".to_string());
    }
    let index = dir.join("model.safetensors.index.json");
    if !dir.join("model.safetensors").exists() {
        if index.exists() {
            match index_shards(&index) {
                Ok(shards) => {
                    let missing: Vec<_> = shards.iter().filter(|s| !dir.join(s).exists()).collect();
                    if !missing.is_empty() {
                        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                        gaps.push(format!("missing shards {}", names.join(" ")));
                    }
                }
                Err(e) => gaps.push(format!("{e:#}")),
            }
        } else {
            gaps.push("no model.safetensors or model.safetensors.index.json".to_string());
        }
    }
    gaps
}

/// The shard files a `model.safetensors.index.json` names, relative to its folder.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?;
    let mut shards = BTreeSet::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| {
            anyhow!(
                "{} has a weight_map entry that is not a file name",
                index.display()
            )
        })?;
        shards.insert(file.to_string());
    }
    Ok(shards.into_iter().collect())
}

fn has_parquet(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_file() {
            path.extension().is_some_and(|e| e == "parquet")
        } else {
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            depth > 0 && !hidden && path.is_dir() && has_parquet(&path, depth - 1)
        }
    })
}

fn offline_message(kind: Kind, id: &HubId, searched: &[String]) -> String {
    let places = if searched.is_empty() {
        "no cache folder: HF_HUB_CACHE, HF_HOME and the home folder are all unset".to_string()
    } else {
        format!("searched {}", searched.join(", "))
    };
    format!(
        "{} \"{id}\" is not in the HF cache ({places}) and HF_HUB_OFFLINE=1 / --offline \
         forbids downloading: {}",
        kind.noun(),
        kind.instead()
    )
}

fn download_root<'a>(roots: &'a CacheRoots, kind: Kind, id: &HubId) -> Result<&'a Path> {
    match roots.roots().first() {
        Some(root) => Ok(root),
        None => bail!(
            "cannot download {} \"{id}\": no HF cache folder (set HF_HOME or HF_HUB_CACHE), or {}",
            kind.noun(),
            kind.instead()
        ),
    }
}

/// A connection to the hub for one repo, with what is needed to word its errors.
struct Hub {
    repo: ApiRepo,
    endpoint: String,
    kind: Kind,
    id: HubId,
    revision: String,
}

impl Hub {
    /// Honours `HF_ENDPOINT` and `HF_TOKEN`; without `HF_TOKEN` hf-hub reads the token
    /// file that `huggingface-cli login` writes beside the cache folder.
    fn connect(kind: Kind, id: &HubId, revision: &str, cache_root: &Path) -> Result<Hub> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let mut builder = ApiBuilder::from_cache(Cache::new(cache_root.to_path_buf()))
            .with_endpoint(endpoint.clone());
        if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
            builder = builder.with_token(Some(token));
        }
        let api = builder.build().map_err(|e| {
            anyhow!(
                "cannot set up a connection to {endpoint} for {} \"{id}\": {}; {}",
                kind.noun(),
                one_line(&e),
                kind.instead()
            )
        })?;
        let repo = api.repo(Repo::with_revision(
            id.repo.clone(),
            kind.repo_type(),
            revision.to_string(),
        ));
        Ok(Hub {
            repo,
            endpoint,
            kind,
            id: id.clone(),
            revision: revision.to_string(),
        })
    }

    fn files(&self) -> Result<Vec<String>> {
        let info = self.repo.info().map_err(|e| {
            let what = match self.kind {
                Kind::Model => "models",
                Kind::Dataset => "datasets",
            };
            // The same URL hf-hub asks, which escapes the `/` of branch names.
            let url = format!(
                "{}/api/{what}/{}/revision/{}",
                self.endpoint,
                self.id.repo,
                self.revision.replace('/', "%2F")
            );
            self.failure(&url, &e)
        })?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// Downloads `file` unless this revision's copy is already cached.
    fn get(&self, file: &str) -> Result<PathBuf> {
        self.repo
            .get(file)
            .map_err(|e| self.failure(&self.repo.url(file), &e))
    }

    fn failure(&self, url: &str, err: &ApiError) -> anyhow::Error {
        anyhow!(
            "cannot download {} \"{}\" from {url}: {}; check the network, HF_ENDPOINT and \
             HF_TOKEN, or {}",
            self.kind.noun(),
            self.id,
            // ureq repeats the URL in its message; once is enough.
            one_line(err).replace(&format!("{url}: "), ""),
            self.kind.instead()
        )
    }
}

/// Error texts from the HTTP stack can span lines; our errors are one line.
fn one_line(err: &dyn fmt::Display) -> String {
    err.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn download_model(id: &HubId, cache_root: &Path) -> Result<PathBuf> {
    let hub = Hub::connect(Kind::Model, id, id.revision(), cache_root)?;
    let listed: BTreeSet<String> = hub.files()?.into_iter().collect();
    let has = |f: &str| listed.contains(f);
    let lacks = |what: &str| {
        anyhow!(
            "model \"{id}\" on {} has no {what}; {}",
            hub.endpoint,
            Kind::Model.instead()
        )
    };

    if !has("config.json") {
        return Err(lacks("config.json"));
    }
    let config = hub.get("config.json")?;
    if has("tokenizer.json") {
        hub.get("tokenizer.json")?;
    } else if has("vocab.txt") {
        hub.get("vocab.txt")?;
        // Lower-casing and Chinese-character splitting are set here for a vocab.txt
        // tokenizer; without the file the BERT defaults apply.
        if has("tokenizer_config.json") {
            hub.get("tokenizer_config.json")?;
        }
    } else {
        return Err(lacks("tokenizer.json or vocab.txt"));
    }
    if has("model.safetensors") {
        hub.get("model.safetensors")?;
    } else if has("model.safetensors.index.json") {
        let index = hub.get("model.safetensors.index.json")?;
        for shard in index_shards(&index)? {
            hub.get(&shard)?;
        }
    } else {
        return Err(lacks(
            "model.safetensors (bertcls reads safetensors weights only; convert the checkpoint)",
        ));
    }

    let dir = config
        .parent()
        .context("hf-hub returned a file with no folder")?
        .to_path_buf();
    let gaps = model_gaps(&dir);
    if !gaps.is_empty() {
        // Files of one download can land in different snapshots when the branch
        // moves between requests.
        bail!(
            "downloaded model \"{id}\" but its snapshot {} is incomplete ({}): run again, or {}",
            dir.display(),
            gaps.join(", "),
            Kind::Model.instead()
        );
    }
    Ok(dir)
}

fn download_dataset(id: &HubId, cache_root: &Path) -> Result<PathBuf> {
    let mut hub = Hub::connect(Kind::Dataset, id, id.revision(), cache_root)?;
    let mut files = parquet_files(hub.files()?);
    // The repo's own parquet files are the data as its authors published it; the
    // conversion branch is the hub's rendering of other formats, used only without them.
    if files.is_empty() && id.revision.is_none() {
        hub = Hub::connect(Kind::Dataset, id, PARQUET_BRANCH, cache_root)?;
        files = one_config(parquet_files(hub.files()?));
    }
    if files.is_empty() {
        bail!(
            "dataset \"{id}\" on {} has no parquet files (nor on its {PARQUET_BRANCH} branch); {}",
            hub.endpoint,
            Kind::Dataset.instead()
        );
    }
    let mut snapshot = None;
    for file in &files {
        let local = hub.get(file)?;
        // The snapshot folder is the local file less the file's path inside the repo.
        let depth = Path::new(file).components().count();
        snapshot = local.ancestors().nth(depth).map(Path::to_path_buf);
    }
    snapshot.context("hf-hub returned a file outside any snapshot folder")
}

/// The conversion branch holds `<config>/<split>/NNNN.parquet` for every config of a
/// dataset; the loader names splits by folder, so two configs would merge into one
/// `train`. Keep `default`, else the first config by name.
fn one_config(files: Vec<String>) -> Vec<String> {
    let config_of = |f: &String| f.split('/').next().unwrap_or_default().to_string();
    let configs: BTreeSet<String> = files.iter().map(config_of).collect();
    let chosen = if configs.contains("default") {
        Some("default".to_string())
    } else {
        configs.into_iter().next()
    };
    files
        .into_iter()
        .filter(|f| Some(config_of(f)) == chosen)
        .collect()
}

fn parquet_files(files: Vec<String>) -> Vec<String> {
    files
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_follow_the_hub_naming_rules() {
        let id = HubId::parse("org/name@v1.0").unwrap();
        assert_eq!((id.repo.as_str(), id.revision()), ("org/name", "v1.0"));
        assert_eq!(
            HubId::parse("bert-base-chinese").unwrap().revision(),
            "main"
        );
        assert!(HubId::parse("refs/pr/1").is_none(), "three parts is a path");
        assert!(HubId::parse("org/name@refs/pr/1").is_some());
        for bad in [
            "./model",
            "/abs/model",
            "a--b",
            "a..b",
            "-a",
            "a.",
            "",
            "a b",
            "x@",
            "x@../y",
        ] {
            assert!(HubId::parse(bad).is_none(), "{bad:?} parsed as a hub id");
        }
    }

    #[test]
    fn offline_values_as_huggingface_hub_reads_them() {
        for v in ["1", "true", "YES", " on "] {
            assert!(is_truthy(v), "{v}");
        }
        for v in ["0", "false", "", "no"] {
            assert!(!is_truthy(v), "{v}");
        }
    }

    #[test]
    fn cache_roots_in_priority_order_without_duplicates() {
        let roots = CacheRoots::from_vars(
            Some("/c".into()),
            Some("/h".into()),
            Some(PathBuf::from("/home/u")),
        );
        let want: Vec<PathBuf> = ["/c", "/h/hub", "/home/u/.cache/huggingface/hub"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(roots.roots(), want.as_slice());
        let roots = CacheRoots::from_vars(
            Some("".into()),
            Some("/home/u/.cache/huggingface".into()),
            Some("/home/u".into()),
        );
        assert_eq!(
            roots.roots(),
            [PathBuf::from("/home/u/.cache/huggingface/hub")]
        );
    }

    #[test]
    fn cache_folder_names_match_the_hub_layout() {
        assert_eq!(Kind::Model.cache_folder("org/name"), "models--org--name");
        assert_eq!(
            Kind::Dataset.cache_folder("lansinuote/ChnSentiCorp"),
            "datasets--lansinuote--ChnSentiCorp"
        );
    }

    #[test]
    fn conversion_branch_downloads_keep_one_config() {
        let files = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        let listed = files(&[
            "plain_text/train/0000.parquet",
            "default/train/0000.parquet",
            "default/test/0000.parquet",
        ]);
        assert_eq!(
            one_config(listed),
            files(&["default/train/0000.parquet", "default/test/0000.parquet"])
        );
        let listed = files(&[
            "zh/train/0000.parquet",
            "en/train/0000.parquet",
            "en/test/0000.parquet",
        ]);
        assert_eq!(
            one_config(listed),
            files(&["en/train/0000.parquet", "en/test/0000.parquet"])
        );
    }

    #[test]
    fn data_file_names_are_not_taken_for_hub_ids() {
        let roots = CacheRoots::new(Vec::new());
        let err = resolve_dataset_in("data/train.jsonl", true, &roots).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--data data/train.jsonl: no such file or folder"
        );
    }
}
