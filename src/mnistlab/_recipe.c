/* The costly steps of mnistlab.preprocess.to_mnist, compiled: the 3 x 3 blur, Otsu's threshold,
 * the lighting flattening (polarity, noise, the stroke background of grey-level openings), the
 * split into strokes and paper, the 8-connected stroke pieces, the crop, the Lanczos resize and
 * the centring. Each function computes what its NumPy twin in preprocess.py computes, in the
 * same float32 / float64 arithmetic and order (NumPy's pairwise sums included), so the two give
 * the same numbers to the bit; tests/test_preprocess.py checks them against each other and
 * against the reference recipe. The NumPy code stays the definition, and the fallback where this
 * module cannot be built.
 *
 * Arrays come in and go out through the buffer protocol (C-contiguous float32 or bool); the
 * caller (preprocess.py) allocates every output, so no NumPy headers are needed to build this.
 * Build flags: no -ffast-math and no FMA contraction (setup.py), or the arithmetic would differ.
 */
#define PY_SSIZE_T_CLEAN
#ifdef _MSC_VER
#define _USE_MATH_DEFINES  /* M_PI */
#define restrict __restrict
#endif
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define PW_BLOCKSIZE 128
#define OTSU_BINS 256

/* ------------------------------------------------------------------ NumPy's pairwise sums */
/* NumPy's sum of n contiguous values of TYPE, in TYPE: below 8 values in a row; up to 128 in 8
 * interleaved partial sums added pairwise, then the rest; beyond, the two halves (the first a
 * multiple of 8 long) summed so and added. */
#define PAIRWISE_SUM(NAME, TYPE)                                                                \
    static TYPE NAME(const TYPE *a, Py_ssize_t n)                                               \
    {                                                                                           \
        if (n < 8) {                                                                            \
            TYPE res = 0;                                                                       \
            for (Py_ssize_t i = 0; i < n; i++) res += a[i];                                     \
            return res;                                                                         \
        }                                                                                       \
        if (n <= PW_BLOCKSIZE) {                                                                \
            TYPE r[8];                                                                          \
            Py_ssize_t i;                                                                       \
            for (int j = 0; j < 8; j++) r[j] = a[j];                                            \
            for (i = 8; i < n - (n % 8); i += 8)                                                \
                for (int j = 0; j < 8; j++) r[j] += a[i + j];                                   \
            TYPE res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));        \
            for (; i < n; i++) res += a[i];                                                     \
            return res;                                                                         \
        }                                                                                       \
        Py_ssize_t n2 = n / 2;                                                                  \
        n2 -= n2 % 8;                                                                           \
        return NAME(a, n2) + NAME(a + n2, n - n2);                                              \
    }
PAIRWISE_SUM(sum32, float)
PAIRWISE_SUM(sum64, double)

/* ------------------------------------------------------------------ small steps */
/* _blur: 3 x 3 mean, edges repeated; rows summed first, (a + b) + c, then / 9. */
static void blur(const float *src, int h, int w, float *dst, float *rows)
{
    for (int y = 0; y < h; y++) {
        const float *up = src + (Py_ssize_t)(y > 0 ? y - 1 : 0) * w;
        const float *mid = src + (Py_ssize_t)y * w;
        const float *down = src + (Py_ssize_t)(y < h - 1 ? y + 1 : h - 1) * w;
        float *r = rows + (Py_ssize_t)y * w;
        for (int x = 0; x < w; x++) r[x] = up[x] + mid[x] + down[x];
    }
    for (int y = 0; y < h; y++) {
        const float *restrict r = rows + (Py_ssize_t)y * w;
        float *restrict d = dst + (Py_ssize_t)y * w;
        d[0] = (r[0] + r[0] + r[w > 1 ? 1 : 0]) / 9.f;
        for (int x = 1; x < w - 1; x++) d[x] = (r[x - 1] + r[x] + r[x + 1]) / 9.f;
        if (w > 1) d[w - 1] = (r[w - 2] + r[w - 1] + r[w - 1]) / 9.f;
    }
}

/* _otsu: threshold and separability of values in [0, 1] (none below 0). */
static void otsu(const float *v, Py_ssize_t n, double *threshold, double *separability)
{
    Py_ssize_t hist[OTSU_BINS] = {0};
    double p[OTSU_BINS], w0[OTSU_BINS], m[OTSU_BINS], centres[OTSU_BINS], terms[OTSU_BINS];
    for (Py_ssize_t i = 0; i < n; i++) {
        float scaled = v[i] * 256.f;  /* values are in [0, 1]; anything else is held in range */
        Py_ssize_t b = scaled >= 0.f ? (scaled < (float)OTSU_BINS ? (Py_ssize_t)scaled : OTSU_BINS - 1) : 0;
        hist[b < OTSU_BINS - 1 ? b : OTSU_BINS - 1]++;
    }
    double size = (double)(n > 1 ? n : 1), cw = 0., cm = 0.;
    for (int b = 0; b < OTSU_BINS; b++) {
        centres[b] = ((double)b / 256. + (double)(b + 1) / 256.) / 2.;
        p[b] = (double)hist[b] / size;
        cw += p[b];
        cm += p[b] * centres[b];
        w0[b] = cw;
        m[b] = cm;
    }
    double total_mean = m[OTSU_BINS - 1], best = -1.;
    int k = 0;
    for (int b = 0; b < OTSU_BINS - 1; b++) {
        double spread = w0[b] * (1. - w0[b]), between = 0.;
        if (spread != 0.) {
            double d = total_mean * w0[b] - m[b];
            between = (d * d) / spread;
        }
        if (between > best) {  /* argmax: the first of equal maxima */
            best = between;
            k = b;
        }
    }
    for (int b = 0; b < OTSU_BINS; b++) {
        double d = centres[b] - total_mean;
        terms[b] = p[b] * (d * d);
    }
    double total_var = sum64(terms, OTSU_BINS);
    *threshold = (double)(k + 1) / 256.;
    *separability = total_var > 0 ? best / total_var : 0.;
}

