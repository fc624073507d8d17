/* Native CPU kernels of the serving engine, called through ctypes (kernels/cpu_native.py builds and loads this).
 *
 * What it does: paged attention for short query runs (decode: one token per sequence; short chunks) read straight
 * from the paged KV cache through the block tables, with no gather copy, one OpenMP task per (sequence, kv head)
 * serving every query head of its group; the segmented LoRA shrink/expand for short segments. float32
 * accumulation; the cache may be float32 or bfloat16.
 * What it does not do: long prefills (the engine uses torch's SDPA there) or anything on a GPU. Semantics are
 * kernels/reference.py's; tests/kernels/test_cpu_native.py compares them.
 *
 * Every index read from the caller's tables is checked against the tensor sizes the caller passes: a bad block id
 * or length is an error code (negative), never an out-of-bounds read.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OLR_F32 0
#define OLR_BF16 1

static inline float bf16_to_f32(uint16_t v) {
    union { uint32_t u; float f; } x;
    x.u = (uint32_t)v << 16;
    return x.f;
}

/* One cache row (D elements) as float32: a pointer into the cache for float32, else converted into `tmp`. */
static inline const float *row_f32(const void *cache, int kind, int64_t index, int64_t D, float *tmp) {
    if (kind == OLR_F32) return (const float *)cache + index * D;
    const uint16_t *src = (const uint16_t *)cache + index * D;
    for (int64_t d = 0; d < D; d++) tmp[d] = bf16_to_f32(src[d]);
    return tmp;
}

int olr_abi_version(void) { return 8; }

/* exp(x) for float32 that the compiler can vectorize (libm's expf is a scalar call): 2^n * 2^f with n = round(x
 * log2 e), |f| <= 1/2, 2^f by its degree-7 Taylor polynomial (relative error < 1e-8, so within 1-2 ulp of expf).
 * x is clamped to [-87.3, 88.3]: results below ~1.2e-38 come out as ~1.2e-38 instead of 0 (harmless in softmax
 * and sigmoid sums) and nothing overflows to inf. Vectorized by GCC with -fno-trapping-math (see FLAGS). */
static inline __attribute__((always_inline)) float olr_exp(float x) {
    x = x < -87.3f ? -87.3f : x;                  /* NaN stays NaN */
    x = x > 88.3f ? 88.3f : x;
    const float t = x * 1.44269504088896341f;
    const float n = floorf(t + 0.5f);
    const float f = (t - n) * 0.693147180559945309f;
    const float p = 1.f + f * (1.f + f * (0.5f + f * (1.f / 6 + f * (1.f / 24 + f * (1.f / 120 + f * (1.f / 720
                    + f * (1.f / 5040)))))));
    union { uint32_t u; float v; } s;
    s.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * s.v;
}

/* One query token's G heads (one GQA group) over keys 0 .. upto-1 of one kv head h: scores, softmax, weighted sum
 * of V rows, written to out [G, D]. Inlined with D a constant where the caller knows it. */
static inline __attribute__((always_inline)) void attend_one(
        const float *restrict qt, const void *kc, const void *vc, int kind, const int32_t *table, int64_t bs,
        int64_t upto, int64_t Hkv, int64_t h, int64_t G, const int64_t D, float scale, float *restrict scores,
        int64_t max_len, float *ktmp, float *vtmp, float *restrict out) {
    for (int64_t g = 0; g < G; g++) {
        const float *restrict qg = qt + g * D;
        float *restrict sg = scores + g * max_len;
        for (int64_t j = 0, l0 = 0; l0 < upto; j++, l0 += bs) {
            const int64_t base = (int64_t)table[j] * bs, m = upto - l0 < bs ? upto - l0 : bs;
            for (int64_t o = 0; o < m; o++) {
                const float *restrict kr = row_f32(kc, kind, (base + o) * Hkv + h, D, ktmp);
                float sc = 0.f;
#pragma omp simd reduction(+ : sc)
                for (int64_t d = 0; d < D; d++) sc += qg[d] * kr[d];
                sg[l0 + o] = sc * scale;
            }
        }
        float mx = -INFINITY, sum = 0.f;
        for (int64_t l = 0; l < upto; l++) mx = sg[l] > mx ? sg[l] : mx;
#pragma omp simd reduction(+ : sum)
        for (int64_t l = 0; l < upto; l++) {
            sg[l] = olr_exp(sg[l] - mx);
            sum += sg[l];
        }
        const float inv = 1.f / sum;
        float a[256];                       /* D <= 256 (checked by the caller) */
        for (int64_t d = 0; d < D; d++) a[d] = 0.f;
        for (int64_t j = 0, l0 = 0; l0 < upto; j++, l0 += bs) {
            const int64_t base = (int64_t)table[j] * bs, m = upto - l0 < bs ? upto - l0 : bs;
            for (int64_t o = 0; o < m; o++) {
                const float *restrict vr = row_f32(vc, kind, (base + o) * Hkv + h, D, vtmp);
                const float p = sg[l0 + o];
#pragma omp simd
                for (int64_t d = 0; d < D; d++) a[d] += p * vr[d];
            }
        }
        for (int64_t d = 0; d < D; d++) out[g * D + d] = a[d] * inv;
    }
}

