"""The lab's small CNN: definition, deterministic training, evaluation, loading, batch-norm folding.

``SmallCNN`` is an ``nn.Sequential`` with named layers, made only of Conv2d, BatchNorm2d, ReLU,
MaxPool2d, Flatten and Linear, so a quantization engine can walk it layer by layer::

    x (N,1,28,28) -> conv1 (1->16, 3x3, pad 1) -> bn1 -> relu1 -> pool1 (2x2)   -> (N,16,14,14)
                  -> conv2 (16->32, 3x3, pad 1) -> bn2 -> relu2 -> pool2 (2x2)  -> (N,32,7,7)
                  -> flatten -> fc1 (1568->64) -> relu3 -> fc2 (64->10)          -> logits (N,10)

The trained weights ship in ``data/cnn.pt`` (state_dict); remake them with
``python -m quantlab.models train`` (under a minute on 2 CPU cores; see ``data/README.md``).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ._checks import (
    check_images,
    check_model,
    check_positive_float,
    check_positive_int,
    check_same_device,
    model_device,
)
from .data import data_dir, load_mnist

__all__ = [
    "CHECKPOINT", "SmallCNN", "train", "evaluate", "load_trained", "fold_batchnorm",
    "WEIGHT_LAYERS", "find_layers", "replace_layers", "activation_hooks", "collect_activations",
]

CHECKPOINT = "cnn.pt"


class SmallCNN(nn.Sequential):
    """Two conv blocks and two linear layers, ~106k parameters (~0.42 MB in float32).

    Layers (names are stable; quantization code may address them): ``conv1 bn1 relu1 pool1 conv2 bn2
    relu2 pool2 flatten fc1 relu3 fc2``. The convolutions have no bias (the following BatchNorm's beta
    plays that role); :func:`fold_batchnorm` gives them one.

    Shapes: input x float32 (N, 1, 28, 28) with values in [0, 1]; output logits float32 (N, 10).

    Example:
        >>> model = SmallCNN()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, c1: int = 16, c2: int = 32, hidden: int = 64, n_classes: int = 10):
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(1, c1, 3, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(c1)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, 3, padding=1, bias=False)),
            ("bn2", nn.BatchNorm2d(c2)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c2 * 7 * 7, hidden)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(hidden, n_classes)),
        ]))


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by (dy, dx), integers uniform in [-max_shift, max_shift], zero fill.

    x: (N, 1, H, W) -> (N, 1, H, W); one gather from the zero-padded batch.
    """
    n, _, h, w = x.shape
    p = max_shift
    padded = nn.functional.pad(x, (p, p, p, p))[:, 0]                       # (N, H+2p, W+2p)
    d = torch.randint(0, 2 * p + 1, (n, 2), generator=gen)                  # offsets into the padding
    rows = (d[:, 0:1] + torch.arange(h))[:, :, None]                        # (N, H, 1)
    cols = (d[:, 1:2] + torch.arange(w))[:, None, :]                        # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)


def train(
    epochs: int = 12,
    seed: int = 0,
    progress: bool = True,
    n: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_shift: int = 2,
    threads: int | None = 1,
) -> SmallCNN:
    """Train a fresh :class:`SmallCNN` on the training split, deterministically.

    Loss: cross-entropy; optimiser: Adam(lr) with weight decay 1e-4 and a one-cycle learning-rate
    schedule; augmentation: random shifts of up to ``max_shift`` pixels (0 turns it off). Determinism:
    ``torch.manual_seed(seed)`` for the initial weights, one ``torch.Generator(seed)`` for the batch order
    (a fresh ``randperm`` per epoch) and the shifts, and ``torch.use_deterministic_algorithms(True)``
    during the run (restored afterwards). ``threads`` torch threads are used while training (restored
    afterwards): 1 by default, because this model is too small to gain from more, many threads thrash
    on a busy machine, and the float summation order (hence the exact weights) depends on the count.
    Same seed, torch version, CPU kind and thread count -> bit-identical weights.

    Args:
        epochs: passes over the data. seed: integer seed. progress: show a tqdm bar.
        n: train on the first n training images only (None: all 4,000). batch_size, lr, max_shift: as above.
        threads: torch threads during training (None: leave the current setting).
    Returns:
        The trained model, in eval mode.
    Device: trains on the CPU (the lab's model is small; bit-identical weights need one device) and
    returns a CPU model; move it with ``model.to(device)``.
    Raises:
        ValueError: epochs, batch_size or n < 1, lr <= 0 or not finite, max_shift < 0;
        TypeError: a non-integer count; FileNotFoundError if the data file is missing (see ``load_mnist``).

    Example:
        >>> model = train(epochs=1, n=64, progress=False)          # one step; the real run: epochs=12
        >>> 0.0 <= evaluate(model, *load_mnist("test", n=100)) <= 1.0, model.training
        (True, False)
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an integer >= 0 (pixels); got {max_shift!r}.")
    from tqdm.auto import tqdm

    x, y = load_mnist("train", n)
    was_det, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = SmallCNN()
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * ((len(y) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        bar = tqdm(total=steps, desc="train SmallCNN", disable=not progress, leave=False)
        for epoch in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for k in range(0, len(y), batch_size):
                idx = order[k:k + batch_size]
                xb = x[idx] if max_shift == 0 else _shift(x[idx], max_shift, gen)
                loss = loss_fn(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        bar.close()
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(was_threads)
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy = (1/N) * sum_i [argmax_k model(x)_ik == y_i], computed in eval mode, no grad.

    Args:
        model: maps (B, 1, 28, 28) float32 to logits (B, 10). x: float32 (N, 1, 28, 28) on the model's
        device. y: int64 (N,) labels (moved to the model's device once if they are elsewhere).
        batch_size: images per forward pass.
    Returns:
        Accuracy, a Python float in [0, 1]. The model's train/eval mode is restored afterwards. The count
        stays on the device until the end (one transfer per call, not per batch).
    Raises:
        TypeError: model is not an nn.Module, x is not a float tensor (uint8 pixels: divide by 255).
        ValueError: x and y have different lengths, are empty or non-finite; x is on another device than
        the model; the model is on the meta device or split across devices.

    Example:
        >>> x, y = load_mnist("test")
        >>> evaluate(load_trained(), x, y) > 0.97
        True
    """
    dev = check_same_device(model, check_images(x, "x"), "x")
    batch_size = check_positive_int(batch_size, "batch_size")
    y = torch.as_tensor(y)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x and y must be non-empty and of equal length (y of shape (N,)); got {len(x)} images "
                         f"and y of shape {tuple(y.shape)}.")
    y = y.to(dev)
    was_training = model.training
    model.eval()
    try:
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        for k in range(0, len(y), batch_size):
            correct += (model(x[k:k + batch_size]).argmax(1) == y[k:k + batch_size]).sum()
    finally:
        model.train(was_training)
    return int(correct) / len(y)


def load_trained(path: str | Path | None = None) -> SmallCNN:
    """Load the shipped trained :class:`SmallCNN` (state_dict, ``weights_only=True``) in eval mode.

    Args:
        path: checkpoint file; None means ``data_dir() / "cnn.pt"`` (``$QUANTLAB_DATA`` or ``<repo>/data``).
    Returns:
        SmallCNN in eval mode (BatchNorm uses its running statistics).
    Raises:
        FileNotFoundError: the checkpoint is missing (the message says how to remake it).

    Example:
        >>> model = load_trained()
        >>> model(load_mnist("test", n=4)[0]).argmax(1).shape   # predicted digits
        torch.Size([4])
    """
    path = Path(path) if path is not None else data_dir() / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"CNN checkpoint not found at {path}. Remake it with `.venv/bin/python -m quantlab.models train "
            f"--out {path}` (under a minute on 2 CPU cores)."
        )
    model = SmallCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One Conv2d equal to conv followed by bn in eval mode (computed in float64, stored as float32)."""
    dev = conv.weight.device
    ones = torch.ones(bn.num_features, dtype=torch.float64, device=dev)
    gamma = bn.weight.detach().double() if bn.affine else ones
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(ones)
    mu, var = bn.running_mean.double(), bn.running_var.double()
    k = gamma / torch.sqrt(var + bn.eps)                      # gamma / sqrt(sigma^2 + eps), shape (C_out,)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mu)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=dev, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_((w * k.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_(((b - mu) * k + beta).to(conv.weight.dtype))
    return fused


def _check_bn(name_a: str, conv: nn.Conv2d, name_b: str, bn: nn.BatchNorm2d) -> None:
    """A BatchNorm2d can be folded into its conv: running statistics present, finite, variance >= 0."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm2d {name_b!r} has no running statistics; cannot fold it.")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d {name_b!r} has {bn.num_features} channels but the conv {name_a!r} before "
                         f"it has {conv.out_channels}; they must match.")
    stats = [bn.running_mean, bn.running_var] + ([bn.weight, bn.bias] if bn.affine else [])
    if not all(bool(torch.isfinite(t).all()) for t in stats):
        raise ValueError(f"BatchNorm2d {name_b!r} has NaN/inf parameters or statistics; reload the model.")
    if bool((bn.running_var < 0).any()):
        raise ValueError(f"BatchNorm2d {name_b!r} has a negative running variance (channels "
                         f"{torch.nonzero(bn.running_var < 0).flatten().tolist()}); a variance is >= 0: "
                         "reload or recompute the statistics.")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every Conv2d directly followed by a BatchNorm2d folded into one Conv2d.

    With k = gamma / sqrt(sigma^2 + eps) per output channel c (sigma^2, mu: BN running statistics):
        w'_c = w_c * k_c,    b'_c = (b_c - mu_c) * k_c + beta_c      (b = 0 when the conv has no bias)
    The BatchNorm2d is replaced by ``nn.Identity()`` under the same name, so layer names stay valid.
    "Directly followed" means adjacent children of one container (e.g. ``conv1``, ``bn1`` of a
    Sequential); containers are searched recursively. ``model`` itself is not modified.

    Args:
        model: an nn.Module (e.g. :class:`SmallCNN`), in any mode.
    Returns:
        The folded copy, in eval mode; its output equals ``model.eval()``'s output up to float rounding.
    Raises:
        TypeError: model is not an nn.Module.
        ValueError: a BatchNorm2d to fold has no running statistics (``track_running_stats=False``), a
        negative or non-finite running variance, or channels that do not match its conv (each names the
        layer); a model on the meta device or split across devices.
    The copy stays on the model's device.

    Example:
        >>> folded = fold_batchnorm(SmallCNN())
        >>> folded.bn1, folded.conv1.bias.shape
        (Identity(), torch.Size([16]))
    """
    model_device(model)
    folded = copy.deepcopy(model)

    def visit(parent: nn.Module) -> None:
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children[:-1], children[1:], strict=True):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                _check_bn(name_a, a, name_b, b)
                setattr(parent, name_a, _fold(a, b))
                setattr(parent, name_b, nn.Identity())
        for _, child in parent.named_children():
            visit(child)

    visit(folded)
    return folded.eval()


# ---------------------------------------------------------------------------------------------------
# The one model walker and the one activation-hook mechanism: every module that visits or swaps the
# layers of a model (fake-quant weights, weight-only PTQ, full PTQ, correction, QAT) or records its
# activations (calibration, PTQ, the explorers) calls these.
# ---------------------------------------------------------------------------------------------------

#: The layers that carry weights to quantize (the text's convolution and fully connected operators).
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def find_layers(model: nn.Module, types=WEIGHT_LAYERS) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every submodule that is an instance of ``types``, in registration order.

    For a Sequential such as :class:`SmallCNN` that is the order of the forward pass. Names are the
    dotted names of ``model.named_modules()`` (``"conv1"``, ``"block.0"``...); a model that is itself
    one such layer (a bare ``nn.Linear``) is listed under the name ``""``.
    Raises TypeError if ``model`` is not an nn.Module.

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


def main(argv=None) -> None:
    """CLI: ``python -m quantlab.models train [--epochs N] [--seed S] [--threads T] [--out PATH]``."""
    ap = argparse.ArgumentParser(prog="python -m quantlab.models", description="Retrain the lab's SmallCNN.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train from scratch, print time and test accuracy, save the state_dict")
    tr.add_argument("--epochs", type=int, default=12)
    tr.add_argument("--threads", type=int, default=1, help="torch threads while training (default 1)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", type=Path, default=None, help="default: <data dir>/cnn.pt")
    args = ap.parse_args(argv)

    out = args.out if args.out is not None else data_dir() / CHECKPOINT
    t0 = time.perf_counter()
    model = train(epochs=args.epochs, seed=args.seed, threads=args.threads)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, *load_mnist("test"))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f"trained {args.epochs} epochs in {seconds:.1f} s on {args.threads} thread(s); "
          f"test accuracy {acc:.4f} ({round(acc * 1000)}/1000); saved {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()


def with_outlier_channel(model: nn.Module, layer: str, channel: int, factor: float) -> nn.Module:
    r"""A copy of ``model`` whose conv ``layer`` has output channel ``channel`` scaled by k = ``factor``.

    The BatchNorm after it (named like the layer with ``conv`` -> ``bn``: conv2 -> bn2) is scaled to match,
    mu_c <- k mu_c, sigma_c^2 <- k^2 sigma_c^2 (and the conv bias b_c <- k b_c), so in FP32 the network
    computes the same function; only the weights' range changed (lab 02's outlier channel). Built with
    :func:`replace_layers`: ``model`` is untouched.

    Raises ValueError naming the layer for an unknown layer, a layer without its BatchNorm, a channel out
    of range or a factor that is not a finite number > 0.

    >>> base = SmallCNN().eval()
    >>> m = with_outlier_channel(base, "conv2", 3, 20.0)
    >>> bool(torch.allclose(m.conv2.weight[3], 20 * base.conv2.weight[3]))
    True
    """
    import math

    check_model(model)
    bn_name = layer.replace("conv", "bn")
    modules = dict(model.named_modules())
    if not isinstance(modules.get(layer), nn.Conv2d) or not isinstance(modules.get(bn_name), nn.BatchNorm2d):
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"layer {layer!r} must be a Conv2d followed by BatchNorm2d {bn_name!r}; "
                         f"the model's Conv2d layers are {convs}.")
    n_out = modules[layer].out_channels
    if not isinstance(channel, int) or not 0 <= channel < n_out:
        raise ValueError(f"layer {layer!r}: channel must be an int in [0, {n_out - 1}]; got {channel!r}.")
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"layer {layer!r}: factor must be a finite number > 0; got {factor!r}.")

    def scale(name, m):
        with torch.no_grad():
            if name == layer:
                m.weight[channel] *= factor
                if m.bias is not None:
                    m.bias[channel] *= factor
            elif name == bn_name:
                m.running_mean[channel] *= factor
                m.running_var[channel] *= factor**2
        return m

    return replace_layers(model, scale, types=(nn.Conv2d, nn.BatchNorm2d))


__all__ += ["with_outlier_channel"]