/* The value of rank k (0-based) of a[0..n), as a sort would place it; a is reordered so that
 * a[k + 1..n) holds values >= it (Hoare's selection, median-of-three pivots). */
static float select_rank(float *a, Py_ssize_t n, Py_ssize_t k)
{
    Py_ssize_t lo = 0, hi = n - 1;
    while (hi > lo) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        float x = a[lo], y = a[mid], z = a[hi];
        float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                float t = a[i]; a[i] = a[j]; a[j] = t;
                i++; j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break;  /* j < k < i: a[k] equals the pivot */
    }
    return a[k];
}

/* The values of ranks i and i + 1 (i + 1 capped at n - 1), as a sort would place them. */
static void two_ranks(float *a, Py_ssize_t n, Py_ssize_t i, float *first, float *second)
{
    *first = select_rank(a, n, i);
    if (i + 1 >= n) { *second = *first; return; }
    float m = a[i + 1];
    for (Py_ssize_t j = i + 2; j < n; j++) m = a[j] < m ? a[j] : m;
    *second = m;
}

/* _percentiles(..., strong=True): linear interpolation in float64 of float32 values (reordered). */
static double percentile_strong(float *values, Py_ssize_t n, double q)
{
    Py_ssize_t last = n - 1;
    double position = (double)last * (q / 100.);
    Py_ssize_t i = (Py_ssize_t)position < last ? (Py_ssize_t)position : last;
    float a, b;
    two_ranks(values, n, i, &a, &b);
    double t = position - (double)i;
    float diff = b - a;
    return t >= 0.5 ? (double)b - (double)diff * (1. - t) : (double)a + (double)diff * t;
}

/* ------------------------------------------------------------------ the lighting */
/* _slide: the minimum (or maximum) over each k values step apart of a flat picture (lines of
 * step pixels one after the other): dst[i] covers src[i], src[i + step], ..., src[i + (k - 1) step],
 * for i < n - (k - 1) step. By doubling the span covered, log2(k) passes instead of k, each one
 * contiguous run between two buffers (dst and tmp, n values each), which the compiler turns into
 * SIMD minima. */
#define SLIDE(NAME, OP)                                                                         \
    static void NAME(const float *src, Py_ssize_t n, int k, Py_ssize_t step, float *dst, float *tmp) \
    {                                                                                           \
        Py_ssize_t len = n, span = 1;                                                           \
        const float *in = src;                                                                  \
        float *bufs[2] = {tmp, dst};                                                            \
        int which = 0;                                                                          \
        while (2 * span <= k) {                                                                 \
            Py_ssize_t d = span * step;                                                         \
            float *restrict out = bufs[which];                                                  \
            const float *restrict a = in;                                                       \
            for (Py_ssize_t i = 0; i < len - d; i++) out[i] = OP(a[i], a[i + d]);               \
            in = out;                                                                           \
            which ^= 1;                                                                         \
            len -= d;                                                                           \
            span *= 2;                                                                          \
        }                                                                                       \
        Py_ssize_t d = (k - span) * step, m = n - (Py_ssize_t)(k - 1) * step;                   \
        if (d) {                                                                                \
            float *restrict out = in == dst ? tmp : dst;                                        \
            const float *restrict a = in;                                                       \
            for (Py_ssize_t i = 0; i < m; i++) out[i] = OP(a[i], a[i + d]);                     \
            in = out;                                                                           \
        }                                                                                       \
        if (in != dst) memcpy(dst, in, sizeof(float) * (size_t)m);                              \
    }
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
SLIDE(slide_min, MIN)
SLIDE(slide_max, MAX)

/* _point_reflect twice (rows, then columns of the result): src h x w -> ext (h + 2 pad) x (w + 2 pad). */
static void extend(const float *src, int h, int w, int pad, float *ext)
{
    int W = w + 2 * pad, H = h + 2 * pad;
    int nr = pad < h - 1 ? pad : h - 1, nc = pad < w - 1 ? pad : w - 1;
    /* rows, in the middle columns: reflected through the edge row, then the last one repeated */
    for (int y = 0; y < H; y++) {
        int d = y - pad;  /* row of the picture, or beyond it */
        float *out = ext + (Py_ssize_t)y * W + pad;
        if (d >= 0 && d < h) {
            memcpy(out, src + (Py_ssize_t)d * w, sizeof(float) * (size_t)w);
        } else if (d < 0) {
            int m = -d < nr ? -d : nr;  /* distance past the edge, capped at one reflection */
            const float *edge = src, *mirror = src + (Py_ssize_t)m * w;
            for (int x = 0; x < w; x++) out[x] = 2.f * edge[x] - mirror[x];
        } else {
            int m = d - (h - 1) < nr ? d - (h - 1) : nr;
            const float *edge = src + (Py_ssize_t)(h - 1) * w, *mirror = src + (Py_ssize_t)(h - 1 - m) * w;
            for (int x = 0; x < w; x++) out[x] = 2.f * edge[x] - mirror[x];
        }
    }
    /* columns of every extended row, the same way */
    for (int y = 0; y < H; y++) {
        float *row = ext + (Py_ssize_t)y * W;
        const float *left = row + pad, *right = row + pad + w - 1;
        for (int j = 1; j <= pad; j++) {
            int m = j < nc ? j : nc;
            row[pad - j] = 2.f * left[0] - left[m];
            row[pad + w - 1 + j] = 2.f * right[0] - right[-m];
        }
    }
}

