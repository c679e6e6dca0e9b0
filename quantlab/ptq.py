r"""Post-training quantization (section 9.3.1): weight quantization and full quantization.

*Weight quantization* stores only the weights as integers, q = clip(round(w/s + z), q_min, q_max), with
(s, z) per layer or per channel. At inference the weights are dequantized back to FP32, w_hat = s (q - z),
and the ordinary FP32 model runs: the model is ~4x smaller at 8 bits, no calibration data is needed,
and it is no faster.  -> :func:`quantize_weights`.

*Full quantization* also quantizes the activations, so every layer can run on integers
(:mod:`quantlab.engine`). The activation ranges (r_min, r_max) of each layer are measured by running a
small *calibration set* from the training data through the FP32 model (:func:`calibrate_activations`);
:func:`convert` then turns weights, biases and ranges into an integer model for
:func:`quantlab.engine.run_int`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_bits
from .engine import (
    IntAvgPool2d,
    IntConv2d,
    IntFlatten,
    IntLinear,
    IntMaxPool2d,
    IntModel,
    IntReLU,
    quantize_bias,
)
from .granularity import PerChannel, PerTensor, choose_qparams
from .linear import qrange, quantize, scale_zero_point
from .packing import _width, pack_bits, unpack_bits

__all__ = [
    "SUPPORTED_LAYERS", "state_size_bytes", "median_time",
    "WeightOnlyConv2d", "WeightOnlyLinear", "WeightOnlyModel", "quantize_weights",
    "ActRanges", "layer_chain", "calibrate_activations", "convert",
]

#: Layers the integer engine runs (BatchNorm2d only when it directly follows a Conv2d: it is folded).
SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
                    nn.BatchNorm2d, nn.Identity, nn.Dropout)


# ---------------------------------------------------------------------------------------------------
# Storage: sub-8-bit integers packed into bytes, sizes measured from the stored tensors
# ---------------------------------------------------------------------------------------------------


def state_size_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer actually stored in ``module`` (numel * element_size)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def median_time(fn, *args, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn(*args)`` over ``repeats`` runs (after ``warmup`` runs), no grad."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------
# Weight quantization: integers stored, FP32 computed
# ---------------------------------------------------------------------------------------------------


class _WeightOnly(nn.Module):
    """Holds q (packed), s, z of one weight tensor; ``weight`` is w_hat = s (q - z), rebuilt per call."""

    def __init__(self, layer: nn.Module, bits: int, granularity, symmetric: bool):
        super().__init__()
        w = layer.weight.detach()
        p = choose_qparams(w, bits, granularity, symmetric=symmetric, narrow=symmetric)
        q = quantize(w, p.s, p.z, p.q_min, p.q_max)
        self.bits, self.q_min, self.q_max, self.shape = bits, p.q_min, p.q_max, tuple(w.shape)
        self.register_buffer("q_packed", pack_bits(q, bits, p.q_min))
        self.register_buffer("s", p.s.to(torch.float32).contiguous())
        # z = 0 for symmetric quantization: nothing to store.
        self.register_buffer("z", None if symmetric else p.z.to(torch.int32).contiguous())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """w_hat = s (q - z): the FP32 weight the ordinary layer uses, rebuilt from the integers per call."""
        if _width(self.bits) == 8:  # one byte per value: convert straight to float
            q = self.q_packed.view(self.shape).to(torch.float32)
        else:
            numel = math.prod(self.shape)
            q = unpack_bits(self.q_packed, self.bits, self.q_min, numel).view(self.shape).to(torch.float32)
        return self.s * q if self.z is None else self.s * (q - self.z)


class WeightOnlyConv2d(_WeightOnly):
    """Conv2d whose weights are stored as integers and dequantized to FP32 on every forward."""

    def __init__(self, layer: nn.Conv2d, bits: int, granularity, symmetric: bool):
        super().__init__(layer, bits, granularity, symmetric)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WeightOnlyLinear(_WeightOnly):
    """Linear whose weights are stored as integers and dequantized to FP32 on every forward."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class WeightOnlyModel(nn.Module):
    """A copy of a model whose Conv2d/Linear weights are stored as packed integers plus (s, z)."""

    def __init__(self, model: nn.Module, bits: int, granularity, symmetric: bool):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d):
                    setattr(parent, name, WeightOnlyConv2d(child, bits, granularity, symmetric))
                elif isinstance(child, nn.Linear):
                    setattr(parent, name, WeightOnlyLinear(child, bits, granularity, symmetric))

    def forward(self, x):
        return self.model(x)

    def size_bytes(self) -> int:
        """Bytes actually stored: packed integer weights, s (and z), FP32 biases and BatchNorm buffers."""
        return state_size_bytes(self)


