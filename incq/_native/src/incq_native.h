/* incq's compiled CPU kernels: shared declarations.
 *
 * No Python or torch types cross this header: kernels take raw pointers, element strides and
 * sizes, so they run with the GIL released. The Python bindings (module.c and each kernel
 * file's method table) parse integer arguments (addresses from tensor.data_ptr()).
 *
 * Instruction sets: every kernel has a portable C version; faster versions are compiled in
 * the same file with GCC/Clang target attributes and chosen at run time (incq_isa).
 */
#ifndef INCQ_NATIVE_H
#define INCQ_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* a helper inlined into each variant that calls it (its target a subset of the caller's) */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define INCQ_X86 1
#define INCQ_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2")))
#define INCQ_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")))
#define INCQ_TARGET_AVX512BF16 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi2")))
#include <immintrin.h>
#else
#define INCQ_X86 0
#endif

/* Instruction-set variants, from slowest to fastest. */
enum incq_isa { INCQ_PORTABLE = 0, INCQ_AVX2 = 1, INCQ_AVX512 = 2, INCQ_AVX512BF16 = 3 };
#define INCQ_ISA_COUNT 4
extern const char *const incq_isa_names[INCQ_ISA_COUNT];
/* The variant the kernels run (set at import from the CPU and INCQ_ISA; see module.c). */
extern int incq_isa;

/* Element types of floating-point operands. */
enum incq_dtype { INCQ_F32 = 0, INCQ_F16 = 1, INCQ_BF16 = 2 };

/* ---- threads: a persistent pool of pthreads, used with the GIL released ---- */
typedef void (*incq_task)(void *ctx, int64_t begin, int64_t end);
/* Run fn(ctx, b, e) over [0, total) split into at most `threads` contiguous chunks, each a
 * multiple of `grain` long (the last one may be shorter); the caller's thread runs the first
 * chunk. Returns when all chunks are done. */
void incq_parallel_for(int threads, int64_t total, int64_t grain, incq_task fn, void *ctx);

/* ---- output buffers ---- */
/* Ask the kernel (Linux) to back the 2 MiB-aligned interior of a freshly allocated output of
 * `bytes` bytes with transparent huge pages before a kernel writes it: a page fault per 2 MiB
 * instead of per 4 KiB, which is most of the time of writing a new 90 MB tensor. Advice only:
 * nothing happens where the system has huge pages off, for outputs under 4 MiB, or elsewhere. */
void incq_advise_huge(void *p, int64_t bytes);

/* ---- scalar conversions (exact, round to nearest even) ---- */
static inline float incq_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t incq_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float incq_f16_to_f32(uint16_t h);
uint16_t incq_f32_to_f16(float f);
/* Load element i of a float array of type dt as float. */
static inline float incq_load_float(const void *p, int dt, int64_t i) {
    switch (dt) {
    case INCQ_F32: return ((const float *)p)[i];
    case INCQ_BF16: return incq_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return incq_f16_to_f32(((const uint16_t *)p)[i]);
    }
}

/* ---- argument helpers for the bindings ---- */
/* Parse `n` integer arguments (Python ints) of a METH_FASTCALL call into out[]; sets a
 * TypeError and returns -1 when the count or a type is wrong. */
int incq_int_args(const char *fn, PyObject *const *args, Py_ssize_t nargs, int n, int64_t *out);
#define INCQ_PTR(v) ((void *)(uintptr_t)(v))

/* Method tables of the kernel files, merged by module.c; each ends with {NULL}. */
extern PyMethodDef incq_matmul_methods[];
extern PyMethodDef incq_layout_methods[];

#endif
