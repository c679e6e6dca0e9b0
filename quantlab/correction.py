r"""Correcting quantization errors (end of section 9.3.1): bias (mean) correction and weight correction.

The text, for a = sum_i w_i x_i + b:

* **Bias (mean) correction.** For each output channel i, a_i = mean of the FP32 operator's output and
  a_q = mean of the dequantized output of the quantized operator (over the calibration data and the
  spatial positions); add a_i - a_q to that channel's bias, so the output mean matches FP32.
  :func:`empirical_bias_correction` does it layer by layer in order, each layer against inputs that
  already carry the earlier layers' corrected error (AIMET / Nagel et al. 2019).
  :func:`data_free_bias_correction` (beyond the text, DFQ) needs no data: E[x] of a layer's input comes
  from the preceding batch norm's beta, gamma (through the ReLU as a clipped Gaussian), and
  b <- b - (w_hat - w) E[x].
* **Weight correction.** Per channel c, u_c = E(w_c) - E(w_hat_c),
  zeta_c = ||w_c - E(w_c)|| / ||w_hat_c - E(w_hat_c)||, and w_hat_c <- zeta_c (w_hat_c + u_c)
  (:func:`weight_correction`, rule "text"). Its mean becomes zeta_c E(w_c), not E(w_c); the rule
  "mean_norm" (Banner et al. 2019's code) shifts then scales around the mean,
  (w_hat_c - E(w_hat_c)) zeta_c + E(w_c), and restores both mean and norm exactly.

Corrected weights leave the grid. A deployment keeps them on a grid by folding: zeta_c into the channel's
scale (s_c <- zeta_c s_c, exact) and the shift into the weight zero point (z_c <- z_c - u_c / s_c, in
general not an integer): :func:`fold_weight_correction`, :func:`zero_point_output`.

Two quantizers feed the corrections (each maps an FP32 model to its quantized version):
:func:`weight_quantizer` (weight-only, fake-quantized weights, any bits/granularity) and
:func:`int_quantizer` (full quantization on the integer engine, :func:`quantlab.ptq.convert` +
:func:`quantlab.engine.run_int`; a corrected bias is re-quantized to int32 at s_w s_x by ``convert``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import as_float_tensor, check_axis, check_model, check_same_device
from .granularity import PerChannel, fake_quantize_weights
from .models import WEIGHT_LAYERS, activation_hooks, evaluate, find_layers, fold_batchnorm, replace_layers

__all__ = [
    "RULES", "channel_mean", "bias_correction_term", "correction_factors", "scale_shift", "weight_correction",
    "fold_weight_correction", "zero_point_output", "clipped_gaussian_mean", "expected_layer_inputs",
    "weight_quantizer", "int_quantizer", "effective_weights", "channel_means", "evaluate_quantized",
    "apply_bias_terms", "empirical_bias_correction", "data_free_bias_correction",
]

_PER_CHANNEL = PerChannel(0)

#: Weight-correction rules: the text's zeta_c (w_hat_c + u_c), and shift-then-scale around the mean.
RULES = ("text", "mean_norm")


# ---------------------------------------------------------------------------------------------------
# The formulas on tensors
# ---------------------------------------------------------------------------------------------------


def _pair(a, b, names):
    a, b = as_float_tensor(a, names[0]), as_float_tensor(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape; got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    if a.ndim == 0:
        raise ValueError(f"{names[0]} must have a channel dimension; got a 0-d tensor.")
    return a, b


def channel_mean(a, axis: int = 1) -> torch.Tensor:
    r"""Mean of ``a`` over every dimension except ``axis``: the batch and the spatial positions. Shape (C,).

    a: (N, C, H, W) or (N, C) output of a layer (axis 1 = channels). Raises ValueError for NaN/inf or a
    bad axis.

    >>> channel_mean(torch.arange(8.).reshape(2, 2, 2))     # channel 0: 0, 1, 4, 5; channel 1: 2, 3, 6, 7
    tensor([2.5000, 4.5000])
    """
    a = as_float_tensor(a, "a")
    axis = check_axis(axis, a.ndim)
    return a.movedim(axis, 0).reshape(a.shape[axis], -1).mean(1)


def bias_correction_term(a_fp, a_q, axis: int = 1) -> torch.Tensor:
    r"""a_i - a_q per output channel: the amount to add to each channel's bias.

    a_i = E[a_fp] and a_q = E[a_q], means over every dimension except ``axis`` (batch and space).
    Shapes: a_fp, a_q (N, C, H, W) or (N, C), same shape; returns (C,). Raises ValueError for NaN/inf,
    different shapes or a bad axis.

    >>> bias_correction_term(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 2.5]]))
    tensor([ 0.5000, -0.5000])
    """
    a_fp, a_q = _pair(a_fp, a_q, ("a_fp", "a_q"))
    return channel_mean(a_fp, axis) - channel_mean(a_q, axis)


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
    :func:`correction_factors`.

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


def _check_rule(rule):
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES} ('text': zeta_c (w_hat_c + u_c); 'mean_norm': "
                         f"(w_hat_c - E(w_hat_c)) zeta_c + E(w_c)); got {rule!r}.")


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
    broadcasts (per tensor or (C, 1, ...)); returns float64 (s', z').

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
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, w, b)


def zero_point_output(layer: nn.Module, x, q_w, s_w, z_w) -> torch.Tensor:
    r"""The layer's output with weights s_w (q_w - z_w), computed as a deployment does: two terms.

    a = s_w sum(q_w x) - s_w z_w sum(x) + b: the integer-weight product plus a per-channel term
    s_w z_w * (sum of the inputs under the kernel) — the same sum(x) term an integer engine computes for
    z_w != 0. With a non-integer z_w (a folded u_c) this is exact; it is not a constant, so it cannot be
    folded into the bias. Shapes: layer Conv2d (groups=1) or Linear; x its input; q_w its weight's shape
    (integer values, any float dtype); s_w, z_w numbers or (C_out,). Raises TypeError for another layer.

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


