r"""Full post-training quantization: calibrate the activation ranges, then convert to integer layers.

Step 1, :func:`calibrate_activations`: run a calibration set through the BN-folded FP32 model and record
each activation's range (r_min, r_max) with an observer fed by forward hooks
(:func:`quantlab.models.activation_hooks`). Step 2, :func:`convert`: weights q_w (symmetric, narrow
grid), int32 biases, activation grids (s, z) from the ranges (:func:`quantlab.granularity.qparams_from_range`)
and the multipliers M = s_w s_x / s_y, as the layers of :class:`quantlab.engine.IntModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_bits, check_images, check_positive_int, check_same_device, model_device
from ..engine import (
    IntAvgPool2d,
    IntConv2d,
    IntFlatten,
    IntLinear,
    IntMaxPool2d,
    IntModel,
    IntReLU,
    quantize_bias,
)
from ..granularity import choose_qparams, qparams_from_range
from ..linear import quantize
from ..models import activation_hooks, fold_batchnorm
from .weights import check_granularity

__all__ = ["SUPPORTED_LAYERS", "ActRanges", "layer_chain", "calibrate_activations", "convert"]

#: Layers the integer engine runs (BatchNorm2d only when it directly follows a Conv2d: it is folded).
SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
                    nn.BatchNorm2d, nn.Identity, nn.Dropout)


def layer_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf layers in order, as (name, module); ValueError listing any unsupported layer.

    >>> [n for n, _ in layer_chain(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
    ['0', '1']
    """
    model_device(model)
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    bad = [f"{n} ({type(m).__name__})" for n, m in leaves if not isinstance(m, SUPPORTED_LAYERS)]
    if bad:
        names = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise ValueError(
            f"the integer engine does not support these layers: {', '.join(bad)}. Supported: {names} "
            "(BatchNorm2d only right after a Conv2d, where it is folded). Replace them, or use "
            "quantize_weights(model) (weight quantization runs any FP32 model)."
        )
    return leaves


@dataclass
class ActRanges:
    """Calibrated activation ranges: ``ranges[name] = (r_min, r_max)`` of each layer's output.

    ``"input"`` is the network input; a layer's input range is the previous layer's output range.
    ``bits`` and ``method`` record how they were chosen; ``n_images`` the calibration-set size.
    """

    ranges: dict
    method: str
    bits: int
    n_images: int


class _NotAChain(ValueError):
    def __init__(self, detail: str):
        super().__init__(f"the model is not a plain chain of its layers ({detail}; its forward() does something "
                         "else, e.g. a skip connection); the integer engine runs layers one after another.")


class _ChainObserver:
    """Hook bodies for one calibration forward: feed each layer's output to its observer, refuse NaN/inf
    (naming the layer), and check each layer's input is the previous layer's output (a plain chain)."""

    def __init__(self, names: list[str], observers: dict):
        self.names, self.observers = names, observers
        self.i, self.prev = 0, None

    def start(self, x: torch.Tensor) -> None:
        self.i, self.prev = 0, x
        if "input" in self.observers:
            self.observers["input"](x)

    def on_input(self, name: str, a: torch.Tensor) -> None:
        if self.i >= len(self.names) or name != self.names[self.i]:
            raise _NotAChain(f"layer {name!r} ran out of order")
        if not (a is self.prev or torch.equal(a, self.prev)):
            raise _NotAChain(f"the input of layer {name!r} is not the previous layer's output")

    def on_output(self, name: str, a: torch.Tensor) -> None:
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f"layer {name!r} produced NaN/inf activations on the calibration set; "
                             "check the model's weights (and BatchNorm statistics).")
        if name in self.observers:
            self.observers[name](a)
        self.prev, self.i = a, self.i + 1

    def finish(self, out: torch.Tensor) -> None:
        if self.i != len(self.names) or not (out is self.prev or torch.equal(out, self.prev)):
            raise _NotAChain("the model's output is not the last layer's output")


