"""The compiled XNOR-popcount kernel (numba); imported lazily by :mod:`quantlab.binary_kernel` on first use.

Compiled once and cached on disk (``cache=True``, next to this file or in numba's user cache directory).

Layout: the kernels take ``wt``, the packed weights transposed to (W, N) (words x columns), so that for one
word index k the words of consecutive columns are contiguous. The innermost loop runs over columns: it XORs
one word of a (broadcast) with 8 columns at once, popcounts them (AVX-512 VPOPCNTQ where the CPU has it;
numba compiles for the host CPU) and adds into per-column counters. No horizontal sum and no remainder along
K, and each loaded word of wt serves two rows of a.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

_ALL_BITS = np.uint64(0xFFFFFFFFFFFFFFFF)


@intrinsic
def _ctpop(typingctx, x):
    """LLVM's ctpop on a uint64: one POPCNT instruction (vectorised to VPOPCNTQ on AVX-512 CPUs)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _count_word(x0, x1, wt_k, c0, c1, mask):  # pragma: no cover - compiled
    """c0[j] += popcount((x0 ^ wt_k[j]) & mask), c1 likewise for x1: the loop LLVM vectorises over j."""
    for j in range(wt_k.shape[0]):
        u = wt_k[j]
        c0[j] += _ctpop((x0 ^ u) & mask)
        c1[j] += _ctpop((x1 ^ u) & mask)


@numba.njit(cache=True, nogil=True, inline="always")
def _tile(a, wt, K, last_mask, out, i0, i1, j0, j1):  # pragma: no cover - compiled
    """out[i0:i1, j0:j1], two rows of a at a time; the last word is masked to its valid bits (padding ignored)."""
    W, n = a.shape[1], j1 - j0
    c = np.empty((2, n), dtype=np.int64)                         # the two rows' counters, one per column
    for i in range(i0, i1, 2):
        i_b = min(i + 1, i1 - 1)                                 # an odd last row is computed twice, stored once
        c[:] = 0
        for k in range(W - 1):
            _count_word(a[i, k], a[i_b, k], wt[k, j0:j1], c[0], c[1], _ALL_BITS)
        _count_word(a[i, W - 1], a[i_b, W - 1], wt[W - 1, j0:j1], c[0], c[1], last_mask)
        for j in range(n):
            out[i, j0 + j] = K - 2 * c[0, j]
            out[i_b, j0 + j] = K - 2 * c[1, j]


@numba.njit(parallel=True, cache=True, nogil=True)
def _gemm_parallel(a, wt, K, last_mask, out, tile_m, tile_n):  # pragma: no cover - compiled
    M, N = a.shape[0], wt.shape[1]
    tiles_n = (N + tile_n - 1) // tile_n
    for t in numba.prange(((M + tile_m - 1) // tile_m) * tiles_n):   # one tile of outputs per task
        i0, j0 = (t // tiles_n) * tile_m, (t % tiles_n) * tile_n
        _tile(a, wt, K, last_mask, out, i0, min(i0 + tile_m, M), j0, min(j0 + tile_n, N))


@numba.njit(cache=True, nogil=True)
def _gemm_serial(a, wt, K, last_mask, out, tile_m, tile_n):  # pragma: no cover - compiled
    M, N = a.shape[0], wt.shape[1]
    for i0 in range(0, M, tile_m):
        for j0 in range(0, N, tile_n):
            _tile(a, wt, K, last_mask, out, i0, min(i0 + tile_m, M), j0, min(j0 + tile_n, N))
