r"""Quantile grids: NormalFloat (NF4) of QLoRA (Dettmers et al., 2023) — beyond the text.

The 2^b levels sit at quantiles of a standard normal distribution, normalised to [-1, 1], with an exact
zero. QLoRA's construction (bitsandbytes ``create_normal_map``): with δ = ½[(1 - 1/(2(2^b - 1))) +
(1 - 1/(2·2^b))] (0.9677 for b = 4),

    positive: Φ^-1(p) for 2^(b-1) values p evenly spaced from δ down to 1/2 (the 1/2 itself dropped)
    negative: -Φ^-1(p) for 2^(b-1) - 1 values p evenly spaced from δ down to 1/2 (1/2 dropped)
    and 0;   all divided by the largest, so the grid spans exactly [-1, 1].

For b = 4 these are the 16 NF4 levels. A tensor is quantized in blocks of 64 consecutive values (of the
flattened tensor; the last block may be shorter): each block stores its absmax a = max|r| (FP32) and
b-bit codes of the nearest level to r/a. Dequantization: r_hat = a · level[code]. Zero stays exactly zero.
"""

from __future__ import annotations

import torch

from .._checks import as_float_tensor, check_bits, from_tensor
from ..granularity import PerGroup, range_of
from ..linear import EPS
from .kmeans import nearest_index

__all__ = ["normal_float_levels", "nf_quantize", "nf_dequantize", "fake_nf", "nf_size_bytes"]


def normal_float_levels(bits: int = 4) -> torch.Tensor:
    r"""The 2^b NormalFloat levels in [-1, 1], ascending, float64, with exactly one 0 (bits 2..8).

    >>> [round(v, 4) for v in normal_float_levels(2).tolist()]
    [-1.0, 0.0, 0.4358, 1.0]
    """
    bits = check_bits(bits, "bits", low=2, high=8)
    n = 2**bits
    delta = 0.5 * ((1 - 1 / (2 * (n - 1))) + (1 - 1 / (2 * n)))
    half = n // 2
    pos = torch.special.ndtri(torch.linspace(delta, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(delta, 0.5, half, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg])
    return torch.sort(v / v.abs().max()).values


def _blocks(t: torch.Tensor, block_size: int) -> torch.Tensor:
    """t flattened and zero-padded to (n_blocks, block_size)."""
    flat = t.reshape(-1)
    return torch.cat([flat, flat.new_zeros((-flat.numel()) % block_size)]).reshape(-1, block_size)


def nf_quantize(r, bits: int = 4, block_size: int = 64):
    r"""Codes of the nearest NormalFloat level to r/a per block (a = block absmax); returns (codes, a).

    a = max|r| over each block of ``block_size`` flattened values (via :func:`quantlab.granularity.range_of`
    with PerGroup on the padded flat tensor), floored at EPS so an all-zero block gives codes of 0.0.
    Nearest = argmin |r/a - level| (ties to the lower level).

    Shapes: r any float shape; codes int64 of r's shape; a float32 (n_blocks,), n_blocks = ceil(numel/64).
    Raises ValueError for bits outside 2..8, block_size < 1, NaN/inf or empty r.

    >>> codes, a = nf_quantize(torch.tensor([0.0, 1.0, -2.0, 0.5]))
    >>> codes.tolist(), a.tolist()
    ([7, 12, 0, 10], [2.0])
    """
    t = as_float_tensor(r, "r").to(torch.float32)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int (64 in QLoRA); got {block_size!r}.")
    levels = normal_float_levels(bits).to(t.device)
    blocks = _blocks(t, block_size)
    lo, hi = range_of(blocks.reshape(-1), PerGroup(block_size))
    a = torch.clamp(torch.maximum(-lo, hi), min=EPS).reshape(blocks.shape)[:, 0]
    x = blocks.double() / a.double()[:, None]
    codes = nearest_index(x.reshape(1, -1), levels[None]).reshape(-1)[: t.numel()].reshape(t.shape)
    return from_tensor(codes, r), from_tensor(a, r)


def nf_dequantize(codes, a, bits: int = 4, block_size: int = 64):
    r"""r_hat = a_block · level[code]: one table lookup and one multiply per value.

    >>> nf_dequantize(torch.tensor([7, 12, 0, 10]), torch.tensor([2.0])).tolist()
    [0.0, 0.8814194798469543, -2.0, 0.4922245144844055]
    """
    ct = torch.as_tensor(codes).to(torch.int64)
    levels = normal_float_levels(bits).to(torch.float32).to(ct.device)
    if bool((ct < 0).any()) or bool((ct >= levels.numel()).any()):
        raise ValueError(f"codes must lie in [0, {levels.numel() - 1}] for bits={bits}.")
    at = torch.as_tensor(a, dtype=torch.float32, device=ct.device).reshape(-1)
    lv = _blocks(levels[ct], block_size)
    if lv.shape[0] != at.numel():
        raise ValueError(f"a has {at.numel()} block scales but the codes need {lv.shape[0]} "
                         f"(blocks of {block_size}).")
    return from_tensor((lv * at[:, None]).reshape(-1)[: ct.numel()].reshape(ct.shape), codes)


def fake_nf(r, bits: int = 4, block_size: int = 64):
    r"""r_hat = nf_dequantize(nf_quantize(r)) — same shape as r.

    >>> fake_nf(torch.tensor([0.0, -3.0])).tolist()
    [0.0, -3.0]
    """
    codes, a = nf_quantize(r, bits, block_size)
    return nf_dequantize(codes, a, bits, block_size)


def nf_size_bytes(n_values: int, bits: int = 4, block_size: int = 64) -> float:
    r"""Stored bytes = n·b/8 (codes) + 4·ceil(n/64) (one FP32 absmax per block): 4.5 bits per value for NF4.

    (QLoRA's double quantization stores the absmax values in 8 bits, ≈ 4.127 bits per value; not done here.)

    >>> nf_size_bytes(1024)
    576.0
    """
    return n_values * check_bits(bits, low=2, high=8) / 8 + 4 * -(-n_values // block_size)
