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

int olr_abi_version(void) { return 11; }

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

/* sg[l] = exp(sg[l] - max) for l < n, in place; returns 1 / sum (the caller scales its weighted sum once). */
static inline __attribute__((always_inline)) float softmax_unnormalized(float *restrict sg, int64_t n) {
    float mx = -INFINITY, sum = 0.f;
    for (int64_t l = 0; l < n; l++) mx = sg[l] > mx ? sg[l] : mx;
#pragma omp simd reduction(+ : sum)
    for (int64_t l = 0; l < n; l++) {
        sg[l] = olr_exp(sg[l] - mx);
        sum += sg[l];
    }
    return 1.f / sum;
}

/* 8 floats, loaded and stored unaligned: GCC/Clang vector extensions, lowered to AVX/AVX-512 (or two SSE/NEON
 * halves) by -march=native. */
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));

typedef uint16_t v8h __attribute__((vector_size(16), aligned(2), may_alias));
typedef uint32_t v8u __attribute__((vector_size(32)));

/* 8 consecutive elements of p from element i as float32: p is float32, or bfloat16 (wbf16, a constant where
 * inlined), widened exactly by a 16-bit shift. */
static inline __attribute__((always_inline)) v8f load8(const void *p, int64_t i, int wbf16) {
    if (!wbf16) return *(const v8f *)((const float *)p + i);
    return (v8f)(__builtin_convertvector(*(const v8h *)((const uint16_t *)p + i), v8u) << 16);
}

