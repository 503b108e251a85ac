/* Layout kernels: repacking, unpacking and dequantizing packed words (specs/gptq.md,
 * specs/awq.md, specs/zero-points.md, specs/dequantize.md).
 *
 * Words are read and written as uint32 (the int32 tensors' bits). Every kernel has a portable
 * C version; AVX2 and AVX-512 versions are compiled with target attributes and chosen by
 * incq_isa at call time ("avx512bf16" runs the AVX-512 code, plus VCVTNEPS2BF16 where it
 * gives the same bits). The bindings at the end release the GIL around each kernel and split
 * the work with incq_parallel_for.
 */
#include "incq_native.h"

#include <stdlib.h>

/* AWQ nibble order: slot i of a word holds column 8c + AWQ_ORDER[i]; column m sits in slot
 * AWQ_SLOT[m] (AWQ_REVERSE_ORDER). */
static const int AWQ_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};
static const int AWQ_SLOT[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* ================================================================== 8 x 8 nibble transpose
 *
 * awq_to_gptq reads AWQ words src[K, C] (row k, word column c: slot i = column 8c + AWQ_ORDER[i])
 * and writes GPTQ words dst[K/8, 8C] (word (r, n): row 8r + j in nibble j). Eight AWQ rows of
 * one word column form an 8 x 8 nibble matrix; its transpose holds the eight GPTQ words of
 * columns 8c .. 8c + 7, transposed word AWQ_SLOT[m] being column 8c + m. gptq_to_awq is the
 * inverse: place the words (transposed word i = column AWQ_ORDER[i]), then the same transpose.
 * The transpose is three exchanges on whole words (16-bit halves 4 words apart, bytes 2 apart,
 * nibbles 1 apart): t = ((a >> s) ^ b) & m; b ^= t; a ^= t << s.
 */

ALWAYS_INLINE void xchg(uint32_t *a, uint32_t *b, int s, uint32_t m) {
    uint32_t t = ((*a >> s) ^ *b) & m;
    *b ^= t;
    *a ^= t << s;
}

ALWAYS_INLINE void transpose8(uint32_t w[8]) {
    for (int j = 0; j < 4; j++) xchg(&w[j], &w[j + 4], 16, 0x0000FFFFu);
    for (int j = 0; j < 8; j += (j & 1) ? 3 : 1) xchg(&w[j], &w[j + 2], 8, 0x00FF00FFu); /* 0 1 4 5 */
    for (int j = 0; j < 8; j += 2) xchg(&w[j], &w[j + 1], 4, 0x0F0F0F0Fu);
}

typedef struct {
    const uint32_t *src;
    uint32_t *dst;
    int64_t c;     /* AWQ word columns (N / 8) */
    int stream;    /* write with non-temporal stores (large outputs, aligned rows) */
} nib_args;

/* Outputs larger than this are written with non-temporal stores: they would not stay in the
 * cache anyway, and streaming saves the read of each line before it is written. */
#define STREAM_BYTES ((int64_t)8 << 20)

/* block rows r in [r0, r1), word columns [c0, c1), one block at a time */
static void awq_to_gptq_blocks(const nib_args *a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const int64_t c = a->c;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t j = c0; j < c1; j++) {
            uint32_t w[8];
            for (int i = 0; i < 8; i++) w[i] = a->src[(8 * r + i) * c + j];
            transpose8(w);
            uint32_t *out = a->dst + r * 8 * c + 8 * j;
            for (int m = 0; m < 8; m++) out[m] = w[AWQ_SLOT[m]];
        }
    }
}

static void gptq_to_awq_blocks(const nib_args *a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const int64_t c = a->c;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t j = c0; j < c1; j++) {
            uint32_t w[8];
            const uint32_t *in = a->src + r * 8 * c + 8 * j;
            for (int i = 0; i < 8; i++) w[i] = in[AWQ_ORDER[i]];
            transpose8(w);
            for (int i = 0; i < 8; i++) a->dst[(8 * r + i) * c + j] = w[i];
        }
    }
}

#if INCQ_X86
/* ---- AVX2 (also run by the AVX-512 variants: on this kernel 512-bit vectors measured no
 * faster): 8 word columns at a time; an 8 x 8 transpose of 32-bit lanes moves between
 * "vector = AWQ row, lane = word column" and "vector = word column, lane = GPTQ column". */
#define XCHG256(a, b, s, m)                                                             \
    do {                                                                                \
        __m256i t_ = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi32(a, s), b), m); \
        b = _mm256_xor_si256(b, t_);                                                    \
        a = _mm256_xor_si256(a, _mm256_slli_epi32(t_, s));                              \
    } while (0)

INCQ_TARGET_AVX2 static inline void transpose8_avx2(__m256i v[8]) {
    const __m256i m16 = _mm256_set1_epi32(0x0000FFFF), m8 = _mm256_set1_epi32(0x00FF00FF),
                  m4 = _mm256_set1_epi32(0x0F0F0F0F);
    XCHG256(v[0], v[4], 16, m16); XCHG256(v[1], v[5], 16, m16); XCHG256(v[2], v[6], 16, m16); XCHG256(v[3], v[7], 16, m16);
    XCHG256(v[0], v[2], 8, m8); XCHG256(v[1], v[3], 8, m8); XCHG256(v[4], v[6], 8, m8); XCHG256(v[5], v[7], 8, m8);
    XCHG256(v[0], v[1], 4, m4); XCHG256(v[2], v[3], 4, m4); XCHG256(v[4], v[5], 4, m4); XCHG256(v[6], v[7], 4, m4);
}

