/* int4 and int8 weights times activations on AVX-512 BF16 + VNNI CPUs: glm-agent's decode kernels.
 *
 * Built at first use by glm_agent/_cpu/native.py (cc -O3 -fopenmp; OpenMP is the
 * libgomp torch already loaded, so the kernel shares torch's thread pool).
 *
 * int4 weight layout ("paneled int4"), made by native.tile_int4 from the portable layout:
 *   q       uint8 [N/16][K/64][8][64]  16 rows (a panel) by 8 inputs per 64 bytes: byte 4j + i holds row j's
 *                                      input 8b + i in its low nibble and 8b + 4 + i in its high one
 *   scales  bfloat16 [N/16][G][16]     G = K / group
 *   zeros   bfloat16 [N/16][G][16]
 * so the weights are one sequential stream, and a 512-bit register holds 4 inputs of each of 16 rows, one
 * row per 32-bit lane: the layout of vpdpbusd (AVX-512 VNNI), which multiplies them by 4 int8 activations
 * broadcast to every lane. The activations are quantized to int8 once per call, per block of 32 inputs
 * with one float scale each (llama.cpp's q8_0: the int4 x int8 dot products of its q4 formats). With
 * w = (q - 8) * scale + zero and x ~ d * xq,
 *   y[n] = sum_g scale[n,g] * sum_{blocks b in g} d[b] * sum_{k in b} (q[n,k] - 8) xq[k]  +  zero[n,g] * sum_{k in g} x[k]
 * The block sums are exact integers. Against bfloat16 activations this adds the activations' rounding to
 * 8 bits per block (about 0.5% of a product's size on Gaussian activations; the int4 weights' own error is
 * some 10%), and it makes the unpacking (3 instructions per 128 codes) and each activation row's products
 * (1 instruction per 64) cheap: decoding is bound by the weights' read, and a few rows cost little more
 * than one.
 *
 * A few activation rows at once (decoding several sequences in one step, or a prompt's rows): each panel
 * is read once and its codes unpacked once for up to MB4 rows, and kept in cache for the next MB4. Per
 * output the operations and their order are the one-row kernel's, so a row's result does not depend on
 * the rows beside it: a sequence decodes to the same bits alone or in a batch.
 *
 * int8 weight layout ("paneled int8"), made by native.tile_int8:
 *   q       uint8 [N/16][K/64][16][64]  16 rows by 4 inputs per 64 bytes: byte 4j + i holds row j's input
 *                                       4s + i plus 128 (vpdpbusd's first operand is unsigned)
 *   scales  bfloat16 [N]                y[n] = scale[n] * sum_b d[b] * sum_{k in b} q[n,k] xq[k], the
 *                                       activations rounded as for int4 (q8_0 x q8_0, as llama.cpp's)
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 4  /* bfloat16: weight rows per tile */
#define XROWS 4  /* bfloat16: activation rows per pass over a tile */
#define PANEL 16  /* int4, int8: weight rows per panel, one per 32-bit lane */
#define XBLOCK 32  /* activation inputs per int8 scale */
#define MB4 8  /* int4, int8: activation rows multiplied per pass over a panel */
#define PREFETCH 2048  /* bytes ahead of the stream */
/* Tiles (bfloat16; panels: a quarter as many) a thread takes at a time: handed out as threads come free (not split up front), so a thread
 * the OS takes away for a while (another busy program) does not hold up the whole product. */
#define SHARE 16

int glm_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
}

