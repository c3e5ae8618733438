//! Element-wise math that the compiler can vectorise, and run-time dispatch to AVX2/AVX-512.
//!
//! `f32::exp` and libm's `erff` are scalar calls: a scalar erf in GELU is a known hot spot of
//! other Rust BERTs. These versions are branch-free polynomials (no calls, no table lookups),
//! so a loop over a slice becomes SIMD code. The binary targets baseline x86-64 (it must run
//! on any CPU, including the GPU machine's host), so `dispatch!` compiles a hot loop again
//! with AVX2+FMA and AVX-512 enabled and picks one at run time.

/// e^x for x in [-87, 88], relative error below 3e-7 (float32 rounding alone is 6e-8).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that k * LN2_HI is exact for |k| < 2^9 (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND; // 1.5 * 2^23 + k: k sits in the low mantissa bits
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO; // |r| <= ln(2)/2

    // Taylor series to degree 6: remainder r^7/7! < 1.3e-7 on |r| <= 0.347.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k built from `shifted`'s bits, not from `k as i32`: that cast saturates, which
    // the compiler emits as scalar compare-and-move code per lane, stopping the loop's
    // vectorisation. The low 9 bits of `shifted`'s bits are k's (two's complement), the
    // rest shifts out; k + 127 is in 1..=254 for x in [-87, 88].
    let two_k = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    p * two_k
}

/// erf(x), absolute error below 5e-7 (3.1e-7 on the test's grid): x P(x^2) / Q(x^2), a
/// (9, 12) rational fitted to erf on [0, 3.9] (least squares on Chebyshev nodes, reweighted
/// towards minimax; 2.2e-8 in exact arithmetic, the rest is f32 rounding), and +-1 past
/// 3.9, where erf is within 4e-8 of 1. One division and no exp, the two polynomials
/// independent: Abramowitz and Stegun 7.1.26, used before, chained a division, a
/// polynomial and an exp (4.5e-7 on the same grid) and made bias + GELU 2.7x as slow on
/// an L2-resident buffer (docs/BENCHMARKS.md). In GELU the error is 0.5 |x| 5e-7, far
/// below fp32 parity needs.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 5] = [
        std::f32::consts::FRAC_2_SQRT_PI, // erf'(0); the fit gives it to 2e-7
        0.192_067_03,
        0.051_831,
        0.003_689_706_4,
        0.000_234_234_3,
    ];
    const Q: [f32; 6] = [
        0.503_546,
        0.113_791_53,
        0.014_640_064,
        0.001_082_925_6,
        2.335_938_6e-5,
        -1.121_647e-7,
    ];
    let s = x * x;
    let p = x * (P[0] + s * (P[1] + s * (P[2] + s * (P[3] + s * P[4]))));
    let q = 1.0 + s * (Q[0] + s * (Q[1] + s * (Q[2] + s * (Q[3] + s * (Q[4] + s * Q[5])))));
    if x.abs() >= 3.9 {
        1f32.copysign(x)
    } else {
        p / q
    }
}

/// tanh(x) through exp: 1 - 2 / (e^(2x) + 1), saturating cleanly at both ends.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Sum of a slice with 16 independent lanes: float addition is not associative, so the
/// compiler will not vectorise a plain `iter().sum()`.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element, lane-wise like `sum` (NaN-free input assumed, as for softmax scores).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// Sum of (x - mean)^2, lane-wise like `sum`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for i in 0..16 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Defines `fn $name(args)` that runs `$body` compiled for AVX-512, AVX2+FMA or the
/// baseline, whichever the CPU has. The body must be a plain function of its arguments.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                match $crate::backend::cpu::simd::level() {
                    // SAFETY: `level` checked that the CPU has these features.
                    $crate::backend::cpu::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::backend::cpu::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::backend::cpu::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2,
    Baseline,
}

#[inline]
pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            return Level::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

pub fn describe() -> &'static str {
    match level() {
        Level::Avx512 => "AVX-512",
        Level::Avx2 => "AVX2",
        Level::Baseline => "baseline SIMD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference is f64 libm; the bounds are the ones promised in the doc comments.
    #[test]
    fn exp_relative_error() {
        let mut worst = 0f64;
        for i in -86_990..=87_990 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn erf_absolute_error() {
        let mut worst = 0f64;
        for i in -10_000..=10_000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((erf(x) as f64 - libm_erf(x as f64)).abs());
        }
        assert!(worst < 5e-7, "worst absolute error {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-30.0), -1.0);
    }

    #[test]
    fn tanh_absolute_error() {
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3;
            let err = (tanh(x) as f64 - (x as f64).tanh()).abs();
            assert!(err < 3e-7, "tanh({x}) off by {err:e}");
        }
    }

    #[test]
    fn lane_sums_match_f64() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
            .collect();
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum(&x) as f64 - want).abs() < 1e-4);
        assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let mean = (want / x.len() as f64) as f32;
        let want_sq: f64 = x.iter().map(|&v| (v as f64 - mean as f64).powi(2)).sum();
        assert!((sum_sq_dev(&x, mean) as f64 - want_sq).abs() < 1e-3);
    }

    /// erf in f64 from its Maclaurin series (|x| < 3) and continued fraction (|x| >= 3):
    /// accurate to ~1e-15, independent of the approximation under test.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let (mut term, mut total, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = k as f64 / 2.0 / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        v.copysign(x)
    }
}
