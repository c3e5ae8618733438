//! Where a head's training steps run: the CPU (the reference, and the faster place for
//! a linear head, measured) or the encoder's GPU.

use anyhow::{bail, Result};

use super::averaging::IterateAverage;
use crate::backend::cuda::{CudaBackend, CudaHead, Precision};
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
    /// The average of the iterates, when asked for: added to after every step.
    average: Option<IterateAverage>,
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
                    average: None,
                })))
            }
            HeadDevice::Cuda(ordinal) => {
                let backend = CudaBackend::new(ordinal, Precision::Fp32, batch)?;
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
                    average,
                } = cpu.as_mut();
                let loss =
                    head.forward_backward_weighted(x, labels, class_weights.as_deref(), scratch);
                let correct = count_correct(&scratch.logits, labels, head.num_labels);
                opt.update_head(head, &scratch.grads);
                if let Some(average) = average {
                    average.add(head);
                }
                Ok((loss, correct))
            }
            Self::Cuda(gpu) => gpu.train_step(x, labels).map(|s| (s.loss, s.correct)),
        }
    }

    /// Averages the iterates from the next step on, into `average` (CPU only: the GPU
    /// head's parameters stay on the device between steps).
    pub fn average_iterates(&mut self, average: IterateAverage) -> Result<()> {
        match self {
            Self::Cpu(cpu) => {
                cpu.average = Some(average);
                Ok(())
            }
            Self::Cuda(_) => {
                bail!("iterate averaging runs on the CPU head only: train the head on the CPU")
            }
        }
    }

    /// The average of the iterates since `average_iterates`, or None when not asked for
    /// or before the first step.
    pub fn averaged(&self) -> Option<LinearHead> {
        match self {
            Self::Cpu(cpu) => cpu.average.as_ref()?.head(&cpu.head),
            Self::Cuda(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::averaging::Averaging;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Three steps of an epoch of three: the average is the mean of the three iterates,
    /// bit for bit (the same f64 sum in the same order, then one division), and the
    /// iterates themselves are those of a trainer that averages nothing, bit for bit.
    #[test]
    fn the_average_is_the_mean_of_the_iterates_and_leaves_them_alone() {
        let head = LinearHead::new_init(2, 3, &mut StdRng::seed_from_u64(5));
        let mut opt = AdamW::for_head(&head);
        opt.lr = 0.1;
        let trainer =
            || HeadTrainer::new(HeadDevice::Cpu, head.clone(), opt.clone(), 2, None).unwrap();
        let (mut averaged, mut plain) = (trainer(), trainer());
        averaged
            .average_iterates(IterateAverage::new(Averaging::EpochMean, 3, 8))
            .unwrap();
        assert_eq!(averaged.averaged(), None, "no step, no average");
        let mut sum = [0.0f64; 8];
        for step in 0..3 {
            let x: Vec<f32> = (0..6).map(|i| ((i + step) % 4) as f32 - 1.5).collect();
            averaged.step(&x, &[0, 1]).unwrap();
            plain.step(&x, &[0, 1]).unwrap();
            let (a, p) = (averaged.state().unwrap().0, plain.state().unwrap().0);
            assert_eq!(a, p);
            for (s, &v) in sum.iter_mut().zip(a.weight.iter().chain(&a.bias)) {
                *s += v as f64;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / 3.0) as f32).collect();
        let avg = averaged.averaged().unwrap();
        assert_ne!(
            avg,
            plain.state().unwrap().0,
            "lr 0.1 moves the head every step"
        );
        assert_eq!([avg.weight, avg.bias].concat(), mean);
        assert_eq!(plain.averaged(), None);
    }
}
