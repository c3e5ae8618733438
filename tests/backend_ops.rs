//! Every op of `Backend`, in the style of llama.cpp's test-backend-ops: random inputs from
//! a fixed seed, one list of cases, each run on two sides and compared with a tolerance
//! that the case states with its reason.
//!
//! - CPU backend against a naive f64 reference written here: runs everywhere (CI).
//! - CUDA backend against the CPU backend: runs where a GPU is found, else prints why it
//!   skips. So do the whole encoder on CUDA against the HF fixtures and the GPU head
//!   against the CPU head and AdamW.
//!
//! Outputs are written into buffers filled with NaN and a NaN tail: an element an op
//! forgets to write fails the comparison, and a write past the end fails the tail check.

mod common;

use bertcls::backend::cpu::CpuBackend;
use bertcls::backend::cuda::{self, CudaBackend, CudaHead, Precision};
use bertcls::backend::{Activation, Backend, QueryRows};
use bertcls::batch::PackedBatch;
use bertcls::head::{HeadScratch, LinearHead};
use bertcls::model::weights::{EmbeddingWeights, LayerNormWeights, LinearWeights};
use bertcls::model::{Encoder, Keep, ModelDir};
use bertcls::optim::AdamW;
use bertcls::tokenize::TokenizedText;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// The checkout: BERTCLS_CHECKOUT where the test executable runs from a copy elsewhere
/// (the GPU machine, `.gpu/run.sh`), else where it was built.
fn checkout() -> PathBuf {
    std::env::var_os("BERTCLS_CHECKOUT").map_or_else(repo, PathBuf::from)
}

/// Floats past each output that must still hold the NaN sentinel after the op.
const TAIL: usize = 64;
/// Token budget of the CUDA backend in these tests: above every case's batch.
const BUDGET: usize = 2048;

struct Inputs(StdRng);

impl Inputs {
    fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(lo..hi)).collect()
    }
    fn ids(&mut self, n: usize, below: u32) -> Vec<u32> {
        (0..n).map(|_| self.0.random_range(0..below)).collect()
    }
}

struct EmbeddingsCase {
    batch: PackedBatch,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    c: usize,
    eps: f32,
}

struct LinearCase {
    x: Vec<f32>,
    rows: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    n: usize,
    k: usize,
    add_bias: bool,
}

struct ActivationCase {
    x: Vec<f32>,
    rows: usize,
    bias: Vec<f32>,
    width: usize,
    act: Activation,
}

struct LayerNormCase {
    x: Vec<f32>,
    rows: usize,
    bias: Vec<f32>,
    residual: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    c: usize,
    eps: f32,
}

struct AttentionCase {
    qkv: Vec<f32>,
    offsets: Vec<usize>,
    heads: usize,
    head_dim: usize,
    query_rows: QueryRows,
}

struct GatherCase {
    src: Vec<f32>,
    width: usize,
    rows: Vec<usize>,
}

struct MeanPoolCase {
    hidden: Vec<f32>,
    width: usize,
    offsets: Vec<usize>,
}

enum Op {
    Embeddings(EmbeddingsCase),
    Linear(LinearCase),
    BiasActivation(ActivationCase),
    BiasResidualLayerNorm(LayerNormCase),
    Attention(AttentionCase),
    GatherRows(GatherCase),
    MeanPool(MeanPoolCase),
}

/// One op on one input, with the tolerance |got - want| <= atol + rtol |want| and why.
struct Case {
    name: String,
    op: Op,
    atol: f64,
    rtol: f64,
    why: &'static str,
}

fn packed(lens: &[usize], vocab: u32, inputs: &mut Inputs) -> PackedBatch {
    let texts: Vec<TokenizedText> = lens
        .iter()
        .map(|&n| TokenizedText {
            ids: inputs.ids(n, vocab),
            type_ids: inputs.ids(n, 2),
        })
        .collect();
    PackedBatch::new(&texts)
}

fn offsets_of(lens: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for &l in lens {
        o.push(o.last().unwrap() + l);
    }
    o
}

fn cases() -> Vec<Case> {
    let mut r = Inputs::new(0x5eed_0005);
    let mut cases = Vec::new();

    const LN_WHY: &str = "fp32 sums of C terms and one sqrt: a few ulps of outputs of order 1";
    for (c, lens) in [(32, vec![5, 1, 17, 9]), (768, vec![128, 3, 64])] {
        let (vocab, max_pos) = (97u32, 256);
        // Rows with a large common offset: a one-pass E[x^2] - E[x]^2 variance fails here.
        let word: Vec<f32> = r
            .uniform(vocab as usize * c, -1.0, 1.0)
            .iter()
            .map(|v| v + 4.0)
            .collect();
        cases.push(Case {
            name: format!("embeddings_layernorm C={c} lens={lens:?}"),
            op: Op::Embeddings(EmbeddingsCase {
                batch: packed(&lens, vocab, &mut r),
                word,
                position: r.uniform(max_pos * c, -0.5, 0.5),
                token_type: r.uniform(2 * c, -0.5, 0.5),
                gamma: r.uniform(c, 0.5, 1.5),
                beta: r.uniform(c, -0.5, 0.5),
                c,
                eps: 1e-12,
            }),
            atol: 2e-5,
            rtol: 1e-5,
            why: LN_WHY,
        });
    }

    // BERT-base shapes (QKV, FFN in/out) and odd ones that are no multiple of any tile.
    for (rows, k, n, add_bias) in [
        (37, 48, 96, true),
        (5, 33, 7, false),
        (64, 768, 2304, true),
        (16, 3072, 768, false),
        (1, 768, 768, true),
    ] {
        let scale = 1.0 / (k as f32).sqrt();
        cases.push(Case {
            name: format!("linear rows={rows} K={k} N={n} bias={add_bias}"),
            op: Op::Linear(LinearCase {
                x: r.uniform(rows * k, -1.0, 1.0),
                rows,
                w: r.uniform(n * k, -scale, scale),
                b: r.uniform(n, -1.0, 1.0),
                n,
                k,
                add_bias,
            }),
            atol: 2e-5,
            rtol: 1e-5,
            why: "fp32 dot products of K terms in different orders (blocked GEMMs): error ~ sqrt(K) ulps of outputs of order 1",
        });
    }

    for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
        let (rows, width) = (33, 130);
        cases.push(Case {
            name: format!("bias_activation {act:?} rows={rows} F={width}"),
            op: Op::BiasActivation(ActivationCase {
                x: r.uniform(rows * width, -6.0, 6.0),
                rows,
                bias: r.uniform(width, -1.0, 1.0),
                width,
                act,
            }),
            atol: 1e-6,
            rtol: 2e-6,
            why: "one fp32 add, then erf/tanh: the CPU's polynomial erf is within 2e-7, CUDA's erff within 2 ulp",
        });
    }

    for (rows, c) in [(29, 768), (3, 32)] {
        cases.push(Case {
            name: format!("bias_residual_layernorm rows={rows} C={c}"),
            op: Op::BiasResidualLayerNorm(LayerNormCase {
                x: r.uniform(rows * c, -3.0, 3.0),
                rows,
                bias: r.uniform(c, -1.0, 1.0),
                residual: r.uniform(rows * c, 5.0, 7.0),
                gamma: r.uniform(c, 0.5, 1.5),
                beta: r.uniform(c, -0.5, 0.5),
                c,
                eps: 1e-12,
            }),
            atol: 2e-5,
            rtol: 1e-5,
            why: LN_WHY,
        });
    }

    for (lens, heads, head_dim) in [(vec![7, 1, 16, 3], 4, 8), (vec![128, 77, 5, 1], 12, 64)] {
        for query_rows in [QueryRows::All, QueryRows::ClsOnly] {
            let t: usize = lens.iter().sum();
            let c = heads * head_dim;
            cases.push(Case {
                name: format!("attention {query_rows:?} lens={lens:?} heads={heads} head_dim={head_dim}"),
                op: Op::Attention(AttentionCase {
                    qkv: r.uniform(t * 3 * c, -2.0, 2.0),
                    offsets: offsets_of(&lens),
                    heads,
                    head_dim,
                    query_rows,
                }),
                atol: 2e-5,
                rtol: 1e-5,
                why: "fp32 scores (head_dim terms), softmax and a weighted sum of up to L rows: errors of a few ulps, outputs bounded by |V| <= 2",
            });
        }
    }

    let width = 48;
    cases.push(Case {
        name: format!("gather_rows width={width}"),
        op: Op::GatherRows(GatherCase {
            src: r.uniform(40 * width, -1.0, 1.0),
            width,
            rows: vec![0, 7, 39, 7, 12],
        }),
        atol: 0.0,
        rtol: 0.0,
        why: "a copy: bit-exact",
    });
    for (lens, width) in [(vec![1, 5, 300], 40), (vec![17, 2, 128, 1], 384)] {
        let t: usize = lens.iter().sum();
        cases.push(Case {
            name: format!("mean_pool lens={lens:?} width={width}"),
            op: Op::MeanPool(MeanPoolCase {
                hidden: r.uniform(t * width, -3.0, 3.0),
                width,
                offsets: offsets_of(&lens),
            }),
            atol: 1e-6,
            rtol: 2e-5,
            why: "f32 sums of up to 300 terms of |x| <= 3 in token order: ~300 ulps relative at worst",
        });
    }
    cases
}

