/* padiff_lite._fastcopy: copy and transpose tensor memory while counting NaN/Inf, in one pass.
 *
 * torch's transposing copy (copy_ from a transposed 2-D view) moves about 1.5-2.5 GB/s on one core
 * and cannot be split between threads; counting NaN/Inf afterwards reads everything once more. These
 * two functions do both in one pass over memory, on any row range, with the GIL released, so the
 * executor can run one big tensor on several threads. padiff_lite/fastcopy.py is the only caller; it
 * checks shapes, strides, devices and dtypes and passes plain addresses. Without this module (it is
 * an optional extension) the same work is done with torch.
 *
 * kind says which values count as non-finite: 0 none (integers, bool), 1 float16, 2 bfloat16,
 * 3 float32, 4 float64. A value is NaN or Inf exactly when all its exponent bits are set.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Tiles of TILE_I source rows x TILE_J source columns: on 1 GB of fp32 Linear weights (DRAM-bound),
 * 64 x 32 moved 6.2 GB/s on two threads here, 32 x 32 5.5, 64 x 64 4.4, 128 x 16 5.4; bf16 3.8 / 3.1. */
#define TILE_I 64
#define TILE_J 32

/* The scalar transpose of the block src rows [i0, i1) x cols [j0, j1): dst[j][i] = src[i][j]. */
#define DEFINE_BLOCK(NAME, T)                                                                          \
    static inline void NAME(const T *src, T *dst, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t i0,    \
                            Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1) {                             \
        for (Py_ssize_t j = j0; j < j1; j++) {                                                         \
            T *d = dst + j * rows;                                                                     \
            for (Py_ssize_t i = i0; i < i1; i++)                                                       \
                d[i] = src[i * cols + j];                                                              \
        }                                                                                              \
    }

DEFINE_BLOCK(block8, uint8_t)
DEFINE_BLOCK(block16, uint16_t)
DEFINE_BLOCK(block32, uint32_t)
DEFINE_BLOCK(block64, uint64_t)

#if defined(__SSE2__)
/* SSE2 (every x86-64 CPU) micro-kernels: a W x W block transposed in registers with unpack
 * instructions, which move bits and never interpret them (NaN payloads are kept). 4-byte values have
 * none: a 4 x 4 register kernel measured slower than the plain loop in whole transfers here (0.256 s
 * against 0.197 s for the 1.07 GB fp32 model), while the 8 x 8 one doubles 16-bit (bf16) speed. */
#define LOAD(p) _mm_loadu_si128((const __m128i *)(p))
#define STORE(p, v) _mm_storeu_si128((__m128i *)(p), (v))

static inline void micro16(const uint16_t *s, Py_ssize_t ss, uint16_t *d, Py_ssize_t ds) { /* 8 x 8 */
    __m128i a0 = _mm_unpacklo_epi16(LOAD(s), LOAD(s + ss)), a1 = _mm_unpackhi_epi16(LOAD(s), LOAD(s + ss));
    __m128i a2 = _mm_unpacklo_epi16(LOAD(s + 2 * ss), LOAD(s + 3 * ss));
    __m128i a3 = _mm_unpackhi_epi16(LOAD(s + 2 * ss), LOAD(s + 3 * ss));
    __m128i a4 = _mm_unpacklo_epi16(LOAD(s + 4 * ss), LOAD(s + 5 * ss));
    __m128i a5 = _mm_unpackhi_epi16(LOAD(s + 4 * ss), LOAD(s + 5 * ss));
    __m128i a6 = _mm_unpacklo_epi16(LOAD(s + 6 * ss), LOAD(s + 7 * ss));
    __m128i a7 = _mm_unpackhi_epi16(LOAD(s + 6 * ss), LOAD(s + 7 * ss));
    __m128i b0 = _mm_unpacklo_epi32(a0, a2), b1 = _mm_unpackhi_epi32(a0, a2);
    __m128i b2 = _mm_unpacklo_epi32(a1, a3), b3 = _mm_unpackhi_epi32(a1, a3);
    __m128i b4 = _mm_unpacklo_epi32(a4, a6), b5 = _mm_unpackhi_epi32(a4, a6);
    __m128i b6 = _mm_unpacklo_epi32(a5, a7), b7 = _mm_unpackhi_epi32(a5, a7);
    STORE(d, _mm_unpacklo_epi64(b0, b4));
    STORE(d + ds, _mm_unpackhi_epi64(b0, b4));
    STORE(d + 2 * ds, _mm_unpacklo_epi64(b1, b5));
    STORE(d + 3 * ds, _mm_unpackhi_epi64(b1, b5));
    STORE(d + 4 * ds, _mm_unpacklo_epi64(b2, b6));
    STORE(d + 5 * ds, _mm_unpackhi_epi64(b2, b6));
    STORE(d + 6 * ds, _mm_unpacklo_epi64(b3, b7));
    STORE(d + 7 * ds, _mm_unpackhi_epi64(b3, b7));
}

