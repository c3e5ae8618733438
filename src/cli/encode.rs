//! `bertcls encode`: pooled feature vectors for texts ([CLS], mean, ...), to safetensors or JSON lines;
//! with `--run`, exactly the features a trained run's head was trained on.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::bulk::{self, BulkArgs};
use super::common::{
    encode_texts, load_model, stdout_error, DeviceArgs, ModelArgs, Recorded, TextArgs,
};
use super::progress::count;
use crate::chunk::{LongTexts, DEFAULT_STRIDE};
use crate::fsio::atomic_write;
use crate::hub::DEFAULT_MODEL;
use crate::model::Pooling;
use crate::tokenize::DEFAULT_MAX_LENGTH;

mod run_spec;

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// A folder written by `bertcls train`: encode as its head was trained, taking the
    /// model, tokenizer, max_length, pooling, long-text setting and GPU precision from its
    /// run.json. A flag that says otherwise is refused; the same --device gives the very
    /// floats the head was trained on.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// Model folder (config.json, model.safetensors, tokenizer.json or vocab.txt) or hub id
    /// [default: the run's, else bert-base-chinese].
    #[arg(long)]
    model: Option<String>,
    /// Never touch the network (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Truncate texts to this many tokens, [CLS] and [SEP] included [default: the run's,
    /// else 350].
    #[arg(long, allow_negative_numbers = true)]
    max_length: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    input: TextArgs,
    /// The feature: cls (the [CLS] token's last hidden state), mean (the mean over the
    /// text's tokens) or cls+mean (both side by side), of the last layer, or of each of
    /// the last N layers side by side with -lastN (mean-last4) [default: the run's, else
    /// cls]. The output tensor and JSON key are named after it.
    #[arg(long, value_name = "cls|mean|cls+mean[-lastN]")]
    pooling: Option<Pooling>,
    /// Texts longer than --max-length: truncate, or chunk (overlapping windows, the
    /// feature the mean of theirs), as train's --long [default: the run's, else truncate].
    #[arg(long, value_name = "truncate|chunk")]
    long: Option<String>,
    /// With --long chunk: tokens shared by consecutive windows [default: the run's, else 64].
    #[arg(long, allow_negative_numbers = true)]
    stride: Option<usize>,
    /// Write the features to FILE: .safetensors (one [N, width] tensor named after the
    /// pooling, `cls` or `mean-last4`, its width the hidden size for each layer pooled,
    /// twice that for cls+mean; and `input_ids`, `attention_mask` [N, L] with --ids) or
    /// .jsonl (the lines --json prints).
    /// With --data: .parquet or .safetensors, and `<out>.bulk.json` beside it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Include the token ids.
    #[arg(long)]
    ids: bool,
    /// JSON lines on standard output (the default without --out).
    #[arg(long)]
    json: bool,
    /// With --data, --out is .parquet (index and one fixed-size float list per row) or
    /// .safetensors (one [rows, width] tensor per chunk, named `<pooling>.<first row>`).
    #[command(flatten)]
    bulk: BulkArgs,
}

impl EncodeArgs {
    /// The features the flags ask for, defaults where they are silent: encode without --run.
    fn model_args(&self) -> Result<ModelArgs> {
        let long = LongTexts::from_flags(
            self.long.as_deref().unwrap_or("truncate"),
            self.stride.unwrap_or(DEFAULT_STRIDE),
        )?;
        long.check_stride(self.stride)?;
        Ok(ModelArgs {
            model: self
                .model
                .clone()
                .unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            offline: self.offline,
            max_length: self.max_length.unwrap_or(DEFAULT_MAX_LENGTH),
            pooling: self.pooling.unwrap_or_default(),
            long,
            recorded: Recorded::default(),
        })
    }
}

