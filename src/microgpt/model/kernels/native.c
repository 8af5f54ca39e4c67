/* microgpt's native CPU kernels: causal attention at short contexts (QK-norm and RoPE included), SwiGLU and
 * RMSNorm, each forward and backward, float32. Built at first use by microgpt.model.native with the system C compiler
 * (-O3 -march=native -fopenmp); the OpenMP runtime is the one torch already loaded (same soname), so the threads
 * are torch's own. Loops are written over GCC/Clang vector types (8 floats), which compile to AVX2 on x86 and
 * to NEON pairs on ARM.
 *
 * ---- Attention ----
 * Why: at contexts of a few hundred tokens one head's whole (T, T) score matrix fits in cache, and the
 * per-call overheads of a tiled flash kernel (torch's CPU SDPA) cost more than the arithmetic. One call here
 * handles every (batch, key head) pair, in parallel over pairs. For each pair the keys and values are copied,
 * rotated and zero-padded to Tp (T rounded up to 16) rows once; then, per query head,
 *     forward:  S = Q·Kᵀ·scale (j <= i)  →  P = softmax(S)  →  Y = P·V
 *     backward: dV += Pᵀ·dY,  dP = dY·Vᵀ,  dS = P∘(dP − rowsum(P∘dP))·scale,  dQ = dS·K,  dK += dSᵀ·Q
 * every product being one small register-blocked matrix multiply (4 rows × 16 columns of accumulators) that
 * skips the blocks the causal mask zeroes. P is kept for the backward pass (B·H·Tp·Tp floats: why this path
 * is for short contexts only).
 *
 * Layouts (D contiguous and a multiple of 16; the batch and time strides of qkv are passed in elements):
 *   qkv      (B, T, n_head + 2·n_kv_head, D)  queries, then keys, then values: the fused projection's output
 *   cos, sin (T, D)  RoPE tables [cos, cos] and [−sin, sin] (rotate-halves form), or NULL for no rotation
 *   norm_w   (D)     QK-norm: queries and keys are RMS-normalised with this weight before RoPE, or NULL
 *   y        (B, T, n_head, D) contiguous;  probs (B, n_head, Tp, Tp) contiguous, fully written
 *   grad_y   (B, T, n_head, D) contiguous;  grad_qkv (B, T, n_head + 2·n_kv_head, D) contiguous, fully written
 * Grouped-query attention: query head h reads key/value head h / (n_head / n_kv_head).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads and stores

enum { MR = 4, NR = 16 };  // one micro-kernel call: MR rows × NR columns, 8 vector accumulators

/* C[0:4, 0:16] (+)= A[0:4, k0:k1] · B[k0:k1, 0:16]; row-major with leading dimensions lda, ldb, ldc. With
 * `trans_a`, A is read transposed: A[r, k] is at A[k·lda + r]. */
static inline void gemm_4x16(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb,
                             int64_t k0, int64_t k1, int accumulate, int trans_a) {
    v8 c[MR][2];
    for (int r = 0; r < MR; r++) {
        if (accumulate) {
            c[r][0] = *(const v8u *)(C + r * ldc);
            c[r][1] = *(const v8u *)(C + r * ldc + 8);
        } else {
            c[r][0] = (v8){0};
            c[r][1] = (v8){0};
        }
    }
    for (int64_t k = k0; k < k1; k++) {
        v8 b0 = *(const v8u *)(B + k * ldb), b1 = *(const v8u *)(B + k * ldb + 8);
        for (int r = 0; r < MR; r++) {
            float a = trans_a ? A[k * lda + r] : A[r * lda + k];
            c[r][0] += a * b0;
            c[r][1] += a * b1;
        }
    }
    for (int r = 0; r < MR; r++) {
        *(v8u *)(C + r * ldc) = c[r][0];
        *(v8u *)(C + r * ldc + 8) = c[r][1];
    }
}

/* Which part of the inner dimension a block of rows [i0, i0 + MR) needs under the causal mask. */
enum { K_ALL, K_UP_TO_ROW, K_FROM_ROW };

