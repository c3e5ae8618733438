// BertIntermediate: bias + activation, in place on the (rows, F) GEMM output.
//
// The feed-forward GEMM runs without its bias so that the bias add and the
// non-linearity cost one read and one write of the (rows, 4C) intermediate, the largest
// activation of the layer. One thread per element, grid-stride.
#include "common.cuh"

// gelu (exact): x * 0.5 * (1 + erf(x / sqrt(2))), as torch.nn.functional.gelu.
static __device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

// gelu_new / gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
static __device__ __forceinline__ float gelu_tanh(float x) {
    const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

static __device__ __forceinline__ float relu(float x) { return fmaxf(x, 0.0f); }

// x (rows, F) = act(x + bias), bias (F,)
// launch: 1-D grid over rows * F elements, block 256
#define BIAS_ACTIVATION_KERNEL(name, T, act)                                           \
    extern "C" __global__ void name(T* __restrict__ x, const T* __restrict__ bias,     \
                                    int rows, int F) {                                 \
        GRID_STRIDE_LOOP(i, rows * F) { x[i] = store<T>(act(load(x[i]) + load(bias[i % F]))); } \
    }
#define BIAS_GELU_ERF(name, T) BIAS_ACTIVATION_KERNEL(name, T, gelu_erf)
#define BIAS_GELU_TANH(name, T) BIAS_ACTIVATION_KERNEL(name, T, gelu_tanh)
#define BIAS_RELU(name, T) BIAS_ACTIVATION_KERNEL(name, T, relu)
FOR_EACH_STORAGE(BIAS_GELU_ERF, bias_gelu_erf_forward)
FOR_EACH_STORAGE(BIAS_GELU_TANH, bias_gelu_tanh_forward)
FOR_EACH_STORAGE(BIAS_RELU, bias_relu_forward)
