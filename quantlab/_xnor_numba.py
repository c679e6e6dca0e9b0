"""The compiled XNOR-popcount kernel (numba); imported lazily by :mod:`quantlab.binary_kernel` on first use.

Compiled once and cached on disk (``cache=True``, next to this file or in numba's user cache directory).

Layout: each tile of outputs (tile_m rows of a x tile_n rows of w) first copies its rows of w transposed to
(W, tile_n) (words x columns) with the padding bits of the last word zeroed (a's two current rows likewise),
so that for one word index k the words of consecutive columns are contiguous: the copy is done in parallel,
in cache, and makes any padding harmless. The innermost loop runs over columns: it XORs four words of a
(broadcast) with 8 columns at once, popcounts them (AVX-512 VPOPCNTQ where the CPU has it; numba compiles
for the host CPU) and adds the four counts into per-column counters, so the counters are loaded and stored
once per 4 popcounts. No horizontal sum, and each loaded word of w serves two rows of a.
"""

import numba
import numpy as np
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
def _count4(x0, x1, wt, k, c0, c1):  # pragma: no cover - compiled
    """c0[j] += sum over the words k..k+3 of popcount(x0[k+q] ^ wt[k+q, j]); c1 likewise for row x1.

    Four words of K per counter update: the counters (in memory) are loaded and stored once per 4 popcounts.
    """
    a0, a1, a2, a3 = x0[k], x0[k + 1], x0[k + 2], x0[k + 3]
    b0, b1, b2, b3 = x1[k], x1[k + 1], x1[k + 2], x1[k + 3]
    w0, w1, w2, w3 = wt[k], wt[k + 1], wt[k + 2], wt[k + 3]
    for j in range(c0.shape[0]):
        u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
        c0[j] += _ctpop(a0 ^ u0) + _ctpop(a1 ^ u1) + _ctpop(a2 ^ u2) + _ctpop(a3 ^ u3)
        c1[j] += _ctpop(b0 ^ u0) + _ctpop(b1 ^ u1) + _ctpop(b2 ^ u2) + _ctpop(b3 ^ u3)


@numba.njit(cache=True, nogil=True, inline="always")
def _count1(x0, x1, wt, k, c0, c1):  # pragma: no cover - compiled
    """c0[j] += popcount(x0[k] ^ wt[k, j]), c1 likewise: the remainder words (W mod 4)."""
    a0, b0, w0 = x0[k], x1[k], wt[k]
    for j in range(c0.shape[0]):
        u = w0[j]
        c0[j] += _ctpop(a0 ^ u)
        c1[j] += _ctpop(b0 ^ u)


@numba.njit(cache=True, nogil=True, inline="always")
def _tile(a, w, K, last_mask, out, i0, i1, j0, j1):  # pragma: no cover - compiled
    """out[i0:i1, j0:j1], two rows of a at a time, on masked copies (padding bits zeroed in both operands)."""
    W, n = a.shape[1], j1 - j0
    wt = np.empty((W, n), dtype=np.uint64)                       # this tile of w transposed to (W, n)
    for j in range(n):
        for k in range(W):
            wt[k, j] = w[j0 + j, k]
        wt[W - 1, j] &= last_mask
    x = np.empty((2, W), dtype=np.uint64)                        # the two current rows of a, masked
    c = np.empty((2, n), dtype=np.int64)                         # their counters, one per column
    W4 = W - W % 4
    for i in range(i0, i1, 2):
        i_b = min(i + 1, i1 - 1)                                 # an odd last row is computed twice, stored once
        x[0, :] = a[i]
        x[1, :] = a[i_b]
        x[0, W - 1] &= last_mask
        x[1, W - 1] &= last_mask
        c[:] = 0
        for k in range(0, W4, 4):
            _count4(x[0], x[1], wt, k, c[0], c[1])
        for k in range(W4, W):
            _count1(x[0], x[1], wt, k, c[0], c[1])
        for j in range(n):
            out[i, j0 + j] = K - 2 * c[0, j]
            out[i_b, j0 + j] = K - 2 * c[1, j]


@numba.njit(parallel=True, cache=True, nogil=True)
def _gemm_parallel(a, w, K, last_mask, out, tile_m, tile_n):  # pragma: no cover - compiled
    M, N = a.shape[0], w.shape[0]
    tiles_n = (N + tile_n - 1) // tile_n
    for t in numba.prange(((M + tile_m - 1) // tile_m) * tiles_n):   # numba hands each thread a block of tiles
        i0, j0 = (t // tiles_n) * tile_m, (t % tiles_n) * tile_n
        _tile(a, w, K, last_mask, out, i0, min(i0 + tile_m, M), j0, min(j0 + tile_n, N))


@numba.njit(cache=True, nogil=True)
def _gemm_serial(a, w, K, last_mask, out, tile_m, tile_n):  # pragma: no cover - compiled
    M, N = a.shape[0], w.shape[0]
    for i0 in range(0, M, tile_m):
        for j0 in range(0, N, tile_n):
            _tile(a, w, K, last_mask, out, i0, min(i0 + tile_m, M), j0, min(j0 + tile_n, N))
