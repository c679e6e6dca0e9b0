r"""Linear quantization (section 9.3.1): q = clip(round(r/s + z), q_min, q_max) and its inverse.

Notation of the text: r is the real (floating-point) value, q the integer, s the scale (the interval
between two levels), z the zero point (the integer that represents r = 0), and [q_min, q_max] the
integer grid. z = 0 is *symmetric* quantization, z != 0 *asymmetric*.

Every function accepts torch tensors or NumPy arrays (NumPy in, NumPy out); s and z may be Python
numbers or tensors that broadcast against r, so per-channel quantization is the same code path as
per-tensor (see :mod:`quantlab.granularity`).
"""

from __future__ import annotations

import torch

from ._checks import (
    as_float_tensor,
    check_bits,
    check_broadcast,
    check_int_tensor,
    check_qrange,
    check_scale,
    check_zero_point,
    from_tensor,
)

__all__ = ["qrange", "scale_zero_point", "quantize", "dequantize", "fake_quantize", "FakeQuantizeSTE", "EPS"]

#: Smallest scale ever returned (PyTorch observers use the same floor): an all-zero tensor gets s = EPS.
EPS = float(torch.finfo(torch.float32).eps)
_F32_MAX = float(torch.finfo(torch.float32).max)


def qrange(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    r"""Integer grid [q_min, q_max] for a bit-width.

    signed:   q_min = -2^(b-1),  q_max = 2^(b-1) - 1       (narrow: q_min = -(2^(b-1) - 1))
    unsigned: q_min = 0,         q_max = 2^b - 1           (narrow: q_min = 1)

    The narrow signed grid is symmetric around 0 (e.g. ±127 at 8 bits), as used for weights.

    Raises ValueError for bits outside 1..16, and for a narrow 1-bit grid (it would have one level).

    >>> qrange(8), qrange(8, signed=False), qrange(8, narrow=True)
    ((-128, 127), (0, 255), (-127, 127))
    """
    bits = check_bits(bits)
    if signed:
        q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        q_min, q_max = 0, 2**bits - 1
    if narrow:
        q_min += 1
        if q_min >= q_max:
            raise ValueError(
                f"narrow=True leaves a single level at bits={bits}; use narrow=False or more bits."
            )
    return q_min, q_max


def scale_zero_point(r_min, r_max, q_min: int, q_max: int, symmetric: bool = False):
    r"""Scale s and zero point z that map the real range [r_min, r_max] onto [q_min, q_max].

    The range is first widened to contain 0, so that r = 0 is represented exactly (zero padding, ReLU):
    r_min <- min(r_min, 0), r_max <- max(r_max, 0). Then, following PyTorch's observers:

    asymmetric:  s = (r_max - r_min) / (q_max - q_min),   z = clip(q_min - round(r_min / s), q_min, q_max)
    symmetric:   s = max(-r_min, r_max) / ((q_max - q_min) / 2),   z = 0
                 (for an unsigned grid, q_min = 0: s = r_max / q_max, z = 0 — negatives clip to 0)

    With the narrow grid (``qrange(b, narrow=True)``) the symmetric rule is s = max|r| / (2^(b-1) - 1).
    Constant or all-zero input: s is floored at EPS (float32 epsilon, PyTorch's rule) so it is never 0
    and nothing divides by zero; a constant c != 0 becomes the range [0, c] (asymmetric) and lands on
    the end level of the grid, so r_hat = s * (q - z) equals c up to float32 rounding (at most 1 ulp;
    s * (q_max - q_min) is not always exactly c in float32). A tiny c with |c| < (q_max - q_min) * EPS
    is rounded to the EPS grid instead. A range so wide that r_max - r_min overflows float32 (ends near
    ±3e38) is computed in float64; s stays finite (capped at the largest float32 only at 1 bit).

    Shapes: r_min and r_max are numbers or tensors of the same shape; s (float32) and z (int64) have it.
    Raises ValueError if r_min > r_max anywhere, or for NaN/inf, and for bad q_min/q_max (symmetric
    needs z = 0 on the grid: q_min <= 0 <= q_max).

    >>> s, z = scale_zero_point(-1.0, 3.0, *qrange(8, signed=False))
    >>> float(s), int(z)   # s = 4/255, z = 0 - round(-1 / s) = 64
    (0.01568627543747425, 64)
    """
    q_min, q_max = check_qrange(q_min, q_max)
    r_min = as_float_tensor(r_min, "r_min").to(torch.float32)
    r_max = as_float_tensor(r_max, "r_max").to(torch.float32)
    if r_min.shape != r_max.shape:
        raise ValueError(
            f"r_min and r_max must have the same shape; got {tuple(r_min.shape)} and {tuple(r_max.shape)}."
        )
    if bool((r_min > r_max).any()):
        raise ValueError("r_min must be <= r_max everywhere; did you swap them?")
    if symmetric and not q_min <= 0 <= q_max:
        raise ValueError(
            f"symmetric=True puts r = 0 at z = 0, which is outside [q_min, q_max] = [{q_min}, {q_max}]; "
            "use a grid that contains 0, e.g. qrange(bits) or qrange(bits, signed=False), or symmetric=False."
        )
    r_min = torch.clamp(r_min, max=0.0)
    r_max = torch.clamp(r_max, min=0.0)
    if symmetric:
        if q_min == 0:
            s = r_max / q_max
        else:
            s = torch.maximum(-r_min, r_max) / ((q_max - q_min) / 2)
        s = torch.clamp(s, min=EPS)
        z = torch.zeros_like(s, dtype=torch.int64)
    else:
        s = (r_max - r_min) / (q_max - q_min)
        if not bool(torch.isfinite(s).all()):  # r_max - r_min overflowed float32 (ranges near ±3e38)
            wide = (r_max.double() - r_min.double()) / (q_max - q_min)
            s = torch.where(torch.isfinite(s), s, wide.clamp(max=_F32_MAX).to(torch.float32))
        s = torch.clamp(s, min=EPS)
        z = torch.clamp(q_min - torch.round(r_min / s), q_min, q_max).to(torch.int64)
    return s, z


def quantize(r, s, z, q_min: int, q_max: int):
    r"""q = clip(round(r / s + z), q_min, q_max), rounding half to even (like torch.round / np.round).

    Shapes: r is any shape (float); s and z broadcast against r (scalars for per-tensor, shape
    (C, 1, 1, 1) for per-channel on axis 0 of a conv weight). Returns int32 values of r's shape.
    Raises TypeError for non-float r, ValueError for NaN/inf or empty r, s <= 0, z outside
    [q_min, q_max] or q_min >= q_max.

    >>> quantize(torch.tensor([-1.0, 0.0, 0.26, 9.0]), 0.1, 0, *qrange(4))
    tensor([-8,  0,  3,  7], dtype=torch.int32)
    """
    q_min, q_max = check_qrange(q_min, q_max)
    t = as_float_tensor(r, "r")
    t = t.to(torch.promote_types(t.dtype, torch.float32))  # float16/bfloat16 are too coarse for r/s + z
    s_t = check_broadcast(check_scale(s), t, "s")
    z_t = check_broadcast(check_zero_point(z, q_min, q_max), t, "z")
    q = torch.clamp(torch.round(t / s_t + z_t), q_min, q_max)
    return from_tensor(q.to(torch.int32), r)


def dequantize(q, s, z):
    r"""r_hat = s * (q - z): the real value that the integer q stands for (the inverse of quantize).

    Shapes: q is any shape (integers of any dtype, or integer-valued floats); s and z broadcast against q
    and are moved to q's device. Returns float32 of q's shape, on q's device.
    Raises ValueError for NaN/inf or fractional q, s <= 0 or non-finite, NaN or fractional z (z = 0.5
    would shift every value by s/2), or s/z that do not broadcast against q; TypeError for a non-numeric q.

    >>> dequantize(torch.tensor([-8, 0, 3, 7]), 0.1, 0)
    tensor([-0.8000,  0.0000,  0.3000,  0.7000])
    """
    q_t = check_int_tensor(q, "q", allow_empty=True)
    s_t = check_broadcast(check_scale(s), q_t, "s", "q")
    z_t = check_broadcast(check_zero_point(z, None, None), q_t, "z", "q")
    out = s_t * (q_t.to(torch.float32) - z_t.to(torch.float32))
    return from_tensor(out, q)


class FakeQuantizeSTE(torch.autograd.Function):
    r"""The fake-quant node with its straight-through gradient, forward beside backward (public: QAT builds on it).

    Forward:  r_hat = s * (clip(round(r/s + z), q_min, q_max) - z)
    Backward: dr_hat/dr = 1 where round(r/s + z) lies inside [q_min, q_max], else 0 (the clipped
              straight-through estimator) — the same rule as torch.fake_quantize_per_tensor_affine.
              s and z get no gradient here (learned ranges, e.g. LSQ, are a separate Function).

    Call it through :func:`fake_quantize` (which checks its arguments), or directly on float tensors
    ``FakeQuantizeSTE.apply(r, s, z, q_min, q_max)`` with s, z tensors that broadcast against r.

    >>> r = torch.tensor([0.26, 9.0], requires_grad=True)
    >>> FakeQuantizeSTE.apply(r, torch.tensor(0.1), torch.tensor(0.0), -8, 7).sum().backward()
    >>> r.grad                       # 9.0 is clipped: no gradient
    tensor([1., 0.])
    """

    @staticmethod
    def forward(ctx, r, s, z, q_min, q_max):
        q_unclipped = torch.round(r / s + z)
        ctx.save_for_backward((q_unclipped >= q_min) & (q_unclipped <= q_max))
        return (s * (torch.clamp(q_unclipped, q_min, q_max) - z)).to(r.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside, None, None, None, None


def fake_quantize(r, s, z, q_min: int, q_max: int):
    r"""Quantize then dequantize in one step: r_hat = s * (clip(round(r/s + z), q_min, q_max) - z).

    This is the "pseudo-quantization node" of quantization-aware training: the output is still float,
    but it only takes the 2^b values of the grid. Its gradient is the straight-through estimator
    (1 inside the clip range, 0 outside), so it can sit inside a network that is being trained.

    Shapes: as :func:`quantize`; returns r's dtype and shape (computed in at least float32).

    >>> fake_quantize(torch.tensor([0.26, 9.0]), 0.1, 0, *qrange(4))
    tensor([0.3000, 0.7000])
    """
    q_min, q_max = check_qrange(q_min, q_max)
    t = as_float_tensor(r, "r")
    dtype = torch.promote_types(t.dtype, torch.float32)  # compute float16/bfloat16 input in float32
    s_t = check_broadcast(check_scale(s), t, "s").to(dtype)
    z_t = check_broadcast(check_zero_point(z, q_min, q_max), t, "z").to(dtype)
    out = FakeQuantizeSTE.apply(t.to(dtype), s_t, z_t, q_min, q_max).to(t.dtype)
    return from_tensor(out, r)
