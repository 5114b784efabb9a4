/* The kernels that read a model's own memory, written once for its storage type and included by
   native_kernels.c once per type: KPOP_T is the type (float, or bf16_t: bfloat16 bits), LD(x) the
   value of one stored element as a float, ST(x) a float rounded to the storage type, TYPED(name)
   the name with the type's suffix (name_f32, name_bf16).

   Typed (KPOP_T): weights, norm weights, router weights and bias, the key/value and MLA caches,
   and the residual row h / h_out of the one-row layer kernels. Always float: scratch and what the
   kernels compute between products (x, q|k|v, o), RoPE tables, Lightning states and decays.
   Arithmetic is float throughout, bf16 values widened on load (exact) and rounded to nearest even
   on store, so a bf16 model computes what its float32 copy computes but for the stored roundings. */

/* w . x over n values (w stored, x float), four independent accumulators. */
static float TYPED(dot4)(const KPOP_T *w, const float *x, int64_t n) {
    int64_t j = 0;
    float total = 0.0f;
#ifdef __AVX512F__
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; j + 64 <= n; j += 64) {
        s0 = _mm512_fmadd_ps(LOAD16(w + j), _mm512_loadu_ps(x + j), s0);
        s1 = _mm512_fmadd_ps(LOAD16(w + j + 16), _mm512_loadu_ps(x + j + 16), s1);
        s2 = _mm512_fmadd_ps(LOAD16(w + j + 32), _mm512_loadu_ps(x + j + 32), s2);
        s3 = _mm512_fmadd_ps(LOAD16(w + j + 48), _mm512_loadu_ps(x + j + 48), s3);
    }
    total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#else
    /* Eight explicit lanes (a vector type, not a loop the compiler may vectorize at a width of its
       choosing): both storage types' builds then add the same products in the same order, so a
       bf16 result stays the float32 one on the same values on every CPU. */
    kpop_v8 s = {0.0f};
    for (; j + 8 <= n; j += 8) {
        kpop_v8 wv, xv;
        for (int k = 0; k < 8; k++) wv[k] = LD(w[j + k]);
        memcpy(&xv, x + j, sizeof xv);
        s += wv * xv;
    }
    total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
#endif
    for (; j < n; j++) total += LD(w[j]) * x[j];
    return total;
}

/* y[i] = W[i] . x for rows [r0, r1) of W [*, n]: a thread's rows are one sequential read. */
static void TYPED(matvec_rows)(const KPOP_T *W, const float *x, float *y, int64_t r0, int64_t r1, int64_t n) {
    for (int64_t i = r0; i < r1; i++) y[i] = TYPED(dot4)(W + i * n, x, n);
}

static void TYPED(load_row)(const KPOP_T *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = LD(src[i]);
}

static void TYPED(store_row)(const float *src, KPOP_T *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = ST(src[i]);
}

/* y = x / sqrt(mean(x^2) + eps) * w over n values (y may be x). */
static void TYPED(rms)(const float *x, const KPOP_T *w, float *y, int64_t n, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * inv) * LD(w[i]);
}

/* Inside a parallel region (thread t of T): x = RMSNorm(h) on one thread, then y = W x with W's
   rows spread over the threads; every thread leaves after the last row is written. */
static void TYPED(norm_then_matvec)(const KPOP_T *h, const KPOP_T *norm_w, float eps, const KPOP_T *W, int64_t rows,
                                    int64_t hidden, float *x, float *y, int64_t t, int64_t T) {
    int64_t lo, hi;
#pragma omp single
    {
        TYPED(load_row)(h, x, hidden);
        TYPED(rms)(x, norm_w, x, hidden, eps);
    }
    share(rows, t, T, &lo, &hi);
    TYPED(matvec_rows)(W, x, y, lo, hi, hidden);
#pragma omp barrier
}

/* h_out[i] = h[i] + W[i] . o for this thread's share of the hidden rows. */
static void TYPED(residual_rows)(const KPOP_T *h, const KPOP_T *W, const float *o, int64_t n, KPOP_T *h_out,
                                 int64_t hidden, int64_t t, int64_t T) {
    int64_t lo, hi;
    share(hidden, t, T, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) h_out[i] = ST(LD(h[i]) + TYPED(dot4)(W + i * n, o, n));
}

/* One token of Lightning attention for one row, from its q|k|v and gate projections (float):
   per head q and k RMS-normed (q_norm given) and rotated on their first 2 half dims, S <- decay S
   + k^T v in place, o = (scale q) S; out = group RMSNorm(o) * sigmoid(gate). */