/* in-place 8 x 8 transpose of 32-bit lanes: v[i] lane j <-> v[j] lane i */
INCQ_TARGET_AVX2 static inline void lanes8x8_avx2(__m256i v[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
        v[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
}

INCQ_TARGET_AVX2 static void awq_to_gptq_avx2(const nib_args *a, int64_t r0, int64_t r1) {
    const int64_t c = a->c, full = c / 8 * 8;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t j = 0; j < full; j += 8) {
            __m256i v[8], u[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_si256((const __m256i *)(a->src + (8 * r + i) * c + j));
            transpose8_avx2(v);
            for (int m = 0; m < 8; m++) u[m] = v[AWQ_SLOT[m]];
            lanes8x8_avx2(u); /* u[x] = the 8 GPTQ words of word column j + x */
            uint32_t *out = a->dst + r * 8 * c + 8 * j;
            if (a->stream)
                for (int x = 0; x < 8; x++) _mm256_stream_si256((__m256i *)(out + 8 * x), u[x]);
            else
                for (int x = 0; x < 8; x++) _mm256_storeu_si256((__m256i *)(out + 8 * x), u[x]);
        }
    }
    if (full < c) awq_to_gptq_blocks(a, r0, r1, full, c);
    _mm_sfence();
}

INCQ_TARGET_AVX2 static void gptq_to_awq_avx2(const nib_args *a, int64_t r0, int64_t r1) {
    const int64_t c = a->c, full = c / 8 * 8;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t j = 0; j < full; j += 8) {
            __m256i u[8], v[8];
            const uint32_t *in = a->src + r * 8 * c + 8 * j;
            for (int x = 0; x < 8; x++) u[x] = _mm256_loadu_si256((const __m256i *)(in + 8 * x));
            lanes8x8_avx2(u); /* u[m] lane x = GPTQ column 8 (j + x) + m */
            for (int i = 0; i < 8; i++) v[i] = u[AWQ_ORDER[i]];
            transpose8_avx2(v);
            if (a->stream)
                for (int i = 0; i < 8; i++) _mm256_stream_si256((__m256i *)(a->dst + (8 * r + i) * c + j), v[i]);
            else
                for (int i = 0; i < 8; i++) _mm256_storeu_si256((__m256i *)(a->dst + (8 * r + i) * c + j), v[i]);
        }
    }
    if (full < c) gptq_to_awq_blocks(a, r0, r1, full, c);
    _mm_sfence();
}

#endif

static void awq_to_gptq_task(void *ctx, int64_t r0, int64_t r1) {
    const nib_args *a = ctx;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX2) {
        awq_to_gptq_avx2(a, r0, r1);
        return;
    }
#endif
    awq_to_gptq_blocks(a, r0, r1, 0, a->c);
}

static void gptq_to_awq_task(void *ctx, int64_t r0, int64_t r1) {
    const nib_args *a = ctx;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX2) {
        gptq_to_awq_avx2(a, r0, r1);
        return;
    }
#endif
    gptq_to_awq_blocks(a, r0, r1, 0, a->c);
}

/* Block rows per task chunk: about 64 KiB of words. */
static int64_t nib_grain(int64_t c) {
    int64_t g = (1 << 14) / (8 * (c > 0 ? c : 1));
    return g < 1 ? 1 : g;
}

/* awq_to_gptq(src, dst, kb, c, threads) / gptq_to_awq(...): kb = K / 8 block rows */
static PyObject *py_nibble_transpose(PyObject *const *args, Py_ssize_t nargs, int to_gptq) {
    int64_t v[5];
    if (incq_int_args(to_gptq ? "awq_to_gptq" : "gptq_to_awq", args, nargs, 5, v)) return NULL;
    nib_args a = {INCQ_PTR(v[0]), INCQ_PTR(v[1]), v[3], 0};
    /* rows start on 64-byte lines: GPTQ rows of 8C words (C even), AWQ rows of C words (C % 16 == 0) */
    int aligned = ((uintptr_t)a.dst % 64 == 0) && (to_gptq ? v[3] % 2 == 0 : v[3] % 16 == 0);
    a.stream = aligned && v[2] * v[3] * 32 >= STREAM_BYTES;
    Py_BEGIN_ALLOW_THREADS
    incq_advise_huge(a.dst, v[2] * v[3] * 32);
    incq_parallel_for((int)v[4], v[2], nib_grain(v[3]), to_gptq ? awq_to_gptq_task : gptq_to_awq_task, &a);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_awq_to_gptq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return py_nibble_transpose(args, nargs, 1);
}
static PyObject *py_gptq_to_awq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return py_nibble_transpose(args, nargs, 0);
}

/* ================================================================== dequantize
 *
 * W[k, n] = float32(q[k, n] - z[g, n]) * s[g, n] rounded once to the output type, g = g_idx[k]
 * or k / group_size (specs/dequantize.md). Reads the codes q in one of four layouts:
 *   WORDS   bits 2, 4, 8: word (r, n) at w[r * rs + n * cs] holds rows r * pf .. r * pf + pf - 1
 *           (pf = 32 / bits) lowest first (GPTQ: rs = N, cs = 1; compressed-tensors, stored
 *           transposed: rs = 1, cs = words per row, copied into GPTQ order a tile at a time);
 *   AWQ     row k at w[k * rs], word n / 8 slot AWQ_SLOT[n % 8];
 *   STREAM  column n is one bit stream, word i at w[i * rs + n * cs], code k at bit k * bits
 *           (GPTQ 3-bit, compressed-tensors >= 0.18 of any width);
 *   PADDED  as STREAM with 32 / bits codes per word, the top bits unused (<= 0.17).
 * Zero points z are uint8 [G, N] (none: 2^(bits - 1)); scales s arrive as float32 [G, N].
 * Writes out [K, N] (float32, float16 or bfloat16), row-major. Work is split in units of 32
 * rows (whole words of every layout); STREAM and PADDED codes are first unpacked into a byte
 * tile. Float16 results are rounded by VCVTPS2PH; bfloat16 by integer rounding (nearest
 * even), or by VCVTNEPS2BF16 where no product can be subnormal (it flushes those to zero).
 */

enum { DQ_WORDS = 0, DQ_AWQ = 1, DQ_STREAM = 2, DQ_PADDED = 3 };
#define DQ_UNIT 32

typedef struct {
    int kind, bits;
    const uint32_t *w;
    int64_t rs, cs, k, n;
    const uint8_t *z;     /* [G, N] or NULL */
    const float *s;       /* [G, N] */
    const int32_t *gidx;  /* [K] or NULL */
    int64_t group_size;
    void *out;
    int dt;
    int bf16_native;      /* VCVTNEPS2BF16 gives the golden's bits */
} dq_args;

static inline int64_t dq_group(const dq_args *a, int64_t k) { return a->gidx ? a->gidx[k] : k / a->group_size; }

/* code q[k, n] from any layout, one at a time */
static inline uint32_t dq_code(const dq_args *a, int64_t k, int64_t n) {
    const uint32_t mask = (1u << a->bits) - 1;
    switch (a->kind) {
    case DQ_WORDS: {
        int pf = 32 / a->bits;
        return (a->w[(k / pf) * a->rs + n * a->cs] >> (a->bits * (k % pf))) & mask;
    }
    case DQ_AWQ: return (a->w[k * a->rs + n / 8] >> (4 * AWQ_SLOT[n % 8])) & 15u;
    case DQ_PADDED: {
        int per = 32 / a->bits;
        return (a->w[(k / per) * a->rs + n * a->cs] >> (a->bits * (k % per))) & mask;
    }
    default: {
        int64_t bit = k * a->bits, i = bit >> 5;
        int off = (int)(bit & 31);
        uint64_t v = a->w[i * a->rs + n * a->cs];
        if (off + a->bits > 32) v |= (uint64_t)a->w[(i + 1) * a->rs + n * a->cs] << 32;
        return (uint32_t)(v >> off) & mask;
    }
    }
}

