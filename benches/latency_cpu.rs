//! One short text, batch 1: the latency of an interactive `predict`. One text of 60
//! tokens, 5 warm-up runs, then the median of 50, for multilingual-e5-small (the real
//! weights in models/) and BERT-base's shape (random weights of
//! ../shared/models/bert-base-chinese/config.json).
//!
//!     cargo bench --bench latency_cpu [-- --threads 2 --model e5-small|bert-base]
//!
//! `tools/reference/bench_peers_cpu.py run --cases latency-60` times PyTorch and ONNX
//! Runtime the same way (docs/BENCHMARKS.md).

mod common;

use std::path::PathBuf;

use bertcls::backend::cpu::CpuBackend;
use bertcls::batch::PackedBatch;
use bertcls::model::{BertConfig, Encoder, HostWeights, Keep, ModelDir};
use common::{arg, fixed_batch, median_latency};

const TOKENS: usize = 60;
const WARMUP: usize = 5;
const RUNS: usize = 50;

fn main() {
    let threads = arg("--threads").and_then(|v| v.parse().ok()).unwrap_or(0);
    let only = arg("--model");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for name in ["e5-small", "bert-base"] {
        if only.as_deref().is_some_and(|m| m != name) {
            continue;
        }
        let loaded = match name {
            "e5-small" => {
                let dir = root.join("models/multilingual-e5-small");
                ModelDir::open(&dir).and_then(|m| m.load())
            }
            _ => {
                let path = root.join("../shared/models/bert-base-chinese/config.json");
                BertConfig::from_file(&path).map(|c| {
                    let w = HostWeights::random(&c, 0);
                    (c, w)
                })
            }
        };
        let (config, weights) = match loaded {
            Ok(cw) => cw,
            Err(e) => {
                eprintln!("SKIPPED {name}: {e:#}");
                continue;
            }
        };
        let backend = CpuBackend::new(threads).unwrap();
        let describe = bertcls::backend::Backend::describe(&backend);
        let mut enc = Encoder::new(backend, config.clone(), &weights, TOKENS).unwrap();
        let batch = PackedBatch::new(&fixed_batch(&config, 1, TOKENS));
        let secs = median_latency(
            || {
                enc.forward(&batch, Keep::Cls).unwrap();
            },
            WARMUP,
            RUNS,
        );
        println!(
            "{{\"case\": \"latency-{name}-1x{TOKENS}\", \"engine\": \"bertcls {describe}\", \"median_ms\": {:.2}, \"runs\": {RUNS}}}",
            secs * 1e3
        );
    }
}