pub fn run(args: EncodeArgs) -> Result<()> {
    let (model_args, device) = match &args.run {
        Some(dir) => {
            let spec = run_spec::resolve(dir, &args)?;
            (spec.model, spec.device)
        }
        None => (args.model_args()?, args.device.resolve()?),
    };
    if args.bulk.data.is_some() {
        if args.input.file.is_some() || !args.input.texts.is_empty() || args.json || args.ids {
            bail!("--data encodes a dataset into --out: drop the texts, --file, --json and --ids");
        }
        return bulk::run_encode(&args.bulk, args.out.as_ref(), &model_args, &device);
    }
    let out_format = args.out.as_deref().map(texts_out_format).transpose()?;
    if let Some(out) = &args.out {
        // Before the model's load and the encoding, not after them.
        crate::fsio::check_writable("--out", out)?;
    }
    let texts = args.input.given()?.unwrap_or_default();
    if texts.is_empty() {
        bail!("no texts to encode: pass them as arguments or with --file F (one per line)");
    }
    if args.ids && model_args.long != LongTexts::Truncate {
        bail!("--ids shows one row of ids per text, a chunked text has several windows (--long chunk, or a run trained so): drop --ids");
    }
    let mut model = load_model(&model_args, &device)?;
    let name = model_args.pooling.name();
    let name = name.as_str();
    let tokens = model.tokenizer().encode_many(&texts)?;
    let cls = encode_texts(&mut model, &texts, "texts")?;
    let hidden = model.feature_width();

    let json_lines = |w: &mut dyn Write| -> std::io::Result<()> {
        for (i, text) in texts.iter().enumerate() {
            let mut obj = serde_json::json!({
                "text": text,
            });
            obj[name] = serde_json::json!(&cls[i * hidden..(i + 1) * hidden]);
            if args.ids {
                obj["input_ids"] = serde_json::json!(tokens[i].ids);
            }
            writeln!(w, "{obj}")?;
        }
        Ok(())
    };
    if let (Some(out), Some(TextsOut::Jsonl)) = (&args.out, out_format) {
        let mut bytes = Vec::new();
        json_lines(&mut bytes)?;
        atomic_write(out, &bytes)?;
        eprintln!("wrote {} ({})", out.display(), count(texts.len(), "line"));
    }
    if let (Some(out), Some(TextsOut::Safetensors)) = (&args.out, out_format) {
        let n = texts.len();
        let cls_bytes = crate::le_floats::f32_bytes(&cls);
        let mut tensors: HashMap<String, TensorView> = HashMap::new();
        tensors.insert(
            name.into(),
            TensorView::new(Dtype::F32, vec![n, hidden], &cls_bytes)?,
        );
        let (ids_bytes, mask_bytes, max_len);
        if args.ids {
            max_len = tokens.iter().map(|t| t.ids.len()).max().unwrap_or(0);
            let pad = model.files.config.pad_token_id as i64;
            let mut ids = Vec::with_capacity(n * max_len * 8);
            let mut mask = Vec::with_capacity(n * max_len * 8);
            for t in &tokens {
                for j in 0..max_len {
                    let (id, m) = t.ids.get(j).map_or((pad, 0i64), |&id| (id as i64, 1));
                    ids.extend_from_slice(&id.to_le_bytes());
                    mask.extend_from_slice(&m.to_le_bytes());
                }
            }
            (ids_bytes, mask_bytes) = (ids, mask);
            tensors.insert(
                "input_ids".into(),
                TensorView::new(Dtype::I64, vec![n, max_len], &ids_bytes)?,
            );
            tensors.insert(
                "attention_mask".into(),
                TensorView::new(Dtype::I64, vec![n, max_len], &mask_bytes)?,
            );
        }
        let mut meta = HashMap::new();
        meta.insert("model".to_string(), model.id().to_string());
        meta.insert("max_length".to_string(), model_args.max_length.to_string());
        meta.insert("pooling".to_string(), name.to_string());
        meta.insert("long".to_string(), model.long.key());
        let bytes = crate::safetensors_out::serialize(&tensors, Some(meta))
            .context("cannot serialise the features")?;
        atomic_write(out, &bytes)?;
        eprintln!("wrote {} ([{n}, {hidden}])", out.display());
    }
    if args.out.is_none() || args.json {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        json_lines(&mut w)
            .and_then(|()| w.flush())
            .map_err(stdout_error)?;
    }
    Ok(())
}

/// What `encode --out FILE` writes for texts, as its extension names.
#[derive(Clone, Copy)]
enum TextsOut {
    Safetensors,
    Jsonl,
}

/// Checked before anything is loaded or encoded: a folder, or an extension encode does
/// not write for texts, would otherwise fail (or be written in the wrong format) only
/// after all the work.
fn texts_out_format(out: &Path) -> Result<TextsOut> {
    const ACCEPTED: &str = ".safetensors (one [texts, hidden] tensor) or .jsonl (one JSON line per text, as --json prints)";
    if out.is_dir() {
        bail!(
            "--out {}: is a folder: name the file to write, {ACCEPTED}",
            out.display()
        );
    }
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("safetensors") => Ok(TextsOut::Safetensors),
        Some("jsonl") => Ok(TextsOut::Jsonl),
        _ => bail!(
            "--out {}: encode writes the features of texts as {ACCEPTED}; name the file with one of these extensions (.parquet is written by --data jobs)",
            out.display()
        ),
    }
}