def _check_granularity(granularity):
    if granularity is None:
        return PerChannel(0)
    if isinstance(granularity, PerTensor) or (isinstance(granularity, PerChannel) and granularity.axis == 0):
        return granularity
    raise ValueError(f"granularity must be PerTensor() or PerChannel(0) (output channels); "
                     f"got {granularity!r}.")


def quantize_weights(model: nn.Module, bits: int = 8, granularity=None, symmetric: bool = True):
    r"""Weight quantization: q = clip(round(w/s + z), q_min, q_max) per Conv2d/Linear weight, stored packed.

    symmetric: z = 0 on the narrow grid, s = max|w| / (2^(b-1) - 1); else asymmetric on [0, 2^b - 1].
    Inference dequantizes, w_hat = s (q - z), and runs the FP32 layers (biases and BatchNorm stay FP32).
    ``model`` is not modified. Sizes: ``.size_bytes()`` vs :func:`state_size_bytes` (model).

    granularity: PerChannel(0) (default, None) or PerTensor().
    Raises ValueError for bits outside 2..8 or a granularity other than PerTensor()/PerChannel(0).

    >>> wq = quantize_weights(model, bits=4)                        # doctest: +SKIP
    >>> state_size_bytes(model) / wq.size_bytes()                   # ~7x at 4 bits
    """
    bits = check_bits(bits, low=2, high=8)
    return WeightOnlyModel(model, bits, _check_granularity(granularity), bool(symmetric))


# ---------------------------------------------------------------------------------------------------
# Full quantization, step 1: the layer chain and the activation ranges on a calibration set
# ---------------------------------------------------------------------------------------------------


