r"""Steps 1 and 2 of quantization-aware training: initialisation and the simulated quantization network.

Step 1, *initialisation* (:func:`initial_ranges`): the ranges [r_min, r_max] of every weight (from the
weights, per channel or per tensor) and of every activation that will be quantized (from a few
calibration batches, with an observer of :mod:`quantlab.observers`).

Step 2, *construction of a simulated quantization network* (:func:`prepare_qat`): batch-norm is folded
into the preceding convolution (as deployed models are), then pseudo-quantization nodes
(:class:`~quantlab.qat.nodes.QuantNode`) are inserted after the weights of every Conv2d/Linear and after
the activations that the integer engine puts on a grid — the network input, and the output of each
Conv2d/Linear, or of the ReLU that follows it (fused, as deployed kernels do). The model walker
(:func:`quantlab.models.replace_layers`) builds it on a copy: the original model is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_bits, check_model, check_same_device, model_device
from ..granularity import PerChannel, PerTensor, range_of
from ..linear import FakeQuantizeSTE
from ..models import WEIGHT_LAYERS, activation_hooks, find_layers, fold_batchnorm, replace_layers
from ..observers import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver
from .nodes import QuantNode

__all__ = ["Ranges", "quantization_points", "initial_ranges", "prepare_qat", "QATModel", "QATLayer",
           "QATReLU", "is_prepared", "save_qat", "load_qat"]

_OBSERVER_FACTORIES = {"minmax": MinMaxObserver, "ema": MovingAverageMinMaxObserver,
                       "histogram": HistogramObserver}


@dataclass
class Ranges:
    """Step 1's result. ``weights[name] = (r_min, r_max)`` tensors (shaped per granularity),
    ``activations[point] = (r_min, r_max)`` floats ("input" is the network input), the observer used
    and how many calibration images it saw."""

    weights: dict
    activations: dict
    observer: str
    n_images: int


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in find_layers(model, nn.Module) if not list(m.children())]


def quantization_points(model: nn.Module) -> list[str]:
    """Where activations are quantized: "input", and after each Conv2d/Linear its ReLU (fused) or itself.

    >>> from quantlab.models import SmallCNN
    >>> quantization_points(SmallCNN())
    ['input', 'relu1', 'relu2', 'relu3', 'fc2']
    """
    chain = [(n, m) for n, m in _leaves(model) if not isinstance(m, (nn.Identity, nn.Dropout, nn.BatchNorm2d))]
    points = ["input"]
    for i, (name, m) in enumerate(chain):
        if isinstance(m, WEIGHT_LAYERS):
            fused = i + 1 < len(chain) and isinstance(chain[i + 1][1], nn.ReLU)
            points.append(chain[i + 1][0] if fused else name)
    return points


def is_prepared(model) -> bool:
    """True for a simulated quantization network (a model that holds QuantNodes)."""
    return isinstance(model, nn.Module) and any(isinstance(m, QuantNode) for m in model.modules())


def _check_preparable(model: nn.Module) -> nn.Module:
    """The BN-folded copy, or a ValueError naming every layer that cannot be prepared."""
    from ..ptq import SUPPORTED_LAYERS

    check_model(model)
    if is_prepared(model):
        raise ValueError("this model is already a simulated quantization network (it holds QuantNodes); "
                         "train it with qat_train, or prepare the original FP32 model.")
    folded = fold_batchnorm(model)
    bad = [f"{n} ({type(m).__name__})" for n, m in _leaves(folded)
           if not isinstance(m, SUPPORTED_LAYERS) or isinstance(m, nn.BatchNorm2d)
           or (isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)))]
    if bad:
        raise ValueError(
            f"cannot prepare these layers for quantization-aware training: {', '.join(bad)}. Supported: "
            "Conv2d (numeric zero padding), Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, Identity, Dropout, "
            "and BatchNorm2d directly after a Conv2d (folded into it). Replace them first.")
    if not find_layers(folded):
        raise ValueError("the model has no Conv2d or Linear layer: there are no weights to quantize.")
    return folded


def _calib_tensor(calib_x) -> torch.Tensor:
    if not isinstance(calib_x, torch.Tensor) or not calib_x.is_floating_point():
        raise TypeError(f"calib_x must be a float torch.Tensor (N, ...); got {type(calib_x).__name__}. "
                        "Use quantlab.data.calibration_batch(n).")
    if calib_x.ndim < 2 or calib_x.shape[0] == 0:
        raise ValueError(f"calib_x is empty or has no batch dimension (shape {tuple(calib_x.shape)}); "
                         "pass at least one image, e.g. quantlab.data.calibration_batch(100).")
    return calib_x


@torch.no_grad()
def initial_ranges(model: nn.Module, calib_x: torch.Tensor, observer="minmax", granularity=PerChannel(0),  # noqa: B008 - frozen dataclass
                   batch_size: int = 250) -> Ranges:
    r"""Step 1, initialisation: [r_min, r_max] of every weight and of every quantized activation.

    Weights (of the BN-folded model): r_min = min(w), r_max = max(w) per output channel (``PerChannel(0)``)
    or per tensor. Activations: each point of :func:`quantization_points` gets an observer fed with the
    calibration batches through :func:`quantlab.models.activation_hooks`; ``observer`` is "minmax",
    "ema" (moving average, c = 0.01) or "histogram" (its min/max), or a callable returning a fresh
    observer of :mod:`quantlab.observers`.

    Shapes: calib_x float (N, 1, 28, 28) for the lab's CNN, on the model's device. Raises TypeError /
    ValueError for an empty or non-float calib_x, a device mismatch, or a model it cannot prepare
    (listing the layers). ``model`` is not modified.

    >>> ranges = initial_ranges(load_trained(), calibration_batch(200))   # doctest: +SKIP
    >>> ranges.activations["relu1"]                                       # doctest: +SKIP
    """
    folded = _check_preparable(model)
    calib_x = _calib_tensor(calib_x)
    check_same_device(folded, calib_x, "calib_x")
    make = _OBSERVER_FACTORIES.get(observer, observer) if isinstance(observer, str) else observer
    if isinstance(make, str) or not callable(make):
        raise ValueError(f"observer must be one of {tuple(_OBSERVER_FACTORIES)} or a callable returning an "
                         f"observer; got {observer!r}.")
    points = quantization_points(folded)
    obs = {p: make() for p in points}
    was_training = folded.training
    folded.eval()
    with activation_hooks(folded, lambda n, a: obs[n].update(a), points[1:]):
        for k in range(0, len(calib_x), batch_size):
            xb = calib_x[k:k + batch_size]
            obs["input"].update(xb)
            folded(xb)
    folded.train(was_training)
    weights = {n: range_of(m.weight.detach(), granularity) for n, m in find_layers(folded)}
    acts = {p: tuple(float(v) for v in o.range()) for p, o in obs.items()}
    name = observer if isinstance(observer, str) else getattr(make, "__name__", "custom")
    return Ranges(weights, acts, name, int(len(calib_x)))


class QATLayer(nn.Module):
    """A Conv2d/Linear whose weight passes through a fake-quant node (and whose output may, too).

    ``layer`` keeps the float (latent) weight that the optimizer updates; forward uses
    w_hat = weight_fq(layer.weight). ``out_fq`` quantizes the output when no ReLU follows.
    """

    def __init__(self, layer: nn.Module, weight_fq: QuantNode, out_fq: QuantNode | None = None):
        super().__init__()
        self.layer, self.weight_fq, self.out_fq = layer, weight_fq, out_fq
        self.input_fq: list = []  # [the node that quantized this layer's input] (a list: not a submodule)

    def weight_qparams(self):
        """(s, z, q_min, q_max) of the weight now: the range is recomputed from the current weights first
        (after an optimizer step the stored range is one step old), or read from LSQ's learned s."""
        self.weight_fq._observe(self.layer.weight)
        return self.weight_fq.qparams()

    def simulated_bias(self) -> torch.Tensor | None:
        r"""b_hat = s_b round(b / s_b) with s_b = s_w s_x: the int32 bias the integer engine will hold
        (straight-through gradient). The float bias when the input node is unknown."""
        b = self.layer.bias
        if b is None or not self.input_fq:
            return b
        s_b = self.weight_qparams().s.reshape(-1) * self.input_fq[0].qparams().s.to(b.device)
        s_b = s_b.to(device=b.device, dtype=b.dtype).expand_as(b)
        return FakeQuantizeSTE.apply(b, s_b, torch.zeros_like(b), -(2**31), 2**31 - 1)

    def forward(self, x):
        m, w, b = self.layer, self.weight_fq(self.layer.weight), self.simulated_bias()
        if isinstance(m, nn.Conv2d):
            y = F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
        else:
            y = F.linear(x, w, b)
        return y if self.out_fq is None else self.out_fq(y)


