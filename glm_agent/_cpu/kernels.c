/* int4 and int8 weights times bfloat16 activations on AVX-512 BF16 CPUs: glm-agent's decode kernels.
 *
 * Built at first use by glm_agent/_cpu/native.py (cc -O3 -fopenmp; OpenMP is the
 * libgomp torch already loaded, so the kernel shares torch's thread pool).
 *
 * int4 weight layout ("tiled int4"), made by native.tile_int4 from the portable layout:
 *   q       uint8 [N/4][K/64][4][32]  the 4 rows of a tile, 64 inputs at a time: byte j holds
 *                                     input 64c + j in its low nibble and 64c + 32 + j in its high one
 *   scales  bfloat16 [N/4][G][4]      G = K / group
 *   zeros   bfloat16 [N/4][G][4]
 * so the weights are one sequential stream. With w = (q - 8) * scale + zero,
 *   y[n] = sum_g scale[n,g] * sum_{k in g} (q[n,k] - 8) x[k]  +  zero[n,g] * sum_{k in g} x[k]
 * The inner sums are exact products of small integers and bfloat16 values accumulated in
 * float32 (vdpbf16ps), so the result is the dequantized product up to summation order.
 *
 * A few activation rows at once (decoding several sequences in one step): each tile is read once and
 * each chunk of its codes unpacked once for up to MB rows (tile_dot_rows, tile_dot_int8_rows). Per
 * output the operations and their order are the one-row kernel's, so a row's result does not depend
 * on the rows beside it: a sequence decodes to the same bits alone or in a batch.
 *
 * int8 weight layout ("tiled int8"), made by native.tile_int8:
 *   q       int8 [N/4][K/64][4][64]   the 4 rows of a tile, 64 inputs at a time
 *   scales  bfloat16 [N]              y[n] = scale[n] * sum_k q[n,k] x[k], summed in float32
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 4  /* rows per tile */
#define PREFETCH 2048  /* bytes ahead of the stream */
#define MB 4  /* activation rows multiplied per pass over a tile (a few rows: batched decoding) */
/* Tiles a thread takes at a time: handed out as threads come free (not split up front), so a thread
 * the OS takes away for a while (another busy program) does not hold up the whole product. */
#define SHARE 16

int glm_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
}

int glm_int4_rows_per_tile(void) { return ROWS; }

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

/* One tile (ROWS rows) against one activation row: out[r] for r < ROWS. */
static void tile_dot(const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, const uint16_t *x,
                     const float *xsum, int64_t k, int64_t group, float out[ROWS]) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    /* vpermw table: bf16(v - 8) for v = 0..15 (twice: the index uses 5 bits) */
    static const uint16_t table[32] = {
        0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000,
        0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040,
        0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0};
    const __m512i lut = _mm512_loadu_si512(table);
    const int64_t chunks = k / 64, units_per_group = group / 32;
    __m512 acc[ROWS], part[ROWS];
    float zsum[ROWS];
    for (int r = 0; r < ROWS; r++) {
        acc[r] = _mm512_setzero_ps();
        part[r] = _mm512_setzero_ps();
        zsum[r] = 0.0f;
    }
    for (int64_t c = 0; c < chunks; c++) {
        const uint8_t *qc = q + c * ROWS * 32;
        _mm_prefetch((const char *)(qc + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 64), _MM_HINT_T0);
        const __m512bh xl = (__m512bh)_mm512_loadu_si512(x + 64 * c);
        const __m512bh xh = (__m512bh)_mm512_loadu_si512(x + 64 * c + 32);
        for (int r = 0; r < ROWS; r++) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(qc + 32 * r));
            const __m512i lo = _mm512_cvtepu8_epi16(_mm256_and_si256(b, nibble));
            const __m512i hi = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), nibble));
            part[r] = _mm512_dpbf16_ps(part[r], (__m512bh)_mm512_permutexvar_epi16(lo, lut), xl);
            if (units_per_group == 1) { /* groups of 32: the low half ends group 2c */
                const int64_t g = 2 * c;
                acc[r] = _mm512_fmadd_ps(part[r], _mm512_set1_ps(bf16_to_float(scales[g * ROWS + r])), acc[r]);
                zsum[r] += bf16_to_float(zeros[g * ROWS + r]) * xsum[g];
                part[r] = _mm512_setzero_ps();
            }
            part[r] = _mm512_dpbf16_ps(part[r], (__m512bh)_mm512_permutexvar_epi16(hi, lut), xh);
        }
        if ((2 * c + 2) % units_per_group == 0) { /* a group ends with this chunk */
            const int64_t g = (2 * c + 2) / units_per_group - 1;
            for (int r = 0; r < ROWS; r++) {
                acc[r] = _mm512_fmadd_ps(part[r], _mm512_set1_ps(bf16_to_float(scales[g * ROWS + r])), acc[r]);
                zsum[r] += bf16_to_float(zeros[g * ROWS + r]) * xsum[g];
                part[r] = _mm512_setzero_ps();
            }
        }
    }
    for (int r = 0; r < ROWS; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + zsum[r];
}