/// Uploads `host` followed by the NaN tail.
fn upload_with_tail<B: Backend>(be: &B, host: &[f32]) -> B::Tensor {
    let mut v = host.to_vec();
    v.extend(std::iter::repeat_n(f32::NAN, TAIL));
    be.upload(&v).unwrap()
}

fn nan_buffer<B: Backend>(be: &B, len: usize) -> B::Tensor {
    be.upload(&vec![f32::NAN; len + TAIL]).unwrap()
}

/// The first `len` floats of `t`, after checking that the tail past them is untouched.
fn download_checked<B: Backend>(be: &B, t: &B::Tensor, len: usize, name: &str) -> Vec<f32> {
    let mut all = be.download(t, len + TAIL).unwrap();
    assert!(
        all[len..].iter().all(|v| v.is_nan()),
        "{name}: wrote past the end of its output"
    );
    all.truncate(len);
    all
}

fn linear_weights<B: Backend>(
    be: &B,
    w: &[f32],
    b: &[f32],
    n: usize,
    k: usize,
) -> LinearWeights<B::Tensor> {
    LinearWeights {
        w: be.upload(w).unwrap(),
        b: be.upload(b).unwrap(),
        out_features: n,
        in_features: k,
    }
}

fn run<B: Backend>(be: &B, case: &Case) -> Vec<f32> {
    let name = &case.name;
    match &case.op {
        Op::Embeddings(e) => {
            let emb = EmbeddingWeights {
                word: be.upload(&e.word).unwrap(),
                position: be.upload(&e.position).unwrap(),
                token_type: be.upload(&e.token_type).unwrap(),
                ln: LayerNormWeights {
                    gamma: be.upload(&e.gamma).unwrap(),
                    beta: be.upload(&e.beta).unwrap(),
                },
            };
            let len = e.batch.num_tokens() * e.c;
            let mut out = nan_buffer(be, len);
            be.embeddings_layernorm(&e.batch, &emb, e.eps, &mut out)
                .unwrap();
            download_checked(be, &out, len, name)
        }
        Op::Linear(l) => {
            let lin = linear_weights(be, &l.w, &l.b, l.n, l.k);
            let x = upload_with_tail(be, &l.x);
            let mut out = nan_buffer(be, l.rows * l.n);
            be.linear(&x, l.rows, &lin, l.add_bias, &mut out).unwrap();
            download_checked(be, &out, l.rows * l.n, name)
        }
        Op::BiasActivation(a) => {
            let mut x = upload_with_tail(be, &a.x);
            let bias = be.upload(&a.bias).unwrap();
            be.bias_activation(&mut x, a.rows, &bias, a.width, a.act)
                .unwrap();
            download_checked(be, &x, a.rows * a.width, name)
        }
        Op::BiasResidualLayerNorm(l) => {
            let mut x = upload_with_tail(be, &l.x);
            let bias = be.upload(&l.bias).unwrap();
            let residual = be.upload(&l.residual).unwrap();
            let ln = LayerNormWeights {
                gamma: be.upload(&l.gamma).unwrap(),
                beta: be.upload(&l.beta).unwrap(),
            };
            be.bias_residual_layernorm(&mut x, l.rows, &bias, &residual, &ln, l.eps)
                .unwrap();
            download_checked(be, &x, l.rows * l.c, name)
        }
        Op::Attention(a) => {
            let n = a.offsets.len() - 1;
            let c = a.heads * a.head_dim;
            // (T, C) for either; ClsOnly's result is its first n rows, the rest scratch.
            let len = a.offsets[n] * c;
            let qkv = be.upload(&a.qkv).unwrap();
            let mut out = nan_buffer(be, len);
            be.attention(
                &qkv,
                &a.offsets,
                a.heads,
                a.head_dim,
                a.query_rows,
                &mut out,
            )
            .unwrap();
            let mut rows = download_checked(be, &out, len, name);
            if a.query_rows == QueryRows::ClsOnly {
                rows.truncate(n * c);
            }
            rows
        }
        Op::GatherRows(g) => {
            let src = be.upload(&g.src).unwrap();
            let len = g.rows.len() * g.width;
            let mut out = nan_buffer(be, len);
            be.gather_rows(&src, g.width, &g.rows, &mut out).unwrap();
            download_checked(be, &out, len, name)
        }
        Op::MeanPool(m) => {
            let hidden = be.upload(&m.hidden).unwrap();
            let len = (m.offsets.len() - 1) * m.width;
            let mut out = nan_buffer(be, len);
            be.mean_pool(&hidden, m.width, &m.offsets, &mut out)
                .unwrap();
            download_checked(be, &out, len, name)
        }
    }
}