/* Causal attention of new query tokens over each sequence's paged K/V.
 *   q        [T, Hq, D] float32, contiguous; out [T, Hq, D] float32
 *   kc, vc   [num_blocks, bs, Hkv, D] (kind: float32 or bfloat16), contiguous
 *   bt       [B, bt_stride] int32 block tables; seq_lens [B] int32 (context length after this step);
 *   cu       [B + 1] int32 query offsets: sequence b's queries are the LAST cu[b+1]-cu[b] positions of its context
 * Returns 0, or -1 (bad block id), -2 (length past the table or queries past the length), -3 (no memory). */
int olr_paged_attention(const float *q, const void *kc, const void *vc, int kind, const int32_t *bt,
                        int64_t bt_stride, const int32_t *seq_lens, const int32_t *cu, int64_t B, int64_t Hq,
                        int64_t Hkv, int64_t D, int64_t bs, int64_t num_blocks, float scale, float *out,
                        int nthreads) {
    if (Hkv <= 0 || Hq % Hkv != 0 || D <= 0 || D > 256 || bs <= 0) return -2;
    const int64_t G = Hq / Hkv;
    int64_t max_len = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t L = seq_lens[b], n = (int64_t)cu[b + 1] - cu[b];
        if (L < 0 || n < 0 || n > L || L > bt_stride * bs) return -2;
        int64_t nblk = (L + bs - 1) / bs;
        for (int64_t j = 0; j < nblk; j++) {
            int32_t blk = bt[b * bt_stride + j];
            if (blk < 0 || blk >= num_blocks) return -1;
        }
        if (L > max_len) max_len = L;
    }
    int err = 0;
#pragma omp parallel num_threads(nthreads > 0 ? nthreads : 1)
    {
        /* per thread: scores [G, max_len], accumulators [G, D], one converted row [2, D] */
        float *scores = (float *)malloc(sizeof(float) * (size_t)(G * (max_len > 0 ? max_len : 1) + G * D + 2 * D));
        if (!scores) {
#pragma omp atomic write
            err = -3;
        }
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int64_t b = 0; b < B; b++) {
            for (int64_t h = 0; h < Hkv; h++) {
                if (!scores) continue;
                float *acc = scores + G * max_len, *ktmp = acc + G * D, *vtmp = ktmp + D;
                const int64_t L = seq_lens[b], q0 = cu[b], n = (int64_t)cu[b + 1] - cu[b];
                const int32_t *table = bt + b * bt_stride;
                for (int64_t i = 0; i < n; i++) {
                    const int64_t t = q0 + i, upto = L - n + i + 1;      /* keys 0 .. L - n + i */
                    const float *qt = q + (t * Hq + h * G) * D;
                    float *ot = out + (t * Hq + h * G) * D;
                    /* D as a constant for the common head sizes: the compiler keeps q and the accumulator in
                     * registers and unrolls the dot products */
                    switch (D) {
                    case 64:
                        attend_one(qt, kc, vc, kind, table, bs, upto, Hkv, h, G, 64, scale, scores, max_len, ktmp,
                                   vtmp, ot);
                        break;
                    case 128:
                        attend_one(qt, kc, vc, kind, table, bs, upto, Hkv, h, G, 128, scale, scores, max_len, ktmp,
                                   vtmp, ot);
                        break;
                    default:
                        attend_one(qt, kc, vc, kind, table, bs, upto, Hkv, h, G, D, scale, scores, max_len, ktmp,
                                   vtmp, ot);
                    }
                }
            }
        }
        free(scores);
    }
    return err;
}

/* Checks shared by the LoRA kernels: segments inside [0, T] and increasing, slots inside the table, every used
 * slot's rows inside the pool and its rank inside the buffer. 0 or -4. */
