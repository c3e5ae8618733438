//! CUDA backend microbenchmarks at BERT-base size (random weights of bert-base-chinese's
//! shape), for the GPU machine:
//!
//! - each memory-bound kernel's achieved GB/s next to a device-to-device copy's;
//! - cuBLAS TFLOP/s at the encoder's GEMM shapes, fp32, TF32, bf16 and fp16 (GemmEx);
//! - the attention op (gather, two batched GEMMs, softmax, scatter) per layer;
//! - encoder tokens/s at 1x128, 32x128, 256x128 and on ChnSentiCorp's texts packed.
//!
//!     cargo bench --bench cuda_kernels [-- --precision fp32|tf32|bf16|fp16 --texts N --shared DIR --encoder-only | --no-gemms]
//!
//! `--shared` is the folder holding models/bert-base-chinese and data/ChnSentiCorp-files
//! (default: ../shared beside the checkout).
//!
//! Prints why and exits 0 where no GPU is found. One JSON object per line.

mod common;

use std::path::PathBuf;

use bertcls::backend::cuda::{self, CudaBackend, CudaTensor, Precision};
use bertcls::backend::{Activation, Backend, QueryRows};
use bertcls::batch::PackedBatch;
use bertcls::model::weights::{LayerNormWeights, LinearWeights};
use bertcls::model::{encode_all, BertConfig, Encoder, HostWeights, Keep, Pooling};
use bertcls::tokenize::BertTokenizer;
use common::{arg, chnsenticorp_texts, fixed_batch, report, time};

/// Token budget: the largest fixed batch, 256 x 128.
const BUDGET: usize = 256 * 128;

/// Times `reps` launches of `op` back to back (launch overhead amortised); seconds per op.
fn time_op(be: &CudaBackend, reps: usize, mut op: impl FnMut()) -> f64 {
    time(
        || {
            for _ in 0..reps {
                op();
            }
            be.synchronize().unwrap();
        },
        0.5,
        5,
    ) / reps as f64
}

fn bandwidth(case: &str, bytes: usize, secs: f64, copy_gbs: f64) {
    let gbs = bytes as f64 / secs / 1e9;
    println!(
        "{{\"case\": \"{case}\", \"us\": {:.2}, \"gb_per_s\": {gbs:.1}, \"of_copy\": {:.2}}}",
        secs * 1e6,
        gbs / copy_gbs
    );
}

/// Prints why the benchmark cannot run and exits: 0 (a skip) normally, 1 where
/// BERTCLS_REQUIRE_GPU is set (the GPU machine's run, .gpu/run.sh), where it is a failure.
fn skip(why: &str) -> ! {
    println!("SKIPPED: {why}");
    std::process::exit(i32::from(std::env::var_os("BERTCLS_REQUIRE_GPU").is_some()))
}

fn main() {
    if let Err(e) = cuda::check_device(0) {
        skip(&format!("no CUDA backend here: {e}"));
    }
    let precision: Precision = arg("--precision")
        .map_or(Ok(Precision::Fp32), |p| p.parse())
        .unwrap();
    let shared = arg("--shared").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        PathBuf::from,
    );
    let model_dir = shared.join("models/bert-base-chinese");
    let config_path = model_dir.join("config.json");
    if !config_path.is_file() {
        skip(&format!(
            "{} not found (pass --shared DIR)",
            config_path.display()
        ));
    }
    let config = BertConfig::from_file(&config_path).unwrap();
    let be = CudaBackend::new(0, precision, BUDGET).unwrap();
    eprintln!("backend: {}", be.describe());

    // --encoder-only: the encoder's tokens/s alone. --no-gemms: this precision's kernels,
    // attention and encoder, for the GPU run's half-precision steps (the GEMMs of every
    // precision are timed once, in the fp32 step).
    let flag = |name: &str| std::env::args().any(|a| a == name);
    if !flag("--encoder-only") {
        let copy_gbs = device_copy(&be);
        kernels(&be, &config, copy_gbs);
        if !flag("--no-gemms") {
            gemms(&config);
        }
        attention(&be, &config);
    }
    encoder(be, &config, &model_dir, &shared);
}