def layer_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf layers in order, as (name, module); ValueError listing any unsupported layer."""
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


def _check_calib(calib_x, input_shape) -> torch.Tensor:
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
    if not isinstance(calib_x, torch.Tensor):
        raise TypeError(f"calib_x must be a float torch.Tensor of shape {expected}; got "
                        f"{type(calib_x).__name__}. Use quantlab.data.calibration_batch(n).")
    if calib_x.ndim != len(input_shape) + 1 or tuple(calib_x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"calib_x must have shape {expected}; got {tuple(calib_x.shape)}. "
                         "For one image x of shape (1, 28, 28) pass x.unsqueeze(0).")
    if calib_x.shape[0] == 0:
        raise ValueError(f"calib_x is empty (shape {tuple(calib_x.shape)}): calibration needs at least "
                         "one image, e.g. quantlab.data.calibration_batch(100).")
    if not calib_x.is_floating_point():
        raise TypeError(f"calib_x must be float (pixel / 255); got dtype {calib_x.dtype}.")
    if not bool(torch.isfinite(calib_x).all()):
        raise ValueError(f"calib_x contains {int((~torch.isfinite(calib_x)).sum())} NaN/inf value(s); "
                         "calibration ranges would be undefined. Clean the data first.")
    return calib_x.to(torch.float32)


def calibrate_activations(model: nn.Module, calib_x: torch.Tensor, method: str = "minmax", bits: int = 8,
                          batch_size: int = 250, progress: bool = False,
                          input_shape: tuple = (1, 28, 28)) -> ActRanges:
    r"""Run the calibration set through the (BN-folded) FP32 model and record each layer's activation range.

    Each activation gets an observer (:mod:`quantlab.observers`): "minmax" keeps the running r_min, r_max;
    the other methods of :data:`quantlab.calibration.METHODS` ("percentile", "mse", "kl", "symmetric_kl",
    "js") keep the histogram P_f and search the clip range (:func:`quantlab.calibration.calibrate_range`)
    for the unsigned ``bits``-bit grid. ``progress=True`` shows a tqdm bar over the batches.

    Shapes: calib_x float32 (N, 1, 28, 28), 1 <= N (1 ... 1,000 training images in the lab).
    Raises ValueError for an unknown method, an empty set, a wrong shape (the message gives the expected
    (N, 1, 28, 28)),
    NaN/inf in the data or in any layer's activations, an unsupported layer, or a model that is not a
    plain chain of its layers. ``model`` is never modified (a folded copy is used).

    >>> acts = calibrate_activations(load_trained(), calibration_batch(100))   # doctest: +SKIP
    >>> acts.ranges["relu1"]                                                     # (0.0, 3.1...)
    """
    from tqdm.auto import tqdm

    from .calibration import METHODS, calibrate_range
    from .models import fold_batchnorm
    from .observers import HistogramObserver, MinMaxObserver

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    bits = check_bits(bits, low=2, high=16)
    calib_x = _check_calib(calib_x, input_shape)
    folded = fold_batchnorm(model)
    chain = [("input", nn.Identity())] + layer_chain(folded)
    # One observer per activation: running min/max, or the histogram P_f for the searches.
    # min/max is cheap: observe every layer. A histogram (for the searches) only where convert needs a grid.
    needed = {n for n, _ in chain} if method == "minmax" else _quantization_points(chain)
    observers = {n: MinMaxObserver() if method == "minmax" else HistogramObserver(bins=2048)
                 for n, _ in chain if n in needed}
    batches = range(0, calib_x.shape[0], batch_size)
    with torch.no_grad():
        for k in tqdm(batches, desc=f"calibrating ({method})", disable=not progress, leave=False):
            x = calib_x[k:k + batch_size]
            out = x
            for name, layer in chain:
                out = layer(out)
                if not bool(torch.isfinite(out).all()):
                    raise ValueError(f"layer {name!r} produced NaN/inf activations on the calibration set; "
                                     "check the model's weights (and BatchNorm statistics).")
                if name in observers:
                    observers[name](out)
            ref = folded(x)
            if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * (1 + float(ref.abs().max()))):
                raise ValueError("the model is not a plain chain of its layers (its forward() does something "
                                 "else, e.g. a skip connection); the integer engine runs layers one after "
                                 "another.")
    # Activations use the unsigned asymmetric grid [0, 2^b - 1] (uint8 at 8 bits).
    ranges = {n: tuple(float(v) for v in calibrate_range(obs, method, bits, symmetric=False, signed=False))
              for n, obs in observers.items()}
    return ActRanges(ranges, method, bits, int(calib_x.shape[0]))


# ---------------------------------------------------------------------------------------------------
# Full quantization, step 2: convert weights, biases and ranges into integer layers
# ---------------------------------------------------------------------------------------------------


def _quantization_points(chain) -> set:
    """Names whose output convert() puts on a new grid: the input, and each Conv2d/Linear output (or the
    output of the ReLU fused into it). Pooling, Flatten and unfused ReLUs keep their input's grid."""
    chain = [(n, m) for n, m in chain if not isinstance(m, (nn.Identity, nn.Dropout)) or n == "input"]
    points = {"input"}
    for i, (name, m) in enumerate(chain):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fuse = i + 1 < len(chain) and isinstance(chain[i + 1][1], nn.ReLU)
            points.add(chain[i + 1][0] if fuse else name)
    return points


def _act_qparams(r_min: float, r_max: float, bits: int, signed: bool, scale=1.0):
    """(s, z, q_min, q_max) of an activation: asymmetric on [0, 2^b-1] (or signed), range times ``scale``."""
    q_min, q_max = qrange(bits, signed=signed)
    s, z = scale_zero_point(r_min * scale, r_max * scale, q_min, q_max)
    return float(s), int(z), q_min, q_max


