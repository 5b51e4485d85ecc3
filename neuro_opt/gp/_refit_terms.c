/* The refit's gradient terms and the posterior on a lattice, for a batch of small covariances, in one call.

Why by hand: at every Adam step the refit factors, for each replicate, the noisy covariance of
its unique points (tens of points), inverts it, and sums the inverse over the pairs of each
lattice offset. torch runs each small factor, triangular inverse and product as its own LAPACK
call, with per-call and per-op costs several times the arithmetic at these sizes; nothing in
torch, scipy or MKL's exported routines factors a batch of small matrices in one call. This
file does the same algebra (the engine's padded algebra, tested equal) for LANES replicates at a
time in SIMD lanes, in one call for the batch; the posterior after each query reuses its factor. Built by setup.py (an optional extension: where it
is missing, neuro_opt/gp/refit_terms.py says so and the engine keeps its torch path).

Layout: every array is C-contiguous float64 / int64 as torch hands it; row-major matrices.
*/
#include <math.h>
#include <stdint.h>

#define LANES 8 /* replicates per pass: every step below runs on LANES replicates at once */
/* LANES doubles; GCC lowers the arithmetic to the CPU's SIMD; aligned(8): any double buffer will do */
typedef double vec __attribute__((vector_size(LANES * sizeof(double)), aligned(8)));
/* each pass is compiled for AVX-512, AVX2 and the x86-64 baseline, picked at load time; no FMA
   contraction (setup.py), so every clone gives the same bits */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define INLINE static inline __attribute__((always_inline))
#define CHUNK 128 /* points per pass of the posterior's triangular solve */

/* Replicates idx[0..nl) (nl <= LANES) are padded to m = their largest size with the identity (the
   padded covariance's own padding: 0 off the diagonal, 1 on it), which changes no value of a real
   slot. L (m x m vec, lower triangle) gets Kn's Cholesky factor; bad[l] = k + 1 when lane l's
   leading (k + 1) x (k + 1) block is not positive definite (its pivot is then set to 1). */
INLINE void factor(int64_t nl, const int64_t *idx, int64_t m, int64_t U, int64_t T, const int64_t *bins,
                   const double *table, const double *diag, vec *L, int64_t *bad) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j <= i; j++) {
            vec v;
            for (int l = 0; l < LANES; l++) {
                const int64_t q = idx[l < nl ? l : 0];
                v[l] = l < nl ? table[q * T + bins[(q * U + i) * U + j]] + (i == j ? diag[q * U + i] : 0.0)
                              : (i == j ? 1.0 : 0.0);
            }
            L[i * m + j] = v;
        }
    for (int l = 0; l < LANES; l++) bad[l] = 0;
    /* Cholesky-Banachiewicz, row by row: L[i][j] = (Kn[i][j] - L[i][:j] . L[j][:j]) / L[j][j] */
    for (int64_t i = 0; i < m; i++) {
        vec *Li = L + i * m;
        for (int64_t j = 0; j < i; j++) {
            const vec *Lj = L + j * m;
            vec s = Li[j];
            for (int64_t k = 0; k < j; k++) s -= Li[k] * Lj[k];
            Li[j] = s / Lj[j];
        }
        vec s = Li[i];
        for (int64_t k = 0; k < i; k++) s -= Li[k] * Li[k];
        for (int l = 0; l < LANES; l++) {
            if (!(s[l] > 0.0)) {
                if (!bad[l]) bad[l] = i + 1;
                s[l] = 1.0;
            }
            s[l] = sqrt(s[l]);
        }
        Li[i] = s;
    }
}

/* y = L^-1 r (r[q] per lane, 0 in empty lanes) */
INLINE void forward(int64_t nl, const int64_t *idx, int64_t m, int64_t U, const double *r, const vec *L, vec *y) {
    for (int64_t i = 0; i < m; i++) {
        vec s;
        for (int l = 0; l < LANES; l++) s[l] = l < nl ? r[idx[l] * U + i] : 0.0;
        for (int64_t k = 0; k < i; k++) s -= L[i * m + k] * y[k];
        y[i] = s / L[i * m + i];
    }
}