/* C (rows × cols, cols a multiple of 16) (+)= A · B over k in [0, depth), restricted by `band`:
 * K_UP_TO_ROW sums k < i0 + MR (A is zero right of its diagonal), K_FROM_ROW sums k >= i0 (A is zero left of
 * it). With `causal_cols`, row block i0 only computes columns < i0 + MR (rounded up to 16). With `trans_a`, A
 * is stored transposed (see gemm_4x16). */
static inline void gemm(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb,
                        int64_t rows, int64_t cols, int64_t depth, int band, int causal_cols, int accumulate,
                        int trans_a) {
    for (int64_t i0 = 0; i0 < rows; i0 += MR) {
        int64_t k0 = band == K_FROM_ROW ? i0 : 0;
        int64_t k1 = band == K_UP_TO_ROW && i0 + MR < depth ? i0 + MR : depth;
        int64_t n = causal_cols ? (i0 + MR + NR - 1) / NR * NR : cols;
        if (n > cols) n = cols;
        const float *a = trans_a ? A + i0 : A + i0 * lda;
        for (int64_t j0 = 0; j0 < n; j0 += NR)
            gemm_4x16(C + i0 * ldc + j0, ldc, a, lda, B + j0, ldb, k0, k1, accumulate, trans_a);
    }
}

typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 select8(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }

/* exp(x) for x <= 0, eight at a time: Cephes' single-precision polynomial after reducing x = n·ln2 + r,
 * |r| <= ln2/2, then 2^n from the exponent bits; relative error ~2e-7. Inputs below -87 give exp(-87). */