static inline void micro64(const uint64_t *s, Py_ssize_t ss, uint64_t *d, Py_ssize_t ds) { /* 2 x 2 */
    __m128i r0 = LOAD(s), r1 = LOAD(s + ss);
    STORE(d, _mm_unpacklo_epi64(r0, r1));
    STORE(d + ds, _mm_unpackhi_epi64(r0, r1));
}
#define HAVE_MICRO 1
#else /* other CPUs: element by element (the compiler may still vectorise the edges) */
#define HAVE_MICRO 0
#define micro16(s, ss, d, ds) ((void)0)
#define micro64(s, ss, d, ds) ((void)0)
#endif

#define NO_MICRO(s, ss, d, ds) ((void)0) /* element by element only (1- and 4-byte values) */

/* dst (cols x rows, contiguous) = transpose of src (rows x cols, contiguous), for src rows [r0, r1),
 * tile by tile; inside a tile, W x W micro-blocks in registers where the CPU has them (W = 0: none),
 * the edges element by element. The NaN/Inf count reads each tile's source rows once, contiguously. */
#define DEFINE_TRANSPOSE(NAME, T, BLOCK, MICRO, W)                                                     \
    static long long NAME(const T *src, T *dst, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t r0,      \
                          Py_ssize_t r1, T mask) {                                                     \
        long long bad = 0;                                                                             \
        for (Py_ssize_t i = r0; i < r1; i += TILE_I) {                                                 \
            Py_ssize_t ie = i + TILE_I < r1 ? i + TILE_I : r1;                                         \
            for (Py_ssize_t j = 0; j < cols; j += TILE_J) {                                            \
                Py_ssize_t je = j + TILE_J < cols ? j + TILE_J : cols;                                 \
                if (mask) {                                                                            \
                    for (Py_ssize_t ii = i; ii < ie; ii++) {                                           \
                        const T *s = src + ii * cols;                                                  \
                        for (Py_ssize_t jj = j; jj < je; jj++)                                         \
                            bad += (s[jj] & mask) == mask;                                             \
                    }                                                                                  \
                }                                                                                      \
                Py_ssize_t im = i, jm = j;                                                             \
                const Py_ssize_t w = (W) > 1 ? (W) : 1;                                                \
                if (HAVE_MICRO && w > 1) {                                                             \
                    im = i + ((ie - i) / w) * w;                                                       \
                    jm = j + ((je - j) / w) * w;                                                       \
                    for (Py_ssize_t jj = j; jj < jm; jj += w)                                          \
                        for (Py_ssize_t ii = i; ii < im; ii += w)                                      \
                            MICRO(src + ii * cols + jj, cols, dst + jj * rows + ii, rows);             \
                    BLOCK(src, dst, rows, cols, im, ie, j, jm); /* rows below the micro-blocks */     \
                }                                                                                      \
                BLOCK(src, dst, rows, cols, i, ie, jm, je); /* columns right of them (or all) */      \
            }                                                                                          \
        }                                                                                              \
        return bad;                                                                                    \
    }

DEFINE_TRANSPOSE(transpose8, uint8_t, block8, NO_MICRO, 0)
DEFINE_TRANSPOSE(transpose16, uint16_t, block16, micro16, 8)
DEFINE_TRANSPOSE(transpose32, uint32_t, block32, NO_MICRO, 0)
DEFINE_TRANSPOSE(transpose64, uint64_t, block64, micro64, 2)

/* dst[0:n] = src[0:n], counting non-finite values, in blocks small enough to stay in L1 between the
 * copy and the count. */
#define BLOCK_BYTES 16384
#define DEFINE_COUNT(NAME, T)                                                                          \
    static long long NAME(const T *p, Py_ssize_t n, T mask) {                                          \
        long long bad = 0;                                                                             \
        for (Py_ssize_t i = 0; i < n; i++)                                                             \
            bad += (p[i] & mask) == mask;                                                              \
        return bad;                                                                                    \
    }

DEFINE_COUNT(count16, uint16_t)
DEFINE_COUNT(count32, uint32_t)
DEFINE_COUNT(count64, uint64_t)

