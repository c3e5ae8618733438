//! The classification head on the GPU, for training where the features are computed on
//! the fly (`--no-cache`): logits, softmax cross-entropy and its gradient, dW and db,
//! and AdamW, matching `head::LinearHead` + `optim::AdamW` on the CPU.

use std::sync::Arc;

use anyhow::{bail, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, CudaStream};

use super::blas::{gemm, new_blas, Gemm};
use super::context::{launch, Arg, Grid, Kernels};
use super::ops::{alloc_f32, alloc_u32, dptr};
use super::{CudaBackend, Precision};
use crate::head::LinearHead;
use crate::optim::AdamW;

/// What one training step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadStep {
    /// Mean cross-entropy over the batch (weighted by class when the head has class
    /// weights, as `LinearHead::forward_backward_weighted`), before the update.
    pub loss: f32,
    /// Examples whose arg-max logit was the label, before the update.
    pub correct: usize,
}

/// `LinearHead` weights and `AdamW` state resident on the GPU.
pub struct CudaHead {
    stream: Arc<CudaStream>,
    /// Its own handle in strict fp32, whatever the encoder's precision: the head is tiny
    /// and its gradients are checked against the CPU's.
    blas: CudaBlas,
    kernels: Arc<Kernels>,
    num_labels: usize,
    hidden: usize,
    max_batch: usize,
    opt: AdamW,
    /// (K,) per-class loss weights, or None for the plain mean.
    class_weights: Option<Vec<f32>>,
    weight: CudaSlice<f32>,  // (K, C)
    bias: CudaSlice<f32>,    // (K,)
    m: [CudaSlice<f32>; 2],  // AdamW exp_avg of weight, bias
    v: [CudaSlice<f32>; 2],  // AdamW exp_avg_sq of weight, bias
    dweight: CudaSlice<f32>, // (K, C)
    dbias: CudaSlice<f32>,   // (K,)
    x: CudaSlice<f32>,       // (B, C) features of the step
    labels: CudaSlice<u32>,  // (B,)
    scale: CudaSlice<f32>,   // (K,) each class's share of the batch loss
    logits: CudaSlice<f32>,  // (B, K)
    dlogits: CudaSlice<f32>, // (B, K)
    loss: CudaSlice<f32>,    // (B,)
    correct: CudaSlice<f32>, // (B,)
}

impl CudaHead {
    /// Uploads `head` and the optimiser state `opt` (weight then bias, as `AdamW` lays it
    /// out) to the backend's GPU, for batches of up to `max_batch` examples; with
    /// `class_weights` (K,) the loss is their weighted mean, as on the CPU head.
    pub fn new(
        backend: &CudaBackend,
        head: &LinearHead,
        opt: &AdamW,
        max_batch: usize,
        class_weights: Option<&[f32]>,
    ) -> Result<Self> {
        let (k, c) = (head.num_labels, head.hidden);
        if let Some(w) = class_weights {
            if w.len() != k {
                bail!("{} class weights for a head of {k} labels", w.len());
            }
        }
        let np = k * c + k;
        if opt.m.len() != np || opt.v.len() != np {
            bail!(
                "AdamW state holds {} values, the head has {np} parameters",
                opt.m.len()
            );
        }
        let stream = backend.stream().clone();
        let knob = backend.memory_knob();
        let up = |host: &[f32]| -> Result<CudaSlice<f32>> {
            let mut t = alloc_f32(&stream, host.len(), knob)?;
            stream.memcpy_htod(host, &mut t.slice_mut(..host.len()))?;
            Ok(t)
        };
        let zeros = |len: usize| alloc_f32(&stream, len, knob);
        let kc = k * c;
        Ok(Self {
            blas: new_blas(&stream, Precision::Fp32)?,
            kernels: backend.kernels().clone(),
            num_labels: k,
            hidden: c,
            max_batch,
            class_weights: class_weights.map(<[f32]>::to_vec),
            weight: up(&head.weight)?,
            bias: up(&head.bias)?,
            m: [up(&opt.m[..kc])?, up(&opt.m[kc..])?],
            v: [up(&opt.v[..kc])?, up(&opt.v[kc..])?],
            dweight: zeros(kc)?,
            dbias: zeros(k)?,
            x: zeros(max_batch * c)?,
            labels: alloc_u32(&stream, max_batch, knob)?,
            scale: zeros(k)?,
            logits: zeros(max_batch * k)?,
            dlogits: zeros(max_batch * k)?,
            loss: zeros(max_batch)?,
            correct: zeros(max_batch)?,
            opt: AdamW {
                m: Vec::new(),
                v: Vec::new(),
                ..opt.clone()
            },
            stream,
        })
    }

    fn p<T>(&self, t: &CudaSlice<T>) -> Arg {
        Arg::Ptr(dptr(t, &self.stream))
    }

    /// logits (B, K) = x (B, C) . W^T + b, left in `self.logits`.
    fn forward(&mut self, x: &[f32]) -> Result<usize> {
        let (k, c) = (self.num_labels, self.hidden);
        if !x.len().is_multiple_of(c) {
            bail!("features of {} floats are not rows of {c}", x.len());
        }
        let b = x.len() / c;
        if b > self.max_batch {
            bail!(
                "a head batch of {b} exceeds the {} it was made for",
                self.max_batch
            );
        }
        if b > 0 {
            self.stream
                .memcpy_htod(x, &mut self.x.slice_mut(..x.len()))?;
            launch(
                &self.stream,
                &self.kernels.broadcast_bias_rows.f32,
                Grid::elementwise(b * k)?,
                &[
                    self.p(&self.logits),
                    self.p(&self.bias),
                    Arg::I32(b as i32),
                    Arg::I32(k as i32),
                ],
            )?;
            let s = &self.stream;
            gemm(
                &self.blas,
                &Gemm::new(false, true, b, k, c).beta(1.0),
                dptr(&self.x, s),
                dptr(&self.weight, s),
                dptr(&self.logits, s),
            )?;
        }
        Ok(b)
    }