static inline void dq_store_scalar(const dq_args *a, int64_t i, float v) {
    switch (a->dt) {
    case INCQ_F32: ((float *)a->out)[i] = v; break;
    case INCQ_BF16: ((uint16_t *)a->out)[i] = incq_f32_to_bf16(v); break;
    default: ((uint16_t *)a->out)[i] = incq_f32_to_f16(v); break;
    }
}

static inline void dq_scalar(const dq_args *a, int64_t k, int64_t n0, int64_t n1) {
    const int64_t g = dq_group(a, k), n = a->n;
    const int32_t half = 1 << (a->bits - 1);
    for (int64_t j = n0; j < n1; j++) {
        int32_t z = a->z ? a->z[g * n + j] : half;
        dq_store_scalar(a, k * n + j, (float)((int32_t)dq_code(a, k, j) - z) * a->s[g * n + j]);
    }
}

static void dq_portable(const dq_args *a, int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; k++) dq_scalar(a, k, 0, a->n);
}

/* codes of rows [k0, k1) into tile[(k - k0) * N + n] */
static void dq_unpack_tile(const dq_args *a, int64_t k0, int64_t k1, uint8_t *tile) {
    for (int64_t n = 0; n < a->n; n++)
        for (int64_t k = k0; k < k1; k++) tile[(k - k0) * a->n + n] = (uint8_t)dq_code(a, k, n);
}

/* the GPTQ words of rows [k0, k1) of a transposed WORDS layout into tile[r * N + n] */
static void dq_words_tile(const dq_args *a, int64_t k0, int64_t k1, uint32_t *tile) {
    const int pf = 32 / a->bits;
    const int64_t r0 = k0 / pf, r1 = (k1 + pf - 1) / pf;
    for (int64_t n = 0; n < a->n; n++) {
        const uint32_t *col = a->w + n * a->cs;
        for (int64_t r = r0; r < r1; r++) tile[(r - r0) * a->n + n] = col[r * a->rs];
    }
}

#if INCQ_X86
INCQ_TARGET_AVX512 ALWAYS_INLINE __m512 dq16_avx512(const dq_args *a, __m512i q, int64_t g, int64_t n, __mmask16 m) {
    const __m512i z = a->z ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, a->z + g * a->n + n))
                           : _mm512_set1_epi32(1 << (a->bits - 1));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, z)), _mm512_maskz_loadu_ps(m, a->s + g * a->n + n));
}

INCQ_TARGET_AVX512 ALWAYS_INLINE void st16_avx512(const dq_args *a, int64_t i, __m512 x, __mmask16 m) {
    if (a->dt == INCQ_F32) {
        _mm512_mask_storeu_ps((float *)a->out + i, m, x);
        return;
    }
    __m256i h;
    if (a->dt == INCQ_F16) {
        h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else if (a->bf16_native) {
        __asm__("vcvtneps2bf16 %1, %0" : "=v"(h) : "v"(x));
    } else { /* nearest even on the bits; NaN -> quiet NaN (its top bits) */
        const __m512i u = _mm512_castps_si512(x);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
        const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
        h = _mm512_cvtepi32_epi16(r);
    }
    _mm256_mask_storeu_epi16((uint16_t *)a->out + i, m, h);
}

/* rows [k0, k1) (k0 a multiple of pf) from GPTQ words, word row k0 / pf at words[0], row stride
 * ld. q - z is formed exactly in float as (2^23 + q) - (2^23 + z), both sides built by OR-ing
 * the integer into the bits of 2^23 (+0.0 where q == z, as float32(q - z) gives). */
INCQ_TARGET_AVX512 static void dq_words_avx512(const dq_args *a, const uint32_t *words, int64_t ld, int64_t k0, int64_t k1) {
    const int pf = 32 / a->bits;
    const int64_t n = a->n;
    const __m512i mask = _mm512_set1_epi32((1 << a->bits) - 1), magic = _mm512_set1_epi32(0x4B000000);
    const __m128i step = _mm_cvtsi32_si128(a->bits);
    for (int64_t r = k0 / pf; r * pf < k1; r++) {
        const uint32_t *wr = words + (r - k0 / pf) * ld;
        const int64_t first = r * pf;
        const int rows = (int)(k1 - first < pf ? k1 - first : pf);
        int64_t g[16];
        int uniform = 1;
        for (int p = 0; p < rows; p++) {
            g[p] = dq_group(a, first + p);
            uniform &= g[p] == g[0];
        }
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = j + 16 <= n ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
            __m512i w = _mm512_maskz_loadu_epi32(m, wr + j);
            __m512 zf = _mm512_setzero_ps(), sf = zf;
            for (int p = 0; p < rows; p++) {
                if (p == 0 || !uniform) {
                    const __m512i z = a->z ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, a->z + g[p] * n + j))
                                           : _mm512_set1_epi32(1 << (a->bits - 1));
                    zf = _mm512_castsi512_ps(_mm512_or_si512(z, magic));
                    sf = _mm512_maskz_loadu_ps(m, a->s + g[p] * n + j);
                }
                /* (w & mask) | magic */
                const __m512 qf = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(w, mask, magic, 0xEA));
                st16_avx512(a, (first + p) * n + j, _mm512_mul_ps(_mm512_sub_ps(qf, zf), sf), m);
                w = _mm512_srl_epi32(w, step);
            }
        }
    }
}

/* rows [k0, k1) from AWQ words [K, N/8]: two words give 16 columns of a row (VPERMD spreads
 * them, VPSRLVD brings each lane's nibble down). Eight rows at a time share the loads of z and
 * s of a column block where they lie in one group, and q - z is formed as in dq_words_avx512. */
