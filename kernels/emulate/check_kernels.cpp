// Runs every kernel of kernels/*.cu under the CPU emulation of shim.h, with the launch
// geometry src/backend/cuda uses (context.rs Grid), on small random inputs, against
// references in double: the GPU's results are only checked on a GPU, this checks the
// kernels' logic everywhere. Attention runs as ops.rs issues it, cuBLAS replaced by a
// model of its column-major GEMM (sgemm, or GemmEx with fp32 accumulation in half
// precision) and the row-major mapping of ops.rs (Gemm::col_major).
// Every check runs in three passes: blocks in reverse order, then two seeded shuffles;
// the first shuffle caps the grid of grid-stride kernels so that each thread loops.
// The encoder's kernels run in each storage type (float, __half, __nv_bfloat16) on
// inputs rounded to that type, against the double reference on the same rounded inputs:
// what is left is the kernel's own error, bounded per op by the type's unit roundoff u
// (fp16 2^-11 = 4.9e-4, 11 significant bits; bf16 2^-8 = 3.9e-3, 8 bits).
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
#include <type_traits>
using namespace std;
static mt19937 rng(5);
vector<float> U(size_t n, float lo, float hi) { uniform_real_distribution<float> d(lo, hi); vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
static int fails = 0;
void check(const char* name, const vector<float>& got, const vector<double>& want, double tol) {
    double worst = 0; size_t wi = 0;
    for (size_t i = 0; i < want.size(); ++i) { double e = isnan(got[i]) || !isfinite(want[i]) ? 1e30 : fabs(got[i] - want[i]) / (1 + fabs(want[i])); if (e > worst) { worst = e; wi = i; } }
    bool ok = worst <= tol; fails += !ok;
    printf("%s %-58s worst %.2e (tol %.1e) at %zu (got %g want %g)\n", ok ? "ok  " : "FAIL", name, worst, tol, wi, got[wi], want[wi]);
}
// Storage types: S is float, __half or __nv_bfloat16.
template <class S> constexpr double unit_roundoff() { return is_same_v<S, float> ? 0.0 : is_same_v<S, __half> ? 1.0 / 2048 : 1.0 / 256; }
template <class S> const char* type_name() { return is_same_v<S, float> ? "f32" : is_same_v<S, __half> ? "f16" : "bf16"; }
template <class S> vector<S> to_s(const vector<float>& v) { vector<S> o; for (float x : v) o.push_back(store<S>(x)); return o; }
template <class S> vector<float> to_f(const vector<S>& v) { vector<float> o; for (S x : v) o.push_back(load(x)); return o; }
// Random inputs already rounded to S: the kernel and the reference see the same values.
template <class S> vector<float> US(size_t n, float lo, float hi) { return to_f(to_s<S>(U(n, lo, hi))); }
template <class S> vector<S> nan_s(size_t n) { return to_s<S>(vector<float>(n, NAN)); }
// The kernel of each storage type and its name: NAME, NAME_f16, NAME_bf16.
#define PICK(name) [] { if constexpr (is_same_v<S, float>) return &name; else if constexpr (is_same_v<S, __half>) return &name##_f16; else return &name##_bf16; }()
#define LAUNCH_S(name, ...) emu::launch_named(is_same_v<S, float> ? #name : is_same_v<S, __half> ? #name "_f16" : #name "_bf16", PICK(name), __VA_ARGS__)
template <class S> string label(const char* fmt, int a = 0, int b = 0) { char buf[96]; snprintf(buf, 96, fmt, a, b); return string(buf) + " " + type_name<S>(); }
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
// cuBLAS column-major GEMM model (fp32 accumulation, one rounding to C's type) + the
// row-major mapping of ops.rs Gemm::col_major
template <class A, class C>
void rm_gemm_batched(bool ta, bool tb, int m, int n, int k, float beta, const A* a, const A* b, C* c, int batch, long sa, long sb, long sc) {
    int cm_m = n, cm_n = m; bool cta = tb, ctb = ta; int lda = tb ? k : n, ldb = ta ? m : k, ldc = n;
    for (int z = 0; z < batch; ++z) {
        const A* MA = b + z * sb; const A* MB = a + z * sa; C* MC = c + z * sc;
        for (int j = 0; j < cm_n; ++j) for (int i = 0; i < cm_m; ++i) {
            float acc = 0;
            for (int l = 0; l < k; ++l) acc += load(cta ? MA[l + i * lda] : MA[i + l * lda]) * load(ctb ? MB[j + l * ldb] : MB[l + j * ldb]);
            MC[i + j * ldc] = store<C>(beta == 0 ? acc : acc + beta * load(MC[i + j * ldc])); // cuBLAS reads no C when beta = 0
        }
    }
}
// One output rounding: |err| <= u |y|, so err / (1 + |y|) <= u; fp32 statistics add ~1e-6.
template <class S> void test_embeddings(int C) {
    int V = 30, P = 20; vector<unsigned> lens = {5, 1, 4};
    vector<unsigned> ids, pos, ty; for (unsigned L : lens) for (unsigned p = 0; p < L; ++p) { ids.push_back(rng() % V); pos.push_back(p); ty.push_back(rng() % 2); }
    int T = ids.size();
    auto w = US<S>(V * C, 3, 5), pe = US<S>(P * C, -1, 1), te = US<S>(2 * C, -1, 1), g = US<S>(C, .5, 1.5), b = US<S>(C, -.5, .5);
    auto out = nan_s<S>(T * C);
    auto ws = to_s<S>(w), pes = to_s<S>(pe), tes = to_s<S>(te), gs = to_s<S>(g), bs = to_s<S>(b);
    LAUNCH_S(embeddings_layernorm_forward, T, row_threads(C), C * 4, out.data(), (const unsigned*)ids.data(), (const unsigned*)pos.data(), (const unsigned*)ty.data(), (const S*)ws.data(), (const S*)pes.data(), (const S*)tes.data(), (const S*)gs.data(), (const S*)bs.data(), T, C, 1e-12f);
    vector<double> want;
    for (int t = 0; t < T; ++t) { vector<double> row(C); for (int i = 0; i < C; ++i) row[i] = (double)w[ids[t] * C + i] + te[ty[t] * C + i] + pe[pos[t] * C + i]; auto r = ln_ref(row, g, b, 1e-12); want.insert(want.end(), r.begin(), r.end()); }
    check(label<S>("embeddings_layernorm C=%d", C).c_str(), to_f(out), want, unit_roundoff<S>() + 1e-5);
}
// As embeddings: one output rounding, u.
template <class S> void test_layernorm(int rows, int C) {
    auto x = US<S>(rows * C, -3, 3), bias = US<S>(C, -1, 1), res = US<S>(rows * C, 5, 7), g = US<S>(C, .5, 1.5), b = US<S>(C, -.5, .5);
    vector<double> want;
    for (int r = 0; r < rows; ++r) { vector<double> row(C); for (int i = 0; i < C; ++i) row[i] = (double)x[r * C + i] + bias[i] + res[r * C + i]; auto o = ln_ref(row, g, b, 1e-12); want.insert(want.end(), o.begin(), o.end()); }
    auto xs = to_s<S>(x), bs_ = to_s<S>(bias), rs = to_s<S>(res), gs = to_s<S>(g), bts = to_s<S>(b);
    LAUNCH_S(bias_residual_layernorm_forward, rows, row_threads(C), C * 4, xs.data(), (const S*)bs_.data(), (const S*)rs.data(), (const S*)gs.data(), (const S*)bts.data(), rows, C, 1e-12f);
    check(label<S>("bias_residual_layernorm rows=%d C=%d", rows, C).c_str(), to_f(xs), want, unit_roundoff<S>() + 1e-5);
}
// One output rounding of act(x + b) computed in fp32: u.
template <class S> void test_act() {
    int rows = 3, F = 130; auto x0 = US<S>(rows * F, -6, 6), bias = US<S>(F, -1, 1);
    struct { const char* n; void (*k)(S*, const S*, int, int); double (*r)(double); } acts[] = {
        {"gelu_erf", PICK(bias_gelu_erf_forward), [](double v) { return 0.5 * v * (1 + erf(v / sqrt(2.0))); }},
        {"gelu_tanh", PICK(bias_gelu_tanh_forward), [](double v) { return 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }},
        {"relu", PICK(bias_relu_forward), [](double v) { return v > 0 ? v : 0; }}};
    for (auto& a : acts) {
        auto x = to_s<S>(x0), bs = to_s<S>(bias); vector<double> want(rows * F);
        for (int i = 0; i < rows * F; ++i) want[i] = a.r((double)x0[i] + bias[i % F]);
        emu::launch_named(a.n, a.k, ew_blocks(rows * F), 256, 0, x.data(), (const S*)bs.data(), rows, F);
        check(label<S>(a.n).c_str(), to_f(x), want, unit_roundoff<S>() + 1e-6);
    }
}
// The attention op as ops.rs issues it, chunks given. Scores fp32; in half precision the
// probabilities are rounded (relative u each) and so is the context: |err| <= u sum_j p_j
// |v_j| + u |ctx| <= 2u max|v| = 4u for |v| <= 2.
template <class S> void test_attention(vector<unsigned> lens, int H, int hd, bool all, vector<pair<int,int>> chunks) {
    int C = H * hd; vector<unsigned> off = {0}; for (auto l : lens) off.push_back(off.back() + l);
    int T = off.back(), n = lens.size();
    auto qkv = US<S>(T * 3 * C, -2, 2); auto qkvs = to_s<S>(qkv);
    auto out = nan_s<S>((all ? T : n) * C);
    size_t cap = 4096 * 8; auto q = nan_s<S>(cap), k = nan_s<S>(cap), v = nan_s<S>(cap), ctx = nan_s<S>(cap); vector<float> sc(cap, NAN);
    // fp32: the probabilities overwrite the scores (ops.rs passes one buffer twice).
    vector<S> probs_half = nan_s<S>(cap);
    S* probs = is_same_v<S, float> ? (S*)(void*)sc.data() : probs_half.data();
    float scale = (float)(1.0 / sqrt((double)hd));
    for (auto [first, nc] : chunks) {
        int L = 0; for (int i = first; i < first + nc; ++i) L = max<int>(L, lens[i]);
        int lq = all ? L : 1; const unsigned* co = off.data() + first;
        LAUNCH_S(attention_gather_qkv, ew_blocks(nc * H * L * hd), 256, 0, q.data(), k.data(), v.data(), (const S*)qkvs.data(), co, nc, H, L, lq, hd);
        rm_gemm_batched<S, float>(false, true, lq, L, hd, 0, q.data(), k.data(), sc.data(), nc * H, lq * hd, L * hd, lq * L);
        LAUNCH_S(attention_softmax_scale_mask, (nc * H * lq + 7) / 8, 256, 0, (const float*)sc.data(), probs, co, nc, H, lq, L, scale);
        rm_gemm_batched<S, S>(false, false, lq, hd, L, 0, probs, v.data(), ctx.data(), nc * H, lq * L, L * hd, lq * hd);
        LAUNCH_S(attention_scatter_context, ew_blocks(nc * H * lq * hd), 256, 0, out.data(), (const S*)ctx.data(), co, nc, H, lq, hd, (int)all, first);
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
    char name[96]; snprintf(name, 96, "attention %s H=%d hd=%d chunks=%zu %s", all ? "All" : "ClsOnly", H, hd, chunks.size(), type_name<S>()); check(name, to_f(out), want, 4 * unit_roundoff<S>() + 1e-5);
}
// Copies: exact in every type.
template <class S> void test_rows() {
    int W = 40; auto src = US<S>(9 * W, -1, 1); auto srcs = to_s<S>(src); vector<unsigned> rows = {0, 8, 3, 3};
    auto dst = nan_s<S>(rows.size() * W); vector<double> want;
    for (auto r : rows) for (int i = 0; i < W; ++i) want.push_back(src[r * W + i]);
    LAUNCH_S(gather_rows, ew_blocks(dst.size()), 256, 0, dst.data(), (const S*)srcs.data(), (const unsigned*)rows.data(), (int)rows.size(), W);
    check(label<S>("gather_rows").c_str(), to_f(dst), want, 0);
    auto bias = US<S>(W, -1, 1); auto bs = to_s<S>(bias); auto o = nan_s<S>(5 * W); vector<double> wb; for (int r = 0; r < 5; ++r) for (int i = 0; i < W; ++i) wb.push_back(bias[i]);
    LAUNCH_S(broadcast_bias_rows, ew_blocks(o.size()), 256, 0, o.data(), (const S*)bs.data(), 5, W);
    check(label<S>("broadcast_bias_rows").c_str(), to_f(o), wb, 0);
}
// Texts of 1, 5 and 300 tokens (the last longer than a block) over C = 40 and 384.
// f32 sums of up to 300 terms of |x| <= 3: relative error ~300 * 6e-8 at worst; in half
// one more rounding of the mean, u.
template <class S> void test_pooling(int C) {
    vector<unsigned> off = {0, 1, 6, 306}; int n = off.size() - 1, T = off.back();
    auto hidden = US<S>(T * C, -3, 3); auto hs = to_s<S>(hidden);
    auto out = nan_s<S>(n * C); vector<double> want;
    for (int i = 0; i < n; ++i) for (int c = 0; c < C; ++c) { double s = 0; for (unsigned t = off[i]; t < off[i + 1]; ++t) s += hidden[t * C + c]; want.push_back(s / (off[i + 1] - off[i])); }
    LAUNCH_S(mean_pool_rows, ew_blocks(n * C), 256, 0, out.data(), (const S*)hs.data(), (const unsigned*)off.data(), n, C);
    check(label<S>("mean_pool_rows C=%d", C).c_str(), to_f(out), want, unit_roundoff<S>() + 2e-5);
}
// The head with random class weights (torch's weighted CrossEntropyLoss): each example's
// share s = w[y] / sum w[y_i], rounded to f32 as src/backend/cuda/head.rs loss_scales does.
void test_head() {
    int n = 37, K = 3; auto logits = U(n * K, -4, 4); vector<unsigned> labels(n); for (auto& y : labels) y = rng() % K;
    logits[0] = logits[1]; // a tie: the first arg max counts
    auto w = U(K, 0.2, 3); double total = 0; for (auto y : labels) total += w[y];
    vector<float> scale(K); for (int c = 0; c < K; ++c) scale[c] = (float)(w[c] / total);
    vector<float> loss(n, NAN), dl(n * K, NAN), corr(n, NAN);
    launch(softmax_cross_entropy_backward, (n + 7) / 8, 256, 0, loss.data(), dl.data(), corr.data(), (const float*)logits.data(), (const unsigned*)labels.data(), (const float*)scale.data(), n, K);
    vector<double> wl, wd, wc;
    for (int i = 0; i < n; ++i) {
        double s = w[labels[i]] / total;
        double m = -1e300; int arg = 0; for (int j = 0; j < K; ++j) { m = max(m, (double)logits[i * K + j]); if (logits[i * K + j] > logits[i * K + arg]) arg = j; }
        double z = 0; for (int j = 0; j < K; ++j) z += exp(logits[i * K + j] - m);
        wl.push_back(s * (m + log(z) - logits[i * K + labels[i]]));
        for (int j = 0; j < K; ++j) wd.push_back(s * (exp(logits[i * K + j] - m) / z - (j == (int)labels[i])));
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
// The head's loss and gradient against src/head.rs itself: tests/backend_ops.rs runs
// LinearHead::forward_backward_weighted and writes the case as f32 bit patterns, one value
// a line: n K C, the logits (n K), labels (n, as integers), loss_scales (K), x (n C), then
// the CPU's loss, dW (K C) and db (K). Here the GPU head's step: the kernel, the loss
// summed in double (the host sums in f64), dW = dlogits^T x by the cuBLAS model and db
// by bias_grad_column_sum. Tolerances: each example's loss is off by a few f32 roundings
// of terms up to |m| + log K + |x_y| (logits in [-4, 4]), times s rounded once; the mean
// is a convex combination, so 1e-6 of 1 + |loss| bounds it. dW and db sum n terms
// s |p - onehot| |x| with sum s = 1 and |x| <= 2: f32 accumulation over n rows plus ~4
// roundings per term bounds the error by (n + 4) u 2 with u = 2^-24.
int check_head_case(const char* path) {
    FILE* f = fopen(path, "r");
    if (!f) { printf("FAIL cannot open %s\n", path); return 1; }
    auto next = [&] { unsigned bits = 0; if (fscanf(f, "%u", &bits) != 1) { printf("FAIL short case file\n"); exit(1); } float v; memcpy(&v, &bits, 4); return v; };
    int n = 0, K = 0, C = 0; if (fscanf(f, "%d %d %d", &n, &K, &C) != 3) return 1;
    vector<float> logits(n * K), scale(K), x(n * C); vector<unsigned> labels(n);
    for (auto& v : logits) v = next();
    for (auto& y : labels) if (fscanf(f, "%u", &y) != 1) return 1;
    for (auto& v : scale) v = next();
    for (auto& v : x) v = next();
    vector<double> want_loss = {next()}, want_dw(K * C), want_db(K);
    for (auto& v : want_dw) v = next();
    for (auto& v : want_db) v = next();
    fclose(f);
    for (unsigned seed : {0u, 1u, 2u}) {
        emu::g_order_seed = seed;
        vector<float> loss(n, NAN), dl(n * K, NAN), corr(n, NAN), dw(K * C, NAN), db(K, NAN);
        launch(softmax_cross_entropy_backward, (n + 7) / 8, 256, 0, loss.data(), dl.data(), corr.data(), (const float*)logits.data(), (const unsigned*)labels.data(), (const float*)scale.data(), n, K);
        double sum = 0; for (float l : loss) sum += l;
        rm_gemm_batched<float, float>(true, false, K, C, n, 0, dl.data(), x.data(), dw.data(), 1, 0, 0, 0);
        launch(bias_grad_column_sum, K, 256, 0, db.data(), (const float*)dl.data(), n, K);
        double tol = (n + 4) * 2.0 * 0x1p-24;
        check("weighted head loss vs head.rs", {(float)sum}, want_loss, 1e-6);
        check("weighted head dW vs head.rs", dw, want_dw, tol);
        check("weighted head db vs head.rs", db, want_db, tol);
    }
    return fails != 0;
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
template <class S, class W> void run_encoder_checks(W want) {
    if (want("embeddings")) { test_embeddings<S>(48); test_embeddings<S>(100); test_embeddings<S>(768); }
    if (want("layernorm")) { test_layernorm<S>(4, 770); test_layernorm<S>(2, 32); }
    if (want("activation")) test_act<S>();
    if (want("attention"))
        for (bool all : {true, false}) {
            test_attention<S>({7, 1, 16, 3}, 4, 8, all, {{0, 4}});
            test_attention<S>({7, 1, 16, 3}, 4, 8, all, {{0, 1}, {1, 2}, {3, 1}});
            test_attention<S>({33, 2}, 2, 64, all, {{0, 2}});
        }
    if (want("rows")) test_rows<S>();
    if (want("pooling")) { test_pooling<S>(40); test_pooling<S>(384); }
}
int main(int argc, char** argv) {
    if (const char* path = getenv("EMU_ADAMW_CASE")) return check_adamw_case(path);
    if (const char* path = getenv("EMU_HEAD_CASE")) return check_head_case(path);
    const string only = argc > 1 ? argv[1] : "";
    auto want = [&](const char* name) { return string(name).find(only) != string::npos || only.empty(); };
    struct Pass { unsigned seed; bool cap; const char* what; };
    for (Pass pass : {Pass{0, false, "blocks reversed"}, Pass{1, true, "blocks shuffled (seed 1), grid-stride grids capped"}, Pass{2, false, "blocks shuffled (seed 2)"}}) {
        printf("-- %s, %u blocks at a time\n", pass.what, emu::g_concurrent_blocks);
        emu::g_order_seed = pass.seed; g_cap_grid = pass.cap;
        run_encoder_checks<float>(want);
        run_encoder_checks<__half>(want);
        run_encoder_checks<__nv_bfloat16>(want);
        if (want("head")) test_head();
    }
    printf("%s\n", fails ? "SOME FAILED" : "ALL OK"); return fails != 0;
}