    /// (B, K) logits of the features `x` (B, C).
    pub fn logits(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let b = self.forward(x)?;
        if b == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .stream
            .clone_dtoh(&self.logits.slice(..b * self.num_labels))?)
    }

    /// One step: loss and gradients on (x, labels), then AdamW on weight and bias.
    pub fn train_step(&mut self, x: &[f32], labels: &[usize]) -> Result<HeadStep> {
        let (k, c) = (self.num_labels, self.hidden);
        let b = self.forward(x)?;
        if b == 0 || b != labels.len() {
            bail!(
                "a head step needs one label per example: {b} examples, {} labels",
                labels.len()
            );
        }
        if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
            bail!("label {bad} is outside 0..{k}");
        }
        let labels_u32: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        self.stream
            .memcpy_htod(&labels_u32, &mut self.labels.slice_mut(..b))?;
        let scale = loss_scales(labels, self.class_weights.as_deref(), k)?;
        self.stream.memcpy_htod(&scale, &mut self.scale)?;
        launch(
            &self.stream,
            &self.kernels.softmax_cross_entropy_backward,
            Grid::warp_per_row(b)?,
            &[
                self.p(&self.loss),
                self.p(&self.dlogits),
                self.p(&self.correct),
                self.p(&self.logits),
                self.p(&self.labels),
                self.p(&self.scale),
                Arg::I32(b as i32),
                Arg::I32(k as i32),
            ],
        )?;
        // dW (K, C) = dlogits^T (K, B) . x (B, C)
        let s = &self.stream;
        gemm(
            &self.blas,
            &Gemm::new(true, false, k, c, b),
            dptr(&self.dlogits, s),
            dptr(&self.x, s),
            dptr(&self.dweight, s),
        )?;
        launch(
            s,
            &self.kernels.bias_grad_column_sum,
            Grid {
                blocks: k as u32,
                threads: 256,
                shared_bytes: 0,
            },
            &[
                self.p(&self.dbias),
                self.p(&self.dlogits),
                Arg::I32(b as i32),
                Arg::I32(k as i32),
            ],
        )?;
        self.adamw()?;
        let loss = self.stream.clone_dtoh(&self.loss.slice(..b))?;
        let correct = self.stream.clone_dtoh(&self.correct.slice(..b))?;
        // Each example's loss already carries its share: the (weighted) mean is their sum,
        // in f64 as the CPU head sums.
        let mean = loss.iter().map(|&l| l as f64).sum::<f64>();
        Ok(HeadStep {
            loss: mean as f32,
            correct: correct.iter().filter(|&&v| v > 0.5).count(),
        })
    }

    /// AdamW on weight and bias; the scalars in f64 exactly as `optim::AdamW::update`.
    fn adamw(&mut self) -> Result<()> {
        let o = &mut self.opt;
        o.step += 1;
        let t = o.step as f64;
        let scalars = [
            Arg::F32((1.0 - o.lr * o.weight_decay) as f32),
            Arg::F32((1.0 - o.beta1) as f32),
            Arg::F32(o.beta2 as f32),
            Arg::F32((1.0 - o.beta2) as f32),
            Arg::F32(o.eps as f32),
            Arg::F32((o.lr / (1.0 - o.beta1.powf(t))) as f32),
            Arg::F32((1.0 - o.beta2.powf(t)).sqrt() as f32),
        ];
        for (i, (param, grad)) in [(&self.weight, &self.dweight), (&self.bias, &self.dbias)]
            .into_iter()
            .enumerate()
        {
            let len = param.len();
            let mut args = vec![
                self.p(param),
                self.p(grad),
                self.p(&self.m[i]),
                self.p(&self.v[i]),
                Arg::I32(len as i32),
            ];
            args.extend_from_slice(&scalars);
            launch(
                &self.stream,
                &self.kernels.adamw_update,
                Grid::elementwise(len)?,
                &args,
            )?;
        }
        Ok(())
    }

    /// The head and optimiser state as they are now on the GPU.
    pub fn download(&self) -> Result<(LinearHead, AdamW)> {
        let s = &self.stream;
        let head = LinearHead {
            weight: s.clone_dtoh(&self.weight)?,
            bias: s.clone_dtoh(&self.bias)?,
            num_labels: self.num_labels,
            hidden: self.hidden,
        };
        let mut opt = self.opt.clone();
        opt.m = [s.clone_dtoh(&self.m[0])?, s.clone_dtoh(&self.m[1])?].concat();
        opt.v = [s.clone_dtoh(&self.v[0])?, s.clone_dtoh(&self.v[1])?].concat();
        Ok((head, opt))
    }
}

/// (K,) each class's share of the batch loss, what `softmax_cross_entropy_backward`
/// scales an example's loss and dlogits by: 1 / B for the plain mean, w[c] / sum_i w[y_i]
/// for the weighted mean of `LinearHead::forward_backward_weighted`; in f64, rounded once.
pub fn loss_scales(labels: &[usize], class_weights: Option<&[f32]>, k: usize) -> Result<Vec<f32>> {
    let weight_of = |c: usize| class_weights.map_or(1.0, |w| w[c] as f64);
    let total: f64 = labels.iter().map(|&y| weight_of(y)).sum();
    if total <= 0.0 {
        bail!("the batch's class weights sum to {total}: no loss to average");
    }
    Ok((0..k).map(|c| (weight_of(c) / total) as f32).collect())
}
