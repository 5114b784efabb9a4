/* Decode kernels of the built-in engine: float32, contiguous, no allocation. The kpop_* entry
   points that take `threads` spread their rows, heads or products over torch's own OpenMP threads
   where the library is built with -fopenmp (serial otherwise). Built and loaded by
   kpop.rollout.builtin.native, which states the contracts; each is tested there against torch's
   own ops (tests/rollout/test_rollout_builtin_native.py). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define KPOP_MAX_HEAD_DIM 1024

/* e^x within 2 ulp on [-87, 88], 0 below (so e^-inf is 0), +inf above, NaN for NaN, in
   operations a loop vectorizes: libm's expf is one call per element, which made the native
   SwiGLU 4.5x slower than torch's (64 rows of 1536: 225 vs 50 us). e^x = 2^n e^f with n =
   round(x / ln 2), found by adding 1.5 * 2^23 (n lands in the low mantissa bits, no conversion),
   f = x - n ln 2 with ln 2 in two parts (the first's product with n exact), |f| <= ln 2 / 2, and
   e^f by its Taylor polynomial to f^7 / 7!, truncation under 2e-9. Why the ends are 0 and +inf,
   not the clamped values: a softmax weight of e^-87 (1.6e-38) times a value is a subnormal, and
   subnormal arithmetic is ~100x slower (a first version clamped: the hybrid example's RL steps
   ran 12-25% slower, its peaked attention making such weights on every step). */
static inline float exp_f32(float x) {
    const float shift = 12582912.0f;
    float y = x < -87.0f ? -87.0f : x;
    y = y > 88.0f ? 88.0f : y;
    float t = y * 1.44269504088896341f + shift;
    uint32_t bits, n_bits, shift_bits;
    memcpy(&n_bits, &t, 4);
    memcpy(&shift_bits, &shift, 4);
    float n = t - shift;
    float f = y - n * 0.693145751953125f;
    f = f - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    bits = (n_bits - shift_bits + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    float e = p * scale;
    e = x < -87.0f ? 0.0f : e;
    return x > 88.0f ? INFINITY : e;
}

static inline float silu(float x) { return x / (1.0f + exp_f32(-x)); }

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for `rows` rows of `n` values. */
void kpop_rms_norm(const float *x, const float *w, float *y, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < n; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int64_t i = 0; i < n; i++) yr[i] = (xr[i] * inv) * w[i];
    }
}

/* Rotate the first 2 * half values of x (rotate-half layout) by cos/sin [half]. */
static void neox(float *x, const float *c, const float *s, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[half + i];
        x[i] = a * c[i] - b * s[i];
        x[half + i] = b * c[i] + a * s[i];
    }
}

/* One token of Lightning attention for one row, from its q|k|v and gate projections. */
void kpop_lightning_row(const float *qkv, const float *gate, float *state, const float *decay,
                        const float *q_norm, const float *k_norm, const float *cos_, const float *sin_,
                        const float *g_norm, float *out, int64_t heads, int64_t d, int64_t half,
                        int64_t groups, float qk_eps, float g_eps, float scale) {
    float q[KPOP_MAX_HEAD_DIM], k[KPOP_MAX_HEAD_DIM];
    for (int64_t h = 0; h < heads; h++) {
        const float *qh = qkv + h * d, *kh = qkv + (heads + h) * d, *v = qkv + (2 * heads + h) * d;
        if (q_norm) {
            kpop_rms_norm(qh, q_norm, q, 1, d, qk_eps);
            kpop_rms_norm(kh, k_norm, k, 1, d, qk_eps);
        } else {
            for (int64_t i = 0; i < d; i++) { q[i] = qh[i]; k[i] = kh[i]; }
        }
        neox(q, cos_, sin_, half);
        neox(k, cos_, sin_, half);
        /* One pass over S: S <- decay S + k^T v, and o += (scale q_i) S[i] with the new row. */
        float *S = state + h * d * d, *o = out + h * d, g = decay[h];
        for (int64_t j = 0; j < d; j++) o[j] = 0.0f;
        for (int64_t i = 0; i < d; i++) {
            float ki = k[i], qi = q[i] * scale, *Si = S + i * d;
            for (int64_t j = 0; j < d; j++) {
                float s = Si[j] * g + ki * v[j];
                Si[j] = s;
                o[j] += qi * s;
            }
        }
    }
    int64_t size = heads * d / groups;
    for (int64_t grp = 0; grp < groups; grp++) {
        float *o = out + grp * size;
        kpop_rms_norm(o, g_norm + grp * size, o, 1, size, g_eps);
        const float *gt = gate + grp * size;
        for (int64_t i = 0; i < size; i++) o[i] *= 1.0f / (1.0f + exp_f32(-gt[i]));
    }
}