static void TYPED(lightning_row)(const float *qkv, const float *gate, float *state, const float *decay,
                                 const KPOP_T *q_norm, const KPOP_T *k_norm, const float *cos_, const float *sin_,
                                 const KPOP_T *g_norm, float *out, int64_t heads, int64_t d, int64_t half,
                                 int64_t groups, float qk_eps, float g_eps, float scale) {
    float q[KPOP_MAX_HEAD_DIM], k[KPOP_MAX_HEAD_DIM];
    for (int64_t h = 0; h < heads; h++) {
        const float *qh = qkv + h * d, *kh = qkv + (heads + h) * d, *v = qkv + (2 * heads + h) * d;
        if (q_norm) {
            TYPED(rms)(qh, q_norm, q, d, qk_eps);
            TYPED(rms)(kh, k_norm, k, d, qk_eps);
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
        TYPED(rms)(o, g_norm + grp * size, o, size, g_eps);
        const float *gt = gate + grp * size;
        for (int64_t i = 0; i < size; i++) o[i] *= 1.0f / (1.0f + exp_f32(-gt[i]));
    }
}

/* MoEGate's sigmoid router for one row (x float, W and bias stored): s = sigmoid(W x), experts
   picked by s + bias (group-limited when n_group > 1: a group's score is the sum of its best two),
   weights s of the picked experts normalised to sum 1 when k > 1, times scale. Writes idx[k] and
   w[k] in pick order. */
static void TYPED(route_row)(const float *x, const KPOP_T *W, const KPOP_T *bias, int64_t E, int64_t h,
                             int64_t n_group, int64_t topk_group, int64_t k, float scale, int64_t *idx, float *w) {
    float s[KPOP_MAX_EXPERTS], sel[KPOP_MAX_EXPERTS];
    for (int64_t e = 0; e < E; e++) {
        s[e] = 1.0f / (1.0f + exp_f32(-TYPED(dot4)(W + e * h, x, h)));
        sel[e] = s[e] + LD(bias[e]);
    }
    pick_experts(s, sel, E, n_group, topk_group, k, scale, idx, w);
}

/* route_row for each of `rows` rows x [rows, h] (stored), spread over the threads: idx [rows, k],
   w [rows, k] in pick order. scratch: rows x h floats (each row's float copy). */
void TYPED(kpop_route_rows)(const KPOP_T *x, const KPOP_T *W, const KPOP_T *bias, int64_t rows, int64_t E, int64_t h,
                            int64_t n_group, int64_t topk_group, int64_t k, float scale, int64_t *idx, float *w,
                            float *scratch, int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        float *xr = scratch + r * h;
        TYPED(load_row)(x + r * h, xr, h);
        TYPED(route_row)(xr, W, bias, E, h, n_group, topk_group, k, scale, idx + r * k, w + r * k);
    }
}

/* A MoE layer's several rows before the experts: the (row, slot) pairs of idx [N, k] sorted by
   expert, stably (one expert's pairs in their flat order: argsort(stable=True)'s order). counts[e]:
   pairs of expert e; pos[i]: the sorted position of flat pair i; rows[pos[i]] = x[i / k]. An id
   outside [0, E) writes nothing but counts[0] = -1. */
void TYPED(kpop_moe_dispatch)(const KPOP_T *x, const int64_t *idx, int64_t N, int64_t k, int64_t E, int64_t h,
                              int64_t *counts, int64_t *pos, KPOP_T *rows) {
    int64_t next[KPOP_MAX_EXPERTS], start = 0;
    for (int64_t e = 0; e < E; e++) counts[e] = 0;
    for (int64_t i = 0; i < N * k; i++) {
        if (idx[i] < 0 || idx[i] >= E) {
            counts[0] = -1;
            return;
        }
        counts[idx[i]]++;
    }
    for (int64_t e = 0; e < E; e++) {
        next[e] = start;
        start += counts[e];
    }
    for (int64_t i = 0; i < N * k; i++) {
        int64_t p = next[idx[i]]++;
        pos[i] = p;
        memcpy(rows + p * h, x + (i / k) * h, (size_t)h * sizeof *x);
    }
}

/* A MoE layer's several rows after the experts: for row t, y = sum of w[i] * (its expert's output
   row) over its pairs i = t k .. t k + k - 1 in increasing sorted position (expert id: the order
   of index_add over the sorted pairs), in float from 0; out[t] = ST(y), then ST(out + shared[t])
   where shared is given, then ST(residual[t] + out) where residual is given (each rounding where
   torch rounds the same sums). blocks[e]: expert e's outputs [counts[e], h] (sorted rows from
   kpop_moe_dispatch; NULL where counts[e] is 0); idx, pos as there; w [N, k] float. */
KPOP_UNFUSED void TYPED(kpop_moe_combine)(const KPOP_T *const *blocks, const int64_t *counts, const int64_t *idx, const int64_t *pos,
                             const float *w, const KPOP_T *shared, const KPOP_T *residual, KPOP_T *out, int64_t N,
                             int64_t k, int64_t E, int64_t h, int64_t threads) {
    int64_t starts[KPOP_MAX_EXPERTS], start = 0;
    for (int64_t e = 0; e < E; e++) {
        starts[e] = start;
        start += counts[e];
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && N > 1)
    for (int64_t t = 0; t < N; t++) {
        int64_t slots[KPOP_MAX_EXPERTS];
        for (int64_t s = 0; s < k; s++) {  /* insertion sort of the row's pairs by sorted position */
            int64_t i = t * k + s, j = s;
            for (; j > 0 && pos[slots[j - 1]] > pos[i]; j--) slots[j] = slots[j - 1];
            slots[j] = i;
        }
        KPOP_T *o = out + t * h;
        for (int64_t c = 0; c < h; c += 64) {
            int64_t n = h - c < 64 ? h - c : 64;
            float acc[64] = {0.0f};
            for (int64_t s = 0; s < k; s++) {
                int64_t i = slots[s];
                const KPOP_T *row = blocks[idx[i]] + (pos[i] - starts[idx[i]]) * h + c;
                float wi = w[i];
                for (int64_t j = 0; j < n; j++) {
                    float product = LD(row[j]) * wi;
                    acc[j] += product;
                }
            }
            /* one branch-free loop per step, so each vectorizes; acc holds each rounded value */
            for (int64_t j = 0; j < n; j++) acc[j] = LD(ST(acc[j]));
            if (shared)
                for (int64_t j = 0; j < n; j++) acc[j] = LD(ST(acc[j] + LD(shared[t * h + c + j])));
            if (residual)
                for (int64_t j = 0; j < n; j++) acc[j] = LD(ST(LD(residual[t * h + c + j]) + acc[j]));
            for (int64_t j = 0; j < n; j++) o[c + j] = ST(acc[j]);
        }
    }
}

