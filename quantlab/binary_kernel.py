r"""The binary GEMM on packed signs: a . w = K - 2 popcount(a XOR w), two implementations.

For ±1 vectors a, w of length K packed by :func:`quantlab.packing.pack_signs` (bit = 1 for -1), a_k w_k = +1
where the bits agree and -1 where they differ, so  a . w = (#agree) - (#differ) = K - 2 popcount(a XOR w).

* :func:`xnor_gemm_numpy` — the readable definition: ``np.bitwise_xor`` + ``np.bitwise_count`` (NumPy >= 2.0;
  older NumPy gets the classic SWAR popcount below). The plain-NumPy **slow path** (0.5–1.4x of float BLAS).
* :func:`xnor_gemm_numba` — the same formula compiled by numba: the CPU's popcount instruction (LLVM ``ctpop``,
  vectorised over 8 columns at a time), tiles of rows x columns spread over threads with ``prange``, compiled
  once and cached on disk (``cache=True``). ``HAVE_NUMBA`` says whether it is available.

Both take packed uint64 words (M, W) and (N, W) with W = ceil(K / 64) and return int32 (M, N). The last
word is masked to its K mod 64 valid bits, so whatever the padding bits hold cannot change a result.
CPU-only (NumPy arrays). Accumulators are int32: K must be < 2^31.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .packing import WORD_BITS, n_words

__all__ = ["HAVE_NUMBA", "MAX_K", "xnor_gemm_numpy", "xnor_gemm_numba", "check_packed", "popcount64"]

#: Largest K whose result K - 2 popcount fits the int32 output (|a . w| <= K).
MAX_K = 2**31 - 1

#: Whether the compiled kernel can be used. numba is imported only on the first compiled call (importing it costs
#: seconds), from :mod:`quantlab._xnor_numba`; without numba the NumPy slow path is used (with a warning).
HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def check_packed(a, w, K: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Check two packed operands and K; return them as C-contiguous uint64 arrays and K as int.

    Raises ValueError for K < 1 or K > MAX_K (int32 overflow), 2-D shape or word-count mismatches;
    TypeError for a dtype other than uint64.
    """
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K (the number of ±1 values per row) must be a positive integer; got {K!r}.")
    if K > MAX_K:
        raise ValueError(
            f"K={K} is too large: |a . w| <= K must fit the int32 result (K <= 2^31 - 1 = {MAX_K}). "
            "Split the reduction into chunks of at most 2^31 - 1 values and add the partial results in int64."
        )
    for name, t in (("a", a), ("w", w)):
        if not isinstance(t, np.ndarray) or t.dtype != np.uint64:
            raise TypeError(f"{name} must be a uint64 NumPy array from quantlab.packing.pack_signs; "
                            f"got {type(t).__name__} {getattr(t, 'dtype', '')}.")
        if t.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, words); got shape {t.shape}.")
        if t.shape[1] != n_words(K):
            raise ValueError(f"{name} has {t.shape[1]} words per row but K={K} needs ceil(K/64) = {n_words(K)}; "
                             "pack both operands with pack_signs along the same K.")
    return np.ascontiguousarray(a), np.ascontiguousarray(w), int(K)


def _last_mask(K: int) -> np.uint64:
    """Mask of the valid bits of the last word: the low K mod 64 bits (all 64 when 64 divides K)."""
    r = K % WORD_BITS
    return np.uint64(0xFFFFFFFFFFFFFFFF) if r == 0 else np.uint64((1 << r) - 1)


def popcount64(x: np.ndarray) -> np.ndarray:
    r"""Number of 1 bits of each uint64: ``np.bitwise_count`` when NumPy has it (>= 2.0), else SWAR.

    SWAR ("SIMD within a register", Hacker's Delight 5-1): sum bits in pairs, nibbles, bytes, then add the
    8 byte counts with one multiply by 0x0101...01 and keep the top byte.

    >>> popcount64(np.array([0, 1, 0xFF, 2**64 - 1], dtype=np.uint64)).tolist()
    [0, 1, 8, 64]
    """
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return _popcount_swar(x)


