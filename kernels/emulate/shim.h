// CPU emulation of the CUDA features the kernels use, so that their logic (indexing,
// reductions, masking, padding, synchronisation) is tested in CI where no GPU exists.
// tests/backend_ops.rs rewrites the few CUDA-only declarations of kernels/*.cu for this
// header (`__shared__` arrays, `extern "C"`) and compiles check_kernels.cpp with g++.
//
// What a GPU would show and a naive emulation hides, made visible here:
// - every block's dynamic and static shared memory starts as NaN (a GPU leaves garbage):
//   a read of shared memory nobody wrote poisons the result;
// - blocks run in a seeded shuffled (or reversed) order, EMU_CONCURRENT_BLOCKS of them
//   interleaved: a write into another block's data is seen by the check;
// - each GPU thread is a fiber; between synchronisation points the scheduler keeps a warp
//   running ahead of the others (as independent warps do), so a barrier missing between
//   a write and another warp's read of shared memory gives a wrong value every launch;
// - a __syncthreads that some threads never reach, threads of one block at different
//   __syncthreads, a shuffle not reached by all 32 lanes or lanes at different shuffles,
//   and a block that is not whole warps all fail at once, naming the kernel; a kernel
//   that does not finish within EMU_WATCHDOG_S seconds (default 60) is stopped by a
//   watchdog that names it.
// Built with -DEMU_OS_THREADS, every GPU thread is an OS thread running concurrently
// with its block (std::barrier for __syncthreads and shuffles): the build for
// ThreadSanitizer (docs/CUDA.md), which sees races the fiber build cannot.
//
// Floating point is IEEE single like the GPU's without fast-math; build with
// -ffp-contract=off so the host compiler does not fuse what nvcc might not, and vice versa.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <source_location>
#include <string>
#include <thread>
#include <vector>
#ifdef EMU_OS_THREADS
#include <barrier>
#else
#include <ucontext.h>
#endif

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {

// How the next launches order their blocks: `seed` 0 runs them in reverse, any other
// seed shuffles them with that seed.
inline unsigned g_order_seed = 1;
inline unsigned g_concurrent_blocks = 3;
inline const char* g_kernel = "(none)";
inline std::atomic<const char*> g_running{nullptr};
inline std::atomic<long> g_launch_started_ms{0};
inline dim3& blockDim_ref() {
    static dim3 d;
    return d;
}
inline dim3& gridDim_ref() {
    static dim3 d;
    return d;
}
// Static shared memory per block: 16 KiB, more than any kernel declares.
inline constexpr size_t kStaticWords = 4096;

struct Block;
struct Thread {
    dim3 idx;
    Block* block = nullptr;
    size_t static_cursor = 0;
};
inline thread_local Thread* t_self = nullptr;
inline Thread& self() { return *t_self; }

[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Every shared byte of a fresh block: a float NaN pattern (0x7fc0_0000 repeated reads as
// NaN as a float and as a huge value in any other 4-byte type).
inline void poison(std::vector<uint32_t>& words) { std::fill(words.begin(), words.end(), 0x7fc00000u); }

struct BlockShared {
    std::vector<uint32_t> dynamic_words, static_words;
};

inline long now_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

// A launch that has run longer than EMU_WATCHDOG_S seconds ends the process, naming the
// kernel: a test fails instead of hanging.
inline void start_watchdog() {
    static bool started = false;
    if (started) return;
    started = true;
    const char* env = getenv("EMU_WATCHDOG_S");
    const long limit_ms = (long)((env ? atof(env) : 60.0) * 1000);
    std::thread([limit_ms] {
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            const char* k = g_running.load();
            if (k && now_ms() - g_launch_started_ms.load() > limit_ms) {
                printf("EMULATION ERROR in kernel %s: watchdog: not finished after %.1f s (a loop that never ends, or threads waiting on each other)\n",
                       k, limit_ms / 1000.0);
                fflush(stdout);
                _exit(3);
            }
        }
    }).detach();
}

inline std::vector<unsigned> block_order(unsigned grid) {
    std::vector<unsigned> order(grid);
    for (unsigned b = 0; b < grid; ++b) order[b] = b;
    if (g_order_seed == 0) {
        std::reverse(order.begin(), order.end());
    } else {
        std::mt19937 rng(g_order_seed * 7919u + grid);
        std::shuffle(order.begin(), order.end(), rng);
    }
    return order;
}

#ifndef EMU_OS_THREADS
// ---- fibers: one OS thread, a seeded scheduler, deterministic ----

enum class State { Ready, AtBarrier, AtShuffle, Done };

struct Fiber {
    ucontext_t ctx;
    Thread thread;
    State state = State::Ready;
    std::function<void()> body;
};

struct WarpSync {
    float slots[2][32];
    unsigned arrived = 0, exited = 0, gen = 0;
    unsigned line = 0;
};

struct Block {
    dim3 idx;
    unsigned threads = 0;
    BlockShared shared;
    std::vector<std::unique_ptr<Fiber>> fibers;
    std::vector<WarpSync> warps;
    unsigned arrived = 0, exited = 0, done = 0;
    unsigned barrier_line = 0;
    size_t slab = 0;
};

inline ucontext_t g_scheduler;
inline Fiber* g_current = nullptr;
inline constexpr size_t kStack = 64 << 10;

[[noreturn]] inline void vfail(const char* fmt, va_list ap) {
    printf("EMULATION ERROR in kernel %s", g_kernel);
    if (g_current) printf(" (block %u, thread %u)", g_current->thread.block->idx.x, g_current->thread.idx.x);
    printf(": ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    exit(1);
}
inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(fmt, ap);
}

inline void yield_to_scheduler() { swapcontext(&g_current->ctx, &g_scheduler); }

inline void fiber_entry() {
    Fiber* f = g_current;
    f->body();
    Block& b = *f->thread.block;
    f->state = State::Done;
    b.done++;
    b.exited++;
    if (b.arrived > 0)
        fail("exited while %u thread(s) wait at the __syncthreads of line %u: a barrier not every thread reaches",
             b.arrived, b.barrier_line);
    WarpSync& w = b.warps[f->thread.idx.x / 32];
    w.exited++;
    if (w.arrived > 0)
        fail("exited while %u lane(s) of its warp wait at the shuffle of line %u: a divergent shuffle", w.arrived,
             w.line);
    yield_to_scheduler();
}

inline void release(Block& b, State s, unsigned warp) {
    for (auto& f : b.fibers)
        if (f->state == s && (s == State::AtBarrier || f->thread.idx.x / 32 == warp)) f->state = State::Ready;
}

}  // namespace emu

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    using namespace emu;
    Block& b = *g_current->thread.block;
    if (b.arrived == 0) {
        b.barrier_line = loc.line();
    } else if (b.barrier_line != loc.line()) {
        fail("threads of one block at different __syncthreads (lines %u and %u)", b.barrier_line, loc.line());
    }
    if (++b.arrived + b.exited < b.threads) {
        g_current->state = State::AtBarrier;
        yield_to_scheduler();
        return;
    }
    if (b.exited > 0)
        fail("the __syncthreads of line %u is reached by %u of %u threads: %u exited before it", loc.line(), b.arrived,
             b.threads, b.exited);
    b.arrived = 0;
    release(b, State::AtBarrier, 0);
}

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask,
                             std::source_location loc = std::source_location::current()) {
    using namespace emu;
    if (mask != 0xffffffffu) fail("shuffle with mask %#x: the emulation models full-warp shuffles only", mask);
    Block& b = *g_current->thread.block;
    const unsigned lane = g_current->thread.idx.x % 32;
    WarpSync& w = b.warps[g_current->thread.idx.x / 32];
    if (w.arrived == 0) {
        w.line = loc.line();
    } else if (w.line != loc.line()) {
        fail("lanes of one warp at different shuffles (lines %u and %u): a divergent shuffle", w.line, loc.line());
    }
    // Two slot sets by generation parity: a lane may write the next shuffle's value only
    // after every lane arrived at this one, and every lane reads this one's before it can
    // arrive at the next, so one barrier per shuffle suffices.
    const unsigned gen = w.gen;
    w.slots[gen & 1][lane] = v;
    if (++w.arrived + w.exited < 32) {
        g_current->state = State::AtShuffle;
        yield_to_scheduler();
    } else {
        if (w.exited > 0)
            fail("the shuffle of line %u is reached by %u of 32 lanes: %u exited before it", loc.line(), w.arrived,
                 w.exited);
        w.arrived = 0;
        w.gen++;
        release(b, State::AtShuffle, g_current->thread.idx.x / 32);
    }
    return w.slots[gen & 1][lane ^ (unsigned)lane_mask];
}

