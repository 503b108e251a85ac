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

#define ALWAYS_INLINE static inline __attribute__((always_inline))

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

PyMethodDef incq_layout_methods[] = {
    {"awq_to_gptq", (PyCFunction)(void (*)(void))py_awq_to_gptq, METH_FASTCALL,
     "awq_to_gptq(src, dst, K/8, N/8, threads): AWQ words [K, N/8] -> GPTQ words [K/8, N] (layout.c)."},
    {"gptq_to_awq", (PyCFunction)(void (*)(void))py_gptq_to_awq, METH_FASTCALL,
     "gptq_to_awq(src, dst, K/8, N/8, threads): GPTQ words [K/8, N] -> AWQ words [K, N/8] (layout.c)."},
    {NULL, NULL, 0, NULL},
};
