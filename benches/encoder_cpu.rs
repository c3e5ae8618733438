//! CPU encoder throughput at BERT-base size (random weights of bert-base-chinese's shape):
//! fixed batches 1x128, 8x128, 32x128 and real ChnSentiCorp texts packed.
//!
//!     cargo bench --bench encoder_cpu [-- --threads N --texts N --cases 1x128,8x128,32x128,real --budget S]
//!
//! `--cases` takes any fixed shape as BxL (texts x tokens) beside `real`.
//!
//! Compare with `tools/reference/bench_peers_cpu.py` (PyTorch and ONNX Runtime on the fixed
//! shapes) and `tools/reference/bench_torch_cpu.py` (PyTorch on the real texts) run on the
//! same machine (docs/BENCHMARKS.md).

mod common;

use std::path::PathBuf;

use bertcls::backend::cpu::CpuBackend;
use bertcls::batch::PackedBatch;
use bertcls::model::{encode_all, BertConfig, Encoder, HostWeights, Keep, Pooling};
use bertcls::tokenize::BertTokenizer;
use common::{arg, chnsenticorp_texts, fixed_batch, report, time};

fn main() {
    let threads = arg("--threads").and_then(|v| v.parse().ok()).unwrap_or(0);
    let n_texts = arg("--texts").and_then(|v| v.parse().ok()).unwrap_or(512);
    let cases = arg("--cases").unwrap_or_else(|| "1x128,8x128,32x128,real".into());
    // Seconds of timed runs per fixed case (at least 2 runs), as bench_peers_cpu.py --budget.
    let budget = arg("--budget").and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let wanted = |case: &str| cases.split(',').any(|c| c == case);
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

    // Any fixed shape named "BxL" in --cases (default 1x128, 8x128 and 32x128).
    for case in cases.split(',') {
        let Some((b, l)) = case
            .split_once('x')
            .and_then(|(b, l)| Some((b.parse::<usize>().ok()?, l.parse::<usize>().ok()?)))
        else {
            continue;
        };
        let texts = fixed_batch(&config, b, l);
        let batch = PackedBatch::new(&texts);
        let secs = time(
            || {
                enc.forward(&batch, Keep::Cls).unwrap();
            },
            budget,
            2,
        );
        report(&format!("{b}x{l}"), b * l, secs);
    }

    if !wanted("real") {
        return;
    }
    let Some(texts) = chnsenticorp_texts(&shared, n_texts) else {
        eprintln!("SKIPPED chnsenticorp case: ../shared/data/ChnSentiCorp-files not found");
        return;
    };
    let tokenizer = BertTokenizer::from_dir(&model_dir, 350).unwrap();
    let tokens = tokenizer.encode_many(&texts).unwrap();
    let real: usize = tokens.iter().map(|t| t.ids.len()).sum();
    let secs = time(
        || {
            encode_all(&mut enc, &tokens, Pooling::CLS, |_| {}).unwrap();
        },
        1.0,
        2,
    );
    report(
        &format!("chnsenticorp-train-first{n_texts}-packed"),
        real,
        secs,
    );
}