INCQ_TARGET_AVX512 static void dq_awq_avx512(const dq_args *a, int64_t k0, int64_t k1) {
    const int64_t n = a->n;
    int32_t sh[16], pick[16];
    for (int l = 0; l < 16; l++) { sh[l] = 4 * AWQ_SLOT[l % 8]; pick[l] = l / 8; }
    const __m512i shifts = _mm512_loadu_si512(sh), picks = _mm512_loadu_si512(pick), f = _mm512_set1_epi32(15);
    const __m512i magic = _mm512_set1_epi32(0x4B000000);
    for (int64_t k = k0; k < k1; k += 8) {
        const int rows = (int)(k1 - k < 8 ? k1 - k : 8);
        int64_t g[8];
        int uniform = 1;
        for (int p = 0; p < rows; p++) {
            g[p] = dq_group(a, k + p);
            uniform &= g[p] == g[0];
        }
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = j + 16 <= n ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
            const __mmask8 wm = j + 16 <= n ? 3 : 1;
            __m512 zf = _mm512_setzero_ps(), sf = zf;
            for (int p = 0; p < rows; p++) {
                if (p == 0 || !uniform) {
                    const __m512i z = a->z ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, a->z + g[p] * n + j))
                                           : _mm512_set1_epi32(8);
                    zf = _mm512_castsi512_ps(_mm512_or_si512(z, magic));
                    sf = _mm512_maskz_loadu_ps(m, a->s + g[p] * n + j);
                }
                const __m128i two = _mm_maskz_loadu_epi32(wm, a->w + (k + p) * a->rs + j / 8);
                const __m512i q = _mm512_srlv_epi32(_mm512_permutexvar_epi32(picks, _mm512_castsi128_si512(two)), shifts);
                const __m512 qf = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(q, f, magic, 0xEA)); /* (q & 15) | magic */
                st16_avx512(a, (k + p) * n + j, _mm512_mul_ps(_mm512_sub_ps(qf, zf), sf), m);
            }
        }
    }
}

/* rows [k0, k1) from a byte tile [k1 - k0, N] */
INCQ_TARGET_AVX512 static void dq_tile_avx512(const dq_args *a, const uint8_t *tile, int64_t k0, int64_t k1) {
    const int64_t n = a->n;
    for (int64_t k = k0; k < k1; k++) {
        const int64_t g = dq_group(a, k);
        const uint8_t *row = tile + (k - k0) * n;
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = j + 16 <= n ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
            const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, row + j));
            st16_avx512(a, k * n + j, dq16_avx512(a, q, g, j, m), m);
        }
    }
}
#endif

static void dq_task(void *ctx, int64_t u0, int64_t u1) {
    const dq_args *a = ctx;
    const int64_t k0 = u0 * DQ_UNIT, k1 = u1 * DQ_UNIT < a->k ? u1 * DQ_UNIT : a->k;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) {
        if (a->kind == DQ_AWQ) {
            dq_awq_avx512(a, k0, k1);
        } else if (a->kind == DQ_WORDS && a->cs == 1) {
            dq_words_avx512(a, a->w + (k0 / (32 / a->bits)) * a->rs, a->rs, k0, k1);
        } else if (a->kind == DQ_WORDS) {
            uint32_t *tile = malloc(sizeof(uint32_t) * DQ_UNIT * a->n);
            if (!tile) { dq_portable(a, k0, k1); return; }
            for (int64_t k = k0; k < k1; k += DQ_UNIT) {
                int64_t e = k + DQ_UNIT < k1 ? k + DQ_UNIT : k1;
                dq_words_tile(a, k, e, tile);
                dq_words_avx512(a, tile, a->n, k, e);
            }
            free(tile);
        } else {
            uint8_t *tile = malloc((size_t)DQ_UNIT * a->n);
            if (!tile) { dq_portable(a, k0, k1); return; }
            for (int64_t k = k0; k < k1; k += DQ_UNIT) {
                int64_t e = k + DQ_UNIT < k1 ? k + DQ_UNIT : k1;
                dq_unpack_tile(a, k, e, tile);
                dq_tile_avx512(a, tile, k, e);
            }
            free(tile);
        }
        return;
    }
#endif
    dq_portable(a, k0, k1);
}

/* whether any of the float32 values is subnormal */
static int any_subnormal(const float *s, int64_t count) {
    const uint32_t *u = (const uint32_t *)s;
    int found = 0;
    for (int64_t i = 0; i < count; i++) {
        uint32_t m = u[i] & 0x7FFFFFFFu;
        found |= (m - 1u) < 0x007FFFFFu; /* 0 < m < 2^-126 */
    }
    return found;
}

