//! out (rows, N) = x (rows, K) . W^T (+ b): the dense layers, 90%+ of the encoder's FLOPs.
//!
//! Our own GEMM rather than the `gemm` crate: the crate (0.19) takes only strided
//! operands and packs W on every call (for BERT-base at batch 1 that is 340 MB of weight
//! copies per forward); it has no entry point for an operand packed in advance. Here W is
//! packed once at load (`packed`), the input is packed per call into k-major blocks that
//! stay in L1/L2, and `microkernel` does the arithmetic. docs/BENCHMARKS.md has the
//! measurements behind this choice.
//!
//! Blocking: row chunks of MC, and within each chunk K-blocks of KC, so that the packed
//! (MC, KC) input chunk (288 KiB), one (KC, NR) weight block (96 KiB at NR = 32) and the
//! chunk's (MC, N) output at N = 768 all stay in L2 (1 MiB a core on the EPYC of
//! docs/BENCHMARKS.md) while every panel of the task's columns passes by. KC = 768 is the
//! whole K of every BERT-base GEMM but the second feed-forward one, so the output tile is
//! written once instead of re-read and re-written per K-block: against KC = 256 with the
//! K-blocks outermost (which re-read a 25 MB output from memory at 32x128), the 32x128
//! forward ran 1.16x as fast, forward by forward in one process.

use std::cell::RefCell;

use anyhow::Result;

use super::microkernel::{self as mk, Init};
use super::packed::PackedWeight;
use super::simd::{level, Level};
use super::tensor::CpuTensor;
use super::OutPtr;
use crate::model::weights::LinearWeights;

const KC: usize = 768;
/// A multiple of every kernel's MR (12, 6, 4).
const MC: usize = 96;
/// The largest MR * NR (AVX-512 12 x 32): the stack tile of partial edge tiles.
const MAX_TILE: usize = mk::AVX512_MR * mk::AVX512_NR;

thread_local! {
    /// Each pool thread's packed input chunk, (MC / MR, KC, MR); grows once, then reused.
    static INPUT_CHUNK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// (kc, a, b, next, init, c, ldc): see `microkernel`.
type KernelFn = unsafe fn(usize, *const f32, *const f32, *const f32, Init, *mut f32, usize);

#[derive(Clone, Copy)]
struct Kernel {
    mr: usize,
    nr: usize,
    run: KernelFn,
    /// The same product, prefetching the next weight block into L2.
    run_prefetching: KernelFn,
}

/// The microkernel for weights packed with panel width `nr` on this CPU.
fn kernel_for(nr: usize) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    match (level(), nr) {
        (Level::Avx512, mk::AVX512_NR) => {
            return Kernel {
                mr: mk::AVX512_MR,
                nr,
                run: mk::avx512_12x32::<false>,
                run_prefetching: mk::avx512_12x32::<true>,
            }
        }
        (Level::Avx512 | Level::Avx2, mk::AVX2_NR) => {
            return Kernel {
                mr: mk::AVX2_MR,
                nr,
                run: mk::avx2_6x16::<false>,
                run_prefetching: mk::avx2_6x16::<true>,
            }
        }
        _ => {}
    }
    let run: KernelFn = match nr {
        16 => mk::portable_4xn::<16>,
        32 => mk::portable_4xn::<32>,
        _ => unreachable!("packed::panel_width gives 16 or 32, not {nr}"),
    };
    Kernel {
        mr: mk::PORTABLE_MR,
        nr,
        run,
        run_prefetching: run,
    }
}

/// Splits the work over `threads` tasks: by rows when there are enough for a full
/// input chunk per thread (each thread then packs only its own rows), else by column
/// panels (one short text: each thread reads only its half of W, the traffic that
/// dominates at batch 1).
pub fn linear(
    x: &[f32],
    rows: usize,
    lin: &LinearWeights<CpuTensor>,
    add_bias: bool,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let (n, k) = (lin.out_features, lin.in_features);
    let packed_now;
    let w = match lin.w.as_packed() {
        Some(w) => w,
        // A weight uploaded with plain `upload` (the op tests do): packed for this call.
        None => {
            packed_now = PackedWeight::new(&lin.w, n, k)?;
            &packed_now
        }
    };
    assert_eq!((w.n, w.k), (n, k), "packed weight shape");
    let bias = add_bias.then_some(&lin.b[..n]);
    gemm_packed(x, rows, w, bias, out, threads, kernel_for(w.nr));
    Ok(())
}

