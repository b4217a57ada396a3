/* One streaming hop of the neural suppressor, in C.
 *
 * models/ckernel.py owns everything here; this file is the same algorithm
 * as models/neural.py's _fused_step (the torch form, which stays the
 * reference: tests/models/test_ckernel.py holds the two equal), for the
 * architectures the shipped bundles use: any number of fine-structure bins
 * (harm_bins), the band noise-floor input (floor_input), per-bin refinement
 * (fine_bins), warm start, and the pitch filter (the strength pf, 0 leaves
 * it out: a pitch search by correlation over the 40 ms past, at half rate
 * then refined, and RNNoise's comb filter before the gains); no deep filter (df_order 0), no
 * pitch input. Other architectures run the torch step.
 *
 * Why: at one channel the torch step costs about 60 operator dispatches a
 * hop (about 0.32 ms on one thread), ten times its arithmetic. Here a hop
 * is one call: the STFT (a mixed-radix FFT of 480 complex points, packed
 * real), the features, two GRUs and the gains, with channels taken in
 * blocks of QC_BLK so each weight row is read once per block.
 *
 * Plain C, no Python C-API: the Python side fills one struct qc_nn (weights
 * as prepared by _prepare_weights, the state tensors of the suppressor,
 * updated in place, the output buffer, a scratch buffer of qc_nn_scratch()
 * floats) and calls qc_nn_step once per hop. Built by setuptools as an
 * optional extension module (pyproject.toml), loaded with ctypes; it has no
 * PyInit function and is never imported. No allocation, no locks, no I/O.
 */

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Bump when struct qc_nn changes; ckernel.py checks qc_nn_layout. */
#define QC_NN_ABI 5
#define QC_BLK 8    /* channels per block */
#define QC_MAXP 8   /* largest FFT radix */
#define QC_MAXB 128 /* most bands (ckernel.py checks) */
#define QC_DB_LN 0.11512925464970229f /* ln(10) / 20: 10^(x/20) = exp(x * QC_DB_LN) */

struct qc_nn {
    int64_t abi;
    int64_t C, H;          /* channels, hop (the window is 2H, F = H + 1 bins) */
    int64_t nb, kd, hh;    /* bands, unit-norm low bins, GRU units */
    int64_t ed, dd;        /* encoder widths (band features, low band) */
    int64_t nh, nfl, nfine, warm;  /* fine-structure bins, floor input 0/1, refined bins, warm start 0/1 */
    int64_t nfac;          /* radices of the H-point complex FFT */
    const int64_t *fac;
    const float *win;      /* [2H] */
    const float *tw;       /* [H] complex exp(-2 pi i j / H) */
    const float *rtw;      /* [H + 1] complex exp(-2 pi i k / 2H) */
    const int64_t *fe_ptr; /* band energies, by bin (CSR of fb_e [F, nb]): [F + 1] */
    const int64_t *fe_idx; /* band of each weight */
    const float *fe_val;
    const int64_t *fi_ptr; /* interpolation, by bin (CSR of fb_i^T [F, nb]): [F + 1] */
    const int64_t *fi_idx;
    const float *fi_val;
    const float *A, *Bm, *be2;          /* band features: [nb, ed] x2, [ed] */
    const float *Wd, *bd;               /* low band: [2kd, dd], [dd] */
    const float *W6, *W7, *b8, *W9, *b10;      /* GRU 1: [ed|dd, 3hh], [3hh], [hh, 3hh], [3hh] */
    const float *W11, *b12, *W13, *b14;        /* GRU 2 */
    const float *W15, *b16;             /* gains: [hh, nb], [nb] */
    const float *W19, *W20, *b21;       /* refinement: [hh, nfine], [dd, nfine], [nfine] */
    const float *W22;                   /* fine structure: [nh, ed] */
    const float *W23;                   /* level above the floor: [nb, ed] */
    float *m, *u, *fl;                  /* state [C, nb], [C, kd], [C, nb * nfl] */
    uint8_t *fresh;                     /* [C] (warm start) */
    float *h1, *h2, *prev, *ola;        /* [C, hh] x2, [C, H] x2 */
    float *pbuf;                        /* [C, 4H] overlap-added past signal (the pitch search) */
    float *out;                         /* [3, C, H]: output, voice, background */
    float *gr;                          /* [C] gain reduction of this hop, dB */
    float *scratch;                     /* qc_nn_scratch() floats */
    float alpha, le_eps, le_max, xn_max;
    float f_fall, f_rise, f_min, g_min, silent_ms;
    float pf;                           /* pitch filter strength, 0..1 */
    const float *Wp;                    /* pause head [hh] (NULL: the bundle has none) */
    float *pg;                          /* [C, 2] the pause gate, dB (0: open), and the voice level in the pauses */
    const float *pause_db;              /* [C] the gate's depth per channel, dB (0: off) */
    const float *pause_thr;             /* [C] speech probability below which a hop is a pause, per channel */
    float bp;                           /* pause head bias */
    float pause_close;                  /* dB a hop the gate closes */
    float pause_onset, pause_pl_a, pause_pl_none;  /* the onset rule (neural.py's _PAUSE_ONSET_DB, ...) */
    float floor, remix;                 /* mix = max(floor, remix): the gate lowers the floor only */
};