static inline __attribute__((always_inline)) float load1(const void *p, int64_t i, int wbf16) {
    return wbf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline __attribute__((always_inline)) float hsum8(v8f v) {
    float s = 0.f;
    for (int l = 0; l < 8; l++) s += v[l];
    return s;
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
        const float inv = softmax_unnormalized(sg, upto);
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

/* attend_one for D = 8 * ND (ND a constant: 8 or 16): the key row is loaded once for the G heads of the group,
 * two vector accumulators per dot product, and each head's output accumulated in registers over the V rows. */
static inline __attribute__((always_inline)) void attend_v8(
        const float *restrict qt, const void *kc, const void *vc, int kind, const int32_t *table, int64_t bs,
        int64_t upto, int64_t Hkv, int64_t h, int64_t G, const int ND, float scale, float *restrict scores,
        int64_t max_len, float *ktmp, float *vtmp, float *restrict out) {
    const int64_t D = 8 * ND;
    for (int64_t j = 0, l0 = 0; l0 < upto; j++, l0 += bs) {
        const int64_t base = (int64_t)table[j] * bs, m = upto - l0 < bs ? upto - l0 : bs;
        for (int64_t o = 0; o < m; o++) {
            const float *kr = row_f32(kc, kind, (base + o) * Hkv + h, D, ktmp);
            v8f k[16];
            for (int c = 0; c < ND; c++) k[c] = *(const v8f *)(kr + 8 * c);
            for (int64_t g = 0; g < G; g++) {
                const float *qg = qt + g * D;
                v8f a0 = (v8f){0}, a1 = (v8f){0};
                for (int c = 0; c < ND; c += 2) {
                    a0 += *(const v8f *)(qg + 8 * c) * k[c];
                    a1 += *(const v8f *)(qg + 8 * c + 8) * k[c + 1];
                }
                scores[g * max_len + l0 + o] = hsum8(a0 + a1) * scale;
            }
        }
    }
    for (int64_t g = 0; g < G; g++) {
        float *restrict sg = scores + g * max_len;
        const float inv = softmax_unnormalized(sg, upto);
        v8f a[16];
        for (int c = 0; c < ND; c++) a[c] = (v8f){0};
        for (int64_t j = 0, l0 = 0; l0 < upto; j++, l0 += bs) {
            const int64_t base = (int64_t)table[j] * bs, m = upto - l0 < bs ? upto - l0 : bs;
            for (int64_t o = 0; o < m; o++) {
                const float *vr = row_f32(vc, kind, (base + o) * Hkv + h, D, vtmp);
                const v8f p = (v8f){0} + sg[l0 + o];
                for (int c = 0; c < ND; c++) a[c] += p * *(const v8f *)(vr + 8 * c);
            }
        }
        for (int c = 0; c < ND; c++) *(v8f *)(out + g * D + 8 * c) = a[c] * inv;
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
                        attend_v8(qt, kc, vc, kind, table, bs, upto, Hkv, h, G, 8, scale, scores, max_len, ktmp,
                                  vtmp, ot);
                        break;
                    case 128:
                        attend_v8(qt, kc, vc, kind, table, bs, upto, Hkv, h, G, 16, scale, scores, max_len, ktmp,
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

/* One unit of LoRA work: tokens [t0, t1) of segment i, slice k (a long segment is split into several). */
typedef struct { int64_t i, k, t0, t1; } lora_item;

/* Checks the tables (`check_segments`), then lists the work items of a call: every (segment with an adapter, slice
 * with rank > 0) in chunks of `chunk` tokens, in segment order, as a malloc'd array in *out (NULL when there is
 * nothing to do) with its length in *n. Returns 0, -4 (a bad table entry: nothing allocated) or -5 (no memory). */
static int lora_items(int64_t T, int64_t P, int64_t R, const int32_t *seg_starts, const int32_t *seg_slots,
                      int64_t nseg, const int32_t *row_start, const int32_t *rank, int64_t S, int64_t nslots,
                      int64_t chunk, lora_item **out, int64_t *n) {
    *out = NULL;
    *n = 0;
    int rc = check_segments(T, P, R, seg_starts, seg_slots, nseg, row_start, rank, S, nslots);
    if (rc) return rc;
    int64_t count = 0;
    for (int64_t i = 0; i < nseg; i++) {
        if (seg_slots[i] < 0 || seg_starts[i + 1] <= seg_starts[i]) continue;
        const int64_t pieces = (seg_starts[i + 1] - seg_starts[i] + chunk - 1) / chunk;
        for (int64_t k = 0; k < S; k++) count += rank[k * nslots + seg_slots[i]] > 0 ? pieces : 0;
    }
    if (count == 0) return 0;
    lora_item *items = malloc((size_t)count * sizeof *items);
    if (!items) return -5;
    int64_t w = 0;
    for (int64_t i = 0; i < nseg; i++) {
        if (seg_slots[i] < 0 || seg_starts[i + 1] <= seg_starts[i]) continue;
        for (int64_t k = 0; k < S; k++) {
            if (rank[k * nslots + seg_slots[i]] <= 0) continue;
            for (int64_t t = seg_starts[i]; t < seg_starts[i + 1]; t += chunk) {
                items[w].i = i, items[w].k = k, items[w].t0 = t;
                items[w].t1 = t + chunk < seg_starts[i + 1] ? t + chunk : seg_starts[i + 1];
                w++;
            }
        }
    }
    *out = items;
    *n = count;
    return 0;
}

/* out[u * out_st + q] = x[u] . a[a0 + q * in ...] for nt (<= 4) tokens and nq (<= 2) adapter rows: 8 vector
 * accumulators over the input dimension, so each loaded vector feeds several FMAs. a is float32 or bfloat16
 * (wbf16). Inlined with constant nt, nq, wbf16. */
static inline __attribute__((always_inline)) void shrink_tile(const float *x, int64_t in, const void *a, int64_t a0,
                                                              int nt, int nq, float *out, int64_t out_st, int wbf16) {
    v8f acc[4][2] = {{{0}}};
    int64_t c = 0;
    for (; c + 8 <= in; c += 8) {
        v8f av[2];
        for (int q = 0; q < nq; q++) av[q] = load8(a, a0 + q * in + c, wbf16);
        for (int u = 0; u < nt; u++) {
            const v8f xv = *(const v8f *)(x + u * in + c);
            for (int q = 0; q < nq; q++) acc[u][q] += xv * av[q];
        }
    }
    for (int u = 0; u < nt; u++)
        for (int q = 0; q < nq; q++) {
            float s = hsum8(acc[u][q]);
            for (int64_t cc = c; cc < in; cc++) s += x[u * in + cc] * load1(a, a0 + q * in + cc, wbf16);
            out[u * out_st + q] = s;
        }
}

/* buf rows of nt tokens (x rows from x, buf rows from out, stride out_st) for the r adapter rows of a from
 * element a0. */
static inline __attribute__((always_inline)) void shrink_rows(const float *x, int64_t nt, int64_t in, const void *a,
                                                              int64_t a0, int64_t r, float *out, int64_t out_st,
                                                              int wbf16) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) {
        int64_t j = 0;
        for (; j + 2 <= r; j += 2)
            shrink_tile(x + t * in, in, a, a0 + j * in, 4, 2, out + t * out_st + j, out_st, wbf16);
        if (j < r) shrink_tile(x + t * in, in, a, a0 + j * in, 4, 1, out + t * out_st + j, out_st, wbf16);
    }
    for (; t < nt; t++) {
        int64_t j = 0;
        for (; j + 2 <= r; j += 2)
            shrink_tile(x + t * in, in, a, a0 + j * in, 1, 2, out + t * out_st + j, out_st, wbf16);
        if (j < r) shrink_tile(x + t * in, in, a, a0 + j * in, 1, 1, out + t * out_st + j, out_st, wbf16);
    }
}

/* Segmented LoRA shrink over S slices: buf[k, t, :r] = x[t] @ a[k, o:o+r].T for every token t of a segment whose
 * slot has rank r > 0 in slice k (kernels/reference.py sgmv_shrink). x [T, in] contiguous float32, a [S, P, in]
 * contiguous float32 or bfloat16 (wkind OLR_F32 / OLR_BF16); buf [S, T, R] float32 with strides (buf_ss, buf_st,
 * 1); rank [S, nslots] int32 contiguous. Long segments are split into chunks of tokens so that both threads have
 * work. 0, -4 (a bad table entry or kind) or -5 (out of memory). */
int olr_sgmv_shrink(const float *x, int64_t T, int64_t in, const void *a, int wkind, int64_t S, int64_t P,
                    float *buf, int64_t buf_ss, int64_t buf_st, int64_t R, const int32_t *seg_starts,
                    const int32_t *seg_slots, int64_t nseg, const int32_t *row_start, const int32_t *rank,
                    int64_t nslots, int nthreads) {
    if (wkind != OLR_F32 && wkind != OLR_BF16) return -4;
    lora_item *items;
    int64_t n;
    int rc = lora_items(T, P, R, seg_starts, seg_slots, nseg, row_start, rank, S, nslots, 16, &items, &n);
    if (rc) return rc;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t w = 0; w < n; w++) {
        const lora_item it = items[w];
        const int32_t slot = seg_slots[it.i];
        const int64_t r = rank[it.k * nslots + slot];
        const int64_t a0 = (it.k * P + row_start[slot]) * in;
        float *out = buf + it.k * buf_ss + it.t0 * buf_st;
        if (wkind == OLR_BF16) shrink_rows(x + it.t0 * in, it.t1 - it.t0, in, a, a0, r, out, buf_st, 1);
        else shrink_rows(x + it.t0 * in, it.t1 - it.t0, in, a, a0, r, out, buf_st, 0);
    }
    free(items);
    return 0;
}

/* y[u, :n] += sum_j (sc * buf[u, j]) * b[b0 + j * ldb, :n] for nt (<= 4) tokens: the y tile stays in registers
 * across the r adapter rows, in the order of the one-row-at-a-time loop (so results do not depend on the tiling).
 * b is float32 or bfloat16 (wbf16). */
static inline __attribute__((always_inline)) void expand_tile(const float *bu, int64_t buf_st, const void *b,
                                                              int64_t b0, int64_t ldb, int64_t r, float sc, float *y,
                                                              int64_t y_stride, int64_t n, int nt, int wbf16) {
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
        v8f acc[4][2];
        for (int u = 0; u < nt; u++) {
            acc[u][0] = *(const v8f *)(y + u * y_stride + c);
            acc[u][1] = *(const v8f *)(y + u * y_stride + c + 8);
        }
        for (int64_t j = 0; j < r; j++) {
            const v8f bv0 = load8(b, b0 + j * ldb + c, wbf16), bv1 = load8(b, b0 + j * ldb + c + 8, wbf16);
            for (int u = 0; u < nt; u++) {
                const v8f w = (v8f){0} + sc * bu[u * buf_st + j];
                acc[u][0] += w * bv0;
                acc[u][1] += w * bv1;
            }
        }
        for (int u = 0; u < nt; u++) {
            *(v8f *)(y + u * y_stride + c) = acc[u][0];
            *(v8f *)(y + u * y_stride + c + 8) = acc[u][1];
        }
    }
    for (; c < n; c++)
        for (int u = 0; u < nt; u++) {
            float s = y[u * y_stride + c];
            for (int64_t j = 0; j < r; j++) s += (sc * bu[u * buf_st + j]) * load1(b, b0 + j * ldb + c, wbf16);
            y[u * y_stride + c] = s;
        }
}

/* The tokens [t0, t1) of one expand work item, 4 at a time. */
static inline __attribute__((always_inline)) void expand_rows(const float *bu, int64_t buf_st, const void *b,
                                                              int64_t b0, int64_t ldb, int64_t r, float sc, float *y,
                                                              int64_t y_stride, int64_t n, int64_t nt, int wbf16) {
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4)
        expand_tile(bu + t * buf_st, buf_st, b, b0, ldb, r, sc, y + t * y_stride, y_stride, n, 4, wbf16);
    for (; t < nt; t++)
        expand_tile(bu + t * buf_st, buf_st, b, b0, ldb, r, sc, y + t * y_stride, y_stride, n, 1, wbf16);
}

