/* The extension module incq._native._ext: instruction-set detection, the thread pool,
 * argument parsing and the merged method table of the kernel files. */
#include "incq_native.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <link.h>
#include <pthread.h>

const char *const incq_isa_names[INCQ_ISA_COUNT] = {"portable", "avx2", "avx512", "avx512bf16"};
int incq_isa = INCQ_PORTABLE;

/* ------------------------------------------------------------------ CPU features */

static int isa_supported(int isa) {
    if (isa == INCQ_PORTABLE) return 1;
#if INCQ_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    switch (isa) {
    case INCQ_AVX2: return avx2;
    case INCQ_AVX512: return avx512;
    case INCQ_AVX512BF16: return avx512 && __builtin_cpu_supports("avx512bf16");
    }
#endif
    return 0;
}

/* ------------------------------------------------------------------ fp16 */

float incq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) { /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400u));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    } else {
        u = sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t incq_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to infinity */
    if (a < 0x38800000u) {                                   /* subnormal or zero in fp16 */
        if (a < 0x33000000u) return (uint16_t)sign;          /* below half the smallest */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 113 - (int)(a >> 23) + 13; /* 2**-14 has exponent 113 */
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15, in place */
    uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

/* ------------------------------------------------------------------ thread pool */

#define MAX_THREADS 256

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int started;           /* worker threads alive */
    uint64_t generation;   /* bumped for each job */
    int wanted;            /* workers taking part in the current job */
    int remaining;         /* workers still running it */
    incq_task fn;
    void *ctx;
    int64_t total, chunk;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL, NULL, 0, 0};

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static uint64_t born[MAX_THREADS]; /* the generation current when each worker was created */

static void run_chunk(int index) {
    int64_t b = (int64_t)index * pool.chunk, e = b + pool.chunk;
    if (e > pool.total) e = pool.total;
    if (b < e) pool.fn(pool.ctx, b, e);
}

static void *worker(void *arg) {
    int index = (int)(intptr_t)arg; /* 1 .. started */
    pthread_mutex_lock(&pool.lock);
    uint64_t seen = born[index]; /* a job posted before this thread ran is still its to do */
    for (;;) {
        while (pool.generation == seen || index >= pool.wanted) {
            if (pool.generation != seen) seen = pool.generation; /* a job without this worker */
            pthread_cond_wait(&pool.wake, &pool.lock);
        }
        seen = pool.generation;
        pthread_mutex_unlock(&pool.lock);
        run_chunk(index);
        pthread_mutex_lock(&pool.lock);
        if (--pool.remaining == 0) pthread_cond_signal(&pool.done);
    }
    return NULL;
}

static void after_fork_child(void) {
    /* the workers do not exist in a forked child: start afresh */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_mutex_init(&call_lock, NULL);
    pool.started = 0;
    pool.wanted = 0;
    pool.remaining = 0;
}

/* ------------------------------------------------------------------ torch's OpenMP threads
 *
 * PyTorch's CPU builds run their own operations on a libgomp thread team, whose threads spin
 * for a while after each parallel operation before they sleep. A second pool of threads started
 * right after a torch operation finds its cores taken by those spinning threads. So when the
 * process has libgomp loaded (torch's own copy: found among the loaded objects, never loaded
 * by incq), the kernels' chunks run on that same team through GOMP_parallel, the entry point
 * of `#pragma omp parallel`, stable since GCC 4.9; otherwise on the pthread pool above. */

typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static gomp_parallel_fn gomp_parallel;
static int (*gomp_thread_num)(void);
static int gomp_searched, use_gomp = 1;

static int find_gomp(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    if (!info->dlpi_name || !strstr(info->dlpi_name, "libgomp")) return 0;
    void *lib = dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) return 0;
    gomp_parallel_fn parallel = (gomp_parallel_fn)dlsym(lib, "GOMP_parallel");
    int (*thread_num)(void) = (int (*)(void))dlsym(lib, "omp_get_thread_num");
    if (!parallel || !thread_num) return 0;
    gomp_parallel = parallel;
    gomp_thread_num = thread_num;
    return 1;
}

static int have_gomp(void) {
    if (!gomp_searched) {
        gomp_searched = 1;
        dl_iterate_phdr(find_gomp, NULL);
    }
    return use_gomp && gomp_parallel;
}

typedef struct {
    incq_task fn;
    void *ctx;
    int64_t total, chunk;
} team_job;

static void team_chunk(void *arg) {
    const team_job *job = arg;
    int64_t b = (int64_t)gomp_thread_num() * job->chunk, e = b + job->chunk;
    if (e > job->total) e = job->total;
    if (b < e) job->fn(job->ctx, b, e);
}