/* kpop_lightning_row for each of `rows` rows, spread over the threads: qkvg [rows, 4 H d] (q|k|v,
   then the gate; silu applied to q|k|v in place first when silu_qkv), state [rows, H, d, d]
   updated in place, cos_/sin_ [rows, half], out [rows, H d]. One pass over each row's state,
   where torch's ops (a scale, an outer-product add, a product) read it three times and write it
   twice. */
void kpop_lightning_rows(float *qkvg, int64_t silu_qkv, float *state, const float *decay, const float *q_norm,
                         const float *k_norm, const float *cos_, const float *sin_, const float *g_norm, float *out,
                         int64_t rows, int64_t heads, int64_t d, int64_t half, int64_t groups, float qk_eps,
                         float g_eps, float scale, int64_t threads) {
    int64_t hd = heads * d;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        float *x = qkvg + r * 4 * hd;
        if (silu_qkv)
            for (int64_t i = 0; i < 3 * hd; i++) x[i] = silu(x[i]);
        kpop_lightning_row(x, x + 3 * hd, state + r * hd * d, decay, q_norm, k_norm, cos_ ? cos_ + r * half : 0,
                           sin_ ? sin_ + r * half : 0, g_norm, out + r * hd, heads, d, half, groups, qk_eps, g_eps,
                           scale);
    }
}

#define KPOP_MAX_EXPERTS 1024

/* The index of the largest v[i] among `ok` ones (the lowest index among equals), -1 if none. */
static int64_t best(const float *v, const unsigned char *ok, int64_t n) {
    int64_t arg = -1;
    for (int64_t i = 0; i < n; i++)
        if (ok[i] && (arg < 0 || v[i] > v[arg])) arg = i;
    return arg;
}

/* MoEGate's sigmoid router for one row: s = sigmoid(W x), experts picked by s + bias (group-
   limited when n_group > 1: a group's score is the sum of its best two), weights s of the picked
   experts normalised to sum 1 when k > 1, times scale. Writes idx[k] and w[k] in pick order. */
void kpop_route_row(const float *x, const float *W, const float *bias, int64_t E, int64_t h,
                    int64_t n_group, int64_t topk_group, int64_t k, float scale, int64_t *idx, float *w) {
    float s[KPOP_MAX_EXPERTS], sel[KPOP_MAX_EXPERTS], group[KPOP_MAX_EXPERTS];
    unsigned char ok[KPOP_MAX_EXPERTS];
    for (int64_t e = 0; e < E; e++) {
        const float *We = W + e * h;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < h; i++) dot += We[i] * x[i];
        s[e] = 1.0f / (1.0f + exp_f32(-dot));
        sel[e] = s[e] + bias[e];
        ok[e] = 1;
    }
    if (n_group > 1) {
        int64_t per = E / n_group, top = per < 2 ? per : 2;
        unsigned char gok[KPOP_MAX_EXPERTS];
        for (int64_t g = 0; g < n_group; g++) {
            unsigned char in[KPOP_MAX_EXPERTS];
            for (int64_t i = 0; i < per; i++) in[i] = 1;
            group[g] = 0.0f;
            for (int64_t t = 0; t < top; t++) {
                int64_t b = best(sel + g * per, in, per);
                group[g] += sel[g * per + b];
                in[b] = 0;
            }
            gok[g] = 1;
        }
        unsigned char kept[KPOP_MAX_EXPERTS] = {0};
        for (int64_t t = 0; t < topk_group; t++) {
            int64_t g = best(group, gok, n_group);
            kept[g] = 1;
            gok[g] = 0;
        }
        for (int64_t e = 0; e < E; e++) ok[e] = kept[e / per];
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        idx[j] = best(sel, ok, E);
        ok[idx[j]] = 0;
        sum += s[idx[j]];
    }
    for (int64_t j = 0; j < k; j++) w[j] = (k > 1 ? s[idx[j]] / (sum + 1e-20f) : s[idx[j]]) * scale;
}

