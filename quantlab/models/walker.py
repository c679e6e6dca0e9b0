"""The one model walker and the one activation-hook mechanism.

Every module that visits or swaps the layers of a model (fake-quant weights, weight-only PTQ, full PTQ,
correction, QAT) or records its activations (calibration, PTQ, the explorers) calls these:
:func:`find_layers`, :func:`replace_layers` (a new model, the original untouched, errors name the layer),
:func:`activation_hooks` (a context manager) and :func:`collect_activations`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from .._checks import check_model, check_positive_int, check_same_device, model_device

__all__ = ["WEIGHT_LAYERS", "find_layers", "replace_layers", "activation_hooks", "collect_activations"]

#: The layers that carry weights to quantize (the text's convolution and fully connected operators).
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def find_layers(model: nn.Module, types=WEIGHT_LAYERS) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every submodule that is an instance of ``types``, in registration order.

    For a Sequential such as :class:`SmallCNN` that is the order of the forward pass. Names are the
    dotted names of ``model.named_modules()`` (``"conv1"``, ``"block.0"``...); a model that is itself
    one such layer (a bare ``nn.Linear``) is listed under the name ``""``.
    Raises TypeError if ``model`` is not an nn.Module.

    >>> from quantlab.models import SmallCNN
    >>> [n for n, _ in find_layers(SmallCNN())]
    ['conv1', 'conv2', 'fc1', 'fc2']
    """
    check_model(model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


def replace_layers(model: nn.Module, fn, types=WEIGHT_LAYERS) -> nn.Module:
    """A copy of ``model`` in which every layer of ``types`` is replaced by ``fn(name, layer)``.

    ``fn`` receives the copy's layer (changing it in place is safe) and returns the module to put in
    its place (the layer itself to keep it). The original ``model`` is never modified. A ValueError or
    TypeError raised by ``fn`` is re-raised with the layer's name in front, so a model-level error
    names the layer. Raises TypeError for a non-model; ValueError for a meta or half-moved model.

    >>> from quantlab.models import SmallCNN
    >>> m = replace_layers(SmallCNN(), lambda name, layer: nn.Identity(), types=nn.ReLU)
    >>> type(m.relu1).__name__
    'Identity'
    """
    model_device(model)
    new = copy.deepcopy(model)
    for name, layer in find_layers(new, types):
        try:
            out = fn(name, layer)
        except (ValueError, TypeError) as e:
            raise type(e)(f"layer {name!r} ({type(layer).__name__}): {e}") from e
        if not name:  # the model itself is such a layer
            return out
        if out is not layer:
            parent_name, _, child = name.rpartition(".")
            setattr(new.get_submodule(parent_name) if parent_name else new, child, out)
    return new


def _selected(model: nn.Module, select) -> list[tuple[str, nn.Module]]:
    """Layers chosen by type(s) or by name(s); unknown names are an error listing the valid ones."""
    if isinstance(select, type) or (isinstance(select, tuple) and all(isinstance(t, type) for t in select)):
        return find_layers(model, select)
    names = [select] if isinstance(select, str) else list(select)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        valid = [n for n in modules if n]
        raise ValueError(f"select names no layer {unknown} of this model; its layers are {valid}.")
    return [(n, modules[n]) for n in names]


@contextmanager
def activation_hooks(model: nn.Module, fn, select=WEIGHT_LAYERS, inputs: bool = False):
    """While the ``with`` block runs, call ``fn(name, a)`` on every forward pass, where ``a`` is the
    output (or, with ``inputs=True``, the first input) of each selected layer. Hooks are removed on exit,
    also when the block raises.

    select: a layer type, a tuple of types, a layer name or a list of names.

    >>> from quantlab.models import SmallCNN
    >>> seen = {}
    >>> with activation_hooks(SmallCNN(), lambda n, a: seen.setdefault(n, a.shape), nn.ReLU) as m:
    ...     _ = m(torch.zeros(1, 1, 28, 28))
    >>> seen["relu2"]
    torch.Size([1, 32, 14, 14])
    """
    check_model(model)

    def call(name, a) -> None:  # a hook that returned something would replace the layer's input/output
        fn(name, a)

    handles = []
    try:
        for name, layer in _selected(model, select):
            if inputs:
                handles.append(layer.register_forward_pre_hook(lambda m, args, n=name: call(n, args[0])))
            else:
                handles.append(layer.register_forward_hook(lambda m, args, out, n=name: call(n, out)))
        yield model
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_activations(model: nn.Module, x: torch.Tensor, select=nn.ReLU, inputs: bool = False,
                        batch_size: int = 1000) -> dict:
    """{layer name: its activations on x} for the selected layers, one eval-mode forward pass per batch.

    Shapes: x (N, ...) on the model's device; each value (N, ...) as the layer produces it, detached, on
    that device. The model's train/eval mode is restored afterwards.

    >>> from quantlab.models import SmallCNN
    >>> acts = collect_activations(SmallCNN(), torch.zeros(4, 1, 28, 28))
    >>> {k: tuple(v.shape) for k, v in acts.items()}["relu3"]
    (4, 64)
    """
    check_same_device(model, x)
    batch_size = check_positive_int(batch_size, "batch_size")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); pass at least one input.")
    parts: dict[str, list] = {}
    was_training = model.training
    model.eval()
    try:
        with activation_hooks(model, lambda n, a: parts.setdefault(n, []).append(a.detach()), select, inputs):
            for k in range(0, len(x), batch_size):
                model(x[k:k + batch_size])
    finally:
        model.train(was_training)
    return {n: torch.cat(v) for n, v in parts.items()}