def calibrate_activations(model: nn.Module, calib_x: torch.Tensor, method: str = "minmax", bits: int = 8,
                          batch_size: int = 250, progress: bool = False,
                          input_shape: tuple = (1, 28, 28)) -> ActRanges:
    r"""Run the calibration set through the (BN-folded) FP32 model and record each layer's activation range.

    Each activation gets an observer (:mod:`quantlab.observers`), fed by forward hooks
    (:func:`quantlab.models.activation_hooks`): "minmax" keeps the running r_min, r_max; the other methods of
    :data:`quantlab.calibration.METHODS` ("percentile", "mse", "kl", "symmetric_kl", "js") keep the
    histogram P_f (on the CPU: each batch's activations are copied there) and search the clip range
    (:func:`quantlab.calibration.calibrate_range`) for the unsigned ``bits``-bit grid.
    ``progress=True`` shows a tqdm bar over the batches. Runs on the model's device.

    Shapes: calib_x float (N, *input_shape), 1 <= N, on the model's device (default (N, 1, 28, 28)).
    Raises TypeError for a non-model or non-float/uint8 calib_x; ValueError for an unknown method, an empty
    set, a wrong shape (the message gives the expected shape), NaN/inf in the data or in any layer's
    activations (naming the layer), a model and calib_x on different devices, a meta or half-moved model,
    an unsupported layer, or a model that is not a plain chain of its layers. ``model`` is never modified.

    >>> m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()).eval()
    >>> acts = calibrate_activations(m, torch.rand(16, 1, 2, 2), input_shape=(1, 2, 2))
    >>> sorted(acts.ranges), acts.ranges["2"][0]
    (['0', '1', '2', 'input'], 0.0)
    """
    from tqdm.auto import tqdm

    from ..calibration import METHODS, calibrate_range
    from ..observers import HistogramObserver, MinMaxObserver

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    bits = check_bits(bits, low=2, high=16)
    batch_size = check_positive_int(batch_size, "batch_size")
    check_same_device(model, check_images(calib_x, "calib_x", input_shape), "calib_x")
    folded = fold_batchnorm(model)
    chain = layer_chain(folded)
    # min/max is cheap: observe every layer. A histogram (for the searches) only where convert needs a grid.
    points = {n for n, _ in chain} | {"input"} if method == "minmax" else _quantization_points(chain)
    observers = {n: MinMaxObserver() if method == "minmax" else HistogramObserver(bins=2048) for n in points}
    watch = _ChainObserver([n for n, _ in chain], observers)
    names = [n for n, _ in chain]
    with torch.no_grad(), activation_hooks(folded, watch.on_input, names, inputs=True), \
            activation_hooks(folded, watch.on_output, names):
        for k in tqdm(range(0, calib_x.shape[0], batch_size), desc=f"calibrating ({method})",
                      disable=not progress, leave=False):
            x = calib_x[k:k + batch_size].to(torch.float32)
            watch.start(x)
            watch.finish(folded(x))
    # Activations use the unsigned asymmetric grid [0, 2^b - 1] (uint8 at 8 bits).
    ranges = {n: tuple(float(v) for v in calibrate_range(obs, method, bits, symmetric=False, signed=False))
              for n, obs in observers.items()}
    return ActRanges(ranges, method, bits, int(calib_x.shape[0]))


def _quantization_points(chain) -> set:
    """Names whose output convert() puts on a new grid: the input, and each Conv2d/Linear output (or the
    output of the ReLU fused into it). Pooling, Flatten and unfused ReLUs keep their input's grid."""
    chain = [(n, m) for n, m in chain if not isinstance(m, (nn.Identity, nn.Dropout))]
    points = {"input"}
    for i, (name, m) in enumerate(chain):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fuse = i + 1 < len(chain) and isinstance(chain[i + 1][1], nn.ReLU)
            points.add(chain[i + 1][0] if fuse else name)
    return points


def _act_qparams(r_min: float, r_max: float, bits: int, signed: bool, scale=1.0):
    """(s, z, q_min, q_max) of an activation (asymmetric, range times ``scale``) as Python numbers."""
    p = qparams_from_range(r_min * scale, r_max * scale, bits, symmetric=False, signed=signed)
    return float(p.s), int(p.z), p.q_min, p.q_max


def _int_matmul(name: str, m: nn.Module, fuse: bool, cur: tuple, out_range, weight_bits: int, act_bits: int,
                act_signed: bool, granularity):
    """One IntConv2d/IntLinear from a (CPU, folded) Conv2d/Linear: q_w, q_b, output grid with M < 1."""
    w = m.weight.detach()
    p = choose_qparams(w, weight_bits, granularity, symmetric=True, narrow=True)
    q_w = quantize(w, p.s, p.z, p.q_min, p.q_max).to(torch.int8)
    c_out = w.shape[0]
    s_w = p.s.reshape(-1).expand(c_out).to(torch.float32).clone()
    s_x, z_x = cur[0], cur[1]
    out = _act_qparams(*out_range, act_bits, act_signed)
    M_max = float(s_w.max()) * s_x / out[0]
    if M_max >= 1.0:  # output grid finer than one accumulator step: widen it so that M < 1
        out = _act_qparams(*out_range, act_bits, act_signed, scale=M_max * (1 + 1e-6))
    bias = m.bias.detach() if m.bias is not None else torch.zeros(c_out)
    common = dict(name=name, q_w=q_w, s_w=s_w, z_w=torch.zeros(c_out, dtype=torch.int64),
                  q_b=quantize_bias(bias, s_w, s_x), s_x=s_x, z_x=z_x, s_y=out[0], z_y=out[1], q_min=out[2],
                  q_max=out[3], relu=fuse)
    if isinstance(m, nn.Linear):
        return IntLinear(**common), out
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"only numeric zero padding is supported; got padding={m.padding!r}, "
                         f"padding_mode={m.padding_mode!r}.")
    return IntConv2d(**common, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups), out


