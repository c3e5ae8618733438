//! A Linear weight W (N, K) rearranged once, at load, into the order the microkernel
//! reads it, so that no forward pass copies a weight.
//!
//! Layout: W^T cut into panels of `nr` output features (columns of the product). Panel p
//! holds, for k = 0..K, the `nr` floats W[p*nr .. p*nr+nr][k] one after the other; the
//! last panel is zero-padded past N. The microkernel then reads one panel row (`nr`
//! consecutive floats, one or two SIMD registers) per k, and a K-block of a panel is one
//! contiguous run of memory.

use anyhow::Result;
use rayon::prelude::*;

use super::simd::{level, Level};
use crate::model::weights::cannot_allocate_weights;

pub struct PackedWeight {
    /// Output features N.
    pub n: usize,
    /// Input features K.
    pub k: usize,
    /// Panel width: the microkernel's NR, chosen from the CPU's SIMD level.
    pub nr: usize,
    /// (ceil(N / nr), K, nr)
    pub data: Vec<f32>,
}

impl PackedWeight {
    /// Packs W (n, k), row-major as `nn.Linear` stores it, for the microkernel this CPU runs.
    pub fn new(w: &[f32], n: usize, k: usize) -> Result<Self> {
        Self::with_panel_width(w, n, k, panel_width(level()))
    }

    pub fn with_panel_width(w: &[f32], n: usize, k: usize, nr: usize) -> Result<Self> {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} floats is not ({n}, {k})",
            w.len()
        );
        let panels = n.div_ceil(nr);
        // Zeroed by the allocator, not by a pass here: the packing below is what first
        // touches the pages, on every thread, and a panel's padding columns stay 0.
        let len = panels * k * nr;
        let mut data = super::zeroed_vec(len).ok_or_else(|| cannot_allocate_weights(len))?;
        // Panels in parallel on the caller's pool: packing is about a fifth of a model's
        // load time (docs/BENCHMARKS.md).
        data.par_chunks_exact_mut(k * nr)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..nr.min(n - p * nr) {
                    let row = &w[(p * nr + j) * k..(p * nr + j + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * nr + j] = v;
                    }
                }
            });
        Ok(Self { n, k, nr, data })
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }

    /// Rows kk0..kk0+kc of panel p: kc * nr floats.
    pub fn block(&self, p: usize, kk0: usize, kc: usize) -> &[f32] {
        let start = (p * self.k + kk0) * self.nr;
        &self.data[start..start + kc * self.nr]
    }
}

/// The microkernel's panel width at each SIMD level (see `microkernel`).
pub fn panel_width(level: Level) -> usize {
    match level {
        Level::Avx512 => 32,
        Level::Avx2 | Level::Baseline => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_hold_w_transposed_and_zero_padded() {
        let (n, k, nr) = (5, 3, 4);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32 + 1.0).collect();
        let p = PackedWeight::with_panel_width(&w, n, k, nr).unwrap();
        assert_eq!(p.panels(), 2);
        for col in 0..8 {
            for kk in 0..k {
                let got = p.data[(col / nr * k + kk) * nr + col % nr];
                let want = if col < n { w[col * k + kk] } else { 0.0 };
                assert_eq!(got, want, "column {col}, k {kk}");
            }
        }
        assert_eq!(p.block(1, 1, 2), &p.data[(k + 1) * nr..(k + 3) * nr]);
    }
}