/* Absorbed multi-latent attention of one head h for one row over its T cached columns:
   q_lat = q_nope W_uk[h] ([nope] x [nope, r]), scores[t] = scaling (q_lat . latent[t] + q_rope .
   k_rope[t]), p = softmax(scores), out = W_uv[h] (sum_t p[t] latent[t]). w_kv_b [H, nope + v, r]
   holds W_uk (first nope rows of each head) and W_uv (the next v). scratch: T + 2 r floats. */
static void mla_head(const float *qn, const float *qr, const float *latent, const float *k_rope, const float *w_kv_b,
                     float *o, float *scratch, int64_t h, int64_t nope, int64_t rope, int64_t v, int64_t r, int64_t T,
                     float scaling) {
    float *scores = scratch, *q_lat = scratch + T, *ctx = scratch + T + r;
    const float *w_uk = w_kv_b + h * (nope + v) * r, *w_uv = w_uk + nope * r;
    for (int64_t j = 0; j < r; j++) q_lat[j] = 0.0f;
    for (int64_t n = 0; n < nope; n++) {
        float a = qn[n];
        const float *row = w_uk + n * r;
        for (int64_t j = 0; j < r; j++) q_lat[j] += a * row[j];
    }
    float top = -INFINITY;
    for (int64_t t = 0; t < T; t++) {
        const float *lt = latent + t * r, *kt = k_rope + t * rope;
        float dot = 0.0f, dr = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < r; j++) dot += q_lat[j] * lt[j];
#pragma omp simd reduction(+ : dr)
        for (int64_t j = 0; j < rope; j++) dr += qr[j] * kt[j];
        scores[t] = (dot + dr) * scaling;
        if (scores[t] > top) top = scores[t];
    }
    float total = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        scores[t] = exp_f32(scores[t] - top);
        total += scores[t];
    }
    for (int64_t j = 0; j < r; j++) ctx[j] = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        float p = scores[t] / total;
        const float *lt = latent + t * r;
        for (int64_t j = 0; j < r; j++) ctx[j] += p * lt[j];
    }
    for (int64_t i = 0; i < v; i++) {
        const float *row = w_uv + i * r;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < r; j++) dot += ctx[j] * row[j];
        o[i] = dot;
    }
}

/* `mla_head` for every head h: q_nope [H, nope], q_rope [H, rope], out [H, v]. */
void kpop_mla_row(const float *q_nope, const float *q_rope, const float *latent, const float *k_rope,
                  const float *w_kv_b, float *out, float *scratch, int64_t H, int64_t nope, int64_t rope,
                  int64_t v, int64_t r, int64_t T, float scaling) {
    for (int64_t h = 0; h < H; h++)
        mla_head(q_nope + h * nope, q_rope + h * rope, latent, k_rope, w_kv_b, out + h * v, scratch, h, nope, rope, v, r,
                 T, scaling);
}

/* HF's rotate-half RoPE with full-width cos/sin [d]: y = x cos + [-x2, x1] sin. */
static void rotate_half(const float *x, const float *c, const float *s, float *y, int64_t d) {
    int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        y[i] = x[i] * c[i] - x[half + i] * s[i];
        y[half + i] = x[half + i] * c[half + i] + x[i] * s[half + i];
    }
}

/* kpop_kv_attend's work for one (row b, key head g) task. next_K/next_V: the keys/values the
   thread reads next (NULL: none), fetched into the caches while this task computes (one hint per
   64-byte line, 16 floats): each task's columns are a short run of their own, and without the
   hints every run started with a stall (64 rows, 12 heads of 64, 41 columns: 1.86x the time,
   where a plain read of the same bytes took 1.3 ms; benchmarks/native_kernels.py measures the
   whole step). */