int glm_int4_rows_per_tile(void) { return PANEL; }

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, NaN stays NaN */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The activations of a call quantized to int8 in blocks of XBLOCK inputs (as llama.cpp's q8_0), once per
 * row: x[i] ~ d[b] * xq[i] with d[b] = max |x| / 127 over the block. Per block also -bias * sum(xq) (the
 * unsigned codes' bias, 8 for int4 and 128 for int8, taken off in integers) and per weight group the
 * exact float sum of x (for int4's zeros). */
typedef struct {
    int8_t *xq;    /* [rows][k] */
    float *d;      /* [rows][k / XBLOCK] */
    int32_t *off;  /* [rows][k / XBLOCK]: -bias * sum(xq) over the block */
    float *xsum;   /* [rows][groups] */
} QuantizedRows;

static int quantize_rows(const uint16_t *x, int64_t rows, int64_t k, int64_t group, int32_t bias, QuantizedRows *out) {
    const int64_t blocks = k / XBLOCK, groups = k / group;
    if (rows == 0) return 0;
    out->xq = malloc((size_t)(rows * k));
    out->d = malloc(sizeof(float) * (size_t)(rows * blocks));
    out->off = malloc(sizeof(int32_t) * (size_t)(rows * blocks));
    out->xsum = malloc(sizeof(float) * (size_t)(rows * groups));
    if (!out->xq || !out->d || !out->off || !out->xsum) return -1;
    for (int64_t m = 0; m < rows; m++) {
        for (int64_t g = 0; g < groups; g++) out->xsum[m * groups + g] = 0.0f;
        for (int64_t b = 0; b < blocks; b++) {
            const uint16_t *xb = x + m * k + b * XBLOCK;
            const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)xb)), 16));
            const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(xb + 16))), 16));
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            const float total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            const float inv = amax > 0.0f && total <= FLT_MAX ? 127.0f / amax : 0.0f;
            const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(inv))); /* nearest, ties to even */
            const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(inv)));
            _mm_storeu_si128((__m128i *)(out->xq + m * k + b * XBLOCK), _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128((__m128i *)(out->xq + m * k + b * XBLOCK + 16), _mm512_cvtsepi32_epi8(qhi));
            out->d[m * blocks + b] = total <= FLT_MAX ? amax / 127.0f : NAN; /* a NaN or infinity stays one */
            out->off[m * blocks + b] = -bias * _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            out->xsum[m * groups + b * XBLOCK / group] += _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
        }
    }
    return 0;
}

static void free_rows(QuantizedRows *rows) {
    free(rows->xq);
    free(rows->d);
    free(rows->off);
    free(rows->xsum);
}

static inline __m512 bf16x16_to_ps(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* CALL(n) with n the constant mr (1..MB4): each inlined copy keeps its accumulators in registers. */
#define WITH_CONSTANT_ROWS(mr, CALL)        \
    switch (mr) {                           \
        case 1: CALL(1); break;             \
        case 2: CALL(2); break;             \
        case 3: CALL(3); break;             \
        case 4: CALL(4); break;             \
        case 5: CALL(5); break;             \
        case 6: CALL(6); break;             \
        case 7: CALL(7); break;             \
        default: CALL(8); break;            \
    }

/* A panel's outputs for mr activation rows into y [rows][n_padded] from index first, bfloat16 or float32. */
static void store_rows(const float *out, int64_t mr, void *y, int64_t first, int64_t n_padded, int out_bf16) {
    for (int64_t m = 0; m < mr; m++) {
        const int64_t at = first + m * n_padded;
        if (out_bf16)
            _mm256_storeu_si256((__m256i *)((uint16_t *)y + at), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(out + m * PANEL)));
        else
            _mm512_storeu_ps((float *)y + at, _mm512_loadu_ps(out + m * PANEL));
    }
}

/* One panel (PANEL weight rows, one per 32-bit lane) against mr (<= MB4) activation rows. For each block of 8
 * inputs, 64 bytes: the low nibbles give each lane its row's codes for inputs 0-3, the high nibbles for 4-7,
 * and vpdpbusd multiplies them (unsigned) by the 4 broadcast int8 activations: 64 products an instruction,
 * after 3 instructions of unpacking shared by all rows. Integer sums per activation block (started at the
 * offset -8 * sum(xq)), then scaled in float32 by d, by the weight scale per group, plus zero * sum(x).
 * A row's operations do not depend on mr: its result is the same alone or beside others. Inlined with a
 * constant mr (WITH_CONSTANT_ROWS) so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void panel_dot(
    const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, const QuantizedRows *x, int64_t m0,
    const int mr, int64_t k, int64_t group, float *out /* [mr][PANEL] */) {
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    const int64_t groups = k / group, blocks = k / XBLOCK, steps = XBLOCK / 8, per_group = group / XBLOCK;
    __m512 acc[MB4];
    for (int m = 0; m < mr; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const __m512 scale = bf16x16_to_ps(scales + g * PANEL), zero = bf16x16_to_ps(zeros + g * PANEL);
        for (int64_t b = g * per_group; b < (g + 1) * per_group; b++) {
            __m512i dot[MB4];
            for (int m = 0; m < mr; m++) dot[m] = _mm512_set1_epi32(x->off[(m0 + m) * blocks + b]);
            for (int64_t s = 0; s < steps; s++) {
                const int64_t at = b * XBLOCK + 8 * s; /* first input of this step */
                const uint8_t *qs = q + at * 8;         /* 64 bytes per 8 inputs */
                _mm_prefetch((const char *)(qs + PREFETCH), _MM_HINT_T0);
                const __m512i w = _mm512_loadu_si512(qs);
                const __m512i lo = _mm512_and_si512(w, nibble);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
                for (int m = 0; m < mr; m++) {
                    const int8_t *xm = x->xq + (m0 + m) * k + at;
                    int32_t x0, x1;
                    memcpy(&x0, xm, 4);
                    memcpy(&x1, xm + 4, 4);
                    dot[m] = _mm512_dpbusd_epi32(dot[m], lo, _mm512_set1_epi32(x0));
                    dot[m] = _mm512_dpbusd_epi32(dot[m], hi, _mm512_set1_epi32(x1));
                }
            }
            for (int m = 0; m < mr; m++)
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), _mm512_mul_ps(scale, _mm512_set1_ps(x->d[(m0 + m) * blocks + b])), acc[m]);
        }
        for (int m = 0; m < mr; m++) acc[m] = _mm512_fmadd_ps(zero, _mm512_set1_ps(x->xsum[(m0 + m) * groups + g]), acc[m]);
    }
    for (int m = 0; m < mr; m++) _mm512_storeu_ps(out + m * PANEL, acc[m]);
}