/* Absorbed multi-latent attention of one head h for one row over its T cached columns:
   q_lat = q_nope W_uk[h] ([nope] x [nope, r]), scores[t] = scaling (q_lat . latent[t] + q_rope .
   k_rope[t]), p = softmax(scores), out = W_uv[h] (sum_t p[t] latent[t]). w_kv_b [H, nope + v, r]
   holds W_uk (first nope rows of each head) and W_uv (the next v). scratch: T + 2 r floats. */
static void TYPED(mla_head)(const float *qn, const float *qr, const KPOP_T *latent, const KPOP_T *k_rope,
                            const KPOP_T *w_kv_b, float *o, float *scratch, int64_t h, int64_t nope, int64_t rope,
                            int64_t v, int64_t r, int64_t T, float scaling) {
    float *scores = scratch, *q_lat = scratch + T, *ctx = scratch + T + r;
    const KPOP_T *w_uk = w_kv_b + h * (nope + v) * r, *w_uv = w_uk + nope * r;
    for (int64_t j = 0; j < r; j++) q_lat[j] = 0.0f;
    for (int64_t n = 0; n < nope; n++) {
        float a = qn[n];
        const KPOP_T *row = w_uk + n * r;
        for (int64_t j = 0; j < r; j++) q_lat[j] += a * LD(row[j]);
    }
    for (int64_t t = 0; t < T; t++)
        scores[t] = (TYPED(dot4)(latent + t * r, q_lat, r) + TYPED(dot4)(k_rope + t * rope, qr, rope)) * scaling;
    float total = exp_shifted(scores, T);
    for (int64_t j = 0; j < r; j++) ctx[j] = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        float p = scores[t] / total;
        const KPOP_T *lt = latent + t * r;
        for (int64_t j = 0; j < r; j++) ctx[j] += p * LD(lt[j]);
    }
    for (int64_t i = 0; i < v; i++) o[i] = TYPED(dot4)(w_uv + i * r, ctx, r);
}

/* Absorbed MLA attention for several rows between its two head products: row b (one task) over
   its columns 0..lengths[b] of latent [B, cap, r] and k_rope [B, cap, rope], every head at once,
   so each cached column is read once per row, not once per head: scores[h, t] = scaling
   (q_lat[h, b] . latent[b, t] + q_rope[b, h] . k_rope[b, t]), p = softmax over t, ctx[h, b] =
   sum_t p[h, t] latent[b, t]. q_lat and ctx [H, B, r] (the head products' layout), q_rope
   [B, H, rope], all float. scratch: H * cols floats per row, cols > max(lengths). */
void TYPED(kpop_mla_attend_rows)(const float *q_lat, const float *q_rope, const KPOP_T *latent, const KPOP_T *k_rope,
                                 const int64_t *lengths, float *ctx, float *scratch, int64_t B, int64_t H, int64_t r,
                                 int64_t rope, int64_t cap, int64_t cols, float scaling, int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && B > 1)
    for (int64_t b = 0; b < B; b++) {
        int64_t n = lengths[b] < cols ? lengths[b] + 1 : cols; /* the contract says lengths < cols: never past scratch */
        float *scores = scratch + b * H * cols;
        const KPOP_T *lat = latent + b * cap * r, *kr = k_rope + b * cap * rope;
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < H; h++)
                scores[h * cols + t] = (TYPED(dot4)(lat + t * r, q_lat + (h * B + b) * r, r)
                                        + TYPED(dot4)(kr + t * rope, q_rope + (b * H + h) * rope, rope)) * scaling;
        for (int64_t h = 0; h < H; h++) {
            float *p = scores + h * cols, inv = 1.0f / exp_shifted(p, n), *o = ctx + (h * B + b) * r;
            for (int64_t t = 0; t < n; t++) p[t] *= inv;
            for (int64_t j = 0; j < r; j++) o[j] = 0.0f;
        }
        for (int64_t t = 0; t < n; t++) {
            const KPOP_T *lt = lat + t * r;
            for (int64_t h = 0; h < H; h++) {
                float w = scores[h * cols + t], *o = ctx + (h * B + b) * r;
                for (int64_t j = 0; j < r; j++) o[j] += w * LD(lt[j]);
            }
        }
    }
}