def _int_other(name: str, m: nn.Module, z: int):
    """The integer twin of a layer that keeps its input's (s, z): ReLU, pooling, Flatten."""
    if isinstance(m, nn.ReLU):
        return IntReLU(name, z)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and _unusual_pool(m):
        raise ValueError(f"{name}: pooling with ceil_mode, dilation or (avg) padding is not supported.")
    if isinstance(m, nn.MaxPool2d):
        return IntMaxPool2d(name, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), z)
    if isinstance(m, nn.AvgPool2d):
        return IntAvgPool2d(name, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), z)
    if isinstance(m, nn.Flatten):
        return IntFlatten(name, m.start_dim)
    # BatchNorm2d not preceded by a Conv2d (fold_batchnorm left it in place)
    raise ValueError(f"{name} ({type(m).__name__}) cannot run on integers here: a BatchNorm2d must "
                     "directly follow a Conv2d so it can be folded into it.")


def convert(model: nn.Module, act_ranges: ActRanges, weight_bits: int = 8, act_bits: int | None = None,
            granularity=None, act_signed: bool = False) -> IntModel:
    r"""Build the integer model: weights q_w (symmetric, narrow grid), biases q_b = round(b / (s_w s_x)) in
    int32, activations on asymmetric grids from ``act_ranges``, M = s_w s_x / s_y per layer or channel.

    Conv2d/Linear followed by ReLU are fused (the ReLU becomes the clamp to [z_y, q_max]); MaxPool2d,
    AvgPool2d and Flatten keep their input's (s, z). BatchNorm2d is folded into the Conv2d first.
    granularity of the weights: PerChannel(0) (default, None) or PerTensor().
    act_bits defaults to ``act_ranges.bits``; activations are unsigned (uint8 at 8 bits) unless act_signed.
    A model on any device works: the integer model is built on (and lives on) the CPU, where
    :func:`quantlab.engine.run_int` runs it.

    Raises TypeError for a non-model or non-ActRanges argument; ValueError for an unsupported layer
    (listing supported ones), weight_bits outside 2..8, a granularity other than PerTensor()/PerChannel(0),
    act_bits different from the calibration bits with a bits-dependent method, ranges that miss a layer,
    a meta or half-moved model, or a bad weight/range (the message names the layer). ``model`` is not
    modified.

    >>> m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    >>> qm = convert(m, calibrate_activations(m, torch.rand(16, 1, 2, 2), input_shape=(1, 2, 2)))
    >>> [type(layer).__name__ for layer in qm.layers], qm.layers[1].relu
    (['IntFlatten', 'IntLinear', 'IntLinear'], True)
    """
    weight_bits = check_bits(weight_bits, "weight_bits", low=2, high=8)
    if not isinstance(act_ranges, ActRanges):
        raise TypeError(f"act_ranges must be the ActRanges returned by calibrate_activations; got "
                        f"{type(act_ranges).__name__}.")
    act_bits = act_ranges.bits if act_bits is None else check_bits(act_bits, "act_bits", low=2, high=16)
    if act_ranges.method != "minmax" and act_bits != act_ranges.bits:
        raise ValueError(f"act_ranges were chosen by {act_ranges.method!r} for {act_ranges.bits} bits; "
                         f"recalibrate with bits={act_bits} (only 'minmax' ranges do not depend on bits).")
    granularity = check_granularity(granularity)
    chain = [(n, m) for n, m in layer_chain(fold_batchnorm(model).cpu())
             if not isinstance(m, (nn.Identity, nn.Dropout))]
    missing = sorted(n for n in _quantization_points(chain) if n not in act_ranges.ranges)
    if missing:
        raise ValueError(f"act_ranges has no range for {missing}; calibrate this model with "
                         "calibrate_activations.")
    cur = input_qparams = _act_qparams(*act_ranges.ranges["input"], act_bits, act_signed)
    layers, i = [], 0
    while i < len(chain):
        name, m = chain[i]
        fuse = isinstance(m, (nn.Conv2d, nn.Linear)) and i + 1 < len(chain) and isinstance(chain[i + 1][1], nn.ReLU)
        try:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out_name = chain[i + 1][0] if fuse else name
                layer, cur = _int_matmul(name, m, fuse, cur, act_ranges.ranges[out_name], weight_bits, act_bits,
                                         act_signed, granularity)
            else:
                layer = _int_other(name, m, cur[1])
        except (ValueError, TypeError, OverflowError) as e:
            raise type(e)(f"layer {name!r} ({type(m).__name__}): {e}") from e
        layers.append(layer)
        i += 2 if fuse else 1
    return IntModel(layers, input_qparams, cur, weight_bits, act_bits, granularity)


def _unusual_pool(m) -> bool:
    dilated = _pair(getattr(m, "dilation", 1)) != (1, 1)
    padded_avg = isinstance(m, nn.AvgPool2d) and _pair(m.padding) != (0, 0)
    return bool(m.ceil_mode or dilated or padded_avg)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
