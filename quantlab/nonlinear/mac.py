r"""Why linear quantization is what integer hardware runs: the multiply-accumulate (MAC) of each grid.

For one output, y = Σ_i w_i x_i with integer activations x_i (already quantized, their scale applied later):

* linear grid, w_i = s(q_i - z):       y = s · Σ_i (q_i - z) x_i     — integer MACs, ONE float multiply per
  output (per layer/channel), because s is shared and factors out of the sum;
* codebook, w_i = c[code_i]:           y = Σ_i c[code_i] x_i         — the c's are arbitrary reals, nothing
  factors out: one table lookup per weight, then a real-valued multiply (or a lookup-and-bin scheme);
* power of two, w_i = ±s·2^(|q_i| - K): y = s·2^(1-K) · Σ_i sign(q_i) (x_i << (|q_i| - 1))
  — the multiply by the weight becomes a shift of x, still one float multiply per output.
"""

from __future__ import annotations

import torch

from .log import _n_exp

__all__ = ["linear_int_dot", "codebook_dot", "pow2_int_weights", "shift_add_dot"]


def _int(x, name):
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (quantized values); got {t.dtype}.")
    return t.to(torch.int64)


def linear_int_dot(q, z: int, x) -> torch.Tensor:
    r"""acc = Σ_i (q_i - z) x_i on int64: the integer part of y = s·acc (s applied once, outside the sum).

    Shapes: q (..., n) and x (n,) integers -> int64 (...).

    >>> linear_int_dot(torch.tensor([3, -1]), 0, torch.tensor([2, 5]))
    tensor(1)
    """
    return ((_int(q, "q") - int(z)) * _int(x, "x")).sum(-1)


def codebook_dot(codes, centroids, x):
    r"""y = Σ_i c[code_i] x_i and how many lookups it took (one per weight): returns (y float64, n_lookups).

    The centroids are arbitrary reals, so no common factor leaves the sum: each weight is looked up and
    multiplied in floating point (or in a wider fixed-point format), unlike :func:`linear_int_dot`.

    >>> codebook_dot(torch.tensor([1, 0, 1]), torch.tensor([-0.5, 0.25]), torch.tensor([4, 2, 8]))
    (tensor(2., dtype=torch.float64), 3)
    """
    ct = _int(codes, "codes")
    w = torch.as_tensor(centroids).to(ct.device).double()[ct]  # the lookup: one per weight (on the codes' device)
    return (w * _int(x, "x").double()).sum(-1), ct.numel()


def pow2_int_weights(q, bits: int) -> torch.Tensor:
    r"""The integer weights w_int = sign(q)·2^(|q| - 1) (0 for q = 0), so w_hat = s·2^(1-K)·w_int.

    >>> pow2_int_weights(torch.tensor([3, -1, 0, 2]), 3).tolist()
    [4, -1, 0, 2]
    """
    qt = _int(q, "q")
    K = _n_exp(bits)
    if bool((qt.abs() > K).any()):
        raise ValueError(f"q must be power-of-two codes in [-{K}, {K}] for bits={bits}.")
    return torch.sign(qt) * (torch.ones_like(qt) << (qt.abs() - 1).clamp(min=0)) * (qt != 0)


def shift_add_dot(q, x, bits: int) -> torch.Tensor:
    r"""acc = Σ_i sign(q_i)·(x_i << (|q_i| - 1)) — no multiplies: a shift, then add or subtract (or skip).

    Equals Σ_i w_int_i · x_i with w_int = :func:`pow2_int_weights` (tested), and y = s·2^(1-K)·acc.
    Shapes: q (..., n), x (n,) integers -> int64 (...).

    >>> shift_add_dot(torch.tensor([3, -1, 0, 2]), torch.tensor([5, 7, 9, -3]), 3)   # 20 - 7 + 0 - 6
    tensor(7)
    """
    qt, xt = _int(q, "q"), _int(x, "x")
    K = _n_exp(bits)
    if bool((qt.abs() > K).any()):
        raise ValueError(f"q must be power-of-two codes in [-{K}, {K}] for bits={bits}.")
    shifted = xt << (qt.abs() - 1).clamp(min=0)   # x·2^(|q|-1) as a shift (int64)
    return torch.where(qt > 0, shifted, torch.where(qt < 0, -shifted, torch.zeros_like(shifted))).sum(-1)
