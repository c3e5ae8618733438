//! CPU encoder throughput at BERT-base size (random weights of bert-base-chinese's shape):
//! fixed batches 1x128, 8x128, 32x128 and real ChnSentiCorp texts packed.
//!
//!     cargo bench --bench encoder_cpu [-- --threads N --texts N]
//!
//! Compare with `tools/reference/bench_torch_cpu.py` run on the same machine (docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Instant;

use bertcls::backend::cpu::CpuBackend;
use bertcls::batch::PackedBatch;
use bertcls::model::{encode_all, BertConfig, Encoder, HostWeights, Keep};
use bertcls::tokenize::{BertTokenizer, TokenizedText};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` once to warm up, then until `min_secs` have passed (at least twice);
/// returns the median seconds per run.
fn time(mut f: impl FnMut(), min_secs: f64) -> f64 {
    f();
    let mut runs = Vec::new();
    let started = Instant::now();
    while runs.len() < 2 || started.elapsed().as_secs_f64() < min_secs {
        let t = Instant::now();
        f();
        runs.push(t.elapsed().as_secs_f64());
    }
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    runs[runs.len() / 2]
}

fn report(case: &str, tokens: usize, secs: f64) {
    println!(
        "{{\"case\": \"{case}\", \"tokens\": {tokens}, \"seconds\": {secs:.4}, \"tokens_per_s\": {:.1}}}",
        tokens as f64 / secs
    );
}

fn main() {
    let threads = arg("--threads", 0);
    let n_texts = arg("--texts", 512);
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let model_dir = shared.join("models/bert-base-chinese");
    let config_path = model_dir.join("config.json");
    if !config_path.is_file() {
        eprintln!(
            "SKIPPED: {} not found (needs ../shared beside the checkout)",
            config_path.display()
        );
        return;
    }
    let config = BertConfig::from_file(&config_path).unwrap();
    let weights = HostWeights::random(&config, 0);
    let backend = CpuBackend::new(threads).unwrap();
    eprintln!("backend: {}", bertcls::backend::Backend::describe(&backend));
    let mut enc = Encoder::new(backend, config.clone(), &weights, 8192).unwrap();

    for (b, l) in [(1, 128), (8, 128), (32, 128)] {
        let texts: Vec<TokenizedText> = (0..b)
            .map(|i| TokenizedText {
                ids: (0..l)
                    .map(|j| ((i * 7919 + j * 104_729) % (config.vocab_size - 1000) + 1000) as u32)
                    .collect(),
                type_ids: vec![0; l],
            })
            .collect();
        let batch = PackedBatch::new(&texts);
        let secs = time(
            || {
                enc.forward(&batch, Keep::Cls).unwrap();
            },
            10.0,
        );
        report(&format!("{b}x{l}"), b * l, secs);
    }

    let jsonl = shared.join("data/ChnSentiCorp-files/train.jsonl");
    let Ok(text) = std::fs::read_to_string(&jsonl) else {
        eprintln!("SKIPPED chnsenticorp case: {} not found", jsonl.display());
        return;
    };
    let texts: Vec<String> = text
        .lines()
        .take(n_texts)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let tokenizer = BertTokenizer::from_dir(&model_dir, 350).unwrap();
    let tokens = tokenizer.encode_many(&texts).unwrap();
    let real: usize = tokens.iter().map(|t| t.ids.len()).sum();
    let secs = time(
        || {
            encode_all(&mut enc, &tokens, |_| {}).unwrap();
        },
        1.0,
    );
    report(
        &format!("chnsenticorp-train-first{n_texts}-packed"),
        real,
        secs,
    );
}
