// CPU emulation of the CUDA features the kernels use, so that their logic (indexing,
// reductions, masking, padding) is tested in CI where no GPU exists: blocks run one after
// another, the threads of a block as OS threads, __syncthreads and warp shuffles through
// barriers. tests/backend_ops.rs rewrites the few CUDA-only declarations of kernels/*.cu
// (__shared__ arrays, extern "C") for this header and compiles check_kernels.cpp with g++.
// Floating point is IEEE single like the GPU's without fast-math; build with
// -ffp-contract=off so the host compiler does not fuse what nvcc might not, and vice versa.
#pragma once
#include <barrier>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline float* g_dynamic_shared;
inline std::barrier<>* g_block_barrier;
struct Warp { float slots[32]; std::unique_ptr<std::barrier<>> bar; };
inline std::vector<Warp>* g_warps;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int off) {
    int lane = threadIdx.x % 32; Warp& w = (*g_warps)[threadIdx.x / 32];
    w.slots[lane] = v; w.bar->arrive_and_wait();
    float r = w.slots[lane ^ off]; w.bar->arrive_and_wait();
    return r;
}
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
template <class F, class... A>
void launch(F f, unsigned grid, unsigned block, size_t shared_bytes, A... args) {
    gridDim.x = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        std::vector<float> dyn(shared_bytes / 4 + 1);
        g_dynamic_shared = dyn.data();
        std::barrier<> bar(block); g_block_barrier = &bar;
        std::vector<Warp> warps(block / 32);
        for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(32);
        g_warps = &warps;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([=] { threadIdx.x = t; blockIdx.x = b; f(args...); });
        for (auto& t : ts) t.join();
    }
}