/// cuMemcpyDtoD of 256 MiB: reads and writes every byte, the bandwidth ceiling the
/// kernels are measured against.
fn device_copy(be: &CudaBackend) -> f64 {
    let n = (256 << 20) / be.storage().bytes();
    let src = be.alloc(n).unwrap();
    let mut dst = be.alloc(n).unwrap();
    let stream = be.stream().clone();
    let secs = time_op(be, 10, || {
        stream.memcpy_dtod(src.bytes(), dst.bytes_mut()).unwrap()
    });
    let gbs = (2 << 28) as f64 / secs / 1e9;
    println!(
        "{{\"case\": \"device_copy 256MiB\", \"us\": {:.1}, \"gb_per_s\": {gbs:.1}}}",
        secs * 1e6
    );
    gbs
}

fn upload(be: &CudaBackend, len: usize, value: f32) -> CudaTensor {
    be.upload(&vec![value; len]).unwrap()
}

/// The memory-bound kernels at 32 x 128 tokens: bytes each must move / time.
fn kernels(be: &CudaBackend, config: &BertConfig, copy_gbs: f64) {
    let (c, f) = (config.hidden_size, config.intermediate_size);
    let t = 32 * 128;
    // Bytes per element of the tensors the kernels read and write.
    let e = be.storage().bytes();
    let texts = fixed_batch(config, 32, 128);
    let batch = PackedBatch::new(&texts);
    let weights = HostWeights::random(config, 0);
    let emb = weights.try_map(|w| be.upload(w)).unwrap().embeddings;
    let mut out = upload(be, t * c, 0.0);
    let secs = time_op(be, 20, || {
        be.embeddings_layernorm(&batch, &emb, 1e-12, &mut out)
            .unwrap()
    });
    // three embedding rows read, one row written per token
    bandwidth("embeddings_layernorm 32x128", 4 * t * c * e, secs, copy_gbs);

    let bias = upload(be, f, 0.01);
    let mut inter = upload(be, t * f, 0.5);
    for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
        let secs = time_op(be, 20, || {
            be.bias_activation(&mut inter, t, &bias, f, act).unwrap()
        });
        bandwidth(
            &format!("bias_activation {act:?} 4096x{f}"),
            2 * t * f * e,
            secs,
            copy_gbs,
        );
    }

    let ln = LayerNormWeights {
        gamma: upload(be, c, 1.0),
        beta: upload(be, c, 0.0),
    };
    let residual = upload(be, t * c, 1.0);
    let bias_c = upload(be, c, 0.1);
    let mut x = upload(be, t * c, 0.5);
    let secs = time_op(be, 20, || {
        be.bias_residual_layernorm(&mut x, t, &bias_c, &residual, &ln, 1e-12)
            .unwrap()
    });
    bandwidth(
        &format!("bias_residual_layernorm 4096x{c}"),
        3 * t * c * e,
        secs,
        copy_gbs,
    );

    let rows: Vec<usize> = batch.cls_rows().to_vec();
    let mut cls = upload(be, rows.len() * c, 0.0);
    let secs = time_op(be, 20, || be.gather_rows(&x, c, &rows, &mut cls).unwrap());
    bandwidth(
        "gather_rows 32 of 4096",
        2 * rows.len() * c * e,
        secs,
        copy_gbs,
    );

    let mut y = upload(be, t * 3 * c, 0.0);
    let lin = LinearWeights {
        w: upload(be, 3 * c * c, 0.001),
        b: upload(be, 3 * c, 0.1),
        out_features: 3 * c,
        in_features: c,
    };
    let with_bias = time_op(be, 20, || be.linear(&x, t, &lin, true, &mut y).unwrap());
    let without = time_op(be, 20, || be.linear(&x, t, &lin, false, &mut y).unwrap());
    // The bias costs one extra write of the output (broadcast) and a read in the GEMM.
    bandwidth(
        "bias broadcast (linear with - without bias) 4096x2304",
        2 * t * 3 * c * e,
        (with_bias - without).max(1e-9),
        copy_gbs,
    );
}