/* Segmented LoRA expand over S slices:
 * y[t, off_k : off_k + n_k] += scale[k, slot] * buf[k, t, :r] @ b[o:o+r, off_k : off_k + n_k]
 * (kernels/reference.py sgmv_expand). b [P, N] float32 or bfloat16 (wkind) with row stride ldb >= N, y [T,
 * y_stride] float32 (y's columns from y_offset); widths [S] int64 add up to N. Split into chunks of tokens like the
 * shrink. */
int olr_sgmv_expand(const float *buf, int64_t buf_ss, int64_t buf_st, int64_t R, const void *b, int wkind, int64_t P,
                    int64_t N, int64_t ldb, float *y, int64_t T, int64_t y_stride, int64_t y_offset,
                    const int64_t *widths,
                    int64_t S, const int32_t *seg_starts, const int32_t *seg_slots, int64_t nseg,
                    const int32_t *row_start, const int32_t *rank, const float *scale, int64_t nslots,
                    int nthreads) {
    if (wkind != OLR_F32 && wkind != OLR_BF16) return -4;
    int64_t total = 0;
    for (int64_t k = 0; k < S; k++) {
        if (widths[k] < 0) return -4;
        total += widths[k];
    }
    if (total != N || ldb < N || y_offset < 0 || y_offset + N > y_stride) return -4;
    lora_item *items;
    int64_t n_items;
    int rc = lora_items(T, P, R, seg_starts, seg_slots, nseg, row_start, rank, S, nslots, 8, &items, &n_items);
    if (rc) return rc;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t w = 0; w < n_items; w++) {
        const lora_item it = items[w];
        const int32_t slot = seg_slots[it.i];
        const int64_t r = rank[it.k * nslots + slot];
        int64_t off = 0;
        for (int64_t q = 0; q < it.k; q++) off += widths[q];
        const int64_t n = widths[it.k];
        const float sc = scale[it.k * nslots + slot];
        const int64_t b0 = (int64_t)row_start[slot] * ldb + off;
        const float *bu = buf + it.k * buf_ss + it.t0 * buf_st;
        float *yt = y + it.t0 * y_stride + y_offset + off;
        if (wkind == OLR_BF16) expand_rows(bu, buf_st, b, b0, ldb, r, sc, yt, y_stride, n, it.t1 - it.t0, 1);
        else expand_rows(bu, buf_st, b, b0, ldb, r, sc, yt, y_stride, n, it.t1 - it.t0, 0);
    }
    free(items);
    return 0;
}