def convert(model: nn.Module, act_ranges: ActRanges, weight_bits: int = 8, act_bits: int | None = None,
            granularity=None, act_signed: bool = False) -> IntModel:
    r"""Build the integer model: weights q_w (symmetric, narrow grid), biases q_b = round(b / (s_w s_x)) in
    int32, activations on asymmetric grids from ``act_ranges``, M = s_w s_x / s_y per layer or channel.

    Conv2d/Linear followed by ReLU are fused (the ReLU becomes the clamp to [z_y, q_max]); MaxPool2d,
    AvgPool2d and Flatten keep their input's (s, z). BatchNorm2d is folded into the Conv2d first.
    granularity of the weights: PerChannel(0) (default, None) or PerTensor().
    act_bits defaults to ``act_ranges.bits``; activations are unsigned (uint8 at 8 bits) unless act_signed.

    Raises ValueError for an unsupported layer (listing supported ones), weight_bits outside 2..8, a
    granularity other than PerTensor()/PerChannel(0), act_bits different from the calibration bits
    with a bits-dependent method, or ranges that miss a layer. ``model`` is not modified.

    >>> qmodel = convert(load_trained(), calibrate_activations(load_trained(), calibration_batch(100)))
    >>> run_int(qmodel, x_test).argmax(1)                                     # doctest: +SKIP
    """
    from .models import fold_batchnorm

    weight_bits = check_bits(weight_bits, "weight_bits", low=2, high=8)
    act_bits = act_ranges.bits if act_bits is None else check_bits(act_bits, "act_bits", low=2, high=16)
    if act_ranges.method != "minmax" and act_bits != act_ranges.bits:
        raise ValueError(f"act_ranges were chosen by {act_ranges.method!r} for {act_ranges.bits} bits; "
                         f"recalibrate with bits={act_bits} (only 'minmax' ranges do not depend on bits).")
    granularity = _check_granularity(granularity)
    chain = [(n, m) for n, m in layer_chain(fold_batchnorm(model))
             if not isinstance(m, (nn.Identity, nn.Dropout))]
    missing = sorted(n for n in _quantization_points(chain) if n not in act_ranges.ranges)
    if missing:
        raise ValueError(f"act_ranges has no range for {missing}; calibrate this model with "
                         "calibrate_activations.")

    cur = _act_qparams(*act_ranges.ranges["input"], act_bits, act_signed)
    input_qparams = cur
    layers = []
    i = 0
    while i < len(chain):
        name, m = chain[i]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fuse = i + 1 < len(chain) and isinstance(chain[i + 1][1], nn.ReLU)
            out_name = chain[i + 1][0] if fuse else name
            w = m.weight.detach()
            p = choose_qparams(w, weight_bits, granularity, symmetric=True, narrow=True)
            q_w = quantize(w, p.s, p.z, p.q_min, p.q_max).to(torch.int8)
            c_out = w.shape[0]
            s_w = p.s.reshape(-1).expand(c_out).to(torch.float32).clone()
            z_w = torch.zeros(c_out, dtype=torch.int64)
            s_x, z_x = cur[0], cur[1]
            out = _act_qparams(*act_ranges.ranges[out_name], act_bits, act_signed)
            M_max = float(s_w.max()) * s_x / out[0]
            if M_max >= 1.0:  # output grid finer than one accumulator step: widen it so that M < 1
                out = _act_qparams(*act_ranges.ranges[out_name], act_bits, act_signed,
                                   scale=M_max * (1 + 1e-6))
            bias = m.bias.detach() if m.bias is not None else torch.zeros(c_out)
            q_b = quantize_bias(bias, s_w, s_x)
            common = dict(name=name, q_w=q_w, s_w=s_w, z_w=z_w, q_b=q_b, s_x=s_x, z_x=z_x, s_y=out[0],
                          z_y=out[1], q_min=out[2], q_max=out[3], relu=fuse)
            if isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise ValueError(f"{name}: only numeric zero padding is supported; got {m.padding!r}.")
                layers.append(IntConv2d(**common, stride=m.stride, padding=m.padding, dilation=m.dilation,
                                        groups=m.groups))
            else:
                layers.append(IntLinear(**common))
            cur = out
            i += 2 if fuse else 1
            continue
        if isinstance(m, nn.ReLU):
            layers.append(IntReLU(name, cur[1]))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and _unusual_pool(m):
            raise ValueError(f"{name}: pooling with ceil_mode, dilation or (avg) padding is not supported.")
        elif isinstance(m, nn.MaxPool2d):
            layers.append(IntMaxPool2d(name, _pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                       _pair(m.padding), cur[1]))
        elif isinstance(m, nn.AvgPool2d):
            layers.append(IntAvgPool2d(name, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), cur[1]))
        elif isinstance(m, nn.Flatten):
            layers.append(IntFlatten(name, m.start_dim))
        else:  # BatchNorm2d not preceded by a Conv2d (fold_batchnorm left it in place)
            raise ValueError(f"{name} ({type(m).__name__}) cannot run on integers here: a BatchNorm2d must "
                             "directly follow a Conv2d so it can be folded into it.")
        i += 1
    return IntModel(layers, input_qparams, cur, weight_bits, act_bits, granularity)