CLONES static void refit_group(int64_t nl, const int64_t *idx, int64_t m, int64_t U, int64_t T,
                               const int64_t *n_slots, const int64_t *bins, const double *table, const double *diag,
                               const double *r, double *Wb, double *dW, double *alpha, double *half_logdet,
                               int64_t *status, vec *L, vec *M, vec *a) {
    int64_t bad[LANES];
    factor(nl, idx, m, U, T, bins, table, diag, L, bad);
    /* alpha: L y = r, then L^T alpha = y */
    forward(nl, idx, m, U, r, L, a);
    for (int64_t i = m - 1; i >= 0; i--) {
        vec s = a[i];
        for (int64_t k = i + 1; k < m; k++) s -= L[k * m + i] * a[k];
        a[i] = s / L[i * m + i];
    }
    /* M = L^-1, row by row: M[i][:i] = -(sum_{k<i} L[i][k] M[k][:k+1]) / L[i][i], M[i][i] = 1 / L[i][i] */
    const vec zero = {0}, one = zero + 1.0;
    for (int64_t i = 0; i < m; i++) {
        vec *Mi = M + i * m;
        for (int64_t j = 0; j < i; j++) Mi[j] = zero;
        for (int64_t k = 0; k < i; k++) {
            const vec c = L[i * m + k];
            const vec *Mk = M + k * m;
            for (int64_t j = 0; j <= k; j++) Mi[j] += c * Mk[j];
        }
        const vec inv = one / L[i * m + i];
        for (int64_t j = 0; j < i; j++) Mi[j] *= -inv;
        Mi[i] = inv;
    }
    /* Kn^-1 = M^T M, lower triangle into L: Kinv[i][:i+1] = sum_{k >= i} M[k][i] M[k][:i+1] */
    for (int64_t i = 0; i < m; i++) {
        vec *Ki = L + i * m;
        for (int64_t j = 0; j <= i; j++) Ki[j] = zero;
        for (int64_t k = i; k < m; k++) {
            const vec c = M[k * m + i];
            const vec *Mk = M + k * m;
            for (int64_t j = 0; j <= i; j++) Ki[j] += c * Mk[j];
        }
    }
    /* per replicate: log-determinant, alpha, and W = alpha alpha^T - Kn^-1 summed per bin over both
       orders of every pair (its padding diagonal, -1 each, goes to the padding bin T - 1) */
    for (int l = 0; l < nl; l++) {
        const int64_t q = idx[l], n = n_slots[q];
        double *wq = Wb + q * T, *aq = alpha + q * U, *dwq = dW + q * U;
        status[q] = bad[l];
        double logdet = 0.0;
        for (int64_t i = 0; i < n; i++) logdet += log(M[i * m + i][l]);
        half_logdet[q] = -logdet;
        for (int64_t t = 0; t < T; t++) wq[t] = 0.0;
        for (int64_t i = 0; i < n; i++) aq[i] = a[i][l];
        for (int64_t i = n; i < U; i++) aq[i] = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const int64_t *bi = bins + (q * U + i) * U;
            const vec *Ki = L + i * m;
            for (int64_t j = 0; j < i; j++) wq[bi[j]] += 2.0 * (aq[i] * aq[j] - Ki[j][l]);
            dwq[i] = aq[i] * aq[i] - Ki[i][l];
            wq[bi[i]] += dwq[i];
        }
        for (int64_t i = n; i < U; i++) dwq[i] = -1.0;
        wq[T - 1] -= (double)(U - n);
    }
}

/* The posterior's two sums at every point p: with v = L^-1 k_p (k_p[i] = table[q][cross[q][p][i]]) and
   y = L^-1 r, yv[q][p] = y . v and vv[q][p] = v . v (mean = prior + yv, variance = outputscale - vv). */