/* dequantize(kind, bits, w, rs, cs, K, N, G, z, s, g_idx, group_size, out, dtype, threads) */
static PyObject *py_dequantize(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[15];
    if (incq_int_args("dequantize", args, nargs, 15, v)) return NULL;
    dq_args a = {(int)v[0], (int)v[1], INCQ_PTR(v[2]), v[3], v[4], v[5], v[6], INCQ_PTR(v[8]), INCQ_PTR(v[9]),
                 INCQ_PTR(v[10]), v[11], INCQ_PTR(v[12]), (int)v[13], 0};
    Py_BEGIN_ALLOW_THREADS
    /* VCVTNEPS2BF16 reads subnormal inputs as zero; a product is subnormal only where a scale is */
    a.bf16_native = a.dt == INCQ_BF16 && incq_isa == INCQ_AVX512BF16 && !any_subnormal(a.s, v[7] * a.n);
    incq_advise_huge(a.out, a.k * a.n * (a.dt == INCQ_F32 ? 4 : 2));
    incq_parallel_for((int)v[14], (a.k + DQ_UNIT - 1) / DQ_UNIT, 1, dq_task, &a);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ================================================================== words <-> codes along a row
 *
 * unpack_row: words src[W] -> codes dst[W * pf] (pf = 32 / bits, bits 2, 4, 8): word i, after
 * adding `add` (v1 zero points: the block of ones, wrapping), holds code pf * i + m in slot m
 * (sequential) or, 4-bit AWQ, in slot AWQ_SLOT[m]. pack_row is the inverse (add after packing:
 * the block of ones subtracted, with borrows). convert_zeros_4bit goes from 4-bit words in one
 * order to the other without the codes in memory: decode (add), permute, clamp zero points of 0
 * to 1 where asked, encode (add); it reports whether some zero point is 0.
 * The loops are plain C, compiled once per instruction set (the compiler vectorizes them over
 * words).
 */

ALWAYS_INLINE int slot_of(int awq, int m) { return awq ? AWQ_SLOT[m] : m; }

ALWAYS_INLINE void unpack_row_body(const uint32_t *src, uint8_t *dst, int64_t w0, int64_t w1, int bits, int awq,
                                   uint32_t add) {
    const int pf = 32 / bits;
    const uint32_t mask = (1u << bits) - 1;
    if (bits == 4) {
        for (int64_t i = w0; i < w1; i++) {
            uint32_t w = src[i] + add;
            for (int m = 0; m < 8; m++) dst[8 * i + m] = (uint8_t)((w >> (4 * slot_of(awq, m))) & 15u);
        }
        return;
    }
    for (int64_t i = w0; i < w1; i++) {
        uint32_t w = src[i] + add;
        for (int m = 0; m < pf; m++) dst[pf * i + m] = (uint8_t)((w >> (bits * m)) & mask);
    }
}

ALWAYS_INLINE void pack_row_body(const uint8_t *src, uint32_t *dst, int64_t w0, int64_t w1, int bits, int awq,
                                 uint32_t add) {
    const int pf = 32 / bits;
    if (bits == 4) {
        for (int64_t i = w0; i < w1; i++) {
            uint32_t w = 0;
            for (int m = 0; m < 8; m++) w |= (uint32_t)src[8 * i + m] << (4 * slot_of(awq, m));
            dst[i] = w + add;
        }
        return;
    }
    for (int64_t i = w0; i < w1; i++) {
        uint32_t w = 0;
        for (int m = 0; m < pf; m++) w |= (uint32_t)src[pf * i + m] << (bits * m);
        dst[i] = w + add;
    }
}

/* 4-bit word with nibbles in order `from` -> the same values in order `to` (0 sequential, 1 AWQ) */
ALWAYS_INLINE uint32_t swap_middle_bytes(uint32_t w) {
    return (w & 0xFF0000FFu) | ((w & 0x00FF0000u) >> 8) | ((w & 0x0000FF00u) << 8);
}
ALWAYS_INLINE uint32_t swap_middle_nibbles(uint32_t w) { /* nibbles 1 <-> 2 and 5 <-> 6 */
    return (w & 0xF00FF00Fu) | ((w & 0x0F000F00u) >> 4) | ((w & 0x00F000F0u) << 4);
}
/* AWQ holds values 0 2 4 6 1 3 5 7 in slots 0..7: sequential order is the perfect shuffle of its
 * two halves, two exchanges (each its own inverse) */
ALWAYS_INLINE uint32_t reorder4(uint32_t w, int from, int to) {
    if (from == to) return w;
    return from ? swap_middle_nibbles(swap_middle_bytes(w)) : swap_middle_bytes(swap_middle_nibbles(w));
}

/* returns a word with bit 4j set where nibble j of w is 0 */
ALWAYS_INLINE uint32_t zero_nibbles(uint32_t w) { return ~(w | w >> 1 | w >> 2 | w >> 3) & 0x11111111u; }

ALWAYS_INLINE uint32_t convert_zeros_loop(const uint32_t *src, uint32_t *dst, int64_t w0, int64_t w1, int from,
                                          uint32_t from_add, int to, uint32_t to_add, int clamp) {
    uint32_t seen = 0;
    for (int64_t i = w0; i < w1; i++) {
        uint32_t w = src[i] + from_add, zn = zero_nibbles(w);
        seen |= zn;
        if (clamp) w |= zn; /* z = 0 -> 1 */
        dst[i] = reorder4(w, from, to) + to_add;
    }
    return seen;
}

/* the orders as constants in each loop, so that the compiler vectorizes it */
ALWAYS_INLINE uint32_t convert_zeros_body(const uint32_t *src, uint32_t *dst, int64_t w0, int64_t w1, int from,
                                          uint32_t from_add, int to, uint32_t to_add, int clamp) {
    if (from && !to) return convert_zeros_loop(src, dst, w0, w1, 1, from_add, 0, to_add, clamp);
    if (!from && to) return convert_zeros_loop(src, dst, w0, w1, 0, from_add, 1, to_add, clamp);
    if (from) return convert_zeros_loop(src, dst, w0, w1, 1, from_add, 1, to_add, clamp);
    return convert_zeros_loop(src, dst, w0, w1, 0, from_add, 0, to_add, clamp);
}

static void unpack_row_portable(const uint32_t *s, uint8_t *d, int64_t a, int64_t b, int bits, int awq, uint32_t add) {
    unpack_row_body(s, d, a, b, bits, awq, add);
}
static void pack_row_portable(const uint8_t *s, uint32_t *d, int64_t a, int64_t b, int bits, int awq, uint32_t add) {
    pack_row_body(s, d, a, b, bits, awq, add);
}
static uint32_t convert_zeros_portable(const uint32_t *s, uint32_t *d, int64_t a, int64_t b, int f, uint32_t fa, int t,
                                       uint32_t ta, int c) {
    return convert_zeros_body(s, d, a, b, f, fa, t, ta, c);
}
#if INCQ_X86
INCQ_TARGET_AVX2 static void unpack_row_avx2(const uint32_t *s, uint8_t *d, int64_t a, int64_t b, int bits, int awq,
                                             uint32_t add) {
    unpack_row_body(s, d, a, b, bits, awq, add);
}
INCQ_TARGET_AVX2 static void pack_row_avx2(const uint8_t *s, uint32_t *d, int64_t a, int64_t b, int bits, int awq,
                                           uint32_t add) {
    pack_row_body(s, d, a, b, bits, awq, add);
}
INCQ_TARGET_AVX2 static uint32_t convert_zeros_avx2(const uint32_t *s, uint32_t *d, int64_t a, int64_t b, int f,
                                                    uint32_t fa, int t, uint32_t ta, int c) {
    return convert_zeros_body(s, d, a, b, f, fa, t, ta, c);
}
INCQ_TARGET_AVX512 static void unpack_row_avx512(const uint32_t *s, uint8_t *d, int64_t a, int64_t b, int bits,
                                                 int awq, uint32_t add) {
    unpack_row_body(s, d, a, b, bits, awq, add);
}
INCQ_TARGET_AVX512 static void pack_row_avx512(const uint8_t *s, uint32_t *d, int64_t a, int64_t b, int bits, int awq,
                                               uint32_t add) {
    pack_row_body(s, d, a, b, bits, awq, add);
}
/* reorder4 on 16 words: the middle bytes exchanged by a byte shuffle, the middle nibbles by
 * two shifts and two bitwise selects (each a VPTERNLOGD) */
INCQ_TARGET_AVX512 static inline __m512i swap_middle_bytes16(__m512i w) {
    const __m512i order = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15));
    return _mm512_shuffle_epi8(w, order);
}
INCQ_TARGET_AVX512 static inline __m512i swap_middle_nibbles16(__m512i w) {
    const __m512i keep = _mm512_set1_epi32((int)0xF00FF00Fu), up = _mm512_set1_epi32(0x0F000F00);
    __m512i r = _mm512_ternarylogic_epi32(keep, w, _mm512_srli_epi32(w, 4), 0xCA); /* keep ? w : w >> 4 */
    return _mm512_ternarylogic_epi32(up, _mm512_slli_epi32(w, 4), r, 0xCA);        /* up ? w << 4 : r */
}