#ifdef __AVX512F__
/* kv_task's scores and output for d = 16 nb, with each 16-value block of a head in a register: a
   column's score is nb multiply-adds and one horizontal sum, its share of the output nb
   multiply-adds into nb independent sums. Inlined per nb, so the blocks stay in registers. */
static inline __attribute__((always_inline)) void TYPED(kv_blocks)(
    const float *q, const KPOP_T *K, const KPOP_T *V, int64_t T, float *o, float *scores, int64_t G, int64_t cols,
    float scale, const KPOP_T *next_K, const KPOP_T *next_V, const int64_t nb) {
    int64_t d = 16 * nb, line = 64 / (int64_t)sizeof(KPOP_T);
    for (int64_t j = 0; j < G; j++) {
        __m512 qv[8], acc[8];
        float *p = scores + j * cols;
        for (int64_t b = 0; b < nb; b++) qv[b] = _mm512_loadu_ps(q + j * d + 16 * b);
        for (int64_t t = 0; t < T; t++) {
            const KPOP_T *kt = K + t * d;
            if (j == 0)
                for (int64_t x = 0; x < d; x += line) {
                    __builtin_prefetch(V + t * d + x, 0, 3);
                    if (next_K) {
                        __builtin_prefetch(next_K + t * d + x, 0, 2);
                        __builtin_prefetch(next_V + t * d + x, 0, 2);
                    }
                }
            __m512 s = _mm512_mul_ps(LOAD16(kt), qv[0]);
            for (int64_t b = 1; b < nb; b++) s = _mm512_fmadd_ps(LOAD16(kt + 16 * b), qv[b], s);
            p[t] = _mm512_reduce_add_ps(s) * scale;
        }
        float inv = 1.0f / exp_shifted(p, T);
        for (int64_t b = 0; b < nb; b++) acc[b] = _mm512_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            const KPOP_T *vt = V + t * d;
            __m512 pt = _mm512_set1_ps(p[t] * inv);
            for (int64_t b = 0; b < nb; b++) acc[b] = _mm512_fmadd_ps(pt, LOAD16(vt + 16 * b), acc[b]);
        }
        for (int64_t b = 0; b < nb; b++) _mm512_storeu_ps(o + j * d + 16 * b, acc[b]);
    }
}
#endif

/* kv_attend's work for one (row b, key head g) task: the group's G query heads q_in [G, d], its
   key k_in [d] and value v_in [d] (float) in, o [G, d] (float) out, the cache stored. k rotated
   and written with v at column L, each query head rotated and attending over columns 0..L.
   scores: G (cols + d) floats. next_K/next_V: the keys/values the thread reads next (NULL: none),
   fetched into the caches while this task computes (one hint per 64-byte line): each task's
   columns are a short run of their own, and without the hints every run started with a stall (64
   rows, 12 heads of 64, 41 columns: 1.86x the time, where a plain read of the same bytes took 1.3
   ms; benchmarks/native_kernels.py measures the whole step). */
static void TYPED(kv_task)(const float *q_in, const float *k_in, const float *v_in, const float *c, const float *s,
                           KPOP_T *K, KPOP_T *V, int64_t L, float *o, float *scores, int64_t G, int64_t d, int64_t cols,
                           float scale, const KPOP_T *next_K, const KPOP_T *next_V) {
    int64_t T = L + 1, line = 64 / (int64_t)sizeof(KPOP_T);
    float *q = scores + G * cols;
    rotate_half(k_in, c, s, q, d);
    TYPED(store_row)(q, K + L * d, d);
    TYPED(store_row)(v_in, V + L * d, d);
    for (int64_t j = 0; j < G; j++) rotate_half(q_in + j * d, c, s, q + j * d, d);
#ifdef __AVX512F__
    /* float32 at one query head per key head is bound by its reads: there the general loops below
       measured 0.89-0.95x the time of the blocks (64 rows, 12 heads of 64, 33-41 columns). */
    if (KPOP_WIDENED || G > 1) switch (d) {
    case 32: TYPED(kv_blocks)(q, K, V, T, o, scores, G, cols, scale, next_K, next_V, 2); return;
    case 64: TYPED(kv_blocks)(q, K, V, T, o, scores, G, cols, scale, next_K, next_V, 4); return;
    case 128: TYPED(kv_blocks)(q, K, V, T, o, scores, G, cols, scale, next_K, next_V, 8); return;
    }
#endif
    for (int64_t t = 0; t < T; t++) {
        const KPOP_T *kt = K + t * d;
        for (int64_t x = 0; x < d; x += line) {
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
            for (int64_t i = 0; i < d; i++) dot += qj[i] * LD(kt[i]);
            scores[j * cols + t] = dot * scale;
        }
    }
    for (int64_t j = 0; j < G; j++) {
        float *p = scores + j * cols, total = exp_shifted(p, T);
        for (int64_t t = 0; t < T; t++) p[t] /= total;
    }
    if (d % 16 == 0) {
        /* Each 16-value block of a head's output summed over the columns in one register, where a
           pass per column loads and stores the whole output row each time (64 rows, 12 heads of
           64, 41 columns, in-process A/B over 30 pairs: bf16 0.89x the time, float32 0.97x). */
        for (int64_t j = 0; j < G; j++)
            for (int64_t i0 = 0; i0 < d; i0 += 16) {
                const float *p = scores + j * cols;
                float acc[16] = {0.0f};
                for (int64_t t = 0; t < T; t++) {
                    const KPOP_T *vt = V + t * d + i0;
#pragma omp simd
                    for (int64_t k = 0; k < 16; k++) acc[k] += p[t] * LD(vt[k]);
                }
                for (int64_t k = 0; k < 16; k++) o[j * d + i0 + k] = acc[k];
            }
        return;
    }
    for (int64_t i = 0; i < G * d; i++) o[i] = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        const KPOP_T *vt = V + t * d;
        for (int64_t j = 0; j < G; j++) {
            float p = scores[j * cols + t], *oj = o + j * d;
#pragma omp simd
            for (int64_t i = 0; i < d; i++) oj[i] += p * LD(vt[i]);
        }
    }
}