class QATReLU(nn.Module):
    """A ReLU followed by the fake-quant node of its output (the ReLU fused into the layer before it)."""

    def __init__(self, relu: nn.Module, out_fq: QuantNode):
        super().__init__()
        self.relu, self.out_fq = relu, out_fq

    def forward(self, x):
        return self.out_fq(self.relu(x))


class QATModel(nn.Module):
    """The simulated quantization network: ``input_fq`` then ``net`` (the walked, BN-folded copy).

    ``config`` records how it was built (bits, granularity, observer, learned ranges) for save/load.
    """

    def __init__(self, input_fq: QuantNode, net: nn.Module, config: dict):
        super().__init__()
        self.input_fq, self.net, self.config = input_fq, net, dict(config)

    def forward(self, x):
        return self.net(self.input_fq(x))

    def nodes(self, kind: str | None = None) -> list[tuple[str, QuantNode]]:
        """(name, node) of every fake-quant node (``kind`` "weight" / "activation" to filter)."""
        return [(n, m) for n, m in self.named_modules()
                if isinstance(m, QuantNode) and (kind is None or m.kind == kind)]

    def activation_ranges(self) -> dict:
        """{point: (r_min, r_max)} of the activation nodes now, as floats ("input" first)."""
        out = {"input": tuple(float(v) for v in self.input_fq.range())}
        for name, m in self.net.named_modules():
            if isinstance(m, (QATLayer, QATReLU)) and m.out_fq is not None:
                out[name] = tuple(float(v) for v in m.out_fq.range())
        return out

    def freeze_activations(self, frozen: bool = True) -> None:
        """Stop (or restart) the activation-range updates of step 3."""
        for _, node in self.nodes("activation"):
            node.frozen = frozen


