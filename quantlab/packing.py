r"""Bit-packing: sub-byte integers stored densely (one home for every packed format of the library).

PTQ stores 2- and 4-bit weights several to a byte (:func:`pack_bits` / :func:`unpack_bits`); binary
networks' ±1 signs join here. Storage width w is the smallest of 1, 2, 4, 8 bits that holds the grid.
Bit order: value j of a byte sits in bits [j w, (j + 1) w) — the first value in the least significant bits.
"""

from __future__ import annotations

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