/* The zero test of 16 words: a nibble is 0 exactly where the high bit of ((w & 7...) + 7...) | w
 * is clear (no carry crosses a nibble). The marks (bit 4j + 3) are OR-ed into *seen; with clamp
 * they are shifted to bit 4j and OR-ed into the words (z = 0 -> 1). */
ALWAYS_INLINE __m512i mark_zeros16(__m512i w, __m512i *seen, int clamp) INCQ_TARGET_AVX512;
ALWAYS_INLINE __m512i mark_zeros16(__m512i w, __m512i *seen, int clamp) {
    const __m512i low3 = _mm512_set1_epi32(0x77777777), high = _mm512_set1_epi32((int)0x88888888u);
    const __m512i carried = _mm512_add_epi32(_mm512_and_si512(w, low3), low3);
    const __m512i zero = _mm512_ternarylogic_epi32(carried, w, high, 0x02); /* ~(carried | w) & high */
    *seen = _mm512_or_si512(*seen, zero);
    return clamp ? _mm512_or_si512(w, _mm512_srli_epi32(zero, 3)) : w;
}

/* convert_zeros_loop, 16 words at a time (zero test: mark_zeros16). The flags are constants in each caller below, so
 * that every combination compiles to its own loop without the work it does not need: the
 * additions of 0, the zero test where nothing asks for it (raw target, no clamp), the reorder
 * between equal orders. Returns the marks OR-ed (nonzero: some zero point is 0). */
ALWAYS_INLINE uint32_t convert_zeros_x16(const uint32_t *s, uint32_t *d, int64_t n, uint32_t fa, uint32_t ta,
                                         int from, int to, int add_from, int add_to, int detect, int clamp)
    INCQ_TARGET_AVX512;
ALWAYS_INLINE uint32_t convert_zeros_x16(const uint32_t *s, uint32_t *d, int64_t n, uint32_t fa, uint32_t ta,
                                         int from, int to, int add_from, int add_to, int detect, int clamp) {
    const __m512i from_add = _mm512_set1_epi32((int)fa), to_add = _mm512_set1_epi32((int)ta);
    __m512i seen = _mm512_setzero_si512();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m512i w = _mm512_loadu_si512(s + i);
        if (add_from) w = _mm512_add_epi32(w, from_add);
        if (detect) w = mark_zeros16(w, &seen, clamp);
        if (from && !to) w = swap_middle_nibbles16(swap_middle_bytes16(w));
        else if (!from && to) w = swap_middle_bytes16(swap_middle_nibbles16(w));
        if (add_to) w = _mm512_add_epi32(w, to_add);
        _mm512_storeu_si512(d + i, w);
    }
    return (uint32_t)_mm512_reduce_or_epi32(seen);
}

#define CZ_CASE(F, T, AF, AT, D, C)                                                               \
    if (from == F && to == T && (fa != 0) == AF && (ta != 0) == AT && detect == D && c == C)      \
        return convert_zeros_x16(s, d, n, fa, ta, F, T, AF, AT, D, C);
#define CZ_ADDS(F, T, D, C) CZ_CASE(F, T, 0, 0, D, C) CZ_CASE(F, T, 0, 1, D, C) CZ_CASE(F, T, 1, 0, D, C) \
    CZ_CASE(F, T, 1, 1, D, C)
#define CZ_MODES(F, T) CZ_ADDS(F, T, 0, 0) CZ_ADDS(F, T, 1, 0) CZ_ADDS(F, T, 1, 1)

INCQ_TARGET_AVX512 static uint32_t convert_zeros_avx512_words(const uint32_t *s, uint32_t *d, int64_t n, int from,
                                                              uint32_t fa, int to, uint32_t ta, int c) {
    const int detect = ta != 0 || c;
    CZ_MODES(0, 0) CZ_MODES(0, 1) CZ_MODES(1, 0) CZ_MODES(1, 1)
    return 0; /* not reached: the cases above are every combination */
}

/* With AVX-512 VBMI the reorder between the orders is three instructions instead of five: two
 * VPMULTISHIFTQB gather, for each byte of the result, the 8 bits starting at its low value
 * (the low nibble right) and 4 bits below its high value (the high nibble right), and a select
 * keeps the right nibbles. AWQ -> sequential: byte j holds values 2j (slot j, bit 4j) and 2j + 1
 * (slot 4 + j, bit 16 + 4j); sequential -> AWQ: byte j holds values AWQ_ORDER[2j] and
 * AWQ_ORDER[2j + 1] (bits 4 * value). Offsets repeat + 32 for the second word of each qword. */
#define INCQ_TARGET_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c,bmi2")))
INCQ_TARGET_VBMI static uint32_t convert_zeros_vbmi(const uint32_t *s, uint32_t *d, int64_t n, int from, uint32_t fa,
                                                    uint32_t ta, int c) {
    const __m512i lo = from ? _mm512_set1_epi64(0x2C2824200C080400LL) : _mm512_set1_epi64(0x3424302014041000LL);
    const __m512i hi = from ? _mm512_set1_epi64(0x3834302C1814100CLL) : _mm512_set1_epi64(0x3828342418081404LL);
    const __m512i low_nibbles = _mm512_set1_epi32(0x0F0F0F0F);
    const __m512i from_add = _mm512_set1_epi32((int)fa), to_add = _mm512_set1_epi32((int)ta);
    const int detect = ta != 0 || c;
    __m512i seen = _mm512_setzero_si512();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m512i w = _mm512_add_epi32(_mm512_loadu_si512(s + i), from_add);
        if (detect) w = mark_zeros16(w, &seen, c);
        w = _mm512_ternarylogic_epi32(low_nibbles, _mm512_multishift_epi64_epi8(lo, w),
                                      _mm512_multishift_epi64_epi8(hi, w), 0xCA); /* low ? X : Y */
        _mm512_storeu_si512(d + i, _mm512_add_epi32(w, to_add));
    }
    return (uint32_t)_mm512_reduce_or_epi32(seen);
}