/* _opening(ink, k) into out (h x w), as _openings computes it: the picture extended by k - 1 px,
 * then four passes over it as one flat row of pixels, keeping only full windows; the opening of
 * pixel (y, x) ends up at y * W + x. ext, a, b: (h + 2 (k - 1)) x (w + 2 (k - 1)) floats each, all
 * three overwritten. */
static void opening(const float *ink, int h, int w, int k, float *out, float *ext, float *a, float *b)
{
    int pad = k - 1;
    Py_ssize_t W = w + 2 * pad, n = (Py_ssize_t)(h + 2 * pad) * W;
    extend(ink, h, w, pad, ext);
    slide_min(ext, n, k, 1, a, b);
    n -= k - 1;
    slide_min(a, n, k, W, ext, b);
    n -= (Py_ssize_t)(k - 1) * W;
    slide_max(ext, n, k, 1, a, b);
    n -= k - 1;
    slide_max(a, n, k, W, b, ext);
    for (int y = 0; y < h; y++) memcpy(out + (Py_ssize_t)y * w, b + (Py_ssize_t)y * W, sizeof(float) * (size_t)w);
}

/* ------------------------------------------------------------------ Python glue */
typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int get_buf(PyObject *obj, Buf *b, const char *fmt, int writable, Py_ssize_t count, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    if (strcmp(b->view.format, fmt) != 0 || b->view.len != count * (Py_ssize_t)b->view.itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd contiguous values of format '%s'", what, count, fmt);
        return -1;
    }
    return 0;
}

static void release(Buf *b)
{
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

/* blur(src, h, w, dst) */
static PyObject *py_blur(PyObject *self, PyObject *args)
{
    PyObject *src_o, *dst_o;
    int h, w;
    Buf src, dst;
    if (!PyArg_ParseTuple(args, "OiiO", &src_o, &h, &w, &dst_o)) return NULL;
    if (h < 1 || w < 1) return PyErr_Format(PyExc_ValueError, "blur: empty picture");
    Py_ssize_t n = (Py_ssize_t)h * w;
    if (get_buf(src_o, &src, "f", 0, n, "blur src") < 0) { release(&src); return NULL; }
    if (get_buf(dst_o, &dst, "f", 1, n, "blur dst") < 0) { release(&src); release(&dst); return NULL; }
    float *rows = malloc(sizeof(float) * (size_t)n);
    if (!rows) { release(&src); release(&dst); return PyErr_NoMemory(); }
    Py_BEGIN_ALLOW_THREADS
    blur(src.view.buf, h, w, dst.view.buf, rows);
    Py_END_ALLOW_THREADS
    free(rows);
    release(&src);
    release(&dst);
    Py_RETURN_NONE;
}

/* The one argument of a call, a contiguous array of any length: 0, or -1 with an exception set. */
static int one_buffer(PyObject *args, Buf *v)
{
    PyObject *o;
    v->held = 0;
    if (!PyArg_ParseTuple(args, "O", &o)) return -1;
    if (PyObject_GetBuffer(o, &v->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    v->held = 1;
    return 0;
}

/* otsu(values) -> (threshold, separability) */
static PyObject *py_otsu(PyObject *self, PyObject *args)
{
    Buf v;
    if (one_buffer(args, &v) < 0) return NULL;
    if (strcmp(v.view.format, "f") != 0) {
        release(&v);
        return PyErr_Format(PyExc_ValueError, "otsu: expected float32 values");
    }
    double t, s;
    otsu(v.view.buf, v.view.len / 4, &t, &s);
    release(&v);
    return Py_BuildValue("dd", t, s);
}

/* The stroke background's chain of windows (_stroke_background; part of flatten): the opening of
 * the first window whose next wider one removes under (1 + saturation) x its ink. */
static int stroke_background(const float *ink, int h, int w, const int *windows, int nw, float noise,
                             double saturation, float *out)
{
    int kmax = windows[nw - 1];
    Py_ssize_t big = (Py_ssize_t)(h + 2 * kmax) * (w + 2 * kmax), n = (Py_ssize_t)h * w;
    float *ext = malloc(sizeof(float) * (size_t)big), *a = malloc(sizeof(float) * (size_t)big);
    float *b = malloc(sizeof(float) * (size_t)big), *resid = malloc(sizeof(float) * (size_t)n);
    int ok = ext && a && b && resid;
    if (ok) {  /* as the NumPy loop: the window it stops at is the one returned */
        double removed_before = 0.;
        for (int i = 0; i < nw; i++) {
            opening(ink, h, w, windows[i], out, ext, a, b);
            for (Py_ssize_t j = 0; j < n; j++) {
                float r = ink[j] - out[j] - noise;
                resid[j] = r > 0.f ? r : 0.f;
            }
            double removed = (double)sum32(resid, n);
            if (0 < removed_before && removed < (1 + saturation) * removed_before) break;
            removed_before = removed;
        }
    }
    free(ext); free(a); free(b); free(resid);
    return ok ? 0 : -1;
}

/* _is_dark_on_light's first test on the blurred picture: the border's 5th..95th percentile range,
 * then the ink beyond it below and above. Returns 1 dark, 0 light, -1 undecided (Otsu decides). */
static int polarity(const float *s, int h, int w, double border_percentile, double margin, int *fail)
{
    int b = (int)rint(0.03 * (h < w ? h : w));  /* Python's round(): ties to even, as rint */
    if (b < 1) b = 1;
    int bh = b < h ? b : h, bw = b < w ? b : w;
    Py_ssize_t count = 2 * (Py_ssize_t)bh * w + 2 * (Py_ssize_t)h * bw;
    float *border = malloc(sizeof(float) * (size_t)count);
    double *terms = malloc(sizeof(double) * (size_t)h * w);
    if (!border || !terms) { free(border); free(terms); *fail = 1; return 0; }
    Py_ssize_t c = 0;
    for (int y = 0; y < bh; y++) for (int x = 0; x < w; x++) border[c++] = s[(Py_ssize_t)y * w + x];
    for (int y = h - bh; y < h; y++) for (int x = 0; x < w; x++) border[c++] = s[(Py_ssize_t)y * w + x];
    for (int y = 0; y < h; y++) for (int x = 0; x < bw; x++) border[c++] = s[(Py_ssize_t)y * w + x];
    for (int y = 0; y < h; y++) for (int x = w - bw; x < w; x++) border[c++] = s[(Py_ssize_t)y * w + x];
    double low = percentile_strong(border, count, border_percentile);
    double high = percentile_strong(border, count, 100. - border_percentile);
    free(border);
    Py_ssize_t n = (Py_ssize_t)h * w;
    for (Py_ssize_t j = 0; j < n; j++) { double d = low - (double)s[j]; terms[j] = d > 0 ? d : 0.; }
    double below = sum64(terms, n);
    for (Py_ssize_t j = 0; j < n; j++) { double d = (double)s[j] - high; terms[j] = d > 0 ? d : 0.; }
    double above = sum64(terms, n);
    free(terms);
    double most = below > above ? below : above, least = below < above ? below : above;
    if (most >= margin * least && most > 1e-3 * (double)n) return below > above ? 1 : 0;
    return -1;
}

/* polarity(smooth, h, w, border_percentile, margin) -> 1 dark ink, 0 light, -1 undecided (the
 * caller then asks Otsu, as _is_dark_on_light does). */
static PyObject *py_polarity(PyObject *self, PyObject *args)
{
    PyObject *s_o;
    int h, w, fail = 0;
    double bp, margin;
    Buf s;
    if (!PyArg_ParseTuple(args, "Oiidd", &s_o, &h, &w, &bp, &margin)) return NULL;
    if (h < 1 || w < 1) return PyErr_Format(PyExc_ValueError, "polarity: empty picture");
    if (get_buf(s_o, &s, "f", 0, (Py_ssize_t)h * w, "polarity") < 0) { release(&s); return NULL; }
    int dark = polarity(s.view.buf, h, w, bp, margin, &fail);
    release(&s);
    if (fail) return PyErr_NoMemory();
    return PyLong_FromLong(dark);
}

/* windows: 1 to 64 odd, increasing window widths (WINDOWS) -> 0, or -1 with an exception set */
static int parse_windows(PyObject *win_o, int *windows, int *nw)
{
    PyObject *seq = PySequence_Fast(win_o, "windows must be a sequence");
    if (!seq) return -1;
    *nw = (int)PySequence_Fast_GET_SIZE(seq);
    if (*nw < 1 || *nw > 64) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "1 to 64 windows expected");
        return -1;
    }
    for (int i = 0; i < *nw; i++) {
        long k = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (k < 1 || k % 2 == 0 || k > 4096 || (i && k <= windows[i - 1])) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "windows must be odd and increasing");
            return -1;
        }
        windows[i] = (int)k;
    }
    Py_DECREF(seq);
    return 0;
}

