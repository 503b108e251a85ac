/* Fused W4A16 matmul: y[M, N] = x[M, K] @ W[K, N] (+ bias), W = (q - z) * s never formed.
 *
 * Weights: GPTQ words qweight int32 [K/8, N], word (r, n) holding q[8r + i, n] in bits
 * 4i .. 4i + 3 (rows already in group order: act-order permutes x's columns beforehand).
 * Scales s [G, N] (float32, float16 or bfloat16), zero points raw GPTQ words qzeros int32
 * [G, N/8] (z[g, n] in bits 4 (n % 8) of word (g, n / 8)) or none (z = 8). Row k belongs to
 * group k / group_size; group_size is a multiple of 8.
 *
 * Per group the kernels accumulate A[m, n] = sum_k x[m, k] * (q[k, n] + c) over the group's
 * rows, with the decoded weight offset by a constant c that makes decoding cheap, and add
 *     s[g, n] * (A[m, n] - (z[g, n] + c) * X[m, g]),   X[m, g] = sum over the group of x[m, k]
 * to the output: the same sum as x @ ((q - z) * s), associated differently (specs/kernels.md
 * states the tolerance).
 *
 *   avx512bf16  x rounded to bfloat16 (float32 x runs the avx512 kernel); each 32-bit lane of a
 *               word vector becomes two bfloat16 weights by (w >> 4p) & 0x000F000F | 0x43004300,
 *               i.e. 128 + q for rows 8r + p and 8r + p + 4 (c = 128, exact in bfloat16), and
 *               VDPBF16PS multiplies them with the matching pair of x values, accumulating in
 *               float32;
 *   avx512      float32 FMAs; a nibble becomes q - 8 by a 16-entry table lookup (VPERMPS reads
 *               the low four bits of each lane, so no mask is needed; c = -8);
 *   avx2        float32 FMAs on (w >> 4i) & 15 converted to float, 8 lanes, a row of x at a
 *               time (c = 0);
 *   portable    the same arithmetic as a C loop, vectorized by the compiler where it can.
 */
#include "incq_native.h"

#include <stdlib.h>

/* Loops over a kernel's registers (rows of x, vectors, chains) are unrolled fully, so that the
 * accumulator arrays live in registers: otherwise GCC keeps them on the stack and stores them
 * on every row of words (measured: the 16-row kernel 25-30% slower). */
#define UNROLL _Pragma("GCC unroll 16")

#define TILE 64       /* output columns a kernel call keeps in registers ... */
#define NV (TILE / 16) /* ... as NV vectors of 16 */
#define MR 4    /* rows of x handled together */
/* How far ahead in a row of words the kernels prefetch, and into which cache. Measured on a
 * 2-core Zen 4 machine, 4096 x 11008, cold weights, the candidates interleaved in one process:
 * 128 words (two tiles) into L1 read 64-75% of the machine's bandwidth at M = 1 on one thread
 * (60% for 512 words, 43-49% for 1024 words into L2, 36% for 2048), and took M = 4 from 2.4 to
 * 1.5 ms. The tall kernel, which spends 16 rows of x on each word, prefetches 1024 words into
 * L2 (no faster with the short distance). */
#ifndef PREFETCH
#define PREFETCH 128
#endif
#ifndef PREFETCH_HINT
#define PREFETCH_HINT _MM_HINT_T0
#endif
#ifndef PREFETCH_TALL
#define PREFETCH_TALL 1024
#endif
/* the next tiles' words of this row */
#define PREFETCH_ROW(wrow)                                                        \
    do {                                                                          \
        for (int f = 0; f < TILE; f += 16)                                        \
            _mm_prefetch((const char *)((wrow) + PREFETCH + f), PREFETCH_HINT);   \
    } while (0)

typedef struct {
    const void *x; /* [M, K] with row stride x_ld */
    int x_dtype;
    int64_t m, k, n, x_ld;
    const int32_t *qweight;   /* [K/8, N] */
    const void *scales;       /* [G, N] */
    int s_dtype;
    const int32_t *qzeros;    /* [G, N/8] or NULL */
    uint32_t zero_add;        /* added to each zero word first: 0x11111111 decodes v1 (z - 1) words */
    int zeros_awq;            /* zero words in AWQ nibble order (value j in slot AWQ_SLOT[j]) */
    int64_t group_size, groups;
    const void *bias;         /* [N] or NULL */
    int bias_dtype;
    void *out;                /* [M, N] */
    int out_dtype;
    /* prepared once per call */
    const uint32_t *xpairs;   /* bf16 kernels: [M, K/2] pairs (x[8r + p], x[8r + p + 4]), row stride xp_ld */
    int64_t xp_ld;            /* K/2 + 16: rows of pairs 64 bytes off a multiple of 4 KB, so that the
                                 16 rows a tall kernel reads at a time do not share one L1 set */
    const float *xf;          /* float kernels: [M, K] x as float32 */
    const float *xsum;        /* [M, G] sums over each group of the x the kernel multiplies */
    float *y;                 /* [M, N] float32 scratch, zeroed: the output before rounding */
} gemm_args;

/* ------------------------------------------------------------------ shared scalar parts */

/* slot of value j in an AWQ word: AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] inverted */
static const int AWQ_SLOT[8] = {0, 4, 1, 5, 2, 6, 3, 7};

static inline float zero_point(const gemm_args *a, int64_t g, int64_t n) {
    if (!a->qzeros) return 8.0f;
    uint32_t w = (uint32_t)a->qzeros[g * (a->n / 8) + n / 8] + a->zero_add;
    int slot = a->zeros_awq ? AWQ_SLOT[n % 8] : (int)(n % 8);
    return (float)((w >> (4 * slot)) & 15u);
}

static inline int64_t float_size(int dt) { return dt == INCQ_F32 ? 4 : 2; }

static inline void store_float(void *out, int dt, int64_t i, float v) {
    switch (dt) {
    case INCQ_F32: ((float *)out)[i] = v; break;
    case INCQ_BF16: ((uint16_t *)out)[i] = incq_f32_to_bf16(v); break;
    default: ((uint16_t *)out)[i] = incq_f32_to_f16(v); break;
    }
}

/* ------------------------------------------------------------------ C kernel (portable) and AVX2 */

/* Microkernels: group g of the tile of columns n0 .. n0 + cols (<= TILE) for rows
 * m0 .. m0 + R (R <= MR), adding s * (A - (z + c) * X) into y (float32, row stride ys). */