CLONES static void posterior_group(int64_t nl, const int64_t *idx, int64_t m, int64_t U, int64_t T, int64_t P,
                                   int64_t cap, const int64_t *bins, const double *table, const double *diag,
                                   const double *r, const int64_t *cross, double *yv, double *vv, int64_t *status,
                                   vec *L, vec *y, vec *V) {
    int64_t bad[LANES];
    factor(nl, idx, m, U, T, bins, table, diag, L, bad);
    forward(nl, idx, m, U, r, L, y);
    for (int l = 0; l < nl; l++) status[idx[l]] = bad[l];
    for (int64_t p0 = 0; p0 < P; p0 += CHUNK) {
        const int64_t w = P - p0 < CHUNK ? P - p0 : CHUNK;
        for (int64_t i = 0; i < m; i++) {
            vec *Vi = V + i * CHUNK;
            for (int64_t p = 0; p < w; p++)
                for (int l = 0; l < LANES; l++) {
                    const int64_t q = idx[l < nl ? l : 0];
                    Vi[p][l] = l < nl ? table[q * T + cross[(q * P + p0 + p) * cap + i]] : 0.0;
                }
            for (int64_t k = 0; k < i; k++) {
                const vec c = L[i * m + k];
                const vec *Vk = V + k * CHUNK;
                for (int64_t p = 0; p < w; p++) Vi[p] -= c * Vk[p];
            }
            const vec d = L[i * m + i];
            for (int64_t p = 0; p < w; p++) Vi[p] /= d;
        }
        for (int64_t p = 0; p < w; p++) {
            vec sy = {0}, sv = {0};
            for (int64_t i = 0; i < m; i++) {
                sy += y[i] * V[i * CHUNK + p];
                sv += V[i * CHUNK + p] * V[i * CHUNK + p];
            }
            for (int l = 0; l < nl; l++) {
                yv[idx[l] * P + p0 + p] = sy[l];
                vv[idx[l] * P + p0 + p] = sv[l];
            }
        }
    }
}

/* order: the replicates sorted by size (counting sort; ties keep their order) */
static void by_size(int64_t b, int64_t U, const int64_t *n_slots, int64_t *order) {
    int64_t start[U + 2];
    for (int64_t n = 0; n <= U + 1; n++) start[n] = 0;
    for (int64_t q = 0; q < b; q++) start[n_slots[q] + 1]++;
    for (int64_t n = 0; n <= U; n++) start[n + 1] += start[n];
    for (int64_t q = 0; q < b; q++) order[start[n_slots[q]]++] = q;
}

/* The refit's terms. For each replicate q < b with n = n_slots[q] unique points (the first n of U
   slots; bins and diag padded as the engine pads them):
     Kn[i][j] = table[q][bins[q][i][j]] + (i == j) * diag[q][i]
   and, with alpha = Kn^-1 r[q] and W = alpha alpha^T - Kn^-1:
     Wb[q][t]       sum of W[i][j] over the pairs (i, j) (both orders) of bin t; the padding bin
                    T - 1 gets -1 per padding slot, as the padded algebra gives
     dW[q][i]       W[i][i]; -1 at padding slots
     alpha[q][i]    0 at padding slots
     half_logdet[q] sum_i log L[i][i]
     status[q]      0, or k + 1 when the leading (k + 1) x (k + 1) block is not positive definite
                    (that replicate's other outputs are then meaningless).
   Replicates are grouped LANES at a time by size; each one's arithmetic is the same whatever its
   group (lane-wise, in a fixed order). work: (2 U U + U) LANES doubles. */
void refit_terms(int64_t b, int64_t U, int64_t T, const int64_t *n_slots, const int64_t *bins,
                 const double *table, const double *diag, const double *r, double *Wb, double *dW,
                 double *alpha, double *half_logdet, int64_t *status, double *work) {
    int64_t order[b > 0 ? b : 1];
    by_size(b, U, n_slots, order);
    for (int64_t g = 0; g < b; g += LANES) {
        const int64_t nl = b - g < LANES ? b - g : LANES;
        const int64_t m = n_slots[order[g + nl - 1]];
        refit_group(nl, order + g, m, U, T, n_slots, bins, table, diag, r, Wb, dW, alpha, half_logdet, status,
                    (vec *)work, (vec *)work + U * U, (vec *)work + 2 * U * U);
    }
}

/* The posterior's sums at all P points (see posterior_group), from the same Kn as refit_terms;
   cross[q][p][i] (row stride cap >= U) is the offset bin of point p and slot i, the padding bin at
   padding slots. status as refit_terms. work: (U U + U + U CHUNK) LANES doubles. */
void posterior_terms(int64_t b, int64_t U, int64_t T, int64_t P, int64_t cap, const int64_t *n_slots,
                     const int64_t *bins, const double *table, const double *diag, const double *r,
                     const int64_t *cross, double *yv, double *vv, int64_t *status, double *work) {
    int64_t order[b > 0 ? b : 1];
    by_size(b, U, n_slots, order);
    for (int64_t g = 0; g < b; g += LANES) {
        const int64_t nl = b - g < LANES ? b - g : LANES;
        const int64_t m = n_slots[order[g + nl - 1]];
        posterior_group(nl, order + g, m, U, T, P, cap, bins, table, diag, r, cross, yv, vv, status, (vec *)work,
                        (vec *)work + U * U, (vec *)work + U * U + U);
    }
}
