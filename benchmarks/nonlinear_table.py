"""The nonlinear-quantization table: linear vs log vs k-means vs NF at 2, 3, 4 bits, equal code bits.

    .venv/bin/python benchmarks/nonlinear_table.py [--granularity tensor|channel]

SQNR (dB) on 100,000 N(0, 1) and Laplace(0, 1) samples (seed 0) and on each Conv/Linear weight of the
trained CNN; CNN accuracy on all 1,000 test digits with weight-only quantization by each method; bytes
stored (codes + scales/codebooks/block absmax) and table lookups per weight. Linear = symmetric narrow
grid; log = power-of-two, linear-domain rounding; k-means = linear init, 20 Lloyd iterations; NF = NormalFloat
levels per block of 64 (granularity does not apply). Also: k-means fine-tuning of the 2-bit centroids.
"""

from __future__ import annotations

import argparse
import time

import torch

import quantlab as ql
from quantlab.data import load_mnist
from quantlab.models import evaluate, find_layers, load_trained
from quantlab.nonlinear import METHODS, finetune_centroids, kmeans_books, quantize_model_weights, quantize_weight

BITS = (2, 3, 4)


def distributions(n: int = 100_000):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g) - 0.5
    return {"gaussian": torch.randn(n, generator=g), "laplace": -torch.sign(u) * torch.log1p(-2 * u.abs())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--granularity", choices=("tensor", "channel"), default="tensor")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gran = ql.PerTensor() if args.granularity == "tensor" else ql.PerChannel(0)
    model = load_trained()
    x, y = load_mnist("test")
    data = distributions()
    data.update({name: layer.weight.detach() for name, layer in find_layers(model)})
    t0 = time.perf_counter()
    print(f"SQNR (dB), {args.granularity}-wise scales/codebooks; NF: blocks of 64")
    print(f"{'data':<10}{'bits':>5}" + "".join(f"{m:>9}" for m in METHODS))
    for name, r in data.items():
        for b in BITS:
            row = [ql.sqnr_db(r, quantize_weight(r, m, b, gran)[0]) for m in METHODS]
            print(f"{name:<10}{b:>5}" + "".join(f"{v:9.2f}" for v in row))
    fp32 = evaluate(model, x, y)
    print(f"\nCNN accuracy, weight-only, 1,000 test digits (FP32 {fp32:.3f}); bytes = all weights, stored")
    print(f"{'method':<8}" + "".join(f"{f'{b}b acc':>9}{f'{b}b bytes':>10}" for b in BITS) + f"{'lookups':>9}")
    for m in METHODS:
        cells, lookups = "", 0
        for b in BITS:
            mq, rep = quantize_model_weights(model, m, b, gran)
            cells += f"{evaluate(mq, x, y):9.3f}{sum(v['bytes'] for v in rep.values()):10.0f}"
            lookups = sum(v["lookups"] for v in rep.values())
        print(f"{m:<8}{cells}{lookups:>9}")
    x_tr, y_tr = load_mnist("train")
    for b in (2, 3):
        books = kmeans_books(model, b, gran)
        mq, _ = quantize_model_weights(model, "kmeans", b, gran)
        m_ft, _, _ = finetune_centroids(model, books, x_tr, y_tr, steps=100, lr=3e-4, batch_size=128)
        print(f"k-means {b} bits: {evaluate(mq, x, y):.3f} -> fine-tuned centroids (100 steps, codes fixed) "
              f"{evaluate(m_ft, x, y):.3f}")
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