static inline v8 exp8_nonpositive(v8 x) {
    v8 lowest = (v8){0} - 87.0f;
    x = select8(x < lowest, lowest, x);
    v8 t = x * 1.44269504088896341f + 0.5f;
    v8i n = __builtin_convertvector(t, v8i);  // truncates toward zero; step down where that rounded up
    n += (v8i)(__builtin_convertvector(n, v8) > t);
    v8 nf = __builtin_convertvector(n, v8);
    v8 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v8 p = (v8){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (v8)((n + 127) << 23);
}

static inline float sum8(v8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

static inline float dot_row(const float *a, const float *b, int64_t C) {
    v8 acc = {0};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) acc += *(const v8u *)(a + c) * *(const v8u *)(b + c);
    float total = sum8(acc);
    for (; c < C; c++) total += a[c] * b[c];
    return total;
}

/* out = (x·cos + swap(x)·sin)·scale, swap exchanging the halves of x (RoPE, rotate-halves form). */
static inline void rope_row(float *out, const float *x, const float *cos, const float *sin, int64_t D, float scale) {
    int64_t half = D / 2;
    if (!cos) {
        for (int64_t d = 0; d < D; d++) out[d] = x[d] * scale;
        return;
    }
    for (int64_t d = 0; d < half; d++) out[d] = (x[d] * cos[d] + x[d + half] * sin[d]) * scale;
    for (int64_t d = half; d < D; d++) out[d] = (x[d] * cos[d] + x[d - half] * sin[d]) * scale;
}

/* The transpose of rope_row (scale 1): out = g·cos + swap(g·sin). */
static inline void rope_row_backward(float *out, const float *g, const float *cos, const float *sin, int64_t D) {
    int64_t half = D / 2;
    if (!cos) {
        memcpy(out, g, D * sizeof(float));
        return;
    }
    for (int64_t d = 0; d < half; d++) out[d] = g[d] * cos[d] + g[d + half] * sin[d + half];
    for (int64_t d = half; d < D; d++) out[d] = g[d] * cos[d] + g[d - half] * sin[d - half];
}

static void transpose(float *out, const float *in, int64_t rows, int64_t cols) {
    for (int64_t c = 0; c < cols; c++)
        for (int64_t r = 0; r < rows; r++) out[c * rows + r] = in[r * cols + c];
}

/* The rows of one head of qkv (time stride `stride_t`) into dst (Tp, D), padding zero: with `rotate`,
 * RMS-normalised by norm_w first (QK-norm; when norm_w is not NULL) and rotated (when cos is not NULL);
 * then scaled. */
static void load_head(float *dst, const float *src, int64_t stride_t, const float *cos, const float *sin,
                      const float *norm_w, float eps, int64_t T, int64_t Tp, int64_t D, float scale, int rotate) {
    int with_rope = rotate && cos != NULL, with_norm = rotate && norm_w != NULL;
    float normed[D];
    for (int64_t t = 0; t < T; t++) {
        const float *x = src + t * stride_t;
        if (with_norm) {
            float r = 1.0f / sqrtf(dot_row(x, x, D) / (float)D + eps);
            for (int64_t d = 0; d < D; d++) normed[d] = x[d] * r * norm_w[d];
            x = normed;
        }
        rope_row(dst + t * D, x, with_rope ? cos + t * D : NULL, with_rope ? sin + t * D : NULL, D, scale);
    }
    memset(dst + T * D, 0, sizeof(float) * (size_t)((Tp - T) * D));
}

/* The gradient of one raw q or k row x from the gradient g_rot of its normalised, rotated version: RoPE's
 * transpose, then (with norm_w) RMSNorm's backward, adding the row's share of the norm weight's gradient to
 * grad_w. Written to out. */
static void head_row_backward(float *out, const float *g_rot, const float *x, const float *cos, const float *sin,
                              const float *norm_w, float eps, float *grad_w, int64_t D) {
    if (!norm_w) {
        rope_row_backward(out, g_rot, cos, sin, D);
        return;
    }
    float g[D];
    rope_row_backward(g, g_rot, cos, sin, D);
    float r = 1.0f / sqrtf(dot_row(x, x, D) / (float)D + eps), dot = 0.0f;
    for (int64_t d = 0; d < D; d++) dot += g[d] * norm_w[d] * x[d];
    float k = dot * r * r / (float)D;  // mean(g·w·x̂)·r, with x̂ = x·r
    for (int64_t d = 0; d < D; d++) {
        grad_w[d] += g[d] * x[d] * r;
        out[d] = r * (g[d] * norm_w[d] - x[d] * k);
    }
}

/* Row-wise causal softmax of S (Tp, Tp) in place: row i over columns j <= i, zero elsewhere. Tp is a multiple
 * of 16, so every row is whole vectors. */
static void causal_softmax(float *S, int64_t T, int64_t Tp) {
    for (int64_t i = 0; i < Tp; i++) {
        float *s = S + i * Tp;
        int64_t n = i < T ? i + 1 : 0, n8 = (n + 7) / 8 * 8;
        for (int64_t j = n; j < n8; j++) s[j] = -INFINITY;  // masked lanes: exp gives ~0, zeroed below
        float max = -INFINITY;
        for (int64_t j = 0; j < n8; j += 8) {
            v8 v = *(v8u *)(s + j);
            for (int l = 0; l < 8; l++) max = v[l] > max ? v[l] : max;
        }
        for (int64_t j = 0; j < n8; j += 8) *(v8u *)(s + j) = exp8_nonpositive(*(v8u *)(s + j) - max);
        for (int64_t j = n; j < Tp; j++) s[j] = 0.0f;
        v8 sum = {0};
        for (int64_t j = 0; j < n8; j += 8) sum += *(v8u *)(s + j);
        float inv = n ? 1.0f / sum8(sum) : 0.0f;
        for (int64_t j = 0; j < n8; j += 8) *(v8u *)(s + j) *= inv;
    }
}

static int64_t padded(int64_t T) { return (T + NR - 1) / NR * NR; }

/* Per-thread partial sums of a length-n gradient, added up in thread order after the parallel region, so the
 * result does not depend on which thread finishes first (bitwise-reproducible runs). */
static float *partials_new(int num_threads, int64_t n) { return calloc((size_t)(num_threads * n), sizeof(float)); }

static void partials_sum(float *out, float *partials, int num_threads, int64_t n) {
    memset(out, 0, sizeof(float) * (size_t)n);
    for (int t = 0; t < num_threads; t++)
        for (int64_t i = 0; i < n; i++) out[i] += partials[t * n + i];
    free(partials);
}

void short_attention_forward(const float *qkv, int64_t stride_b, int64_t stride_t, const float *cos,
                             const float *sin, const float *norm_w, float eps, float *y, float *probs, int64_t B,
                             int64_t T, int64_t n_head, int64_t n_kv_head, int64_t D, float scale, int num_threads) {
    int64_t group = n_head / n_kv_head, Tp = padded(T);
#pragma omp parallel num_threads(num_threads)
    {
        float *buf = malloc(sizeof(float) * (size_t)(4 * Tp * D));
        float *Q = buf, *K = Q + Tp * D, *Kt = K + Tp * D, *V = Kt + Tp * D;
#pragma omp for schedule(static)
        for (int64_t pair = 0; pair < B * n_kv_head; pair++) {
            int64_t b = pair / n_kv_head, hk = pair % n_kv_head;
            const float *base = qkv + b * stride_b;
            load_head(K, base + (n_head + hk) * D, stride_t, cos, sin, norm_w, eps, T, Tp, D, 1.0f, 1);
            load_head(V, base + (n_head + n_kv_head + hk) * D, stride_t, NULL, NULL, NULL, 0.0f, T, Tp, D, 1.0f, 0);
            transpose(Kt, K, Tp, D);
            for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
                float *P = probs + (b * n_head + h) * Tp * Tp;
                load_head(Q, base + h * D, stride_t, cos, sin, norm_w, eps, T, Tp, D, scale, 1);
                gemm(P, Tp, Q, D, Kt, Tp, Tp, Tp, D, K_ALL, 1, 0, 0);  // scores, blocks right of the diagonal skipped
                causal_softmax(P, T, Tp);
                gemm(Q, D, P, Tp, V, D, Tp, D, Tp, K_UP_TO_ROW, 0, 0, 0);  // Y = P·V, into Q's buffer
                for (int64_t t = 0; t < T; t++) memcpy(y + ((b * T + t) * n_head + h) * D, Q + t * D, D * sizeof(float));
            }
        }
        free(buf);
    }
}