const int64_t qc_nn_layout[4] = {QC_NN_ABI, (int64_t)sizeof(struct qc_nn), (int64_t)offsetof(struct qc_nn, scratch),
                                 QC_BLK};

typedef struct { float r, i; } cpx;

/* ------------------------------------------------------------------ FFT */

static inline cpx cmul(cpx a, cpx b)
{
    cpx o = {a.r * b.r - a.i * b.i, a.r * b.i + a.i * b.r};
    return o;
}

/* out[0..n) = DFT_n of in[0], in[stride], ...; tw: exp(-2 pi i j / M) for
 * the top size M (M / n is a whole number at every level). Decimation in
 * time: p sub-transforms of size m = n / p, then for each k the p values
 * twiddled by W_n^(r k) (index r k M / n < M) go through one p-point DFT
 * (radices 2, 3, 4 and 5 written out, 7 through the table). */
static void cfft(const cpx *in, int64_t stride, cpx *out, int64_t n, const int64_t *fac, const cpx *tw, int64_t M)
{
    const int64_t p = fac[0], m = n / p, s = M / n;
    cpx t[QC_MAXP];
    if (m > 1)
        for (int64_t r = 0; r < p; r++)
            cfft(in + r * stride, stride * p, out + r * m, m, fac + 1, tw, M);
    for (int64_t k = 0; k < m; k++) {
        if (m == 1) {
            for (int64_t r = 0; r < p; r++)
                t[r] = in[r * stride];
        } else {
            t[0] = out[k];
            for (int64_t r = 1; r < p; r++)
                t[r] = k ? cmul(out[r * m + k], tw[r * k * s]) : out[r * m + k];
        }
        cpx *o = out + k;
        if (p == 2) {
            o[0].r = t[0].r + t[1].r; o[0].i = t[0].i + t[1].i;
            o[m].r = t[0].r - t[1].r; o[m].i = t[0].i - t[1].i;
        } else if (p == 4) {
            const float ar = t[0].r + t[2].r, ai = t[0].i + t[2].i, br = t[0].r - t[2].r, bi = t[0].i - t[2].i;
            const float cr = t[1].r + t[3].r, ci = t[1].i + t[3].i;
            const float dr = t[1].i - t[3].i, di = t[3].r - t[1].r;  /* (t1 - t3) * -i */
            o[0].r = ar + cr; o[0].i = ai + ci;
            o[2 * m].r = ar - cr; o[2 * m].i = ai - ci;
            o[m].r = br + dr; o[m].i = bi + di;
            o[3 * m].r = br - dr; o[3 * m].i = bi - di;
        } else if (p == 3) {
            const float h = 0.86602540378443865f;  /* sin(2 pi / 3) */
            const float sr = t[1].r + t[2].r, si = t[1].i + t[2].i, dr = t[1].r - t[2].r, di = t[1].i - t[2].i;
            const float mr = t[0].r - 0.5f * sr, mi = t[0].i - 0.5f * si;
            o[0].r = t[0].r + sr; o[0].i = t[0].i + si;
            o[m].r = mr + h * di; o[m].i = mi - h * dr;      /* + (-i h) d */
            o[2 * m].r = mr - h * di; o[2 * m].i = mi + h * dr;
        } else if (p == 5) {
            const float c1 = 0.30901699437494742f, c2 = -0.80901699437494742f;  /* cos(2 pi / 5), cos(4 pi / 5) */
            const float s1 = 0.95105651629515357f, s2 = 0.58778525229247313f;   /* sin(2 pi / 5), sin(4 pi / 5) */
            const float a1r = t[1].r + t[4].r, a1i = t[1].i + t[4].i, b1r = t[1].r - t[4].r, b1i = t[1].i - t[4].i;
            const float a2r = t[2].r + t[3].r, a2i = t[2].i + t[3].i, b2r = t[2].r - t[3].r, b2i = t[2].i - t[3].i;
            const float u1r = t[0].r + c1 * a1r + c2 * a2r, u1i = t[0].i + c1 * a1i + c2 * a2i;
            const float u2r = t[0].r + c2 * a1r + c1 * a2r, u2i = t[0].i + c2 * a1i + c1 * a2i;
            const float v1r = s1 * b1r + s2 * b2r, v1i = s1 * b1i + s2 * b2i;  /* y1 = u1 - i v1, y4 = u1 + i v1 */
            const float v2r = s2 * b1r - s1 * b2r, v2i = s2 * b1i - s1 * b2i;  /* y2 = u2 - i v2, y3 = u2 + i v2 */
            o[0].r = t[0].r + a1r + a2r; o[0].i = t[0].i + a1i + a2i;
            o[m].r = u1r + v1i; o[m].i = u1i - v1r;
            o[4 * m].r = u1r - v1i; o[4 * m].i = u1i + v1r;
            o[2 * m].r = u2r + v2i; o[2 * m].i = u2i - v2r;
            o[3 * m].r = u2r - v2i; o[3 * m].i = u2i + v2r;
        } else {
            const int64_t sp = M / p;
            for (int64_t q = 0; q < p; q++) {
                float ar = t[0].r, ai = t[0].i;
                int64_t idx = 0;
                for (int64_t r = 1; r < p; r++) {
                    idx += q * sp;
                    if (idx >= M)
                        idx -= M;
                    const cpx w = tw[idx];
                    ar += t[r].r * w.r - t[r].i * w.i;
                    ai += t[r].r * w.i + t[r].i * w.r;
                }
                o[q * m].r = ar;
                o[q * m].i = ai;
            }
        }
    }
}