/* ROWS tile rows against mr (<= MB) activation rows: each chunk's codes are unpacked once and used for
 * every activation row. Per (tile row, activation row) the operations and their order are tile_dot's,
 * so each result is bit-identical to the one-row product. Inlined with a constant mr (see the switch). */
static inline __attribute__((always_inline)) void tile_dot_rows(
    const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, const uint16_t *x, const float *xsum,
    const int mr, int64_t k, int64_t group, int64_t groups, float *out /* [mr][ROWS] */) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    static const uint16_t table[32] = {
        0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000,
        0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040,
        0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0};
    const __m512i lut = _mm512_loadu_si512(table);
    const int64_t chunks = k / 64, units_per_group = group / 32;
    for (int r0 = 0; r0 < ROWS; r0 += 2) { /* two tile rows at a time: their accumulators stay in registers */
        __m512 acc[2][MB], part[2][MB];
        float zsum[2][MB];
        for (int r = 0; r < 2; r++)
            for (int m = 0; m < mr; m++) {
                acc[r][m] = _mm512_setzero_ps();
                part[r][m] = _mm512_setzero_ps();
                zsum[r][m] = 0.0f;
            }
        for (int64_t c = 0; c < chunks; c++) {
            const uint8_t *qc = q + c * ROWS * 32 + 32 * r0;
            _mm_prefetch((const char *)(qc + PREFETCH), _MM_HINT_T0);
            for (int r = 0; r < 2; r++) {
                const __m256i b = _mm256_loadu_si256((const __m256i *)(qc + 32 * r));
                const __m512bh wl = (__m512bh)_mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(_mm256_and_si256(b, nibble)), lut);
                const __m512bh wh = (__m512bh)_mm512_permutexvar_epi16(
                    _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), nibble)), lut);
                for (int m = 0; m < mr; m++) {
                    const uint16_t *xm = x + m * k + 64 * c;
                    part[r][m] = _mm512_dpbf16_ps(part[r][m], wl, (__m512bh)_mm512_loadu_si512(xm));
                    if (units_per_group == 1) {
                        const int64_t g = 2 * c;
                        acc[r][m] = _mm512_fmadd_ps(part[r][m], _mm512_set1_ps(bf16_to_float(scales[g * ROWS + r0 + r])), acc[r][m]);
                        zsum[r][m] += bf16_to_float(zeros[g * ROWS + r0 + r]) * xsum[m * groups + g];
                        part[r][m] = _mm512_setzero_ps();
                    }
                    part[r][m] = _mm512_dpbf16_ps(part[r][m], wh, (__m512bh)_mm512_loadu_si512(xm + 32));
                }
            }
            if ((2 * c + 2) % units_per_group == 0) {
                const int64_t g = (2 * c + 2) / units_per_group - 1;
                for (int r = 0; r < 2; r++) {
                    const __m512 scale = _mm512_set1_ps(bf16_to_float(scales[g * ROWS + r0 + r]));
                    const float zero = bf16_to_float(zeros[g * ROWS + r0 + r]);
                    for (int m = 0; m < mr; m++) {
                        acc[r][m] = _mm512_fmadd_ps(part[r][m], scale, acc[r][m]);
                        zsum[r][m] += zero * xsum[m * groups + g];
                        part[r][m] = _mm512_setzero_ps();
                    }
                }
            }
        }
        for (int r = 0; r < 2; r++)
            for (int m = 0; m < mr; m++) out[m * ROWS + r0 + r] = _mm512_reduce_add_ps(acc[r][m]) + zsum[r][m];
    }
}

