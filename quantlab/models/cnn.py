"""The lab's small CNN: definition, deterministic training, evaluation, loading, the retraining CLI.

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
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .._checks import check_images, check_positive_float, check_positive_int, check_same_device
from ..data import data_dir, load_mnist

__all__ = ["CHECKPOINT", "SmallCNN", "train", "evaluate", "load_trained"]

CHECKPOINT = "cnn.pt"


class SmallCNN(nn.Sequential):
    """Two conv blocks and two linear layers, ~106k parameters (~0.42 MB in float32).

    Layers (names are stable; quantization code may address them): ``conv1 bn1 relu1 pool1 conv2 bn2
    relu2 pool2 flatten fc1 relu3 fc2``. The convolutions have no bias (the following BatchNorm's beta
    plays that role); :func:`quantlab.models.fold_batchnorm` gives them one.

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
    x, y = load_mnist("train", n)
    return fit(SmallCNN, x, y, epochs=epochs, lr=lr, weight_decay=1e-4, batch_size=batch_size,
               max_shift=max_shift, seed=seed, threads=threads, progress=progress, desc="train SmallCNN")


def fit(make_model, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, weight_decay: float = 0.0,
        batch_size: int = 64, max_shift: int = 2, seed: int = 0, threads: int | None = 1, progress: bool = True,
        desc: str = "train", after_step=None, finish=None) -> nn.Module:
    """The one deterministic training loop of the labs' checkpoints (:func:`train`, the binary CNNs).

    ``torch.manual_seed(seed)``, then ``model = make_model()`` (so its initial weights follow the seed); Adam(lr,
    weight_decay) with a one-cycle schedule over ``epochs`` passes of shuffled batches (one
    ``torch.Generator(seed)`` for the order and the random shifts of up to ``max_shift`` pixels), cross-entropy
    loss. ``after_step(model)`` runs after every optimiser step (e.g. clipping latent weights), ``finish(model)``
    once at the end, both still under ``torch.use_deterministic_algorithms(True)`` and ``threads`` threads
    (restored afterwards). Returns the model in eval mode. Shapes: x (N, 1, 28, 28) float, y (N,) int64.
    CPU-only by design, so a checkpoint is the same bit for bit on any machine: x, y on another device are
    copied to the CPU once, and the trained model is returned on x's device.

    >>> m = fit(SmallCNN, *load_mnist("train", n=64), epochs=1, lr=1e-3, progress=False)
    >>> m.training
    False
    """
    from tqdm.auto import tqdm

    device = x.device
    x, y = x.cpu(), y.cpu()
    was_det, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps = epochs * ((len(y) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
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
                if after_step is not None:
                    after_step(model)
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        bar.close()
        if finish is not None:
            finish(model)
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(was_threads)
    return model.eval().to(device)


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