INCQ_TARGET_AVX512 static uint32_t convert_zeros_avx512(const uint32_t *s, uint32_t *d, int64_t a, int64_t b, int f,
                                                        uint32_t fa, int t, uint32_t ta, int c) {
    static int vbmi = -1;
    if (vbmi < 0) vbmi = __builtin_cpu_supports("avx512vbmi");
    const int64_t whole = (b - a) / 16 * 16;
    uint32_t found = f != t && vbmi ? convert_zeros_vbmi(s + a, d + a, whole, f, fa, ta, c)
                                    : convert_zeros_avx512_words(s + a, d + a, whole, f, fa, t, ta, c);
    return found | convert_zeros_body(s, d, a + whole, b, f, fa, t, ta, c);
}
#endif

typedef struct {
    const void *src;
    void *dst;
    int bits, awq, pack;
    uint32_t add;
} row_args;

static void row_task(void *ctx, int64_t w0, int64_t w1) {
    const row_args *a = ctx;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) {
        if (a->pack) pack_row_avx512(a->src, a->dst, w0, w1, a->bits, a->awq, a->add);
        else unpack_row_avx512(a->src, a->dst, w0, w1, a->bits, a->awq, a->add);
        return;
    }
    if (incq_isa >= INCQ_AVX2) {
        if (a->pack) pack_row_avx2(a->src, a->dst, w0, w1, a->bits, a->awq, a->add);
        else unpack_row_avx2(a->src, a->dst, w0, w1, a->bits, a->awq, a->add);
        return;
    }
#endif
    if (a->pack) pack_row_portable(a->src, a->dst, w0, w1, a->bits, a->awq, a->add);
    else unpack_row_portable(a->src, a->dst, w0, w1, a->bits, a->awq, a->add);
}

/* unpack_row(src, dst, words, bits, awq, add, threads) / pack_row(src, dst, words, bits, awq, add, threads) */
static PyObject *py_rows(PyObject *const *args, Py_ssize_t nargs, int pack) {
    int64_t v[7];
    if (incq_int_args(pack ? "pack_row" : "unpack_row", args, nargs, 7, v)) return NULL;
    row_args a = {INCQ_PTR(v[0]), INCQ_PTR(v[1]), (int)v[3], (int)v[4], pack, (uint32_t)v[5]};
    const int64_t words = v[2];
    if (words < (1 << 16)) { /* small (zero points): not worth waking a thread */
        row_task(&a, 0, words);
        Py_RETURN_NONE;
    }
    incq_advise_huge(a.dst, pack ? words * 4 : words * (32 / a.bits)); /* (a fresh output's pages) */
    Py_BEGIN_ALLOW_THREADS
    incq_parallel_for((int)v[6], words, 1 << 14, row_task, &a);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
static PyObject *py_unpack_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { return py_rows(args, nargs, 0); }
static PyObject *py_pack_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { return py_rows(args, nargs, 1); }

/* Sequential words [R, N] -> codes [R * 32/bits, N] along axis 0 (GPTQ qweight): code i of
 * word (r, n), bits bits * i and up, is out[r * 32/bits + i, n]. One row of words at a time,
 * written as 32/bits rows of bytes; the compiler vectorizes the loop over n. */
#define UNPACK_COLS_BODY                                                                          \
    const int per = 32 / a->bits;                                                                 \
    const uint32_t mask = (1u << a->bits) - 1;                                                    \
    for (int64_t r = r0; r < r1; r++) {                                                           \
        const uint32_t *src = (const uint32_t *)a->src + r * a->n;                                \
        for (int i = 0; i < per; i++) {                                                           \
            uint8_t *dst = (uint8_t *)a->dst + (r * per + i) * a->n;                              \
            const int shift = a->bits * i;                                                        \
            for (int64_t n = 0; n < a->n; n++) dst[n] = (uint8_t)((src[n] >> shift) & mask);      \
        }                                                                                         \
    }

/* The inverse, codes [R * 32/bits, N] (each below 2**bits) -> words [R, N]: each word gathers
 * its 32/bits codes from as many rows of bytes, the width a constant in each loop so that the
 * compiler unrolls the gather and vectorizes the loop over n (the pointers restrict-qualified:
 * bytes may alias anything). */
ALWAYS_INLINE void pack_cols_rows(const uint8_t *restrict src, uint32_t *restrict dst, int64_t n, int bits) {
    const int per = 32 / bits;
    for (int64_t j = 0; j < n; j++) {
        uint32_t w = 0;
        for (int i = 0; i < per; i++) w |= (uint32_t)src[i * n + j] << (bits * i);
        dst[j] = w;
    }
}
#define PACK_COLS_BODY                                                                            \
    const int per = 32 / a->bits;                                                                 \
    for (int64_t r = r0; r < r1; r++) {                                                           \
        uint32_t *dst = (uint32_t *)a->dst + r * a->n;                                            \
        const uint8_t *src = (const uint8_t *)a->src + r * per * a->n;                            \
        if (a->bits == 4) pack_cols_rows(src, dst, a->n, 4);                                      \
        else if (a->bits == 2) pack_cols_rows(src, dst, a->n, 2);                                 \
        else pack_cols_rows(src, dst, a->n, 8);                                                   \
    }

typedef struct {
    const void *src;
    void *dst;
    int64_t n;
    int bits, pack;
} cols_args;

static void unpack_cols_portable(const cols_args *a, int64_t r0, int64_t r1) { UNPACK_COLS_BODY }
static void pack_cols_portable(const cols_args *a, int64_t r0, int64_t r1) { PACK_COLS_BODY }
#if INCQ_X86
INCQ_TARGET_AVX2 static void unpack_cols_avx2(const cols_args *a, int64_t r0, int64_t r1) { UNPACK_COLS_BODY }
INCQ_TARGET_AVX512 static void unpack_cols_avx512(const cols_args *a, int64_t r0, int64_t r1) { UNPACK_COLS_BODY }
INCQ_TARGET_AVX2 static void pack_cols_avx2(const cols_args *a, int64_t r0, int64_t r1) { PACK_COLS_BODY }
INCQ_TARGET_AVX512 static void pack_cols_avx512(const cols_args *a, int64_t r0, int64_t r1) { PACK_COLS_BODY }
#endif

static void cols_task(void *ctx, int64_t r0, int64_t r1) {
    const cols_args *a = ctx;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) return (a->pack ? pack_cols_avx512 : unpack_cols_avx512)(a, r0, r1);
    if (incq_isa >= INCQ_AVX2) return (a->pack ? pack_cols_avx2 : unpack_cols_avx2)(a, r0, r1);
#endif
    (a->pack ? pack_cols_portable : unpack_cols_portable)(a, r0, r1);
}

/* unpack_cols(src, dst, rows, n, bits, threads) / pack_cols(src, dst, rows, n, bits, threads):
 * rows of words */