/* X[0..M] = rfft(x[0..2M)) (numpy / torch convention) through an M-point
 * complex FFT (radices fac, twiddles tw; rtw: exp(-2 pi i k / 2M), k <= M);
 * z: M scratch. */
static void rfft_m(int64_t M, const int64_t *fac, const cpx *tw, const cpx *rtw, const float *x, cpx *X, cpx *z)
{
    cfft((const cpx *)x, 1, z, M, fac, tw, M);
    X[0].r = z[0].r + z[0].i;
    X[0].i = 0.0f;
    X[M].r = z[0].r - z[0].i;
    X[M].i = 0.0f;
    for (int64_t k = 1; k < M; k++) {
        const cpx a = z[k], b = z[M - k];  /* b is conjugated below */
        const float er = 0.5f * (a.r + b.r), ei = 0.5f * (a.i - b.i);   /* (a + conj b) / 2 */
        const float or_ = 0.5f * (a.i + b.i), oi = -0.5f * (a.r - b.r); /* (a - conj b) / 2i */
        const cpx w = rtw[k];
        X[k].r = er + w.r * or_ - w.i * oi;
        X[k].i = ei + w.r * oi + w.i * or_;
    }
}

/* x[0..2M) = irfft(X[0..M], n=2M) (the imaginary parts of X[0] and X[M]
 * are ignored, as pocketfft's c2r does); Z, z: M scratch each. */
static void irfft_m(int64_t M, const int64_t *fac, const cpx *tw, const cpx *rtw, const cpx *X, float *x, cpx *Z,
                    cpx *z)
{
    for (int64_t k = 0; k < M; k++) {
        cpx a = X[k], b = X[M - k];
        if (k == 0) {
            a.i = 0.0f;
            b.i = 0.0f;
        }
        const float er = 0.5f * (a.r + b.r), ei = 0.5f * (a.i - b.i);  /* (a + conj b) / 2 */
        const float dr = 0.5f * (a.r - b.r), di = 0.5f * (a.i + b.i);  /* (a - conj b) / 2 */
        const cpx w = rtw[k];  /* O = d * conj(w) */
        const float or_ = dr * w.r + di * w.i, oi = di * w.r - dr * w.i;
        /* Z = E + i O, conjugated for the inverse through the forward FFT */
        Z[k].r = er - oi;
        Z[k].i = -(ei + or_);
    }
    cfft(Z, 1, z, M, fac, tw, M);
    const float sc = 1.0f / (float)M;
    for (int64_t j = 0; j < M; j++) {
        x[2 * j] = z[j].r * sc;
        x[2 * j + 1] = -z[j].i * sc;
    }
}

/* the frame's transforms (2H real points) */
static void rfft(const struct qc_nn *nn, const float *x, cpx *X, cpx *z)
{
    rfft_m(nn->H, nn->fac, (const cpx *)nn->tw, (const cpx *)nn->rtw, x, X, z);
}

static void irfft(const struct qc_nn *nn, const cpx *X, float *x, cpx *Z, cpx *z)
{
    irfft_m(nn->H, nn->fac, (const cpx *)nn->tw, (const cpx *)nn->rtw, X, x, Z, z);
}

/* ------------------------------------------------------------ pitch */

/* The pitch search of one frame (neural.py's _pitch_search): xw[2H] the
 * windowed frame, pb[4H] the overlap-added past signal ending with it.
 * The lag of 96..2H samples at which the frame (windowed once more) best
 * matches the past, by normalised cross-correlation: at half rate over
 * every lag (FFTs of 2H points), then at full rate over the three lags
 * around the best one. Writes the spectrum Pr[F] of the windowed past
 * frame one period back. ws: pitch_scratch() floats. */
static size_t pitch_scratch(int64_t H) { return (size_t)(14 * H + 8); }

static void half_rate(const float *x, int64_t m, float *y)  /* x[2m] -> y[m], as _half */
{
    for (int64_t i = 0; i < m; i++) {
        const float a = i > 0 ? x[2 * i - 1] : 0.0f, c = 2 * i + 1 < 2 * m ? x[2 * i + 1] : 0.0f;
        y[i] = 0.25f * a + 0.5f * x[2 * i] + 0.25f * c;
    }
}