/* One row (x float) through a sum of SwiGLU feed-forwards: out = sum_j w[j] FFN_{ids[j]}(x) (ids
   ascending, added in that order) + FFN_dense(x), FFN(x) = down (silu(gate x) * (up x)). Expert
   e's gate|up is gate_up + e * 2I * h ([2I, h]), its down down + e * h * I ([h, I]); the dense one
   (optional: dense_gate_up NULL) dense_gate_up [2D, h], dense_down [h, D]. out: float [h].
   scratch: 3 (k I + D) floats. Every product's rows are spread over the threads (one parallel
   region, two barriers). */
void TYPED(kpop_ffn_row)(const float *x, const KPOP_T *gate_up, const KPOP_T *down, const int64_t *ids,
                         const float *w, int64_t k, int64_t I, const KPOP_T *dense_gate_up, const KPOP_T *dense_down,
                         int64_t D, int64_t h, float *out, float *scratch, int64_t threads) {
    int64_t m = dense_gate_up ? k + 1 : k;
    float *pre = scratch, *hid = scratch + 2 * (k * I + D);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS, lo, hi;
        for (int64_t j = 0; j < m; j++) {
            int64_t n = j < k ? I : D;
            const KPOP_T *W = j < k ? gate_up + ids[j] * 2 * I * h : dense_gate_up;
            share(2 * n, t, T, &lo, &hi);
            TYPED(matvec_rows)(W, x, pre + 2 * j * I, lo, hi, h);
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
            const KPOP_T *W = j < k ? down + ids[j] * h * I : dense_down;
            const float *v = hid + j * I;
            float wj = j < k ? w[j] : 1.0f;
            for (int64_t i = lo; i < hi; i++) {
                float dot = TYPED(dot4)(W + i * n, v, n);
                out[i] += j < k ? dot * wj : dot;
            }
        }
    }
}

/* One row through a Lightning layer's attention block, projections included: x = RMSNorm(h),
   q|k|v|gate = W_qkvg x (silu on q|k|v when silu_qkv), o = lightning_row(...) (the state updated
   in place), h_out = h + W_dense o. scratch: hidden + 5 H d floats. The products' rows are spread
   over the threads; the norm and the state's pass run on one. */
void TYPED(kpop_lightning_layer_row)(const KPOP_T *h, const KPOP_T *norm_w, float norm_eps, const KPOP_T *w_qkvg,
                                     int64_t silu_qkv, float *state, const float *decay, const KPOP_T *q_norm,
                                     const KPOP_T *k_norm, const float *cos_, const float *sin_, const KPOP_T *g_norm,
                                     int64_t heads, int64_t d, int64_t half, int64_t groups, float qk_eps, float g_eps,
                                     float scale, const KPOP_T *w_dense, int64_t hidden, KPOP_T *h_out, float *scratch,
                                     int64_t threads) {
    int64_t hd = heads * d;
    float *x = scratch, *qkvg = x + hidden, *o = qkvg + 4 * hd;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS;
        TYPED(norm_then_matvec)(h, norm_w, norm_eps, w_qkvg, 4 * hd, hidden, x, qkvg, t, T);
#pragma omp single
        {
            if (silu_qkv)
                for (int64_t i = 0; i < 3 * hd; i++) qkvg[i] = silu(qkvg[i]);
            TYPED(lightning_row)(qkvg, qkvg + 3 * hd, state, decay, q_norm, k_norm, cos_, sin_, g_norm, o, heads, d,
                                 half, groups, qk_eps, g_eps, scale);
        }
        TYPED(residual_rows)(h, w_dense, o, hd, h_out, hidden, t, T);
    }
}

/* One row through an MLA layer's attention block (q without a low-rank pair), projections
   included: x = RMSNorm(h); q | c | kr = W_qkva x (q [H, nope + rope]); column L of the cache gets
   latent[L] = RMSNorm(c) (kv_norm) and k_rope[L] = kr rotated; every head attends over columns
   0..L (`mla_head`, q's rope part rotated); h_out = h + W_dense o. Products' rows and the heads
   are spread over the threads. scratch: hidden + (H (nope + rope) + r + rope) + H (nope + rope)
   + H v + threads (L + 1 + 2 r) floats. */