/* ---- fused elementwise ops of the float32 forward (one pass over memory instead of four to six) ----
 *
 * With `rb` set they compute a bfloat16 model's ops on bfloat16 values carried in float32 storage: every result that
 * torch (HF's bf16 forward) rounds to bfloat16 is rounded here at the same point, by `rbf16`, and stays a float32
 * that a bfloat16 holds exactly. The float32 GEMMs then read these rows without a conversion copy. */

/* float32 -> the nearest bfloat16 (ties to even), as the float32 it stands for. Bit for bit torch's float32 ->
 * bfloat16 conversion on every non-NaN input (checked on all 2^32 patterns); a NaN becomes the NaN 0x7fc0 (c10's
 * scalar conversion; torch's vectorized one gives 0xffff: NaN either way). */
static inline __attribute__((always_inline)) uint32_t bf16_bits(float f) {
    union { float f; uint32_t u; } x = {f};
    const uint32_t r = (x.u + 0x7fffu + ((x.u >> 16) & 1u)) & 0xffff0000u;
    return ((x.u & 0x7fffffffu) > 0x7f800000u) ? 0x7fc00000u : r;
}

static inline __attribute__((always_inline)) float rbf16(float f) {
    union { uint32_t u; float f; } x = {bf16_bits(f)};
    return x.f;
}

