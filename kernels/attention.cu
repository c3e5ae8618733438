// Self-attention over the packed layout: gather, fused scale + mask + softmax, scatter.
//
// The dense layers see the batch packed (every text's tokens back to back, no padding).
// Attention needs one (L, L) score matrix per text and head, which cuBLAS computes
// fastest as one strided-batched GEMM over equally shaped matrices, so each text's Q, K
// and V are gathered into a padded (n, H, L, hd) scratch (L = the longest text of the
// chunk). The padding is masked in the softmax, whose scale, mask, max, exp and
// normalisation are one pass over the scores instead of four element-wise kernels.
// The context is scattered back to packed rows. With only the [CLS] query wanted (the
// last layer), Lq = 1: Q and the scores shrink to one row per text and head.
// The scores are float in every precision (the score GEMM accumulates and stores fp32);
// in half precision the probabilities are stored in half for the second GEMM.
#include "common.cuh"

// q (n, H, Lq, hd), k and v (n, H, L, hd) from qkv (T, 3C) laid out [Q | K | V], C = H hd.
// Rows past a text's length are written as zeros: scores stay finite and masked
// probabilities (exactly 0) times zero V rows add nothing, never 0 * NaN.
// offsets (n + 1,) are packed row offsets of the chunk's texts.
// launch: 1-D grid over n * H * L * hd elements, block 256
template <class T>
static __device__ void attention_gather(T* __restrict__ q, T* __restrict__ k,
                                        T* __restrict__ v, const T* __restrict__ qkv,
                                        const unsigned int* __restrict__ offsets, int n,
                                        int H, int L, int Lq, int hd) {
    const int C = H * hd;
    const T zero = store<T>(0.0f);
    GRID_STRIDE_LOOP(e, n * H * L * hd) {
        const int d = e % hd;
        const int pos = (e / hd) % L;
        const int h = (e / (hd * L)) % H;
        const int i = e / (hd * L * H);
        const unsigned int start = offsets[i];
        const int len = offsets[i + 1] - start;
        const bool real = pos < len;
        const T* src = qkv + (size_t)(start + pos) * 3 * C + h * hd + d;
        k[e] = real ? src[C] : zero;
        v[e] = real ? src[2 * C] : zero;
        if (pos < Lq) {
            const unsigned int qe = ((i * H + h) * Lq + pos) * hd + d;
            q[qe] = real ? src[0] : zero;
        }
    }
}

#define ATTENTION_GATHER_QKV(name, T)                                                     \
    extern "C" __global__ void name(T* __restrict__ q, T* __restrict__ k,                 \
                                    T* __restrict__ v, const T* __restrict__ qkv,         \
                                    const unsigned int* __restrict__ offsets, int n,      \
                                    int H, int L, int Lq, int hd) {                       \
        attention_gather<T>(q, k, v, qkv, offsets, n, H, L, Lq, hd);                      \
    }
FOR_EACH_STORAGE(ATTENTION_GATHER_QKV, attention_gather_qkv)

// probs (n, H, Lq, L) = softmax over keys of (scores * scale), scores (n, H, Lq, L) float;
// keys past the text's length masked to probability 0; query rows past the length
// (padding) become all zeros, so no row can be NaN. In fp32 probs is scores (in place:
// each lane reads its elements before it writes them). One warp per row: L is at most a
// few hundred.
// launch: grid ceil(n * H * Lq / 8), block 256 (8 warps)
template <class T>
static __device__ void attention_softmax(const float* scores, T* probs,
                                         const unsigned int* __restrict__ offsets, int n,
                                         int H, int Lq, int L, float scale) {
    const int warps_per_block = blockDim.x / WARP_SIZE;
    const unsigned int r = blockIdx.x * warps_per_block + threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    if (r >= (unsigned int)(n * H * Lq)) return;
    const int qpos = r % Lq;
    const int i = r / (Lq * H);
    const int len = offsets[i + 1] - offsets[i];
    const float* row = scores + (size_t)r * L;
    T* out = probs + (size_t)r * L;
    if (qpos >= len) {
        for (int j = lane; j < L; j += WARP_SIZE) out[j] = store<T>(0.0f);
        return;
    }
    float m = -INFINITY;
    for (int j = lane; j < len; j += WARP_SIZE) m = fmaxf(m, row[j] * scale);
    m = warp_reduce_max(m);
    float sum = 0.0f;
    for (int j = lane; j < len; j += WARP_SIZE) sum += expf(row[j] * scale - m);
    // len >= 1 here, so the row's maximum contributes exp(0) = 1: sum >= 1.
    const float inv = 1.0f / warp_reduce_sum(sum);
    for (int j = lane; j < L; j += WARP_SIZE) {
        out[j] = store<T>(j < len ? expf(row[j] * scale - m) * inv : 0.0f);
    }
}

#define ATTENTION_SOFTMAX_SCALE_MASK(name, T)                                              \
    extern "C" __global__ void name(const float* scores, T* probs,                         \
                                    const unsigned int* __restrict__ offsets, int n,       \
                                    int H, int Lq, int L, float scale) {                   \
        attention_softmax<T>(scores, probs, offsets, n, H, Lq, L, scale);                  \
    }
FOR_EACH_STORAGE(ATTENTION_SOFTMAX_SCALE_MASK, attention_softmax_scale_mask)

// out rows from ctx (n, H, Lq, hd). all_rows = 1: out (T, C), row offsets[i] + q for each
// real query q of text i. all_rows = 0 ([CLS] only, Lq = 1): out row first_text + i.
// launch: 1-D grid over n * H * Lq * hd elements, block 256
#define ATTENTION_SCATTER_CONTEXT(name, T)                                                 \
    extern "C" __global__ void name(T* __restrict__ out, const T* __restrict__ ctx,        \
                                    const unsigned int* __restrict__ offsets, int n,       \
                                    int H, int Lq, int hd, int all_rows, int first_text) { \
        const int C = H * hd;                                                              \
        GRID_STRIDE_LOOP(e, n * H * Lq * hd) {                                             \
            const int d = e % hd;                                                          \
            const int qpos = (e / hd) % Lq;                                                \
            const int h = (e / (hd * Lq)) % H;                                             \
            const int i = e / (hd * Lq * H);                                               \
            const int len = offsets[i + 1] - offsets[i];                                   \
            if (qpos >= len) continue;                                                     \
            const size_t row =                                                             \
                all_rows ? (size_t)offsets[i] + qpos : (size_t)first_text + i;             \
            out[row * C + h * hd + d] = ctx[e];                                            \
        }                                                                                  \
    }
FOR_EACH_STORAGE(ATTENTION_SCATTER_CONTEXT, attention_scatter_context)
