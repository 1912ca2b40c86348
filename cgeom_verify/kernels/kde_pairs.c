/* Symmetric pair sums of the geodesic Gaussian KDE on S^2 and of its gradient
 * (cgeom_verify.kernels.particles): log rho_h and its backward, in one function, kde_pairs.
 *
 * Per run, two passes over the unordered pairs j >= i. The first evaluates each pair's kernel
 * once, adds it to both its row and its column (in registers and an L1-resident column
 * accumulator), and keeps the pair's slope h^2 K' in the thread's scratch (1.2 MB at m = 768: it
 * stays in L2). The second, where a gradient is asked for, reads the slopes back to add
 * w_ij = slope_ij (c_i + c_j) times z_j to row i and times z_i to column j, with c given (any
 * upstream weights) or c_i = 1/(h^2 sums_i) (a unit upstream weight on every log rho_i:
 * training's mean log rho, whose gradient is then made with the density). Built at first use by
 * cgeom_verify.kernels.native (see its docstring for the flags and the fallback).
 *
 * Layout: z[runs][3][stride] coordinate-major, stride a multiple of 16 floats (64 bytes); the
 * first m entries of each coordinate row are the particles. Runs are shared among `threads`
 * OpenMP threads, each run computed whole by one (so results do not depend on the count); built
 * with -fopenmp inside torch, the team is torch's own libgomp pool.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <string.h>

#define CLAMP 1e-6f

/* acos(x): Abramowitz & Stegun 4.4.46, acos(t) = sqrt(1 - t) P_7(t) for t = |x| (|error| <= 2e-8),
 * reflected for x < 0; the same polynomial as particles._angle. P_7 by Estrin's scheme: a chain
 * of 4 dependent operations instead of Horner's 7, which lets neighbouring pairs overlap. */
static inline float angle(float x, float t) {
    float t2 = t * t;
    float p = ((1.5707963050f - 0.2145988016f * t) + t2 * (0.0889789874f - 0.0501743046f * t))
              + (t2 * t2) * ((0.0308918810f - 0.0170881256f * t) + t2 * (0.0066700901f - 0.0012624911f * t));
    float near = sqrtf(1.0f - t) * p;
    return x >= 0.0f ? near : 3.14159265358979f - near;
}

/* exp(x) for x <= 0: 2^k e^r, |r| <= ln2/2, e^r by its degree-7 Taylor polynomial (relative
 * error <= 5e-9; Estrin's scheme, as in angle), 2^k built in the exponent bits. Inlined so that
 * the loop vectorises without a vector libm. k = round(x / ln 2) by adding 1.5 * 2^23, after
 * which the float's low mantissa bits hold k itself (no float-to-int conversion). x is clamped at
 * -64: e^-64 = 1.6e-28 is invisible next to the self term K(0) ~ 1 of every density, and a
 * floor keeps the gradient's products out of the subnormal range, where x86 arithmetic is ~100x
 * slower. */
#define ROUNDING_SHIFT 12582912.0f /* 1.5 * 2^23 */
#define ROUNDING_SHIFT_BITS 0x4B400000
static inline float exp_nonpositive(float x) {
    x = x < -64.0f ? -64.0f : x;
    float shifted = x * 1.44269504089f + ROUNDING_SHIFT;
    float k = shifted - ROUNDING_SHIFT;
    float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    float r2 = r * r;
    float p = ((1.0f + r) + r2 * (0.5f + r * (1.0f / 6.0f)))
              + (r2 * r2) * ((1.0f / 24.0f + r * (1.0f / 120.0f)) + r2 * (1.0f / 720.0f + r * (1.0f / 5040.0f)));
    union { float f; int32_t i; } rounded = { shifted };
    union { int32_t i; float f; } scale = { (rounded.i - ROUNDING_SHIFT_BITS + 127) << 23 };
    return p * scale.f;
}

static inline float cosine(float xi, float yi, float zi, float xj, float yj, float zj) {
    return xi * xj + yi * yj + zi * zj;
}

/* h^2 K'(x) = K acos(x) / sin(acos(x)) from the pair's kernel k, angle theta and t = |x|: the sine
 * as sqrt((1 - t)(1 + t)), i.e. from the same rounded 1 - t as the angle. */
static inline float slope(float k, float theta, float t) {
    return k * theta / sqrtf((1.0f - t) * (1.0f + t));
}

/* The pair's kernel K(x) = exp(-a acos(x)^2), with its slope h^2 K'(x) in *w. The cosine x is
 * clamped to [-1 + CLAMP, 1 - CLAMP] as |x| <= 1 - CLAMP: one comparison instead of two. */
static inline float kernel(float x, float a, float *w) {
    float t = fabsf(x);
    t = 1.0f - CLAMP < t ? 1.0f - CLAMP : t;
    float theta = angle(x, t);
    float k = exp_nonpositive(-a * theta * theta);
    *w = slope(k, theta, t);
    return k;
}