static int check_segments(int64_t T, int64_t P, int64_t R, const int32_t *seg_starts, const int32_t *seg_slots,
                          int64_t nseg, const int32_t *row_start, const int32_t *rank, int64_t S, int64_t nslots) {
    if (nseg < 0 || seg_starts[0] < 0 || seg_starts[nseg] > T) return -4;
    for (int64_t i = 0; i < nseg; i++) {
        if (seg_starts[i + 1] < seg_starts[i]) return -4;
        int32_t slot = seg_slots[i];
        if (slot < 0) continue;
        if (slot >= nslots) return -4;
        for (int64_t k = 0; k < S; k++) {
            int64_t r = rank[k * nslots + slot];
            if (r < 0 || r > R || (r > 0 && ((int64_t)row_start[slot] < 0 || row_start[slot] + r > P))) return -4;
        }
    }
    return 0;
}

/* The rank of slice k for segment i when this call computes it: the segment has an adapter, at least one token and
 * at most max_tokens (longer ones are the caller's); 0 otherwise. Its token range in *t0, *t1. */
static inline int64_t short_segment_rank(int64_t i, int64_t k, const int32_t *seg_starts, const int32_t *seg_slots,
                                         const int32_t *rank, int64_t nslots, int64_t max_tokens, int64_t *t0,
                                         int64_t *t1) {
    const int32_t slot = seg_slots[i];
    *t0 = seg_starts[i];
    *t1 = seg_starts[i + 1];
    if (slot < 0 || *t1 <= *t0 || *t1 - *t0 > max_tokens) return 0;
    return rank[k * nslots + slot];
}

/* Segmented LoRA shrink over S slices, for the segments of at most `max_tokens` tokens (longer ones are left to
 * the caller): buf[k, t, :r] = x[t] @ a[k, o:o+r].T for every token t of a segment whose slot has rank r > 0 in
 * slice k (kernels/reference.py sgmv_shrink). x [T, in] and a [S, P, in] contiguous float32; buf [S, T, R] with
 * strides (buf_ss, buf_st, 1); rank [S, nslots] int32 contiguous. */
int olr_sgmv_shrink(const float *x, int64_t T, int64_t in, const float *a, int64_t S, int64_t P, float *buf,
                    int64_t buf_ss, int64_t buf_st, int64_t R, const int32_t *seg_starts, const int32_t *seg_slots,
                    int64_t nseg, const int32_t *row_start, const int32_t *rank, int64_t nslots, int64_t max_tokens,
                    int nthreads) {
    int rc = check_segments(T, P, R, seg_starts, seg_slots, nseg, row_start, rank, S, nslots);
    if (rc) return rc;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t i = 0; i < nseg; i++) {
        for (int64_t k = 0; k < S; k++) {
            int64_t t0, t1;
            const int64_t r = short_segment_rank(i, k, seg_starts, seg_slots, rank, nslots, max_tokens, &t0, &t1);
            if (r == 0) continue;
            const float *ak = a + (k * P + row_start[seg_slots[i]]) * in;
            for (int64_t j = 0; j < r; j++) {
                const float *row = ak + j * in;
                for (int64_t t = t0; t < t1; t++) {
                    const float *xt = x + t * in;
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t c = 0; c < in; c++) s += xt[c] * row[c];
                    buf[k * buf_ss + t * buf_st + j] = s;
                }
            }
        }
    }
    return 0;
}

/* Segmented LoRA expand over S slices, for the segments of at most `max_tokens` tokens:
 * y[t, off_k : off_k + n_k] += scale[k, slot] * buf[k, t, :r] @ b[o:o+r, off_k : off_k + n_k]
 * (kernels/reference.py sgmv_expand). b [P, N] with row stride ldb >= N, y [T, y_stride] float32 (y's columns
 * from y_offset);
 * widths [S] int64 add up to N. */
