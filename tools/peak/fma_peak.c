/* The FMA peak of this CPU: every thread runs independent chains of fused multiply-adds
 * on registers only (no memory traffic), enough chains to hide the FMA latency.
 *
 *   gcc -O3 -fopenmp tools/peak/fma_peak.c -o /tmp/fma_peak
 *   OMP_NUM_THREADS=2 /tmp/fma_peak
 *
 * Prints GFLOP/s (2 flops per lane per FMA) for 256-bit (AVX2) and 512-bit (AVX-512)
 * FMAs; the AVX-512 line only where the CPU has avx512f. docs/BENCHMARKS.md has figures. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define CHAINS 12
#define ITERS 200000000L

__attribute__((target("avx2,fma"))) static float run256(long iters) {
    __m256 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    float s = 0;
    for (int c = 0; c < CHAINS; c++) s += _mm256_cvtss_f32(acc[c]);
    return s;
}

__attribute__((target("avx512f"))) static float run512(long iters) {
    __m512 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    float s = 0;
    for (int c = 0; c < CHAINS; c++) s += _mm512_cvtss_f32(acc[c]);
    return s;
}

static void measure(const char *name, int lanes, float (*f)(long)) {
    long iters = ITERS / lanes * 8;
    float sink = 0;
    double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
    sink += f(iters);
    double secs = omp_get_wtime() - t0;
    int threads = omp_get_max_threads();
    double gflops = 2.0 * lanes * CHAINS * (double)iters * threads / secs / 1e9;
    printf("%s: %d threads, %.1f GFLOP/s (%.1f per thread) [sink %g]\n", name, threads, gflops,
           gflops / threads, sink);
}

int main(void) {
    measure("AVX2 256-bit FMA", 8, run256);
    if (__builtin_cpu_supports("avx512f")) measure("AVX-512 512-bit FMA", 16, run512);
    return 0;
}
