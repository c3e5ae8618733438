//! What the CPU and CUDA benchmarks share: flags, timing, the inputs and the report line.
#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::time::Instant;

use bertcls::model::BertConfig;
use bertcls::tokenize::TokenizedText;

/// The value after `name` on the command line (`cargo bench --bench X -- --texts 64`).
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Runs `f` once to warm up, then until `min_secs` have passed and at least `min_runs`
/// runs; returns the median seconds per run. A GPU `f` must synchronise before returning.
pub fn time(mut f: impl FnMut(), min_secs: f64, min_runs: usize) -> f64 {
    f();
    let mut runs = Vec::new();
    let started = Instant::now();
    while runs.len() < min_runs || started.elapsed().as_secs_f64() < min_secs {
        let t = Instant::now();
        f();
        runs.push(t.elapsed().as_secs_f64());
    }
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    runs[runs.len() / 2]
}

/// One JSON line per case: real (non-padding) tokens and tokens per second.
pub fn report(case: &str, tokens: usize, secs: f64) {
    println!(
        "{{\"case\": \"{case}\", \"tokens\": {tokens}, \"ms\": {:.2}, \"tokens_per_s\": {:.1}}}",
        secs * 1e3,
        tokens as f64 / secs
    );
}

/// b texts of l tokens with ids spread over the vocabulary (the same for every backend).
pub fn fixed_batch(config: &BertConfig, b: usize, l: usize) -> Vec<TokenizedText> {
    (0..b)
        .map(|i| TokenizedText {
            ids: (0..l)
                .map(|j| ((i * 7919 + j * 104_729) % (config.vocab_size - 1000) + 1000) as u32)
                .collect(),
            type_ids: vec![0; l],
        })
        .collect()
}

/// The first `n` ChnSentiCorp train texts from ../shared, or None where it is absent.
pub fn chnsenticorp_texts(shared: &Path, n: usize) -> Option<Vec<String>> {
    let jsonl = shared.join("data/ChnSentiCorp-files/train.jsonl");
    let text = std::fs::read_to_string(&jsonl).ok()?;
    Some(
        text.lines()
            .take(n)
            .map(|l| {
                let row: serde_json::Value =
                    serde_json::from_str(l).expect("ChnSentiCorp JSONL row");
                row["text"].as_str().expect("text column").to_string()
            })
            .collect(),
    )
}

/// Latency as the reference scripts time it: `warmup` untimed runs, then the median of
/// `runs` timed ones, in seconds.
pub fn median_latency(mut f: impl FnMut(), warmup: usize, runs: usize) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[runs / 2]
}
