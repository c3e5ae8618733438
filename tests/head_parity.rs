//! The linear head, its backward and AdamW against PyTorch (`torch.nn.Linear`,
//! `F.cross_entropy`, `torch.optim.AdamW(foreach=False)`), and the recipe's `.pth`
//! checkpoint import. Fixtures: tools/reference/make_fixtures.py --head --pth.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bertcls::checkpoint::{load_head, save_head};
use bertcls::head::{softmax, HeadScratch, LinearHead};
use bertcls::optim::AdamW;
use common::*;
use safetensors::SafeTensors;

/// The head fixture, wherever this checkout's fixture script put it.
fn head_fixture() -> Option<PathBuf> {
    ["head.safetensors", "tiny/head.safetensors"]
        .iter()
        .map(|p| fixtures().join(p))
        .find(|p| p.is_file())
}

/// Largest |a - b| relative to the largest |b|: gradient entries near zero carry
/// PyTorch's f32 rounding of much larger partial sums, so an element-wise relative
/// error would measure that rounding, not our backward.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    max_abs_diff(a, b) / b.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

struct Fixture {
    t: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
    head: LinearHead,
    labels: Vec<usize>,
}

fn load_fixture() -> Option<Fixture> {
    let path = head_fixture();
    if skip_unless(
        path.is_some(),
        "tests/fixtures/head.safetensors is absent (make_fixtures.py --head)",
    ) {
        return None;
    }
    let path = path.unwrap();
    let t = read_tensors(&path);
    let bytes = std::fs::read(&path).unwrap();
    let meta = SafeTensors::read_metadata(&bytes)
        .unwrap()
        .1
        .metadata()
        .clone()
        .unwrap_or_default();
    let (l, c) = (t["weight"].shape[0], t["weight"].shape[1]);
    let head = LinearHead {
        weight: t["weight"].f32.clone(),
        bias: t["bias"].f32.clone(),
        num_labels: l,
        hidden: c,
    };
    let labels = t["labels"].i64.iter().map(|&y| y as usize).collect();
    Some(Fixture {
        t,
        meta,
        head,
        labels,
    })
}

/// AdamW with the fixture's hyper-parameters, read from its metadata.
fn fixture_adamw(f: &Fixture) -> AdamW {
    let hp = |k: &str| f.meta[k].parse::<f64>().unwrap();
    AdamW {
        lr: hp("lr"),
        beta1: hp("beta1"),
        beta2: hp("beta2"),
        eps: hp("eps"),
        weight_decay: hp("weight_decay"),
        ..AdamW::for_head(&f.head)
    }
}

#[test]
fn logits_probs_loss_and_gradients_match_pytorch() {
    let Some(f) = load_fixture() else { return };
    let x = &f.t["x"].f32;
    let (loss, grads, logits) = f.head.loss_and_grad(x, &f.labels);
    // Values of order 1 that PyTorch computes with f32 sums of 32 products (error
    // ~1e-7) and we in f64: 1e-5 absolute, the bound, is 100x that.
    let d = max_abs_diff(&logits, &f.t["logits"].f32);
    assert!(d < 1e-5, "logits: max |diff| {d:e}");
    let d = max_abs_diff(&softmax(&logits, f.head.num_labels), &f.t["probs"].f32);
    assert!(d < 1e-5, "probs: max |diff| {d:e}");
    let d = (loss - f.t["loss"].f32[0]).abs();
    assert!(d < 1e-5, "loss: |diff| {d:e}");
    // The bound for gradients: 1e-5 relative (to the tensor's largest entry).
    let r = max_rel_diff(&grads.weight, &f.t["grad.weight"].f32);
    assert!(r < 1e-5, "grad.weight: max relative diff {r:e}");
    let r = max_rel_diff(&grads.bias, &f.t["grad.bias"].f32);
    assert!(r < 1e-5, "grad.bias: max relative diff {r:e}");
}

/// Parameters of order 0.1-1 after each step; PyTorch and we both update in f32 with
/// the same operation order, and the gradients differ by ~1e-7 relative, so 1e-6
/// absolute (the bound for AdamW trajectories) is a few f32 ulps.
const ADAMW_TOL: f32 = 1e-6;

fn check_step(f: &Fixture, head: &LinearHead, k: usize) {
    let d = max_abs_diff(&head.weight, &f.t[&format!("adamw.{k}.weight")].f32);
    assert!(d < ADAMW_TOL, "weight after step {k}: max |diff| {d:e}");
    let d = max_abs_diff(&head.bias, &f.t[&format!("adamw.{k}.bias")].f32);
    assert!(d < ADAMW_TOL, "bias after step {k}: max |diff| {d:e}");
}