/* Round rows of x [T, n] (row stride ldx) to bfloat16 values in place. */
int olr_round_bf16(float *x, int64_t ldx, int64_t T, int64_t n, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1) if (T * n > 16384)
    for (int64_t t = 0; t < T; t++) {
        float *xt = x + t * ldx;
#pragma omp simd
        for (int64_t c = 0; c < n; c++) xt[c] = rbf16(xt[c]);
    }
    return 0;
}

/* out[t] = w * (x[t] / sqrt(mean(x[t]^2) + eps)); with delta: first x[t] += delta[t] (in place: the residual
 * stream), then the norm of the sum. x, delta, out [T, H] with row strides; w [H]. With rb (HF's bf16
 * LlamaRMSNorm): the sum is rounded, the normalised row is rounded before the scale, and the product again. */
int olr_add_rms_norm(float *x, int64_t ldx, const float *delta, int64_t ldd, const float *w, int64_t T, int64_t H,
                     float eps, float *out, int64_t ldo, int rb, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t t = 0; t < T; t++) {
        float *xt = x + t * ldx;
        if (delta) {
            const float *dt = delta + t * ldd;
            if (rb) {
#pragma omp simd
                for (int64_t c = 0; c < H; c++) xt[c] = rbf16(xt[c] + dt[c]);
            } else {
#pragma omp simd
                for (int64_t c = 0; c < H; c++) xt[c] += dt[c];
            }
        }
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < H; c++) ss += xt[c] * xt[c];
        const float inv = 1.f / sqrtf(ss / (float)H + eps);
        float *ot = out + t * ldo;
        if (rb) {
#pragma omp simd
            for (int64_t c = 0; c < H; c++) ot[c] = rbf16(w[c] * rbf16(xt[c] * inv));
        } else {
#pragma omp simd
            for (int64_t c = 0; c < H; c++) ot[c] = w[c] * (xt[c] * inv);
        }
    }
    return 0;
}

/* Rotary embedding (rotate-half form) in place on the first `heads` heads of each row: x [T, ldx] with head h at
 * columns h*D .. h*D+D; cos, sin [T, D]. With rb, HF's bf16 `q * cos + rotate_half(q) * sin`: each product
 * rounded, then the sum. */