def prepare_qat(model: nn.Module, ranges: Ranges | None, weight_bits: int = 8, act_bits: int = 8,
                granularity=PerChannel(0), observer: str = "ema", averaging_constant: float = 0.01,  # noqa: B008 - frozen dataclass
                weight_learn: str | None = None, act_learn: str | None = None) -> QATModel:
    r"""Step 2: fold BN, then insert fake-quant nodes after the weights and the activations.

    Weights: symmetric narrow grid, s = max|w| / (2^(b-1) - 1) per channel (``PerChannel(0)``) or per
    tensor. Activations (input, each Conv2d/Linear output or its fused ReLU): asymmetric unsigned grid
    [0, 2^b - 1]. ``observer`` ("ema" or "minmax") updates activation ranges in step 3;
    ``weight_learn`` / ``act_learn`` = "lsq" or (activations) "pact" learn them instead.
    ``ranges`` (from :func:`initial_ranges` on this model) initialise every node; None leaves them empty
    (only to load a saved state_dict, see :func:`load_qat`).

    Returns a :class:`QATModel` in training mode on ``model``'s device (its nodes too); ``model`` is not
    modified. Raises ValueError for weight_bits/act_bits outside 2..8, a layer it cannot prepare (named), ranges
    missing a layer, an already prepared model; TypeError if model is not an nn.Module.

    >>> qat = prepare_qat(load_trained(), initial_ranges(load_trained(), x), 4, 4)   # doctest: +SKIP
    """
    folded = _check_preparable(model)
    weight_bits = check_bits(weight_bits, "weight_bits", low=2, high=8)
    act_bits = check_bits(act_bits, "act_bits", low=2, high=8)
    if not isinstance(granularity, (PerTensor, PerChannel)) or getattr(granularity, "axis", 0) != 0:
        raise ValueError(f"granularity must be PerTensor() or PerChannel(0); got {granularity!r}.")
    points = quantization_points(folded)
    if ranges is not None:
        missing = [n for n, _ in find_layers(folded) if n not in ranges.weights]
        missing += [p for p in points if p not in ranges.activations]
        if missing:
            raise ValueError(f"ranges has no entry for {missing}: run initial_ranges on this model first.")

    relu_points = {n for n, _ in find_layers(folded, nn.ReLU)}
    dev = model_device(folded)                          # every new node is made on the model's device

    def act_node(point):  # PACT clips to [0, alpha]: only on ReLU outputs; elsewhere the observer
        learn = None if act_learn == "pact" and point not in relu_points else act_learn
        node = QuantNode("activation", act_bits, PerTensor(), observer, averaging_constant, learn).to(dev)
        return node.init_range(*ranges.activations[point]) if ranges is not None else node

    def weight_layer(name, layer):
        w_node = QuantNode("weight", weight_bits, granularity, learn=weight_learn).to(dev)
        if ranges is not None:
            w_node.init_range(*ranges.weights[name])
        return QATLayer(layer, w_node, act_node(name) if name in points else None)

    net = replace_layers(folded, weight_layer)
    net = replace_layers(net, lambda name, relu: QATReLU(relu, act_node(name)) if name in points else relu,
                         types=nn.ReLU)
    config = dict(weight_bits=weight_bits, act_bits=act_bits,
                  granularity="per-channel" if isinstance(granularity, PerChannel) else "per-tensor",
                  observer=observer, averaging_constant=averaging_constant, weight_learn=weight_learn,
                  act_learn=act_learn)
    qat = QATModel(act_node("input"), net, config)
    nodes = {"input": qat.input_fq}
    nodes.update({n: m.out_fq for n, m in qat.net.named_modules() if isinstance(m, (QATLayer, QATReLU))
                  and m.out_fq is not None})
    for i, (_, layer) in enumerate(find_layers(qat.net, QATLayer)):  # in a chain, layer i reads point i
        layer.input_fq = [nodes[points[i]]]
    return qat.to(dev).train()