namespace emu {

// Runs the fibers of `active` blocks until all are done. The scheduler keeps running the
// lanes of the warp it last ran (in a random order) until none of them can run, then
// picks any ready fiber: a warp runs ahead of the others to its next __syncthreads, the
// way independent warps may on a GPU, and seeded, so that failures reproduce.
inline void schedule(std::vector<Block*>& active, std::vector<unsigned>& pending, std::mt19937& rng,
                     const std::function<Block*(unsigned)>& make) {
    std::vector<Fiber*> ready;
    Block* last_block = nullptr;
    unsigned last_warp = 0;
    for (;;) {
        while (active.size() < g_concurrent_blocks && !pending.empty()) {
            active.push_back(make(pending.back()));
            pending.pop_back();
        }
        if (active.empty()) return;
        ready.clear();
        std::vector<Fiber*> same_warp;
        for (Block* b : active)
            for (auto& f : b->fibers)
                if (f->state == State::Ready) {
                    ready.push_back(f.get());
                    if (b == last_block && f->thread.idx.x / 32 == last_warp) same_warp.push_back(f.get());
                }
        if (ready.empty()) {
            g_current = nullptr;
            std::string what;
            for (Block* b : active) {
                what += " block " + std::to_string(b->idx.x) + ": " + std::to_string(b->arrived) + " of " +
                        std::to_string(b->threads) + " threads at __syncthreads line " +
                        std::to_string(b->barrier_line) + ";";
            }
            fail("deadlock, every thread waits:%s", what.c_str());
        }
        auto& pool = same_warp.empty() ? ready : same_warp;
        Fiber* f = pool[rng() % pool.size()];
        last_block = f->thread.block;
        last_warp = f->thread.idx.x / 32;
        g_current = f;
        t_self = &f->thread;
        swapcontext(&g_scheduler, &f->ctx);
        g_current = nullptr;
        for (size_t i = 0; i < active.size();) {
            if (active[i]->done == active[i]->threads) {
                delete active[i];
                active.erase(active.begin() + i);
            } else {
                ++i;
            }
        }
    }
}

template <class F, class... A>
void launch_named(const char* name, F f, unsigned grid, unsigned block, size_t shared_bytes, A... args) {
    g_kernel = name;
    if (block == 0 || block % 32 != 0)
        fail("a block of %u threads is not a whole number of warps: the kernels' full-mask shuffles need all 32 lanes of every warp",
             block);
    start_watchdog();
    g_launch_started_ms = now_ms();
    g_running = name;
    gridDim_ref().x = grid;
    blockDim_ref().x = block;
    std::vector<unsigned> order = block_order(grid);
    std::reverse(order.begin(), order.end());  // taken from the back
    std::mt19937 rng(g_order_seed + 17u * grid + block);
    // One stack slab per slot of the active set, reused by the blocks that follow.
    std::vector<std::unique_ptr<char[]>> slabs;
    std::vector<Block*> active;
    std::function<Block*(unsigned)> make = [&](unsigned bi) {
        Block* b = new Block;
        b->idx.x = bi;
        b->threads = block;
        b->shared.dynamic_words.resize(shared_bytes / 4 + 1);
        b->shared.static_words.resize(kStaticWords);
        poison(b->shared.dynamic_words);
        poison(b->shared.static_words);
        b->warps.resize(block / 32);
        std::vector<bool> busy(slabs.size(), false);
        for (Block* a : active) busy[a->slab] = true;
        b->slab = std::find(busy.begin(), busy.end(), false) - busy.begin();
        if (b->slab == slabs.size()) slabs.emplace_back(new char[kStack * block]);
        for (unsigned t = 0; t < block; ++t) {
            auto fb = std::make_unique<Fiber>();
            fb->thread.idx.x = t;
            fb->thread.block = b;
            fb->body = [=] { f(args...); };
            getcontext(&fb->ctx);
            fb->ctx.uc_stack.ss_sp = slabs[b->slab].get() + t * kStack;
            fb->ctx.uc_stack.ss_size = kStack;
            fb->ctx.uc_link = nullptr;
            makecontext(&fb->ctx, fiber_entry, 0);
            b->fibers.push_back(std::move(fb));
        }
        return b;
    };
    schedule(active, order, rng, make);
    g_running = nullptr;
}

#else
// ---- OS threads: every GPU thread of a block concurrently, for ThreadSanitizer ----

struct Block {
    dim3 idx;
    BlockShared shared;
    std::unique_ptr<std::barrier<>> barrier;
    struct Warp {
        float slots[32];
        std::unique_ptr<std::barrier<>> bar;
    };
    std::vector<Warp> warps;
};

inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("EMULATION ERROR in kernel %s: ", g_kernel);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    exit(1);
}

}  // namespace emu

