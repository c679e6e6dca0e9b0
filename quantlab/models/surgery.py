"""Function-preserving edits of a trained CNN: batch-norm folding and lab 02's outlier channel.

:func:`fold_batchnorm` merges each Conv2d + BatchNorm2d pair into one Conv2d (the form an integer engine
runs); :func:`with_outlier_channel` rescales one conv channel and its BatchNorm so the network computes
the same function with a wider weight range. Both return a copy; the model passed in is never modified.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .._checks import check_model, model_device
from .walker import replace_layers

__all__ = ["fold_batchnorm", "with_outlier_channel"]

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
        >>> from quantlab.models import SmallCNN
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


def with_outlier_channel(model: nn.Module, layer: str, channel: int, factor: float) -> nn.Module:
    r"""A copy of ``model`` whose conv ``layer`` has output channel ``channel`` scaled by k = ``factor``.

    The BatchNorm after it (named like the layer with ``conv`` -> ``bn``: conv2 -> bn2) is scaled to match,
    mu_c <- k mu_c, sigma_c^2 <- k^2 sigma_c^2 (and the conv bias b_c <- k b_c), so in FP32 the network
    computes the same function; only the weights' range changed (lab 02's outlier channel). Built with
    :func:`replace_layers`: ``model`` is untouched.

    Raises ValueError naming the layer for an unknown layer, a layer without its BatchNorm, a channel out
    of range or a factor that is not a finite number > 0.

    >>> from quantlab.models import SmallCNN
    >>> base = SmallCNN().eval()
    >>> m = with_outlier_channel(base, "conv2", 3, 20.0)
    >>> bool(torch.allclose(m.conv2.weight[3], 20 * base.conv2.weight[3]))
    True
    """
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