#define C_TILE_BODY                                                                               \
    float acc[MR * TILE], zc[TILE], sc[TILE];                                                     \
    memset(acc, 0, sizeof acc);                                                                   \
    const int64_t per = a->group_size / 8;                                                        \
    for (int64_t r = g * per; r < (g + 1) * per; r++) {                                           \
        const int32_t *wrow = a->qweight + r * a->n + n0;                                         \
        for (int i = 0; i < 8; i++) {                                                             \
            float w[TILE];                                                                        \
            if (cols == TILE) /* whole tiles: a loop the compiler vectorizes */                   \
                for (int64_t j = 0; j < TILE; j++) w[j] = (float)(((uint32_t)wrow[j] >> (4 * i)) & 15u); \
            else                                                                                  \
                for (int64_t j = 0; j < TILE; j++)                                                \
                    w[j] = j < cols ? (float)(((uint32_t)wrow[j] >> (4 * i)) & 15u) : 0.0f;       \
            for (int64_t mi = 0; mi < rows; mi++) {                                               \
                const float xv = a->xf[(m0 + mi) * a->k + 8 * r + i];                             \
                float *ac = acc + mi * TILE;                                                      \
                for (int64_t j = 0; j < TILE; j++) ac[j] += xv * w[j];                            \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    for (int64_t j = 0; j < cols; j++) {                                                          \
        zc[j] = zero_point(a, g, n0 + j);                                                         \
        sc[j] = incq_load_float(a->scales, a->s_dtype, g * a->n + n0 + j);                        \
    }                                                                                             \
    for (int64_t mi = 0; mi < rows; mi++) {                                                       \
        const float xs = a->xsum[(m0 + mi) * a->groups + g];                                      \
        for (int64_t j = 0; j < cols; j++) y[mi * ys + j] += sc[j] * (acc[mi * TILE + j] - zc[j] * xs); \
    }

static void tile_portable(const gemm_args *a, int64_t g, int64_t m0, int64_t rows, int64_t n0, int64_t cols,
                          float *y, int64_t ys) {
    C_TILE_BODY
}

#if INCQ_X86
/* AVX2: one row of x at a time, 32 columns (four vectors of 8) at a time, float32 FMAs on
 * q = (w >> 4i) & 15 converted to float (c = 0); two chains per vector hide the FMA latency. */
INCQ_TARGET_AVX2 static void row_avx2(const gemm_args *a, int64_t g, int64_t m, int64_t n0, int64_t cols,
                                      float *y) {
    const int64_t per = a->group_size / 8;
    const __m256i fifteen = _mm256_set1_epi32(15), lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t h = 0; h < cols; h += 32) {
        __m256i mk[4];
        for (int v = 0; v < 4; v++)
            mk[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(cols - h - 8 * v)), lanes);
        __m256 acc[4][2];
        UNROLL for (int v = 0; v < 4; v++) acc[v][0] = acc[v][1] = _mm256_setzero_ps();
        for (int64_t r = g * per; r < (g + 1) * per; r++) {
            const int32_t *wrow = a->qweight + r * a->n + n0 + h;
            const float *xr = a->xf + m * a->k + 8 * r;
            _mm_prefetch((const char *)(wrow + PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(wrow + PREFETCH + 16), _MM_HINT_T0);
            UNROLL for (int v = 0; v < 4; v++) {
                const __m256i w = _mm256_maskload_epi32(wrow + 8 * v, mk[v]);
                UNROLL for (int i = 0; i < 8; i++) {
                    const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, 4 * i), fifteen));
                    acc[v][i & 1] = _mm256_fmadd_ps(q, _mm256_broadcast_ss(xr + i), acc[v][i & 1]);
                }
            }
        }
        const __m256 xs = _mm256_set1_ps(a->xsum[m * a->groups + g]);
        UNROLL for (int v = 0; v < 4; v++) {
            float s[8], z[8], t[8];
            _mm256_storeu_ps(t, _mm256_add_ps(acc[v][0], acc[v][1]));
            for (int l = 0; l < 8; l++) {
                const int64_t j = h + 8 * v + l;
                s[l] = j < cols ? incq_load_float(a->scales, a->s_dtype, g * a->n + n0 + j) : 0.0f;
                z[l] = j < cols ? zero_point(a, g, n0 + j) : 0.0f;
            }
            const __m256 d = _mm256_fnmadd_ps(_mm256_loadu_ps(z), xs, _mm256_loadu_ps(t));
            for (int l = 0; l < 8; l++) t[l] = 0.0f;
            _mm256_storeu_ps(t, _mm256_mul_ps(_mm256_loadu_ps(s), d));
            for (int l = 0; l < 8 && h + 8 * v + l < cols; l++) y[h + 8 * v + l] += t[l];
        }
    }
}

INCQ_TARGET_AVX2 static void tile_avx2(const gemm_args *a, int64_t g, int64_t m0, int64_t rows, int64_t n0,
                                       int64_t cols, float *y, int64_t ys) {
    for (int64_t mi = 0; mi < rows; mi++) row_avx2(a, g, m0 + mi, n0, cols, y + mi * ys);
}

/* ------------------------------------------------------------------ AVX-512 helpers */

/* z[g, n .. n + 16] + c as float (n a multiple of 16), masked lanes 0 */
INCQ_TARGET_AVX512 static inline __m512 zero_vector(const gemm_args *a, int64_t g, int64_t n, __mmask16 mask,
                                                    float c) {
    if (!a->qzeros) return _mm512_set1_ps(8.0f + c);
    const int32_t *zw = a->qzeros + g * (a->n / 8) + n / 8;
    int64_t words = (a->n / 8) - n / 8; /* words left in the row */
    __m512i both = _mm512_set1_epi32((int32_t)((uint32_t)zw[0] + a->zero_add));
    if (words > 1) both = _mm512_mask_set1_epi32(both, 0xff00, (int32_t)((uint32_t)zw[1] + a->zero_add));
    const __m512i shifts = a->zeros_awq
        ? _mm512_set_epi32(28, 12, 24, 8, 20, 4, 16, 0, 28, 12, 24, 8, 20, 4, 16, 0)
        : _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    __m512i z = _mm512_and_si512(_mm512_srlv_epi32(both, shifts), _mm512_set1_epi32(15));
    return _mm512_maskz_add_ps(mask, _mm512_cvtepi32_ps(z), _mm512_set1_ps(c));
}

/* 16 floats of type dt at p as float32, masked lanes 0 */
INCQ_TARGET_AVX512 static inline __m512 load16_float(const void *p, int dt, __mmask16 mk) {
    switch (dt) {
    case INCQ_F32: return _mm512_maskz_loadu_ps(mk, p);
    case INCQ_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, p)), 16));
    default: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, p));
    }
}

