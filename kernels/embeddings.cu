// BertEmbeddings: word + position + token-type embedding gather fused with the LayerNorm.
//
// Fused because the sum is only ever read by the LayerNorm: one kernel reads three
// embedding rows and writes the normalised row once, instead of writing and re-reading
// a (T, C) sum. One block per token; the summed row lives in shared memory for the
// two-pass mean/variance.
#include "common.cuh"

// out (T, C) = LayerNorm(word[ids] + position[positions] + token_type[type_ids])
// ids, positions, type_ids (T,); word (V, C); position (P, C); token_type (S, C)
// launch: grid T, block 256, dynamic shared C floats
extern "C" __global__ void embeddings_layernorm_forward(
    float* __restrict__ out, const unsigned int* __restrict__ ids,
    const unsigned int* __restrict__ positions, const unsigned int* __restrict__ type_ids,
    const float* __restrict__ word, const float* __restrict__ position,
    const float* __restrict__ token_type, const float* __restrict__ gamma,
    const float* __restrict__ beta, int T, int C, float eps) {
    extern __shared__ float row[];
    __shared__ float scratch[WARP_SIZE];
    const int t = blockIdx.x;
    if (t >= T) return;
    const float* w = word + (size_t)ids[t] * C;
    const float* p = position + (size_t)positions[t] * C;
    const float* s = token_type + (size_t)type_ids[t] * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        // HF adds (word + token_type) + position in this order; fp32 addition is not
        // associative, so keep it.
        row[i] = (w[i] + s[i]) + p[i];
    }
    __syncthreads();
    layernorm_row_from_shared(row, out + (size_t)t * C, gamma, beta, C, eps, scratch);
}
