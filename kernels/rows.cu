// Row movement: the [CLS] gather and the bias broadcast that seeds a GEMM output.
//
// gather_rows picks each text's [CLS] row out of the packed hidden states (the last
// layer's residual and the encoder's output). broadcast_bias_rows writes the bias into
// every output row so that cuBLAS adds the product to it (beta = 1): the bias costs no
// extra pass over the GEMM output.
#include "common.cuh"

// dst (n, width) = src[rows] with src (T, width), rows (n,)
// launch: 1-D grid over n * width elements, block 256
#define GATHER_ROWS(name, T)                                                              \
    extern "C" __global__ void name(T* __restrict__ dst, const T* __restrict__ src,       \
                                    const unsigned int* __restrict__ rows, int n,         \
                                    int width) {                                          \
        GRID_STRIDE_LOOP(e, n * width) {                                                  \
            const int r = e / width;                                                      \
            const int c = e % width;                                                      \
            dst[e] = src[(size_t)rows[r] * width + c];                                    \
        }                                                                                 \
    }
FOR_EACH_STORAGE(GATHER_ROWS, gather_rows)

// out (rows, N) = bias (N,) in every row
// launch: 1-D grid over rows * N elements, block 256
#define BROADCAST_BIAS_ROWS(name, T)                                                     \
    extern "C" __global__ void name(T* __restrict__ out, const T* __restrict__ bias,     \
                                    int rows, int N) {                                   \
        GRID_STRIDE_LOOP(e, rows * N) { out[e] = bias[e % N]; }                          \
    }
FOR_EACH_STORAGE(BROADCAST_BIAS_ROWS, broadcast_bias_rows)