/* The same with all four tile rows in one pass, for 2 or 3 activation rows: each chunk's x is loaded once
 * for the four rows, the partial sums and x stay in registers and the group sums in memory (touched once a
 * group). Measured at 27392x4096, 2 threads: 2 rows 1.3x and 3 rows 1.8x one row's cost (pair by pair:
 * 2.4x and 2.2x); for 4 rows the pair-by-pair pass above is faster (its partial sums would not fit). */
static inline __attribute__((always_inline)) void tile_dot_rows_all(
    const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, const uint16_t *x, const float *xsum,
    const int mr, int64_t k, int64_t group, int64_t groups, float *out /* [mr][ROWS] */) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    static const uint16_t table[32] = {
        0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000,
        0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040,
        0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0};
    const __m512i lut = _mm512_loadu_si512(table);
    const int64_t chunks = k / 64, units_per_group = group / 32;
    /* the group sums live in memory (touched once a group); the partial sums and x stay in registers */
    float acc[ROWS][MB][16] __attribute__((aligned(64)));
    __m512 part[ROWS][MB];
    float zsum[ROWS][MB];
    for (int r = 0; r < ROWS; r++)
        for (int m = 0; m < mr; m++) {
            _mm512_store_ps(acc[r][m], _mm512_setzero_ps());
            part[r][m] = _mm512_setzero_ps();
            zsum[r][m] = 0.0f;
        }
    for (int64_t c = 0; c < chunks; c++) {
        const uint8_t *qc = q + c * ROWS * 32;
        _mm_prefetch((const char *)(qc + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 64), _MM_HINT_T0);
        __m512bh xl[MB], xh[MB];
        for (int m = 0; m < mr; m++) {
            xl[m] = (__m512bh)_mm512_loadu_si512(x + m * k + 64 * c);
            xh[m] = (__m512bh)_mm512_loadu_si512(x + m * k + 64 * c + 32);
        }
        for (int r = 0; r < ROWS; r++) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(qc + 32 * r));
            const __m512bh wl = (__m512bh)_mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(_mm256_and_si256(b, nibble)), lut);
            const __m512bh wh = (__m512bh)_mm512_permutexvar_epi16(
                _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), nibble)), lut);
            for (int m = 0; m < mr; m++) {
                part[r][m] = _mm512_dpbf16_ps(part[r][m], wl, xl[m]);
                if (units_per_group == 1) {
                    const int64_t g = 2 * c;
                    _mm512_store_ps(acc[r][m], _mm512_fmadd_ps(part[r][m], _mm512_set1_ps(bf16_to_float(scales[g * ROWS + r])), _mm512_load_ps(acc[r][m])));
                    zsum[r][m] += bf16_to_float(zeros[g * ROWS + r]) * xsum[m * groups + g];
                    part[r][m] = _mm512_setzero_ps();
                }
                part[r][m] = _mm512_dpbf16_ps(part[r][m], wh, xh[m]);
            }
        }
        if ((2 * c + 2) % units_per_group == 0) {
            const int64_t g = (2 * c + 2) / units_per_group - 1;
            for (int r = 0; r < ROWS; r++) {
                const __m512 scale = _mm512_set1_ps(bf16_to_float(scales[g * ROWS + r]));
                const float zero = bf16_to_float(zeros[g * ROWS + r]);
                for (int m = 0; m < mr; m++) {
                    _mm512_store_ps(acc[r][m], _mm512_fmadd_ps(part[r][m], scale, _mm512_load_ps(acc[r][m])));
                    zsum[r][m] += zero * xsum[m * groups + g];
                    part[r][m] = _mm512_setzero_ps();
                }
            }
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int m = 0; m < mr; m++) out[m * ROWS + r] = _mm512_reduce_add_ps(_mm512_load_ps(acc[r][m])) + zsum[r][m];
}