static void pitch_search(const struct qc_nn *nn, const float *xw, const float *pb, cpx *Pr, float *ws)
{
    const int64_t H = nn->H, N2 = 2 * H, M = H;
    float *a = ws, *b = ws + N2, *c = ws + 2 * N2;       /* [2H] each */
    cpx *S0 = (cpx *)(ws + 3 * N2);                      /* [H + 1] */
    cpx *S1 = S0 + (M + 1);                              /* [H + 1] */
    cpx *z1 = S1 + (M + 1), *z2 = z1 + M;                /* [H] each */
    const int64_t nl = 2 * H - 96 + 1, nd = H - 48 + 1;  /* full-rate and half-rate lags */
    /* half rate: the frame (windowed once more) and the past */
    for (int64_t i = 0; i < N2; i++)
        c[i] = xw[i] * nn->win[i];
    half_rate(c, H, a);
    memset(a + H, 0, (size_t)H * sizeof(float));
    half_rate(pb, N2, b);
    rfft(nn, a, S1, z1);  /* Q, kept in S1 for now */
    rfft(nn, b, S0, z1);
    for (int64_t k = 0; k <= M; k++) {
        const cpx q = S1[k], p = S0[k];
        S0[k].r = q.r * p.r + q.i * p.i;  /* conj(q) p */
        S0[k].i = q.r * p.i - q.i * p.r;
    }
    irfft(nn, S0, a, z1, z2);
    float *e1 = (float *)S1;  /* [nd]: S1 is free now */
    /* the past's energy under the half-rate window at every lag, sum_j w2[j] zd[j + l]^2 with w2[j] =
     * win[2j]^2 = (1 - cos(2 pi j / H)) / 2 (periodic Hann): from running sums of zd^2 and of
     * zd^2 exp(2 pi i k / H) (tw holds exp(-2 pi i j / H)), in double; the same as the torch step's FFTs */
    {
        const cpx *tw = (const cpx *)nn->tw;
        double p0 = 0.0, pr = 0.0, pi = 0.0;
        for (int64_t k = 0; k < H; k++) {
            const double e = (double)b[k] * b[k];
            p0 += e;
            pr += e * tw[k].r;
            pi -= e * tw[k].i;
        }
        for (int64_t l = 0; l < nd; l++) {
            /* sum over m in [l, l + H): e_m (1 - cos(theta (m - l))) / 2, theta = 2 pi / H */
            const cpx w = tw[l % H];  /* exp(-i theta l) */
            const double re = pr * w.r - pi * w.i;  /* Re(exp(-i theta l) * sum e_m exp(i theta m)) */
            e1[l] = (float)(0.5 * (p0 - re));
            const double eo = (double)b[l] * b[l], en = (double)b[l + H] * b[l + H];
            p0 += en - eo;  /* m = l leaves the window, m = l + H (the same phase) enters */
            pr += (en - eo) * w.r;
            pi -= (en - eo) * w.i;
        }
    }
    int64_t ld = 0;
    float top = -INFINITY;
    for (int64_t l = 0; l < nd; l++) {
        const float v = a[l] * (1.0f / sqrtf(fmaxf(e1[l], 0.0f) + 1e-12f));
        if (v > top) {
            top = v;
            ld = l;
        }
    }
    /* full rate, the three lags around it */
    float ex = 0.0f;
    for (int64_t i = 0; i < N2; i++)
        ex += xw[i] * xw[i];
    int64_t lag = 0;
    float best = -INFINITY;
    for (int64_t d = -1; d <= 1; d++) {
        int64_t L = 2 * ld + d;
        L = L < 0 ? 0 : (L > nl - 1 ? nl - 1 : L);
        float c0 = 0.0f, c1 = 0.0f;
        for (int64_t j = 0; j < N2; j++) {
            const float zv = pb[L + j], w = nn->win[j];
            c0 += zv * c[j];
            c1 += zv * zv * (w * w);
        }
        const float v = c0 * (1.0f / sqrtf(ex * c1 + 1e-12f));
        if (v > best) {
            best = v;
            lag = L;
        }
    }
    for (int64_t i = 0; i < N2; i++)
        a[i] = pb[lag + i] * nn->win[i];
    rfft(nn, a, Pr, z1);
}

/* --------------------------------------------------------------- linear */