static void kv_task(const float *row, const float *c, const float *s, float *K, float *V, int64_t L, float *out,
                    float *scores, int64_t Hq, int64_t Hkv, int64_t g, int64_t d, int64_t cols, float scale,
                    const float *next_K, const float *next_V) {
    int64_t G = Hq / Hkv, T = L + 1;
    float *q = scores + G * cols;
    rotate_half(row + (Hq + g) * d, c, s, K + L * d, d);
    const float *v = row + (Hq + Hkv + g) * d;
    for (int64_t i = 0; i < d; i++) V[L * d + i] = v[i];
    for (int64_t j = 0; j < G; j++) rotate_half(row + (g * G + j) * d, c, s, q + j * d, d);
    for (int64_t t = 0; t < T; t++) {
        const float *kt = K + t * d;
        for (int64_t x = 0; x < d; x += 16) {
            __builtin_prefetch(V + t * d + x, 0, 3);
            if (next_K) {
                __builtin_prefetch(next_K + t * d + x, 0, 2);
                __builtin_prefetch(next_V + t * d + x, 0, 2);
            }
        }
        for (int64_t j = 0; j < G; j++) {
            const float *qj = q + j * d;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < d; i++) dot += qj[i] * kt[i];
            scores[j * cols + t] = dot * scale;
        }
    }
    for (int64_t j = 0; j < G; j++) {
        float *p = scores + j * cols, top = -INFINITY, total = 0.0f;
        for (int64_t t = 0; t < T; t++) top = p[t] > top ? p[t] : top;
        for (int64_t t = 0; t < T; t++) {
            p[t] = exp_f32(p[t] - top);
            total += p[t];
        }
        for (int64_t t = 0; t < T; t++) p[t] /= total;
    }
    float *o = out + g * G * d;
    for (int64_t i = 0; i < G * d; i++) o[i] = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        const float *vt = V + t * d;
        for (int64_t j = 0; j < G; j++) {
            float p = scores[j * cols + t], *oj = o + j * d;
#pragma omp simd
            for (int64_t i = 0; i < d; i++) oj[i] += p * vt[i];
        }
    }
}

/* One new token per row over a key/value cache [B, Hkv, cap, d]. Per row b and key head g (one
   task each): k rotated and written with v at column L = lengths[b]; each of the G = Hq / Hkv query
   heads of the group rotated and attending over columns 0..L: out[b, h] = softmax(scale q k^T) V.
   qkv row b: Hq query heads, then Hkv key heads, then Hkv value heads, `stride` floats apart.
   scratch: G * (cols + d) floats per task, cols > max(lengths). */
void kpop_kv_attend(const float *qkv, int64_t stride, const float *cos_, const float *sin_, float *keys,
                    float *values, const int64_t *lengths, float *out, float *scratch, int64_t B, int64_t Hq,
                    int64_t Hkv, int64_t d, int64_t cap, int64_t cols, float scale, int64_t threads) {
    int64_t G = Hq / Hkv;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t task = 0; task < B * Hkv; task++) {
        int64_t b = task / Hkv, g = task % Hkv;
        int64_t next = task + 1 < B * Hkv ? (task + 1) * cap * d : -1;
        kv_task(qkv + b * stride, cos_ + b * d, sin_ + b * d, keys + task * cap * d, values + task * cap * d, lengths[b],
                out + b * Hq * d, scratch + task * G * (cols + d), Hq, Hkv, g, d, cols, scale,
                next < 0 ? 0 : keys + next, next < 0 ? 0 : values + next);
    }
}

/* SwiGLU over rows: out[r, i] = silu(gu[r, i]) * gu[r, n + i], gu [rows, 2n] (gate | up). */
void kpop_swiglu(const float *gu, float *out, int64_t rows, int64_t n, int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * n, *u = g + n;
        float *o = out + r * n;
        for (int64_t i = 0; i < n; i++) o[i] = silu(g[i]) * u[i];
    }
}

#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#define KPOP_THREAD omp_get_thread_num()
#define KPOP_THREADS omp_get_num_threads()
#else
#define KPOP_THREAD 0
#define KPOP_THREADS 1
#endif

