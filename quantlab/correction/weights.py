r"""Weight correction (end of section 9.3.1) and how a deployment folds it into the grid.

Per output channel c: u_c = E(w_c) - E(w_hat_c), zeta_c = ||w_c - E(w_c)|| / ||w_hat_c - E(w_hat_c)||, and
the text's rule w_hat_c <- zeta_c (w_hat_c + u_c) (:func:`weight_correction`, rule "text"): its mean becomes
zeta_c E(w_c), not E(w_c). The rule "mean_norm" (Banner et al. 2019's code) shifts then scales around the
mean, (w_hat_c - E(w_hat_c)) zeta_c + E(w_c), and restores both mean and norm exactly.

Corrected weights leave the grid. A deployment keeps the same integers q and moves the grid instead:
zeta_c folds into the channel's scale (s_c <- zeta_c s_c, exact) and the shift into the weight zero point
(z_c <- z_c - u_c / s_c, in general not an integer): :func:`fold_weight_correction`. Kept as a float, that
zero point costs one extra per-channel term s_c z_c sum(x) (:func:`zero_point_output`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import as_float_tensor, check_axis
from ..models import WEIGHT_LAYERS

__all__ = ["RULES", "correction_factors", "scale_shift", "weight_correction", "fold_weight_correction",
           "zero_point_output"]

#: Weight-correction rules: the text's zeta_c (w_hat_c + u_c), and shift-then-scale around the mean.
RULES = ("text", "mean_norm")


def _pair(a, b, names):
    """Two finite float tensors of the same shape with a channel dimension, or an error naming both."""
    a, b = as_float_tensor(a, names[0]), as_float_tensor(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape; got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    if a.ndim == 0:
        raise ValueError(f"{names[0]} must have a channel dimension; got a 0-d tensor.")
    return a, b


def _check_rule(rule):
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES} ('text': zeta_c (w_hat_c + u_c); 'mean_norm': "
                         f"(w_hat_c - E(w_hat_c)) zeta_c + E(w_c)); got {rule!r}.")


def _moments(w, w_hat, axis):
    """E(w_c), E(w_hat_c), ||w_c - E(w_c)||, ||w_hat_c - E(w_hat_c)|| in float64, broadcast (keepdim)."""
    w, w_hat = _pair(w, w_hat, ("w", "w_hat"))
    axis = check_axis(axis, w.ndim)
    dims = [d for d in range(w.ndim) if d != axis]
    wd, hd = w.double(), w_hat.double()
    if not dims:  # one value per channel: no spread
        return wd, hd, torch.zeros_like(wd), torch.zeros_like(hd)
    e_w, e_h = wd.mean(dims, keepdim=True), hd.mean(dims, keepdim=True)
    n_w = (wd - e_w).square().sum(dims, keepdim=True).sqrt()
    n_h = (hd - e_h).square().sum(dims, keepdim=True).sqrt()
    return e_w, e_h, n_w, n_h


def correction_factors(w, w_hat, axis: int = 0):
    r"""(u_c, zeta_c) per channel: u_c = E(w_c) - E(w_hat_c), zeta_c = ||w_c - E(w_c)|| / ||w_hat_c - E(w_hat_c)||.

    A channel with ||w_hat_c - E(w_hat_c)|| = 0 (all its quantized weights equal) gets u_c = 0, zeta_c = 1:
    it is left as it is (no division by zero). Shapes: w, w_hat the same (C, ...) float; u and zeta keep
    every dimension (size 1 except ``axis``), float64. Raises ValueError for NaN/inf, mismatched shapes
    or a bad axis.

    >>> u, zeta = correction_factors(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]]))
    >>> float(u), float(zeta)                   # (2 - 1.5, 1.414 / 0.707)
    (0.5, 2.0)
    """
    e_w, e_h, n_w, n_h = _moments(w, w_hat, axis)
    flat = n_h == 0
    u = torch.where(flat, torch.zeros_like(e_w), e_w - e_h)
    zeta = torch.where(flat, torch.ones_like(n_w), n_w / torch.where(flat, torch.ones_like(n_h), n_h))
    return u, zeta


def scale_shift(w, w_hat, rule: str = "text", axis: int = 0):
    r"""(zeta_c, v_c) with corrected w_hat_c = zeta_c w_hat_c + v_c, for either rule.

    text: v_c = zeta_c u_c.  mean_norm: v_c = E(w_c) - zeta_c E(w_hat_c). Zero-variance channels: (1, 0).
    This is the form a deployment folds (:func:`fold_weight_correction`). Shapes as
    :func:`correction_factors`; raises ValueError for an unknown rule (and as :func:`correction_factors`).

    >>> zeta, v = scale_shift(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]]), "mean_norm")
    >>> float(zeta), float(v)                   # 2 (w_hat - 1.5) + 2 = 2 w_hat - 1
    (2.0, -1.0)
    """
    _check_rule(rule)
    u, zeta = correction_factors(w, w_hat, axis)
    if rule == "text":
        return zeta, zeta * u
    e_w, e_h, _, n_h = _moments(w, w_hat, axis)
    return zeta, torch.where(n_h == 0, torch.zeros_like(e_w), e_w - zeta * e_h)


def weight_correction(w, w_hat, rule: str = "text", axis: int = 0) -> torch.Tensor:
    r"""Correct quantized weights per channel c (``axis`` = output channels), the rule chosen by name.

    "text" (exactly as the text writes it): w_hat_c <- zeta_c (w_hat_c + u_c), with
    u_c = E(w_c) - E(w_hat_c), zeta_c = ||w_c - E(w_c)|| / ||w_hat_c - E(w_hat_c)||. Afterwards the channel's
    norm around its mean equals ||w_c - E(w_c)||, but its mean is zeta_c E(w_c), not E(w_c).
    "mean_norm": w_hat_c <- (w_hat_c - E(w_hat_c)) zeta_c + E(w_c): mean and norm both restored exactly.
    Channels with ||w_hat_c - E(w_hat_c)|| = 0 are returned unchanged. The result is off the integer grid.

    Shapes: w, w_hat the same (C, ...) float; returns w_hat's shape and dtype. Raises ValueError for an
    unknown rule, NaN/inf, mismatched shapes or a bad axis.

    >>> weight_correction(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]]))   # 2 * ([1, 2] + 0.5)
    tensor([[3., 5.]])
    >>> weight_correction(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]]), "mean_norm")
    tensor([[1., 3.]])
    """
    _check_rule(rule)
    _, w_hat_t = _pair(w, w_hat, ("w", "w_hat"))
    e_w, e_h, n_w, n_h = _moments(w, w_hat, axis)
    flat = n_h == 0
    zeta = n_w / torch.where(flat, torch.ones_like(n_h), n_h)
    hd = w_hat_t.double()
    if rule == "text":
        out = zeta * (hd + (e_w - e_h))
    else:
        out = (hd - e_h) * zeta + e_w
    return torch.where(flat, hd, out).to(w_hat_t.dtype)


def fold_weight_correction(s, z, zeta, shift):
    r"""Fold a correction w_hat' = zeta w_hat + v into the grid of w_hat = s (q - z): the same integers q.

    s' = zeta s (exact), z' = z - v / (zeta s) (a float: in general not an integer). For the text's rule
    v = zeta u, so z' = z - u / s. Then s' (q - z') = zeta s (q - z) + v. Shapes: anything that
    broadcasts (per tensor or (C, 1, ...)); returns float64 (s', z'). Raises ValueError unless s, zeta > 0.

    >>> fold_weight_correction(0.1, 0, 1.5, 0.03)          # s' = 0.15, z' = -0.2
    (tensor(0.1500, dtype=torch.float64), tensor(-0.2000, dtype=torch.float64))
    """
    s, z, zeta, shift = (torch.as_tensor(t, dtype=torch.float64) for t in (s, z, zeta, shift))
    if not bool((s > 0).all()) or not bool((zeta > 0).all()):
        raise ValueError("s and zeta must be > 0 to fold a correction into the scale; a channel with zeta = 0 "
                         "(w_c constant) has no grid left — leave it out of the correction.")
    s_new = zeta * s
    return s_new, z - shift / s_new


def _sum_x(layer, x):
    """Sum of the inputs under each output position (the receptive field): (N, 1, H', W') or (N, 1)."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"zero_point_output needs groups=1; got groups={layer.groups}.")
        ones = torch.ones((1, *layer.weight.shape[1:]), dtype=x.dtype, device=x.device)
        return F.conv2d(x, ones, None, layer.stride, layer.padding, layer.dilation)
    return x.sum(-1, keepdim=True)


def _op(layer, x, w, b=None):
    """The layer's own operation (conv or linear) with weight ``w`` and bias ``b``."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, w, b)


def zero_point_output(layer: nn.Module, x, q_w, s_w, z_w) -> torch.Tensor:
    r"""The layer's output with weights s_w (q_w - z_w), computed as a deployment does: two terms.

    a = s_w sum(q_w x) - s_w z_w sum(x) + b: the integer-weight product plus a per-channel term
    s_w z_w * (sum of the inputs under the kernel) — the same sum(x) term an integer engine computes for
    z_w != 0. With a non-integer z_w (a folded u_c) this is exact; it is not a constant, so it cannot be
    folded into the bias. Shapes: layer Conv2d (groups=1) or Linear; x its input; q_w its weight's shape
    (integer values, any float dtype); s_w, z_w numbers or (C_out,). Raises TypeError for another layer,
    ValueError for a grouped conv or NaN/inf.

    >>> lin = nn.Linear(2, 1, bias=False)
    >>> zero_point_output(lin, torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, -1.0]]), 0.5, 0.25)
    tensor([[-0.8750]])
    """
    if not isinstance(layer, WEIGHT_LAYERS):
        raise TypeError(f"layer must be an nn.Conv2d or nn.Linear; got {type(layer).__name__}.")
    x = as_float_tensor(x, "x")
    q_w = as_float_tensor(q_w, "q_w").to(x.dtype)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    s = torch.as_tensor(s_w, dtype=x.dtype, device=x.device).reshape(-1).reshape(shape)
    z = torch.as_tensor(z_w, dtype=x.dtype, device=x.device).reshape(-1).reshape(shape)
    out = s * _op(layer, x, q_w) - s * z * _sum_x(layer, x)
    return out if layer.bias is None else out + layer.bias.reshape(shape)