/* Floats of one run's slope rows: row i holds j from i's vector lane (i & ~15) to the stride, so
 * every row starts on a 64-byte boundary. */
static int64_t slope_floats(int64_t stride) {
    int64_t total = 0;
    for (int64_t i = 0; i < stride; i += 16) total += 16 * (stride - i);
    return total;
}

/* Scratch floats per thread of kde_pairs: one run's slope rows and its c. */
int64_t kde_scratch_floats(int64_t stride) { return slope_floats(stride) + stride; }

/* sums[r][i] = sum_j exp(-acos<z_i, z_j>^2 / (2 h_r^2)), j over all m particles, i itself
 * included. Where grad is not NULL, grad[r][:, i] = sum_j w_ij z_j, w_ij = h^2 K'(x_ij) (c_i + c_j),
 * c from `c` where it is not NULL, else c_i = 1/(h^2 sums_i): the gradient of sum_i log rho_i.
 * scratch: `threads` x kde_scratch_floats(stride) floats. */
void kde_pairs(const float *z, const float *inv_two_h2, int64_t runs, int64_t m, int64_t stride,
               int64_t threads, float *scratch, float *sums, const float *c, float *grad) {
    const int64_t per_thread = kde_scratch_floats(stride);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < runs; r++) {
#ifdef _OPENMP
        float *S = scratch + omp_get_thread_num() * per_thread;
#else
        float *S = scratch;
#endif
        const float *X = z + r * 3 * stride, *Y = X + stride, *Z = Y + stride;
        float *out = sums + r * stride;
        const float a = inv_two_h2[r];
        memset(out, 0, stride * sizeof(float));
        float *row_i = S;
        for (int64_t i = 0; i < m; i++) {
            const float xi = X[i], yi = Y[i], zi = Z[i];
            const int64_t lane0 = i & ~(int64_t)15;
            float *W = row_i - lane0; /* W[j]: the slope of pair (i, j) */
            const int64_t rest = lane0 + 16 < m ? lane0 + 16 : m;
            float row = 0.0f;
            /* i's own vector, pairs j < i masked out; then whole vectors with no mask (masking
             * every vector cost ~17 % of this pass). */
#pragma omp simd reduction(+ : row) aligned(X, Y, Z, out, W : 64)
            for (int64_t j = lane0; j < rest; j++) {
                float k = kernel(cosine(xi, yi, zi, X[j], Y[j], Z[j]), a, &W[j]);
                row += j >= i ? k : 0.0f;
                out[j] += j > i ? k : 0.0f;
            }
#pragma omp simd reduction(+ : row) aligned(X, Y, Z, out, W : 64)
            for (int64_t j = rest; j < m; j++) {
                float k = kernel(cosine(xi, yi, zi, X[j], Y[j], Z[j]), a, &W[j]);
                row += k;
                out[j] += k;
            }
            out[i] += row;
            row_i += stride - lane0;
        }
        if (grad == NULL) continue;

        float *C = S + slope_floats(stride);
        for (int64_t i = 0; i < stride; i++)
            C[i] = i >= m ? 0.0f : c != NULL ? c[r * stride + i] : 2.0f * a / out[i];
        float *GX = grad + r * 3 * stride, *GY = GX + stride, *GZ = GY + stride;
        memset(GX, 0, 3 * stride * sizeof(float));
        row_i = S;
        for (int64_t i = 0; i < m; i++) {
            const float xi = X[i], yi = Y[i], zi = Z[i], ci = C[i];
            const int64_t lane0 = i & ~(int64_t)15, rest = lane0 + 16 < m ? lane0 + 16 : m;
            const float *W = row_i - lane0;
            float gx = 0.0f, gy = 0.0f, gz = 0.0f;
            /* i's own vector, pairs j < i masked out; then whole vectors with no mask to compute
             * (a few multiply-adds per pair here, so the masks would cost ~7 %). */
#pragma omp simd reduction(+ : gx, gy, gz) aligned(X, Y, Z, C, W, GX, GY, GZ : 64)
            for (int64_t j = lane0; j < rest; j++) {
                float w = W[j] * (ci + C[j]);
                w = j >= i ? w : 0.0f;
                gx += w * X[j];
                gy += w * Y[j];
                gz += w * Z[j];
                w = j > i ? w : 0.0f;
                GX[j] += w * xi;
                GY[j] += w * yi;
                GZ[j] += w * zi;
            }
#pragma omp simd reduction(+ : gx, gy, gz) aligned(X, Y, Z, C, W, GX, GY, GZ : 64)
            for (int64_t j = rest; j < m; j++) {
                float w = W[j] * (ci + C[j]);
                gx += w * X[j];
                gy += w * Y[j];
                gz += w * Z[j];
                GX[j] += w * xi;
                GY[j] += w * yi;
                GZ[j] += w * zi;
            }
            GX[i] += gx;
            GY[i] += gy;
            GZ[i] += gz;
            row_i += stride - lane0;
        }
    }
}
