//! The folder a `train` run writes and `test` / `predict` read:
//!
//! ```text
//! run.json                    what was trained on what: RunInfo
//! metrics.jsonl               one JSON object per epoch
//! head-epoch-N.safetensors    the head + AdamW state after epoch N
//! best.safetensors            the epoch with the best validation accuracy (last without validation)
//! last.safetensors            the latest epoch: `--resume` continues from it
//! run.lock                    held (advisory lock) by the one process writing the run
//! ```
//!
//! One process writes a run folder for its whole life ([`RunFolder`]); every file is
//! written to a `.NAME.bertcls-tmp-PID` file and renamed into place (`fsio`), and the
//! temporary files a killed process left are removed when the run is opened again.

use std::path::{Path, PathBuf};

use std::fs::File;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chunk::LongTexts;
use crate::data::NumericLabels;
use crate::fsio::{atomic_write, remove_stale_temp_files};
use crate::head::ClassWeighting;
use crate::model::Pooling;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub seed: u64,
    /// The recipe drops the last incomplete batch of each epoch.
    pub drop_last: bool,
    /// `none` (the recipe's plain mean) or `balanced`; runs written before the flag
    /// existed trained with none.
    #[serde(default = "no_class_weights")]
    pub class_weights: String,
}

impl Hyperparameters {
    /// Why these cannot be what train wrote: a resume takes them for flags never given,
    /// past the flags' own checks, and a damaged value was run, or refused as a flag the
    /// user was told to drop.
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: &str, value: &dyn std::fmt::Display, want: &str| {
            Err(format!("its {what} is {value}, where train writes {want}"))
        };
        for (what, n) in [("epochs", self.epochs), ("batch_size", self.batch_size)] {
            if n == 0 {
                return bad(what, &n, "1 or more");
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", &self.lr, "a finite number above 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                &self.weight_decay,
                "a finite number, 0 or more",
            );
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad("eps", &self.eps, "a finite number, 0 or more");
        }
        for (what, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return bad(what, &beta, "a number of at least 0 and below 1");
            }
        }
        if self.class_weights.parse::<ClassWeighting>().is_err() {
            return bad("class_weights", &self.class_weights, "none or balanced");
        }
        Ok(())
    }
}

fn no_class_weights() -> String {
    ClassWeighting::None.name().to_string()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub bertcls_version: String,
    /// What `--model` named (a folder or a hub id) and the folder it resolved to.
    pub model: String,
    pub model_dir: String,
    /// The tokenizer files read (the fingerprint covers their content).
    pub tokenizer_files: Vec<String>,
    /// What determines the features: `--resume` refuses a run whose spec differs.
    #[serde(flatten)]
    pub features: FeatureSpec,
    pub hidden_size: usize,
    pub labels: Vec<String>,
    /// How the data's numbers were read: `names` where `--numeric-labels names` made
    /// each a class; absent (ids) otherwise.
    #[serde(default, skip_serializing_if = "NumericLabels::is_ids")]
    pub numeric_labels: NumericLabels,
    pub data: String,
    pub text_column: String,
    pub label_column: String,
    #[serde(flatten)]
    pub data_spec: DataSpec,
    /// Rows per label id in the train split.
    #[serde(default)]
    pub train_label_counts: Vec<usize>,
    pub hyperparameters: Hyperparameters,
    pub device: String,
    pub precision: String,
    pub created: String,
    /// How `train --search` chose the hyper-parameters above; absent for a plain run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchRecord>,
}

/// What run.json records of a `train --search`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchRecord {
    /// Where the validation rows came from: the split's name, or `held-out` rows of train.
    pub validation: String,
    /// With `held-out`: the fraction of train held out (drawn by the seed) and its rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f64>,
    pub validation_rows: usize,
    pub learning_rates: Vec<f64>,
    pub weight_decays: Vec<f64>,
    pub poolings: Vec<Pooling>,
    /// Most epochs a trial runs; it stops after `patience` epochs without a lower
    /// validation loss and keeps the head of its lowest.
    pub max_epochs: usize,
    pub patience: usize,
    pub trials: usize,
    /// The chosen trial's validation accuracy and loss.
    pub best_val_acc: f64,
    pub best_val_loss: f64,
    pub seconds: f64,
}

/// Every input that determines a run's features. A field added here is stored in
/// run.json (at its top level) and compared by `--resume` without more code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub weights_sha256: String,
    /// sha256 of the tokenizer files' content and max_length.
    pub tokenizer_fingerprint: String,
    #[serde(deserialize_with = "max_length")]
    pub max_length: usize,
    /// How features were read off the encoder; runs written before the flag used [CLS].
    #[serde(default)]
    pub pooling: Pooling,
    /// Texts longer than max_length: truncated (the recipe's; runs written before the
    /// flag) or cut into overlapping windows.
    #[serde(default, deserialize_with = "long_texts")]
    pub long: LongTexts,
}