/* a . b over n floats with four independent accumulators (one chain would wait on each add). */
static float dot4(const float *a, const float *b, int64_t n) {
    int64_t j = 0;
    float total = 0.0f;
#ifdef __AVX512F__
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; j + 64 <= n; j += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(b + j + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 32), _mm512_loadu_ps(b + j + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 48), _mm512_loadu_ps(b + j + 48), s3);
    }
    total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#else
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (; j + 4 <= n; j += 4) {
        s0 += a[j] * b[j];
        s1 += a[j + 1] * b[j + 1];
        s2 += a[j + 2] * b[j + 2];
        s3 += a[j + 3] * b[j + 3];
    }
    total = (s0 + s1) + (s2 + s3);
#endif
    for (; j < n; j++) total += a[j] * b[j];
    return total;
}

/* y[i] = W[i] . x for rows [r0, r1) of W [*, n]: one row at a time, so a thread's rows are one
   sequential read. */
static void matvec_rows(const float *W, const float *x, float *y, int64_t r0, int64_t r1, int64_t n) {
    for (int64_t i = r0; i < r1; i++) y[i] = dot4(W + i * n, x, n);
}

/* Thread t's share [lo, hi) of n rows split over T threads. */
static void share(int64_t n, int64_t t, int64_t T, int64_t *lo, int64_t *hi) {
    *lo = n * t / T;
    *hi = n * (t + 1) / T;
}

/* Inside a parallel region (thread t of T): x = RMSNorm(h) on one thread, then y = W x with W's
   rows spread over the threads; every thread leaves after the last row is written. */
static void norm_then_matvec(const float *h, const float *norm_w, float eps, const float *W, int64_t rows,
                             int64_t hidden, float *x, float *y, int64_t t, int64_t T) {
    int64_t lo, hi;
#pragma omp single
    kpop_rms_norm(h, norm_w, x, 1, hidden, eps);
    share(rows, t, T, &lo, &hi);
    matvec_rows(W, x, y, lo, hi, hidden);
#pragma omp barrier
}

/* One row through a sum of SwiGLU feed-forwards: out = sum_j w[j] FFN_{ids[j]}(x) (ids ascending,
   added in that order) + FFN_dense(x), FFN(x) = down (silu(gate x) * (up x)). Expert e's gate|up
   is gate_up + e * 2I * h ([2I, h]), its down down + e * h * I ([h, I]); the dense one (optional:
   dense_gate_up NULL) dense_gate_up [2D, h], dense_down [h, D]. scratch: 3 (k I + D) floats.
   Every product's rows are spread over the threads (one parallel region, two barriers). */
void kpop_ffn_row(const float *x, const float *gate_up, const float *down, const int64_t *ids, const float *w,
                  int64_t k, int64_t I, const float *dense_gate_up, const float *dense_down, int64_t D, int64_t h,
                  float *out, float *scratch, int64_t threads) {
    int64_t m = dense_gate_up ? k + 1 : k;
    float *pre = scratch, *hid = scratch + 2 * (k * I + D);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS, lo, hi;
        for (int64_t j = 0; j < m; j++) {
            int64_t n = j < k ? I : D;
            const float *W = j < k ? gate_up + ids[j] * 2 * I * h : dense_gate_up;
            share(2 * n, t, T, &lo, &hi);
            matvec_rows(W, x, pre + 2 * j * I, lo, hi, h);
        }
#pragma omp barrier
        for (int64_t j = 0; j < m; j++) {
            int64_t n = j < k ? I : D;
            const float *g = pre + 2 * j * I, *u = g + n;
            share(n, t, T, &lo, &hi);
            for (int64_t i = lo; i < hi; i++) hid[j * I + i] = silu(g[i]) * u[i];
        }
#pragma omp barrier
        share(h, t, T, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) out[i] = 0.0f;
        for (int64_t j = 0; j < m; j++) {
            int64_t n = j < k ? I : D;
            const float *W = j < k ? down + ids[j] * h * I : dense_down, *v = hid + j * I;
            float wj = j < k ? w[j] : 1.0f;
            for (int64_t i = lo; i < hi; i++) {
                float dot = dot4(W + i * n, v, n);
                out[i] += j < k ? dot * wj : dot;
            }
        }
    }
}

/* One row through a Lightning layer's attention block, projections included: x = RMSNorm(h),
   q|k|v|gate = W_qkvg x (silu on q|k|v when silu_qkv), o = kpop_lightning_row(...) (the state
   updated in place), h_out = h + W_dense o. scratch: hidden + 5 H d floats. The products' rows
   are spread over the threads; the norm and the state's pass run on one. */