INCQ_TARGET_AVX512 static inline __m512 scale_vector(const gemm_args *a, int64_t g, int64_t n, __mmask16 mask) {
    return load16_float((const char *)a->scales + (g * a->n + n) * float_size(a->s_dtype), a->s_dtype, mask);
}

static inline __mmask16 lane_mask(int64_t cols, int v) {
    int64_t left = cols - 16 * v;
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/* Independent accumulator chains per output vector: two for a single row (to hide the
 * latency of the multiply-add), one when several rows interleave. */
#define PAR(R) ((R) == 1 ? 2 : 1)

/* y[mi][v] += s * (A - zc * X), A the sum of the vector's chains */
#define EPILOGUE(C, R)                                                                            \
    UNROLL for (int v = 0; v < NV; v++) {                                                                 \
        if (!mk[v]) continue;                                                                     \
        const __m512 s = scale_vector(a, g, n0 + 16 * v, mk[v]);                                  \
        const __m512 zc = zero_vector(a, g, n0 + 16 * v, mk[v], C);                               \
        UNROLL for (int mi = 0; mi < R; mi++) {                                                          \
            const __m512 xs = _mm512_set1_ps(a->xsum[(m0 + mi) * a->groups + g]);                 \
            float *yp = y + mi * ys + 16 * v;                                                     \
            __m512 sum = acc[mi][v][0];                                                           \
            if (PAR(R) > 1) sum = _mm512_add_ps(sum, acc[mi][v][PAR(R) - 1]);                     \
            __m512 t = _mm512_fnmadd_ps(zc, xs, sum);                                             \
            _mm512_mask_storeu_ps(yp, mk[v], _mm512_fmadd_ps(s, t, _mm512_maskz_loadu_ps(mk[v], yp))); \
        }                                                                                         \
    }

#define TILE_PROLOGUE(R)                                                                          \
    __mmask16 mk[NV];                                                                              \
    UNROLL for (int v = 0; v < NV; v++) mk[v] = lane_mask(cols, v);                                       \
    __m512 acc[R][NV][PAR(R)];                                                                     \
    UNROLL for (int mi = 0; mi < R; mi++)                                                                \
        UNROLL for (int v = 0; v < NV; v++)                                                               \
            UNROLL for (int c = 0; c < PAR(R); c++) acc[mi][v][c] = _mm512_setzero_ps();                 \
    const int64_t per = a->group_size / 8;

/* ------------------------------------------------------------------ AVX-512 float32 kernel */

/* For one or two rows of x the broadcasts of x stay in registers (hoisted out of the loop over
 * vectors; a memory operand is slower there); for more rows they are the instruction's memory
 * operand, leaving the registers to the accumulators. R is a constant: one branch remains. */
#define BY_ROWS(R, IN_REGISTERS, IN_MEMORY) \
    do {                                    \
        if ((R) <= 2)                       \
            IN_REGISTERS;                   \
        else                                \
            IN_MEMORY;                      \
    } while (0)

/* c += d * broadcast *xp, the broadcast in the memory operand (see BF16_DOT) */
#define F32_FMA_MEM(c, d, xp) __asm__("vfmadd231ps %2%{1to16%}, %1, %0" : "+v"(c) : "v"(d), "m"(*(xp)))
#define F32_FMA(R, c, d, xp) BY_ROWS(R, c = _mm512_fmadd_ps(d, _mm512_set1_ps(*(xp)), c), F32_FMA_MEM(c, d, xp))

#define F32_TILE(R)                                                                               \
    INCQ_TARGET_AVX512 static void tile_avx512_##R(const gemm_args *a, int64_t g, int64_t m0,     \
                                                   int64_t n0, int64_t cols, float *y, int64_t ys) { \
        const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7); \
        TILE_PROLOGUE(R)                                                                          \
        for (int64_t r = g * per; r < (g + 1) * per; r++) {                                       \
            const int32_t *wrow = a->qweight + r * a->n + n0;                                     \
            const float *xr = a->xf + m0 * a->k + 8 * r;                                          \
            PREFETCH_ROW(wrow);                                                                   \
            UNROLL for (int v = 0; v < NV; v++) {                                                         \
                const __m512i w = _mm512_maskz_loadu_epi32(mk[v], wrow + 16 * v);                 \
                UNROLL for (int i = 0; i < 8; i += 2) {                                                  \
                    const __m512 d0 = _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4 * i), lut);    \
                    const __m512 d1 = _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4 * i + 4), lut); \
                    UNROLL for (int mi = 0; mi < R; mi++) {                                              \
                        __m512 *c = acc[mi][v];                                                   \
                        F32_FMA(R, c[0], d0, xr + mi * a->k + i);                                    \
                        F32_FMA(R, c[PAR(R) - 1], d1, xr + mi * a->k + i + 1);                       \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        EPILOGUE(-8.0f, R)                                                                        \
    }

F32_TILE(1)
F32_TILE(2)
F32_TILE(3)
F32_TILE(4)

/* ------------------------------------------------------------------ AVX-512 BF16 kernel */

/* c += dot(p, broadcast *xp) with the broadcast folded into the instruction's memory operand:
 * written in assembly because compilers hoist the broadcasts out of the loop over vectors
 * and then run out of registers for the accumulators. */
#define BF16_DOT_MEM(c, p, xp) __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(c) : "v"(p), "m"(*(xp)))
#define BF16_DOT_REG(c, p, xp) c = _mm512_dpbf16_ps(c, (__m512bh)(p), (__m512bh)_mm512_set1_epi32((int)*(xp)))
#define BF16_DOT(R, c, p, xp) BY_ROWS(R, BF16_DOT_REG(c, p, xp), BF16_DOT_MEM(c, p, xp))

/* A vector of 16 words -> four vectors of bfloat16 pairs: (w >> 4p) & 0x000F000F | 0x43004300 is
 * bfloat16 128 + q for rows 8r + p (low half) and 8r + p + 4 (high half) */
ALWAYS_INLINE void bf16_pairs(__m512i w, __m512i *p0, __m512i *p1, __m512i *p2, __m512i *p3) INCQ_TARGET_AVX512BF16;
ALWAYS_INLINE void bf16_pairs(__m512i w, __m512i *p0, __m512i *p1, __m512i *p2, __m512i *p3) {
    const __m512i nib = _mm512_set1_epi32(0x000F000F), bias = _mm512_set1_epi32(0x43004300);
    *p0 = _mm512_ternarylogic_epi32(w, nib, bias, 0xEA);
    *p1 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 4), nib, bias, 0xEA);
    *p2 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 8), nib, bias, 0xEA);
    *p3 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 12), nib, bias, 0xEA);
}