def _popcount_swar(x: np.ndarray) -> np.ndarray:
    u = np.uint64
    x = x - ((x >> u(1)) & u(0x5555555555555555))
    x = (x & u(0x3333333333333333)) + ((x >> u(2)) & u(0x3333333333333333))
    x = (x + (x >> u(4))) & u(0x0F0F0F0F0F0F0F0F)
    return ((x * u(0x0101010101010101)) >> u(56)).astype(np.int64)


def xnor_gemm_numpy(a, w, K: int, rows_per_chunk: int = 64) -> np.ndarray:
    r"""out[i, j] = K - 2 popcount(a_i XOR w_j): the binary GEMM in plain NumPy (the definition; slow path).

    Shapes: a (M, W), w (N, W) uint64 words from :func:`quantlab.packing.pack_signs` (W = ceil(K/64))
    -> int32 (M, N), equal to A @ Wt.T for the ±1 matrices they pack. Works ``rows_per_chunk`` rows of a at a
    time (memory M_chunk x N x W words). Raises as :func:`check_packed`.

    >>> from quantlab.packing import pack_signs
    >>> a, w = np.array([[1, -1, 1]]), np.array([[1, 1, -1], [1, -1, 1]])
    >>> xnor_gemm_numpy(pack_signs(a), pack_signs(w), 3)     # (1 - 1 - 1, 1 + 1 + 1)
    array([[-1,  3]], dtype=int32)
    """
    a, w, K = check_packed(a, w, K)
    mask = np.full(a.shape[1], np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    mask[-1] = _last_mask(K)                                   # padding bits never count
    out = np.empty((a.shape[0], w.shape[0]), dtype=np.int32)
    for i in range(0, a.shape[0], rows_per_chunk):
        x = np.bitwise_xor(a[i:i + rows_per_chunk, None, :], w[None, :, :]) & mask   # (m, N, W)
        out[i:i + rows_per_chunk] = K - 2 * popcount64(x).sum(axis=-1)
    return out


#: Below this many word operations (M * N * W) one thread is faster than waking the pool.
SERIAL_BELOW = 2**21


def xnor_gemm_numba(a, w, K: int, tile_m: int = 128, tile_n: int = 128) -> np.ndarray:
    r"""out[i, j] = K - 2 popcount(a_i XOR w_j), compiled: popcount instruction, tiled, multi-threaded.

    Same contract as :func:`xnor_gemm_numpy` (shapes, masking of the padding, exact int32 result). Tiles of
    ``tile_m`` rows of a x ``tile_n`` rows of w are spread over numba's threads (``numba.set_num_threads``).
    Each tile copies its rows of w transposed to (W, tile_n), padding bits zeroed, so the innermost loop runs
    over contiguous columns: four words of a are XORed with 8 columns at once and popcounted (AVX-512 VPOPCNTQ
    where available) per counter update, and each loaded word of w serves two rows of a; the tile of w
    (tile_n columns x W words) stays in cache while tile_m rows of a stream past it. Small products
    (M N W < ``SERIAL_BELOW``) run on one thread. The first call
    compiles (or loads the on-disk cache, ``cache=True``). Raises ImportError when numba is not installed
    (use :func:`xnor_gemm_numpy`, or :func:`quantlab.binary.xnor_gemm` which falls back with a warning).

    >>> from quantlab.packing import pack_signs
    >>> a, w = np.array([[1, -1, 1]]), np.array([[1, 1, -1], [1, -1, 1]])
    >>> xnor_gemm_numba(pack_signs(a), pack_signs(w), 3)
    array([[-1,  3]], dtype=int32)
    """
    if not HAVE_NUMBA:
        raise ImportError("numba is not installed, so the compiled XNOR kernel is unavailable. Install it "
                          "(`pip install numba`) or use xnor_gemm_numpy (the slow path).")
    a, w, K = check_packed(a, w, K)
    out = np.empty((a.shape[0], w.shape[0]), dtype=np.int32)
    from . import _xnor_numba as nb

    kernel = nb._gemm_serial if a.shape[0] * w.shape[0] * a.shape[1] < SERIAL_BELOW else nb._gemm_parallel
    kernel(a, w, np.int64(K), np.uint64(_last_mask(K)), out, np.int64(tile_m), np.int64(tile_n))
    return out