int olr_rope(float *x, int64_t ldx, int64_t T, int64_t heads, int64_t D, const float *cos_, const float *sin_,
             int rb, int nthreads) {
    const int64_t half = D / 2;
    if (D % 2) return -2;
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t t = 0; t < T; t++) {
        const float *c = cos_ + t * D, *s = sin_ + t * D;
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + t * ldx + h * D;
            if (rb) {
#pragma omp simd
                for (int64_t i = 0; i < half; i++) {
                    const float a = v[i], b = v[i + half];
                    v[i] = rbf16(rbf16(a * c[i]) - rbf16(b * s[i]));
                    v[i + half] = rbf16(rbf16(b * c[i + half]) + rbf16(a * s[i + half]));
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < half; i++) {
                    const float a = v[i], b = v[i + half];
                    v[i] = a * c[i] - b * s[i];
                    v[i + half] = b * c[i + half] + a * s[i + half];
                }
            }
        }
    }
    return 0;
}

/* silu(g) = g / (1 + exp(-g)). Below -88.3 (where olr_exp clamps) it is g * 0: -0 for a finite g, NaN for -inf,
 * what torch gives once exp(-g) overflows (below -88.72; in between torch's value is under 1e-36 in magnitude). */
static inline __attribute__((always_inline)) float olr_silu(float g) {
    return g < -88.3f ? g * 0.f : g / (1.f + olr_exp(-g));
}

/* out[t, i] = silu(gu[t, i]) * gu[t, I + i]; gu [T, 2I] contiguous, out [T, I] contiguous. With rb, HF's bf16
 * `act(gate) * up`: the SiLU rounded, then the product. */
int olr_silu_mul(const float *gu, int64_t T, int64_t I, float *out, int rb, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int64_t t = 0; t < T; t++) {
        const float *g = gu + t * 2 * I, *u = g + I;
        float *o = out + t * I;
        if (rb) {
#pragma omp simd
            for (int64_t i = 0; i < I; i++) o[i] = rbf16(rbf16(olr_silu(g[i])) * u[i]);
        } else {
#pragma omp simd
            for (int64_t i = 0; i < I; i++) o[i] = olr_silu(g[i]) * u[i];
        }
    }
    return 0;
}

/* Write the step's new K and V rows into the paged caches: cache row slot_mapping[t] <- row t. k and v are float32
 * [T, W] with row strides ldk, ldv (views into the fused qkv output); the caches are [num_slots, W] contiguous,
 * float32 (kind OLR_F32) or bfloat16 (OLR_BF16: each value rounded to the nearest bfloat16, as torch's copy does).
 * A negative slot (padding) writes nothing; a slot past the cache is an error before any write. */
int olr_store_kv(const float *k, int64_t ldk, const float *v, int64_t ldv, void *kc, void *vc, int kind, int64_t W,
                 const int64_t *slot_mapping, int64_t T, int64_t num_slots) {
    if (kind != OLR_F32 && kind != OLR_BF16) return -2;
    for (int64_t t = 0; t < T; t++)
        if (slot_mapping[t] >= num_slots) return -1;
    for (int64_t t = 0; t < T; t++) {
        const int64_t s = slot_mapping[t];
        if (s < 0) continue;
        if (kind == OLR_F32) {
            memcpy((float *)kc + s * W, k + t * ldk, sizeof(float) * (size_t)W);
            memcpy((float *)vc + s * W, v + t * ldv, sizeof(float) * (size_t)W);
            continue;
        }
        uint16_t *kd = (uint16_t *)kc + s * W, *vd = (uint16_t *)vc + s * W;
        const float *ks = k + t * ldk, *vs = v + t * ldv;
#pragma omp simd
        for (int64_t c = 0; c < W; c++) {
            kd[c] = (uint16_t)(bf16_bits(ks[c]) >> 16);
            vd[c] = (uint16_t)(bf16_bits(vs[c]) >> 16);
        }
    }
    return 0;
}