#define BF16_TILE(R)                                                                              \
    INCQ_TARGET_AVX512BF16 static void tile_bf16_##R(const gemm_args *a, int64_t g, int64_t m0,   \
                                                     int64_t n0, int64_t cols, float *y, int64_t ys) { \
        TILE_PROLOGUE(R)                                                                          \
        const int64_t half = a->xp_ld;                                                            \
        for (int64_t r = g * per; r < (g + 1) * per; r++) {                                       \
            const int32_t *wrow = a->qweight + r * a->n + n0;                                     \
            const uint32_t *xp = a->xpairs + m0 * half + 4 * r;                                   \
            PREFETCH_ROW(wrow);                                                                   \
            UNROLL for (int v = 0; v < NV; v++) {                                                         \
                __m512i p0, p1, p2, p3;                                                           \
                bf16_pairs(_mm512_maskz_loadu_epi32(mk[v], wrow + 16 * v), &p0, &p1, &p2, &p3);   \
                UNROLL for (int mi = 0; mi < R; mi++) {                                                  \
                    const uint32_t *xm = xp + mi * half;                                          \
                    __m512 *c = acc[mi][v];                                                       \
                    BF16_DOT(R, c[0], p0, xm);                                                    \
                    BF16_DOT(R, c[PAR(R) - 1], p1, xm + 1);                                           \
                    BF16_DOT(R, c[0], p2, xm + 2);                                                    \
                    BF16_DOT(R, c[PAR(R) - 1], p3, xm + 3);                                           \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        EPILOGUE(128.0f, R)                                                                       \
    }

BF16_TILE(1)
BF16_TILE(2)
BF16_TILE(3)
BF16_TILE(4)

/* TALL rows of x at once on 16 columns (one vector): the 16 accumulators and the four decoded
 * pairs of a vector fit the 32 registers, so each word is decoded once for TALL rows, not once
 * per MR (the decode is 7 of every 4 + 7 instructions a row block spends per vector). The
 * driver takes blocks of TALL rows through this kernel, four calls per tile, and the rest of
 * the rows through the tiles above. */
#define TALL 16
INCQ_TARGET_AVX512BF16 static void tall_bf16(const gemm_args *a, int64_t g, int64_t m0, int64_t n0, int64_t cols,
                                             float *y, int64_t ys) {
    const __mmask16 mk = lane_mask(cols, 0);
    const int64_t per = a->group_size / 8, half = a->xp_ld;
    __m512 acc[TALL];
    UNROLL for (int mi = 0; mi < TALL; mi++) acc[mi] = _mm512_setzero_ps();
    for (int64_t r = g * per; r < (g + 1) * per; r++) {
        const int32_t *wrow = a->qweight + r * a->n + n0;
        const uint32_t *xp = a->xpairs + m0 * half + 4 * r;
        _mm_prefetch((const char *)(wrow + PREFETCH_TALL), _MM_HINT_T1);
        __m512i p0, p1, p2, p3;
        bf16_pairs(_mm512_maskz_loadu_epi32(mk, wrow), &p0, &p1, &p2, &p3);
        UNROLL for (int mi = 0; mi < TALL; mi++) {
            const uint32_t *xm = xp + mi * half;
            BF16_DOT_MEM(acc[mi], p0, xm);
            BF16_DOT_MEM(acc[mi], p1, xm + 1);
            BF16_DOT_MEM(acc[mi], p2, xm + 2);
            BF16_DOT_MEM(acc[mi], p3, xm + 3);
        }
    }
    const __m512 s = scale_vector(a, g, n0, mk), zc = zero_vector(a, g, n0, mk, 128.0f);
    UNROLL for (int mi = 0; mi < TALL; mi++) {
        const __m512 xs = _mm512_set1_ps(a->xsum[(m0 + mi) * a->groups + g]);
        float *yp = y + mi * ys;
        const __m512 t = _mm512_fnmadd_ps(zc, xs, acc[mi]);
        _mm512_mask_storeu_ps(yp, mk, _mm512_fmadd_ps(s, t, _mm512_maskz_loadu_ps(mk, yp)));
    }
}

#endif /* INCQ_X86 */

/* ------------------------------------------------------------------ driver */

typedef void (*tile_fn)(const gemm_args *, int64_t g, int64_t m0, int64_t n0, int64_t cols, float *y, int64_t ys);

static int uses_pairs(int isa) { return isa == INCQ_AVX512BF16; }

/* Row i of the output, columns [c0, c1): y (+ bias) rounded once to the output dtype. */
static void write_row_portable(const gemm_args *a, const float *y, int64_t i, int64_t c0, int64_t c1) {
    for (int64_t n = c0; n < c1; n++) {
        float v = y[n];
        if (a->bias) v += incq_load_float(a->bias, a->bias_dtype, n);
        store_float(a->out, a->out_dtype, i * a->n + n, v);
    }
}
#if INCQ_X86
/* eight at a time: float16 by F16C (round to nearest even), bfloat16 by rounding the bits */
INCQ_TARGET_AVX2 static void write_row_avx2(const gemm_args *a, const float *y, int64_t i, int64_t c0, int64_t c1) {
    int64_t n = c0;
    if (!a->bias && a->out_dtype != INCQ_F32) {
        uint16_t *out = (uint16_t *)a->out + i * a->n;
        for (; n + 8 <= c1; n += 8) {
            const __m256 v = _mm256_loadu_ps(y + n);
            __m128i h;
            if (a->out_dtype == INCQ_F16) {
                h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            } else {
                __m256i u = _mm256_castps_si256(v);
                const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                                 _mm256_and_si256(_mm256_srli_epi32(u, 16),
                                                                                  _mm256_set1_epi32(1))));
                r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan); /* quiet NaN */
                r = _mm256_srli_epi32(r, 16);
                h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
            }
            _mm_storeu_si128((__m128i *)(out + n), h);
        }
    }
    write_row_portable(a, y, i, n, c1);
}
#endif
static void write_row(const gemm_args *a, const float *y, int64_t i, int64_t c0, int64_t c1) {
#if INCQ_X86
    if (incq_isa >= INCQ_AVX2) return write_row_avx2(a, y, i, c0, c1);
#endif
    write_row_portable(a, y, i, c0, c1);
}

