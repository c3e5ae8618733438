//! The GEMM microkernels: c (MR, NR) = init + a (MR, kc) . b (kc, NR), the whole tile
//! held in registers across the k loop.
//!
//! `a` is an (MR x kc) block of the input packed k-major (MR floats per k, see
//! `linear::pack_rows`), `b` a K-block of one packed weight panel (NR floats per k, see
//! `packed`). Per k the kernel loads NR/lanes vectors of b, broadcasts MR floats of a and
//! issues MR * NR/lanes independent FMAs: 24 on AVX-512 and 12 on AVX2, more than the
//! FMA latency times the FMA ports (4 x 2 on current x86), so the FMA units never wait.
//! Register budget: AVX-512 24 accumulators + 2 b + 1 broadcast of 32 zmm; AVX2 12 + 2
//! + 1 of 16 ymm.
//!
//! With `PREFETCH`, the SIMD kernels also pull `next`, the weight block the caller runs
//! after this one, into L2, one cache line per line of b they read. The caller sets it on
//! the first row block of each panel: that call reads its block from L3 or memory (at
//! batch 1 all 340 MB of BERT-base's weights come from memory once per forward), and the
//! hardware prefetcher follows the stream within a block but loses it when the next
//! panel starts. Prefetching changes no arithmetic.

/// What the tile starts from.
#[derive(Clone, Copy)]
pub enum Init {
    /// Zeros: the first K-block of a product without bias.
    Zero,
    /// NR floats added to every row: the first K-block with bias.
    Row(*const f32),
    /// The tile already in c: every later K-block.
    Load,
}

pub const AVX512_MR: usize = 12;
pub const AVX512_NR: usize = 32;
pub const AVX2_MR: usize = 6;
pub const AVX2_NR: usize = 16;
pub const PORTABLE_MR: usize = 4;

/// # Safety
/// The CPU has AVX-512F; a holds kc * 12 floats, b kc * 32, c 12 rows of 32 at stride
/// ldc, Init::Row 32 floats; with PREFETCH, next holds kc * 32 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn avx512_12x32<const PREFETCH: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    next: *const f32,
    init: Init,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    const MR: usize = AVX512_MR;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    match init {
        Init::Zero => {}
        Init::Row(r) => {
            let row = [_mm512_loadu_ps(r), _mm512_loadu_ps(r.add(16))];
            acc = [row; MR];
        }
        Init::Load => {
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = [
                    _mm512_loadu_ps(c.add(i * ldc)),
                    _mm512_loadu_ps(c.add(i * ldc + 16)),
                ];
            }
        }
    }
    for p in 0..kc {
        if PREFETCH {
            _mm_prefetch::<_MM_HINT_T1>(next.add(p * 32).cast());
            _mm_prefetch::<_MM_HINT_T1>(next.add(p * 32 + 16).cast());
        }
        let b0 = _mm512_loadu_ps(b.add(p * 32));
        let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
        let ap = a.add(p * MR);
        for (i, acc) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*ap.add(i));
            acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * ldc), acc[0]);
        _mm512_storeu_ps(c.add(i * ldc + 16), acc[1]);
    }
}

/// # Safety
/// The CPU has AVX2 and FMA; a holds kc * 6 floats, b kc * 16, c 6 rows of 16 at stride
/// ldc, Init::Row 16 floats; with PREFETCH, next holds kc * 16 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_6x16<const PREFETCH: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    next: *const f32,
    init: Init,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    const MR: usize = AVX2_MR;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    match init {
        Init::Zero => {}
        Init::Row(r) => {
            let row = [_mm256_loadu_ps(r), _mm256_loadu_ps(r.add(8))];
            acc = [row; MR];
        }
        Init::Load => {
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = [
                    _mm256_loadu_ps(c.add(i * ldc)),
                    _mm256_loadu_ps(c.add(i * ldc + 8)),
                ];
            }
        }
    }
    for p in 0..kc {
        if PREFETCH {
            _mm_prefetch::<_MM_HINT_T1>(next.add(p * 16).cast());
        }
        let b0 = _mm256_loadu_ps(b.add(p * 16));
        let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
        let ap = a.add(p * MR);
        for (i, acc) in acc.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*ap.add(i));
            acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(i * ldc), acc[0]);
        _mm256_storeu_ps(c.add(i * ldc + 8), acc[1]);
    }
}

/// Plain Rust for CPUs without AVX2 (and other architectures): the same contract with
/// MR = 4 and any NR; the compiler vectorises the j loops with whatever SIMD it targets.
/// It has no prefetch (stable Rust has no portable one), so it ignores `next`.
///
/// # Safety
/// a holds kc * 4 floats, b kc * nr, c 4 rows of nr at stride ldc, Init::Row nr floats.
pub unsafe fn portable_4xn<const NR: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    _next: *const f32,
    init: Init,
    c: *mut f32,
    ldc: usize,
) {
    const MR: usize = PORTABLE_MR;
    let mut acc = [[0f32; NR]; MR];
    for (i, acc) in acc.iter_mut().enumerate() {
        match init {
            Init::Zero => {}
            Init::Row(r) => acc.copy_from_slice(std::slice::from_raw_parts(r, NR)),
            Init::Load => acc.copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), NR)),
        }
    }
    let (a, b) = (
        std::slice::from_raw_parts(a, kc * MR),
        std::slice::from_raw_parts(b, kc * NR),
    );
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (acc, &ai) in acc.iter_mut().zip(ap) {
            for (s, &bj) in acc.iter_mut().zip(bp) {
                *s += ai * bj;
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        std::slice::from_raw_parts_mut(c.add(i * ldc), NR).copy_from_slice(acc);
    }
}