void TYPED(kpop_mla_layer_row)(const KPOP_T *h, const KPOP_T *norm_w, float norm_eps, const KPOP_T *w_qkva,
                               const KPOP_T *kv_norm_w, float kv_eps, const float *cos_, const float *sin_,
                               KPOP_T *latent, KPOP_T *k_rope, int64_t L, const KPOP_T *w_kv_b, float scaling,
                               const KPOP_T *w_dense, int64_t hidden, int64_t H, int64_t nope, int64_t rope,
                               int64_t v, int64_t r, KPOP_T *h_out, float *scratch, int64_t threads) {
    int64_t qd = H * (nope + rope), rows = qd + r + rope, T = L + 1;
    float *x = scratch, *qkva = x + hidden, *qn = qkva + rows, *qr = qn + H * nope, *o = qr + H * rope;
    float *heads_scratch = o + H * v;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T_ = KPOP_THREADS, lo, hi;
        TYPED(norm_then_matvec)(h, norm_w, norm_eps, w_qkva, rows, hidden, x, qkva, t, T_);
#pragma omp single
        {
            float *c = qkva + qd, *kr = c + r;
            TYPED(rms)(c, kv_norm_w, c, r, kv_eps);
            TYPED(store_row)(c, latent + L * r, r);
            interleaved(kr, cos_, sin_, kr, rope / 2);
            TYPED(store_row)(kr, k_rope + L * rope, rope);
            for (int64_t i = 0; i < H; i++) {
                const float *qi = qkva + i * (nope + rope);
                for (int64_t j = 0; j < nope; j++) qn[i * nope + j] = qi[j];
                interleaved(qi + nope, cos_, sin_, qr + i * rope, rope / 2);
            }
        }
        float *mine = heads_scratch + t * (T + 2 * r);
        share(H, t, T_, &lo, &hi);
        for (int64_t i = lo; i < hi; i++)
            TYPED(mla_head)(qn + i * nope, qr + i * rope, latent, k_rope, w_kv_b, o + i * v, mine, i, nope, rope, v, r,
                            T, scaling);
#pragma omp barrier
        TYPED(residual_rows)(h, w_dense, o, H * v, h_out, hidden, t, T_);
    }
}

/* One row through a MoE layer's block: x = RMSNorm(h), the router's pick (route_row), then
   h_out = h + kpop_ffn_row(x, the picked experts in increasing id, the shared expert if any).
   scratch: 2 hidden + 3 (k I + D) floats. */
void TYPED(kpop_moe_layer_row)(const KPOP_T *h, const KPOP_T *norm_w, float norm_eps, const KPOP_T *gate_w,
                               const KPOP_T *bias, int64_t E, int64_t n_group, int64_t topk_group, int64_t k,
                               float scale, const KPOP_T *gate_up, const KPOP_T *down, int64_t I,
                               const KPOP_T *dense_gate_up, const KPOP_T *dense_down, int64_t D, int64_t hidden,
                               KPOP_T *h_out, float *scratch, int64_t threads) {
    int64_t ids[KPOP_MAX_EXPERTS];
    float w[KPOP_MAX_EXPERTS];
    float *x = scratch, *y = scratch + hidden;
    TYPED(load_row)(h, x, hidden);
    TYPED(rms)(x, norm_w, x, hidden, norm_eps);
    TYPED(route_row)(x, gate_w, bias, E, hidden, n_group, topk_group, k, scale, ids, w);
    in_id_order(ids, w, k);
    TYPED(kpop_ffn_row)(x, gate_up, down, ids, w, k, I, dense_gate_up, dense_down, D, hidden, y, y + hidden, threads);
    for (int64_t i = 0; i < hidden; i++) h_out[i] = ST(LD(h[i]) + y[i]);
}

/* One row through a standard-attention layer's block: x = RMSNorm(h), q|k|v = W_qkv x (Hq query,
   Hkv key, Hkv value heads of d), kv_task per key head over keys/values [Hkv, cap, d] of the row
   (new column L, attention over 0..L), h_out = h + W_o o. scratch: hidden + (Hq + 2 Hkv) d + Hq d
   + Hkv G (L + 1 + d) floats. */
void TYPED(kpop_attn_layer_row)(const KPOP_T *h, const KPOP_T *norm_w, float norm_eps, const KPOP_T *w_qkv,
                                const float *cos_, const float *sin_, KPOP_T *keys, KPOP_T *values, int64_t L,
                                int64_t cap, float scale, const KPOP_T *w_o, int64_t hidden, int64_t Hq, int64_t Hkv,
                                int64_t d, KPOP_T *h_out, float *scratch, int64_t threads) {
    int64_t rows = (Hq + 2 * Hkv) * d, G = Hq / Hkv, cols = L + 1;
    float *x = scratch, *qkv = x + hidden, *o = qkv + rows, *tasks = o + Hq * d;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS, lo, hi;
        TYPED(norm_then_matvec)(h, norm_w, norm_eps, w_qkv, rows, hidden, x, qkv, t, T);
        share(Hkv, t, T, &lo, &hi);
        for (int64_t g = lo; g < hi; g++)
            TYPED(kv_task)(qkv + g * G * d, qkv + (Hq + g) * d, qkv + (Hq + Hkv + g) * d, cos_, sin_, keys + g * cap * d,
                           values + g * cap * d, L, o + g * G * d, tasks + g * G * (cols + d), G, d, cols, scale,
                           g + 1 < hi ? keys + (g + 1) * cap * d : 0, g + 1 < hi ? values + (g + 1) * cap * d : 0);
#pragma omp barrier
        TYPED(residual_rows)(h, w_o, o, Hq * d, h_out, hidden, t, T);
    }
}