def save_qat(model: QATModel, path) -> None:
    """Save a QAT model: ``{"config": ..., "state_dict": ...}`` (plain CPU tensors, from any device; loads with
    weights_only)."""
    if not isinstance(model, QATModel):
        raise TypeError(f"model must be a QATModel from prepare_qat; got {type(model).__name__}.")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config, "state_dict": state}, path)


def load_qat(path, base: nn.Module | None = None) -> QATModel:
    """Load a saved QAT model onto ``base``'s architecture (default: the lab's SmallCNN), in eval mode, on
    ``base``'s device.

    >>> qat = load_qat(data_dir() / "qat_w4a4.pt")                            # doctest: +SKIP
    """
    from ..models import SmallCNN

    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(saved["config"])
    gran = PerChannel(0) if cfg.pop("granularity") == "per-channel" else PerTensor()
    model = prepare_qat(base if base is not None else SmallCNN(), None, granularity=gran, **cfg)
    sd, dev = saved["state_dict"], model_device(model)           # base's device (the CPU by default)
    for name, node in model.nodes():
        for key in ("r_min", "r_max"):
            setattr(node, key, torch.empty_like(sd[f"{name}.{key}"], device=dev))
        for key in ("s", "alpha"):
            if getattr(node, key) is not None:
                setattr(node, key, nn.Parameter(torch.empty_like(sd[f"{name}.{key}"], device=dev)))
    model.load_state_dict(sd)
    return model.eval()