/* Group g of one tile of columns for every row of x. */
static void tile_every_row(const gemm_args *a, int isa, int64_t g, int64_t n0, int64_t cols, float *y, int64_t ys) {
    int64_t m0 = 0;
#if INCQ_X86
    if (uses_pairs(isa) && a->xpairs)
        for (; m0 + TALL <= a->m; m0 += TALL)
            for (int64_t j = 0; j < cols; j += 16)
                tall_bf16(a, g, m0, n0 + j, cols - j < 16 ? cols - j : 16, y + m0 * ys + n0 + j, ys);
#endif
    for (; m0 < a->m; m0 += MR) {
        const int64_t rows = a->m - m0 < MR ? a->m - m0 : MR;
        float *yt = y + m0 * ys + n0;
#if INCQ_X86
        if (isa >= INCQ_AVX512) {
            static const tile_fn f32[MR] = {tile_avx512_1, tile_avx512_2, tile_avx512_3, tile_avx512_4};
            static const tile_fn bf16[MR] = {tile_bf16_1, tile_bf16_2, tile_bf16_3, tile_bf16_4};
            (uses_pairs(isa) && a->xpairs ? bf16 : f32)[rows - 1](a, g, m0, n0, cols, yt, ys);
            continue;
        }
        if (isa == INCQ_AVX2) {
            tile_avx2(a, g, m0, rows, n0, cols, yt, ys);
            continue;
        }
#endif
        tile_portable(a, g, m0, rows, n0, cols, yt, ys);
    }
}

/* Tiles [b, e) of TILE columns for every row of x, accumulating into the float32 scratch
 * a->y [M, N]. Up to TILES_INNER_ROWS rows of x, groups run outermost, so that the rows of
 * words read at a time are one group's (a few streams through memory, not one per row of
 * words), while the scratch's rows (M x N floats) stay in L2. With more rows each word is used
 * by many rows, and tiles run outermost instead: a tile's M x TILE floats of scratch stay in L1
 * and L2 over all groups rather than every group passing over all of y. */
#ifndef TILES_INNER_ROWS
#define TILES_INNER_ROWS 64
#endif
static void gemm_task(void *ctx, int64_t b, int64_t e) {
    const gemm_args *a = ctx;
    const int isa = incq_isa;
    const int64_t c0 = b * TILE, c1 = e * TILE < a->n ? e * TILE : a->n, ys = a->n;
    float *y = a->y;
    if (a->m <= TILES_INNER_ROWS) {
        for (int64_t g = 0; g < a->groups; g++)
            for (int64_t n0 = c0; n0 < c1; n0 += TILE)
                tile_every_row(a, isa, g, n0, c1 - n0 < TILE ? c1 - n0 : TILE, y, ys);
    } else {
        for (int64_t n0 = c0; n0 < c1; n0 += TILE)
            for (int64_t g = 0; g < a->groups; g++)
                tile_every_row(a, isa, g, n0, c1 - n0 < TILE ? c1 - n0 : TILE, y, ys);
    }
    for (int64_t i = 0; i < a->m; i++) write_row(a, y + i * ys, i, c0, c1);
}

/* x -> the operands the kernels multiply: bfloat16 pairs (avx512bf16, bfloat16 or float16 x)
 * or float32, and the per-group sums of exactly those values. */
/* n elements of type dt -> float32 (float16 through F16C where the CPU has it) */
static void row_to_float_portable(const void *src, int dt, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = incq_load_float(src, dt, i);
}
#if INCQ_X86
INCQ_TARGET_AVX2 static void row_to_float_avx2(const void *src, int dt, int64_t n, float *dst) {
    int64_t i = 0;
    if (dt == INCQ_F16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i))));
    for (; i < n; i++) dst[i] = incq_load_float(src, dt, i);
}
#endif
static void row_to_float(const void *src, int dt, int64_t n, float *dst) {
#if INCQ_X86
    if (incq_isa >= INCQ_AVX2) return row_to_float_avx2(src, dt, n, dst);
#endif
    row_to_float_portable(src, dt, n, dst);
}

static int prepare(gemm_args *a, uint32_t **pairs, float **xf, float **xsum, float **y) {
    const int64_t m = a->m, k = a->k, G = a->groups, gs = a->group_size;
    *pairs = NULL;
    *xf = NULL;
    *y = calloc((size_t)(m * a->n), sizeof(float));
    if (!*y) return -1;
    incq_advise_huge(*y, m * a->n * 4);
    incq_advise_huge(a->out, m * a->n * (a->out_dtype == INCQ_F32 ? 4 : 2));
    *xsum = malloc(sizeof(float) * (size_t)(m * G > 0 ? m * G : 1));
    if (!*xsum) return -1;
    const int bf16 = uses_pairs(incq_isa) && a->x_dtype != INCQ_F32;
    if (bf16) {
        a->xp_ld = k / 2 + 16;
        *pairs = malloc(sizeof(uint32_t) * (size_t)(m * a->xp_ld > 0 ? m * a->xp_ld : 1));
        if (!*pairs) return -1;
    }
    /* float kernels read x as float32 [M, K]; the bfloat16 kernel reads one row of it at a time */
    *xf = malloc(sizeof(float) * (size_t)((bf16 ? 1 : m) * k));
    if (!*xf) return -1;
    for (int64_t i = 0; i < m; i++) {
        const char *src = (const char *)a->x + i * a->x_ld * (a->x_dtype == INCQ_F32 ? 4 : 2);
        float *row = *xf + (bf16 ? 0 : i * k);
        row_to_float(src, a->x_dtype, k, row);
        if (bf16) { /* the values the dot products multiply: x rounded to bfloat16 */
            for (int64_t kk = 0; kk < k; kk++) row[kk] = incq_bf16_to_f32(incq_f32_to_bf16(row[kk]));
            for (int64_t r = 0; r < k / 8; r++)
                for (int p = 0; p < 4; p++) {
                    uint32_t lo = (uint32_t)incq_f32_to_bf16(row[8 * r + p]), hi = incq_f32_to_bf16(row[8 * r + p + 4]);
                    (*pairs)[i * a->xp_ld + 4 * r + p] = lo | (hi << 16);
                }
        }
        for (int64_t g = 0; g < G; g++) {
            float sum = 0.0f;
            for (int64_t kk = g * gs; kk < (g + 1) * gs; kk++) sum += row[kk];
            (*xsum)[i * G + g] = sum;
        }
    }
    if (bf16) { /* the bfloat16 kernel does not read xf */
        free(*xf);
        *xf = NULL;
    }
    return 0;
}

