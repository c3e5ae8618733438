//! `bertcls train --search`: the grid of `train::search` on the cached features of each
//! pooling asked for; the best trial becomes the run's best.safetensors, the table of
//! trials is printed and written to search.json.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::*;
use crate::calibration::fit_temperature;
use crate::fsio::atomic_write;
use crate::train::run_dir::SearchRecord;
use crate::train::search::{
    best_trial, grid, hold_out, run_trials, select, SearchConfig, Trial, LEARNING_RATES,
    WEIGHT_DECAYS,
};
use crate::train::TrainState;

/// The file the table of trials is written to, beside run.json.
pub fn search_path(run: &Path) -> std::path::PathBuf {
    run.join("search.json")
}

/// The hold-out draws rows without regard to their label, so it can take every row of
/// a rare class: the trials then never see it, which the warning on the whole train
/// split cannot have said.
fn warn_held_out_classes(all_counts: &[usize], kept: &[usize], names: &[String]) {
    let mut left = vec![0usize; all_counts.len()];
    for &label in kept {
        left[label] += 1;
    }
    let lost: Vec<String> = (0..all_counts.len())
        .filter(|&c| all_counts[c] > 0 && left[c] == 0)
        .map(|c| format!("{:?} ({})", names[c], count(all_counts[c], "row")))
        .collect();
    if !lost.is_empty() {
        eprintln!(
            "warning: holding out validation rows took every train row of label {}: the trials cannot learn it; add examples, name a --validation-split, or try another --seed",
            lost.join(", ")
        );
    }
}

/// A row of search.json: a trial with its pooling named.
#[derive(Serialize)]
struct TrialRow<'a> {
    pooling: Pooling,
    #[serde(flatten)]
    trial: &'a Trial,
}