void incq_advise_huge(void *p, int64_t bytes) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20, begin = ((uintptr_t)p + huge - 1) & ~(huge - 1),
                    end = ((uintptr_t)p + (uintptr_t)(bytes > 0 ? bytes : 0)) & ~(huge - 1);
    if (bytes >= (int64_t)(4 << 20) && end > begin) madvise((void *)begin, end - begin, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

void incq_parallel_for(int threads, int64_t total, int64_t grain, incq_task fn, void *ctx) {
    if (total <= 0) return;
    if (grain < 1) grain = 1;
    int64_t blocks = (total + grain - 1) / grain;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > blocks) threads = (int)blocks;
    if (threads <= 1) {
        fn(ctx, 0, total);
        return;
    }
    if (have_gomp()) {
        team_job job = {fn, ctx, total, ((blocks + threads - 1) / threads) * grain};
        gomp_parallel(team_chunk, &job, (unsigned)threads, 0);
        return;
    }
    pthread_mutex_lock(&call_lock);
    pthread_mutex_lock(&pool.lock);
    while (pool.started < threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        born[pool.started + 1] = pool.generation;
        int failed = pthread_create(&t, &attr, worker, (void *)(intptr_t)(pool.started + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        pool.started++;
    }
    if (threads > pool.started + 1) threads = pool.started + 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.total = total;
    pool.chunk = ((blocks + threads - 1) / threads) * grain;
    pool.wanted = threads;
    pool.remaining = threads - 1;
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_chunk(0);
    pthread_mutex_lock(&pool.lock);
    while (pool.remaining) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&call_lock);
}

/* ------------------------------------------------------------------ bindings */

int incq_int_args(const char *fn, PyObject *const *args, Py_ssize_t nargs, int n, int64_t *out) {
    if (nargs != n) {
        PyErr_Format(PyExc_TypeError, "%s takes %d arguments, got %zd", fn, n, nargs);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *py_supported(PyObject *self, PyObject *unused) {
    PyObject *names = PyList_New(0);
    for (int i = 0; names && i < INCQ_ISA_COUNT; i++) {
        if (isa_supported(i)) {
            PyObject *s = PyUnicode_FromString(incq_isa_names[i]);
            if (!s || PyList_Append(names, s)) { Py_XDECREF(s); Py_DECREF(names); return NULL; }
            Py_DECREF(s);
        }
    }
    return names;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (int i = 0; i < INCQ_ISA_COUNT; i++) {
        if (!strcmp(name, incq_isa_names[i])) {
            if (!isa_supported(i)) return PyErr_Format(PyExc_ValueError, "this CPU cannot run %s", name);
            incq_isa = i;
            Py_RETURN_NONE;
        }
    }
    return PyErr_Format(PyExc_ValueError, "unknown instruction set %s", name);
}

static PyObject *py_get_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(incq_isa_names[incq_isa]); }

static PyObject *py_threads(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(have_gomp() ? "openmp" : "pthreads");
}

static PyObject *py_set_threads(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    if (strcmp(name, "openmp") && strcmp(name, "pthreads"))
        return PyErr_Format(PyExc_ValueError, "threads must be 'openmp' or 'pthreads', got %s", name);
    use_gomp = !strcmp(name, "openmp");
    if (use_gomp && !have_gomp()) {
        use_gomp = 0;
        return PyErr_Format(PyExc_ValueError, "no OpenMP runtime (libgomp) is loaded in this process");
    }
    Py_RETURN_NONE;
}

/* advise_huge(address, bytes): incq_advise_huge on memory the caller allocated and is about to
 * write (nothing below 4 MiB) */
static PyObject *py_advise_huge(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[2];
    if (incq_int_args("advise_huge", args, nargs, 2, v)) return NULL;
    incq_advise_huge(INCQ_PTR(v[0]), v[1]);
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"advise_huge", (PyCFunction)(void (*)(void))py_advise_huge, METH_FASTCALL,
     "advise_huge(address, bytes): advise fresh memory of 4 MiB or more as transparent huge pages."},
    {"supported", py_supported, METH_NOARGS, "The instruction-set variants this CPU runs, slowest first."},
    {"set_isa", py_set_isa, METH_O, "Choose the variant the kernels run."},
    {"get_isa", py_get_isa, METH_NOARGS, "The variant the kernels run."},
    {"threads", py_threads, METH_NOARGS, "Which threads run the chunks: 'openmp' (torch's libgomp team) or 'pthreads'."},
    {"set_threads", py_set_threads, METH_O, "Run the chunks on 'openmp' or 'pthreads' threads (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef all_methods[64];

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ext", "incq's compiled CPU kernels.", -1, all_methods};

static int merge(PyMethodDef *table, int at) {
    for (; table->ml_name; table++) {
        if (at >= (int)(sizeof all_methods / sizeof *all_methods) - 1) return -1;
        all_methods[at++] = *table;
    }
    return at;
}

PyMODINIT_FUNC PyInit__ext(void) {
    int at = merge(core_methods, 0);
    if (at >= 0) at = merge(incq_matmul_methods, at);
    if (at >= 0) at = merge(incq_layout_methods, at);
    if (at < 0) {
        PyErr_SetString(PyExc_ImportError, "incq._native._ext: method table too small");
        return NULL;
    }
    all_methods[at] = (PyMethodDef){NULL, NULL, 0, NULL};
    pthread_atfork(NULL, NULL, after_fork_child);
    for (int i = INCQ_ISA_COUNT - 1; i >= 0; i--) {
        if (isa_supported(i)) { incq_isa = i; break; }
    }
    return PyModule_Create(&module);
}
