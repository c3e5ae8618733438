// The classification head's training step: softmax cross-entropy with its gradient, the
// bias gradient, and AdamW.
//
// The head is Linear(C, num_labels): its forward and dW are cuBLAS GEMMs (with
// broadcast_bias_rows). What is left is tiny and launch-bound: the loss and dlogits come
// from one warp per example in one kernel, and AdamW updates weight and bias with one
// element-wise kernel each, so a step is a handful of launches and no host round trip
// except the loss read-back.
#include "common.cuh"

// Per example i, with s = scale[y_i] its share of the batch loss (1 / n for the plain
// mean; w[y_i] / sum_j w[y_j] for torch's CrossEntropyLoss(weight=w), computed on the
// host, which knows the batch's labels): loss[i] = s (logsumexp(logits[i]) - logits[i,
// y_i]) (stable: max subtracted), so the batch loss is the sum of loss;
// dlogits[i] = s (softmax(logits[i]) - onehot(y_i)); correct[i] = 1 when the first arg
// max equals y_i.
// logits, dlogits (n, K); labels (n,); scale (K,); loss, correct (n,)
// launch: grid ceil(n / 8), block 256 (one warp per example)
extern "C" __global__ void softmax_cross_entropy_backward(
    float* __restrict__ loss, float* __restrict__ dlogits, float* __restrict__ correct,
    const float* __restrict__ logits, const unsigned int* __restrict__ labels,
    const float* __restrict__ scale, int n, int K) {
    const int i = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    if (i >= n) return;
    const float* x = logits + (size_t)i * K;
    const int y = labels[i];
    float m = -INFINITY;
    for (int j = lane; j < K; j += WARP_SIZE) m = fmaxf(m, x[j]);
    m = warp_reduce_max(m);
    float sum = 0.0f;
    for (int j = lane; j < K; j += WARP_SIZE) sum += expf(x[j] - m);
    sum = warp_reduce_sum(sum);
    const float s = scale[y];
    for (int j = lane; j < K; j += WARP_SIZE) {
        const float p = expf(x[j] - m) / sum;
        dlogits[(size_t)i * K + j] = (p - (j == y ? 1.0f : 0.0f)) * s;
    }
    if (lane == 0) {
        loss[i] = ((m + logf(sum)) - x[y]) * s;
        int arg = 0;
        for (int j = 1; j < K; ++j) arg = x[j] > x[arg] ? j : arg;
        correct[i] = arg == y ? 1.0f : 0.0f;
    }
}

// db (K,) = sum over examples of dlogits (n, K)
// launch: grid K, block 256
extern "C" __global__ void bias_grad_column_sum(float* __restrict__ db,
                                                const float* __restrict__ dlogits, int n,
                                                int K) {
    __shared__ float scratch[WARP_SIZE];
    const int j = blockIdx.x;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += dlogits[(size_t)i * K + j];
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) db[j] = s;
}

// One AdamW step with torch.optim.AdamW's semantics (single-tensor, amsgrad off):
// p *= 1 - lr wd (decoupled decay, first); m = lerp(m, g, 1 - beta1);
// v = beta2 v + (1 - beta2) g g; p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps) with
// bc1 = 1 - beta1^t, bc2 = 1 - beta2^t. The scalars are computed on the host in f64, as
// torch computes them from Python floats, and rounded to f32 once.
// param, grad, m, v (len,)
// launch: 1-D grid over len elements, block 256
extern "C" __global__ void adamw_update(float* __restrict__ param,
                                        const float* __restrict__ grad, float* __restrict__ m,
                                        float* __restrict__ v, int len, float decay,
                                        float one_minus_beta1, float beta2,
                                        float one_minus_beta2, float eps, float step_size,
                                        float bias_correction2_sqrt) {
    // Every multiply and add rounded on its own (__fmul_rn/__fadd_rn are never contracted
    // into FMAs), in optim::AdamW's order: given the same gradients, the same bits.
    GRID_STRIDE_LOOP(i, len) {
        const float g = grad[i];
        const float p = __fmul_rn(param[i], decay);
        // torch.lerp(m, g, w): m + w (g - m) for a weight below 0.5, else
        // g - (g - m) (1 - w), exact at both ends (optim.rs has the same two branches).
        const float diff = __fadd_rn(g, -m[i]);
        const float mi = one_minus_beta1 < 0.5f
                             ? __fadd_rn(m[i], __fmul_rn(one_minus_beta1, diff))
                             : __fadd_rn(g, -__fmul_rn(diff, __fadd_rn(1.0f, -one_minus_beta1)));
        const float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
        const float denom = __fadd_rn(sqrtf(vi) / bias_correction2_sqrt, eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = __fadd_rn(p, __fmul_rn(-step_size, mi / denom));
    }
}