pub(super) fn run(args: TrainArgs) -> Result<()> {
    if args.head_device == HeadDevice::Cuda {
        bail!("--search runs its trials on the CPU cores: drop --head-device cuda");
    }
    if !(args.validation_fraction > 0.0 && args.validation_fraction < 1.0) {
        bail!(
            "--validation-fraction {}: pass a fraction of train between 0 and 1 (e.g. 0.1)",
            args.validation_fraction
        );
    }
    if args.patience == 0 {
        bail!("--patience 0: a trial needs at least one epoch to improve in (e.g. 5)");
    }
    // Each pooling once, in the order given: a repeat anywhere in the list (mean,cls,mean)
    // would run its trials twice and list them twice.
    let mut poolings: Vec<Pooling> = Vec::new();
    for &pooling in &args.pooling {
        if !poolings.contains(&pooling) {
            poolings.push(pooling);
        }
    }
    let (dataset, data_id) = load_data(&args)?;
    let train = dataset.split(&args.split)?;
    let named_validation = match &args.validation_split {
        Some(name) => Some(dataset.split_named_by(name, "--validation-split")?),
        None => dataset
            .splits
            .iter()
            .find(|s| s.name == "validation" && !s.texts.is_empty()),
    };
    // Rows are held out only where no split validates: a fraction given beside one would
    // change nothing, as --stride changes nothing where texts are truncated.
    if let Some(validation) = named_validation {
        if args.given.contains("validation_fraction") {
            bail!(
                "--validation-fraction {}: the {} split validates the search, so no train rows are held out; drop --validation-fraction (it is for data without a validation split)",
                args.validation_fraction,
                validation.name
            );
        }
    }
    // Holding out needs a row to hold out and one to keep: `hold_out` cannot split one.
    if named_validation.is_none() && train.texts.len() < 2 {
        bail!(
            "--search: {} split has {} and no validation split, so no row can be held out for validation: add rows, or name one with --validation-split",
            train.name,
            count(train.texts.len(), "row")
        );
    }
    let held = named_validation
        .is_none()
        .then(|| hold_out(train.texts.len(), args.validation_fraction, args.seed));

    let model_args = ModelArgs {
        pooling: poolings[0],
        long: long_texts(&args)?,
        ..args.model.clone()
    };
    let num_labels = dataset.label_names.len();
    let label_counts =
        warnings::check_training_data(&dataset, train, named_validation, args.numeric_labels);
    let files = model_files(&model_args)?;
    for &pooling in &poolings {
        check_pooling_layers(pooling, &files, None)?;
    }
    let encoder_device = args.device.resolve()?;
    let mut folder = RunFolder::create(&out_dir(&args))?;
    let mut source = FeatureSource::new(args.cache.cache());
    let mut info = run_info(
        &args,
        &files,
        source.weights_sha256_of(&files)?,
        (&dataset.label_names, label_counts),
        data_id,
        (train, named_validation),
    )?;
    import::import_flagged(
        &args,
        &files,
        encoder_device,
        &mut source,
        (&poolings, model_args.long),
        &[train]
            .into_iter()
            .chain(named_validation)
            .collect::<Vec<_>>(),
    )?;
    let mut model = load_model_files(files, &model_args, &encoder_device)?;
    info.device = model.device.to_string();
    info.precision = model.precision_name();

    let encode_started = Instant::now();
    for split in [train].into_iter().chain(named_validation) {
        let (name, hash) = (&split.name, &split.content_hash);
        source.share_forward(&mut model, &poolings, name, &split.texts, hash)?;
    }
    let mut data = Vec::new();
    for &pooling in &poolings {
        model.pooling = pooling;
        let (all, _) = split_features(&mut model, &mut source, train)?;
        data.push(match (&held, named_validation) {
            (Some((kept, out)), _) => (select(&all, kept), select(&all, out)),
            (None, Some(v)) => (all, split_features(&mut model, &mut source, v)?.0),
            (None, None) => unreachable!("rows are held out whenever no split is named"),
        });
    }
    let encode_seconds = encode_started.elapsed().as_secs_f64();
    let (train_rows, val_rows) = (data[0].0.labels.len(), data[0].1.labels.len());
    if train_rows < args.batch_size {
        bail!(
            "{} split leaves {} to train on, fewer than --batch-size {}: lower --batch-size",
            train.name,
            count(train_rows, "row"),
            args.batch_size
        );
    }
    let validation = match &held {
        Some(_) => {
            eprintln!(
                "{}: holding out {val_rows} of {} train rows ({}, by --seed {})",
                no_validation(&dataset)?,
                train.texts.len(),
                args.validation_fraction,
                args.seed
            );
            "held-out".to_string()
        }
        None => named_validation.map(|v| v.name.clone()).unwrap_or_default(),
    };
    let kept_from = if held.is_some() {
        warn_held_out_classes(
            &info.train_label_counts,
            &data[0].0.labels,
            &dataset.label_names,
        );
        format!("{} rows left after holding out validation rows", train.name)
    } else {
        format!("{} split", train.name)
    };
    let weights = args
        .class_weights
        .weights(&data[0].0.labels, num_labels)
        .map_err(|e| {
            anyhow!(
                "--class-weights {}: {e} in the {kept_from}: drop the flag or add examples",
                args.class_weights.name(),
            )
        })?;

    let config = SearchConfig {
        base: info.hyperparameters.clone(),
        patience: args.patience,
    };
    let params = grid(poolings.len());
    eprintln!(
        "searching {} trials (lr {} values, weight decay {} values, pooling {}) on {} threads, at most {} epochs each, patience {}",
        params.len(),
        LEARNING_RATES.len(),
        WEIGHT_DECAYS.len(),
        pooling_list(&poolings),
        rayon::current_num_threads(),
        config.base.epochs,
        config.patience
    );
    let search_started = Instant::now();
    let trials = run_trials(&data, &params, num_labels, weights.as_deref(), &config)?;
    let search_seconds = search_started.elapsed().as_secs_f64();
    let best = &trials[best_trial(&trials).context("the grid has no trials")?];
    let best_val = &data[best.params.variant].1;
    let temperature = fit_temperature(&best.head.logits(&best_val.x), &best_val.labels, num_labels);

    let hp = &mut info.hyperparameters;
    hp.lr = best.params.lr;
    hp.weight_decay = best.params.weight_decay;
    hp.epochs = best.best_epoch;
    info.features.pooling = poolings[best.params.variant];
    info.search = Some(SearchRecord {
        validation,
        validation_fraction: held.as_ref().map(|_| args.validation_fraction),
        validation_rows: val_rows,
        learning_rates: LEARNING_RATES.to_vec(),
        weight_decays: WEIGHT_DECAYS.to_vec(),
        poolings: poolings.clone(),
        max_epochs: config.base.epochs,
        patience: config.patience,
        trials: trials.len(),
        best_val_acc: best.val_acc,
        best_val_loss: best.val_loss,
        seconds: search_seconds,
    });
    folder.save_info(&info)?;
    let dir = folder.dir().to_path_buf();
    let rows: Vec<TrialRow> = trials
        .iter()
        .map(|t| TrialRow {
            pooling: poolings[t.params.variant],
            trial: t,
        })
        .collect();
    let table_json = serde_json::to_string_pretty(&rows).context("cannot serialise the trials")?;
    atomic_write(&search_path(&dir), table_json.as_bytes())?;

    let m = EpochMetrics {
        epoch: best.best_epoch,
        train_loss: best.train_loss,
        train_acc: best.train_acc,
        val_loss: Some(best.val_loss),
        val_acc: Some(best.val_acc),
        temperature: Some(temperature),
        seconds: search_seconds,
    };
    let run = Run {
        dir,
        model_id: model.id().to_string(),
        info,
        train_hash: train.content_hash.clone(),
        log_every: 0,
    };
    save_best(&run, best, m)?;

    eprint!("{}", table(&rows, best));
    eprintln!(
        "encoding: {encode_seconds:.1}s; search: {} trials in {search_seconds:.1}s",
        trials.len()
    );
    eprintln!(
        "best: pooling {}, lr {:e}, weight decay {}, epoch {} (val acc {:.4}, val loss {:.4}): {}",
        run.info.features.pooling,
        best.params.lr,
        best.params.weight_decay,
        best.best_epoch,
        best.val_acc,
        best.val_loss,
        best_checkpoint(&run.dir).display()
    );
    eprintln!("calibration: temperature {temperature:.4} fitted on the validation rows (test and predict use it; --no-calibration shows the raw softmax)");
    if let Some(warning) = crate::calibration::bound_warning(temperature) {
        eprintln!("{warning}");
    }
    eprintln!(
        "trials: {}; run: {}",
        search_path(&run.dir).display(),
        run.dir.display()
    );
    if args.json {
        let summary = serde_json::json!({
            "out": run.dir.display().to_string(),
            "encode_seconds": encode_seconds,
            "search_seconds": search_seconds,
            "best": TrialRow { pooling: run.info.features.pooling, trial: best },
            "temperature": temperature,
            "validation_rows": val_rows,
            "trials": rows,
        });
        print_stdout(format!("{summary}\n"))?;
    }
    Ok(())
}