/* gemm(x, x_dtype, m, k, x_ld, qweight, n, scales, s_dtype, qzeros, zero_offset, zeros_awq,
 *      group_size, bias, bias_dtype, out, out_dtype, threads) -> None. Addresses are integers
 * (0: none); every array but x is contiguous. */
static PyObject *py_gemm(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[18];
    if (incq_int_args("gemm", args, nargs, 18, v)) return NULL;
    gemm_args a = {
        .x = INCQ_PTR(v[0]), .x_dtype = (int)v[1], .m = v[2], .k = v[3], .x_ld = v[4],
        .qweight = INCQ_PTR(v[5]), .n = v[6], .scales = INCQ_PTR(v[7]), .s_dtype = (int)v[8],
        .qzeros = INCQ_PTR(v[9]), .zero_add = v[10] ? 0x11111111u : 0u, .zeros_awq = (int)v[11],
        .group_size = v[12], .bias = INCQ_PTR(v[13]), .bias_dtype = (int)v[14], .out = INCQ_PTR(v[15]),
        .out_dtype = (int)v[16],
    };
    const int threads = (int)v[17];
    if (a.k <= 0 || a.k % 8 || a.group_size <= 0 || a.group_size % 8 || a.k % a.group_size || a.n <= 0 || a.m < 0 ||
        (a.qzeros && a.n % 8)) {
        return PyErr_Format(PyExc_ValueError, "gemm: unsupported shape m=%lld k=%lld n=%lld group_size=%lld",
                            (long long)a.m, (long long)a.k, (long long)a.n, (long long)a.group_size);
    }
    a.groups = a.k / a.group_size;
    if (a.m == 0) Py_RETURN_NONE;
    uint32_t *pairs = NULL;
    float *xf = NULL, *xsum = NULL, *y = NULL;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = prepare(&a, &pairs, &xf, &xsum, &y);
    if (!failed) {
        a.y = y;
        a.xpairs = pairs;
        a.xf = xf;
        a.xsum = xsum;
        incq_parallel_for(threads, (a.n + TILE - 1) / TILE, 1, gemm_task, &a);
    }
    free(pairs);
    free(xf);
    free(xsum);
    free(y);
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ dequantized blocks */

/* The operand of a GEMM for many rows of x: W[k, j] = (q[k, n0 + j] - z) * s for columns
 * n0 .. n0 + nb, written as bfloat16 or float32 (w_dtype), row-major [K, nb] or, transposed,
 * [nb, K] (the layout of F.linear's weight, which torch's GEMM multiplies 3-16% faster). */
typedef struct {
    const gemm_args *a;
    int64_t n0, nb;
    void *w;
    int w_dtype;
    int transposed;
} block_args;

static void block_rows_portable(const block_args *b, int64_t r0, int64_t r1) {
    const gemm_args *a = b->a;
    for (int64_t r = r0; r < r1; r++) { /* r: a row of words, 8 rows of W */
        const int64_t g = 8 * r / a->group_size;
        const int32_t *wrow = a->qweight + r * a->n + b->n0;
        for (int64_t j = 0; j < b->nb; j++) {
            const float s = incq_load_float(a->scales, a->s_dtype, g * a->n + b->n0 + j);
            const float z = zero_point(a, g, b->n0 + j);
            const uint32_t w = (uint32_t)wrow[j];
            for (int i = 0; i < 8; i++)
                store_float(b->w, b->w_dtype, (8 * r + i) * b->nb + j, ((float)((w >> (4 * i)) & 15u) - z) * s);
        }
    }
}

#ifndef BLOCK_PREFETCH
#define BLOCK_PREFETCH 8 /* rows of words ahead (a block's rows are N words apart) */
#endif

#if INCQ_X86
/* q as float without a conversion: the bits 0x4B000000 | q are the float 2**23 + q */
#define BLOCK_BODY(STORE_BF16)                                                                    \
    const gemm_args *a = b->a;                                                                    \
    const __m512i nib = _mm512_set1_epi32(15), magic = _mm512_set1_epi32(0x4B000000);             \
    for (int64_t r = r0; r < r1; r++) {                                                           \
        const int64_t g = 8 * r / a->group_size;                                                  \
        const int32_t *wrow = a->qweight + r * a->n + b->n0;                                      \
        for (int64_t j = 0; j < b->nb; j += 16) {                                                 \
            const __mmask16 mk = lane_mask(b->nb - j, 0);                                         \
            const __m512 s = scale_vector(a, g, b->n0 + j, mk);                                   \
            const __m512 z = zero_vector(a, g, b->n0 + j, mk, 8388608.0f);                        \
            const __m512i w = _mm512_maskz_loadu_epi32(mk, wrow + j);                             \
            _mm_prefetch((const char *)(wrow + BLOCK_PREFETCH * a->n + j), _MM_HINT_T0);          \
            for (int i = 0; i < 8; i++) {                                                         \
                const __m512i bits = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 4 * i), nib, magic, 0xEA); \
                const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_castsi512_ps(bits), z), s);   \
                const int64_t at = (8 * r + i) * b->nb + j;                                       \
                if (b->w_dtype == INCQ_F32) {                                                     \
                    if (mk == 0xffff) _mm512_storeu_ps((float *)b->w + at, v);                    \
                    else _mm512_mask_storeu_ps((float *)b->w + at, mk, v);                        \
                } else {                                                                          \
                    STORE_BF16((uint16_t *)b->w + at, mk, v);                                     \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

/* round to nearest even on the bits (finite values) */
/* v's bits rounded so that their upper half is v as bfloat16 (nearest even; finite values) */
INCQ_TARGET_AVX512 static inline __m512i bf16_round_bits(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
}
#define STORE_BF16_INT(p, mk, v) STORE_HALVES(p, mk, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_round_bits(v), 16)))
#define STORE_BF16_NATIVE(p, mk, v) STORE_HALVES(p, mk, (__m256i)_mm512_cvtneps_pbh(v))
/* 16 bfloat16 values, unmasked when all lanes are written (masked stores are slow on some CPUs) */
#define STORE_HALVES(p, mk, h)                                                                    \
    do {                                                                                          \
        if ((mk) == 0xffff) _mm256_storeu_si256((__m256i *)(p), h);                               \
        else _mm256_mask_storeu_epi16(p, mk, h);                                                  \
    } while (0)

INCQ_TARGET_AVX512 static void block_rows_avx512(const block_args *b, int64_t r0, int64_t r1) {
    BLOCK_BODY(STORE_BF16_INT)
}
INCQ_TARGET_AVX512BF16 static void block_rows_bf16(const block_args *b, int64_t r0, int64_t r1) {
    BLOCK_BODY(STORE_BF16_NATIVE)
}
#endif

/* Transposed blocks: W^T[j, k] for the column tiles [t0, t1) of 16 columns. A word holds 8
 * consecutive k of one column, so a column's row of W^T is its words in order, each decoded
 * to 8 values. Needs K and group_size multiples of 32 (4 rows of words share a group). */
static void block_cols_portable(const block_args *b, int64_t t0, int64_t t1) {
    const gemm_args *a = b->a;
    for (int64_t j = 16 * t0; j < 16 * t1 && j < b->nb; j++)
        for (int64_t r = 0; r < a->k / 8; r++) {
            const int64_t g = 8 * r / a->group_size;
            const float s = incq_load_float(a->scales, a->s_dtype, g * a->n + b->n0 + j);
            const float z = zero_point(a, g, b->n0 + j);
            const uint32_t w = (uint32_t)a->qweight[r * a->n + b->n0 + j];
            for (int i = 0; i < 8; i++)
                store_float(b->w, b->w_dtype, j * a->k + 8 * r + i, ((float)((w >> (4 * i)) & 15u) - z) * s);
        }
}

#ifndef BLOCK_T_PREFETCH
#define BLOCK_T_PREFETCH 12 /* rows of words ahead in a tile's column (4-12 measured alike, 32-128 slower) */
#endif

#if INCQ_X86
/* For each tile of 16 columns and each 4 rows of words: the 4 word vectors are transposed in
 * registers (a 4 x 4 transpose in each 128-bit lane: lane L of T[m] holds the 4 words of
 * column 4L + m), and each column's 32 values, (2**23 + q - (2**23 + z)) * s in float32 as in
 * the [K, nb] kernel, are formed by a permute that repeats each word over 8 lanes, a variable
 * shift and the 2**23 trick, then stored at once (one 64-byte line in bfloat16). */
#define BLOCK_T_BODY(STORE32)                                                                     \
    const gemm_args *a = b->a;                                                                    \
    const int64_t k = a->k, rows = k / 8;                                                         \
    const __m512i nib = _mm512_set1_epi32(15), magic = _mm512_set1_epi32(0x4B000000);             \
    const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28); \
    const __m512i lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);         \
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(2));                               \
    for (int64_t t = t0; t < t1; t++) {                                                           \
        const int64_t j0 = 16 * t, cols = b->nb - j0 < 16 ? b->nb - j0 : 16;                      \
        const __mmask16 mk = lane_mask(cols, 0);                                                  \
        const int32_t *wcol = a->qweight + b->n0 + j0;                                            \
        float zs[16], ss[16];                                                                     \
        for (int64_t r = 0; r < rows; r += 4) {                                                   \
            if ((8 * r) % a->group_size == 0) {                                                   \
                const int64_t g = 8 * r / a->group_size;                                          \
                _mm512_storeu_ps(zs, zero_vector(a, g, b->n0 + j0, mk, 8388608.0f));              \
                _mm512_storeu_ps(ss, scale_vector(a, g, b->n0 + j0, mk));                         \
            }                                                                                     \
            __m512i v0 = _mm512_maskz_loadu_epi32(mk, wcol + r * a->n);                           \
            __m512i v1 = _mm512_maskz_loadu_epi32(mk, wcol + (r + 1) * a->n);                     \
            __m512i v2 = _mm512_maskz_loadu_epi32(mk, wcol + (r + 2) * a->n);                     \
            __m512i v3 = _mm512_maskz_loadu_epi32(mk, wcol + (r + 3) * a->n);                     \
            for (int f = 0; f < 4; f++)                                                           \
                _mm_prefetch((const char *)(wcol + (r + BLOCK_T_PREFETCH + f) * a->n), _MM_HINT_T0); \
            const __m512i t01l = _mm512_unpacklo_epi32(v0, v1), t01h = _mm512_unpackhi_epi32(v0, v1); \
            const __m512i t23l = _mm512_unpacklo_epi32(v2, v3), t23h = _mm512_unpackhi_epi32(v2, v3); \
            const __m512i tr[4] = {_mm512_unpacklo_epi64(t01l, t23l), _mm512_unpackhi_epi64(t01l, t23l), \
                                   _mm512_unpacklo_epi64(t01h, t23h), _mm512_unpackhi_epi64(t01h, t23h)}; \
            for (int64_t j = 0; j < cols; j++) {                                                  \
                const __m512i T = tr[j & 3], at = _mm512_set1_epi32((int)(j & ~3));              \
                const __m512 z = _mm512_set1_ps(zs[j]), s = _mm512_set1_ps(ss[j]);                \
                const __m512i w0 = _mm512_permutexvar_epi32(_mm512_add_epi32(lo, at), T);         \
                const __m512i w1 = _mm512_permutexvar_epi32(_mm512_add_epi32(hi, at), T);         \
                const __m512 d0 = _mm512_mul_ps(_mm512_sub_ps(_mm512_castsi512_ps(               \
                    _mm512_ternarylogic_epi32(_mm512_srlv_epi32(w0, shifts), nib, magic, 0xEA)), z), s); \
                const __m512 d1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_castsi512_ps(               \
                    _mm512_ternarylogic_epi32(_mm512_srlv_epi32(w1, shifts), nib, magic, 0xEA)), z), s); \
                const int64_t o = (j0 + j) * k + 8 * r;                                           \
                if (b->w_dtype == INCQ_F32) {                                                     \
                    _mm512_storeu_ps((float *)b->w + o, d0);                                      \
                    _mm512_storeu_ps((float *)b->w + o + 16, d1);                                 \
                } else {                                                                          \
                    _mm512_storeu_si512((uint16_t *)b->w + o, STORE32(d0, d1));                   \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

/* 32 bfloat16 from two float32 vectors (d0's first): the upper halves of the rounded bits */
INCQ_TARGET_AVX512 static inline __m512i bf16_32_int(__m512 d0, __m512 d1) {
    const __m512i odd = _mm512_setr_epi32(0x00030001, 0x00070005, 0x000b0009, 0x000f000d, 0x00130011, 0x00170015,
                                          0x001b0019, 0x001f001d, 0x00230021, 0x00270025, 0x002b0029, 0x002f002d,
                                          0x00330031, 0x00370035, 0x003b0039, 0x003f003d);
    return _mm512_permutex2var_epi16(bf16_round_bits(d0), odd, bf16_round_bits(d1));
}
#define BF16_32_NATIVE(d0, d1) ((__m512i)_mm512_cvtne2ps_pbh(d1, d0))

INCQ_TARGET_AVX512 static void block_cols_avx512(const block_args *b, int64_t t0, int64_t t1) {
    BLOCK_T_BODY(bf16_32_int)
}
INCQ_TARGET_AVX512BF16 static void block_cols_bf16(const block_args *b, int64_t t0, int64_t t1) {
    BLOCK_T_BODY(BF16_32_NATIVE)
}
#endif

/* r0 .. r1: rows of words, or for transposed blocks tiles of 16 columns */
static void block_task(void *ctx, int64_t r0, int64_t r1) {
    const block_args *b = ctx;
    void (*run)(const block_args *, int64_t, int64_t) = b->transposed ? block_cols_portable : block_rows_portable;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) {
        const int bf16 = incq_isa == INCQ_AVX512BF16;
        run = b->transposed ? (bf16 ? block_cols_bf16 : block_cols_avx512) : (bf16 ? block_rows_bf16 : block_rows_avx512);
    }
#endif
    run(b, r0, r1);
}

/* dequantize_block(qweight, n, k, scales, s_dtype, qzeros, zero_offset, zeros_awq, group_size,
 *                  n0, nb, out, out_dtype, threads, transposed) -> None */
static PyObject *py_dequantize_block(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[15];
    if (incq_int_args("dequantize_block", args, nargs, 15, v)) return NULL;
    gemm_args a = {
        .qweight = INCQ_PTR(v[0]), .n = v[1], .k = v[2], .scales = INCQ_PTR(v[3]), .s_dtype = (int)v[4],
        .qzeros = INCQ_PTR(v[5]), .zero_add = v[6] ? 0x11111111u : 0u, .zeros_awq = (int)v[7], .group_size = v[8],
    };
    block_args b = {.a = &a, .n0 = v[9], .nb = v[10], .w = INCQ_PTR(v[11]), .w_dtype = (int)v[12],
                    .transposed = (int)v[14]};
    const int threads = (int)v[13];
    if (a.k <= 0 || a.k % 8 || a.group_size <= 0 || a.group_size % 8 || a.k % a.group_size || b.n0 < 0 ||
        b.nb <= 0 || b.n0 + b.nb > a.n || (a.qzeros && (a.n % 8 || b.n0 % 16)) || b.w_dtype == INCQ_F16 ||
        (b.transposed && (a.k % 32 || a.group_size % 32))) {
        return PyErr_Format(PyExc_ValueError, "dequantize_block: unsupported arguments");
    }
    a.groups = a.k / a.group_size;
    Py_BEGIN_ALLOW_THREADS
    if (b.transposed)
        incq_parallel_for(threads, (b.nb + 15) / 16, 1, block_task, &b);
    else
        incq_parallel_for(threads, a.k / 8, 1, block_task, &b);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ conversions between float types */

/* dst[i, j] = src[i, j] in dst's float type, rounded to nearest even (NaN stays a quiet NaN),
 * for the GEMM path's operands: float16 x to bfloat16, and a block's product into the output's
 * columns (row strides src_ld, dst_ld in elements). torch's own conversions between the 16-bit
 * types run at 1.5-5 ns an element on one core; these run at the speed of memory. */
typedef struct {
    const void *src;
    void *dst;
    int sd, dd;
    int64_t sld, dld, cols;
} convert_args;

static void convert_rows_portable(const convert_args *c, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const char *src = (const char *)c->src + r * c->sld * float_size(c->sd);
        char *dst = (char *)c->dst + r * c->dld * float_size(c->dd);
        for (int64_t j = 0; j < c->cols; j++) store_float(dst, c->dd, j, incq_load_float(src, c->sd, j));
    }
}

#if INCQ_X86
INCQ_TARGET_AVX512 static inline void store16_float(void *p, int dt, __mmask16 mk, __m512 v) {
    switch (dt) {
    case INCQ_F32: _mm512_mask_storeu_ps(p, mk, v); return;
    case INCQ_BF16: {
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __m512i r = _mm512_mask_or_epi32(bf16_round_bits(v), nan, _mm512_castps_si512(v),
                                               _mm512_set1_epi32(0x400000)); /* NaN: quieted, not rounded */
        _mm256_mask_storeu_epi16(p, mk, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
        return;
    }
    default: _mm256_mask_storeu_epi16(p, mk, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
}
INCQ_TARGET_AVX512 static void convert_rows_avx512(const convert_args *c, int64_t r0, int64_t r1) {
    const int64_t ss = float_size(c->sd), ds = float_size(c->dd);
    for (int64_t r = r0; r < r1; r++) {
        const char *src = (const char *)c->src + r * c->sld * ss;
        char *dst = (char *)c->dst + r * c->dld * ds;
        for (int64_t j = 0; j < c->cols; j += 16) {
            const __mmask16 mk = lane_mask(c->cols - j, 0);
            store16_float(dst + j * ds, c->dd, mk, load16_float(src + j * ss, c->sd, mk));
        }
    }
}
#endif

static void convert_task(void *ctx, int64_t r0, int64_t r1) {
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) return convert_rows_avx512(ctx, r0, r1);
#endif
    convert_rows_portable(ctx, r0, r1);
}

/* convert_rows(src, src_dtype, src_ld, dst, dst_dtype, dst_ld, rows, cols, threads) -> None */
static PyObject *py_convert_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[9];
    if (incq_int_args("convert_rows", args, nargs, 9, v)) return NULL;
    convert_args c = {INCQ_PTR(v[0]), INCQ_PTR(v[3]), (int)v[1], (int)v[4], v[2], v[5], v[7]};
    const int64_t rows = v[6];
    if (rows < 0 || c.cols < 0 || c.sld < c.cols || c.dld < c.cols || c.sd < 0 || c.sd > 2 || c.dd < 0 || c.dd > 2)
        return PyErr_Format(PyExc_ValueError, "convert_rows: unsupported arguments");
    Py_BEGIN_ALLOW_THREADS
    incq_parallel_for((int)v[8], rows, 16, convert_task, &c);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyMethodDef incq_matmul_methods[] = {
    {"convert_rows", (PyCFunction)(void (*)(void))py_convert_rows, METH_FASTCALL,
     "Rows of floats converted to another float type, nearest even (matmul.c)."},
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_FASTCALL, "Fused W4A16 matmul on GPTQ words (matmul.c)."},
    {"dequantize_block", (PyCFunction)(void (*)(void))py_dequantize_block, METH_FASTCALL,
     "Columns of GPTQ words dequantized into a GEMM operand (matmul.c)."},
    {NULL, NULL, 0, NULL},
};