/* grad_norm_w (D) receives the QK-norm weight's gradient when norm_w is not NULL (it is zeroed here). */
void short_attention_backward(const float *grad_y, const float *qkv, int64_t stride_b, int64_t stride_t,
                              const float *cos, const float *sin, const float *norm_w, float eps,
                              const float *probs, float *grad_qkv, float *grad_norm_w, int64_t B, int64_t T,
                              int64_t n_head, int64_t n_kv_head, int64_t D, float scale, int num_threads) {
    int64_t group = n_head / n_kv_head, Tp = padded(T);
    int64_t width = (n_head + 2 * n_kv_head) * D;  // grad_qkv's time stride
    float *partials = partials_new(num_threads, D);
#pragma omp parallel num_threads(num_threads)
    {
        float *buf = malloc(sizeof(float) * (size_t)(8 * Tp * D + Tp * Tp));
        float *grad_w = partials + omp_get_thread_num() * D;  // this thread's share of grad_norm_w
        float *K = buf, *V = K + Tp * D, *Vt = V + Tp * D, *Q = Vt + Tp * D, *dY = Q + Tp * D, *dQ = dY + Tp * D;
        float *dK = dQ + Tp * D, *dV = dK + Tp * D, *dS = dV + Tp * D;
#pragma omp for schedule(static)
        for (int64_t pair = 0; pair < B * n_kv_head; pair++) {
            int64_t b = pair / n_kv_head, hk = pair % n_kv_head;
            const float *base = qkv + b * stride_b;
            float *grad_base = grad_qkv + b * T * width;
            load_head(K, base + (n_head + hk) * D, stride_t, cos, sin, norm_w, eps, T, Tp, D, 1.0f, 1);
            load_head(V, base + (n_head + n_kv_head + hk) * D, stride_t, NULL, NULL, NULL, 0.0f, T, Tp, D, 1.0f, 0);
            transpose(Vt, V, Tp, D);
            memset(dK, 0, sizeof(float) * (size_t)(Tp * D));
            memset(dV, 0, sizeof(float) * (size_t)(Tp * D));
            for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
                const float *P = probs + (b * n_head + h) * Tp * Tp;
                load_head(Q, base + h * D, stride_t, cos, sin, norm_w, eps, T, Tp, D, 1.0f, 1);
                load_head(dY, grad_y + b * T * n_head * D + h * D, n_head * D, NULL, NULL, NULL, 0.0f, T, Tp, D, 1.0f, 0);
                gemm(dV, D, P, Tp, dY, D, Tp, D, Tp, K_FROM_ROW, 0, 1, 1);  // dV += Pᵀ·dY
                memset(dS, 0, sizeof(float) * (size_t)(Tp * Tp));
                gemm(dS, Tp, dY, D, Vt, Tp, Tp, Tp, D, K_ALL, 1, 0, 0);  // dP = dY·Vᵀ
                for (int64_t i = 0; i < T; i++) {  // softmax backward, in place: dS = P∘(dP − Σ P∘dP)·scale
                    const float *p = P + i * Tp;  // zero right of the diagonal, so whole vectors are exact
                    float *ds = dS + i * Tp;
                    int64_t n8 = (i + 8) / 8 * 8;
                    v8 dot = {0};
                    for (int64_t j = 0; j < n8; j += 8) dot += *(const v8u *)(p + j) * *(v8u *)(ds + j);
                    float total = sum8(dot);
                    for (int64_t j = 0; j < n8; j += 8)
                        *(v8u *)(ds + j) = *(const v8u *)(p + j) * (*(v8u *)(ds + j) - total) * scale;
                    for (int64_t j = n8; j < Tp; j++) ds[j] = 0.0f;
                }
                gemm(dQ, D, dS, Tp, K, D, Tp, D, Tp, K_UP_TO_ROW, 0, 0, 0);  // dQ = dS·K
                for (int64_t t = 0; t < T; t++)
                    head_row_backward(grad_base + t * width + h * D, dQ + t * D, base + t * stride_t + h * D,
                                      cos ? cos + t * D : NULL, sin ? sin + t * D : NULL, norm_w, eps, grad_w, D);
                gemm(dK, D, dS, Tp, Q, D, Tp, D, Tp, K_FROM_ROW, 0, 1, 1);  // dK += dSᵀ·Q
            }
            for (int64_t t = 0; t < T; t++) {
                head_row_backward(grad_base + t * width + (n_head + hk) * D, dK + t * D,
                                  base + t * stride_t + (n_head + hk) * D, cos ? cos + t * D : NULL,
                                  sin ? sin + t * D : NULL, norm_w, eps, grad_w, D);
                memcpy(grad_base + t * width + (n_head + n_kv_head + hk) * D, dV + t * D, D * sizeof(float));
            }
        }
        free(buf);
    }
    if (norm_w) {
        partials_sum(grad_norm_w, partials, num_threads, D);
    } else {
        free(partials);
    }
}