int olr_sgmv_expand(const float *buf, int64_t buf_ss, int64_t buf_st, int64_t R, const float *b, int64_t P,
                    int64_t N, int64_t ldb, float *y, int64_t T, int64_t y_stride, int64_t y_offset,
                    const int64_t *widths,
                    int64_t S, const int32_t *seg_starts, const int32_t *seg_slots, int64_t nseg,
                    const int32_t *row_start, const int32_t *rank, const float *scale, int64_t nslots,
                    int64_t max_tokens, int nthreads) {
    int rc = check_segments(T, P, R, seg_starts, seg_slots, nseg, row_start, rank, S, nslots);
    if (rc) return rc;
    int64_t total = 0;
    for (int64_t k = 0; k < S; k++) {
        if (widths[k] < 0) return -4;
        total += widths[k];
    }
    if (total != N || ldb < N || y_offset < 0 || y_offset + N > y_stride) return -4;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t i = 0; i < nseg; i++) {
        for (int64_t k = 0; k < S; k++) {
            int64_t t0, t1;
            const int64_t r = short_segment_rank(i, k, seg_starts, seg_slots, rank, nslots, max_tokens, &t0, &t1);
            if (r == 0) continue;
            const int32_t slot = seg_slots[i];
            int64_t off = 0;
            for (int64_t q = 0; q < k; q++) off += widths[q];
            const int64_t n = widths[k];
            const float sc = scale[k * nslots + slot];
            const float *bk = b + (int64_t)row_start[slot] * ldb + off;
            for (int64_t t = t0; t < t1; t++) {
                float *yt = y + t * y_stride + y_offset + off;
                const float *bt_ = buf + k * buf_ss + t * buf_st;
                for (int64_t j = 0; j < r; j++) {
                    const float coef = sc * bt_[j];
                    const float *row = bk + j * ldb;
#pragma omp simd
                    for (int64_t c = 0; c < n; c++) yt[c] += coef * row[c];
                }
            }
        }
    }
    return 0;
}

/* ---- fused elementwise ops of the float32 forward (one pass over memory instead of four to six) ---- */

/* out[t] = w * (x[t] / sqrt(mean(x[t]^2) + eps)); with delta: first x[t] += delta[t] (in place: the residual
 * stream), then the norm of the sum. x, delta, out [T, H] with row strides; w [H]. */
int olr_add_rms_norm(float *x, int64_t ldx, const float *delta, int64_t ldd, const float *w, int64_t T, int64_t H,
                     float eps, float *out, int64_t ldo, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t t = 0; t < T; t++) {
        float *xt = x + t * ldx;
        if (delta) {
            const float *dt = delta + t * ldd;
#pragma omp simd
            for (int64_t c = 0; c < H; c++) xt[c] += dt[c];
        }
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < H; c++) ss += xt[c] * xt[c];
        const float inv = 1.f / sqrtf(ss / (float)H + eps);
        float *ot = out + t * ldo;
#pragma omp simd
        for (int64_t c = 0; c < H; c++) ot[c] = w[c] * (xt[c] * inv);
    }
    return 0;
}

/* Rotary embedding (rotate-half form) in place on the first `heads` heads of each row: x [T, ldx] with head h at
 * columns h*D .. h*D+D; cos, sin [T, D]. */
int olr_rope(float *x, int64_t ldx, int64_t T, int64_t heads, int64_t D, const float *cos_, const float *sin_,
             int nthreads) {
    const int64_t half = D / 2;
    if (D % 2) return -2;
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t t = 0; t < T; t++) {
        const float *c = cos_ + t * D, *s = sin_ + t * D;
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + t * ldx + h * D;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
    }
    return 0;
}

/* out[t, i] = silu(gu[t, i]) * gu[t, I + i]; gu [T, 2I] contiguous, out [T, I] contiguous. */
int olr_silu_mul(const float *gu, int64_t T, int64_t I, float *out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t t = 0; t < T; t++) {
        const float *g = gu + t * 2 * I, *u = g + I;
        float *o = out + t * I;
#pragma omp simd
        for (int64_t i = 0; i < I; i++) o[i] = g[i] / (1.f + olr_exp(-g[i])) * u[i];
    }
    return 0;
}

/* Write the step's new K and V rows into the paged caches: cache row slot_mapping[t] <- row t (float32). k and v
 * are [T, W] with row strides ldk, ldv (views into the fused qkv output); the caches are [num_slots, W]
 * contiguous. A negative slot (padding) writes nothing; a slot past the cache is an error before any write. */
int olr_store_kv(const float *k, int64_t ldk, const float *v, int64_t ldv, float *kc, float *vc, int64_t W,
                 const int64_t *slot_mapping, int64_t T, int64_t num_slots) {
    for (int64_t t = 0; t < T; t++)
        if (slot_mapping[t] >= num_slots) return -1;
    for (int64_t t = 0; t < T; t++) {
        const int64_t s = slot_mapping[t];
        if (s < 0) continue;
        memcpy(kc + s * W, k + t * ldk, sizeof(float) * (size_t)W);
        memcpy(vc + s * W, v + t * ldv, sizeof(float) * (size_t)W);
    }
    return 0;
}