# ---------------------------------------------------------------------------------------------------
# Data-free: E[x] from batch norm
# ---------------------------------------------------------------------------------------------------


def clipped_gaussian_mean(mu, sigma) -> torch.Tensor:
    r"""E[max(0, X)] for X ~ N(mu, sigma^2): mu Phi(mu/sigma) + sigma phi(mu/sigma) (sigma = 0: max(0, mu)).

    The mean of a ReLU output whose input is a batch norm's output (mean beta, std |gamma|).
    Shapes: mu, sigma broadcast; sigma >= 0 (ValueError otherwise). Returns float64.

    >>> round(float(clipped_gaussian_mean(0.0, 1.0)), 4)    # 1 / sqrt(2 pi)
    0.3989
    """
    mu, sigma = (torch.as_tensor(t, dtype=torch.float64) for t in (mu, sigma))
    if bool((sigma < 0).any()) or not bool(torch.isfinite(mu).all() & torch.isfinite(sigma).all()):
        raise ValueError("sigma must be finite and >= 0 (and mu finite); pass |gamma| of the batch norm.")
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    t = mu / safe
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(t / math.sqrt(2)))
    return torch.where(sigma > 0, mu * cdf + safe * pdf, mu.clamp(min=0))


def expected_layer_inputs(model: nn.Module) -> dict:
    r"""{layer name: E[x] per input feature}, for the Conv2d/Linear layers whose input follows a BatchNorm2d.

    Walks BatchNorm2d, ReLU, Conv2d and Linear in registration (= forward, for a Sequential) order: after
    a batch norm x ~ N(beta_c, gamma_c^2) per channel; through a ReLU E[x] = clipped_gaussian_mean(beta,
    |gamma|). Pooling is ignored (max pooling raises the mean: an approximation, as in DFQ); a Linear after
    Flatten repeats each channel's E[x] over its positions. Layers fed by anything else (the image, a
    Linear without batch norm) get no entry. Returns float32 tensors (C_in,) on the model's device.

    >>> sorted(expected_layer_inputs(load_trained()))      # doctest: +SKIP
    ['conv2', 'fc1']
    """
    state, out = None, {}
    for name, m in find_layers(model, (nn.BatchNorm2d, nn.ReLU) + WEIGHT_LAYERS):
        if isinstance(m, nn.BatchNorm2d):
            g = m.weight.detach() if m.affine else torch.ones(m.num_features)
            b = m.bias.detach() if m.affine else torch.zeros(m.num_features)
            state = ("gauss", b.double(), g.double().abs())
        elif isinstance(m, nn.ReLU):
            state = None if state is None else ("mean", clipped_gaussian_mean(state[1], state[2]))
        else:
            if state is not None:
                e_x = state[1]
                n_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
                if n_in % len(e_x) == 0:
                    out[name] = e_x.repeat_interleave(n_in // len(e_x)).to(m.weight.dtype)
            state = None
    return out


# ---------------------------------------------------------------------------------------------------
# Quantizers: FP32 model -> quantized model, and what the corrections read from it
# ---------------------------------------------------------------------------------------------------


def weight_quantizer(bits: int, granularity=_PER_CHANNEL, rule: str | None = None, symmetric: bool = True,
                     narrow: bool = True):
    r"""A function model -> weight-only quantized copy: w_hat = fake-quantized w (any bits, granularity),
    then, if ``rule`` is given, :func:`weight_correction` (w, w_hat, rule) per output channel.

    Biases stay FP32. Uses :func:`quantlab.granularity.fake_quantize_weights`.

    >>> wq = weight_quantizer(4, rule="text")(nn.Sequential(nn.Linear(8, 4)))
    """
    if rule is not None:
        _check_rule(rule)

    def quantize(model: nn.Module) -> nn.Module:
        q = fake_quantize_weights(model, bits, granularity, symmetric=symmetric, narrow=narrow)
        if rule is None:
            return q
        originals = dict(find_layers(model))

        def correct(name, layer):
            with torch.no_grad():
                layer.weight.copy_(weight_correction(originals[name].weight.detach(), layer.weight.detach(),
                                                     rule, axis=0))
            return layer

        return replace_layers(q, correct)

    return quantize


def int_quantizer(act_ranges, weight_bits: int = 8, act_bits: int | None = None, granularity=_PER_CHANNEL,
                  rule: str | None = None):
    r"""A function model -> IntModel (full quantization: :func:`quantlab.ptq.convert`, run by ``run_int``).

    convert re-quantizes each (corrected) bias to int32 at s_w s_x. With ``rule``, weight correction is
    deployed on the integers: zeta_c folds into the channel's scale exactly (s_w <- zeta_c s_w, so a
    per-tensor layer gets per-channel scales) and the shift goes into the weight zero point
    z_w <- round(z_w - v_c / s_w'), rounded because the engine's zero points are integers — which drops
    the shift when |v_c| < s_w'/2 (the lab measures what that costs).
    act_ranges: from :func:`quantlab.ptq.calibrate_activations` (any calibration method).
    """
    from .engine import quantize_bias
    from .ptq import convert

    if rule is not None:
        _check_rule(rule)

    def quantize(model: nn.Module):
        qm = convert(model, act_ranges, weight_bits, act_bits, granularity)
        if rule is None:
            return qm
        fp = dict(find_layers(fold_batchnorm(model)))
        for i, layer in enumerate(qm.layers):
            if getattr(layer, "name", None) not in fp or not hasattr(layer, "q_w"):
                continue
            m = fp[layer.name]
            shape = (-1,) + (1,) * (layer.q_w.ndim - 1)
            w_hat = layer.s_w.double().view(shape) * (layer.q_w.double() - layer.z_w.double().view(shape))
            zeta, v = scale_shift(m.weight.detach().double(), w_hat, rule)
            s_new, z_new = fold_weight_correction(layer.s_w.double().view(shape), layer.z_w.view(shape), zeta, v)
            bias = m.bias.detach() if m.bias is not None else torch.zeros(len(layer.s_w))
            s_new = s_new.reshape(-1).float()
            try:
                qm.layers[i] = dataclasses.replace(layer, s_w=s_new, z_w=torch.round(z_new).reshape(-1).long(),
                                                   q_b=quantize_bias(bias, s_new, layer.s_x))
            except ValueError as e:
                raise ValueError(f"layer {layer.name!r}: weight correction cannot be deployed: {e}") from e
        return qm

    return quantize


def effective_weights(qmodel) -> dict:
    r"""{layer name: the weight the quantized model computes with}: w_hat of an nn.Module's Conv2d/Linear,
    or s_w (q_w - z_w) of an IntModel's integer layers (float32)."""
    if isinstance(qmodel, nn.Module):
        return {n: m.weight.detach() for n, m in find_layers(qmodel)}
    out = {}
    for layer in getattr(qmodel, "layers", []):
        if hasattr(layer, "q_w"):
            shape = (-1,) + (1,) * (layer.q_w.ndim - 1)
            out[layer.name] = (layer.s_w.view(shape) * (layer.q_w.float() - layer.z_w.view(shape).float()))
    return out


def _check_finite(name, a):
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"layer {name!r} produced NaN/inf outputs on the calibration data; check its weights "
                         "(and the data) before correcting.")