/* y = W RMSNorm(h) for one row (a model's final norm and head): W [rows, hidden], y [rows]
   stored; W's rows spread over the threads. scratch: hidden + rows floats. */
void TYPED(kpop_norm_head_row)(const KPOP_T *h, const KPOP_T *norm_w, float norm_eps, const KPOP_T *W, int64_t rows,
                               int64_t hidden, KPOP_T *y, float *scratch, int64_t threads) {
    float *x = scratch, *y_f = scratch + hidden;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t t = KPOP_THREAD, T = KPOP_THREADS, lo, hi;
        TYPED(norm_then_matvec)(h, norm_w, norm_eps, W, rows, hidden, x, y_f, t, T);
        share(rows, t, T, &lo, &hi);
        TYPED(store_row)(y_f + lo, y + lo, hi - lo);
    }
}

/* One row through a SwiGLU MLP block: h_out = h + FFN(RMSNorm(h)) (kpop_ffn_row's dense part).
   scratch: 2 hidden + 3 D floats. */
void TYPED(kpop_mlp_layer_row)(const KPOP_T *h, const KPOP_T *norm_w, float norm_eps, const KPOP_T *gate_up,
                               const KPOP_T *down, int64_t D, int64_t hidden, KPOP_T *h_out, float *scratch,
                               int64_t threads) {
    float *x = scratch, *y = scratch + hidden;
    TYPED(load_row)(h, x, hidden);
    TYPED(rms)(x, norm_w, x, hidden, norm_eps);
    TYPED(kpop_ffn_row)(x, 0, 0, 0, 0, 0, 0, gate_up, down, D, hidden, y, y + hidden, threads);
    for (int64_t i = 0; i < hidden; i++) h_out[i] = ST(LD(h[i]) + y[i]);
}

/* RMSNorm over rows, spread over the threads: y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for
   `rows` rows of `n` values, in the modules' order of roundings: the normalised value rounded
   to the storage type, then scaled by the weight (`weight * normalised.to(dtype)`). */
/* One stored row's RMSNorm, stored: the normalised value rounded before the weight's product. */
static void TYPED(rms_stored)(const KPOP_T *x, const KPOP_T *w, KPOP_T *y, int64_t n, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += LD(x[i]) * LD(x[i]);
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = ST(LD(ST(LD(x[i]) * inv)) * LD(w[i]));
}

void TYPED(kpop_rms_norm)(const KPOP_T *x, const KPOP_T *w, KPOP_T *y, int64_t rows, int64_t n, float eps,
                          int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
    for (int64_t r = 0; r < rows; r++) TYPED(rms_stored)(x + r * n, w, y + r * n, n, eps);
}

/* MLA for several rows between its first product and its head products. Row b of qkv (`stride`
   apart: H heads of nope | rope, then the latent c [r], then k_rope [rope]) at position
   lengths[b]: column lengths[b] of the row's cache gets RMSNorm(c) (kv_norm_w, kv_eps; stored as
   `kpop_rms_norm` stores) and k_rope rotated in pairs (2i, 2i+1) by cos/sin [B, rope / 2], stored;
   q_nope [H, B, nope] gets each head's nope part, q_rope [B, H, rope] its rope part rotated the
   same way and rounded to the stored type (apply_interleaved's output), both widened to float. */
void TYPED(kpop_mla_prep_rows)(const KPOP_T *qkv, int64_t stride, const KPOP_T *kv_norm_w, float kv_eps, const float *cos_,
                               const float *sin_, KPOP_T *latent, KPOP_T *k_rope, const int64_t *lengths, float *q_nope,
                               float *q_rope, int64_t B, int64_t H, int64_t nope, int64_t rope, int64_t r, int64_t cap,
                               int64_t threads) {
    int64_t half = rope / 2;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && B > 1)
    for (int64_t b = 0; b < B; b++) {
        const KPOP_T *q = qkv + b * stride, *c = q + H * (nope + rope), *kr = c + r;
        const float *cb = cos_ + b * half, *sb = sin_ + b * half;
        int64_t col = b * cap + lengths[b];
        float tmp[KPOP_MAX_HEAD_DIM];
        TYPED(rms_stored)(c, kv_norm_w, latent + col * r, r, kv_eps);
        TYPED(load_row)(kr, tmp, rope);
        interleaved(tmp, cb, sb, tmp, half);
        TYPED(store_row)(tmp, k_rope + col * rope, rope);
        for (int64_t h = 0; h < H; h++) {
            const KPOP_T *qh = q + h * (nope + rope);
            TYPED(load_row)(qh, q_nope + (h * B + b) * nope, nope);
            TYPED(load_row)(qh + nope, tmp, rope);
            interleaved(tmp, cb, sb, tmp, half);
            float *out = q_rope + (b * H + h) * rope;
            for (int64_t j = 0; j < rope; j++) out[j] = LD(ST(tmp[j]));
        }
    }
}