/// The chosen head as the run's checkpoints (best, last and head-epoch-N, the same head:
/// what `test` and `predict` load) with one metrics line. Its AdamW state is a fresh
/// one: a search run is not resumed.
fn save_best(run: &Run, best: &Trial, m: EpochMetrics) -> Result<()> {
    let checkpoints = RunCheckpoints::new(
        &run.dir,
        &run.info.labels,
        &run.train_hash,
        checkpoint_metadata(run),
    )?;
    let state = TrainState::fresh(
        best.head.num_labels,
        best.head.hidden,
        &run.info.hyperparameters,
    )?;
    checkpoints.save(&EpochEnd {
        head: &best.head,
        opt: &state.opt,
        metrics: &[m],
        improved: true,
    })
}

/// The trials as a table, the chosen one marked with `*`; the pooling column as wide as
/// its longest name (`cls+mean-last4`).
fn table(rows: &[TrialRow], best: &Trial) -> String {
    let width = rows
        .iter()
        .map(|r| r.pooling.name().len())
        .fold("pooling".len(), usize::max);
    let mut s = format!(
        "   {:<width$}  lr       decay  epoch/run  val loss  val acc\n",
        "pooling"
    );
    for r in rows {
        let t = r.trial;
        let mark = if std::ptr::eq(t, best) { "*" } else { " " };
        let _ = writeln!(
            s,
            "{mark}  {:<width$}  {:<7.0e}  {:<5}  {:>5}/{:<3}  {:<8.4}  {:.4}",
            r.pooling.name(),
            t.params.lr,
            t.params.weight_decay,
            t.best_epoch,
            t.epochs_run,
            t.val_loss,
            t.val_acc
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::LinearHead;
    use crate::train::search::TrialParams;

    #[test]
    fn the_table_widens_its_pooling_column_to_the_longest_name() {
        let trial = |variant, val_acc| Trial {
            params: TrialParams {
                variant,
                lr: 3e-4,
                weight_decay: 0.1,
            },
            best_epoch: 12,
            epochs_run: 17,
            val_loss: 0.2927,
            val_acc,
            train_loss: 0.2,
            train_acc: 0.9,
            diverged: false,
            head: LinearHead {
                weight: vec![0.0; 8],
                bias: vec![0.0; 2],
                num_labels: 2,
                hidden: 4,
            },
        };
        let (a, b) = (trial(0, 0.88), trial(1, 0.895));
        let rows = [
            TrialRow {
                pooling: Pooling::CLS,
                trial: &a,
            },
            TrialRow {
                pooling: "cls+mean-last4".parse().unwrap(),
                trial: &b,
            },
        ];
        assert_eq!(
            table(&rows, &b),
            "   pooling         lr       decay  epoch/run  val loss  val acc\n\
             \u{20}  cls             3e-4     0.1       12/17   0.2927    0.8800\n\
             *  cls+mean-last4  3e-4     0.1       12/17   0.2927    0.8950\n"
        );
        // Last-layer poolings alone keep the table as it always was.
        assert!(table(&rows[..1], &a).starts_with("   pooling  lr       decay"));
    }
}