void kpop_lightning_layer_row(const float *h, const float *norm_w, float norm_eps, const float *w_qkvg, int64_t silu_qkv,
                              float *state, const float *decay, const float *q_norm, const float *k_norm,
                              const float *cos_, const float *sin_, const float *g_norm, int64_t heads, int64_t d,
                              int64_t half, int64_t groups, float qk_eps, float g_eps, float scale,
                              const float *w_dense, int64_t hidden, float *h_out, float *scratch, int64_t threads) {
    int64_t hd = heads * d;
    float *x = scratch, *qkvg = x + hidden, *o = qkvg + 4 * hd;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS, lo, hi;
        norm_then_matvec(h, norm_w, norm_eps, w_qkvg, 4 * hd, hidden, x, qkvg, t, T);
#pragma omp single
        {
            if (silu_qkv)
                for (int64_t i = 0; i < 3 * hd; i++) qkvg[i] = silu(qkvg[i]);
            kpop_lightning_row(qkvg, qkvg + 3 * hd, state, decay, q_norm, k_norm, cos_, sin_, g_norm, o, heads, d, half,
                               groups, qk_eps, g_eps, scale);
        }
        share(hidden, t, T, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) h_out[i] = h[i] + dot4(w_dense + i * hd, o, hd);
    }
}

/* Rotate pairs (2i, 2i+1) of x [2 half] by cos/sin [half] into y (kpop.models.layers.rope's
   interleaved layout). */
static void interleaved(const float *x, const float *c, const float *s, float *y, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        y[2 * i] = a * c[i] - b * s[i];
        y[2 * i + 1] = b * c[i] + a * s[i];
    }
}

/* One row through an MLA layer's attention block (q without a low-rank pair), projections
   included: x = RMSNorm(h); q | c | kr = W_qkva x (q [H, nope + rope]); column L of the cache gets
   latent[L] = RMSNorm(c) (kv_norm) and k_rope[L] = kr rotated; every head attends over columns
   0..L (`mla_head`, q's rope part rotated); h_out = h + W_dense o. Products' rows and the heads
   are spread over the threads. scratch: hidden + (H (nope + rope) + r + rope) + H (nope + rope)
   + H v + threads (L + 1 + 2 r) floats. */
void kpop_mla_layer_row(const float *h, const float *norm_w, float norm_eps, const float *w_qkva,
                        const float *kv_norm_w, float kv_eps, const float *cos_, const float *sin_, float *latent,
                        float *k_rope, int64_t L, const float *w_kv_b, float scaling, const float *w_dense,
                        int64_t hidden, int64_t H, int64_t nope, int64_t rope, int64_t v, int64_t r, float *h_out,
                        float *scratch, int64_t threads) {
    int64_t qd = H * (nope + rope), rows = qd + r + rope, T = L + 1;
    float *x = scratch, *qkva = x + hidden, *qn = qkva + rows, *qr = qn + H * nope, *o = qr + H * rope;
    float *heads_scratch = o + H * v;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T_ = KPOP_THREADS, lo, hi;
        norm_then_matvec(h, norm_w, norm_eps, w_qkva, rows, hidden, x, qkva, t, T_);
#pragma omp single
        {
            const float *c = qkva + qd, *kr = c + r;
            kpop_rms_norm(c, kv_norm_w, latent + L * r, 1, r, kv_eps);
            interleaved(kr, cos_, sin_, k_rope + L * rope, rope / 2);
            for (int64_t i = 0; i < H; i++) {
                const float *qi = qkva + i * (nope + rope);
                for (int64_t j = 0; j < nope; j++) qn[i * nope + j] = qi[j];
                interleaved(qi + nope, cos_, sin_, qr + i * rope, rope / 2);
            }
        }
        float *mine = heads_scratch + t * (T + 2 * r);
        share(H, t, T_, &lo, &hi);
        for (int64_t i = lo; i < hi; i++)
            mla_head(qn + i * nope, qr + i * rope, latent, k_rope, w_kv_b, o + i * v, mine, i, nope, rope, v, r, T, scaling);
#pragma omp barrier
        share(hidden, t, T_, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) h_out[i] = h[i] + dot4(w_dense + i * H * v, o, H * v);
    }
}

