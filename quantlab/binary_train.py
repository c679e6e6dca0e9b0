r"""Binary networks on the lab's data: training (BWN, XNOR), the shipped checkpoints, and speed measurements.

    python -m quantlab.binary_train train --kind bwn     # -> data/bwn.pt   (progress bar, 1 thread)
    python -m quantlab.binary_train train --kind xnor    # -> data/xnor.pt

Both start from the trained FP32 CNN (``data/cnn.pt``), replace its hidden layers (conv2, fc1) by binary ones with
:func:`quantlab.binary.binarize_model` and fine-tune the latent float weights with the clipped STE.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._checks import check_same_device
from .binary import binarize_model
from .binary_kernel import HAVE_NUMBA, xnor_gemm_numba, xnor_gemm_numpy
from .data import data_dir, load_mnist
from .models import SmallCNN, evaluate, find_layers, fit, load_trained
from .packing import pack_signs

__all__ = ["KINDS", "CHECKPOINTS", "binary_cnn", "train_binary", "recalibrate_batchnorm", "load_binary",
           "time_binary_gemm"]

#: kind -> binarize_model(activations=...)
KINDS = {"bwn": False, "xnor": True}
CHECKPOINTS = {"bwn": "bwn.pt", "xnor": "xnor.pt"}
#: epochs of the shipped checkpoints (XNOR needs more: its activations are binary too)
EPOCHS = {"bwn": 8, "xnor": 15}


def _check_kind(kind: str) -> bool:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}; got {kind!r}.")
    return KINDS[kind]


def binary_cnn(kind: str, init: nn.Module | None = None) -> nn.Module:
    """The lab's SmallCNN with binary hidden layers: ``kind`` "bwn" (weights) or "xnor" (weights + activations).

    >>> [type(m).__name__ for m in binary_cnn("xnor").children()][2:6]
    ['Identity', 'MaxPool2d', 'BinaryConv2d', 'BatchNorm2d']
    """
    return binarize_model(init if init is not None else SmallCNN(), activations=_check_kind(kind))


def train_binary(kind: str, epochs: int | None = None, seed: int = 0, lr: float = 2e-3, batch_size: int = 64,
                 max_shift: int = 2, threads: int | None = 1, progress: bool = True, n: int | None = None):
    r"""Fine-tune a binary CNN from the FP32 checkpoint, deterministically (same recipe as ``models.train``).

    Loss: cross-entropy; Adam(lr, weight decay 0 — decay would pull latent weights to 0 and flip signs at random)
    with a one-cycle schedule; random shifts of up to ``max_shift`` pixels; batch order and shifts from one
    ``torch.Generator(seed)``; ``torch.use_deterministic_algorithms(True)`` and ``threads`` torch threads while
    training (both restored); at the end the BatchNorm statistics are re-estimated on the training images
    (:func:`recalibrate_batchnorm`). Latent weights of binary layers are clipped to [-1, 1] after each step
    (BinaryConnect), where the STE still passes gradient.
    epochs None: ``EPOCHS[kind]``. Returns the model in eval mode. Raises ValueError for an unknown kind or epochs < 1.

    >>> m = train_binary("bwn", epochs=1, n=256, progress=False)
    """
    _check_kind(kind)
    epochs = EPOCHS[kind] if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}.")
    x, y = load_mnist("train", n)

    def clip_latent(model):  # BinaryConnect: latent weights of the binary layers stay in [-1, 1]
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "binary_input"):
                    m.weight.clamp_(-1.0, 1.0)

    return fit(lambda: binary_cnn(kind, load_trained()), x, y, epochs=epochs, lr=lr, batch_size=batch_size,
               max_shift=max_shift, seed=seed, threads=threads, progress=progress,
               desc=f"train {kind.upper()} CNN", after_step=clip_latent,
               finish=lambda model: recalibrate_batchnorm(model, x))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> nn.Module:
    r"""Re-estimate every BatchNorm's running mean and variance on ``x`` with the final weights (in place).

    Needed for binary activations: sign(BN(x)) flips wherever the running mean is off by a little, and the
    moving averages collected while the signs were still changing are off (on this CNN: 0.73 test accuracy before,
    0.93 after, same weights). Cumulative average over batches (momentum=None); mode and momenta restored.

    >>> recalibrate_batchnorm(SmallCNN(), torch.zeros(8, 1, 28, 28)).bn1.num_batches_tracked
    tensor(1)
    """
    check_same_device(model, x)
    bns = [m for _, m in find_layers(model, nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [bn.momentum for bn in bns], model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for k in range(0, len(x), batch_size):
            model(x[k:k + batch_size])
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        model.train(was_training)
    return model


def load_binary(kind: str, path: str | Path | None = None) -> nn.Module:
    """Load a shipped binary CNN (``data/bwn.pt`` or ``data/xnor.pt``, state_dict, weights_only) in eval mode.

    Raises ValueError for an unknown kind; FileNotFoundError (with the remake command) if the file is missing.

    >>> load_binary("xnor").fc1.binary_input
    True
    """
    _check_kind(kind)
    path = Path(path) if path is not None else data_dir() / CHECKPOINTS[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found at {path}. Remake it with `.venv/bin/python -m "
                                f"quantlab.binary_train train --kind {kind}` (about a minute on one CPU thread).")
    model = binary_cnn(kind)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _best_interleaved(fns: dict, repeats: int, gap: float = 0.2) -> dict:
    """Best time (s) of each callable over ``repeats`` rounds; each round runs them all, one after another.

    Interleaving puts every contender under the same machine load (a shared machine's load changes over
    seconds), so their ratio is fairer than timing one after the other; best-of is the least disturbed round.
    Before each contender: a pause of ``gap`` seconds, so the previous contender's thread pool has stopped
    spinning (OpenBLAS's threads spin for a while after a call and would slow torch's), then one untimed call
    (wakes its own pool), then the timed call.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(gap)
            fn()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def time_binary_gemm(M: int, N: int, K: int, repeats: int = 5, seed: int = 0, numpy_path: bool = False) -> dict:
    r"""Time A @ W^T for random ±1 matrices A (M, K), W (N, K): float32 NumPy/BLAS, float32 torch, packed kernel.

    Side by side in one call: ``repeats`` rounds, each timing all three one after another (each after a 0.2 s
    pause and an untimed warm call); the best round of each, in seconds. Also: packing time of both operands
    (``pack_s``), the plain-NumPy XNOR path if ``numpy_path``, operand bytes (float32 vs packed), and whether
    the packed result equals the float product exactly. Timings depend on the machine and its load.

    >>> r = time_binary_gemm(64, 64, 256, repeats=1); r["exact"], r["bytes_float"] // r["bytes_packed"]
    (True, 32)
    """
    rng = np.random.default_rng(seed)
    a = np.where(rng.random((M, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    w = np.where(rng.random((N, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)
    t0 = time.perf_counter()
    pa, pw = pack_signs(a), pack_signs(w)
    pack_s = time.perf_counter() - t0
    kernel = xnor_gemm_numba if HAVE_NUMBA else xnor_gemm_numpy
    exact = bool(np.array_equal(kernel(pa, pw, K), (a @ w.T).astype(np.int64)))
    times = _best_interleaved({"numpy_blas_s": lambda: a @ w.T, "torch_s": lambda: ta @ tw.T,
                               "packed_s": lambda: kernel(pa, pw, K)}, repeats)
    out = {"M": M, "N": N, "K": K, "exact": exact, "pack_s": pack_s, **times,
           "bytes_float": a.nbytes + w.nbytes, "bytes_packed": pa.nbytes + pw.nbytes, "compiled": HAVE_NUMBA}
    if numpy_path:
        out["numpy_xnor_s"] = _best_interleaved({"x": lambda: xnor_gemm_numpy(pa, pw, K)}, max(1, repeats // 2))["x"]
    return out


def main(argv=None) -> None:
    """CLI: ``python -m quantlab.binary_train train --kind {bwn,xnor} [--epochs N] [--seed S] [--out PATH]``."""
    ap = argparse.ArgumentParser(prog="python -m quantlab.binary_train", description="Train the lab's binary CNNs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="fine-tune from data/cnn.pt, print time and accuracy, save the state_dict")
    tr.add_argument("--kind", choices=sorted(KINDS), required=True)
    tr.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out if args.out is not None else data_dir() / CHECKPOINTS[args.kind]
    t0 = time.perf_counter()
    model = train_binary(args.kind, epochs=args.epochs, seed=args.seed, lr=args.lr, threads=args.threads)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, *load_mnist("test"))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    epochs = args.epochs or EPOCHS[args.kind]
    print(f"{args.kind}: trained {epochs} epochs in {seconds:.1f} s on {args.threads} thread(s); test accuracy "
          f"{acc:.4f} ({round(acc * 1000)}/1000); saved {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