inline void __syncthreads() { emu::self().block->barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned lane = emu::self().idx.x % 32;
    auto& w = emu::self().block->warps[emu::self().idx.x / 32];
    w.slots[lane] = v;
    w.bar->arrive_and_wait();
    const float r = w.slots[lane ^ (unsigned)lane_mask];
    w.bar->arrive_and_wait();
    return r;
}

namespace emu {

template <class F, class... A>
void launch_named(const char* name, F f, unsigned grid, unsigned block, size_t shared_bytes, A... args) {
    g_kernel = name;
    if (block == 0 || block % 32 != 0)
        fail("a block of %u threads is not a whole number of warps: the kernels' full-mask shuffles need all 32 lanes of every warp",
             block);
    start_watchdog();
    g_launch_started_ms = now_ms();
    g_running = name;
    gridDim_ref().x = grid;
    blockDim_ref().x = block;
    std::vector<unsigned> order = block_order(grid);
    for (size_t first = 0; first < order.size(); first += g_concurrent_blocks) {
        std::vector<std::unique_ptr<Block>> blocks;
        std::vector<std::thread> ts;
        for (size_t i = first; i < std::min(order.size(), first + g_concurrent_blocks); ++i) {
            auto b = std::make_unique<Block>();
            b->idx.x = order[i];
            b->shared.dynamic_words.resize(shared_bytes / 4 + 1);
            b->shared.static_words.resize(kStaticWords);
            poison(b->shared.dynamic_words);
            poison(b->shared.static_words);
            b->barrier = std::make_unique<std::barrier<>>(block);
            b->warps.resize(block / 32);
            for (auto& w : b->warps) w.bar = std::make_unique<std::barrier<>>(32);
            Block* raw = b.get();
            for (unsigned t = 0; t < block; ++t)
                ts.emplace_back([=] {
                    Thread th;
                    th.idx.x = t;
                    th.block = raw;
                    t_self = &th;
                    f(args...);
                });
            blocks.push_back(std::move(b));
        }
        for (auto& t : ts) t.join();
    }
    g_running = nullptr;
}
#endif

// `extern __shared__ T name[]`: the block's dynamic shared memory.
template <class T>
T* dynamic_shared() {
    return reinterpret_cast<T*>(self().block->shared.dynamic_words.data());
}

// `__shared__ T name[n]`: the next n elements of the block's static shared memory. Every
// thread of a block runs the same declarations in the same order, so each gets the same
// address for the same array.
template <class T>
T* static_shared(size_t n) {
    Thread& t = self();
    auto& words = t.block->shared.static_words;
    const size_t at = t.static_cursor;
    t.static_cursor += (n * sizeof(T) + 15) / 16 * 4;
    if (t.static_cursor > words.size()) fail("more static shared memory than the emulation's 16 KiB");
    return reinterpret_cast<T*>(words.data() + at);
}

}  // namespace emu

#define threadIdx (emu::self().idx)
#define blockIdx (emu::self().block->idx)
#define blockDim (emu::blockDim_ref())
#define gridDim (emu::gridDim_ref())
#define launch(f, ...) emu::launch_named(#f, f, __VA_ARGS__)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

// cuda_fp16.h and cuda_bf16.h: the half storage types and their conversions, rounding to
// nearest even as __float2half_rn and __float2bfloat16_rn do.
struct __half {
    _Float16 v;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half_rn(float f) { return __half{(_Float16)f}; }
inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t u = (uint32_t)b.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}

inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}
