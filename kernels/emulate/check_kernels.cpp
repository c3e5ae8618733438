// Runs every kernel of kernels/*.cu under the CPU emulation of shim.h, with the launch
// geometry src/backend/cuda uses (context.rs Grid), on small random inputs, against
// references in double: the GPU's results are only checked on a GPU, this checks the
// kernels' logic everywhere. Attention runs as ops.rs issues it, cuBLAS replaced by a
// model of its column-major sgemm and the row-major mapping of ops.rs (Gemm::col_major).
// Every check runs in three passes: blocks in reverse order, then two seeded shuffles;
// the first shuffle caps the grid of grid-stride kernels so that each thread loops.
// `check_kernels NAME` runs only the checks whose name contains NAME.
// Prints one line per check; exit status 1 when one fails.
#include "activation.cu"
#include "attention.cu"
#include "embeddings.cu"
#include "head.cu"
#include "layernorm.cu"
#include "pooling.cu"
#include "rows.cu"
#include <cstdio>
#include <random>
#include <algorithm>
using namespace std;
static mt19937 rng(5);
vector<float> U(size_t n, float lo, float hi) { uniform_real_distribution<float> d(lo, hi); vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
static int fails = 0;
void check(const char* name, const vector<float>& got, const vector<double>& want, double tol) {
    double worst = 0; size_t wi = 0;
    for (size_t i = 0; i < want.size(); ++i) { double e = isnan(got[i]) ? 1e30 : fabs(got[i] - want[i]) / (1 + fabs(want[i])); if (e > worst) { worst = e; wi = i; } }
    bool ok = worst <= tol; fails += !ok;
    printf("%s %-52s worst %.2e at %zu (got %g want %g)\n", ok ? "ok  " : "FAIL", name, worst, wi, got[wi], want[wi]);
}
// Grid helpers mirroring src/backend/cuda/context.rs
static bool g_cap_grid = false;
unsigned ew_blocks(size_t n) {
    unsigned blocks = (unsigned)std::clamp<size_t>((n + 255) / 256, 1, 1 << 16);
    return g_cap_grid ? std::max(1u, blocks / 4) : blocks;
}
unsigned row_threads(size_t w) { return (unsigned)std::clamp<size_t>((w + 31) / 32 * 32, 32, 256); }
vector<double> ln_ref(vector<double> row, const vector<float>& g, const vector<float>& b, double eps) {
    double m = 0; for (double v : row) m += v; m /= row.size();
    double var = 0; for (double v : row) var += (v - m) * (v - m); var /= row.size();
    for (size_t i = 0; i < row.size(); ++i) row[i] = (row[i] - m) / sqrt(var + eps) * g[i] + b[i];
    return row;
}
// cuBLAS column-major sgemm model + the row-major mapping of ops.rs Gemm::col_major
void rm_gemm_batched(bool ta, bool tb, int m, int n, int k, float beta, const float* a, const float* b, float* c, int batch, long sa, long sb, long sc) {
    int cm_m = n, cm_n = m; bool cta = tb, ctb = ta; int lda = tb ? k : n, ldb = ta ? m : k, ldc = n;
    for (int z = 0; z < batch; ++z) {
        const float* A = b + z * sb; const float* B = a + z * sa; float* C = c + z * sc;
        for (int j = 0; j < cm_n; ++j) for (int i = 0; i < cm_m; ++i) {
            float acc = 0;
            for (int l = 0; l < k; ++l) acc += (cta ? A[l + i * lda] : A[i + l * lda]) * (ctb ? B[j + l * ldb] : B[l + j * ldb]);
            C[i + j * ldc] = beta == 0 ? acc : acc + beta * C[i + j * ldc]; // cuBLAS reads no C when beta = 0
        }
    }
}
void test_embeddings(int C) {
    int V = 30, P = 20; vector<unsigned> lens = {5, 1, 4};
    vector<unsigned> ids, pos, ty; for (unsigned L : lens) for (unsigned p = 0; p < L; ++p) { ids.push_back(rng() % V); pos.push_back(p); ty.push_back(rng() % 2); }
    int T = ids.size();
    auto w = U(V * C, 3, 5), pe = U(P * C, -1, 1), te = U(2 * C, -1, 1), g = U(C, .5, 1.5), b = U(C, -.5, .5);
    vector<float> out(T * C, NAN);
    launch(embeddings_layernorm_forward, T, row_threads(C), C * 4, out.data(), ids.data(), pos.data(), ty.data(), w.data(), pe.data(), te.data(), g.data(), b.data(), T, C, 1e-12f);
    vector<double> want;
    for (int t = 0; t < T; ++t) { vector<double> row(C); for (int i = 0; i < C; ++i) row[i] = (double)w[ids[t] * C + i] + te[ty[t] * C + i] + pe[pos[t] * C + i]; auto r = ln_ref(row, g, b, 1e-12); want.insert(want.end(), r.begin(), r.end()); }
    char name[64]; snprintf(name, 64, "embeddings_layernorm C=%d", C); check(name, out, want, 1e-5);
}
void test_layernorm(int rows, int C) {
    auto x = U(rows * C, -3, 3), bias = U(C, -1, 1), res = U(rows * C, 5, 7), g = U(C, .5, 1.5), b = U(C, -.5, .5);
    vector<double> want;
    for (int r = 0; r < rows; ++r) { vector<double> row(C); for (int i = 0; i < C; ++i) row[i] = (double)x[r * C + i] + bias[i] + res[r * C + i]; auto o = ln_ref(row, g, b, 1e-12); want.insert(want.end(), o.begin(), o.end()); }
    launch(bias_residual_layernorm_forward, rows, row_threads(C), C * 4, x.data(), bias.data(), res.data(), g.data(), b.data(), rows, C, 1e-12f);
    char name[64]; snprintf(name, 64, "bias_residual_layernorm rows=%d C=%d", rows, C); check(name, x, want, 1e-5);
}
void test_act() {
    int rows = 3, F = 130; auto x0 = U(rows * F, -6, 6), bias = U(F, -1, 1);
    struct { const char* n; void (*k)(float*, const float*, int, int); double (*r)(double); } acts[] = {
        {"gelu_erf", bias_gelu_erf_forward, [](double v) { return 0.5 * v * (1 + erf(v / sqrt(2.0))); }},
        {"gelu_tanh", bias_gelu_tanh_forward, [](double v) { return 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }},
        {"relu", bias_relu_forward, [](double v) { return v > 0 ? v : 0; }}};
    for (auto& a : acts) {
        auto x = x0; vector<double> want(rows * F);
        for (int i = 0; i < rows * F; ++i) want[i] = a.r((double)x[i] + bias[i % F]);
        emu::launch_named(a.n, a.k, ew_blocks(rows * F), 256, 0, x.data(), bias.data(), rows, F);
        check(a.n, x, want, 1e-6);
    }
}
// The attention op as ops.rs issues it, chunks given.
void test_attention(vector<unsigned> lens, int H, int hd, bool all, vector<pair<int,int>> chunks) {
    int C = H * hd; vector<unsigned> off = {0}; for (auto l : lens) off.push_back(off.back() + l);
    int T = off.back(), n = lens.size();
    auto qkv = U(T * 3 * C, -2, 2);
    vector<float> out((all ? T : n) * C, NAN);
    size_t cap = 4096 * 8; vector<float> q(cap, NAN), k(cap, NAN), v(cap, NAN), ctx(cap, NAN), sc(cap, NAN);
    float scale = (float)(1.0 / sqrt((double)hd));
    for (auto [first, nc] : chunks) {
        int L = 0; for (int i = first; i < first + nc; ++i) L = max<int>(L, lens[i]);
        int lq = all ? L : 1; const unsigned* co = off.data() + first;
        launch(attention_gather_qkv, ew_blocks(nc * H * L * hd), 256, 0, q.data(), k.data(), v.data(), (const float*)qkv.data(), co, nc, H, L, lq, hd);
        rm_gemm_batched(false, true, lq, L, hd, 0, q.data(), k.data(), sc.data(), nc * H, lq * hd, L * hd, lq * L);
        launch(attention_softmax_scale_mask, (nc * H * lq + 7) / 8, 256, 0, sc.data(), co, nc, H, lq, L, scale);
        rm_gemm_batched(false, false, lq, hd, L, 0, sc.data(), v.data(), ctx.data(), nc * H, lq * L, L * hd, lq * hd);
        launch(attention_scatter_context, ew_blocks(nc * H * lq * hd), 256, 0, out.data(), (const float*)ctx.data(), co, nc, H, lq, hd, (int)all, first);
    }
    vector<double> want;
    auto at = [&](int row, int part, int h, int i) { return (double)qkv[row * 3 * C + part * C + h * hd + i]; };
    for (int t = 0; t < n; ++t) {
        int s = off[t], len = lens[t];
        for (int qi = 0; qi < (all ? len : 1); ++qi) {
            vector<double> row(C);
            for (int h = 0; h < H; ++h) {
                vector<double> e(len); double mx = -1e300;
                for (int j = 0; j < len; ++j) { double d = 0; for (int i = 0; i < hd; ++i) d += at(s + qi, 0, h, i) * at(s + j, 1, h, i); e[j] = d / sqrt((double)hd); mx = max(mx, e[j]); }
                double z = 0; for (auto& x : e) { x = exp(x - mx); z += x; }
                for (int i = 0; i < hd; ++i) { double acc = 0; for (int j = 0; j < len; ++j) acc += e[j] / z * at(s + j, 2, h, i); row[h * hd + i] = acc; }
            }
            want.insert(want.end(), row.begin(), row.end());
        }
    }
    char name[96]; snprintf(name, 96, "attention %s H=%d hd=%d chunks=%zu", all ? "All" : "ClsOnly", H, hd, chunks.size()); check(name, out, want, 1e-5);
}
void test_rows() {
    int W = 40; auto src = U(9 * W, -1, 1); vector<unsigned> rows = {0, 8, 3, 3};
    vector<float> dst(rows.size() * W, NAN); vector<double> want;
    for (auto r : rows) for (int i = 0; i < W; ++i) want.push_back(src[r * W + i]);
    launch(gather_rows, ew_blocks(dst.size()), 256, 0, dst.data(), (const float*)src.data(), (const unsigned*)rows.data(), (int)rows.size(), W);
    check("gather_rows", dst, want, 0);
    auto bias = U(W, -1, 1); vector<float> o(5 * W, NAN); vector<double> wb; for (int r = 0; r < 5; ++r) for (int i = 0; i < W; ++i) wb.push_back(bias[i]);
    launch(broadcast_bias_rows, ew_blocks(o.size()), 256, 0, o.data(), (const float*)bias.data(), 5, W);
    check("broadcast_bias_rows", o, wb, 0);
}
// Texts of 1, 5 and 300 tokens (the last longer than a block) over C = 40 and 384.
void test_pooling(int C) {
    vector<unsigned> off = {0, 1, 6, 306}; int n = off.size() - 1, T = off.back();
    auto hidden = U(T * C, -3, 3);
    vector<float> out(n * C, NAN); vector<double> want;
    for (int i = 0; i < n; ++i) for (int c = 0; c < C; ++c) { double s = 0; for (unsigned t = off[i]; t < off[i + 1]; ++t) s += hidden[t * C + c]; want.push_back(s / (off[i + 1] - off[i])); }
    launch(mean_pool_rows, ew_blocks(n * C), 256, 0, out.data(), (const float*)hidden.data(), (const unsigned*)off.data(), n, C);
    // f32 sums of up to 300 terms of |x| <= 3: relative error ~300 * 6e-8 at worst.
    char name[64]; snprintf(name, 64, "mean_pool_rows C=%d", C); check(name, out, want, 2e-5);
}
void test_head() {
    int n = 37, K = 3; auto logits = U(n * K, -4, 4); vector<unsigned> labels(n); for (auto& y : labels) y = rng() % K;
    logits[0] = logits[1]; // a tie: the first arg max counts
    vector<float> loss(n, NAN), dl(n * K, NAN), corr(n, NAN);
    launch(softmax_cross_entropy_backward, (n + 7) / 8, 256, 0, loss.data(), dl.data(), corr.data(), (const float*)logits.data(), (const unsigned*)labels.data(), n, K);
    vector<double> wl, wd, wc;
    for (int i = 0; i < n; ++i) {
        double m = -1e300; int arg = 0; for (int j = 0; j < K; ++j) { m = max(m, (double)logits[i * K + j]); if (logits[i * K + j] > logits[i * K + arg]) arg = j; }
        double z = 0; for (int j = 0; j < K; ++j) z += exp(logits[i * K + j] - m);
        wl.push_back(m + log(z) - logits[i * K + labels[i]]);
        for (int j = 0; j < K; ++j) wd.push_back((exp(logits[i * K + j] - m) / z - (j == (int)labels[i])) / n);
        wc.push_back(arg == (int)labels[i]);
    }
    check("softmax_cross_entropy loss", loss, wl, 1e-6); check("softmax_cross_entropy dlogits", dl, wd, 1e-7); check("softmax_cross_entropy correct", corr, wc, 0);
    vector<float> db(K, NAN); vector<double> wdb(K, 0); for (int i = 0; i < n; ++i) for (int j = 0; j < K; ++j) wdb[j] += dl[i * K + j];
    launch(bias_grad_column_sum, K, 256, 0, db.data(), (const float*)dl.data(), n, K);
    check("bias_grad_column_sum", db, wdb, 1e-7);
    // AdamW: the same float ops as optim::AdamW::update, step 3, must agree bit for bit.
    int len = 300; auto p = U(len, -1, 1), g = U(len, -0.01, 0.01), m = U(len, -1e-3, 1e-3), v = U(len, 0, 1e-5);
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wdc = 0.01, t = 3;
    float decay = 1 - lr * wdc, w1 = 1 - b1, fb2 = b2, omb2 = 1 - b2, feps = eps, step = lr / (1 - pow(b1, t)), bc2 = sqrt(1 - pow(b2, t));
    vector<float> P = p, M = m, Vv = v; vector<double> wp;
    for (int i = 0; i < len; ++i) { float pp = P[i] * decay; float mm = M[i] + w1 * (g[i] - M[i]); float vv = Vv[i] * fb2 + omb2 * g[i] * g[i]; float den = sqrtf(vv) / bc2 + feps; pp += -step * (mm / den); wp.push_back(pp); }
    launch(adamw_update, ew_blocks(len), 256, 0, p.data(), (const float*)g.data(), m.data(), v.data(), len, decay, w1, fb2, omb2, feps, step, bc2);
    check("adamw_update (bit-exact)", p, wp, 0);
}
// AdamW against src/optim.rs itself: tests/backend_ops.rs runs optim::AdamW and writes
// the case as f32 bit patterns, one value a line: len, the 7 scalars the backend passes,
// then per element p g m v and optim.rs's p m v after the step. Bit-exact.
int check_adamw_case(const char* path) {
    FILE* f = fopen(path, "r");
    if (!f) { printf("FAIL cannot open %s\n", path); return 1; }
    auto next = [&] { unsigned bits = 0; if (fscanf(f, "%u", &bits) != 1) { printf("FAIL short case file\n"); exit(1); } float v; memcpy(&v, &bits, 4); return v; };
    unsigned len = 0; if (fscanf(f, "%u", &len) != 1) return 1;
    float s[7]; for (float& x : s) x = next();
    vector<float> p(len), g(len), m(len), v(len); vector<double> wp(len), wm(len), wv(len);
    for (unsigned i = 0; i < len; ++i) { p[i] = next(); g[i] = next(); m[i] = next(); v[i] = next(); wp[i] = next(); wm[i] = next(); wv[i] = next(); }
    fclose(f);
    launch(adamw_update, ew_blocks(len), 256, 0, p.data(), (const float*)g.data(), m.data(), v.data(), (int)len, s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
    check("adamw_update vs optim.rs param (bit-exact)", p, wp, 0);
    check("adamw_update vs optim.rs exp_avg (bit-exact)", m, wm, 0);
    check("adamw_update vs optim.rs exp_avg_sq (bit-exact)", v, wv, 0);
    return fails != 0;
}
int main(int argc, char** argv) {
    if (const char* path = getenv("EMU_ADAMW_CASE")) return check_adamw_case(path);
    const string only = argc > 1 ? argv[1] : "";
    auto want = [&](const char* name) { return string(name).find(only) != string::npos || only.empty(); };
    struct Pass { unsigned seed; bool cap; const char* what; };
    for (Pass pass : {Pass{0, false, "blocks reversed"}, Pass{1, true, "blocks shuffled (seed 1), grid-stride grids capped"}, Pass{2, false, "blocks shuffled (seed 2)"}}) {
        printf("-- %s, %u blocks at a time\n", pass.what, emu::g_concurrent_blocks);
        emu::g_order_seed = pass.seed; g_cap_grid = pass.cap;
        if (want("embeddings")) { test_embeddings(48); test_embeddings(100); test_embeddings(768); }
        if (want("layernorm")) { test_layernorm(4, 770); test_layernorm(2, 32); }
        if (want("activation")) test_act();
        if (want("attention"))
            for (bool all : {true, false}) {
                test_attention({7, 1, 16, 3}, 4, 8, all, {{0, 4}});
                test_attention({7, 1, 16, 3}, 4, 8, all, {{0, 1}, {1, 2}, {3, 1}});
                test_attention({33, 2}, 2, 64, all, {{0, 2}});
            }
        if (want("rows")) test_rows();
        if (want("pooling")) { test_pooling(40); test_pooling(384); }
        if (want("head")) test_head();
    }
    printf("%s\n", fails ? "SOME FAILED" : "ALL OK"); return fails != 0;
}
