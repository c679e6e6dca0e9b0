r"""The integer engine's operations: fixed-point requantization, int32 bias, exact integer sums.

Take one layer a = sum_i w_i x_i + b. With r = s (q - z) for weights (s_w, z_w), input (s_x, z_x) and
output (s_y, z_y), and the bias stored as q_b = round(b / (s_w s_x)) in int32 (z_b = 0):

    acc = sum_i (q_w,i - z_w)(q_x,i - z_x) + q_b                      (exact, int32)
    q_y = clip(z_y + M * acc, q_min, q_max),     M = s_w s_x / s_y      (one real number per layer/channel)

M is never used as a float: it is written M ~ M0 * 2^-n with an integer 2^30 <= M0 < 2^31 (see
:func:`requant_multiplier`), so  M * acc = (acc * M0 + 2^(n-1)) >> n  uses only integer multiply, add
and shift. A ReLU that follows the layer is *fused*: it is just the clamp to [z_y, q_max] (q = z_y is
r = 0). MaxPool and Flatten move integers without changing (s, z); AvgPool adds and divides integers.

Exactness. The sums are computed by torch's float conv/matmul on integer-valued tensors (torch has no
integer convolution on the CPU). A float adds integers exactly while every partial sum stays below
2^mantissa: float64 holds every integer below 2^53, float32 every integer below 2^24. Since each partial
sum is at most K * max|q_x - z_x| * max|q_w - z_w| (K terms), we use float32 when that bound is below
2^24 (e.g. a 3x3x16 conv at 8 bits: 144 * 255 * 127 < 2^23) and float64 otherwise; either way the result
is the exact integer an int32 accumulator would hold (overflow is checked), in any summation order --
provided the float kernel only multiplies and adds the given numbers (direct or GEMM convolution, as
torch's CPU kernels do; a Winograd/FFT algorithm would not be exact). tests/test_engine.py checks the
float32 path against the float64 path at the largest magnitudes.

Real kernels (fbgemm, qnnpack) expand (q_w - z_w)(q_x - z_x) into four terms to keep the inner loop at
int8 x int8; we subtract the zero points first, which is the same integer and reads like the formula.
They also requantize with a float32 M and round half to even, so they may differ from this engine by 1
on a few elements (tests: >= 99.9 % identical, never more than 1 apart).

Devices. The integer sums run on the CPU by design: a GPU's float convolution may use TF32 or
Winograd/FFT algorithms, which are not exact on integers. :func:`int_conv2d` / :func:`int_linear` /
:func:`requantize` move their inputs to the CPU and return results on the input's device;
:func:`quantlab.engine.run_int` moves the batch to the CPU once, runs every layer there and returns the
logits on the input's device (an :class:`quantlab.engine.IntModel` always lives on the CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import (
    as_float_tensor,
    check_int,
    check_int_tensor,
    check_qrange,
    check_scale,
    check_tensor_device,
    check_zero_point,
)

__all__ = ["requant_multiplier", "requantize", "quantize_bias", "int_conv2d", "int_linear"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---------------------------------------------------------------------------------------------------
# The fixed-point multiplier and requantization
# ---------------------------------------------------------------------------------------------------


def requant_multiplier(M: float) -> tuple[int, int]:
    r"""Write a real multiplier 0 < M < 1 as M ~ M0 * 2^-n with integers 2^30 <= M0 < 2^31, n >= 0.

    n is the largest shift for which M0 = round(M * 2^n) still fits in [2^30, 2^31); the relative error
    |M0 2^-n - M| / M is at most 2^-31. (CONTRIBUTING.md, "Fixed-point requantization multiplier".)

    Raises ValueError for M <= 0, M >= 1 or a non-finite M.

    >>> requant_multiplier(0.5)
    (1073741824, 31)
    """
    M = float(M)
    if not math.isfinite(M) or not 0.0 < M < 1.0:
        raise ValueError(
            f"M={M!r} must satisfy 0 < M < 1 (M = s_w * s_x / s_y); a larger M means the output scale s_y "
            "is finer than one step of the accumulator -- widen the output range."
        )
    mantissa, exponent = math.frexp(M)  # M = mantissa * 2^exponent, 0.5 <= mantissa < 1, exponent <= 0
    n = 31 - exponent  # M * 2^n = mantissa * 2^31 in [2^30, 2^31)
    M0 = round(M * 2**n)  # Python round: half to even, exact on doubles
    if M0 == 2**31:  # rounding pushed it out of range: one shift less
        n -= 1
        M0 = round(M * 2**n)
    return int(M0), int(n)


def requantize(acc, M0, n, z_y, q_min: int, q_max: int) -> torch.Tensor:
    r"""q_y = clip(z_y + ((acc * M0 + 2^(n-1)) >> n), q_min, q_max): integer-only M * acc (round half up).

    Shapes: acc is an integer tensor (values within int32), channels on dim 1 ((N, C) or (N, C, H, W));
    M0 and n are Python ints (per tensor) or integer tensors of shape (C,) (per channel), M0 in
    [0, 2^31), n >= 0. ``>>`` on a negative int64 is an arithmetic shift (floor), so adding 2^(n-1) first
    rounds to nearest, ties up. acc * M0 < 2^31 * 2^31 = 2^62 fits int64. Returns int64 values in
    [q_min, q_max], on acc's device.
    Raises ValueError for q_min >= q_max, NaN/inf or fractional acc, M0 outside [0, 2^31), negative n,
    per-channel M0/n whose length is not acc's dim 1, or a z_y that is not an integer in [q_min, q_max].

    >>> requantize(torch.tensor([[100, -100, 3]]), *requant_multiplier(0.5), 0, -128, 127)
    tensor([[ 50, -50,   2]])
    """
    q_min, q_max = check_qrange(q_min, q_max)
    acc = check_int_tensor(acc, "acc", allow_empty=True)
    M0 = check_int_tensor(M0, "M0").to(acc.device)
    n = check_int_tensor(n, "n").to(acc.device)
    z_y = check_int(z_y, "z_y")
    if not q_min <= z_y <= q_max:
        raise ValueError(f"z_y={z_y} is off the output grid [q_min, q_max] = [{q_min}, {q_max}]; the zero "
                         "point must be one of the grid's integers.")
    if bool((n < 0).any()):
        raise ValueError(f"n (the right shift) must be >= 0; got {n.tolist()}. Use requant_multiplier(M).")
    if bool((M0 < 0).any()) or bool((M0 >= 2**31).any()):
        raise ValueError("M0 must lie in [0, 2^31) (an int32 multiplier); use requant_multiplier(M).")
    if M0.shape != n.shape or M0.ndim > 1:
        raise ValueError(f"M0 and n must be two ints or two (C,) tensors; got shapes {tuple(M0.shape)} and "
                         f"{tuple(n.shape)}.")
    if M0.ndim == 1:  # per channel: broadcast along dim 1
        if acc.ndim < 2 or acc.shape[1] != M0.numel():
            raise ValueError(f"per-channel M0/n have {M0.numel()} entries but acc has shape "
                             f"{tuple(acc.shape)} (channels on dim 1); they must match.")
        shape = [1, -1] + [1] * (acc.ndim - 2)
        M0, n = M0.view(shape), n.view(shape)
    y = acc * M0
    if bool((n >= 63).any()):  # M < 2^-32: |acc * M0| < 2^62 always rounds to 0; keep shifts in range
        y = torch.where(n >= 63, torch.zeros_like(y), y)
        n = torch.clamp(n, max=62)
    y += torch.where(n > 0, torch.ones_like(n) << (n - 1).clamp(min=0), torch.zeros_like(n))  # + 2^(n-1)
    y >>= n
    y += z_y
    return y.clamp_(q_min, q_max)


def quantize_bias(b, s_w, s_x) -> torch.Tensor:
    r"""q_b = round(b / (s_w * s_x)) as int32, zero point 0: the bias on the accumulator's own scale.

    Shapes: b (C,) float; s_w a number or (C,) (per channel); s_x a number. Returns int32 (C,) on b's
    device (computed in float64).
    Raises ValueError for NaN/inf in b, s_w or s_x not finite and > 0 (s = 0 would give -2^31, s_x < 0
    would flip the sign), s_w of the wrong length; OverflowError if a value does not fit in int32
    (scales far too small for this bias).

    >>> quantize_bias(torch.tensor([0.5, -0.25]), 0.01, 0.1)
    tensor([ 500, -250], dtype=torch.int32)
    """
    b_t = as_float_tensor(b, "b")
    s_w_t = check_scale(s_w, "s_w")
    check_scale(s_x, "s_x")
    if s_w_t.numel() != 1 and s_w_t.reshape(-1).shape != b_t.reshape(-1).shape:
        raise ValueError(f"s_w must be one number or one per channel ({b_t.numel()}); got shape "
                         f"{tuple(s_w_t.shape)}.")
    if torch.as_tensor(s_x).numel() != 1:
        raise ValueError("s_x must be one number (the input's scale).")
    b64 = b_t.to(torch.float64)
    scale = torch.as_tensor(s_w, dtype=torch.float64).to(b64.device) * float(s_x)
    q_b = torch.round(b64 / scale.reshape(-1) if scale.numel() > 1 else b64 / scale)
    if bool((q_b.abs() > INT32_MAX).any()):
        raise OverflowError("bias does not fit in int32 at scale s_w * s_x; check the scales.")
    return q_b.to(torch.int32)


def _exact_dtype(x: torch.Tensor, w: torch.Tensor, K: int) -> torch.dtype:
    """float32 if every partial sum of K products is provably below 2^24 (exact), else float64."""
    bound = K * float(x.abs().max()) * float(w.abs().max()) if x.numel() and w.numel() else 0.0
    return torch.float32 if bound < 2**24 else torch.float64


def _check_acc(acc: torch.Tensor, where: str) -> torch.Tensor:
    if acc.numel():
        lo, hi = torch.aminmax(acc)
        if int(hi) > INT32_MAX or int(lo) < INT32_MIN:
            raise OverflowError(f"{where}: the accumulator overflows int32 ({int(lo)}..{int(hi)}).")
    return acc


# ---------------------------------------------------------------------------------------------------
# Exact integer sums
# ---------------------------------------------------------------------------------------------------


def _matmul_args(q_x, z_x, q_w, z_w, q_b, x_ndim: int, w_ndim: int):
    """Check and convert the arguments of int_conv2d / int_linear: (x - z_x, w - z_w, q_b) as int64 on CPU."""
    q_x = check_int_tensor(q_x, "q_x")
    q_w = check_int_tensor(q_w, "q_w")
    check_tensor_device(q_x, q_w, "q_x", "q_w")
    if q_x.ndim != x_ndim or q_w.ndim != w_ndim:
        raise ValueError(f"q_x must have {x_ndim} dimensions and q_w {w_ndim}; got shapes {tuple(q_x.shape)} "
                         f"and {tuple(q_w.shape)}.")
    c_out = q_w.shape[0]
    z_w = check_zero_point(z_w, None, None, "z_w")
    if z_w.numel() not in (1, c_out):
        raise ValueError(f"z_w must be one int or one per output channel ({c_out}); got shape {tuple(z_w.shape)}.")
    x = q_x.cpu() - check_int(z_x, "z_x")
    w = q_w.cpu() - z_w.cpu().reshape([-1] + [1] * (w_ndim - 1))
    if q_b is not None:
        q_b = check_int_tensor(q_b, "q_b").cpu()
        if tuple(q_b.shape) != (c_out,):
            raise ValueError(f"q_b must have shape ({c_out},) (one per output channel); got {tuple(q_b.shape)}.")
    return x, w, q_b


def int_conv2d(q_x, z_x, q_w, z_w, q_b=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    r"""acc[n, c] = sum_{k, i, j} (q_w[c, k, i, j] - z_w[c]) (q_x[n, k, .+i, .+j] - z_x) + q_b[c], exactly.

    Shapes: q_x (N, C_in, H, W) integers; q_w (C_out, C_in/groups, kh, kw) integers; z_x an int; z_w an
    int or (C_out,); q_b (C_out,) int32 or None. Zero padding pads (q_x - z_x) with 0, i.e. with r = 0.
    Returns the int64 accumulator (N, C_out, H', W') (values within int32; OverflowError otherwise), on
    q_x's device (computed on the CPU, see the module docstring).
    Raises ValueError for fractional/NaN q_x or q_w, a fractional z_x or z_w, channel counts that do not
    match (C_in vs q_w), a kernel larger than the padded image, or q_b of the wrong length.

    >>> int_conv2d(torch.ones(1, 1, 3, 3, dtype=torch.int64), 0, torch.ones(2, 1, 3, 3), 0).flatten()
    tensor([9, 9])
    """
    x, w, q_b = _matmul_args(q_x, z_x, q_w, z_w, q_b, 4, 4)
    if x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"q_x has {x.shape[1]} input channels but q_w expects {w.shape[1] * groups} "
                         f"(shape {tuple(w.shape)}, groups={groups}); check the layer's input.")
    pad, dil = _as_pair(padding), _as_pair(dilation)
    for d, (size, k) in enumerate(zip(x.shape[2:], w.shape[2:])):
        if size + 2 * pad[d] < dil[d] * (k - 1) + 1:
            raise ValueError(f"q_x of shape {tuple(x.shape)} is smaller than the kernel {tuple(w.shape[2:])} "
                             f"(padding {pad}); pass larger images.")
    dt = _exact_dtype(x, w, w[0].numel())
    acc = F.conv2d(x.to(dt), w.to(dt), None, stride, padding, dilation, groups)  # exact (module docstring)
    acc = acc.round_().to(torch.int64)
    if q_b is not None:
        acc += q_b.view(1, -1, 1, 1)
    return _check_acc(acc, "int_conv2d").to(torch.as_tensor(q_x).device)


def int_linear(q_x, z_x, q_w, z_w, q_b=None) -> torch.Tensor:
    r"""acc[n, c] = sum_k (q_w[c, k] - z_w[c]) (q_x[n, k] - z_x) + q_b[c], exactly (see int_conv2d).

    Shapes: q_x (N, K), q_w (C, K) integers; z_w int or (C,); q_b (C,) or None. Returns int64 (N, C) on
    q_x's device (computed on the CPU). Raises ValueError as int_conv2d (K of q_x vs q_w, ...).

    >>> int_linear(torch.tensor([[1, 2]]), 0, torch.tensor([[3, 4]]), 0, torch.tensor([5]))
    tensor([[16]])
    """
    x, w, q_b = _matmul_args(q_x, z_x, q_w, z_w, q_b, 2, 2)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"q_x has {x.shape[1]} features per row but q_w expects {w.shape[1]} "
                         f"(shape {tuple(w.shape)}); check the image size / the layer's input.")
    dt = _exact_dtype(x, w, w.shape[1])
    acc = torch.round(x.to(dt) @ w.to(dt).T).to(torch.int64)  # exact (module docstring)
    if q_b is not None:
        acc = acc + q_b.view(1, -1)
    return _check_acc(acc, "int_linear").to(torch.as_tensor(q_x).device)


def _as_pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