/* y[m, n] = sum_k x[m, k] w[n, k] for m < rows, n < n_padded (a multiple of ROWS).
 * x: bfloat16 [rows][k]; y: [rows][n_padded], bfloat16 when out_bf16 else float32.
 * k is a multiple of 64 and of group (32, 64, 128 or 256). Returns 0, or -1 when out of memory. */
int glm_int4_matmul(const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, const uint16_t *x,
                    void *y, int64_t rows, int64_t n_padded, int64_t k, int64_t group, int out_bf16,
                    int threads) {
    const int64_t groups = k / group, tiles = n_padded / ROWS;
    float *xsum = malloc(sizeof(float) * (size_t)(rows * groups));
    if (xsum == NULL) return -1;
    for (int64_t m = 0; m < rows; m++) {
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t i = g * group; i < (g + 1) * group; i++) s += bf16_to_float(x[m * k + i]);
            xsum[m * groups + g] = s;
        }
    }
#pragma omp parallel for schedule(dynamic, SHARE) num_threads(threads)
    for (int64_t t = 0; t < tiles; t++) {
        const uint8_t *qt = q + t * (k / 64) * ROWS * 32;
        const uint16_t *st = scales + t * groups * ROWS, *zt = zeros + t * groups * ROWS;
        for (int64_t m0 = 0; m0 < rows; m0 += MB) { /* the tile stays in cache for the later rows */
            const int64_t mr = rows - m0 < MB ? rows - m0 : MB;
            const uint16_t *xm = x + m0 * k;
            const float *sm = xsum + m0 * groups;
            float out[MB * ROWS];
            switch (mr) { /* a constant row count per call: the accumulators stay in registers */
                case 1: tile_dot(qt, st, zt, xm, sm, k, group, out); break;
                case 2: tile_dot_rows_all(qt, st, zt, xm, sm, 2, k, group, groups, out); break;
                case 3: tile_dot_rows_all(qt, st, zt, xm, sm, 3, k, group, groups, out); break;
                default: tile_dot_rows(qt, st, zt, xm, sm, 4, k, group, groups, out); break;
            }
            for (int64_t m = 0; m < mr; m++)
                for (int r = 0; r < ROWS; r++) {
                    const int64_t at = (m0 + m) * n_padded + t * ROWS + r;
                    if (out_bf16)
                        ((uint16_t *)y)[at] = float_to_bf16(out[m * ROWS + r]);
                    else
                        ((float *)y)[at] = out[m * ROWS + r];
                }
        }
    }
    free(xsum);
    return 0;
}

/* One int8 tile (ROWS rows) against one activation row given in float32. */
static void tile_dot_int8(const int8_t *q, const float *x, int64_t k, float out[ROWS]) {
    __m512 acc[ROWS];
    for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
    const int64_t chunks = k / 64;
    for (int64_t c = 0; c < chunks; c++) {
        const int8_t *qc = q + c * ROWS * 64;
        _mm_prefetch((const char *)(qc + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 128), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 192), _MM_HINT_T0);
        const float *xc = x + 64 * c;
        for (int part = 0; part < 4; part++) {
            const __m512 xv = _mm512_loadu_ps(xc + 16 * part);
            for (int r = 0; r < ROWS; r++) {
                const __m128i b = _mm_loadu_si128((const __m128i *)(qc + 64 * r + 16 * part));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), xv, acc[r]);
            }
        }
    }
    for (int r = 0; r < ROWS; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}