// ---- the naive f64 reference ----

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn layernorm_f64(row: &[f64], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
    let c = row.len() as f64;
    let mean = row.iter().sum::<f64>() / c;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    row.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(v, (&g, &b))| (v - mean) * rstd * g as f64 + b as f64)
        .collect()
}

/// erf in f64 from the all-positive series erf(x) = 2/sqrt(pi) e^{-x^2} sum 2^n x^{2n+1} /
/// (1 3 ... (2n+1)): no cancellation, so it is accurate to f64 rounding; erf(6) = 1 - 2e-17.
fn erf_f64(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

fn activation_f64(x: f64, act: Activation) -> f64 {
    match act {
        Activation::GeluErf => 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Relu => x.max(0.0),
    }
}

fn reference(case: &Case) -> Vec<f64> {
    match &case.op {
        Op::Embeddings(e) => {
            let c = e.c;
            let b = &e.batch;
            (0..b.num_tokens())
                .flat_map(|t| {
                    let (id, pos, ty) = (
                        b.ids[t] as usize,
                        b.positions[t] as usize,
                        b.type_ids[t] as usize,
                    );
                    let row: Vec<f64> = (0..c)
                        .map(|i| {
                            e.word[id * c + i] as f64
                                + e.token_type[ty * c + i] as f64
                                + e.position[pos * c + i] as f64
                        })
                        .collect();
                    layernorm_f64(&row, &e.gamma, &e.beta, e.eps)
                })
                .collect()
        }
        Op::Linear(l) => (0..l.rows)
            .flat_map(|r| {
                (0..l.n).map(move |j| {
                    let dot: f64 = (0..l.k)
                        .map(|i| l.x[r * l.k + i] as f64 * l.w[j * l.k + i] as f64)
                        .sum();
                    dot + if l.add_bias { l.b[j] as f64 } else { 0.0 }
                })
            })
            .collect(),
        Op::BiasActivation(a) => {
            a.x.iter()
                .enumerate()
                .map(|(i, &v)| activation_f64(v as f64 + a.bias[i % a.width] as f64, a.act))
                .collect()
        }
        Op::BiasResidualLayerNorm(l) => (0..l.rows)
            .flat_map(|r| {
                let row: Vec<f64> = (0..l.c)
                    .map(|i| {
                        l.x[r * l.c + i] as f64 + l.bias[i] as f64 + l.residual[r * l.c + i] as f64
                    })
                    .collect();
                layernorm_f64(&row, &l.gamma, &l.beta, l.eps)
            })
            .collect(),
        Op::Attention(a) => attention_f64(a),
        Op::GatherRows(g) => g
            .rows
            .iter()
            .flat_map(|&r| f64s(&g.src[r * g.width..(r + 1) * g.width]))
            .collect(),
        Op::MeanPool(m) => m
            .offsets
            .windows(2)
            .flat_map(|span| {
                let len = (span[1] - span[0]) as f64;
                (0..m.width).map(move |c| {
                    (span[0]..span[1])
                        .map(|t| m.hidden[t * m.width + c] as f64)
                        .sum::<f64>()
                        / len
                })
            })
            .collect(),
    }
}

fn attention_f64(a: &AttentionCase) -> Vec<f64> {
    let (h, d) = (a.heads, a.head_dim);
    let c = h * d;
    let at = |row: usize, part: usize, head: usize, i: usize| {
        a.qkv[row * 3 * c + part * c + head * d + i] as f64
    };
    let mut out = Vec::new();
    for w in a.offsets.windows(2) {
        let (start, len) = (w[0], w[1] - w[0]);
        let queries = if a.query_rows == QueryRows::All {
            len
        } else {
            1
        };
        for q in 0..queries {
            let mut row = vec![0.0; c];
            for head in 0..h {
                let scores: Vec<f64> = (0..len)
                    .map(|k| {
                        (0..d)
                            .map(|i| at(start + q, 0, head, i) * at(start + k, 1, head, i))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    row[head * d + i] =
                        (0..len).map(|k| e[k] / z * at(start + k, 2, head, i)).sum();
                }
            }
            out.extend(row);
        }
    }
    out
}

/// The worst element outside atol + rtol |want|, if any: a message naming the case, the
/// element and the reason for the tolerance.
fn mismatch(case: &Case, side: &str, got: &[f32], want: &[f64]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!(
            "{side}: {}: output length {} != {}",
            case.name,
            got.len(),
            want.len()
        ));
    }
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        // NaN on either side (an element never written) counts as infinitely far: the
        // CUDA comparisons take the CPU's output as `want`.
        let err = if g.is_nan() || !w.is_finite() {
            f64::INFINITY
        } else {
            (g as f64 - w).abs()
        };
        let excess = err - (case.atol + case.rtol * w.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let (excess, i) = worst;
    (excess > 0.0).then(|| {
        format!(
            "{side}: {}: element {i}: got {}, want {} (tolerance {} + {} |want|: {})",
            case.name, got[i], want[i], case.atol, case.rtol, case.why
        )
    })
}

/// Every case of a comparison is run and printed, ok or FAIL, as test-backend-ops does;
/// `finish` then fails the test with the list, so one GPU run shows every failing op.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, case: &Case, side: &str, got: &[f32], want: &[f64]) {
        match mismatch(case, side, got, want) {
            None => eprintln!("ok    {side}: {}", case.name),
            Some(m) => {
                eprintln!("FAIL  {m}");
                self.failures.push(m);
            }
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// The CUDA backend, or the reason there is none, printed. With BERTCLS_REQUIRE_GPU set
/// (the GPU machine's run, `.gpu/run.sh`), no GPU is a failure, not a skip.
fn cuda_backend(precision: Precision) -> Option<CudaBackend> {
    cuda_backend_for(precision, BUDGET)
}

/// As `cuda_backend`, with scratch for batches of up to `max_batch_tokens` tokens.
fn cuda_backend_for(precision: Precision, max_batch_tokens: usize) -> Option<CudaBackend> {
    if let Err(e) = cuda::check_device(0) {
        if std::env::var_os("BERTCLS_REQUIRE_GPU").is_some() {
            panic!("BERTCLS_REQUIRE_GPU is set but there is no CUDA backend: {e}");
        }
        eprintln!("SKIPPED: no CUDA backend here: {e}");
        return None;
    }
    Some(
        CudaBackend::new(0, precision, max_batch_tokens)
            .expect("check_device passed, so the backend must start"),
    )
}

#[test]
fn cpu_ops_match_f64_reference() {
    let cpu = CpuBackend::new(2).unwrap();
    let mut report = Report::default();
    for case in cases() {
        report.check(&case, "cpu vs f64", &run(&cpu, &case), &reference(&case));
    }
    report.finish();
}

#[test]
fn cuda_ops_match_cpu() {
    let Some(gpu) = cuda_backend(Precision::Fp32) else {
        return;
    };
    let cpu = CpuBackend::new(2).unwrap();
    let mut report = Report::default();
    for case in cases() {
        let want = f64s(&run(&cpu, &case));
        report.check(&case, "cuda vs cpu", &run(&gpu, &case), &want);
    }
    report.finish();
}

/// TF32 rounds GEMM inputs to a 10-bit mantissa (relative error 2^-11 each), so a K-term
/// dot product of outputs of order 1 is off by ~1e-3; 1e-2 bounds it with margin and
/// still catches a wrong layout or a missing bias.
#[test]
fn cuda_tf32_linear_is_close_to_fp32() {
    let Some(gpu) = cuda_backend(Precision::Tf32) else {
        return;
    };
    let mut report = Report::default();
    for mut case in cases()
        .into_iter()
        .filter(|c| matches!(c.op, Op::Linear(_)))
    {
        (case.atol, case.rtol, case.why) = (1e-2, 1e-2, "TF32: 10-bit mantissa inputs");
        report.check(
            &case,
            "cuda tf32 vs f64",
            &run(&gpu, &case),
            &reference(&case),
        );
    }
    report.finish();
}

/// The case with every input rounded to `precision`'s half type (as the GPU stores it).
fn rounded_case(case: &Case, precision: Precision) -> Case {
    let r = |v: &Vec<f32>| -> Vec<f32> {
        v.iter()
            .map(|&x| match precision {
                Precision::Fp16 => half::f16::from_f32(x).to_f32(),
                Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
                Precision::Fp32 | Precision::Tf32 => x,
            })
            .collect()
    };
    let op = match &case.op {
        Op::Embeddings(e) => Op::Embeddings(EmbeddingsCase {
            batch: e.batch.clone(),
            word: r(&e.word),
            position: r(&e.position),
            token_type: r(&e.token_type),
            gamma: r(&e.gamma),
            beta: r(&e.beta),
            ..*e
        }),
        Op::Linear(l) => Op::Linear(LinearCase {
            x: r(&l.x),
            w: r(&l.w),
            b: r(&l.b),
            ..*l
        }),
        Op::BiasActivation(a) => Op::BiasActivation(ActivationCase {
            x: r(&a.x),
            bias: r(&a.bias),
            ..*a
        }),
        Op::BiasResidualLayerNorm(l) => Op::BiasResidualLayerNorm(LayerNormCase {
            x: r(&l.x),
            bias: r(&l.bias),
            residual: r(&l.residual),
            gamma: r(&l.gamma),
            beta: r(&l.beta),
            ..*l
        }),
        Op::Attention(a) => Op::Attention(AttentionCase {
            qkv: r(&a.qkv),
            offsets: a.offsets.clone(),
            ..*a
        }),
        Op::GatherRows(g) => Op::GatherRows(GatherCase {
            src: r(&g.src),
            rows: g.rows.clone(),
            ..*g
        }),
        Op::MeanPool(m) => Op::MeanPool(MeanPoolCase {
            hidden: r(&m.hidden),
            offsets: m.offsets.clone(),
            ..*m
        }),
    };
    Case {
        name: format!("{} {precision}", case.name),
        op,
        ..*case
    }
}

/// Why a half linear with a bias gets more than one rounding of its output.
const HALF_BIAS_GEMM: &str = "the bias sits in C (beta = 1), and cuBLAS's split-K kernels \
     reduce into C in the half type: each partial sum is rounded at up to |b| + sum |x w| \
     (on an H200, bf16 outputs of 0.04 to 0.1 landed on the rounding grid of values near 1)";

/// max over outputs of |b_j| + sum_k |x_ik w_jk|: the largest value a partial sum of a
/// biased output can hold, whatever order the GEMM adds its terms in.
fn bias_and_products(l: &LinearCase) -> f64 {
    let mut worst = 0.0f64;
    for x in l.x.chunks_exact(l.k) {
        for (w, b) in l.w.chunks_exact(l.k).zip(&l.b) {
            let sum: f64 = x
                .iter()
                .zip(w)
                .map(|(&a, &c)| (a as f64 * c as f64).abs())
                .sum();
            worst = worst.max(b.abs() as f64 + sum);
        }
    }
    worst
}

/// bf16 and fp16 ops against the fp32 CPU op on the same inputs rounded to half (as the
/// GPU stores them), so that what is measured is the half path's own error. With u the
/// unit roundoff (fp16 2^-11, 11 significant bits; bf16 2^-8, 8 bits): element-wise,
/// LayerNorm, GEMM and mean-pooling outputs are computed in fp32 (GemmEx accumulates in
/// fp32) and rounded once: u |y| plus the fp32 case's atol. Attention rounds the probabilities
/// (u relative each) and the context once: u sum p |v| + u |ctx| <= 2u max|v| = 4u,
/// |V| <= 2. Copies stay exact. A linear with a bias: see HALF_BIAS_GEMM.
#[test]
fn cuda_half_ops_match_cpu_on_rounded_inputs() {
    let mut report = Report::default();
    for precision in [Precision::Bf16, Precision::Fp16] {
        let Some(gpu) = cuda_backend(precision) else {
            return;
        };
        let u = match precision {
            Precision::Fp16 => 1.0 / 2048.0,
            _ => 1.0 / 256.0,
        };
        let cpu = CpuBackend::new(2).unwrap();
        for case in cases() {
            let mut case = rounded_case(&case, precision);
            let want = f64s(&run(&cpu, &case));
            match &case.op {
                Op::GatherRows(_) => {}
                Op::Attention(_) => (case.atol, case.rtol) = (case.atol + 4.0 * u, case.rtol),
                Op::Linear(l) if l.add_bias => {
                    (case.atol, case.rtol) = (case.atol + u * bias_and_products(l), case.rtol + u);
                    case.why = HALF_BIAS_GEMM;
                }
                _ => (case.atol, case.rtol) = (case.atol, case.rtol + u),
            }
            report.check(&case, "cuda half vs cpu fp32", &run(&gpu, &case), &want);
        }
    }
    report.finish();
}

/// The whole encoder in bf16 and fp16 against fp32 at BERT-base size (bert-base-chinese's
/// config and tokenizer, random weights: the real ones are not at hand) on 64 ChnSentiCorp
/// test texts: every text's [CLS] within 32u of fp32, max |diff| / max |fp32|, u the unit
/// roundoff. Each layer rounds its weights once and its activations about eight times;
/// LayerNorm renormalises every sublayer, so the errors add over the 12 layers rather than
/// compound (~10u per element, the largest of 768 a few times that). The same bound as
/// tools/reference/check_encoder_gpu.py, which also checks the test accuracy of a head.
#[test]
fn cuda_half_encoder_close_to_fp32_on_chnsenticorp() {
    let shared = checkout().join("../shared");
    let model_dir = shared.join("models/bert-base-chinese");
    let data = shared.join("data/ChnSentiCorp-files/test.jsonl");
    if skip_unless(
        model_dir.join("config.json").is_file() && data.is_file(),
        "../shared has no bert-base-chinese config or ChnSentiCorp test split",
    ) {
        return;
    }
    // 64 texts of up to 350 tokens go through as one batch.
    let Some(fp32) = cuda_backend_for(Precision::Fp32, 32768) else {
        return;
    };
    let config = bertcls::model::BertConfig::from_file(&model_dir.join("config.json")).unwrap();
    let weights = bertcls::model::HostWeights::random(&config, 0);
    let tokenizer = bertcls::tokenize::BertTokenizer::from_dir(&model_dir, 350).unwrap();
    let texts: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .take(64)
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            row["text"].as_str().unwrap().to_string()
        })
        .collect();
    let tokens = tokenizer.encode_many(&texts).unwrap();
    let batch = PackedBatch::new(&tokens);
    let c = config.hidden_size;
    let mut enc = Encoder::new(fp32, config.clone(), &weights, 32768).unwrap();
    let want = enc.forward(&batch, Keep::Cls).unwrap().cls;
    drop(enc);
    for (precision, u) in [
        (Precision::Bf16, 1.0 / 256.0),
        (Precision::Fp16, 1.0 / 2048.0),
    ] {
        let gpu = CudaBackend::new(0, precision, 32768).unwrap();
        let mut enc = Encoder::new(gpu, config.clone(), &weights, 32768).unwrap();
        let got = enc.forward(&batch, Keep::Cls).unwrap().cls;
        let mut worst = 0.0f64;
        for (g, w) in got.chunks_exact(c).zip(want.chunks_exact(c)) {
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            worst = worst.max(max_abs_diff(g, w) as f64 / scale);
        }
        eprintln!("{precision} vs fp32 [CLS]: max |diff| / max |fp32| = {worst:.2e} (tolerance 32u = {:.2e})", 32.0 * u);
        assert!(
            worst <= 32.0 * u,
            "{precision}: [CLS] off by {worst:e} relative"
        );
    }
}

