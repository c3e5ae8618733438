//! `bertcls test`: score a trained head on every row of a split: accuracy, mean
//! cross-entropy, per-class precision, recall and F1, and the confusion matrix.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{anyhow, Result};
use clap::Args;
use serde::Serialize;

use super::common::{print_stdout, DeviceArgs};
use super::feature_source::{CacheArgs, FeatureSource};
use super::predict::{check_label_count, Classifier, HeadArgs};
use crate::calibration::{
    expected_calibration_error, scaled_cross_entropy, scaled_softmax, ECE_BINS,
};
use crate::data::{self, Dataset, LoadOptions};
use crate::head::{argmax, LinearHead};
use crate::hub::{resolve_dataset, DEFAULT_DATASET};
use crate::train::META_TRAIN_LABEL_COUNTS;

#[derive(Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    head: HeadArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// Dataset: a save_to_disk folder, parquet, .jsonl, .csv or .tsv, or a hub id
    /// [default: the run's data, else lansinuote/ChnSentiCorp].
    #[arg(long)]
    data: Option<String>,
    /// The split to score.
    #[arg(long, default_value = "test")]
    split: String,
    /// Text column [default: the run's, else text].
    #[arg(long)]
    text_column: Option<String>,
    /// Label column [default: the run's, else label].
    #[arg(long)]
    label_column: Option<String>,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TestArgs) -> Result<()> {
    let classifier = args.head.load()?;
    let data = load_data(&args, &classifier)?;
    let split = data.split(&args.split)?;
    let labels = classifier
        .labels
        .clone()
        .unwrap_or_else(|| data.label_names.clone());
    check_label_count(
        &classifier.head,
        &classifier.source,
        data.num_labels(),
        "labels in the data",
    )?;

    let mut model = classifier.load_model(&args.device)?;
    let mut features = FeatureSource::new(args.cache.cache());
    let x = features
        .features(&mut model, &split.name, &split.texts, &split.content_hash)?
        .x;
    let report = Report::new(
        &classifier.head,
        &x,
        &split.labels,
        labels,
        classifier.temperature,
    );
    let single_class = single_train_class(&classifier)?;
    // `test --data d/train.jsonl` scores d/test.jsonl: the heading and the JSON name the
    // file read.
    let source = data::split_source(&data.source, &split.name)?;
    // Written whole at the end, so that a failed write is one error naming stdout.
    let mut out = Vec::new();
    if args.json {
        let obj = serde_json::json!({
            "data": source,
            "split": split.name,
            "model": model.id(),
            "head": classifier.source.display().to_string(),
            "trained_on_single_class": single_class.is_some(),
            "report": report,
        });
        writeln!(out, "{obj}")?;
    } else {
        writeln!(
            out,
            "{} split of {source}, head {}",
            split.name,
            classifier.source.display()
        )?;
        write!(out, "{}", report.table())?;
        if let Some(label) = single_class {
            writeln!(out, "warning: this head was trained on a single class (label {label}): it can only predict that class")?;
        }
    }
    print_stdout(out)
}

/// The one label id the head's train split held, when bertcls train recorded its label
/// counts (`train_label_counts` in the checkpoint) and only one was present.
fn single_train_class(classifier: &Classifier) -> Result<Option<usize>> {
    let metadata = crate::checkpoint::load_inference_head(&classifier.source, None)?.metadata;
    let counts: Vec<usize> = metadata
        .get(META_TRAIN_LABEL_COUNTS)
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let present: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
    Ok(match present[..] {
        [only] => Some(only),
        _ => None,
    })
}

fn load_data(args: &TestArgs, classifier: &Classifier) -> Result<Dataset> {
    let run = classifier.run();
    let spec = args
        .data
        .clone()
        .or_else(|| run.map(|r| r.data.clone()))
        .unwrap_or_else(|| DEFAULT_DATASET.to_string());
    let resolved = resolve_dataset(&spec, classifier.model.offline()).map_err(|e| {
        match (&args.data, classifier.run_json()) {
            // The user gave no --data: an error about that flag would puzzle them.
            (None, Some(json)) => anyhow!(
                "the data {} names cannot be read ({e:#}): pass --data with where it is now",
                json.display()
            ),
            _ => e,
        }
    })?;
    let opts = LoadOptions {
        text_column: args
            .text_column
            .clone()
            .or_else(|| run.map(|r| r.text_column.clone()))
            .unwrap_or("text".into()),
        label_column: args
            .label_column
            .clone()
            .or_else(|| run.map(|r| r.label_column.clone()))
            .unwrap_or("label".into()),
        labels: args.head.labels.clone(),
        splits: Some(vec![args.split.clone()]),
        head_labels: Some(classifier.names_or_ids()),
        numeric_labels: classifier.numeric_labels,
    };
    // Only for a --data named here: `test --run R` of a run trained on train.jsonl
    // scoring its sibling test.jsonl is what the sibling rule is for.
    if args.data.is_some() {
        if let Some(note) = data::sibling_note(&resolved.path, &args.split, "scoring")? {
            eprintln!("{note}");
        }
    }
    data::load(&resolved.path, &opts)
}

