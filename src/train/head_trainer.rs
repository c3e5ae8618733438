//! Where a head's training steps run: the CPU (the reference, and the faster place for
//! a linear head, measured) or the encoder's GPU.

use anyhow::Result;

use crate::backend::cuda::{CudaBackend, CudaHead};
use crate::head::{count_correct, HeadScratch, LinearHead};
use crate::optim::AdamW;

/// The device a head trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadDevice {
    Cpu,
    /// The GPU of this ordinal.
    Cuda(usize),
}

/// The head and its optimiser where the steps run.
pub enum HeadTrainer {
    Cpu(Box<CpuHead>),
    Cuda(Box<CudaHead>),
}

pub struct CpuHead {
    head: LinearHead,
    opt: AdamW,
    scratch: HeadScratch,
    /// (L,) per-class loss weights, or None for the plain mean.
    class_weights: Option<Vec<f32>>,
}

impl HeadTrainer {
    /// `head` and `opt` moved to `device`, for steps of `batch` rows.
    pub fn new(
        device: HeadDevice,
        head: LinearHead,
        opt: AdamW,
        batch: usize,
        class_weights: Option<Vec<f32>>,
    ) -> Result<Self> {
        match device {
            HeadDevice::Cpu => {
                let scratch = HeadScratch::new(head.num_labels, head.hidden);
                Ok(Self::Cpu(Box::new(CpuHead {
                    head,
                    opt,
                    scratch,
                    class_weights,
                })))
            }
            HeadDevice::Cuda(ordinal) => {
                let backend = CudaBackend::for_head(ordinal, batch)?;
                Ok(Self::Cuda(Box::new(CudaHead::new(
                    &backend,
                    &head,
                    &opt,
                    batch,
                    class_weights.as_deref(),
                )?)))
            }
        }
    }

    /// One step on a batch: its loss and correct predictions before the update.
    pub fn step(&mut self, x: &[f32], labels: &[usize]) -> Result<(f32, usize)> {
        match self {
            Self::Cpu(cpu) => {
                let CpuHead {
                    head,
                    opt,
                    scratch,
                    class_weights,
                } = cpu.as_mut();
                let loss =
                    head.forward_backward_weighted(x, labels, class_weights.as_deref(), scratch);
                let correct = count_correct(&scratch.logits, labels, head.num_labels);
                opt.update_head(head, &scratch.grads);
                Ok((loss, correct))
            }
            Self::Cuda(gpu) => gpu.train_step(x, labels).map(|s| (s.loss, s.correct)),
        }
    }

    /// The head and optimiser as they are now, on the host.
    pub fn state(&self) -> Result<(LinearHead, AdamW)> {
        match self {
            Self::Cpu(cpu) => Ok((cpu.head.clone(), cpu.opt.clone())),
            Self::Cuda(gpu) => gpu.download(),
        }
    }
}
