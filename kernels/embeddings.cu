// BertEmbeddings: word + position + token-type embedding gather fused with the LayerNorm.
//
// Fused because the sum is only ever read by the LayerNorm: one kernel reads three
// embedding rows and writes the normalised row once, instead of writing and re-reading
// a (T, C) sum. One block per token; the summed row lives in shared memory (float) for
// the two-pass mean/variance.
#include "common.cuh"

// out (T, C) = LayerNorm(word[ids] + position[positions] + token_type[type_ids])
// ids, positions, type_ids (T,); word (V, C); position (P, C); token_type (S, C)
// launch: grid T, block 256, dynamic shared C floats
template <class T>
static __device__ void embeddings_layernorm(
    T* __restrict__ out, const unsigned int* __restrict__ ids,
    const unsigned int* __restrict__ positions, const unsigned int* __restrict__ type_ids,
    const T* __restrict__ word, const T* __restrict__ position,
    const T* __restrict__ token_type, const T* __restrict__ gamma, const T* __restrict__ beta,
    int T_, int C, float eps) {
    extern __shared__ float row[];
    __shared__ float scratch[WARP_SIZE];
    const int t = blockIdx.x;
    if (t >= T_) return;
    const T* w = word + (size_t)ids[t] * C;
    const T* p = position + (size_t)positions[t] * C;
    const T* s = token_type + (size_t)type_ids[t] * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        // HF adds (word + token_type) + position in this order; fp32 addition is not
        // associative, so keep it.
        row[i] = (load(w[i]) + load(s[i])) + load(p[i]);
    }
    __syncthreads();
    layernorm_row_from_shared(row, out + (size_t)t * C, gamma, beta, C, eps, scratch);
}

#define EMBEDDINGS_LAYERNORM(name, T)                                                          \
    extern "C" __global__ void name(                                                           \
        T* __restrict__ out, const unsigned int* __restrict__ ids,                             \
        const unsigned int* __restrict__ positions, const unsigned int* __restrict__ type_ids, \
        const T* __restrict__ word, const T* __restrict__ position,                            \
        const T* __restrict__ token_type, const T* __restrict__ gamma,                         \
        const T* __restrict__ beta, int T_, int C, float eps) {                                \
        embeddings_layernorm<T>(out, ids, positions, type_ids, word, position, token_type,     \
                                gamma, beta, T_, C, eps);                                      \
    }
FOR_EACH_STORAGE(EMBEDDINGS_LAYERNORM, embeddings_layernorm_forward)