static void bias_rows(float *restrict out, const float *restrict b, int64_t nc, int64_t N)
{
    for (int64_t c = 0; c < nc; c++)
        memcpy(out + c * N, b, (size_t)N * sizeof(float));
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define QC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QC_CLONES
#endif

/* eight floats (GCC / clang vector extension: one AVX register in the
 * x86-64-v3 clone, two SSE registers in the default one) */
typedef float v8f __attribute__((vector_size(32)));

static inline v8f ld8(const float *p)
{
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

/* out[c, j0:j0+8NV] += x[c, :K] @ W[K, j0:j0+8NV] for NC rows: the NC x NV
 * sums stay in registers (NC * NV = 8) while each weight row is read once
 * for all NC rows. */
#define QC_TILE(NC, NV)                                                                                      \
    QC_CLONES static void tile_##NC##_##NV(float *restrict out, const float *restrict x, int64_t ldx,               \
                                    const float *restrict W, int64_t K, int64_t N, int64_t j0)              \
    {                                                                                                        \
        v8f acc[NC][NV];                                                                                     \
        for (int c = 0; c < NC; c++)                                                                         \
            for (int v = 0; v < NV; v++)                                                                     \
                acc[c][v] = ld8(out + c * N + j0 + 8 * v);                                                   \
        for (int64_t k = 0; k < K; k++) {                                                                    \
            const float *w = W + k * N + j0;                                                                 \
            v8f wv[NV];                                                                                      \
            for (int v = 0; v < NV; v++)                                                                     \
                wv[v] = ld8(w + 8 * v);                                                                      \
            for (int c = 0; c < NC; c++) {                                                                   \
                const float xv = x[c * ldx + k];                                                             \
                for (int v = 0; v < NV; v++)                                                                 \
                    acc[c][v] += xv * wv[v];                                                                 \
            }                                                                                                \
        }                                                                                                    \
        for (int c = 0; c < NC; c++)                                                                         \
            for (int v = 0; v < NV; v++)                                                                     \
                st8(out + c * N + j0 + 8 * v, acc[c][v]);                                                    \
    }
QC_TILE(1, 8)
QC_TILE(1, 4)
QC_TILE(1, 2)
QC_TILE(1, 1)
QC_TILE(2, 4)
QC_TILE(2, 2)
QC_TILE(2, 1)
QC_TILE(4, 2)
QC_TILE(4, 1)

/* out[c, :N] += x[c, :K] @ W[K, N] for nc rows (row stride ldx), in groups
 * of 4, 2 and 1 rows (4 rows x 16 columns read whole cache lines of W),
 * the widest tile that fits first; columns past the last 8 one by one. */
static void mm(float *restrict out, const float *restrict x, int64_t ldx, const float *restrict W, int64_t nc,
               int64_t K, int64_t N)
{
    int64_t c = 0;
    while (c < nc) {
        const int64_t g = nc - c >= 4 ? 4 : nc - c >= 2 ? 2 : 1;
        float *o = out + c * N;
        const float *xc = x + c * ldx;
        int64_t j0 = 0;
        for (int64_t jw = 64 / g; jw >= 8; jw /= 2) {
            for (; j0 + jw <= N; j0 += jw) {
                switch (g * 100 + jw) {
                case 164: tile_1_8(o, xc, ldx, W, K, N, j0); break;
                case 132: tile_1_4(o, xc, ldx, W, K, N, j0); break;
                case 116: tile_1_2(o, xc, ldx, W, K, N, j0); break;
                case 108: tile_1_1(o, xc, ldx, W, K, N, j0); break;
                case 232: tile_2_4(o, xc, ldx, W, K, N, j0); break;
                case 216: tile_2_2(o, xc, ldx, W, K, N, j0); break;
                case 208: tile_2_1(o, xc, ldx, W, K, N, j0); break;
                case 416: tile_4_2(o, xc, ldx, W, K, N, j0); break;
                default: tile_4_1(o, xc, ldx, W, K, N, j0); break;
                }
            }
        }
        for (int64_t r = 0; r < g && j0 < N; r++)
            for (int64_t k = 0; k < K; k++) {
                const float xv = xc[r * ldx + k];
                for (int64_t j = j0; j < N; j++)
                    o[r * N + j] += xv * W[k * N + j];
            }
        c += g;
    }
}

static inline float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float minf_(float a, float b) { return a < b ? a : b; }
static inline float maxf_(float a, float b) { return a > b ? a : b; }

/* tanh through expf (glibc's tanhf is several times slower); within 2e-7
 * of tanhf */
static inline float tanh_(float x) { return 2.0f / (1.0f + expf(-2.0f * x)) - 1.0f; }

/* one GRU cell for nc rows: gi, gh [nc, 3hh] (r, z, n) -> hn */
static void gru(const float *gi, const float *gh, const float *h, float *hn, int64_t nc, int64_t hh)
{
    for (int64_t c = 0; c < nc; c++) {
        const float *a = gi + c * 3 * hh, *b = gh + c * 3 * hh, *hc = h + c * hh;
        float *o = hn + c * hh;
        for (int64_t j = 0; j < hh; j++) {
            const float r = sigm(a[j] + b[j]);
            const float z = sigm(a[hh + j] + b[hh + j]);
            const float n = tanh_(a[2 * hh + j] + r * b[2 * hh + j]);
            o[j] = n + z * (hc[j] - n);
        }
    }
}

int64_t qc_nn_scratch(const struct qc_nn *nn)
{
    const int64_t H = nn->H, F = H + 1;
    const int64_t per = 2 * H /* xw, yt */ + 2 * F /* X */ + F /* P */ + 2 * nn->nb /* lE, g */ + nn->ed /* e */
                        + nn->nh /* lp */ + nn->nb /* floor feature */ + 2 * nn->kd /* xf */ + nn->dd /* d */
                        + 6 * nn->hh /* gi, gh */ + 3 * nn->hh /* h1n, h2n, y */ + F /* G */ + nn->nfine /* q */
                        + 1 /* silent */ + 2 * F /* Pr */ + nn->nb /* Pb */;
    return QC_BLK * per + 4 * H /* FFT */ + (int64_t)pitch_scratch(H) + 64;
}

/* out[nb] = eps + the band sums (fb_e) of the bin values v[F] */
static void band_sum(const struct qc_nn *nn, const float *v, float *out)
{
    for (int64_t b = 0; b < nn->nb; b++)
        out[b] = nn->le_eps;
    for (int64_t f = 0; f <= nn->H; f++)  /* each bin feeds one or two bands */
        for (int64_t z = nn->fe_ptr[f]; z < nn->fe_ptr[f + 1]; z++)
            out[nn->fe_idx[z]] += v[f] * nn->fe_val[z];
}

/* the band values b[nb] interpolated at bin f (fb_i) */
static inline float at_bin(const struct qc_nn *nn, const float *b, int64_t f)
{
    float a = 0.0f;
    for (int64_t z = nn->fi_ptr[f]; z < nn->fi_ptr[f + 1]; z++)
        a += b[nn->fi_idx[z]] * nn->fi_val[z];
    return a;
}

/* channels [c0, c0 + nc) of one hop */
static void block(const struct qc_nn *nn, const float *hop, float mix, int64_t c0, int64_t nc)
{
    const int64_t C = nn->C, H = nn->H, F = H + 1, N2 = 2 * H;
    const int64_t nb = nn->nb, kd = nn->kd, hh = nn->hh, ed = nn->ed, dd = nn->dd, nh = nn->nh, nf = nn->nfine;
    const float alpha = nn->alpha;
    float *s = nn->scratch;
    float *xw = s; s += QC_BLK * N2;
    cpx *X = (cpx *)s; s += QC_BLK * 2 * F;
    float *P = s; s += QC_BLK * F;
    float *lE = s; s += QC_BLK * nb;
    float *g = s; s += QC_BLK * nb;
    float *e = s; s += QC_BLK * ed;
    float *lp = s; s += QC_BLK * nh;
    float *ff = s; s += QC_BLK * nb;
    float *xf = s; s += QC_BLK * 2 * kd;
    float *d = s; s += QC_BLK * dd;
    float *gi = s; s += QC_BLK * 3 * hh;
    float *gh = s; s += QC_BLK * 3 * hh;
    float *h1n = s; s += QC_BLK * hh;
    float *h2n = s; s += QC_BLK * hh;
    float *y = s; s += QC_BLK * hh;
    float *G = s; s += QC_BLK * F;
    float *q = s; s += QC_BLK * nf;
    float *sil = s; s += QC_BLK;
    cpx *Pr = (cpx *)s; s += QC_BLK * 2 * F;
    float *Pb = s; s += QC_BLK * nb;
    float *ws = s; s += pitch_scratch(H);
    cpx *z1 = (cpx *)s; s += 2 * H;
    cpx *z2 = (cpx *)s;
    const float pf = nn->pf;

    /* analysis: window, silence test, spectrum, band levels, running means */
    for (int64_t c = 0; c < nc; c++) {
        const int64_t ch = c0 + c;
        const float *pv = nn->prev + ch * H, *hp = hop + ch * H;
        float *w = xw + c * N2;
        double ss = 0.0;
        for (int64_t i = 0; i < H; i++) {
            w[i] = pv[i] * nn->win[i];
            w[H + i] = hp[i] * nn->win[H + i];
        }
        for (int64_t i = 0; i < N2; i++)
            ss += (double)w[i] * w[i];
        const int silent = (float)(ss / (double)N2) < nn->silent_ms;
        sil[c] = (float)silent;
        cpx *Xc = X + c * F;
        rfft(nn, w, Xc, z1);
        float *Pc = P + c * F;
        for (int64_t f = 0; f < F; f++)
            Pc[f] = Xc[f].r * Xc[f].r + Xc[f].i * Xc[f].i;
        float *l = lE + c * nb;
        band_sum(nn, Pc, l);
        memcpy(Pb + c * nb, l, (size_t)nb * sizeof(float));
        for (int64_t b = 0; b < nb; b++)
            l[b] = minf_(10.0f * log10f(l[b]), nn->le_max);
        /* the past signal, then (pitch filter on) the pitch search */
        float *pb = nn->pbuf + ch * 4 * H;
        memmove(pb, pb + H, (size_t)(2 * H) * sizeof(float));
        for (int64_t i = 0; i < H; i++) {
            pb[2 * H + i] = pb[3 * H + i] + w[i] * nn->win[i];
            pb[3 * H + i] = w[H + i] * nn->win[H + i];
        }
        if (pf > 0.0f)
            pitch_search(nn, w, pb, Pr + c * F, ws);
        float *mc = nn->m + ch * nb, *uc = nn->u + ch * kd;
        if (nn->warm && nn->fresh[ch] && !silent) {  /* warm start: from the first sounding frame */
            memcpy(mc, l, (size_t)nb * sizeof(float));
            memcpy(uc, Pc, (size_t)kd * sizeof(float));
            nn->fresh[ch] = 0;
        }
        if (!silent) {
            for (int64_t b = 0; b < nb; b++)
                mc[b] = alpha * mc[b] + (1.0f - alpha) * l[b];
            for (int64_t k = 0; k < kd; k++)
                uc[k] = alpha * uc[k] + (1.0f - alpha) * Pc[k];
        }
    }
    /* band encoder */
    bias_rows(e, nn->be2, nc, ed);
    mm(e, lE, nb, nn->A, nc, nb, ed);
    mm(e, nn->m + c0 * nb, nb, nn->Bm, nc, nb, ed);  /* the block's running means are contiguous rows */
    if (nh > 0) {
        for (int64_t c = 0; c < nc; c++)
            for (int64_t k = 0; k < nh; k++)
                lp[c * nh + k] = minf_(log10f(P[c * F + k] + nn->le_eps), nn->le_max / 10.0f);
        mm(e, lp, nh, nn->W22, nc, nh, ed);
    }
    if (nn->nfl) {
        for (int64_t c = 0; c < nc; c++) {
            float *flc = nn->fl + (c0 + c) * nb;
            const float *l = lE + c * nb;
            for (int64_t b = 0; b < nb; b++) {
                const float df = l[b] - flc[b];
                if (sil[c] == 0.0f)
                    flc[b] = flc[b] + (df < 0.0f ? nn->f_fall : nn->f_rise) * df;
                ff[c * nb + b] = maxf_(l[b] - flc[b], nn->f_min);
            }
        }
        mm(e, ff, nb, nn->W23, nc, nb, ed);
    }
    for (int64_t i = 0; i < nc * ed; i++)
        e[i] = maxf_(e[i], 0.0f);
    /* low-band encoder: the spectrum of bins 0..kd-1 over its running RMS */
    for (int64_t c = 0; c < nc; c++) {
        const float *uc = nn->u + (c0 + c) * kd;
        const cpx *Xc = X + c * F;
        for (int64_t k = 0; k < kd; k++) {
            const float r = 1.0f / sqrtf(uc[k] + nn->le_eps);
            xf[c * 2 * kd + 2 * k] = minf_(maxf_(Xc[k].r * r, -nn->xn_max), nn->xn_max);
            xf[c * 2 * kd + 2 * k + 1] = minf_(maxf_(Xc[k].i * r, -nn->xn_max), nn->xn_max);
        }
    }
    bias_rows(d, nn->bd, nc, dd);
    mm(d, xf, 2 * kd, nn->Wd, nc, 2 * kd, dd);
    for (int64_t i = 0; i < nc * dd; i++)
        d[i] = maxf_(d[i], 0.0f);
    /* GRUs */
    float *h1 = nn->h1 + c0 * hh, *h2 = nn->h2 + c0 * hh;
    bias_rows(gi, nn->b8, nc, 3 * hh);
    mm(gi, e, ed, nn->W6, nc, ed, 3 * hh);
    mm(gi, d, dd, nn->W7, nc, dd, 3 * hh);
    bias_rows(gh, nn->b10, nc, 3 * hh);
    mm(gh, h1, hh, nn->W9, nc, hh, 3 * hh);
    gru(gi, gh, h1, h1n, nc, hh);
    bias_rows(gi, nn->b12, nc, 3 * hh);
    mm(gi, h1n, hh, nn->W11, nc, hh, 3 * hh);
    bias_rows(gh, nn->b14, nc, 3 * hh);
    mm(gh, h2, hh, nn->W13, nc, hh, 3 * hh);
    gru(gi, gh, h2, h2n, nc, hh);
    for (int64_t c = 0; c < nc; c++) {
        if (sil[c] != 0.0f) {  /* digital silence holds the state */
            memcpy(h1n + c * hh, h1 + c * hh, (size_t)hh * sizeof(float));
            memcpy(h2n + c * hh, h2 + c * hh, (size_t)hh * sizeof(float));
        }
    }
    memcpy(h1, h1n, (size_t)(nc * hh) * sizeof(float));
    memcpy(h2, h2n, (size_t)(nc * hh) * sizeof(float));
    for (int64_t i = 0; i < nc * hh; i++)
        y[i] = h1n[i] + h2n[i];
    /* band gains, interpolated to the bins */
    bias_rows(g, nn->b16, nc, nb);
    mm(g, y, hh, nn->W15, nc, hh, nb);
    for (int64_t i = 0; i < nc * nb; i++)
        g[i] = sigm(g[i]);
    for (int64_t c = 0; c < nc; c++)
        for (int64_t f = 0; f < F; f++)
            G[c * F + f] = at_bin(nn, g + c * nb, f);
    if (nf > 0) {  /* per-bin refinement of the low bins */
        bias_rows(q, nn->b21, nc, nf);
        mm(q, y, hh, nn->W19, nc, hh, nf);
        mm(q, d, dd, nn->W20, nc, dd, nf);
        for (int64_t c = 0; c < nc; c++)
            for (int64_t k = 0; k < nf; k++) {
                const float gl = minf_(maxf_(G[c * F + k], nn->g_min), 1.0f - nn->g_min);
                G[c * F + k] = sigm(logf(gl) - log1pf(-gl) + q[c * nf + k]);
            }
    }
    if (pf > 0.0f)  /* the pitch filter (neural.py's _comb), before the gains */
        for (int64_t c = 0; c < nc; c++) {
            cpx *Xc = X + c * F;
            const cpx *Pc = Pr + c * F;
            const float *pbc = Pb + c * nb, *gc = g + c * nb;
            float *pp = ff + c * nb, *num = lE + c * nb;  /* free by now */
            float r[QC_MAXB];
            for (int64_t b = 0; b < nb; b++) {
                pp[b] = nn->le_eps;
                num[b] = 0.0f;
            }
            for (int64_t f = 0; f < F; f++) {
                const float e = Pc[f].r * Pc[f].r + Pc[f].i * Pc[f].i, x = Xc[f].r * Pc[f].r + Xc[f].i * Pc[f].i;
                for (int64_t z = nn->fe_ptr[f]; z < nn->fe_ptr[f + 1]; z++) {
                    pp[nn->fe_idx[z]] += e * nn->fe_val[z];
                    num[nn->fe_idx[z]] += x * nn->fe_val[z];
                }
            }
            for (int64_t b = 0; b < nb; b++) {
                const float cr = minf_(maxf_(num[b] * (1.0f / sqrtf(pbc[b] * pp[b])), 0.0f), 1.0f);
                const float c2 = cr * cr, g2 = gc[b] * gc[b];
                const float rr = cr > gc[b] ? 1.0f : sqrtf(minf_(maxf_(c2 * (1.0f - g2) / (0.001f + g2 * (1.0f - c2)), 0.0f), 1.0f));
                r[b] = rr * sqrtf(pbc[b] / pp[b]) * pf;
            }
            float *e = P + c * F;  /* free by now: the filtered frame's bin powers */
            for (int64_t f = 0; f < F; f++) {
                const float a = at_bin(nn, r, f);
                Xc[f].r += a * Pc[f].r;
                Xc[f].i += a * Pc[f].i;
                e[f] = Xc[f].r * Xc[f].r + Xc[f].i * Xc[f].i;
            }
            band_sum(nn, e, pp);
            for (int64_t b = 0; b < nb; b++)
                r[b] = sqrtf(pbc[b] / pp[b]);
            for (int64_t f = 0; f < F; f++) {
                const float a = at_bin(nn, r, f);
                Xc[f].r *= a;
                Xc[f].i *= a;
            }
        }
    /* synthesis, overlap-add, stems and mix */
    for (int64_t c = 0; c < nc; c++) {
        const int64_t ch = c0 + c;
        cpx *Xc = X + c * F;
        const float *Gc = G + c * F;
        float ev = 0.0f;  /* the voice spectrum's energy (the gate's onset rule) */
        for (int64_t f = 0; f < F; f++) {
            Xc[f].r *= Gc[f];
            Xc[f].i *= Gc[f];
            ev += Xc[f].r * Xc[f].r + Xc[f].i * Xc[f].i;
        }
        float *yt = xw + c * N2;
        irfft(nn, Xc, yt, z1, z2);
        float *ola = nn->ola + ch * H, *pv = nn->prev + ch * H;
        float *o0 = nn->out + ch * H, *o1 = nn->out + (C + ch) * H, *o2 = nn->out + (2 * C + ch) * H;
        /* the pause gate (neural.py's _pause_gate): its gain, ramped from g0 to g1 across the hop */
        float *pg = nn->pg != NULL ? nn->pg + 2 * ch : NULL;
        const int gate_on = nn->Wp != NULL && (nn->pause_db[ch] > 0.0f || pg[0] < 0.0f);
        const int gated = gate_on && mix != 1.0f;
        float g0 = 1.0f, g1 = 1.0f;
        if (gate_on) {
            float lg = 0.0f;
            const float *yc = y + c * hh;
            for (int64_t k = 0; k < hh; k++)
                lg += yc[k] * nn->Wp[k];
            lg += nn->bp;
            const float p = sigm(lg), t = nn->pause_thr[ch], lv = 10.0f * log10f(ev + nn->le_eps);
            const float cur = pg[0], pl = pg[1];
            const float head = -nn->pause_db[ch] * minf_(maxf_((t - p) / t, 0.0f), 1.0f);
            const float tgt = lv > pl + nn->pause_onset ? 0.0f : head;  /* an onset: open */
            float nw = tgt > cur ? tgt : maxf_(tgt, cur - nn->pause_close);
            float npl = head < 0.0f ? (pl >= nn->pause_pl_none ? lv : pl + nn->pause_pl_a * (lv - pl)) : pl;
            if (sil[c] != 0.0f) {
                nw = cur;
                npl = pl;
            }
            g0 = expf(cur * QC_DB_LN);
            g1 = expf(nw * QC_DB_LN);
            pg[0] = nw;
            pg[1] = npl;
        }
        double ein = 0.0, eout = 0.0;
        for (int64_t i = 0; i < H; i++) {
            const float v = yt[i] * nn->win[i] + ola[i];
            ola[i] = yt[H + i] * nn->win[H + i];
            const float bg = pv[i] - v;
            o1[i] = v;
            o2[i] = bg;
            if (gated) {
                const float gs = g0 + (g1 - g0) * ((float)(i + 1) / (float)H);
                o0[i] = gs * v + maxf_(gs * nn->floor, nn->remix) * bg;
            } else
                o0[i] = mix == 1.0f ? pv[i] : v + mix * bg;
            const float xi = v + bg;
            ein += (double)xi * xi;
            eout += (double)o0[i] * o0[i];
        }
        nn->gr[ch] = (float)(10.0 * log10((ein + 1e-30) / (eout + 1e-30)));
        memcpy(pv, hop + ch * H, (size_t)H * sizeof(float));
    }
}

/* One hop [C, H] of every channel: writes nn->out and nn->gr, updates the
 * state. mix: the background's level in the output (1: the delayed input,
 * exactly). Returns 0, or -1 if the struct was built for another ABI. */
int qc_nn_step(const struct qc_nn *nn, const float *hop, float mix)
{
    if (nn->abi != QC_NN_ABI)
        return -1;
    for (int64_t c0 = 0; c0 < nn->C; c0 += QC_BLK) {
        const int64_t nc = nn->C - c0 < QC_BLK ? nn->C - c0 : QC_BLK;
        block(nn, hop, mix, c0, nc);
    }
    return 0;
}

/* For tests: the packed real FFT and its inverse of one frame of 2H. */
void qc_nn_rfft(const struct qc_nn *nn, const float *x, float *X)
{
    rfft(nn, x, (cpx *)X, (cpx *)nn->scratch);
}

void qc_nn_irfft(const struct qc_nn *nn, const float *X, float *x)
{
    irfft(nn, (const cpx *)X, x, (cpx *)nn->scratch, (cpx *)nn->scratch + nn->H);
}