#[test]
fn adamw_trajectory_matches_pytorch() {
    let Some(f) = load_fixture() else { return };
    let x = &f.t["x"].f32;
    let mut head = f.head.clone();
    let mut opt = fixture_adamw(&f);
    let mut s = HeadScratch::new(head.num_labels, head.hidden);
    let steps: usize = f.meta["steps"].parse().unwrap();
    for k in 1..=steps {
        let loss = head.forward_backward(x, &f.labels, &mut s);
        let d = (loss - f.t[&format!("adamw.{k}.loss")].f32[0]).abs();
        assert!(d < 1e-5, "loss before step {k}: |diff| {d:e}");
        opt.update_head(&mut head, &s.grads);
        check_step(&f, &head, k);
    }
    let l = head.num_labels * head.hidden;
    // exp_avg is of the gradients' order (~0.1): same 1e-6 absolute bound.
    // exp_avg_sq is their square (~1e-3 and far below): 1e-5 relative to its largest.
    for (ours, name) in [
        (&opt.m[..l], "exp_avg.weight"),
        (&opt.m[l..], "exp_avg.bias"),
    ] {
        let d = max_abs_diff(ours, &f.t[&format!("adamw.{steps}.{name}")].f32);
        assert!(d < ADAMW_TOL, "{name} after step {steps}: max |diff| {d:e}");
    }
    for (ours, name) in [
        (&opt.v[..l], "exp_avg_sq.weight"),
        (&opt.v[l..], "exp_avg_sq.bias"),
    ] {
        let r = max_rel_diff(ours, &f.t[&format!("adamw.{steps}.{name}")].f32);
        assert!(
            r < 1e-5,
            "{name} after step {steps}: max relative diff {r:e}"
        );
    }
}

#[test]
fn resuming_from_a_checkpoint_stays_on_pytorchs_trajectory() {
    let Some(f) = load_fixture() else { return };
    let x = &f.t["x"].f32;
    let mut head = f.head.clone();
    let mut opt = fixture_adamw(&f);
    let mut s = HeadScratch::new(head.num_labels, head.hidden);
    for _ in 0..2 {
        head.forward_backward(x, &f.labels, &mut s);
        opt.update_head(&mut head, &s.grads);
    }
    let dir = TempDir::new("head-parity");
    let path = dir.join("head-epoch-2.safetensors");
    save_head(&path, &head, Some(&opt), &BTreeMap::new()).unwrap();
    let loaded = load_head(&path, Some(head.hidden)).unwrap();

    let (mut head, mut opt) = (loaded.head, loaded.optim.expect("optimiser state saved"));
    let steps: usize = f.meta["steps"].parse().unwrap();
    for k in 3..=steps {
        head.forward_backward(x, &f.labels, &mut s);
        opt.update_head(&mut head, &s.grads);
        check_step(&f, &head, k);
    }
}

#[test]
fn recipe_pth_loads_to_the_same_tensors() {
    let (pth, reference) = (
        fixtures().join("recipe-head.pth"),
        fixtures().join("recipe-head.safetensors"),
    );
    if skip_unless(
        pth.is_file() && reference.is_file(),
        "tests/fixtures/recipe-head.pth is absent (make_fixtures.py --pth)",
    ) {
        return;
    }
    let r = read_tensors(&reference);
    let hidden = r["fc.weight"].shape[1];
    let loaded = load_head(&pth, Some(hidden)).unwrap();
    // Exact: both files hold the same f32 bits, and loading only copies them.
    assert_eq!(loaded.head.weight, r["fc.weight"].f32);
    assert_eq!(loaded.head.bias, r["fc.bias"].f32);
    assert_eq!(
        (loaded.head.num_labels, loaded.head.hidden),
        (r["fc.bias"].shape[0], hidden)
    );
    assert!(loaded.optim.is_none());

    let from_safetensors = load_head(&reference, Some(hidden)).unwrap();
    assert_eq!(
        (from_safetensors.head.weight, from_safetensors.head.bias),
        (loaded.head.weight, loaded.head.bias)
    );

    let wrong = load_head(&pth, Some(768))
        .err()
        .expect("hidden 768 must be refused");
    let msg = format!("{wrong:#}");
    assert!(
        msg.contains("recipe-head.pth") && msg.contains("expected [2, 768]"),
        "{msg}"
    );
}