/* int8: each 16 codes converted once, multiplied into every activation row (per tile row and activation
 * row in tile_dot_int8's order: bit-identical to the one-row product). */
static inline __attribute__((always_inline)) void tile_dot_int8_rows(const int8_t *q, const float *x, const int mr,
                                                                     int64_t k, float *out) {
    __m512 acc[ROWS][MB];
    for (int r = 0; r < ROWS; r++)
        for (int m = 0; m < mr; m++) acc[r][m] = _mm512_setzero_ps();
    const int64_t chunks = k / 64;
    for (int64_t c = 0; c < chunks; c++) {
        const int8_t *qc = q + c * ROWS * 64;
        _mm_prefetch((const char *)(qc + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 128), _MM_HINT_T0);
        _mm_prefetch((const char *)(qc + PREFETCH + 192), _MM_HINT_T0);
        for (int part = 0; part < 4; part++) {
            __m512 xv[MB];
            for (int m = 0; m < mr; m++) xv[m] = _mm512_loadu_ps(x + m * k + 64 * c + 16 * part);
            for (int r = 0; r < ROWS; r++) {
                const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qc + 64 * r + 16 * part))));
                for (int m = 0; m < mr; m++) acc[r][m] = _mm512_fmadd_ps(w, xv[m], acc[r][m]);
            }
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int m = 0; m < mr; m++) out[m * ROWS + r] = _mm512_reduce_add_ps(acc[r][m]);
}

/* y[m, n] = scale[n] * sum_k x[m, k] q[n, k]; shapes and outputs as glm_int4_matmul (k a multiple of 64). */
int glm_int8_matmul(const int8_t *q, const uint16_t *scales, const uint16_t *x, void *y, int64_t rows,
                    int64_t n_padded, int64_t k, int out_bf16, int threads) {
    const int64_t tiles = n_padded / ROWS;
    float *xf = malloc(sizeof(float) * (size_t)(rows * k));
    if (xf == NULL) return -1;
    for (int64_t i = 0; i < rows * k; i++) xf[i] = bf16_to_float(x[i]);
#pragma omp parallel for schedule(dynamic, SHARE) num_threads(threads)
    for (int64_t t = 0; t < tiles; t++) {
        const int8_t *qt = q + t * (k / 64) * ROWS * 64;
        for (int64_t m0 = 0; m0 < rows; m0 += MB) {
            const int64_t mr = rows - m0 < MB ? rows - m0 : MB;
            const float *xm = xf + m0 * k;
            float out[MB * ROWS];
            switch (mr) {
                case 1: tile_dot_int8(qt, xm, k, out); break;
                case 2: tile_dot_int8_rows(qt, xm, 2, k, out); break;
                case 3: tile_dot_int8_rows(qt, xm, 3, k, out); break;
                default: tile_dot_int8_rows(qt, xm, 4, k, out); break;
            }
            for (int64_t m = 0; m < mr; m++)
                for (int r = 0; r < ROWS; r++) {
                    const int64_t at = (m0 + m) * n_padded + t * ROWS + r;
                    const float value = out[m * ROWS + r] * bf16_to_float(scales[t * ROWS + r]);
                    if (out_bf16)
                        ((uint16_t *)y)[at] = float_to_bf16(value);
                    else
                        ((float *)y)[at] = value;
                }
        }
    }
    free(xf);
    return 0;
}

/* Dequantized weights for prefill's dense products: rows [4 * first_tile, 4 * (first_tile + tiles))
 * of the tiled int4 weight as bfloat16 [4 * tiles][k], row-major. */