/* flatten(grey, smooth, h, w, dark, windows, noise_margin, saturation, paper_floor, out): _flatten
 * once the polarity is known: the pixel noise from the median residue of the blur, the ink (dark
 * ink turned light), the stroke background under it, and the ink left above that background, as
 * a share of the paper's brightness for dark ink. */
static PyObject *py_flatten(PyObject *self, PyObject *args)
{
    PyObject *g_o, *s_o, *win_o, *o_o;
    int h, w, dark;
    double noise_margin, saturation, paper_floor;
    Buf g, sm, o;
    if (!PyArg_ParseTuple(args, "OOiipOdddO", &g_o, &s_o, &h, &w, &dark, &win_o, &noise_margin, &saturation,
                          &paper_floor, &o_o)) return NULL;
    int windows[64], nw;
    if (parse_windows(win_o, windows, &nw) < 0) return NULL;
    if (h < 1 || w < 1) return PyErr_Format(PyExc_ValueError, "flatten: empty picture");
    Py_ssize_t n = (Py_ssize_t)h * w;
    if (get_buf(g_o, &g, "f", 0, n, "flatten grey") < 0) { release(&g); return NULL; }
    if (get_buf(s_o, &sm, "f", 0, n, "flatten smooth") < 0) { release(&g); release(&sm); return NULL; }
    if (get_buf(o_o, &o, "f", 1, n, "flatten out") < 0) { release(&g); release(&sm); release(&o); return NULL; }
    const float *grey = g.view.buf, *smooth = sm.view.buf;
    float *out = o.view.buf;
    float *work = malloc(sizeof(float) * (size_t)n * 3);
    int status = work ? 0 : -1;
    if (!status) {
        Py_BEGIN_ALLOW_THREADS
        float *resid = work, *ink = work + n, *ink_smooth = work + 2 * n;
        for (Py_ssize_t i = 0; i < n; i++) resid[i] = fabsf(grey[i] - smooth[i]);
        float median;  /* _median: the middle value, or the mean of the middle two in float32 */
        if (n % 2) {
            median = select_rank(resid, n, n / 2);
        } else {
            float a, b;
            two_ranks(resid, n, n / 2 - 1, &a, &b);
            median = (a + b) / 2.f;
        }
        double sigma = (double)median * 1.4826 / 0.943, noise = noise_margin * sigma / 3;  /* _noise_sigma */
        for (Py_ssize_t i = 0; i < n; i++) {
            ink[i] = dark ? 1.f - grey[i] : grey[i];
            ink_smooth[i] = dark ? 1.f - smooth[i] : smooth[i];
        }
        status = stroke_background(ink_smooth, h, w, windows, nw, (float)noise, saturation, out);
        if (!status) {
            float floor_ = (float)paper_floor;
            for (Py_ssize_t i = 0; i < n; i++) {
                float v;
                if (dark) {
                    float paper = 1.f - out[i];
                    v = (ink[i] - out[i]) / (paper >= floor_ ? paper : floor_);
                } else {
                    v = ink[i] - out[i];
                }
                v = v > 0.f ? v : 0.f;
                out[i] = v < 1.f ? v : 1.f;
            }
        }
        Py_END_ALLOW_THREADS
    }
    free(work);
    release(&g); release(&sm); release(&o);
    if (status < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ stroke pieces */
static Py_ssize_t find(Py_ssize_t *parent, Py_ssize_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

/* strokes(mask, h, w, max_runs, keep_fraction, kept_out) ->
 *   (status, largest, top, bottom, left, right): status 1 = more runs than max_runs (noise),
 *   0 = kept_out holds the 8-connected pieces of at least keep_fraction x the largest; the box
 *   of what is kept, bottom and right exclusive. Pieces' sizes in pixels (_main_strokes). */
static PyObject *py_strokes(PyObject *self, PyObject *args)
{
    PyObject *m_o, *k_o;
    int h, w;
    Py_ssize_t max_runs;
    double keep_fraction;
    Buf m, k;
    if (!PyArg_ParseTuple(args, "OiindO", &m_o, &h, &w, &max_runs, &keep_fraction, &k_o)) return NULL;
    if (h < 1 || w < 1) return PyErr_Format(PyExc_ValueError, "strokes: empty mask");
    Py_ssize_t n = (Py_ssize_t)h * w;
    if (get_buf(m_o, &m, "?", 0, n, "strokes mask") < 0) { release(&m); return NULL; }
    if (get_buf(k_o, &k, "?", 1, n, "strokes kept") < 0) { release(&m); release(&k); return NULL; }
    const unsigned char *mask = m.view.buf;
    unsigned char *kept = k.view.buf;
    /* runs, row by row */
    Py_ssize_t runs = 0;
    for (int y = 0; y < h; y++) {
        const unsigned char *row = mask + (Py_ssize_t)y * w;
        for (int x = 0; x < w; x++) runs += row[x] && (x == 0 || !row[x - 1]);
    }
    if (runs > max_runs) {
        release(&m); release(&k);
        return Py_BuildValue("inniiii", 1, (Py_ssize_t)0, runs, 0, 0, 0, 0);
    }
    int *ry = malloc(sizeof(int) * (size_t)(runs + 1)), *rs = malloc(sizeof(int) * (size_t)(runs + 1));
    int *re = malloc(sizeof(int) * (size_t)(runs + 1));
    Py_ssize_t *parent = malloc(sizeof(Py_ssize_t) * (size_t)(runs + 1));
    Py_ssize_t *size = calloc((size_t)(runs + 1), sizeof(Py_ssize_t));
    Py_ssize_t *first = malloc(sizeof(Py_ssize_t) * (size_t)(h + 1));
    if (!ry || !rs || !re || !parent || !size || !first) {
        free(ry); free(rs); free(re); free(parent); free(size); free(first);
        release(&m); release(&k);
        return PyErr_NoMemory();
    }
    Py_ssize_t c = 0;
    for (int y = 0; y < h; y++) {
        const unsigned char *row = mask + (Py_ssize_t)y * w;
        first[y] = c;
        for (int x = 0; x < w;) {
            if (!row[x]) { x++; continue; }
            int s = x;
            while (x < w && row[x]) x++;
            ry[c] = y; rs[c] = s; re[c] = x; parent[c] = c;
            c++;
        }
    }
    first[h] = c;
    /* link runs of adjacent rows that overlap or touch corner to corner */
    for (int y = 1; y < h; y++) {
        Py_ssize_t a = first[y - 1], a_end = first[y], b = first[y], b_end = first[y + 1];
        while (a < a_end && b < b_end) {
            if (rs[a] <= re[b] && rs[b] <= re[a]) {
                Py_ssize_t x = find(parent, a), z = find(parent, b);
                if (x != z) { if (x < z) parent[z] = x; else parent[x] = z; }
            }
            if (re[a] < re[b]) a++; else b++;
        }
    }
    Py_ssize_t largest = 0;
    for (Py_ssize_t i = 0; i < runs; i++) {
        Py_ssize_t root = find(parent, i);
        size[root] += re[i] - rs[i];
    }
    for (Py_ssize_t i = 0; i < runs; i++) if (size[i] > largest) largest = size[i];
    memset(kept, 0, (size_t)n);
    int top = h, bottom = 0, left = w, right = 0;
    double need = keep_fraction * (double)largest;
    for (Py_ssize_t i = 0; i < runs; i++) {
        if ((double)size[find(parent, i)] < need) continue;
        memset(kept + (Py_ssize_t)ry[i] * w + rs[i], 1, (size_t)(re[i] - rs[i]));
        if (ry[i] < top) top = ry[i];
        if (ry[i] + 1 > bottom) bottom = ry[i] + 1;
        if (rs[i] < left) left = rs[i];
        if (re[i] > right) right = re[i];
    }
    free(ry); free(rs); free(re); free(parent); free(size); free(first);
    release(&m);
    release(&k);
    return Py_BuildValue("inniiii", 0, largest, runs, top, bottom, left, right);
}

/* ------------------------------------------------------------------ the digit's crop */
/* split(grey, smooth, h, w, threshold, mask) -> (inked, stroke_level, background_level):
 * mask = smooth > threshold; the mean grey level on and off it, each a float32 sum / count. */
static PyObject *py_split(PyObject *self, PyObject *args)
{
    PyObject *g_o, *s_o, *m_o;
    int h, w;
    double threshold;
    Buf g, s, m;
    if (!PyArg_ParseTuple(args, "OOiidO", &g_o, &s_o, &h, &w, &threshold, &m_o)) return NULL;
    if (h < 1 || w < 1) return PyErr_Format(PyExc_ValueError, "split: empty picture");
    Py_ssize_t n = (Py_ssize_t)h * w, on = 0, off = 0;
    if (get_buf(g_o, &g, "f", 0, n, "split grey") < 0) { release(&g); return NULL; }
    if (get_buf(s_o, &s, "f", 0, n, "split smooth") < 0) { release(&g); release(&s); return NULL; }
    if (get_buf(m_o, &m, "?", 1, n, "split mask") < 0) { release(&g); release(&s); release(&m); return NULL; }
    float *ink = malloc(sizeof(float) * (size_t)n), *paper = malloc(sizeof(float) * (size_t)n);
    if (!ink || !paper) {
        free(ink); free(paper); release(&g); release(&s); release(&m);
        return PyErr_NoMemory();
    }
    const float *grey = g.view.buf, *smooth = s.view.buf;
    unsigned char *mask = m.view.buf;
    float t = (float)threshold;  /* NumPy compares float32 values with a Python float as float32 */
    for (Py_ssize_t i = 0; i < n; i++) {
        mask[i] = smooth[i] > t;
        if (mask[i]) ink[on++] = grey[i]; else paper[off++] = grey[i];
    }
    double stroke = on ? (double)(sum32(ink, on) / (float)on) : 0.;
    double background = off ? (double)(sum32(paper, off) / (float)off) : 0.;
    free(ink); free(paper);
    release(&g); release(&s); release(&m);
    return Py_BuildValue("ndd", on, stroke, background);
}

/* crop(grey, kept, h, w, top, bottom, left, right, background_level, out) -> core: inside the box,
 * the grey levels scaled so the strokes' 90th percentile ("core", float32 interpolation) is 1.0,
 * kept where the strokes grown by one pixel (8-neighbours) are, 0 elsewhere (out: the box). */
static PyObject *py_crop(PyObject *self, PyObject *args)
{
    PyObject *g_o, *k_o, *o_o;
    int h, w, top, bottom, left, right;
    double background;
    Buf g, k, o;
    if (!PyArg_ParseTuple(args, "OOiiiiiidO", &g_o, &k_o, &h, &w, &top, &bottom, &left, &right, &background,
                          &o_o)) return NULL;
    if (h < 1 || w < 1 || top < 0 || left < 0 || bottom > h || right > w || top >= bottom || left >= right)
        return PyErr_Format(PyExc_ValueError, "crop: box outside the picture");
    int bh = bottom - top, bw = right - left;
    Py_ssize_t n = (Py_ssize_t)h * w, nb = (Py_ssize_t)bh * bw, c = 0;
    if (get_buf(g_o, &g, "f", 0, n, "crop grey") < 0) { release(&g); return NULL; }
    if (get_buf(k_o, &k, "?", 0, n, "crop kept") < 0) { release(&g); release(&k); return NULL; }
    if (get_buf(o_o, &o, "f", 1, nb, "crop out") < 0) { release(&g); release(&k); release(&o); return NULL; }
    const float *grey = g.view.buf;
    const unsigned char *kept = k.view.buf;
    float *out = o.view.buf, *ink = malloc(sizeof(float) * (size_t)nb);
    unsigned char *grown = malloc((size_t)nb);
    if (!ink || !grown) {
        free(ink); free(grown); release(&g); release(&k); release(&o);
        return PyErr_NoMemory();
    }
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++)
            if (kept[(Py_ssize_t)(top + y) * w + left + x]) ink[c++] = grey[(Py_ssize_t)(top + y) * w + left + x];
    if (!c) {
        free(ink); free(grown); release(&g); release(&k); release(&o);
        return PyErr_Format(PyExc_ValueError, "crop: no stroke in the box");
    }
    Py_ssize_t last = c - 1;
    double position = (double)last * (90. / 100.), t;
    Py_ssize_t i = (Py_ssize_t)position < last ? (Py_ssize_t)position : last;
    float a, b, core;
    two_ranks(ink, c, i, &a, &b);
    t = position - (double)i;
    core = t >= 0.5 ? b - (b - a) * (float)(1. - t) : a + (b - a) * (float)t;  /* _percentile(..., strong=False) */
    float bg = (float)background, span = core - bg, one_millionth = (float)1e-6;
    if (one_millionth > span) span = one_millionth;  /* Python's max(core - bg, 1e-6) */
    /* the strokes grown by one pixel within the box: rows, then columns (_dilate) */
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++) {
            const unsigned char *row = kept + (Py_ssize_t)(top + y) * w + left;
            unsigned char v = row[x];
            if (y > 0) v |= row[x - w];
            if (y < bh - 1) v |= row[x + w];
            grown[(Py_ssize_t)y * bw + x] = v;
        }
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++) {
            const unsigned char *row = grown + (Py_ssize_t)y * bw;
            unsigned char v = row[x] | (x > 0 ? row[x - 1] : 0) | (x < bw - 1 ? row[x + 1] : 0);
            float level = (grey[(Py_ssize_t)(top + y) * w + left + x] - bg) / span;
            level = level > 0.f ? level : 0.f;  /* _clip01: maximum, then minimum */
            level = level < 1.f ? level : 1.f;
            out[(Py_ssize_t)y * bw + x] = v ? level : 0.f;
        }
    free(ink); free(grown);
    release(&g); release(&k); release(&o);
    return PyFloat_FromDouble((double)core);
}

