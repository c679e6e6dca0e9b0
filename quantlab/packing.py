r"""Bit-packing: sub-byte integers stored densely (one home for every packed format of the library).

PTQ stores 2- and 4-bit weights several to a byte (:func:`pack_bits` / :func:`unpack_bits`); binary
networks' ±1 signs join here. Storage width w is the smallest of 1, 2, 4, 8 bits that holds the grid.
Bit order: value j of a byte sits in bits [j w, (j + 1) w) — the first value in the least significant bits.
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import check_bits, check_int, check_int_tensor

__all__ = ["pack_bits", "unpack_bits"]


def _width(bits: int) -> int:
    """Bits of storage per value: the smallest of 1, 2, 4, 8 that holds ``bits`` (3 bits -> 4)."""
    return next(w for w in (1, 2, 4, 8) if bits <= w)


def pack_bits(q: torch.Tensor, bits: int, q_min: int) -> torch.Tensor:
    r"""Store integers of a ``bits``-bit grid in as few bytes as possible: 8 // w values per byte.

    w = 1, 2, 4 or 8 (see ``_width``). For w = 8 the values are stored as int8 (signed grid) or uint8.
    Otherwise u = q - q_min in [0, 2^w) and byte = sum_j u_j << (j w) for the 8 // w values of a byte.
    Returns a flat tensor of ceil(numel / (8 // w)) bytes on q's device. Inverse: :func:`unpack_bits`.
    Raises ValueError for bits outside 1..8, fractional/NaN q, or values outside [q_min, q_min + 2^bits - 1]
    (they would wrap around silently).

    >>> pack_bits(torch.tensor([-8, 7, 0]), 4, -8)   # nibbles 0 and 15, then 8 (padded with 0)
    tensor([240,   8], dtype=torch.uint8)
    """
    bits = check_bits(bits, low=1, high=8)
    w, q_min = _width(bits), check_int(q_min, "q_min")
    q = check_int_tensor(q, "q", allow_empty=True).flatten()
    if q.numel() and (int(q.min()) < q_min or int(q.max()) > q_min + 2**bits - 1):
        raise ValueError(f"q has values in [{int(q.min())}, {int(q.max())}], outside the {bits}-bit grid "
                         f"[{q_min}, {q_min + 2**bits - 1}]; quantize onto that grid first.")
    if w == 8:
        return q.to(torch.int8 if q_min < 0 else torch.uint8)
    k = 8 // w
    u = q - q_min
    u = torch.cat([u, u.new_zeros((-u.numel()) % k)]).view(-1, k)
    shifts = torch.arange(k, dtype=torch.int64, device=u.device) * w
    return (u << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, q_min: int, numel: int) -> torch.Tensor:
    r"""Inverse of :func:`pack_bits`: the first ``numel`` integers, as int64 (flat), on packed's device.

    Raises ValueError for bits outside 1..8 or a ``numel`` larger than ``packed`` holds.

    >>> unpack_bits(torch.tensor([240, 8], dtype=torch.uint8), 4, -8, 3)
    tensor([-8,  7,  0])
    """
    w, q_min = _width(check_bits(bits, low=1, high=8)), check_int(q_min, "q_min")
    packed = check_int_tensor(packed, "packed", allow_empty=True).flatten()
    if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel <= packed.numel() * (8 // w):
        raise ValueError(f"numel={numel!r} must be an int in [0, {packed.numel() * (8 // w)}] (what "
                         f"{packed.numel()} byte(s) hold at {w} bit(s) per value).")
    if w == 8:
        return packed.to(torch.int64)[:numel]
    k = 8 // w
    shifts = torch.arange(k, dtype=torch.int64, device=packed.device) * w
    u = (packed.to(torch.int64).view(-1, 1) >> shifts) & (2**w - 1)
    return u.flatten()[:numel] + q_min


# ---------------------------------------------------------------------------------------------------
# ±1 signs of binary networks, packed along the reduction dimension K into 64-bit words (larq's layout):
#   bit = 1 for -1 and 0 for +1;  element k of a row sits in word k // 64, bit k % 64 (LSB first);
#   a ragged K is padded with 0 bits (+1) — the binary GEMM masks the padding, so it cannot change a result.
# ---------------------------------------------------------------------------------------------------

#: Bits per packed word of :func:`pack_signs` (uint64).
WORD_BITS = 64

__all__ += ["WORD_BITS", "n_words", "pack_signs", "pack_negative", "unpack_signs"]


def n_words(K: int) -> int:
    """Number of 64-bit words that hold K signs: ceil(K / 64).

    >>> n_words(64), n_words(65), n_words(1)
    (1, 2, 1)
    """
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K (the reduction length) must be a positive integer; got {K!r}.")
    return -(-int(K) // WORD_BITS)


def _as_signs(x, name: str) -> np.ndarray:
    """x as a NumPy array of exact ±1 values (CPU copy of a torch tensor on any device), or a clear error."""
    return _signs_and_negative(x, name)[0]


def _signs_and_negative(x, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, x == -1) for x of exact ±1 values, checked by counting: #(x == 1) + #(x == -1) must be x.size."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "fiub" or x.dtype.kind == "b":
        raise TypeError(f"{name} must be a numeric array of ±1 values; got dtype {x.dtype}.")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last axis K (the reduction axis); got shape {x.shape}.")
    negative = x == -1                                  # two comparisons and two counts: no third pass
    if np.count_nonzero(negative) + np.count_nonzero(x == 1) != x.size:
        bad = (x != 1) & ~negative
        v = x[bad].flat[0]
        raise ValueError(
            f"{name} must contain only +1 and -1; found {int(bad.sum())} other value(s), e.g. {v!r}. "
            "Binarize it first: quantlab.binary.binarize(x) (sign with sign(0) = +1)."
        )
    return x, negative


def pack_signs(x) -> np.ndarray:
    r"""Pack ±1 values along the last axis (K, the reduction axis) into uint64 words, 64 signs per word.

    bit_k = 1 if x_k = -1 else 0 (larq's convention); word j holds x[..., 64 j : 64 j + 64], element 64 j + i
    in bit i (least significant first). A ragged K is padded with 0 bits (= +1) up to ceil(K / 64) words;
    :func:`quantlab.binary.xnor_gemm` masks those bits, so padding never changes a result.
    Memory: ceil(K/64) * 8 bytes per row instead of 4 K bytes in float32 — 32x smaller when 64 | K.

    Shapes: x (..., K) of exact ±1 values (float or int, NumPy or torch on any device: CPU-only, a tensor is
    copied to the CPU) -> uint64 NumPy array (..., ceil(K / 64)).
    Raises ValueError for values other than ±1 (binarize first) or an empty K; TypeError for non-numeric input.

    >>> pack_signs(np.array([-1, 1, 1, -1]))          # bits 0 and 3 set: 1 + 8
    array([9], dtype=uint64)
    >>> pack_signs(-np.ones((2, 65))).shape            # K = 65 -> 2 words, the second one padded
    (2, 2)
    """
    return pack_negative(_signs_and_negative(x, "x")[1])


def pack_negative(negative: np.ndarray) -> np.ndarray:
    r"""The packing step of :func:`pack_signs` on a boolean mask ``negative`` = (x < 0), shape (..., K), unchecked.

    For callers that binarize themselves (the packed layers): no ±1 validation, one byte per value.

    >>> pack_negative(np.array([True, False, False, True]))
    array([9], dtype=uint64)
    """
    K = negative.shape[-1]
    bits = negative
    if K % WORD_BITS:                                                # ragged K: pad with 0 bits (+1)
        bits = np.zeros(negative.shape[:-1] + (n_words(K) * WORD_BITS,), dtype=np.uint8)
        bits[..., :K] = negative
    packed = np.packbits(bits, axis=-1, bitorder="little")          # byte b, bit i = element 8 b + i
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_signs(packed, K: int) -> np.ndarray:
    r"""Inverse of :func:`pack_signs`: the first K signs of each row, float32 ±1, shape (..., K).

    Raises ValueError if ``packed`` is not uint64 with ceil(K / 64) words on its last axis.

    >>> unpack_signs(np.array([9], dtype=np.uint64), 4)
    array([-1.,  1.,  1., -1.], dtype=float32)
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint64:
        raise TypeError(f"packed must be uint64 words from pack_signs; got dtype {packed.dtype}.")
    if packed.ndim == 0 or packed.shape[-1] != n_words(K):
        raise ValueError(f"packed has {packed.shape[-1:] or 'no'} words per row; K={K} needs {n_words(K)}.")
    as_bytes = np.ascontiguousarray(packed).astype("<u8", copy=False).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :K]
    return (1.0 - 2.0 * bits).astype(np.float32)
