r"""Bias (mean) correction (end of section 9.3.1): empirical, as the text states it, and data-free (DFQ).

For each output channel i of a quantized layer, a_i = mean of the FP32 operator's output and a_q = mean of
the dequantized output of the quantized operator (over the calibration data and the spatial positions);
adding a_i - a_q to that channel's bias makes the output mean match FP32 (:func:`bias_correction_term`).
:func:`empirical_bias_correction` does it layer by layer in order, each layer against inputs that already
carry the earlier layers' corrected error (AIMET / Nagel et al. 2019). :func:`data_free_bias_correction`
(beyond the text, DFQ) needs no data: E[x] of a layer's input comes from the preceding batch norm's beta,
gamma (through the ReLU as a clipped Gaussian, :func:`clipped_gaussian_mean`), and b <- b - (w_hat - w) E[x].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import as_float_tensor, check_axis, check_model, check_same_device, model_device
from ..models import WEIGHT_LAYERS, find_layers, fold_batchnorm, replace_layers
from .quantizers import channel_means, effective_weights
from .weights import _pair

__all__ = ["channel_mean", "bias_correction_term", "apply_bias_terms", "empirical_bias_correction",
           "clipped_gaussian_mean", "expected_layer_inputs", "data_free_bias_correction"]


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
        quantize: FP32 model -> quantized model, e.g. ``weight_quantizer(4)`` or ``int_quantizer(...)``.
        calib_x: calibration images (N, ...) on the model's device. layers: names to correct (default all
            Conv2d/Linear).
    Returns:
        (corrected FP32 model, {name: a_i - a_q (C,)}); deploy it with ``quantize(corrected)``.
    Raises:
        ValueError/TypeError: calib_x None, not a tensor, NaN/inf or of a shape the model cannot take; a name
        that is not a Conv2d/Linear (the error names it and its kind); NaN/inf outputs (naming the layer).

    >>> from quantlab.correction import weight_quantizer
    >>> _ = torch.manual_seed(0); model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> x, quant = torch.randn(256, 4), weight_quantizer(2)
    >>> fixed, terms = empirical_bias_correction(model, quant, x)
    >>> bool(torch.allclose(quant(fixed)(x).mean(0), model(x).mean(0), atol=1e-5))   # output means match
    True
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


def clipped_gaussian_mean(mu, sigma) -> torch.Tensor:
    r"""E[max(0, X)] for X ~ N(mu, sigma^2): mu Phi(mu/sigma) + sigma phi(mu/sigma) (sigma = 0: max(0, mu)).

    The mean of a ReLU output whose input is a batch norm's output (mean beta, std |gamma|).
    Shapes: mu, sigma broadcast; sigma >= 0 (ValueError otherwise, and for NaN/inf). Returns float64.

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
    Linear without batch norm) get no entry. Returns tensors (C_in,) in the layer's weight dtype.

    >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3)).eval()
    >>> expected_layer_inputs(m)                  # beta = 0, gamma = 1: E[ReLU(N(0, 1))] = 0.3989
    {'3': tensor([0.3989, 0.3989])}
    """
    state, out = None, {}
    dev = model_device(model)
    for name, m in find_layers(model, (nn.BatchNorm2d, nn.ReLU) + WEIGHT_LAYERS):
        if isinstance(m, nn.BatchNorm2d):
            g = m.weight.detach() if m.affine else torch.ones(m.num_features, device=dev)
            b = m.bias.detach() if m.affine else torch.zeros(m.num_features, device=dev)
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


def data_free_bias_correction(model: nn.Module, quantize):
    r"""Data-free bias correction (Nagel et al. 2019, DFQ): b <- b - epsilon, epsilon = (w_hat - w) E[x].

    E[x] per input channel comes from the preceding batch norm (:func:`expected_layer_inputs`); w_hat is the
    weight ``quantize(model)`` computes with (:func:`~quantlab.correction.effective_weights`); for a conv,
    epsilon_c sums (w_hat - w)[c, k, i, j] E[x_k] over the kernel (zero padding ignored). Layers whose input
    does not follow a batch norm (the first conv, fc2 of the lab's CNN) are left as they are. ``model`` is
    not modified. Raises TypeError for a model that is not an nn.Module.

    Returns (corrected FP32 model with BN folded, {name: -epsilon (C,)}).

    >>> from quantlab.correction import weight_quantizer
    >>> _ = torch.manual_seed(0); m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
    ...                                         nn.Conv2d(2, 2, 3)).eval()
    >>> fixed, terms = data_free_bias_correction(m, weight_quantizer(2))
    >>> list(terms), tuple(terms["3"].shape)      # only the conv after BN -> ReLU
    (['3'], (2,))
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
