r"""Quantizers that feed the corrections (FP32 model -> quantized model), and what the corrections read.

:func:`weight_quantizer`: weight-only, fake-quantized weights (any bits and granularity), optionally weight
corrected (the corrected float weights are used directly: simulated). :func:`int_quantizer`: full
quantization on the integer engine (:func:`quantlab.ptq.convert`, run by :func:`quantlab.engine.run_int`),
with weight correction *deployed*: zeta_c folded into s_w, the shift rounded into an integer zero point,
the output grid widened where the folded scale makes M = s_w s_x / s_y >= 1.
:func:`channel_means` (a_q per channel), :func:`effective_weights` (w_hat) and :func:`evaluate_quantized`
read either kind of quantized model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..granularity import PerChannel, fake_quantize_weights
from ..linear import scale_zero_point
from ..models import activation_hooks, evaluate, find_layers, fold_batchnorm, replace_layers
from .weights import _check_rule, fold_weight_correction, scale_shift, weight_correction

__all__ = ["weight_quantizer", "int_quantizer", "effective_weights", "channel_means", "evaluate_quantized"]

_PER_CHANNEL = PerChannel(0)
_WIDEN_MARGIN = 1 + 1e-6  # the same margin quantlab.ptq.convert uses when it widens an output grid


def weight_quantizer(bits: int, granularity=_PER_CHANNEL, rule: str | None = None, symmetric: bool = True,
                     narrow: bool = True):
    r"""A function model -> weight-only quantized copy: w_hat = fake-quantized w (any bits, granularity),
    then, if ``rule`` is given, :func:`~quantlab.correction.weight_correction` (w, w_hat, rule) per output
    channel.

    Biases stay FP32. Uses :func:`quantlab.granularity.fake_quantize_weights`; the input model is never
    modified. Raises ValueError for an unknown rule (bits/granularity errors come from the quantizer).

    >>> lin = nn.Sequential(nn.Linear(2, 1))
    >>> _ = nn.init.constant_(lin[0].weight, 0.0); lin[0].weight.data[0, 0] = 1.0
    >>> weight_quantizer(2, rule="mean_norm")(lin)[0].weight.data  # the 2-bit grid keeps 1 and 0 exactly
    tensor([[1., 0.]])
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
    the shift when |v_c| < s_w'/2 (the lab measures what that costs). Where a folded zeta_c > 1 makes
    M = s_w' s_x / s_y >= 1, the layer's output range is widened (by the factor convert itself uses when
    M >= 1, so that M < 1) and the model is converted again, so the next layer's input grid, bias and M
    follow the wider grid; this repeats layer by layer, in order.
    act_ranges: from :func:`quantlab.ptq.calibrate_activations` (any calibration method). Raises ValueError
    for an unknown rule (others as convert).

    >>> from quantlab.ptq import calibrate_activations
    >>> from quantlab.engine import run_int
    >>> _ = torch.manual_seed(0); model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> x = torch.randn(64, 4)
    >>> qm = int_quantizer(calibrate_activations(model, x, input_shape=(4,)), 4, 8, rule="text")(model)
    >>> run_int(qm, x).shape
    torch.Size([64, 2])
    """
    from ..ptq import convert

    if rule is not None:
        _check_rule(rule)

    def quantize(model: nn.Module):
        qm = convert(model, act_ranges, weight_bits, act_bits, granularity)
        if rule is None:
            return qm
        fp = dict(find_layers(fold_batchnorm(model)))
        ranges = act_ranges
        for _ in range(len(qm.layers) + 1):
            too_fine = _fold_correction(qm, fp, rule)
            if too_fine is None:
                return qm
            ranges = _widen_output(ranges, model, *too_fine)
            qm = convert(model, ranges, weight_bits, act_bits, granularity)
        raise ValueError(f"weight correction could not be deployed: layer {too_fine[0].name!r} still has M >= 1 "
                         "after widening its output grid.")

    return quantize


def _fold_correction(qm, fp: dict, rule: str):
    """Fold the correction into each integer layer of ``qm`` in place, in order: s_w <- zeta s_w,
    z_w <- round(z_w - v / s_w'), q_b re-quantized at s_w' s_x. Stops at the first layer whose folded scale
    makes M = s_w' s_x / s_y >= 1 and returns (that layer, its largest s_w'); None when every layer folded."""
    from ..engine import quantize_bias

    for i, layer in enumerate(qm.layers):
        if getattr(layer, "name", None) not in fp or not hasattr(layer, "q_w"):
            continue
        m = fp[layer.name]
        shape = (-1,) + (1,) * (layer.q_w.ndim - 1)
        w_hat = layer.s_w.double().view(shape) * (layer.q_w.double() - layer.z_w.double().view(shape))
        zeta, v = scale_shift(m.weight.detach().cpu().double(), w_hat, rule)     # the IntModel lives on the CPU
        s_new, z_new = fold_weight_correction(layer.s_w.double().view(shape), layer.z_w.view(shape), zeta, v)
        s_new = s_new.reshape(-1).float()
        if float(s_new.double().max()) * layer.s_x / layer.s_y >= 1.0:
            return layer, float(s_new.double().max())
        bias = m.bias.detach().cpu() if m.bias is not None else torch.zeros(len(layer.s_w))
        try:
            qm.layers[i] = dataclasses.replace(layer, s_w=s_new, z_w=torch.round(z_new).reshape(-1).long(),
                                               q_b=quantize_bias(bias, s_new, layer.s_x))
        except (ValueError, OverflowError) as e:
            raise ValueError(f"layer {layer.name!r}: weight correction cannot be deployed: {e}") from e
    return None


def _widen_output(act_ranges, model: nn.Module, layer, s_w_max: float):
    """act_ranges with ``layer``'s output range scaled so that its grid gets s_y >= s_w_max s_x (M < 1).

    The output range is the fused ReLU's when the layer has one (as in convert). The scale of a range is
    linear in it (scale_zero_point includes 0), so scaling the range by k scales s_y by k."""
    from ..ptq import layer_chain

    names = [n for n, m in layer_chain(fold_batchnorm(model)) if not isinstance(m, (nn.Identity, nn.Dropout))]
    k = names.index(layer.name)
    out_name = names[k + 1] if layer.relu else layer.name
    r_min, r_max = act_ranges.ranges[out_name]
    s_r = float(scale_zero_point(r_min, r_max, layer.q_min, layer.q_max)[0])
    factor = s_w_max * layer.s_x * _WIDEN_MARGIN / s_r
    ranges = dict(act_ranges.ranges, **{out_name: (r_min * factor, r_max * factor)})
    return dataclasses.replace(act_ranges, ranges=ranges)


def effective_weights(qmodel) -> dict:
    r"""{layer name: the weight the quantized model computes with}: w_hat of an nn.Module's Conv2d/Linear,
    or s_w (q_w - z_w) of an IntModel's integer layers (float32, on the CPU like the engine).

    >>> w = effective_weights(weight_quantizer(2)(nn.Sequential(nn.Linear(4, 3))))
    >>> list(w), tuple(w["0"].shape)
    (['0'], (3, 4))
    """
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


def _int_records(qmodel, x, names, batch_size, add):
    """Feed the dequantized accumulators s_w s_x acc of the named integer layers to ``add``, batch by batch."""
    from ..engine import run_int

    layers = {ly.name: ly for ly in qmodel.layers}
    for k in range(0, len(x), batch_size):
        _, records = run_int(qmodel, x[k:k + batch_size].cpu(), intermediates=True)
        for r in records:
            if r["name"] in names:
                ly = layers[r["name"]]
                shape = (1, -1) + (1,) * (r["acc"].ndim - 2)
                add(r["name"], r["acc"].double() * ly.s_w.double().view(shape) * ly.s_x)


@torch.no_grad()
def channel_means(qmodel, x: torch.Tensor, names, batch_size: int = 250) -> dict:
    r"""{name: E[output] per channel (C,)} of the named Conv2d/Linear layers on x: mean over images and positions.

    For an nn.Module: the layer's output. For an IntModel: the dequantized accumulator s_w s_x acc (the
    output before the fused ReLU and requantization). ValueError naming the layer on NaN/inf outputs, or
    for a name the model does not have. The integer engine runs on the CPU (results are returned there).

    >>> lin = nn.Sequential(nn.Linear(2, 2))
    >>> _ = nn.init.eye_(lin[0].weight); _ = nn.init.zeros_(lin[0].bias)
    >>> channel_means(lin, torch.tensor([[1.0, 2.0], [3.0, 6.0]]), ["0"])
    {'0': tensor([2., 4.])}
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
        _int_records(qmodel, x, names, batch_size, add)
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"the quantized model has no layer {missing}; layers are named as in the FP32 model.")
    return {n: (sums[n] / count[n]).float() for n in names}


def evaluate_quantized(qmodel, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of an nn.Module (:func:`quantlab.models.evaluate`) or an IntModel (``run_int``, on the CPU).

    >>> lin = nn.Sequential(nn.Linear(3, 3)); _ = nn.init.eye_(lin[0].weight); _ = nn.init.zeros_(lin[0].bias)
    >>> evaluate_quantized(lin, torch.eye(3), torch.tensor([0, 1, 1]))   # rows' argmax 0, 1, 2
    0.6666666666666666
    """
    if isinstance(qmodel, nn.Module):
        return evaluate(qmodel, x, y)
    from ..engine import run_int

    with torch.no_grad():
        return float((run_int(qmodel, x.cpu()).argmax(1) == y.cpu()).float().mean())
