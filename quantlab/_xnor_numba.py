"""The compiled XNOR-popcount kernel (numba); imported lazily by :mod:`quantlab.binary_kernel` on first use.

Compiled once and cached on disk (``cache=True``, next to this file or in numba's user cache directory).
"""

import numba
from numba import types
from numba.extending import intrinsic


@intrinsic
def _ctpop(typingctx, x):
    """LLVM's ctpop on a uint64: one POPCNT instruction (vectorised to VPOPCNTQ on AVX-512 CPUs)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen

@numba.njit(cache=True, nogil=True, inline="always")
def _tile(a, w, K, last_mask, out, i0, i1, j0, j1):  # pragma: no cover - compiled
    """out[i0:i1, j0:j1]; four columns at a time share each loaded word of a (register blocking)."""
    W = a.shape[1]
    for i in range(i0, i1):
        j = j0
        while j < j1:
            c0 = c1 = c2 = c3 = 0
            n = min(4, j1 - j)                                  # 4 columns, fewer at the edge
            j_1, j_2, j_3 = j + min(1, n - 1), j + min(2, n - 1), j + min(3, n - 1)
            for k in range(W - 1):
                x = a[i, k]
                c0 += _ctpop(x ^ w[j, k])
                c1 += _ctpop(x ^ w[j_1, k])
                c2 += _ctpop(x ^ w[j_2, k])
                c3 += _ctpop(x ^ w[j_3, k])
            x, k = a[i, W - 1], W - 1                            # the last word: padding bits masked
            c0 += _ctpop((x ^ w[j, k]) & last_mask)
            c1 += _ctpop((x ^ w[j_1, k]) & last_mask)
            c2 += _ctpop((x ^ w[j_2, k]) & last_mask)
            c3 += _ctpop((x ^ w[j_3, k]) & last_mask)
            out[i, j] = K - 2 * c0
            if n > 1:
                out[i, j + 1] = K - 2 * c1
            if n > 2:
                out[i, j + 2] = K - 2 * c2
            if n > 3:
                out[i, j + 3] = K - 2 * c3
            j += 4

@numba.njit(parallel=True, cache=True, nogil=True)
def _gemm_parallel(a, w, K, last_mask, out, tile_m, tile_n):  # pragma: no cover - compiled
    M, N = a.shape[0], w.shape[0]
    tiles_n = (N + tile_n - 1) // tile_n
    for t in numba.prange(((M + tile_m - 1) // tile_m) * tiles_n):   # one tile of outputs per task
        i0, j0 = (t // tiles_n) * tile_m, (t % tiles_n) * tile_n
        _tile(a, w, K, last_mask, out, i0, min(i0 + tile_m, M), j0, min(j0 + tile_n, N))

@numba.njit(cache=True, nogil=True)
def _gemm_serial(a, w, K, last_mask, out, tile_m, tile_n):  # pragma: no cover - compiled
    M, N = a.shape[0], w.shape[0]
    for i0 in range(0, M, tile_m):
        for j0 in range(0, N, tile_n):
            _tile(a, w, K, last_mask, out, i0, min(i0 + tile_m, M), j0, min(j0 + tile_n, N))
