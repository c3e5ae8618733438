// Shared helpers for the bertcls kernels: warp and block reductions.
//
// Every kernel file includes this header and build.rs compiles all kernels/*.cu as one
// translation unit, hence the include guard and `static __device__` helpers.
#pragma once

#include <cuda_runtime.h>

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// Element-wise kernels index in 32 bits (the backend refuses launches over 2^31
// elements): their divisions and remainders by row widths are then native 32-bit
// operations, not the ~10x costlier 64-bit emulation. Pointer offsets stay size_t.
#define GRID_STRIDE_LOOP(i, n)                                                      \
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)(n); \
         i += gridDim.x * blockDim.x)

static __device__ __forceinline__ float warp_reduce_sum(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(FULL_MASK, v, offset);
    }
    return v;
}

static __device__ __forceinline__ float warp_reduce_max(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    }
    return v;
}

// Sum over the whole block, returned to every thread. `scratch` holds one float per warp;
// the trailing __syncthreads lets a caller reduce again with the same scratch.
static __device__ __forceinline__ float block_reduce_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = warp_reduce_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : 0.0f;
    v = warp_reduce_sum(v);
    __syncthreads();
    return v;
}

// LayerNorm of one row held in shared memory `row` (C floats), written to `out`:
// out = (row - mean) / sqrt(var + eps) * gamma + beta. The variance is taken in a second
// pass over (x - mean)^2, never as E[x^2] - E[x]^2, which cancels catastrophically when
// |mean| >> std (BERT's hidden states have large per-row offsets).
static __device__ __forceinline__ void layernorm_row_from_shared(
    const float* row, float* out, const float* gamma, const float* beta, int C, float eps,
    float* scratch) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) sum += row[i];
    const float mean = block_reduce_sum(sum, scratch) / (float)C;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float d = row[i] - mean;
        sq += d * d;
    }
    const float var = block_reduce_sum(sq, scratch) / (float)C;
    const float rstd = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        out[i] = (row[i] - mean) * rstd * gamma[i] + beta[i];
    }
}