/* y[m, n] = sum_k x[m, k] w[n, k] for m < rows, n < n_padded (a multiple of PANEL), with x quantized to
 * int8 per block of XBLOCK inputs (see quantize_rows). x: bfloat16 [rows][k]; y: [rows][n_padded],
 * bfloat16 when out_bf16 else float32. k is a multiple of 64 and of group (32, 64, 128 or 256).
 * Returns 0, or -1 when out of memory. */
int glm_int4_matmul(const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, const uint16_t *x,
                    void *y, int64_t rows, int64_t n_padded, int64_t k, int64_t group, int out_bf16,
                    int threads) {
    const int64_t groups = k / group, panels = n_padded / PANEL;
    QuantizedRows xr = {0};
    if (quantize_rows(x, rows, k, group, 8, &xr)) {
        free_rows(&xr);
        return -1;
    }
#pragma omp parallel for schedule(dynamic, SHARE / 4) num_threads(threads)
    for (int64_t p = 0; p < panels; p++) {
        const uint8_t *qp = q + p * k * (PANEL / 2); /* k / 2 bytes per weight row */
        const uint16_t *sp = scales + p * groups * PANEL, *zp = zeros + p * groups * PANEL;
        for (int64_t m0 = 0; m0 < rows; m0 += MB4) { /* the panel stays in cache for the later rows */
            const int64_t mr = rows - m0 < MB4 ? rows - m0 : MB4;
            float out[MB4 * PANEL];
#define INT4_ROWS(n) panel_dot(qp, sp, zp, &xr, m0, n, k, group, out)
            WITH_CONSTANT_ROWS(mr, INT4_ROWS);
#undef INT4_ROWS
            store_rows(out, mr, y, (m0 * n_padded) + p * PANEL, n_padded, out_bf16);
        }
    }
    free_rows(&xr);
    return 0;
}

/* int8: one panel (PANEL weight rows, one per 32-bit lane; codes stored plus 128, unsigned) against mr (<= MB4)
 * activation rows quantized as for int4: per 4 inputs 64 bytes, one vpdpbusd per activation row and no
 * unpacking. Integer sums per activation block (started at -128 * sum(xq)), scaled by d per block and by the
 * row's scale at the end. As panel_dot, a row's result does not depend on mr. */
static inline __attribute__((always_inline)) void panel_dot_int8(
    const uint8_t *q, const uint16_t *scales, const QuantizedRows *x, int64_t m0, const int mr, int64_t k,
    float *out /* [mr][PANEL] */) {
    const int64_t blocks = k / XBLOCK, steps = XBLOCK / 4;
    __m512 acc[MB4];
    for (int m = 0; m < mr; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512i dot[MB4];
        for (int m = 0; m < mr; m++) dot[m] = _mm512_set1_epi32(x->off[(m0 + m) * blocks + b]);
        for (int64_t s = 0; s < steps; s++) {
            const int64_t at = b * XBLOCK + 4 * s; /* first input of this step */
            const uint8_t *qs = q + at * PANEL;     /* 64 bytes per 4 inputs */
            _mm_prefetch((const char *)(qs + PREFETCH), _MM_HINT_T0);
            const __m512i w = _mm512_loadu_si512(qs);
            for (int m = 0; m < mr; m++) {
                int32_t x4;
                memcpy(&x4, x->xq + (m0 + m) * k + at, 4);
                dot[m] = _mm512_dpbusd_epi32(dot[m], w, _mm512_set1_epi32(x4));
            }
        }
        for (int m = 0; m < mr; m++)
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), _mm512_set1_ps(x->d[(m0 + m) * blocks + b]), acc[m]);
    }
    const __m512 scale = bf16x16_to_ps(scales);
    for (int m = 0; m < mr; m++) _mm512_storeu_ps(out + m * PANEL, _mm512_mul_ps(acc[m], scale));
}