/* SwiGLU over rows: out[r, i] = silu(gu[r, i]) * gu[r, n + i], gu [rows, 2n] (gate | up). */
void TYPED(kpop_swiglu)(const KPOP_T *gu, KPOP_T *out, int64_t rows, int64_t n, int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const KPOP_T *g = gu + r * 2 * n, *u = g + n;
        KPOP_T *o = out + r * n;
        for (int64_t i = 0; i < n; i++) o[i] = ST(silu(LD(g[i])) * LD(u[i]));
    }
}

/* One new token per row over a key/value cache [B, Hkv, cap, d] (stored). Per row b and key head
   g (one task each): kv_task over the row's q|k|v (Hq query heads, then Hkv key heads, then Hkv
   value heads, `stride` values apart in qkv) at column L = lengths[b]: out[b, h] = softmax(scale
   q k^T) V. scratch: kv_attend_scratch floats per task, cols > max(lengths). Stored q|k|v and out
   go through float copies in the task's scratch (bf16); float32 ones are used in place. */
void TYPED(kpop_kv_attend)(const KPOP_T *qkv, int64_t stride, const float *cos_, const float *sin_, KPOP_T *keys,
                           KPOP_T *values, const int64_t *lengths, KPOP_T *out, float *scratch, int64_t B, int64_t Hq,
                           int64_t Hkv, int64_t d, int64_t cap, int64_t cols, float scale, int64_t threads) {
    int64_t G = Hq / Hkv, per = G * (cols + d) + KPOP_WIDENED * (2 * G + 2) * d;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t task = 0; task < B * Hkv; task++) {
        int64_t b = task / Hkv, g = task % Hkv;
        int64_t next = task + 1 < B * Hkv ? (task + 1) * cap * d : -1;
        const KPOP_T *q = qkv + b * stride + g * G * d, *k = qkv + b * stride + (Hq + g) * d, *v = k + Hkv * d;
        KPOP_T *o = out + b * Hq * d + g * G * d;
        float *mine = scratch + task * per;
#if KPOP_WIDENED
        float *in = mine + G * (cols + d), *o_f = in + (G + 2) * d;
        TYPED(load_row)(q, in, G * d);
        TYPED(load_row)(k, in + G * d, d);
        TYPED(load_row)(v, in + (G + 1) * d, d);
        TYPED(kv_task)(in, in + G * d, in + (G + 1) * d, cos_ + b * d, sin_ + b * d, keys + task * cap * d,
                       values + task * cap * d, lengths[b], o_f, mine, G, d, cols, scale,
                       next < 0 ? 0 : keys + next, next < 0 ? 0 : values + next);
        TYPED(store_row)(o_f, o, G * d);
#else
        TYPED(kv_task)(q, k, v, cos_ + b * d, sin_ + b * d, keys + task * cap * d, values + task * cap * d, lengths[b],
                       o, mine, G, d, cols, scale, next < 0 ? 0 : keys + next, next < 0 ? 0 : values + next);
#endif
    }
}

/* lightning_row for each of `rows` rows, spread over the threads: qkvg [rows, 4 H d] (q|k|v,
   then the gate; silu applied to q|k|v first when silu_qkv, in place for float32, in a float copy
   in scratch (rows x 5 H d floats) for bf16), state [rows, H, d, d] (float32) updated in place,
   cos_/sin_ [rows, half], out [rows, H d]. One pass over each row's state, where torch's ops (a
   scale, an outer-product add, a product) read it three times and write it twice. */
void TYPED(kpop_lightning_rows)(KPOP_T *qkvg, int64_t silu_qkv, float *state, const float *decay,
                                const KPOP_T *q_norm, const KPOP_T *k_norm, const float *cos_, const float *sin_,
                                const KPOP_T *g_norm, KPOP_T *out, float *scratch, int64_t rows, int64_t heads,
                                int64_t d, int64_t half, int64_t groups, float qk_eps, float g_eps, float scale,
                                int64_t threads) {
    int64_t hd = heads * d;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
#if KPOP_WIDENED
        float *x = scratch + r * 5 * hd, *o = x + 4 * hd;
        TYPED(load_row)(qkvg + r * 4 * hd, x, 4 * hd);
#else
        float *x = qkvg + r * 4 * hd, *o = out + r * hd;
        (void)scratch;
#endif
        if (silu_qkv)
            for (int64_t i = 0; i < 3 * hd; i++) x[i] = silu(x[i]);
        TYPED(lightning_row)(x, x + 3 * hd, state + r * hd * d, decay, q_norm, k_norm, cos_ ? cos_ + r * half : 0,
                             sin_ ? sin_ + r * half : 0, g_norm, o, heads, d, half, groups, qk_eps, g_eps, scale);
#if KPOP_WIDENED
        TYPED(store_row)(o, out + r * hd, hd);
#endif
    }
}
