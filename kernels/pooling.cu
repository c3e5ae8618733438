// Mean pooling: a text's feature as the mean of its last hidden states over every one of
// its tokens (sentence-transformers' mean over the attention mask; the packed layout holds
// no padding, so every row of a text is a real token).
//
// Nothing to fuse: it reads the last layer's (T, C) output once and writes (n, C). One
// thread per output element walks its column down the text's rows, so a warp reads 32
// consecutive floats of a row at a time (coalesced), and the sum runs in the CPU
// reference's order (token by token, in f32), so both backends round alike.
#include "common.cuh"

// out (n, C): out[i, c] = sum over t in offsets[i]..offsets[i+1] of hidden[t, c], divided
// by the text's length. hidden (T, C); offsets (n + 1,), every text at least one token.
// The sum runs in f32 in every storage type; the mean is rounded once when stored.
// launch: 1-D grid over n * C elements, block 256
#define MEAN_POOL_ROWS(name, T)                                                           \
    extern "C" __global__ void name(T* __restrict__ out, const T* __restrict__ hidden,    \
                                    const unsigned int* __restrict__ offsets, int n,      \
                                    int C) {                                              \
        GRID_STRIDE_LOOP(e, n * C) {                                                      \
            const int i = e / C;                                                          \
            const int c = e % C;                                                          \
            const unsigned int start = offsets[i], end = offsets[i + 1];                  \
            float sum = 0.0f;                                                             \
            for (unsigned int t = start; t < end; ++t) sum += load(hidden[(size_t)t * C + c]); \
            out[e] = store<T>(sum / (float)(end - start));                                \
        }                                                                                 \
    }
FOR_EACH_STORAGE(MEAN_POOL_ROWS, mean_pool_rows)