#[derive(Debug, Serialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Mean cross-entropy of the logits.
    pub loss: f64,
    /// The temperature the calibrated figures divide the logits by (1: none).
    pub temperature: f64,
    /// Mean cross-entropy of the logits divided by the temperature.
    pub calibrated_loss: f64,
    /// Expected calibration error (15 equal-width confidence bins) of the raw softmax.
    pub ece_uncalibrated: f64,
    /// The same of the softmax of the logits divided by the temperature.
    pub ece_calibrated: f64,
    pub labels: Vec<String>,
    pub per_class: Vec<ClassScores>,
    /// The labels the macro averages run over: those with support or predictions,
    /// scikit-learn's default (`unique_labels(y_true, y_pred)`). A label with neither has
    /// no precision, recall or F1 to average; counting it as 0 would sink macro-F1 for
    /// every split that lacks a class.
    pub macro_labels: Vec<String>,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Rows: true label; columns: predicted label.
    pub confusion_matrix: Vec<Vec<usize>>,
}

/// `num / den`, or 0 where the denominator is 0, as scikit-learn's default.
fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Report {
    /// Scores every row of `x` (N, C) against `truth`; `labels` names the ids; the
    /// calibrated figures divide the logits by `temperature`.
    pub fn new(
        head: &LinearHead,
        x: &[f32],
        truth: &[usize],
        labels: Vec<String>,
        temperature: f64,
    ) -> Report {
        let l = head.num_labels;
        let (loss, correct) = head.evaluate(x, truth);
        let logits = head.logits(x);
        let ece_at = |t: f64| expected_calibration_error(&scaled_softmax(&logits, l, t), truth, l);
        let mut confusion = vec![vec![0usize; l]; l];
        for (z, &y) in logits.chunks_exact(l).zip(truth) {
            confusion[y][argmax(z)] += 1;
        }
        let per_class: Vec<ClassScores> = (0..l)
            .map(|c| {
                let hits = confusion[c][c];
                let support = confusion[c].iter().sum();
                let predicted = confusion.iter().map(|row| row[c]).sum();
                let (precision, recall) = (ratio(hits, predicted), ratio(hits, support));
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassScores {
                    label: labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let averaged: Vec<usize> = (0..l)
            .filter(|&c| per_class[c].support > 0 || confusion.iter().any(|row| row[c] > 0))
            .collect();
        let mean = |f: fn(&ClassScores) -> f64| {
            let sum: f64 = averaged.iter().map(|&c| f(&per_class[c])).sum();
            if averaged.is_empty() {
                0.0
            } else {
                sum / averaged.len() as f64
            }
        };
        Report {
            rows: truth.len(),
            correct,
            accuracy: ratio(correct, truth.len()),
            loss: loss as f64,
            temperature,
            calibrated_loss: scaled_cross_entropy(&logits, truth, l, temperature),
            ece_uncalibrated: ece_at(1.0),
            ece_calibrated: ece_at(temperature),
            macro_precision: mean(|s| s.precision),
            macro_recall: mean(|s| s.recall),
            macro_f1: mean(|s| s.f1),
            macro_labels: averaged.iter().map(|&c| labels[c].clone()).collect(),
            labels,
            per_class,
            confusion_matrix: confusion,
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "accuracy  {:.4}  ({}/{})",
            self.accuracy, self.correct, self.rows
        );
        let _ = writeln!(s, "loss      {:.4}  (mean cross-entropy)", self.loss);
        let _ = writeln!(
            s,
            "ECE       {:.4} raw softmax, {:.4} calibrated (temperature {:.4}; {ECE_BINS} bins)\n",
            self.ece_uncalibrated, self.ece_calibrated, self.temperature
        );
        let name_width = self
            .labels
            .iter()
            .map(|l| width(l))
            .chain([width("macro avg"), 5])
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "{}  precision  recall  f1      support",
            pad("label", name_width)
        );
        for c in &self.per_class {
            let _ = writeln!(
                s,
                "{}  {:<9.4}  {:<6.4}  {:<6.4}  {}",
                pad(&c.label, name_width),
                c.precision,
                c.recall,
                c.f1,
                c.support
            );
        }
        let _ = writeln!(
            s,
            "{}  {:<9.4}  {:<6.4}  {:<6.4}  {}\n",
            pad("macro avg", name_width),
            self.macro_precision,
            self.macro_recall,
            self.macro_f1,
            self.rows
        );
        if self.macro_labels.len() < self.labels.len() {
            let _ = writeln!(
                s,
                "macro avg over the {} of {} labels in the split or predicted (as scikit-learn); the others have no scores\n",
                self.macro_labels.len(),
                self.labels.len()
            );
        }
        let _ = writeln!(s, "confusion matrix (rows: true label, columns: predicted)");
        let cell = self
            .labels
            .iter()
            .map(|l| width(l))
            .max()
            .unwrap_or(0)
            .max(self.rows.to_string().len());
        let header: Vec<String> = self.labels.iter().map(|l| pad(l, cell)).collect();
        let _ = writeln!(
            s,
            "{}  {}",
            pad("", name_width),
            header.join("  ").trim_end()
        );
        for (label, row) in self.labels.iter().zip(&self.confusion_matrix) {
            let cells: Vec<String> = row.iter().map(|n| pad(&n.to_string(), cell)).collect();
            let _ = writeln!(
                s,
                "{}  {}",
                pad(label, name_width),
                cells.join("  ").trim_end()
            );
        }
        s
    }
}

/// Terminal columns of `text`: CJK characters take two, so Chinese label names line up.
fn width(text: &str) -> usize {
    text.chars().map(|c| if is_wide(c) { 2 } else { 1 }).sum()
}

fn is_wide(c: char) -> bool {
    matches!(c as u32, 0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6)
}

fn pad(text: &str, to: usize) -> String {
    format!("{text}{}", " ".repeat(to.saturating_sub(width(text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_confusion_matrix() {
        // Identity head on one-hot-ish features: the prediction is the larger coordinate.
        let head = LinearHead {
            weight: vec![1.0, 0.0, 0.0, 1.0],
            bias: vec![0.0, 0.0],
            num_labels: 2,
            hidden: 2,
        };
        let x = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let truth = [0, 0, 0, 1, 1];
        let r = Report::new(
            &head,
            &x,
            &truth,
            vec!["负向评价".into(), "正向评价".into()],
            1.0,
        );
        assert_eq!(r.confusion_matrix, [[2, 1], [1, 1]]);
        assert_eq!((r.correct, r.rows), (3, 5));
        assert!((r.per_class[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[1].precision - 0.5).abs() < 1e-12);
        assert_eq!(r.per_class[1].support, 2);
        assert!((r.macro_f1 - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_class_never_predicted_scores_zero_not_nan() {
        let head = LinearHead {
            weight: vec![1.0, 0.0],
            bias: vec![0.0, -1.0],
            num_labels: 2,
            hidden: 1,
        };
        let r = Report::new(
            &head,
            &[1.0, 1.0],
            &[0, 1],
            vec!["a".into(), "b".into()],
            1.0,
        );
        assert_eq!(r.per_class[1].precision, 0.0);
        assert_eq!(r.per_class[1].f1, 0.0);
        assert!(r.table().contains("confusion matrix"));
    }

    /// Truth [0, 0, 1, 1, 2], predictions [0, 1, 1, 1, 0], 4 labels: label 2 has support
    /// but no predictions, label 3 neither. scikit-learn 1.9 on the same arrays:
    /// f1_score(y, p, average="macro") = 0.433333 (precision 0.388889 with
    /// zero_division=0, recall 0.5): it averages over labels 0-2 only, where
    /// labels=[0, 1, 2, 3] would give 0.325. Exact ratios of small counts: 1e-12.
    #[test]
    fn macro_averages_skip_a_label_with_no_support_and_no_predictions() {
        let mut weight = vec![0.0f32; 16];
        for c in 0..4 {
            weight[c * 4 + c] = 1.0;
        }
        let head = LinearHead {
            weight,
            bias: vec![0.0; 4],
            num_labels: 4,
            hidden: 4,
        };
        let one_hot = |c: usize| (0..4).map(move |i| f32::from(u8::from(i == c)));
        let x: Vec<f32> = [0, 1, 1, 1, 0].into_iter().flat_map(one_hot).collect();
        let names = ["a", "b", "c", "d"].map(String::from).to_vec();
        let r = Report::new(&head, &x, &[0, 0, 1, 1, 2], names, 1.0);
        assert!(
            (r.macro_f1 - 0.433_333_333_333).abs() < 1e-12,
            "{}",
            r.macro_f1
        );
        assert!((r.macro_precision - 0.388_888_888_889).abs() < 1e-12);
        assert!((r.macro_recall - 0.5).abs() < 1e-12);
        assert_eq!(r.macro_labels, ["a", "b", "c"]);
        assert!(r
            .table()
            .contains("macro avg over the 3 of 4 labels in the split or predicted"));
    }

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(width("负向评价"), 8);
        assert_eq!(pad("负向", 6), "负向  ");
    }
}