#[test]
fn cuda_backend_without_a_gpu_fails_in_one_line() {
    if cuda::check_device(0).is_ok() {
        eprintln!("SKIPPED: this machine has a usable GPU");
        return;
    }
    let e = CudaBackend::new(0, Precision::Fp32, BUDGET)
        .err()
        .expect("no GPU: must fail")
        .to_string();
    assert!(!e.contains('\n') && !e.is_empty(), "one line: {e}");
    eprintln!("CudaBackend::new here: {e}");
}

#[test]
fn kernel_fatbin_carries_sm80_sm90_and_ptx() {
    match cuda::KERNEL_ARCHS {
        None => eprintln!("SKIPPED: built without nvcc (run scripts/install-cuda-toolchain.sh)"),
        Some(archs) => assert_eq!(archs, "sm_80 sm_90 compute_80"),
    }
}

/// The whole encoder on CUDA against HF transformers (fp32, eager attention): every hidden
/// state of the tiny model within 1e-4 (as the CPU encoder; GPU fp32 adds only summation
/// order), and the [CLS]-only path.
#[test]
fn cuda_encoder_matches_transformers_fixture() {
    let Some(gpu) = cuda_backend(Precision::Fp32) else {
        return;
    };
    let dir = ModelDir::open(&checkout().join("tests/fixtures/tiny/model")).unwrap();
    let (config, weights) = dir.load().unwrap();
    let r = read_tensors(&checkout().join("tests/fixtures/tiny/reference.safetensors"));
    let texts = unpad(&r);
    let (c, l) = (config.hidden_size, r["input_ids"].shape[1]);
    let mut enc = Encoder::new(gpu, config, &weights, BUDGET).unwrap();
    let batch = PackedBatch::new(&texts);
    let out = enc.forward(&batch, Keep::AllHiddenStates).unwrap();
    for (layer, ours) in out.hidden_states.iter().enumerate() {
        let want = &r[&format!("hidden_states.{layer}")].f32;
        for (i, t) in texts.iter().enumerate() {
            let (n, start) = (t.ids.len(), batch.offsets[i]);
            let d = max_abs_diff(
                &ours[start * c..(start + n) * c],
                &want[i * l * c..(i * l + n) * c],
            );
            assert!(d < 1e-4, "layer {layer} text {i}: max |diff| {d:e}");
        }
    }
    let d = max_abs_diff(&out.cls, &r["cls"].f32);
    assert!(d < 1e-4, "[CLS] off by {d:e}");
    let cls_only = enc.forward(&batch, Keep::Cls).unwrap().cls;
    let d = max_abs_diff(&cls_only, &r["cls"].f32);
    assert!(d < 1e-4, "[CLS]-only path off by {d:e}");
    // --pooling mean: HF's last hidden state mean-pooled in Python
    // (tools/reference/mean_pool_reference.py).
    let want = read_tensors(&checkout().join("tests/fixtures/tiny/mean-pooled.safetensors"));
    let mean = enc.forward(&batch, Keep::Mean).unwrap().mean;
    let d = max_abs_diff(&mean, &want["mean"].f32);
    assert!(d < 1e-4, "mean pooling off by {d:e}");
    // --pooling cls+mean-last2: the first layer's [CLS] and mean, pooled mid-forward, are
    // those of HF's first hidden state (the last layer's are checked above).
    let first = enc.forward(&batch, Keep::LastLayers(2)).unwrap().earlier;
    assert_eq!(first.len(), 1);
    let h = &r["hidden_states.1"].f32;
    for (i, t) in texts.iter().enumerate() {
        let n = t.ids.len();
        let mut hf_mean = vec![0f32; c];
        for row in h[i * l * c..(i * l + n) * c].chunks_exact(c) {
            for (m, v) in hf_mean.iter_mut().zip(row) {
                *m += v / n as f32;
            }
        }
        let d = max_abs_diff(
            &first[0][0][i * c..(i + 1) * c],
            &h[i * l * c..(i * l + 1) * c],
        );
        assert!(d < 1e-4, "text {i}: layer 1 [CLS] off by {d:e}");
        let d = max_abs_diff(&first[0][1][i * c..(i + 1) * c], &hf_mean);
        assert!(d < 1e-4, "text {i}: layer 1 mean off by {d:e}");
    }
    // Alone or packed with others, a text's [CLS] is the same up to GEMM summation order
    // (cuBLAS may pick another algorithm for another batch shape).
    for (i, t) in texts.iter().enumerate() {
        let alone = enc.forward(&PackedBatch::new([t]), Keep::Cls).unwrap().cls;
        let d = max_abs_diff(&alone, &cls_only[i * c..(i + 1) * c]);
        assert!(d < 1e-5, "text {i}: alone vs packed differ by {d:e}");
    }
}