/// serde's own words for a bad `long` (`"chunk"`: "invalid type: unit variant, expected
/// struct variant") name neither the field nor the forms it takes.
fn long_texts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LongTexts, D::Error> {
    let value = Value::deserialize(d)?;
    LongTexts::deserialize(&value).map_err(|_| {
        serde::de::Error::custom(format!(
            "\"long\" is {value}, not \"truncate\" or {{\"chunk\": {{\"stride\": N}}}}"
        ))
    })
}

/// serde's own words for a bad `max_length` ("invalid type: string, expected usize", at
/// the end of the object as the struct is flattened) do not name the field.
fn max_length<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = Value::deserialize(d)?;
    usize::deserialize(&value).map_err(|_| {
        serde::de::Error::custom(format!(
            "\"max_length\" is {value}, not a whole number of tokens"
        ))
    })
}

/// What a run trained on (the texts and labels of its splits, whatever columns or files
/// they came from): compared by `--resume` like the spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Content hashes (texts and labels) of the train and validation splits; empty in
    /// runs written before they were recorded.
    #[serde(default)]
    pub train_sha256: String,
    #[serde(default)]
    pub validation_sha256: Option<String>,
}

impl RunInfo {
    /// How `now` differs from this run in what a resume must keep: one
    /// `WHAT (run: A, now: B)` per field of the feature spec, the data, how numbers are
    /// read, the labels and the hyper-parameters (the epoch count may grow).
    pub fn resume_differences(&self, now: &RunInfo) -> Vec<String> {
        let mut diffs = field_differences(&self.features, &now.features, &[]);
        let old_run = self.data_spec.train_sha256.is_empty();
        let skip: &[&str] = if old_run {
            &["train_sha256", "validation_sha256"]
        } else {
            &[]
        };
        diffs.extend(field_differences(&self.data_spec, &now.data_spec, skip));
        // 0/1 data reads alike either way, so nothing else would differ; but the run and
        // its checkpoints record one reading for test and predict.
        if self.numeric_labels != now.numeric_labels {
            diffs.push(format!(
                "--numeric-labels (run: {}, now: {})",
                self.numeric_labels, now.numeric_labels
            ));
        }
        if self.labels != now.labels {
            diffs.push(format!(
                "labels (run: {}, now: {})",
                self.labels.join(","),
                now.labels.join(",")
            ));
        }
        diffs.extend(field_differences(
            &self.hyperparameters,
            &now.hyperparameters,
            &["epochs"],
        ));
        diffs
    }

    pub fn path(run: &Path) -> PathBuf {
        run.join("run.json")
    }

    /// Refuses a file given to `flag` (--run, --resume) for its run folder: its
    /// run.json or a checkpoint in it was refused as a folder without run.json, and
    /// --resume then said to start the run again with --out naming that file.
    pub fn refuse_file(run: &Path, flag: &str) -> Result<()> {
        if !run.is_file() {
            return Ok(());
        }
        let folder = run
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .filter(|p| Self::path(p).is_file());
        match folder {
            Some(folder) => bail!(
                "{flag} {}: a file, not a run folder: pass {flag} {} (the run folder holding it)",
                run.display(),
                folder.display()
            ),
            None => bail!(
                "{flag} {}: a file, not a run folder: pass a folder written by bertcls train",
                run.display()
            ),
        }
    }

    pub fn load(run: &Path) -> Result<Self> {
        let path = Self::path(run);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow!("cannot read {} ({e}): pass --run with a folder written by bertcls train, or --head FILE", path.display())
        })?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{} is not a bertcls run.json ({e}): it is damaged or from another tool; restore it from a copy, or train the run again",
                path.display()
            )
        })
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("cannot serialise run.json")?;
        atomic_write(&Self::path(run), json.as_bytes())
    }
}

/// `WHAT (run: A, now: B)` for each field of two values of a struct that differs.
fn field_differences<T: Serialize>(run: &T, now: &T, skip: &[&str]) -> Vec<String> {
    differences(run, now, skip, ("run", "now"))
}

