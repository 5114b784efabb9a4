/* Decode kernels of the built-in engine: contiguous, no allocation. The kernels that read a
   model's own memory are in native_kernels_typed.h, once per storage type (name_f32, name_bf16);
   the rest below are float32. The kpop_* entry points that take `threads` spread their rows,
   heads or products over torch's own OpenMP threads where the library is built with -fopenmp
   (serial otherwise). Built and loaded by
   kpop.rollout.builtin.native, which states the contracts; each is tested there against torch's
   own ops (tests/rollout/test_rollout_builtin_native.py). */
#include <math.h>
#include <stdint.h>
#include <string.h>
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

#define KPOP_MAX_HEAD_DIM 1024
#define KPOP_MAX_EXPERTS 1024

/* Products rounded before they are added (no fused multiply-add), for kernels that compute what
   a sequence of torch ops computes, bit for bit: GCC contracts a * b + c across statements at -O3
   unless told not to; clang contracts only within an expression, which these kernels avoid. */
#if defined(__GNUC__) && !defined(__clang__)
#define KPOP_UNFUSED __attribute__((optimize("fp-contract=off")))
#else
#define KPOP_UNFUSED
#endif

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

/* p[t] = e^(p[t] - max p) for t < T, in place; returns their sum (added in order of t): the
   softmax's numerators and denominator. */
static float exp_shifted(float *p, int64_t T) {
    float top = -INFINITY, total = 0.0f;
    for (int64_t t = 0; t < T; t++) top = p[t] > top ? p[t] : top;
    for (int64_t t = 0; t < T; t++) {
        p[t] = exp_f32(p[t] - top);
        total += p[t];
    }
    return total;
}

/* Rotate the first 2 * half values of x (rotate-half layout) by cos/sin [half]. */
static void neox(float *x, const float *c, const float *s, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[half + i];
        x[i] = a * c[i] - b * s[i];
        x[half + i] = b * c[i] + a * s[i];
    }
}

/* HF's rotate-half RoPE with full-width cos/sin [d]: y = x cos + [-x2, x1] sin. */
static void rotate_half(const float *x, const float *c, const float *s, float *y, int64_t d) {
    int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        y[i] = x[i] * c[i] - x[half + i] * s[i];
        y[half + i] = x[half + i] * c[half + i] + x[i] * s[half + i];
    }
}

/* Rotate pairs (2i, 2i+1) of x [2 half] by cos/sin [half] into y, which may be x
   (kpop.models.layers.rope's interleaved layout). */
static void interleaved(const float *x, const float *c, const float *s, float *y, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        y[2 * i] = a * c[i] - b * s[i];
        y[2 * i + 1] = b * c[i] + a * s[i];
    }
}

/* Thread t's share [lo, hi) of n rows split over T threads. */
static void share(int64_t n, int64_t t, int64_t T, int64_t *lo, int64_t *hi) {
    *lo = n * t / T;
    *hi = n * (t + 1) / T;
}

/* The index of the largest v[i] among `ok` ones (the lowest index among equals), -1 if none. */
static int64_t best(const float *v, const unsigned char *ok, int64_t n) {
    int64_t arg = -1;
    for (int64_t i = 0; i < n; i++)
        if (ok[i] && (arg < 0 || v[i] > v[arg])) arg = i;
    return arg;
}

/* MoEGate's pick from sigmoid scores s [E] and selection scores sel = s + bias: experts by sel
   (group-limited when n_group > 1: a group's score is the sum of its best two), weights s of the
   picked experts normalised to sum 1 when k > 1, times scale. Writes idx[k] and w[k] in pick
   order. */
static void pick_experts(const float *s, const float *sel, int64_t E, int64_t n_group, int64_t topk_group, int64_t k,
                         float scale, int64_t *idx, float *w) {
    unsigned char ok[KPOP_MAX_EXPERTS];
    float group[KPOP_MAX_EXPERTS];
    for (int64_t e = 0; e < E; e++) ok[e] = 1;
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

/* Sorts the k picked experts (and their weights) by increasing id: MoE.forward's accumulation
   order. */
static void in_id_order(int64_t *ids, float *w, int64_t k) {
    for (int64_t i = 1; i < k; i++)
        for (int64_t j = i; j > 0 && ids[j] < ids[j - 1]; j--) {
            int64_t e = ids[j]; ids[j] = ids[j - 1]; ids[j - 1] = e;
            float f = w[j]; w[j] = w[j - 1]; w[j - 1] = f;
        }
}

/* bfloat16: the high 16 bits of a float32. Widening is exact; narrowing rounds to nearest even
   (torch's `.to(torch.bfloat16)`), NaN kept quiet. */
typedef uint16_t bf16_t;
typedef float kpop_v8 __attribute__((vector_size(32))); /* dot4's lanes without AVX-512 */

static inline float bf16_to_f32(bf16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    return (bf16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#define KPOP_CAT2(a, b) a##_##b
#define KPOP_CAT(a, b) KPOP_CAT2(a, b)
#define TYPED(name) KPOP_CAT(name, KPOP_SUFFIX)

#define KPOP_T float
#define KPOP_SUFFIX f32
#define LD(x) (x)
#define ST(x) (x)
#define LOAD16(p) _mm512_loadu_ps(p)
#define KPOP_WIDENED 0
#include "native_kernels_typed.h"
#undef KPOP_T
#undef KPOP_SUFFIX
#undef LD
#undef ST
#undef LOAD16
#undef KPOP_WIDENED

#define KPOP_T bf16_t
#define KPOP_SUFFIX bf16
#define LD(x) bf16_to_f32(x)
#define ST(x) f32_to_bf16(x)
#define KPOP_WIDENED 1
#define LOAD16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#include "native_kernels_typed.h"

/* Float32 entry points below. */

/* route_row for one float32 row (x [h], W [E, h], bias [E]). */
void kpop_route_row(const float *x, const float *W, const float *bias, int64_t E, int64_t h, int64_t n_group,
                    int64_t topk_group, int64_t k, float scale, int64_t *idx, float *w) {
    route_row_f32(x, W, bias, E, h, n_group, topk_group, k, scale, idx, w);
}

/* `mla_head` for every head h: q_nope [H, nope], q_rope [H, rope], out [H, v]. */
void kpop_mla_row(const float *q_nope, const float *q_rope, const float *latent, const float *k_rope,
                  const float *w_kv_b, float *out, float *scratch, int64_t H, int64_t nope, int64_t rope,
                  int64_t v, int64_t r, int64_t T, float scaling) {
    for (int64_t h = 0; h < H; h++)
        mla_head_f32(q_nope + h * nope, q_rope + h * rope, latent, k_rope, w_kv_b, out + h * v, scratch, h, nope, rope,
                     v, r, T, scaling);
}