/// Five training steps of the GPU head against `LinearHead::forward_backward` +
/// `AdamW::update_head`: losses within 1e-5 relative (f32 log-sum-exp vs the CPU's f64
/// sums), parameters and moments within 1e-6 (fp32 GEMM dW vs f64 accumulation, then the
/// same f32 AdamW arithmetic).
#[test]
fn cuda_head_matches_cpu_head_and_adamw() {
    cuda_head_steps_match_cpu(None);
}

/// As above with class weights (`--class-weights`): PyTorch's weighted mean on both.
#[test]
fn cuda_weighted_head_matches_cpu_head_and_adamw() {
    cuda_head_steps_match_cpu(Some(&[0.5, 2.0, 1.25]));
}

fn cuda_head_steps_match_cpu(class_weights: Option<&[f32]>) {
    let Some(gpu) = cuda_backend(Precision::Fp32) else {
        return;
    };
    let (k, c, b) = (3, 48, 32);
    let mut r = Inputs::new(7);
    let mut head = LinearHead::new_init(k, c, &mut r.0);
    let mut opt = AdamW::for_head(&head);
    opt.lr = 1e-3;
    let mut gpu_head = CudaHead::new(&gpu, &head, &opt, b, class_weights).unwrap();
    let mut scratch = HeadScratch::new(k, c);
    for step in 0..5 {
        let x = r.uniform(b * c, -2.0, 2.0);
        let labels: Vec<usize> = (0..b).map(|_| r.0.random_range(0..k)).collect();
        let logits = gpu_head.logits(&x).unwrap();
        assert!(
            max_abs_diff(&logits, &head.logits(&x)) < 1e-5,
            "step {step}: logits"
        );
        let cpu_loss = head.forward_backward_weighted(&x, &labels, class_weights, &mut scratch);
        let correct = bertcls::head::count_correct(&scratch.logits, &labels, k);
        let grads = scratch.grads.clone();
        opt.update_head(&mut head, &grads);
        let s = gpu_head.train_step(&x, &labels).unwrap();
        assert!(
            ((s.loss - cpu_loss) / cpu_loss).abs() < 1e-5,
            "step {step}: loss {} vs {cpu_loss}",
            s.loss
        );
        assert_eq!(s.correct, correct, "step {step}: correct");
        let (gh, gopt) = gpu_head.download().unwrap();
        assert!(
            max_abs_diff(&gh.weight, &head.weight) < 1e-6,
            "step {step}: weight"
        );
        assert!(
            max_abs_diff(&gh.bias, &head.bias) < 1e-6,
            "step {step}: bias"
        );
        assert!(max_abs_diff(&gopt.m, &opt.m) < 1e-6, "step {step}: exp_avg");
        assert!(
            max_abs_diff(&gopt.v, &opt.v) < 1e-6,
            "step {step}: exp_avg_sq"
        );
        assert_eq!(gopt.step, opt.step);
    }
}