/* ---- SwiGLU: out = silu(gate)·up over rows h = [gate | up] (N rows of 2·H), and its backward ---- */

/* sigmoid(g) eight at a time, from exp(−|g|) so the exponential never overflows. */
static inline v8 sigmoid8(v8 g) {
    v8 e = exp8_nonpositive(select8(g < 0.0f, g, -g));
    v8 one = (v8){0} + 1.0f;
    return select8(g < 0.0f, e, one) / (one + e);
}

void swiglu_forward(const float *h, float *out, int64_t N, int64_t H, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *gate = h + n * 2 * H, *up = gate + H;
        float *o = out + n * H;
        int64_t d = 0;
        for (; d + 8 <= H; d += 8) {
            v8 g = *(const v8u *)(gate + d);
            *(v8u *)(o + d) = g * sigmoid8(g) * *(const v8u *)(up + d);
        }
        if (d < H) {  // tail: through a zero-padded group of 8
            v8 g = {0}, u = {0};
            for (int64_t l = 0; d + l < H; l++) g[l] = gate[d + l], u[l] = up[d + l];
            v8 r = g * sigmoid8(g) * u;
            for (int64_t l = 0; d + l < H; l++) o[d + l] = r[l];
        }
    }
}

static inline void swiglu_backward8(v8 g, v8 u, v8 dy, v8 *dg, v8 *du) {
    v8 s = sigmoid8(g);
    *du = dy * g * s;
    *dg = dy * u * s * (1.0f + g * (1.0f - s));
}