static long long copy_counting(const char *src, char *dst, Py_ssize_t n, int itemsize, int kind) {
    long long bad = 0;
    Py_ssize_t total = n * itemsize;
    for (Py_ssize_t off = 0; off < total; off += BLOCK_BYTES) {
        Py_ssize_t len = total - off < BLOCK_BYTES ? total - off : BLOCK_BYTES;
        memcpy(dst + off, src + off, (size_t)len);
        switch (kind) {
        case 1: bad += count16((const uint16_t *)(dst + off), len / 2, 0x7C00u); break;
        case 2: bad += count16((const uint16_t *)(dst + off), len / 2, 0x7F80u); break;
        case 3: bad += count32((const uint32_t *)(dst + off), len / 4, 0x7F800000u); break;
        case 4: bad += count64((const uint64_t *)(dst + off), len / 8, 0x7FF0000000000000ull); break;
        default: break;
        }
    }
    return bad;
}

static int check_kind(int itemsize, int kind) {
    static const int width[] = {0, 2, 2, 4, 8};
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) {
        PyErr_Format(PyExc_ValueError, "itemsize must be 1, 2, 4 or 8, got %d", itemsize);
        return 0;
    }
    if (kind < 0 || kind > 4 || (kind && width[kind] != itemsize)) {
        PyErr_Format(PyExc_ValueError, "kind %d does not fit itemsize %d", kind, itemsize);
        return 0;
    }
    return 1;
}

/* transpose(src_addr, dst_addr, rows, cols, itemsize, kind, r0, r1) -> non-finite count in src rows [r0, r1) */
static PyObject *py_transpose(PyObject *self, PyObject *args) {
    unsigned long long src, dst;
    Py_ssize_t rows, cols, r0, r1;
    int itemsize, kind;
    if (!PyArg_ParseTuple(args, "KKnniinn", &src, &dst, &rows, &cols, &itemsize, &kind, &r0, &r1))
        return NULL;
    if (!check_kind(itemsize, kind))
        return NULL;
    if (rows < 0 || cols < 0 || r0 < 0 || r1 > rows || r0 > r1) {
        PyErr_Format(PyExc_ValueError, "rows [%zd, %zd) do not fit a %zd x %zd matrix", r0, r1, rows, cols);
        return NULL;
    }
    long long bad = 0;
    Py_BEGIN_ALLOW_THREADS
    switch (itemsize) {
    case 1: bad = transpose8((const uint8_t *)src, (uint8_t *)dst, rows, cols, r0, r1, 0); break;
    case 2:
        bad = transpose16((const uint16_t *)src, (uint16_t *)dst, rows, cols, r0, r1,
                          kind == 1 ? 0x7C00u : kind == 2 ? 0x7F80u : 0);
        break;
    case 4: bad = transpose32((const uint32_t *)src, (uint32_t *)dst, rows, cols, r0, r1, kind ? 0x7F800000u : 0); break;
    default:
        bad = transpose64((const uint64_t *)src, (uint64_t *)dst, rows, cols, r0, r1,
                          kind ? 0x7FF0000000000000ull : 0);
        break;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(bad);
}

/* copy(src_addr, dst_addr, n, itemsize, kind) -> non-finite count among the n values copied */
static PyObject *py_copy(PyObject *self, PyObject *args) {
    unsigned long long src, dst;
    Py_ssize_t n;
    int itemsize, kind;
    if (!PyArg_ParseTuple(args, "KKnii", &src, &dst, &n, &itemsize, &kind))
        return NULL;
    if (!check_kind(itemsize, kind))
        return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n must not be negative, got %zd", n);
        return NULL;
    }
    long long bad;
    Py_BEGIN_ALLOW_THREADS
    bad = copy_counting((const char *)src, (char *)dst, n, itemsize, kind);
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(bad);
}

static PyMethodDef methods[] = {
    {"transpose", py_transpose, METH_VARARGS,
     "transpose(src_addr, dst_addr, rows, cols, itemsize, kind, r0, r1) -> int: write the transpose of the "
     "rows x cols matrix at src_addr, rows [r0, r1), into the cols x rows matrix at dst_addr; return how many "
     "of those source values are NaN/Inf (kind: 0 none, 1 float16, 2 bfloat16, 3 float32, 4 float64)."},
    {"copy", py_copy, METH_VARARGS,
     "copy(src_addr, dst_addr, n, itemsize, kind) -> int: copy n values and return how many are NaN/Inf."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcopy",
                                    "One-pass copies and transposes that count NaN/Inf (see fastcopy.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastcopy(void) { return PyModule_Create(&module); }