/// kernels/*.cu and common.cuh rewritten for kernels/emulate/shim.h: the CUDA-only
/// declarations (`__shared__` arrays, `extern "C"`) become the shim's per-block shared
/// memory and plain functions. Anything else CUDA-only left over fails the compile, loudly.
fn emulation_source(name: &str, src: &str) -> String {
    let mut out = String::new();
    for line in src.lines() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let rewritten = if let Some(decl) = code.strip_prefix("extern __shared__ ") {
            // `extern __shared__ T name[];`
            let (ty, name) = shared_decl(decl, name);
            format!("{indent}{ty}* {name} = emu::dynamic_shared<{ty}>();")
        } else if let Some(decl) = code.strip_prefix("__shared__ ") {
            // `__shared__ T name[N];`
            let (ty, rest) = shared_decl(decl, name);
            let (var, len) = rest.split_once('[').unwrap();
            let len = len.trim_end_matches(']');
            format!("{indent}{ty}* {var} = emu::static_shared<{ty}>({len});")
        } else if code.starts_with("#include <cuda") {
            // cuda_runtime.h, cuda_fp16.h, cuda_bf16.h: what the kernels use of them is in
            // the shim.
            "#include \"shim.h\"".to_string()
        } else {
            line.replace("extern \"C\" ", "")
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

/// (type, `name[...]`) of a shared declaration's remainder `T name[...];`.
fn shared_decl<'a>(decl: &'a str, file: &str) -> (&'a str, &'a str) {
    let decl = decl.trim_end().trim_end_matches(';');
    let (ty, var) = decl
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("{file}: cannot read the shared declaration \"{decl}\""));
    if !var.ends_with(']') {
        panic!("{file}: shared declaration \"{decl}\" is not an array");
    }
    (ty, var.strip_suffix("[]").unwrap_or(var))
}

/// An edit that makes a broken variant: in `file` (kernels/ or kernels/emulate/), the one
/// occurrence of `from` becomes `to`.
struct Edit {
    file: &'static str,
    from: &'static str,
    to: &'static str,
}

