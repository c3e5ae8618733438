// BertSelfOutput / BertOutput: bias + residual + LayerNorm in one pass.
//
// The dense layer before it runs in cuBLAS without its bias, so the bias add, the
// residual add and the normalisation read the (rows, C) GEMM output once and write it
// once, in place. One block per row; the row sits in shared memory (float, whatever the
// storage type) for the two passes.
#include "common.cuh"

// x (rows, C) = LayerNorm(x + bias + residual), in place
// bias (C,); residual (rows, C); gamma, beta (C,)
// launch: grid rows, block 256, dynamic shared C floats
template <class T>
static __device__ void bias_residual_layernorm(T* __restrict__ x, const T* __restrict__ bias,
                                               const T* __restrict__ residual,
                                               const T* __restrict__ gamma,
                                               const T* __restrict__ beta, int rows, int C,
                                               float eps) {
    extern __shared__ float row[];
    __shared__ float scratch[WARP_SIZE];
    const int r = blockIdx.x;
    if (r >= rows) return;
    T* xr = x + (size_t)r * C;
    const T* res = residual + (size_t)r * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        // HF: LayerNorm(dropout(dense(h)) + input), dense(h) = h W^T + b.
        row[i] = (load(xr[i]) + load(bias[i])) + load(res[i]);
    }
    __syncthreads();
    layernorm_row_from_shared(row, xr, gamma, beta, C, eps, scratch);
}

#define BIAS_RESIDUAL_LAYERNORM(name, T)                                                      \
    extern "C" __global__ void name(T* __restrict__ x, const T* __restrict__ bias,            \
                                    const T* __restrict__ residual,                           \
                                    const T* __restrict__ gamma, const T* __restrict__ beta,  \
                                    int rows, int C, float eps) {                             \
        bias_residual_layernorm<T>(x, bias, residual, gamma, beta, rows, C, eps);             \
    }
FOR_EACH_STORAGE(BIAS_RESIDUAL_LAYERNORM, bias_residual_layernorm_forward)