/// out (rows, N) = x (rows, K) . W^T (+ bias) with `kernel`, which must match W's panel width.
fn gemm_packed(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    threads: usize,
    kernel: Kernel,
) {
    assert_eq!(w.nr, kernel.nr, "kernel for another panel width");
    let (n, k) = (w.n, w.k);
    let x = &x[..rows * k];
    let out = OutPtr(out[..rows * n].as_mut_ptr());
    let threads = threads.max(1);
    let panels = w.panels();
    let task = |t: usize| {
        let (r, p) = if rows >= MC * threads {
            let per = rows.div_ceil(threads);
            ((t * per).min(rows)..((t + 1) * per).min(rows), 0..panels)
        } else {
            let per = panels.div_ceil(threads);
            (0..rows, (t * per).min(panels)..((t + 1) * per).min(panels))
        };
        if !r.is_empty() && !p.is_empty() {
            gemm_task(x, k, r, p, w, bias, out, kernel);
        }
    };
    rayon::scope(|s| {
        for t in 1..threads {
            s.spawn(move |_| task(t));
        }
        task(0);
    });
}

/// Rows `r` and column panels `p` of out = x . W^T (+ b). Each task writes a disjoint
/// block of out: rows r x columns of panels p.
#[allow(clippy::too_many_arguments)]
fn gemm_task(
    x: &[f32],
    k: usize,
    r: std::ops::Range<usize>,
    p: std::ops::Range<usize>,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    out: OutPtr,
    kernel: Kernel,
) {
    let (n, mr, nr) = (w.n, kernel.mr, kernel.nr);
    INPUT_CHUNK.with(|chunk| {
        let mut chunk = chunk.borrow_mut();
        if chunk.len() < MC * KC {
            chunk.resize(MC * KC, 0.0);
        }
        for rc0 in r.clone().step_by(MC) {
            let mc = MC.min(r.end - rc0);
            for kk0 in (0..k).step_by(KC) {
                let kc = KC.min(k - kk0);
                pack_rows(x, k, rc0, mc, kk0, kc, mr, &mut chunk);
                for panel in p.clone() {
                    let b = w.block(panel, kk0, kc).as_ptr();
                    let col0 = panel * nr;
                    let ncols = nr.min(n - col0);
                    let mut bias_row = [0f32; mk::AVX512_NR];
                    let init = match (kk0, bias) {
                        (0, Some(bias)) => {
                            bias_row[..ncols].copy_from_slice(&bias[col0..col0 + ncols]);
                            Init::Row(bias_row.as_ptr())
                        }
                        (0, None) => Init::Zero,
                        _ => Init::Load,
                    };
                    // The chunk's first row block brings this panel's block from L3 or
                    // memory and pulls the next panel's into L2 (see `microkernel`).
                    let next_block = (panel + 1 < p.end).then(|| w.block(panel + 1, kk0, kc));
                    for (blk, row0) in (rc0..rc0 + mc).step_by(mr).enumerate() {
                        let a = chunk[blk * mr * kc..].as_ptr();
                        let m = mr.min(rc0 + mc - row0);
                        let (run, next) = match next_block {
                            Some(next) if blk == 0 => (kernel.run_prefetching, next.as_ptr()),
                            _ => (kernel.run, std::ptr::null()),
                        };
                        // SAFETY: out is (rows, n) and this task alone writes rows r x
                        // columns of panels p; row0 + m <= r.end, col0 + ncols <= n. The
                        // kernel matches the panel width and the CPU (`kernel_for`); a
                        // holds kc * mr floats, b kc * nr, bias_row nr, and next (read only
                        // by run_prefetching) kc * nr.
                        unsafe {
                            let c = out.get().add(row0 * n + col0);
                            if m == mr && ncols == nr {
                                run(kc, a, b, next, init, c, n);
                            } else {
                                // An edge tile: through a full tile on the stack.
                                let mut tile = [0f32; MAX_TILE];
                                for i in 0..m {
                                    if let Init::Load = init {
                                        std::ptr::copy_nonoverlapping(
                                            c.add(i * n),
                                            tile.as_mut_ptr().add(i * nr),
                                            ncols,
                                        );
                                    }
                                }
                                run(kc, a, b, next, init, tile.as_mut_ptr(), nr);
                                for i in 0..m {
                                    std::ptr::copy_nonoverlapping(
                                        tile.as_ptr().add(i * nr),
                                        c.add(i * n),
                                        ncols,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Packs x[rc0..rc0+mc][kk0..kk0+kc] k-major in blocks of mr rows: block b holds, per k,
/// the mr floats of its rows (zeros past the last row), the order the kernel broadcasts.
#[allow(clippy::too_many_arguments)]
fn pack_rows(
    x: &[f32],
    k: usize,
    rc0: usize,
    mc: usize,
    kk0: usize,
    kc: usize,
    mr: usize,
    chunk: &mut [f32],
) {
    // MR as a constant, so that each k's MR loads and stores unroll without bounds checks.
    match mr {
        mk::AVX512_MR => pack_rows_mr::<{ mk::AVX512_MR }>(x, k, rc0, mc, kk0, kc, chunk),
        mk::AVX2_MR => pack_rows_mr::<{ mk::AVX2_MR }>(x, k, rc0, mc, kk0, kc, chunk),
        mk::PORTABLE_MR => pack_rows_mr::<{ mk::PORTABLE_MR }>(x, k, rc0, mc, kk0, kc, chunk),
        _ => unreachable!("kernel_for gives MR 12, 6 or 4, not {mr}"),
    }
}

/// `pack_rows` for one MR. Each k reads one float of each of the MR rows and writes them
/// side by side: the writes are sequential (a row at a time would write at stride MR and
/// ran at about 5 cycles a float).
fn pack_rows_mr<const MR: usize>(
    x: &[f32],
    k: usize,
    rc0: usize,
    mc: usize,
    kk0: usize,
    kc: usize,
    chunk: &mut [f32],
) {
    let zeros = [0f32; KC];
    for (blk, row0) in (rc0..rc0 + mc).step_by(MR).enumerate() {
        let block = &mut chunk[blk * MR * kc..(blk + 1) * MR * kc];
        // Rows past the chunk's end read zeros.
        let src: [&[f32]; MR] = std::array::from_fn(|i| {
            let row = row0 + i;
            if row < rc0 + mc {
                &x[row * k + kk0..row * k + kk0 + kc]
            } else {
                &zeros[..kc]
            }
        });
        for (p, dst) in block.chunks_exact_mut(MR).enumerate() {
            for (d, s) in dst.iter_mut().zip(&src) {
                *d = s[p];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU can run (so an AVX-512 machine checks the AVX2 and portable
    /// kernels too).
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![
            Kernel {
                mr: mk::PORTABLE_MR,
                nr: 16,
                run: mk::portable_4xn::<16>,
                run_prefetching: mk::portable_4xn::<16>,
            },
            Kernel {
                mr: mk::PORTABLE_MR,
                nr: 32,
                run: mk::portable_4xn::<32>,
                run_prefetching: mk::portable_4xn::<32>,
            },
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(level(), Level::Avx512 | Level::Avx2) {
                all.push(kernel_for(mk::AVX2_NR));
            }
            if level() == Level::Avx512 {
                all.push(kernel_for(mk::AVX512_NR));
            }
        }
        all
    }

    /// Against an f64 reference, with edges in every dimension (rows, columns and K no
    /// multiple of any tile), several K-blocks and row chunks, both work splits (by
    /// columns below MC * threads rows, by rows above), with and without bias. Outputs
    /// start as NaN, so an element no tile writes fails. Tolerance: |x|, |w| <= 1, so
    /// each of the K products rounds within 6e-8 and the f32 sum of K of them within
    /// K * 6e-8 (plus the bias); 1e-7 * K + 1e-6 allows that, and an indexing error is O(1).
    #[test]
    fn every_kernel_matches_f64_reference() {
        for (rows, k, n) in [(1, 5, 7), (13, 300, 45), (2 * MC + 7, 2 * KC + 3, 70)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104_729) % 1999) as f32 / 999.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 3.0).collect();
            for kernel in kernels() {
                let packed = PackedWeight::with_panel_width(&w, n, k, kernel.nr).unwrap();
                for bias in [None, Some(&b[..])] {
                    let mut out = vec![f32::NAN; rows * n];
                    gemm_packed(&x, rows, &packed, bias, &mut out, 2, kernel);
                    for r in 0..rows {
                        for j in 0..n {
                            let want = bias.map_or(0.0, |b| b[j] as f64)
                                + (0..k)
                                    .map(|p| x[r * k + p] as f64 * w[j * k + p] as f64)
                                    .sum::<f64>();
                            let got = out[r * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-7 * k as f64 + 1e-6,
                                "mr {} nr {} rows {rows} k {k} n {n}: out[{r}][{j}] = {got}, want {want}",
                                kernel.mr,
                                kernel.nr
                            );
                        }
                    }
                }
            }
        }
    }
}