/* y[m, n] = scale[n] * sum_k x[m, k] q[n, k], x quantized as for int4; shapes and outputs as glm_int4_matmul
 * (k a multiple of 64). */
int glm_int8_matmul(const uint8_t *q, const uint16_t *scales, const uint16_t *x, void *y, int64_t rows,
                    int64_t n_padded, int64_t k, int out_bf16, int threads) {
    const int64_t panels = n_padded / PANEL;
    QuantizedRows xr = {0};
    if (quantize_rows(x, rows, k, k, 128, &xr)) {
        free_rows(&xr);
        return -1;
    }
#pragma omp parallel for schedule(dynamic, SHARE / 4) num_threads(threads)
    for (int64_t p = 0; p < panels; p++) {
        const uint8_t *qp = q + p * k * PANEL;
        const uint16_t *sp = scales + p * PANEL;
        for (int64_t m0 = 0; m0 < rows; m0 += MB4) {
            const int64_t mr = rows - m0 < MB4 ? rows - m0 : MB4;
            float out[MB4 * PANEL];
#define INT8_ROWS(n) panel_dot_int8(qp, sp, &xr, m0, n, k, out)
            WITH_CONSTANT_ROWS(mr, INT8_ROWS);
#undef INT8_ROWS
            store_rows(out, mr, y, (m0 * n_padded) + p * PANEL, n_padded, out_bf16);
        }
    }
    free_rows(&xr);
    return 0;
}

/* Dequantized weights for prefill's dense products: rows [PANEL * first_panel, PANEL * (first_panel + panels))
 * of the paneled int4 weight as bfloat16 [PANEL * panels][k], row-major. */
void glm_int4_dequantize(const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, uint16_t *out,
                         int64_t first_panel, int64_t panels, int64_t k, int64_t group, int threads) {
    const int64_t groups = k / group;
    /* a row's 4 bytes in each of 8 consecutive blocks (64 inputs): 64 bytes apart */
    const __m256i step = _mm256_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448);
    const __m256i nibble = _mm256_set1_epi8(0x0f);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = first_panel; p < first_panel + panels; p++) {
        const uint8_t *qp = q + p * k * (PANEL / 2);
        const uint16_t *sp = scales + p * groups * PANEL, *zp = zeros + p * groups * PANEL;
        for (int64_t c = 0; c < k; c += 64) { /* the panel's 512 bytes for these 64 inputs stay in cache */
            for (int j = 0; j < PANEL; j++) {
                uint16_t *row = out + ((p - first_panel) * PANEL + j) * k;
                /* dword s of the gather: low nibbles = inputs c + 8s + 0..3, high nibbles = c + 8s + 4..7 */
                const __m256i bytes = _mm256_i32gather_epi32((const int *)(qp + c * 8 + 4 * j), step, 1);
                const __m256i lo = _mm256_and_si256(bytes, nibble);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
                const __m256i a = _mm256_unpacklo_epi32(lo, hi), b = _mm256_unpackhi_epi32(lo, hi);
                const __m256i codes[2] = {_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31)};
                for (int half = 0; half < 2; half++) { /* inputs c + 32 * half .. + 31 */
                    const int64_t first = c + 32 * half, g = first / group;
                    const __m512 scale = _mm512_set1_ps(bf16_to_float(sp[g * PANEL + j]));
                    const __m512 zero = _mm512_set1_ps(bf16_to_float(zp[g * PANEL + j]));
                    for (int part = 0; part < 2; part++) {
                        const __m128i v = part ? _mm256_extracti128_si256(codes[half], 1) : _mm256_castsi256_si128(codes[half]);
                        const __m512 w = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(v), _mm512_set1_epi32(8)));
                        _mm256_storeu_si256((__m256i *)(row + first + 16 * part), (__m256i)_mm512_cvtneps_pbh(_mm512_fmadd_ps(w, scale, zero)));
                    }
                }
            }
        }
    }
}