/* ------------------------------------------------------------------ Lanczos resizing */
/* Pillow's LANCZOS resize of a float ("F") picture, computed the same way so the numbers are the
 * same: a truncated sinc of 3 lobes, widened by the reduction factor; each output pixel's weights
 * normalised to sum to 1; a horizontal pass (over the rows the vertical one reads, stored as
 * float32), then a vertical one, each a float64 sum of weight x pixel in order. */
static double lanczos3(double x)
{
    if (!(-3.0 <= x && x < 3.0)) return 0.0;
    double a = x == 0.0 ? 1.0 : sin(x * M_PI) / (x * M_PI), third = x / 3;
    double b = third == 0.0 ? 1.0 : sin(third * M_PI) / (third * M_PI);
    return a * b;
}

/* Weights of in_size -> out_size: first[i], count[i] and weights[i * width ..] per output pixel. */
static int weights_of(int in_size, int out_size, int **first, int **count, double **weights)
{
    double scale = (double)in_size / out_size, stretch = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * stretch;
    int width = (int)ceil(support) * 2 + 1;
    *first = malloc(sizeof(int) * (size_t)out_size);
    *count = malloc(sizeof(int) * (size_t)out_size);
    *weights = malloc(sizeof(double) * (size_t)out_size * (size_t)width);
    if (!*first || !*count || !*weights) return -1;
    for (int i = 0; i < out_size; i++) {
        double centre = (i + 0.5) * scale, total = 0.0, inverse = 1.0 / stretch;
        int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
        lo = lo < 0 ? 0 : lo;
        hi = hi > in_size ? in_size : hi;
        double *k = *weights + (Py_ssize_t)i * width;
        for (int j = 0; j < hi - lo; j++) {
            k[j] = lanczos3(((double)(j + lo) - centre + 0.5) * inverse);
            total += k[j];
        }
        for (int j = 0; j < hi - lo; j++)
            if (total != 0.0) k[j] /= total;
        (*first)[i] = lo;
        (*count)[i] = hi - lo;
    }
    return width;
}