/* One row through a MoE layer's block: x = RMSNorm(h), the router's pick (kpop_route_row), then
   h_out = h + kpop_ffn_row(x, the picked experts in increasing id, the shared expert if any).
   scratch: hidden + 3 (k I + D) floats. */
void kpop_moe_layer_row(const float *h, const float *norm_w, float norm_eps, const float *gate_w, const float *bias,
                        int64_t E, int64_t n_group, int64_t topk_group, int64_t k, float scale, const float *gate_up,
                        const float *down, int64_t I, const float *dense_gate_up, const float *dense_down, int64_t D,
                        int64_t hidden, float *h_out, float *scratch, int64_t threads) {
    int64_t ids[KPOP_MAX_EXPERTS];
    float w[KPOP_MAX_EXPERTS];
    float *x = scratch;
    kpop_rms_norm(h, norm_w, x, 1, hidden, norm_eps);
    kpop_route_row(x, gate_w, bias, E, hidden, n_group, topk_group, k, scale, ids, w);
    for (int64_t i = 1; i < k; i++) /* increasing id: MoE.forward's accumulation order */
        for (int64_t j = i; j > 0 && ids[j] < ids[j - 1]; j--) {
            int64_t e = ids[j]; ids[j] = ids[j - 1]; ids[j - 1] = e;
            float f = w[j]; w[j] = w[j - 1]; w[j - 1] = f;
        }
    kpop_ffn_row(x, gate_up, down, ids, w, k, I, dense_gate_up, dense_down, D, hidden, h_out, scratch + hidden, threads);
    for (int64_t i = 0; i < hidden; i++) h_out[i] += h[i];
}

/* One row through a standard-attention layer's block: x = RMSNorm(h), q|k|v = W_qkv x (Hq query,
   Hkv key, Hkv value heads of d), kv_task per key head over keys/values [Hkv, cap, d] of the row
   (new column L, attention over 0..L), h_out = h + W_o o. scratch: hidden + (Hq + 2 Hkv) d + Hq d
   + Hkv G (L + 1 + d) floats. */
void kpop_attn_layer_row(const float *h, const float *norm_w, float norm_eps, const float *w_qkv, const float *cos_,
                         const float *sin_, float *keys, float *values, int64_t L, int64_t cap, float scale,
                         const float *w_o, int64_t hidden, int64_t Hq, int64_t Hkv, int64_t d, float *h_out,
                         float *scratch, int64_t threads) {
    int64_t rows = (Hq + 2 * Hkv) * d, G = Hq / Hkv, cols = L + 1;
    float *x = scratch, *qkv = x + hidden, *o = qkv + rows, *tasks = o + Hq * d;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS, lo, hi;
        norm_then_matvec(h, norm_w, norm_eps, w_qkv, rows, hidden, x, qkv, t, T);
        share(Hkv, t, T, &lo, &hi);
        for (int64_t g = lo; g < hi; g++)
            kv_task(qkv, cos_, sin_, keys + g * cap * d, values + g * cap * d, L, o, tasks + g * G * (cols + d), Hq, Hkv,
                    g, d, cols, scale, g + 1 < hi ? keys + (g + 1) * cap * d : 0, g + 1 < hi ? values + (g + 1) * cap * d : 0);
#pragma omp barrier
        share(hidden, t, T, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) h_out[i] = h[i] + dot4(w_o + i * Hq * d, o, Hq * d);
    }
}

/* One row through a SwiGLU MLP block: h_out = h + FFN(RMSNorm(h)) (kpop_ffn_row's dense part).
   scratch: hidden + 3 D floats. */
void kpop_mlp_layer_row(const float *h, const float *norm_w, float norm_eps, const float *gate_up, const float *down,
                        int64_t D, int64_t hidden, float *h_out, float *scratch, int64_t threads) {
    kpop_rms_norm(h, norm_w, scratch, 1, hidden, norm_eps);
    kpop_ffn_row(scratch, 0, 0, 0, 0, 0, 0, gate_up, down, D, hidden, h_out, scratch + hidden, threads);
    for (int64_t i = 0; i < hidden; i++) h_out[i] += h[i];
}