/// cuBLAS at the encoder's shapes, fp32 and TF32 (sgemm), bf16 and fp16 (GemmEx, fp32
/// accumulation), on fresh handles.
fn gemms(config: &BertConfig) {
    let (c, f) = (config.hidden_size, config.intermediate_size);
    for precision in [
        Precision::Fp32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::Fp16,
    ] {
        let be = CudaBackend::new(0, precision, BUDGET).unwrap();
        for t in [128, 4096, 32768] {
            for (name, k, n) in [
                ("qkv", c, 3 * c),
                ("attn_out", c, c),
                ("ffn_in", c, f),
                ("ffn_out", f, c),
            ] {
                let x = upload(&be, t * k, 0.5);
                let lin = LinearWeights {
                    w: upload(&be, n * k, 0.001),
                    b: upload(&be, n, 0.0),
                    out_features: n,
                    in_features: k,
                };
                let mut y = upload(&be, t * n, 0.0);
                let secs = time_op(&be, 10, || be.linear(&x, t, &lin, false, &mut y).unwrap());
                let tflops = 2.0 * (t * k * n) as f64 / secs / 1e12;
                println!(
                    "{{\"case\": \"gemm {precision} {name} {t}x{k}x{n}\", \"us\": {:.1}, \"tflop_per_s\": {tflops:.2}}}",
                    secs * 1e6
                );
            }
        }
    }
}

/// One layer's attention op over packed texts of one length.
fn attention(be: &CudaBackend, config: &BertConfig) {
    let (h, c) = (config.num_attention_heads, config.hidden_size);
    let hd = c / h;
    for (b, l) in [(1, 128), (32, 128), (256, 128), (8, 350)] {
        let t = b * l;
        let offsets: Vec<usize> = (0..=b).map(|i| i * l).collect();
        let qkv = upload(be, t * 3 * c, 0.01);
        let mut out = upload(be, t * c, 0.0);
        for rows in [QueryRows::All, QueryRows::ClsOnly] {
            let secs = time_op(be, 10, || {
                be.attention(&qkv, &offsets, h, hd, rows, &mut out).unwrap()
            });
            let lq = if rows == QueryRows::All { l } else { 1 };
            let flops = 4.0 * (b * h * lq * l * hd) as f64;
            println!(
                "{{\"case\": \"attention {rows:?} {b}x{l}\", \"us\": {:.1}, \"tflop_per_s\": {:.2}}}",
                secs * 1e6,
                flops / secs / 1e12
            );
        }
    }
}

/// Encoder tokens/s ([CLS] only, as `train` runs it), fixed batches and real texts.
fn encoder(
    be: CudaBackend,
    config: &BertConfig,
    model_dir: &std::path::Path,
    shared: &std::path::Path,
) {
    let weights = HostWeights::random(config, 0);
    let precision = be.precision();
    let mut enc = Encoder::new(be, config.clone(), &weights, BUDGET).unwrap();
    for (b, l) in [(1, 128), (32, 128), (256, 128)] {
        let texts = fixed_batch(config, b, l);
        let batch = PackedBatch::new(&texts);
        let secs = time(
            || {
                enc.forward(&batch, Keep::Cls).unwrap();
            },
            2.0,
            5,
        );
        report(&format!("encoder {precision} {b}x{l}"), b * l, secs);
    }

    let n_texts = arg("--texts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let Some(texts) = chnsenticorp_texts(shared, n_texts) else {
        println!("SKIPPED chnsenticorp case: ../shared/data/ChnSentiCorp-files not found");
        return;
    };
    let tokenizer = BertTokenizer::from_dir(model_dir, 350).unwrap();
    let tokens = tokenizer.encode_many(&texts).unwrap();
    let real: usize = tokens.iter().map(|t| t.ids.len()).sum();
    let secs = time(
        || {
            encode_all(&mut enc, &tokens, Pooling::CLS, |_| {}).unwrap();
        },
        2.0,
        5,
    );
    report(
        &format!(
            "encoder {precision} chnsenticorp-train {} texts packed",
            texts.len()
        ),
        real,
        secs,
    );
}