void glm_int4_dequantize(const uint8_t *q, const uint16_t *scales, const uint16_t *zeros, uint16_t *out,
                         int64_t first_tile, int64_t tiles, int64_t k, int64_t group, int threads) {
    const int64_t groups = k / group, chunks = k / 64;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = first_tile; t < first_tile + tiles; t++) {
        const uint8_t *qt = q + t * chunks * ROWS * 32;
        const uint16_t *st = scales + t * groups * ROWS, *zt = zeros + t * groups * ROWS;
        for (int r = 0; r < ROWS; r++) {
            uint16_t *row = out + ((t - first_tile) * ROWS + r) * k;
            for (int64_t c = 0; c < chunks; c++) {
                const uint8_t *bytes = qt + c * ROWS * 32 + 32 * r;
                for (int half = 0; half < 2; half++) { /* low nibbles: inputs 64c..64c+31, high: the next 32 */
                    const int64_t first = 64 * c + 32 * half, g = first / group;
                    const __m512 scale = _mm512_set1_ps(bf16_to_float(st[g * ROWS + r]));
                    const __m512 zero = _mm512_set1_ps(bf16_to_float(zt[g * ROWS + r]));
                    for (int part = 0; part < 2; part++) {
                        const __m128i b = _mm_loadu_si128((const __m128i *)(bytes + 16 * part));
                        const __m128i v = half ? _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f))
                                               : _mm_and_si128(b, _mm_set1_epi8(0x0f));
                        const __m512 codes = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(v),
                                                                                 _mm512_set1_epi32(8)));
                        const __m256bh w = _mm512_cvtneps_pbh(_mm512_fmadd_ps(codes, scale, zero));
                        _mm256_storeu_si256((__m256i *)(row + first + 16 * part), (__m256i)w);
                    }
                }
            }
        }
    }
}

/* The same for the tiled int8 weight (scale per row). */
void glm_int8_dequantize(const int8_t *q, const uint16_t *scales, uint16_t *out, int64_t first_tile,
                         int64_t tiles, int64_t k, int threads) {
    const int64_t chunks = k / 64;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = first_tile; t < first_tile + tiles; t++) {
        const int8_t *qt = q + t * chunks * ROWS * 64;
        for (int r = 0; r < ROWS; r++) {
            uint16_t *row = out + ((t - first_tile) * ROWS + r) * k;
            const __m512 scale = _mm512_set1_ps(bf16_to_float(scales[t * ROWS + r]));
            for (int64_t c = 0; c < chunks; c++) {
                for (int part = 0; part < 4; part++) {
                    const __m128i b = _mm_loadu_si128((const __m128i *)(qt + c * ROWS * 64 + 64 * r + 16 * part));
                    const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), scale);
                    _mm256_storeu_si256((__m256i *)(row + 64 * c + 16 * part), (__m256i)_mm512_cvtneps_pbh(w));
                }
            }
        }
    }
}

/* y[m, n] = sum_k x[m, k] w[n, k] for a plain row-major bfloat16 weight w [n][k] (n a multiple of ROWS,
 * k of 32): bfloat16 decoding, four rows streamed at a time, products summed in float32. */
void glm_bf16_matmul(const uint16_t *w, const uint16_t *x, uint16_t *y, int64_t rows, int64_t n, int64_t k,
                     int threads) {
    const int64_t tiles = n / ROWS;
#pragma omp parallel for schedule(dynamic, SHARE) num_threads(threads)
    for (int64_t t = 0; t < tiles; t++) {
        const uint16_t *wt = w + t * ROWS * k;
        for (int64_t m = 0; m < rows; m++) { /* the tile's rows stay in cache for the later rows of x */
            const uint16_t *xm = x + m * k;
            __m512 acc[ROWS];
            for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
            for (int64_t c = 0; c < k; c += 32) {
                const __m512bh xv = (__m512bh)_mm512_loadu_si512(xm + c);
                for (int r = 0; r < ROWS; r++) {
                    const uint16_t *wr = wt + r * k + c;
                    _mm_prefetch((const char *)(wr + PREFETCH / 2), _MM_HINT_T0);
                    acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(wr), xv);
                }
            }
            for (int r = 0; r < ROWS; r++) y[m * n + t * ROWS + r] = float_to_bf16(_mm512_reduce_add_ps(acc[r]));
        }
    }
}
