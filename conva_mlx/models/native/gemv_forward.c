/* Forward matrix-vector products that arrive as cblas_sgemm to cblas_sgemv.
 *
 * MLX's CPU backend calls cblas_sgemm for every float32 matmul, including the
 * (1 x K) @ (K x N) products of token-by-token decoding. Older OpenBLAS builds (Debian
 * bookworm ships 0.3.21) run those through the general GEMM kernel, about 3.5x slower
 * than SGEMV on the same memory (OpenBLAS 0.3.27+ forwards them itself). Preloaded
 * ahead of the real BLAS, this library rewrites row-major GEMMs with M == 1 or N == 1
 * as one SGEMV and passes every other call through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);

static sgemm_fn real_sgemm;
static sgemv_fn real_sgemv;
static long forwarded_calls;

static void resolve(void) {
    if (!real_sgemm) {
        real_sgemv = (sgemv_fn)dlsym(RTLD_NEXT, "cblas_sgemv");
        real_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    }
}

/* Loaded with dlopen (not LD_PRELOAD), RTLD_NEXT may not reach the real BLAS: the loader
 * hands its two entry points over explicitly before MLX is imported. */
void conva_gemv_bind(void *sgemm, void *sgemv) {
    real_sgemm = (sgemm_fn)sgemm;
    real_sgemv = (sgemv_fn)sgemv;
}

/* How many GEMMs went to GEMV (lets tests and benchmarks see the shim is live). */
long conva_gemv_forwarded(void) { return forwarded_calls; }

static void zero(float *y, int n, int inc) {
    /* beta == 0 means "do not read y" in BLAS; clear it so stale NaNs cannot leak. */
    for (int i = 0; i < n; i++) y[(size_t)i * inc] = 0.0f;
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
    resolve();
    if (order == ROW_MAJOR && real_sgemv && k > 0) {
        if (m == 1 && n > 1) {
            /* c (1 x n) = a (1 x k) . op(b) (k x n): one row of b^T times a */
            int inc_a = trans_a == NO_TRANS ? 1 : lda;
            if (beta == 0.0f) zero(c, n, 1);
            if (trans_b == NO_TRANS)
                real_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, inc_a, beta, c, 1);
            else
                real_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, inc_a, beta, c, 1);
            __atomic_add_fetch(&forwarded_calls, 1, __ATOMIC_RELAXED);
            return;
        }
        if (n == 1 && m > 1) {
            /* c (m x 1) = op(a) (m x k) . b (k x 1) */
            int inc_b = trans_b == NO_TRANS ? ldb : 1;
            if (beta == 0.0f) zero(c, m, ldc);
            if (trans_a == NO_TRANS)
                real_sgemv(ROW_MAJOR, NO_TRANS, m, k, alpha, a, lda, b, inc_b, beta, c, ldc);
            else
                real_sgemv(ROW_MAJOR, TRANS, k, m, alpha, a, lda, b, inc_b, beta, c, ldc);
            __atomic_add_fetch(&forwarded_calls, 1, __ATOMIC_RELAXED);
            return;
        }
    }
    real_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