/// Builds the kernel emulation (kernels/emulate/check_kernels.cpp over kernels/*.cu) with
/// `edits` applied, in its own folder `variant`, with extra compiler flags; `None` (and
/// SKIPPED printed) without a C++20 compiler.
fn build_emulation(variant: &str, edits: &[Edit], flags: &[&str]) -> Option<PathBuf> {
    use std::process::Command;
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C++ compiler ({cxx}) to build the kernel emulation");
        return None;
    }
    let kernels = checkout().join("kernels");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("kernel-emulation")
        .join(variant);
    std::fs::create_dir_all(&dir).unwrap();
    let mut sources: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(&kernels).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".cu") || name.ends_with(".cuh") {
            let src = std::fs::read_to_string(&path).unwrap();
            sources.push((name.clone(), emulation_source(&name, &src)));
        }
    }
    for name in ["shim.h", "check_kernels.cpp"] {
        let src = std::fs::read_to_string(kernels.join("emulate").join(name)).unwrap();
        sources.push((name.to_string(), src));
    }
    for edit in edits {
        let (_, src) = sources
            .iter_mut()
            .find(|(name, _)| name == edit.file)
            .unwrap_or_else(|| panic!("no kernel file {}", edit.file));
        assert_eq!(
            src.matches(edit.from).count(),
            1,
            "{}: the broken variant's edit expects \"{}\" exactly once",
            edit.file,
            edit.from
        );
        *src = src.replace(edit.from, edit.to);
    }
    for (name, src) in &sources {
        std::fs::write(dir.join(name), src).unwrap();
    }
    let exe = dir.join("check_kernels");
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-w"])
        .args(flags)
        .arg("-I")
        .arg(&dir)
        .arg(dir.join("check_kernels.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cxx} failed on the {variant} emulation:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Runs an emulation build on the checks named like `filter`: (success, report).
fn run_emulation(exe: &std::path::Path, filter: &str, env: &[(&str, &str)]) -> (bool, String) {
    let run = std::process::Command::new(exe)
        .arg(filter)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    (run.status.success(), report)
}

/// The unmodified emulation, built once per test process (several tests run it).
fn kernel_emulation() -> Option<PathBuf> {
    static EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| build_emulation("kernels", &[], &[]))
        .clone()
}

/// The AdamW kernel against optim::AdamW itself, bit for bit, at step 3, for beta1 = 0.9
/// and 0.3: torch.lerp(m, g, 1 - beta1) takes its other branch (weight >= 0.5) below
/// beta1 = 0.5, which optim.rs has and the kernel must have too.
#[test]
fn adamw_kernel_matches_cpu_optimiser_emulated() {
    let Some(exe) = kernel_emulation() else {
        return;
    };
    for beta1 in [0.9, 0.3] {
        let mut inputs = Inputs::new(11);
        let len = 300;
        let mut opt = AdamW {
            lr: 1e-3,
            beta1,
            ..AdamW::new(len)
        };
        opt.m = inputs.uniform(len, -1e-3, 1e-3);
        opt.v = inputs.uniform(len, 0.0, 1e-5);
        opt.step = 2;
        let before = opt.clone();
        let p0 = inputs.uniform(len, -1.0, 1.0);
        let g = inputs.uniform(len, -0.01, 0.01);
        let mut p = p0.clone();
        opt.update(&mut [&mut p], &[&g]);
        // The scalars exactly as the CUDA head computes them (head.rs adamw step).
        let t = opt.step as f64;
        let o = &before;
        let scalars = [
            (1.0 - o.lr * o.weight_decay) as f32,
            (1.0 - o.beta1) as f32,
            o.beta2 as f32,
            (1.0 - o.beta2) as f32,
            o.eps as f32,
            (o.lr / (1.0 - o.beta1.powf(t))) as f32,
            (1.0 - o.beta2.powf(t)).sqrt() as f32,
        ];
        let mut case = vec![len.to_string()];
        case.extend(scalars.iter().map(|v| v.to_bits().to_string()));
        for i in 0..len {
            for v in [
                p0[i],
                g[i],
                before.m[i],
                before.v[i],
                p[i],
                opt.m[i],
                opt.v[i],
            ] {
                case.push(v.to_bits().to_string());
            }
        }
        let path = exe.with_file_name(format!("adamw-beta1-{beta1}.txt"));
        std::fs::write(&path, case.join("\n")).unwrap();
        let path = path.to_str().unwrap().to_string();
        let (ok, report) = run_emulation(&exe, "", &[("EMU_ADAMW_CASE", &path)]);
        eprintln!("beta1 = {beta1}:\n{report}");
        assert!(
            ok && report.contains("ok   adamw_update vs optim.rs exp_avg "),
            "beta1 = {beta1}:\n{report}"
        );
    }
}

/// The GPU head's weighted loss and gradient (softmax_cross_entropy_backward scaled by
/// `loss_scales`, dW by the cuBLAS model, db by bias_grad_column_sum) against
/// `LinearHead::forward_backward_weighted` itself on random inputs, imbalanced labels
/// with their balanced weights and without weights; tolerances in check_kernels.cpp
/// (check_head_case).
fn head_case_report(exe: &std::path::Path, class_weights: bool) -> (bool, String) {
    let (n, k, c) = (37, 3, 20);
    let mut r = Inputs::new(if class_weights { 13 } else { 17 });
    let head = LinearHead::new_init(k, c, &mut r.0);
    let x = r.uniform(n * c, -2.0, 2.0);
    // Imbalanced: label 0 about 70% of the rows.
    let labels: Vec<usize> = (0..n)
        .map(|_| {
            if r.0.random_range(0..10) < 7 {
                0
            } else {
                r.0.random_range(1..k)
            }
        })
        .collect();
    let weights = class_weights.then(|| bertcls::head::balanced_class_weights(&labels, k).unwrap());
    let mut scratch = HeadScratch::new(k, c);
    let loss = head.forward_backward_weighted(&x, &labels, weights.as_deref(), &mut scratch);
    let scales = bertcls::backend::cuda::loss_scales(&labels, weights.as_deref(), k).unwrap();
    let bits = |v: &[f32]| {
        v.iter()
            .map(|f| f.to_bits().to_string())
            .collect::<Vec<_>>()
    };
    let mut case = vec![format!("{n} {k} {c}")];
    case.extend(bits(&scratch.logits));
    case.extend(labels.iter().map(usize::to_string));
    case.extend(bits(&scales));
    case.extend(bits(&x));
    case.extend(bits(&[loss]));
    case.extend(bits(&scratch.grads.weight));
    case.extend(bits(&scratch.grads.bias));
    let path = exe.with_file_name(format!("head-case-weighted-{class_weights}.txt"));
    std::fs::write(&path, case.join("\n")).unwrap();
    let path = path.to_str().unwrap().to_string();
    run_emulation(exe, "", &[("EMU_HEAD_CASE", &path)])
}

#[test]
fn weighted_head_kernels_match_cpu_head_emulated() {
    let Some(exe) = kernel_emulation() else {
        return;
    };
    for weighted in [true, false] {
        let (ok, report) = head_case_report(&exe, weighted);
        eprintln!("class weights {weighted}:\n{report}");
        assert!(
            ok && report.contains("ok   weighted head dW vs head.rs"),
            "class weights {weighted}:\n{report}"
        );
    }
}

/// A kernel that scales every example by class 0's share (the weighting ignored) must
/// fail both the emulation's own head check and the check against head.rs.
#[test]
fn emulation_catches_a_gradient_that_ignores_the_class_weights() {
    let broken = [Edit {
        file: "head.cu",
        from: "const float s = scale[y];",
        to: "const float s = scale[0];",
    }];
    let Some(exe) = build_emulation("unweighted-head", &broken, &[]) else {
        return;
    };
    let (ok, report) = run_emulation(&exe, "head", &[]);
    assert!(
        !ok && report.contains("FAIL softmax_cross_entropy dlogits"),
        "the unweighted variant passed the emulation's head check:\n{report}"
    );
    let (ok, report) = head_case_report(&exe, true);
    assert!(
        !ok && report.contains("FAIL weighted head dW vs head.rs"),
        "the unweighted variant passed against head.rs:\n{report}"
    );
}

/// The kernels' logic on the CPU (kernels/emulate): every kernel, with the backend's launch
/// geometry, against f64 references, so that CI without a GPU checks indexing, reductions,
/// masking, padding and synchronisation, and not only that nvcc compiles them. Needs g++
/// (C++20).
#[test]
fn cuda_kernels_emulated_on_the_cpu() {
    let Some(exe) = kernel_emulation() else {
        return;
    };
    let (ok, report) = run_emulation(&exe, "", &[]);
    eprintln!("{report}");
    assert!(ok, "kernel emulation found failures:\n{report}");
}

/// A broken variant must fail the emulation with `expect` in its report.
fn assert_emulation_catches(variant: &str, edits: &[Edit], filter: &str, expect: &str) {
    let Some(exe) = build_emulation(variant, edits, &[]) else {
        return;
    };
    let (ok, report) = run_emulation(&exe, filter, &[("EMU_WATCHDOG_S", "2")]);
    assert!(
        !ok && report.contains(expect),
        "the {variant} variant was not caught (expected \"{expect}\"):\n{report}"
    );
}

/// The barrier after the second read of the reduction scratch: without it a warp that
/// runs ahead overwrites a partial sum (the variance's over the mean's) that another warp
/// has not read yet.
#[test]
fn emulation_catches_a_missing_trailing_barrier() {
    assert_emulation_catches(
        "no-trailing-barrier",
        &[Edit {
            file: "common.cuh",
            from: "    v = warp_reduce_sum(v);\n    __syncthreads();\n    return v;",
            to: "    v = warp_reduce_sum(v);\n    return v;",
        }],
        "layernorm",
        "FAIL bias_residual_layernorm rows=4 C=770",
    );
}

/// Reading every lane's scratch slot, also those no warp wrote: shared memory starts NaN.
#[test]
fn emulation_catches_a_read_of_unwritten_shared_memory() {
    assert_emulation_catches(
        "unwritten-shared",
        &[Edit {
            file: "common.cuh",
            from: "v = lane < num_warps ? scratch[lane] : 0.0f;",
            to: "v = scratch[lane];",
        }],
        "layernorm",
        "FAIL bias_residual_layernorm",
    );
}

/// One element written into the next token's output row: caught once that block can run
/// before this one.
#[test]
fn emulation_catches_a_write_into_the_next_blocks_row() {
    assert_emulation_catches(
        "next-row-write",
        &[Edit {
            file: "embeddings.cu",
            from: "    __syncthreads();\n    layernorm_row_from_shared",
            to: "    if (threadIdx.x == 0 && t + 1 < T_) out[(size_t)(t + 1) * C] = store<T>(0.0f);\n    __syncthreads();\n    layernorm_row_from_shared",
        }],
        "embeddings",
        "FAIL embeddings_layernorm",
    );
}

/// A __syncthreads only the first warp executes.
#[test]
fn emulation_catches_a_barrier_not_every_thread_reaches() {
    assert_emulation_catches(
        "partial-barrier",
        &[Edit {
            file: "embeddings.cu",
            from: "    __syncthreads();\n    layernorm_row_from_shared",
            to: "    if (threadIdx.x < 32) __syncthreads();\n    layernorm_row_from_shared",
        }],
        "embeddings",
        "EMULATION ERROR in kernel embeddings_layernorm_forward",
    );
}

/// Half the lanes of a warp skip a full-mask shuffle reduction.
#[test]
fn emulation_catches_a_divergent_shuffle() {
    assert_emulation_catches(
        "divergent-shuffle",
        &[Edit {
            file: "attention.cu",
            from: "    m = warp_reduce_max(m);",
            to: "    if (lane < 16) m = warp_reduce_max(m);",
        }],
        "attention",
        "EMULATION ERROR in kernel attention_softmax_scale_mask",
    );
}

/// A grid-stride loop that never advances: the watchdog stops it, naming the kernel.
#[test]
fn emulation_watchdog_stops_a_kernel_that_never_finishes() {
    assert_emulation_catches(
        "endless-loop",
        &[Edit {
            file: "activation.cu",
            from: "GRID_STRIDE_LOOP(i, rows * F)",
            to: "for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(rows * F); i += 0)",
        }],
        "activation",
        "EMULATION ERROR in kernel gelu_erf: watchdog",
    );
}

/// One element per thread where the kernel must stride: caught by the capped grids.
#[test]
fn emulation_catches_a_grid_stride_loop_that_runs_once() {
    assert_emulation_catches(
        "no-grid-stride",
        &[Edit {
            file: "activation.cu",
            from: "GRID_STRIDE_LOOP(i, rows * F)",
            to: "const unsigned i = blockIdx.x * blockDim.x + threadIdx.x; if (i < (unsigned)(rows * F))",
        }],
        "activation",
        "FAIL gelu_erf",
    );
}

/// Row launches whose block is not rounded up to whole warps: refused with a message
/// (the kernels' full-mask shuffles need all 32 lanes).
#[test]
fn emulation_refuses_partial_warps() {
    assert_emulation_catches(
        "partial-warp",
        &[Edit {
            file: "check_kernels.cpp",
            from: "(w + 31) / 32 * 32",
            to: "w",
        }],
        "embeddings",
        "a block of 48 threads is not a whole number of warps",
    );
}

/// The emulation with every GPU thread an OS thread under ThreadSanitizer
/// (-DEMU_OS_THREADS -fsanitize=thread): the kernels are race-free, and the race of a
/// missing trailing barrier is reported. Minutes on 2 cores, so by hand (docs/CUDA.md):
/// `cargo test --release --test backend_ops -- --ignored thread_sanitizer`.
#[test]
#[ignore = "minutes: run by hand, see docs/CUDA.md"]
fn emulation_under_thread_sanitizer() {
    let flags = ["-DEMU_OS_THREADS", "-fsanitize=thread", "-g"];
    let Some(exe) = build_emulation("tsan", &[], &flags) else {
        return;
    };
    let (ok, report) = run_emulation(&exe, "", &[]);
    assert!(
        ok && !report.contains("ThreadSanitizer"),
        "ThreadSanitizer on the kernels:\n{report}"
    );
    let broken = [Edit {
        file: "common.cuh",
        from: "    v = warp_reduce_sum(v);\n    __syncthreads();\n    return v;",
        to: "    v = warp_reduce_sum(v);\n    return v;",
    }];
    let Some(exe) = build_emulation("tsan-no-trailing-barrier", &broken, &flags) else {
        return;
    };
    let (_, report) = run_emulation(&exe, "layernorm", &[]);
    assert!(
        report.contains("WARNING: ThreadSanitizer: data race"),
        "ThreadSanitizer missed the trailing-barrier race:\n{report}"
    );
}