/* The same for the paneled int8 weight (scale per row). */
void glm_int8_dequantize(const uint8_t *q, const uint16_t *scales, uint16_t *out, int64_t first_panel,
                         int64_t panels, int64_t k, int threads) {
    /* a row's 4 bytes in each of 16 consecutive steps (64 inputs): 64 bytes apart */
    const __m512i step = _mm512_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = first_panel; p < first_panel + panels; p++) {
        const uint8_t *qp = q + p * k * PANEL;
        for (int64_t c = 0; c < k; c += 64) {
            for (int j = 0; j < PANEL; j++) {
                uint16_t *row = out + ((p - first_panel) * PANEL + j) * k + c;
                const __m512 scale = _mm512_set1_ps(bf16_to_float(scales[p * PANEL + j]));
                /* 64 codes plus 128: flipping the top bit gives them back signed */
                const __m512i codes = _mm512_xor_si512(_mm512_i32gather_epi32(step, (const int *)(qp + c * PANEL + 4 * j), 1),
                                                       _mm512_set1_epi8((char)0x80));
                int8_t bytes[64] __attribute__((aligned(64)));
                _mm512_store_si512(bytes, codes);
                for (int part = 0; part < 4; part++) {
                    const __m128i b = _mm_load_si128((const __m128i *)(bytes + 16 * part));
                    const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), scale);
                    _mm256_storeu_si256((__m256i *)(row + 16 * part), (__m256i)_mm512_cvtneps_pbh(w));
                }
            }
        }
    }
}

/* A tile (ROWS weight rows) against mr (<= XROWS) activation rows from m0: every weight vector loaded once for
 * all of them (ROWS x mr products per ROWS + mr loads). Per output the operations and their order are the
 * one-row kernel's (vdpbf16ps over the inputs in order, then the lanes summed), so a row's result does not
 * depend on mr or on the rows beside it. Inlined with a constant mr. */
static inline __attribute__((always_inline)) void tile_dot_bf16(
    const uint16_t *wt, const uint16_t *x, int64_t m0, const int mr, int64_t k, uint16_t *y, int64_t n, int64_t col) {
    __m512 acc[XROWS][ROWS];
    for (int m = 0; m < mr; m++)
        for (int r = 0; r < ROWS; r++) acc[m][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < k; c += 32) {
        __m512bh xv[XROWS];
        for (int m = 0; m < mr; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + (m0 + m) * k + c);
        for (int r = 0; r < ROWS; r++) {
            const uint16_t *wr = wt + r * k + c;
            _mm_prefetch((const char *)(wr + PREFETCH / 2), _MM_HINT_T0);
            const __m512bh w = (__m512bh)_mm512_loadu_si512(wr);
            for (int m = 0; m < mr; m++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], w, xv[m]);
        }
    }
    for (int m = 0; m < mr; m++)
        for (int r = 0; r < ROWS; r++) y[(m0 + m) * n + col + r] = float_to_bf16(_mm512_reduce_add_ps(acc[m][r]));
}

/* y[m, n] = sum_k x[m, k] w[n, k] for a plain row-major bfloat16 weight w [n][k] (n a multiple of ROWS,
 * k of 32): products summed in float32, each weight tile streamed once and kept in cache while XROWS
 * activation rows at a time go past it. */
void glm_bf16_matmul(const uint16_t *w, const uint16_t *x, uint16_t *y, int64_t rows, int64_t n, int64_t k,
                     int threads) {
    const int64_t tiles = n / ROWS;
#pragma omp parallel for schedule(dynamic, SHARE) num_threads(threads)
    for (int64_t t = 0; t < tiles; t++) {
        const uint16_t *wt = w + t * ROWS * k;
        for (int64_t m0 = 0; m0 < rows; m0 += XROWS) {
            const int64_t mr = rows - m0 < XROWS ? rows - m0 : XROWS;
#define BF16_ROWS(nr) tile_dot_bf16(wt, x, m0, nr, k, y, n, t * ROWS)
            switch (mr) {
                case 1: BF16_ROWS(1); break;
                case 2: BF16_ROWS(2); break;
                case 3: BF16_ROWS(3); break;
                default: BF16_ROWS(XROWS); break;
            }
#undef BF16_ROWS
        }
    }
}