def _unusual_pool(m) -> bool:
    dilated = _pair(getattr(m, "dilation", 1)) != (1, 1)
    padded_avg = isinstance(m, nn.AvgPool2d) and _pair(m.padding) != (0, 0)
    return bool(m.ceil_mode or dilated or padded_avg)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def prefix_minmax_ranges(model: nn.Module, x_calib: torch.Tensor, sizes) -> dict:
    """{n: ActRanges} of min/max calibration on the first n images, for every n in ``sizes``, in one pass.

    Equal to ``calibrate_activations(model, x_calib[:n], "minmax")`` for each n: the range of a prefix is
    the running min/max (cummin/cummax over images) of per-image minima/maxima. Activations are read with
    :func:`quantlab.models.activation_hooks` on the BatchNorm-folded model's layers.

    Shapes: x_calib float32 (N, 1, 28, 28); sizes integers in 1..N. Raises ValueError for sizes outside
    1..N or empty, and what :func:`calibrate_activations` raises for bad images or unsupported layers.

    >>> from quantlab.models import SmallCNN
    >>> r = prefix_minmax_ranges(SmallCNN().eval(), torch.rand(8, 1, 28, 28), (2, 8))
    >>> r[2].n_images, r[8].ranges["relu1"][0]
    (2, 0.0)
    """
    from .models import activation_hooks, fold_batchnorm

    x_calib = _check_calib(x_calib, (1, 28, 28))
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > len(x_calib):
        raise ValueError(f"calibration sizes must lie in 1..{len(x_calib)}; got {sizes}.")
    folded = fold_batchnorm(model).eval()
    names = [name for name, _ in layer_chain(folded)]
    x = x_calib[: sizes[-1]]
    lo, hi = {"input": [x.reshape(len(x), -1).amin(1)]}, {"input": [x.reshape(len(x), -1).amax(1)]}

    def record(name, a):
        flat = a.reshape(a.shape[0], -1)
        lo.setdefault(name, []).append(flat.amin(1))
        hi.setdefault(name, []).append(flat.amax(1))

    with torch.no_grad(), activation_hooks(folded, record, select=names):
        folded(x)
    lo = {k: torch.cummin(torch.cat(v), 0).values for k, v in lo.items()}
    hi = {k: torch.cummax(torch.cat(v), 0).values for k, v in hi.items()}
    return {n: ActRanges({k: (float(lo[k][n - 1]), float(hi[k][n - 1])) for k in lo}, "minmax", 8, n)
            for n in sizes}


__all__ += ["prefix_minmax_ranges"]
