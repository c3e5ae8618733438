// Shared helpers for the bertcls kernels: storage types, warp and block reductions.
//
// Every kernel file includes this header and build.rs compiles all kernels/*.cu as one
// translation unit, hence the include guard and `static __device__` helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// The encoder's tensors are stored as float (--precision fp32, tf32) or in half
// precision (fp16, bf16, on tensor cores). Every kernel loads to float, computes in float
// (LayerNorm statistics and softmax included) and rounds once when it stores.
static __device__ __forceinline__ float load(float x) { return x; }
static __device__ __forceinline__ float load(__half x) { return __half2float(x); }
static __device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
static __device__ __forceinline__ T store(float x);
template <>
__device__ __forceinline__ float store<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half store<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// One extern "C" kernel per storage type, named NAME (float), NAME_f16 and NAME_bf16:
// DEFINE(name, T) declares one.
#define FOR_EACH_STORAGE(DEFINE, NAME) \
    DEFINE(NAME, float)                \
    DEFINE(NAME##_f16, __half)         \
    DEFINE(NAME##_bf16, __nv_bfloat16)

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

// LayerNorm of one row held in shared memory `row` (C floats), written to `out` (C of T):
// out = (row - mean) / sqrt(var + eps) * gamma + beta. The variance is taken in a second
// pass over (x - mean)^2, never as E[x^2] - E[x]^2, which cancels catastrophically when
// |mean| >> std (BERT's hidden states have large per-row offsets).
template <class T>
static __device__ __forceinline__ void layernorm_row_from_shared(const float* row, T* out,
                                                                 const T* gamma, const T* beta,
                                                                 int C, float eps,
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
        out[i] = store<T>((row[i] - mean) * rstd * load(gamma[i]) + load(beta[i]));
    }
}