static PyObject *py_cols(PyObject *const *args, Py_ssize_t nargs, int pack) {
    int64_t v[6];
    if (incq_int_args(pack ? "pack_cols" : "unpack_cols", args, nargs, 6, v)) return NULL;
    cols_args a = {INCQ_PTR(v[0]), INCQ_PTR(v[1]), v[3], (int)v[4], pack};
    if (a.bits != 2 && a.bits != 4 && a.bits != 8)
        return PyErr_Format(PyExc_ValueError, "%s: bits %d", pack ? "pack_cols" : "unpack_cols", a.bits);
    incq_advise_huge(a.dst, v[2] * a.n * (pack ? 4 : 32 / a.bits));
    Py_BEGIN_ALLOW_THREADS
    incq_parallel_for((int)v[5], v[2], 1, cols_task, &a);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
static PyObject *py_unpack_cols(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { return py_cols(args, nargs, 0); }
static PyObject *py_pack_cols(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { return py_cols(args, nargs, 1); }

/* convert_zeros(src, dst, words, from_awq, from_add, to_awq, to_add, clamp) -> index of the first
 * zero point of 0 (in code order: word * 8 + position), or -1 */
static PyObject *py_convert_zeros(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[8];
    if (incq_int_args("convert_zeros", args, nargs, 8, v)) return NULL;
    const uint32_t *src = INCQ_PTR(v[0]);
    uint32_t *dst = INCQ_PTR(v[1]);
    const int64_t words = v[2];
    const int from = (int)v[3], to = (int)v[5], clamp = (int)v[7];
    const uint32_t fa = (uint32_t)v[4], ta = (uint32_t)v[6];
    uint32_t seen;
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) seen = convert_zeros_avx512(src, dst, 0, words, from, fa, to, ta, clamp);
    else if (incq_isa >= INCQ_AVX2) seen = convert_zeros_avx2(src, dst, 0, words, from, fa, to, ta, clamp);
    else
#endif
        seen = convert_zeros_portable(src, dst, 0, words, from, fa, to, ta, clamp);
    if (!seen) return PyLong_FromLong(-1);
    for (int64_t i = 0; i < words; i++) {
        uint32_t w = src[i] + fa;
        for (int m = 0; m < 8; m++)
            if (((w >> (4 * slot_of(from, m))) & 15u) == 0) return PyLong_FromLongLong(8 * i + m);
    }
    return PyLong_FromLong(-1);
}

/* count_zeros(src, words, from_add) -> how many 4-bit zero points are 0. The marks of a word
 * (bit 4j per zero nibble) are counted by one multiply: (marks * 0x11111111) >> 28 is their sum
 * (at most 8, so no nibble of the product carries into the next); a plain loop the compiler
 * vectorizes, where __builtin_popcount without the POPCNT instruction is a library call per word. */
ALWAYS_INLINE int64_t count_zeros_body(const uint32_t *src, int64_t words, uint32_t add) {
    uint64_t count = 0;
    for (int64_t i = 0; i < words; i++) count += (zero_nibbles(src[i] + add) * 0x11111111u) >> 28;
    return (int64_t)count;
}
static int64_t count_zeros_portable(const uint32_t *s, int64_t n, uint32_t add) { return count_zeros_body(s, n, add); }
#if INCQ_X86
INCQ_TARGET_AVX2 static int64_t count_zeros_avx2(const uint32_t *s, int64_t n, uint32_t add) {
    return count_zeros_body(s, n, add);
}
INCQ_TARGET_AVX512 static int64_t count_zeros_avx512(const uint32_t *s, int64_t n, uint32_t add) {
    return count_zeros_body(s, n, add);
}
#endif

static PyObject *py_count_zeros(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[3];
    if (incq_int_args("count_zeros", args, nargs, 3, v)) return NULL;
    const uint32_t *src = INCQ_PTR(v[0]);
    const uint32_t add = (uint32_t)v[2];
#if INCQ_X86
    if (incq_isa >= INCQ_AVX512) return PyLong_FromLongLong(count_zeros_avx512(src, v[1], add));
    if (incq_isa >= INCQ_AVX2) return PyLong_FromLongLong(count_zeros_avx2(src, v[1], add));
#endif
    return PyLong_FromLongLong(count_zeros_portable(src, v[1], add));
}

PyMethodDef incq_layout_methods[] = {
    {"awq_to_gptq", (PyCFunction)(void (*)(void))py_awq_to_gptq, METH_FASTCALL,
     "awq_to_gptq(src, dst, K/8, N/8, threads): AWQ words [K, N/8] -> GPTQ words [K/8, N] (layout.c)."},
    {"gptq_to_awq", (PyCFunction)(void (*)(void))py_gptq_to_awq, METH_FASTCALL,
     "gptq_to_awq(src, dst, K/8, N/8, threads): GPTQ words [K/8, N] -> AWQ words [K, N/8] (layout.c)."},
    {"dequantize", (PyCFunction)(void (*)(void))py_dequantize, METH_FASTCALL,
     "dequantize(kind, bits, w, rs, cs, K, N, G, z, s, g_idx, group_size, out, dtype, threads) (layout.c)."},
    {"unpack_cols", (PyCFunction)(void (*)(void))py_unpack_cols, METH_FASTCALL,
     "unpack_cols(src, dst, rows, n, bits, threads): words -> codes along axis 0 (layout.c)."},
    {"unpack_row", (PyCFunction)(void (*)(void))py_unpack_row, METH_FASTCALL,
     "unpack_row(src, dst, words, bits, awq, add, threads): words -> codes along a row (layout.c)."},
    {"pack_row", (PyCFunction)(void (*)(void))py_pack_row, METH_FASTCALL,
     "pack_row(src, dst, words, bits, awq, add, threads): codes -> words along a row (layout.c)."},
    {"convert_zeros", (PyCFunction)(void (*)(void))py_convert_zeros, METH_FASTCALL,
     "convert_zeros(src, dst, words, from_awq, from_add, to_awq, to_add, clamp) -> first zero or -1 (layout.c)."},
    {"pack_cols", (PyCFunction)(void (*)(void))py_pack_cols, METH_FASTCALL,
     "pack_cols(src, dst, rows, n, bits, threads): codes [rows * 32/bits, n] -> words [rows, n] (layout.c)."},
    {"count_zeros", (PyCFunction)(void (*)(void))py_count_zeros, METH_FASTCALL,
     "count_zeros(src, words, add): 4-bit zero points of 0 in words after adding add (layout.c)."},
    {NULL, NULL, 0, NULL},
};
