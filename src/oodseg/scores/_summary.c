/* One-pass per-pixel softmax summary of channel-first float32 logits (the CPU fast path of
 * oodseg/scores/inputs.py, loaded through ctypes by oodseg/scores/native.py).
 *
 * For finite logits l (batch, classes >= 2, pixels) and a temperature T, every pixel gets
 *   maximum  m = max_c l_c        argmax: the first class with l_c = m
 *   second     = the second-largest l_c (= m when the maximum is tied)
 *   exp_sum  s = sum_c e_c,  e_c = exp((l_c - m)/T) in [0, 1]
 *   entropy    = -sum_c q_c log q_c = log s - sum_c e_c (l_c - m)/T / s,  q = e/s  (clamped at 0)
 *   mixture    = -sum_c M_c log M_c,  M = 1/(2C) + q/2  (entropy of the uniform/softmax mixture)
 * reading every logit from memory once. maximum, argmax and second are written only when
 * `maximum` is not NULL, mixture only when `mixture` is not NULL.
 *
 * Pixels go in blocks of BLOCK: the block's logits are first copied into a contiguous buffer
 * (the classes of a large map often lie a multiple of 4 KiB apart and then evict each other
 * from the cache), then every loop runs over the pixels of the block, so the compiler vectorises it.
 * exp and log are Cephes polynomials (about 1 ulp) in plain arithmetic, which vectorise without
 * -ffast-math; they only need to cover exp(x <= 0) and log of positive normal numbers.
 * Plain C99 without Python or torch headers; setup.py builds it with the GCC flags that vectorise it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 256

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static inline float bits_to_float(int32_t bits) { float f; memcpy(&f, &bits, sizeof f); return f; }
static inline int32_t float_to_bits(float f) { int32_t bits; memcpy(&bits, &f, sizeof bits); return bits; }

/* exp(x) for x <= 0; 0 below -87 (the true value is < 2e-38 there and cannot move a sum >= 1). */
static inline float exp_nonpositive(float x) {
    const float round = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    float clamped = x < -87.0f ? -87.0f : x;
    float n = (clamped * 1.44269504088896341f + round) - round;
    float r = clamped - n * 0.693359375f + n * 2.12194440e-4f; /* r = x - n ln 2, ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    float scale = bits_to_float(((int32_t)n + 127) << 23); /* 2^n */
    return x < -87.0f ? 0.0f : p * scale;
}

/* log(x) for a positive normal x. */
static inline float log_positive(float x) {
    int32_t bits = float_to_bits(x);
    float exponent = (float)((bits >> 23) - 126);
    float m = bits_to_float((bits & 0x007fffff) | 0x3f000000); /* x = m 2^exponent, m in [0.5, 1) */
    int small = m < 0.707106781186547524f;
    exponent = small ? exponent - 1.0f : exponent;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    p = p * m * z - 2.12194440e-4f * exponent - 0.5f * z;
    return m + p + 0.693359375f * exponent;
}

typedef struct {
    float *maximum, *second, *exp_sum, *entropy, *mixture;
    int64_t *argmax;
} summary_t;

/* The summary of pixels [0, n) of one image (class c at x + c * class_stride) into `out`;
 * `buffer` holds classes * BLOCK floats. */
VECTOR_CLONES
static void summarize_block(const float *x, int64_t classes, int64_t class_stride, int64_t n, float inv_temperature,
                            float *buffer, summary_t out) {
    float top[BLOCK], runner_up[BLOCK], index[BLOCK], sum[BLOCK], weighted[BLOCK];
    for (int64_t c = 0; c < classes; c++) memcpy(buffer + c * BLOCK, x + c * class_stride, sizeof(float) * n);
    for (int64_t j = 0; j < n; j++) top[j] = buffer[j];
    if (out.maximum == NULL) {
        for (int64_t c = 1; c < classes; c++) {
            const float *row = buffer + c * BLOCK;
            for (int64_t j = 0; j < n; j++) top[j] = row[j] > top[j] ? row[j] : top[j];
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            runner_up[j] = -INFINITY;
            index[j] = 0.0f;
        }
        for (int64_t c = 1; c < classes; c++) {
            const float *row = buffer + c * BLOCK;
            for (int64_t j = 0; j < n; j++) {
                float v = row[j], t = top[j], low = v < t ? v : t;
                index[j] = v > t ? (float)c : index[j]; /* strict: a tie keeps the first class */
                runner_up[j] = low > runner_up[j] ? low : runner_up[j];
                top[j] = v > t ? v : t;
            }
        }
        for (int64_t j = 0; j < n; j++) {
            out.maximum[j] = top[j];
            out.second[j] = runner_up[j];
            out.argmax[j] = (int64_t)index[j];
        }
    }
    for (int64_t j = 0; j < n; j++) {
        sum[j] = 0.0f;
        weighted[j] = 0.0f;
    }
    for (int64_t c = 0; c < classes; c++) {
        float *e = buffer + c * BLOCK; /* the logits become exp((l - m)/T) in place */
        for (int64_t j = 0; j < n; j++) {
            float d = (e[j] - top[j]) * inv_temperature;
            e[j] = exp_nonpositive(d);
            sum[j] += e[j];
            weighted[j] += e[j] * d;
        }
    }
    for (int64_t j = 0; j < n; j++) {
        float h = log_positive(sum[j]) - weighted[j] / sum[j];
        out.entropy[j] = h > 0.0f ? h : 0.0f;
        out.exp_sum[j] = sum[j];
    }
    if (out.mixture != NULL) {
        const float uniform_half = 0.5f / (float)classes;
        for (int64_t j = 0; j < n; j++) {
            weighted[j] = 0.5f / sum[j]; /* reused: the weight of q in M */
            sum[j] = 0.0f;               /* reused: the mixture entropy */
        }
        for (int64_t c = 0; c < classes; c++) {
            const float *e = buffer + c * BLOCK;
            for (int64_t j = 0; j < n; j++) {
                float m = uniform_half + e[j] * weighted[j]; /* >= 1/(2C): positive and normal */
                sum[j] -= m * log_positive(m);
            }
        }
        for (int64_t j = 0; j < n; j++) out.mixture[j] = sum[j];
    }
}

static float *advance(float *p, int64_t offset) { return p == NULL ? NULL : p + offset; }

/* The summary of logits (batch, classes, pixels) with the given strides (the pixels of one class
 * of one image must be contiguous) into contiguous (batch, pixels) outputs. maximum, argmax and
 * second are all NULL or all set; mixture may be NULL. Returns 0, or -1 when out of memory. */
int oodseg_softmax_summary(const float *logits, int64_t batch, int64_t classes, int64_t pixels,
                           int64_t batch_stride, int64_t class_stride, float temperature,
                           float *maximum, int64_t *argmax, float *second, float *exp_sum, float *entropy,
                           float *mixture) {
    float *buffer = malloc(sizeof(float) * (size_t)classes * BLOCK);
    if (buffer == NULL) return -1;
    const float inv_temperature = 1.0f / temperature;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t start = 0; start < pixels; start += BLOCK) {
            int64_t o = b * pixels + start;
            summary_t out = {advance(maximum, o), advance(second, o), exp_sum + o, entropy + o, advance(mixture, o),
                             argmax == NULL ? NULL : argmax + o};
            summarize_block(logits + b * batch_stride + start, classes, class_stride,
                            pixels - start < BLOCK ? pixels - start : BLOCK, inv_temperature, buffer, out);
        }
    }
    free(buffer);
    return 0;
}