void swiglu_backward(const float *grad, const float *h, float *grad_h, int64_t N, int64_t H, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *gate = h + n * 2 * H, *up = gate + H, *dy = grad + n * H;
        float *dgate = grad_h + n * 2 * H, *dup = dgate + H;
        int64_t d = 0;
        for (; d + 8 <= H; d += 8) {
            v8 dg, du;
            swiglu_backward8(*(const v8u *)(gate + d), *(const v8u *)(up + d), *(const v8u *)(dy + d), &dg, &du);
            *(v8u *)(dgate + d) = dg;
            *(v8u *)(dup + d) = du;
        }
        if (d < H) {
            v8 g = {0}, u = {0}, y = {0}, dg, du;
            for (int64_t l = 0; d + l < H; l++) g[l] = gate[d + l], u[l] = up[d + l], y[l] = dy[d + l];
            swiglu_backward8(g, u, y, &dg, &du);
            for (int64_t l = 0; d + l < H; l++) dgate[d + l] = dg[l], dup[d + l] = du[l];
        }
    }
}

/* ---- RMSNorm: y = x·r·w with r = 1/sqrt(mean(x²) + eps), over rows x (N, C) ---- */

void rms_norm_forward(const float *x, const float *w, float *y, float *rstd, int64_t N, int64_t C, float eps,
                      int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C;
        float r = 1.0f / sqrtf(dot_row(xn, xn, C) / (float)C + eps);
        rstd[n] = r;
        for (int64_t c = 0; c < C; c++) y[n * C + c] = xn[c] * r * w[c];
    }
}

/* grad_x = r·(g·w − x·r·mean(g·w·x·r)) per row; grad_w = Σ_rows g·x·r, summed over each thread's rows first. */
void rms_norm_backward(const float *grad, const float *x, const float *w, const float *rstd, float *grad_x,
                       float *grad_w, int64_t N, int64_t C, int num_threads) {
    float *partials = partials_new(num_threads, C);
#pragma omp parallel num_threads(num_threads)
    {
        float *partial = partials + omp_get_thread_num() * C;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *g = grad + n * C, *xn = x + n * C;
            float r = rstd[n], *gx = grad_x + n * C;
            v8 acc = {0};
            int64_t c = 0;
            for (; c + 8 <= C; c += 8) {
                v8 gc = *(const v8u *)(g + c), xc = *(const v8u *)(xn + c);
                acc += gc * *(const v8u *)(w + c) * xc;
                *(v8u *)(partial + c) += gc * xc * r;
            }
            float dot = sum8(acc);
            for (; c < C; c++) {
                dot += g[c] * w[c] * xn[c];
                partial[c] += g[c] * xn[c] * r;
            }
            float k = dot * r * r / (float)C;  // mean(g·w·x̂)·r, with x̂ = x·r
            for (int64_t c = 0; c < C; c++) gx[c] = r * (g[c] * w[c] - xn[c] * k);
        }
    }
    partials_sum(grad_w, partials, num_threads, C);
}