/* resize(src, h, w, out_h, out_w, dst) */
static PyObject *py_resize(PyObject *self, PyObject *args)
{
    PyObject *s_o, *d_o;
    int h, w, oh, ow;
    Buf sb, db;
    if (!PyArg_ParseTuple(args, "OiiiiO", &s_o, &h, &w, &oh, &ow, &d_o)) return NULL;
    if (h < 1 || w < 1 || oh < 1 || ow < 1 || h > 1 << 15 || w > 1 << 15 || oh > 1 << 15 || ow > 1 << 15)
        return PyErr_Format(PyExc_ValueError, "resize: sizes of 1 to 32768 px expected");
    if (get_buf(s_o, &sb, "f", 0, (Py_ssize_t)h * w, "resize src") < 0) { release(&sb); return NULL; }
    if (get_buf(d_o, &db, "f", 1, (Py_ssize_t)oh * ow, "resize dst") < 0) { release(&sb); release(&db); return NULL; }
    const float *src = sb.view.buf;
    float *dst = db.view.buf, *across = NULL;
    int *vfirst = NULL, *vcount = NULL, *hfirst = NULL, *hcount = NULL, ok = 1;
    double *vk = NULL, *hk = NULL;
    if (oh == h && ow == w) {
        memcpy(dst, src, sizeof(float) * (size_t)h * w);
        goto done;
    }
    int vwidth = weights_of(h, oh, &vfirst, &vcount, &vk);
    if (vwidth < 0) { ok = 0; goto done; }
    int top = vfirst[0], bottom = vfirst[oh - 1] + vcount[oh - 1];  /* the rows the vertical pass reads */
    const float *rows = src;
    int row_offset = 0;
    if (ow != w) {
        int hwidth = weights_of(w, ow, &hfirst, &hcount, &hk);
        across = malloc(sizeof(float) * (size_t)(bottom - top) * ow);
        if (hwidth < 0 || !across) { ok = 0; goto done; }
        for (int y = top; y < bottom; y++)
            for (int x = 0; x < ow; x++) {
                const double *k = hk + (Py_ssize_t)x * hwidth;
                const float *in = src + (Py_ssize_t)y * w + hfirst[x];
                double sum = 0.0;
                for (int j = 0; j < hcount[x]; j++) sum += in[j] * k[j];
                across[(Py_ssize_t)(y - top) * ow + x] = (float)sum;
            }
        rows = across;
        row_offset = top;
    }
    if (oh != h) {
        for (int y = 0; y < oh; y++) {
            const double *k = vk + (Py_ssize_t)y * vwidth;
            for (int x = 0; x < ow; x++) {
                double sum = 0.0;
                for (int j = 0; j < vcount[y]; j++)
                    sum += rows[(Py_ssize_t)(vfirst[y] - row_offset + j) * ow + x] * k[j];
                dst[(Py_ssize_t)y * ow + x] = (float)sum;
            }
        }
    } else {
        memcpy(dst, rows, sizeof(float) * (size_t)oh * ow);  /* all h rows were read (top 0, bottom h) */
    }
done:
    free(across); free(vfirst); free(vcount); free(hfirst); free(hcount); free(vk); free(hk);
    release(&sb); release(&db);
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* place(scaled, h, w, out): the scaled digit (h, w <= 28) clipped to [0, 1], its peak made 1.0,
 * pasted into 28 x 28 with its centre of mass at (centre, centre) (_scale_to_box's end, _centre). */
static PyObject *py_place(PyObject *self, PyObject *args)
{
    PyObject *s_o, *o_o;
    int h, w, side;
    double centre;
    Buf s, o;
    if (!PyArg_ParseTuple(args, "OiiidO", &s_o, &h, &w, &side, &centre, &o_o)) return NULL;
    if (h < 1 || w < 1 || side < 1 || h > side || w > side || h > 64 || w > 64)
        return PyErr_Format(PyExc_ValueError, "place: a digit of 1 to %d px a side expected", side);
    Py_ssize_t n = (Py_ssize_t)h * w;
    if (get_buf(s_o, &s, "f", 0, n, "place scaled") < 0) { release(&s); return NULL; }
    if (get_buf(o_o, &o, "f", 1, (Py_ssize_t)side * side, "place out") < 0) { release(&s); release(&o); return NULL; }
    const float *scaled = s.view.buf;
    float digit[64 * 64], peak = 0.f, rows[64], cols[64];
    double terms[64];
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = scaled[i] > 0.f ? scaled[i] : 0.f;
        v = v < 1.f ? v : 1.f;
        digit[i] = v;
        if (i == 0 || v > peak) peak = v;
    }
    if (peak > 0.f)
        for (Py_ssize_t i = 0; i < n; i++) digit[i] = digit[i] / peak;
    float mass = sum32(digit, n);
    double com_r = (h - 1) / 2., com_c = (w - 1) / 2.;
    if (mass != 0.f) {
        for (int y = 0; y < h; y++) rows[y] = sum32(digit + (Py_ssize_t)y * w, w);
        for (int x = 0; x < w; x++) cols[x] = 0.f;
        for (int y = 0; y < h; y++)  /* sums down the columns: NumPy adds row after row */
            for (int x = 0; x < w; x++) cols[x] += digit[(Py_ssize_t)y * w + x];
        for (int y = 0; y < h; y++) terms[y] = (double)rows[y] * (double)y;
        com_r = sum64(terms, h) / (double)mass;
        for (int x = 0; x < w; x++) terms[x] = (double)cols[x] * (double)x;
        com_c = sum64(terms, w) / (double)mass;
    }
    int top = (int)rint(centre - com_r), left = (int)rint(centre - com_c);  /* Python's round: ties to even */
    top = top > 0 ? top : 0;
    top = top < side - h ? top : side - h;
    left = left > 0 ? left : 0;
    left = left < side - w ? left : side - w;
    float *out = o.view.buf;
    memset(out, 0, sizeof(float) * (size_t)side * side);
    for (int y = 0; y < h; y++)
        memcpy(out + (Py_ssize_t)(top + y) * side + left, digit + (Py_ssize_t)y * w, sizeof(float) * (size_t)w);
    release(&s); release(&o);
    Py_RETURN_NONE;
}

/* sum32(values) / sum64(values): NumPy's float32 / float64 sum, for the tests */
static PyObject *py_sum(PyObject *self, PyObject *args)
{
    Buf v;
    if (one_buffer(args, &v) < 0) return NULL;
    double out;
    if (strcmp(v.view.format, "f") == 0) out = sum32(v.view.buf, v.view.len / 4);
    else if (strcmp(v.view.format, "d") == 0) out = sum64(v.view.buf, v.view.len / 8);
    else { release(&v); return PyErr_Format(PyExc_ValueError, "sum: expected float32 or float64"); }
    release(&v);
    return PyFloat_FromDouble(out);
}

static PyMethodDef methods[] = {
    {"blur", py_blur, METH_VARARGS, "blur(src, h, w, dst): preprocess._blur into dst."},
    {"otsu", py_otsu, METH_VARARGS, "otsu(values) -> (threshold, separability): preprocess._otsu."},
    {"polarity", py_polarity, METH_VARARGS,
     "polarity(smooth, h, w, border_percentile, margin) -> 1 dark ink, 0 light, -1 undecided."},
    {"flatten", py_flatten, METH_VARARGS,
     "flatten(grey, smooth, h, w, dark, windows, noise_margin, saturation, paper_floor, out): _flatten's rest."},
    {"strokes", py_strokes, METH_VARARGS,
     "strokes(mask, h, w, max_runs, keep_fraction, kept) -> (status, largest, runs, top, bottom, left, right)."},
    {"split", py_split, METH_VARARGS,
     "split(grey, smooth, h, w, threshold, mask) -> (inked, stroke_level, background_level)."},
    {"crop", py_crop, METH_VARARGS,
     "crop(grey, kept, h, w, top, bottom, left, right, background_level, out) -> core."},
    {"resize", py_resize, METH_VARARGS, "resize(src, h, w, out_h, out_w, dst): Pillow's LANCZOS resize of float pixels."},
    {"place", py_place, METH_VARARGS, "place(scaled, h, w, side, centre, out): _scale_to_box's end and _centre."},
    {"sum", py_sum, METH_VARARGS, "sum(values) -> NumPy's pairwise sum of float32 or float64 values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_recipe",
                                    "Compiled steps of mnistlab.preprocess (see _recipe.c).", -1, methods};

PyMODINIT_FUNC PyInit__recipe(void) { return PyModule_Create(&module); }