@torch.no_grad()
def channel_means(qmodel, x: torch.Tensor, names, batch_size: int = 250) -> dict:
    r"""{name: E[output] per channel (C,)} of the named Conv2d/Linear layers on x: mean over images and positions.

    For an nn.Module: the layer's output. For an IntModel: the dequantized accumulator s_w s_x acc (the
    output before the fused ReLU and requantization). ValueError naming the layer on NaN/inf outputs.
    The integer engine runs on the CPU (results are returned there).
    """
    names = list(names)
    sums, count = {}, {}

    def add(name, a):
        a = a.detach()
        _check_finite(name, a)
        flat = a.movedim(1, 0).reshape(a.shape[1], -1).double()
        sums[name] = sums.get(name, 0) + flat.sum(1)
        count[name] = count.get(name, 0) + flat.shape[1]

    if isinstance(qmodel, nn.Module):
        was = qmodel.training
        qmodel.eval()
        try:
            with activation_hooks(qmodel, add, names):
                for k in range(0, len(x), batch_size):
                    qmodel(x[k:k + batch_size])
        finally:
            qmodel.train(was)
    else:
        from .engine import run_int

        layers = {ly.name: ly for ly in qmodel.layers}
        for k in range(0, len(x), batch_size):
            _, records = run_int(qmodel, x[k:k + batch_size].cpu(), intermediates=True)
            for r in records:
                if r["name"] in names:
                    ly = layers[r["name"]]
                    shape = (1, -1) + (1,) * (r["acc"].ndim - 2)
                    add(r["name"], r["acc"].double() * ly.s_w.double().view(shape) * ly.s_x)
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"the quantized model has no layer {missing}; layers are named as in the FP32 model.")
    return {n: (sums[n] / count[n]).float() for n in names}


