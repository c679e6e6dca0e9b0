r"""Calibration-set size in one pass: min/max activation ranges of every prefix of a calibration set.

Used by lab 04's explorer (how many calibration images are enough?) — equal, prefix by prefix, to
:func:`quantlab.ptq.calibrate_activations` with ``method="minmax"``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_images, check_same_device
from ..models import activation_hooks, fold_batchnorm
from .full import ActRanges, layer_chain

__all__ = ["prefix_minmax_ranges"]


def prefix_minmax_ranges(model: nn.Module, x_calib: torch.Tensor, sizes) -> dict:
    """{n: ActRanges} of min/max calibration on the first n images, for every n in ``sizes``, in one pass.

    Equal to ``calibrate_activations(model, x_calib[:n], "minmax")`` for each n: the range of a prefix is
    the running min/max (cummin/cummax over images) of per-image minima/maxima. Activations are read with
    :func:`quantlab.models.activation_hooks` on the BatchNorm-folded model's layers.

    Shapes: x_calib float32 (N, 1, 28, 28); sizes integers in 1..N. Raises ValueError for sizes outside
    1..N or empty, and what :func:`calibrate_activations` raises for bad images or unsupported layers.

    >>> from quantlab.models import SmallCNN
    >>> import torch
    >>> r = prefix_minmax_ranges(SmallCNN().eval(), torch.rand(8, 1, 28, 28), (2, 8))
    >>> r[2].n_images, r[8].ranges["relu1"][0]
    (2, 0.0)
    """
    check_same_device(model, check_images(x_calib, "x_calib", (1, 28, 28)), "x_calib")
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