/// `WHAT (A_NAME: A, B_NAME: B)` for each field of two values of a struct that differs,
/// as their JSON shows them; a field is named by its flag (`max_length`:
/// `--max-length`) unless it is one no flag sets. `--resume` compares run.json's parts
/// with it, `train --features-from` a file's encode spec with the run's.
pub fn differences<T: Serialize>(
    a: &T,
    b: &T,
    skip: &[&str],
    (a_name, b_name): (&str, &str),
) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        unreachable!("compared structs serialise to JSON objects");
    };
    let show = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "none".into(),
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| !skip.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .map(|k| {
            let what = match k.as_str() {
                "weights_sha256" => "model weights sha256".to_string(),
                "tokenizer_fingerprint" | "tokenizer" => "tokenizer fingerprint".to_string(),
                "backend" => "backend (--device)".to_string(),
                "train_sha256" => "train split content".to_string(),
                "validation_sha256" => "validation split content".to_string(),
                "beta1" | "beta2" | "eps" | "drop_last" => format!("AdamW {k}"),
                flag => format!("--{}", flag.replace('_', "-")),
            };
            format!(
                "{what} ({a_name}: {}, {b_name}: {})",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}

/// A run folder held by this process: created (when new) and locked, so that no other
/// bertcls process writes it while this one lives. The lock is released when the
/// process ends, however it ends; a new folder that never got its run.json is removed
/// on drop.
pub struct RunFolder {
    dir: PathBuf,
    /// Holds the advisory lock on run.lock.
    _lock: File,
    /// Created by this process, and to be removed on drop unless a run was written.
    created: bool,
}

impl RunFolder {
    /// A new run in `dir`: a folder that does not exist yet, or holds no run.
    pub fn create(dir: &Path) -> Result<Self> {
        let d = dir.display();
        if dir.exists() && !dir.is_dir() {
            bail!("--out {d}: is a file, not a folder: pass a folder for the run");
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fsio::create_out_folder("--out", dir, parent)?;
        }
        let created = match std::fs::create_dir(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                bail!("--out {d}: cannot create the run folder ({e}): pass a writable folder")
            }
        };
        let lock = lock(dir, "--out")?;
        let mut folder = Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            created,
        };
        if RunInfo::path(dir).exists() || last_checkpoint(dir).exists() {
            folder.created = false;
            if let Some(why) = RunInfo::load(dir)
                .ok()
                .and_then(|info| unfinished_search(dir, &info))
            {
                bail!("--out {d}: {why}");
            }
            bail!(
                "--out {d} already holds a run: pick another folder, or continue it with --resume {d}"
            );
        }
        remove_stale(dir)?;
        Ok(folder)
    }

    /// The run in `dir`, to resume: it must have its run.json.
    pub fn open(dir: &Path) -> Result<Self> {
        if !RunInfo::path(dir).is_file() {
            bail!(
                "--resume {}: no run.json there: pass a folder written by bertcls train",
                dir.display()
            );
        }
        let lock = lock(dir, "--resume")?;
        remove_stale(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            created: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes run.json; from now on the folder is kept whatever happens.
    pub fn save_info(&mut self, info: &RunInfo) -> Result<()> {
        self.created = false;
        info.save(&self.dir)
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        if self.created {
            // Only our lock file is in it; remove_dir refuses a folder with anything else.
            let _ = std::fs::remove_file(lock_path(&self.dir));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn lock_path(run: &Path) -> PathBuf {
    run.join("run.lock")
}

/// Opens run.lock (creating it, which also proves the folder writable) and takes its
/// exclusive advisory lock without waiting.
fn lock(dir: &Path, flag: &str) -> Result<File> {
    let d = dir.display();
    let path = lock_path(dir);
    match crate::fsio::try_lock(&path) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(in_use(dir, flag)),
        Err(e) => bail!(
            "{flag} {d}: cannot lock {} ({e}): pass a writable folder",
            path.display()
        ),
    }
}

fn in_use(dir: &Path, flag: &str) -> anyhow::Error {
    anyhow!(
        "{flag} {}: the run folder is in use by another bertcls process{}: wait for it to end, or pick another folder",
        dir.display(),
        crate::fsio::lock_holder(&lock_path(dir))
    )
}

/// Refuses `flag DIR` when another bertcls process holds the run.lock `dir` already has.
/// A train holds it from the start, and writes run.json only once its features are
/// ready (minutes of encoding on the CPU): a `--resume` in that time must say the
/// folder is in use, not that it holds no run. Only probes: a run.lock that is not
/// there is not created (a wrong path stays as it was), and one that no process holds
/// is left unwritten (released as the probe closes it).
pub fn refuse_if_in_use(dir: &Path, flag: &str) -> Result<()> {
    let Ok(file) = File::open(lock_path(dir)) else {
        return Ok(());
    };
    match fs4::FileExt::try_lock(&file) {
        Err(fs4::TryLockError::WouldBlock) => Err(in_use(dir, flag)),
        _ => Ok(()),
    }
}

/// Removes the temporary files killed writes left in a run folder we hold.
fn remove_stale(dir: &Path) -> Result<()> {
    let removed = remove_stale_temp_files(dir)?;
    if removed > 0 {
        eprintln!(
            "removed {removed} stale temporary file(s) from {} (left by a killed write)",
            dir.display()
        );
    }
    Ok(())
}

/// Why the run in `dir` can be neither resumed nor written again, when it is a
/// `train --search` stopped (killed, a full disk) after its run.json, which records
/// the hyper-parameters it chose, and before the chosen head: resumed, it would train
/// as a plain run from a fresh head under the search's record.
pub fn unfinished_search(dir: &Path, info: &RunInfo) -> Option<String> {
    let last = last_checkpoint(dir);
    (info.search.is_some() && !last.is_file()).then(|| {
        format!(
            "its train --search stopped before saving the head it chose ({} is missing), and a search does not resume: remove {} and run the train --search again",
            last.display(),
            dir.display()
        )
    })
}

pub fn epoch_checkpoint(run: &Path, epoch: usize) -> PathBuf {
    run.join(format!("head-epoch-{epoch}.safetensors"))
}

pub fn best_checkpoint(run: &Path) -> PathBuf {
    run.join("best.safetensors")
}

pub fn last_checkpoint(run: &Path) -> PathBuf {
    run.join("last.safetensors")
}

pub fn metrics_path(run: &Path) -> PathBuf {
    run.join("metrics.jsonl")
}