def evaluate_quantized(qmodel, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of an nn.Module (:func:`quantlab.models.evaluate`) or an IntModel (``run_int``)."""
    if isinstance(qmodel, nn.Module):
        return evaluate(qmodel, x, y)
    from .engine import run_int

    with torch.no_grad():
        return float((run_int(qmodel, x.cpu()).argmax(1) == y.cpu()).float().mean())


# ---------------------------------------------------------------------------------------------------
# Bias correction of a model
# ---------------------------------------------------------------------------------------------------


def apply_bias_terms(model: nn.Module, terms: dict) -> nn.Module:
    r"""A copy of ``model`` with b_c <- b_c + terms[name]_c for each named Conv2d/Linear (a layer without a
    bias gets one). ``model`` is not modified. ValueError naming the layer for an unknown name or a term
    whose shape is not (C_out,).

    >>> m = apply_bias_terms(nn.Sequential(nn.Linear(2, 2, bias=False)), {"0": torch.tensor([1.0, -1.0])})
    >>> m[0].bias.data
    tensor([ 1., -1.])
    """
    _check_layer_names(model, terms)

    def add(name, layer):
        if name not in terms:
            return layer
        t = torch.as_tensor(terms[name]).detach().to(layer.weight.device, layer.weight.dtype).reshape(-1)
        if t.numel() != layer.weight.shape[0] or not bool(torch.isfinite(t).all()):
            raise ValueError(f"the bias term must be finite with shape ({layer.weight.shape[0]},); got "
                             f"{tuple(torch.as_tensor(terms[name]).shape)}.")
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(t))
        with torch.no_grad():
            layer.bias.add_(t)
        return layer

    return replace_layers(model, add)


def _check_layer_names(model, names):
    """Every name must be a Conv2d/Linear of ``model``; the error names the layer and its kind."""
    check_model(model)
    ok = {n for n, _ in find_layers(model)}
    modules = dict(model.named_modules())
    for n in names:
        if n in ok:
            continue
        if n in modules and n:
            raise ValueError(f"layer {n!r} ({type(modules[n]).__name__}) cannot be bias-corrected: only "
                             f"Conv2d and Linear layers can; this model's are {sorted(ok)}.")
        raise ValueError(f"layers names no layer {n!r} of this model; its Conv2d/Linear layers are {sorted(ok)}.")
    return list(names)


def _check_calib(model, calib_x):
    if calib_x is None:
        raise ValueError("calib_x is None: empirical bias correction needs calibration data, e.g. "
                         "quantlab.data.calibration_batch(500) — or use data_free_bias_correction(model, quantize).")
    if not isinstance(calib_x, torch.Tensor):
        raise TypeError(f"calib_x must be a torch.Tensor of input images; got {type(calib_x).__name__}.")
    calib_x = as_float_tensor(calib_x, "calib_x")
    check_same_device(model, calib_x, "calib_x")
    try:
        with torch.no_grad():
            model.eval()(calib_x[:1])
    except RuntimeError as e:
        raise ValueError(f"calib_x has shape {tuple(calib_x.shape)}, which the model cannot take (a batch of its "
                         f"inputs, e.g. (N, 1, 28, 28) for the lab's CNN): {str(e).splitlines()[0]}") from None
    return calib_x


def empirical_bias_correction(model: nn.Module, quantize, calib_x: torch.Tensor, layers=None,
                              batch_size: int = 250):
    r"""Bias correction as the text states it, layer by layer in order (AIMET / Nagel et al. 2019).

    For each layer L (in forward order): a_i = E[FP32 output of L] on calib_x (FP32 inputs), a_q = E[output of
    L in quantize(current model)] — so its inputs carry the earlier layers' *corrected* quantization error —
    then b_L <- b_L + (a_i - a_q) in the FP32 model ``current``. Means over images and positions, per channel.

    Args:
        model: FP32 model (batch norms are folded first; ``model`` itself is never modified).
        quantize: FP32 model -> quantized model, e.g. :func:`weight_quantizer` (4) or :func:`int_quantizer`.
        calib_x: calibration images (N, ...) on the model's device. layers: names to correct (default all
            Conv2d/Linear).
    Returns:
        (corrected FP32 model, {name: a_i - a_q (C,)}); deploy it with ``quantize(corrected)``.
    Raises:
        ValueError/TypeError: calib_x None, not a tensor, NaN/inf or of a shape the model cannot take; a name
        that is not a Conv2d/Linear (the error names it and its kind); NaN/inf outputs (naming the layer).

    >>> q = weight_quantizer(3)
    >>> fixed, terms = empirical_bias_correction(load_trained(), q, calibration_batch(500))  # doctest: +SKIP
    """
    folded = fold_batchnorm(check_model(model))
    names = _check_layer_names(folded, [n for n, _ in find_layers(folded)] if layers is None else layers)
    calib_x = _check_calib(folded, calib_x)
    a_i = channel_means(folded, calib_x, names, batch_size)
    current, terms = folded, {}
    for name in names:
        a_q = channel_means(quantize(current), calib_x, [name], batch_size)[name]
        terms[name] = (a_i[name] - a_q.to(a_i[name].device))
        current = apply_bias_terms(current, {name: terms[name]})
    return current, terms


def data_free_bias_correction(model: nn.Module, quantize):
    r"""Data-free bias correction (Nagel et al. 2019, DFQ): b <- b - epsilon, epsilon = (w_hat - w) E[x].

    E[x] per input channel comes from the preceding batch norm (:func:`expected_layer_inputs`); w_hat is the
    weight ``quantize(model)`` computes with (:func:`effective_weights`); for a conv, epsilon_c sums
    (w_hat - w)[c, k, i, j] E[x_k] over the kernel (zero padding ignored). Layers whose input does not follow
    a batch norm (the first conv, fc2 of the lab's CNN) are left as they are. ``model`` is not modified.

    Returns (corrected FP32 model with BN folded, {name: -epsilon (C,)}).

    >>> fixed, terms = data_free_bias_correction(load_trained(), weight_quantizer(3))   # doctest: +SKIP
    """
    check_model(model)
    e_x = expected_layer_inputs(model)
    folded = fold_batchnorm(model)
    w_hat = effective_weights(quantize(folded))
    terms = {}
    for name, layer in find_layers(folded):
        if name not in e_x or name not in w_hat:
            continue
        dw = (w_hat[name].to(layer.weight.device) - layer.weight.detach()).double()
        ex = e_x[name].double().to(dw.device)
        groups = getattr(layer, "groups", 1)
        per_out = ex.view(groups, -1).repeat_interleave(dw.shape[0] // groups, 0)   # (C_out, C_in/groups)
        if dw.ndim > 2:
            dw = dw.sum(tuple(range(2, dw.ndim)))
        terms[name] = (-(dw * per_out).sum(1)).float()
    return apply_bias_terms(folded, terms), terms
