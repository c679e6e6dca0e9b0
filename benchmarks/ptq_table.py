"""The PTQ results table: accuracy and size of FP32 / weight-only / full (integer engine) quantization.

    .venv/bin/python benchmarks/ptq_table.py [--calib 500]

All 1,000 test images; activations calibrated on ``--calib`` training images (quantlab.data.calibration_batch);
weights symmetric (narrow grid), per-tensor vs per-channel; activations asymmetric unsigned. The full
quantization rows run the CNN through quantlab's integer-only engine (int8 x int8 -> int32 -> requantized).
"""

from __future__ import annotations

import argparse
import time

import torch

import quantlab as ql
from quantlab.data import calibration_batch, load_mnist
from quantlab.engine import run_int
from quantlab.models import evaluate, load_trained
from quantlab.ptq import calibrate_activations, convert, quantize_weights, state_size_bytes

METHODS = ("minmax", "percentile", "mse", "kl", "symmetric_kl", "js")


def int_accuracy(qmodel, x, y) -> float:
    with torch.no_grad():
        return float((run_int(qmodel, x).argmax(1) == y).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=500)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = load_trained()
    x, y = load_mnist("test")
    x_cal = calibration_batch(args.calib)
    fp32_bytes = state_size_bytes(model)
    grans = {"per-tensor": ql.PerTensor(), "per-channel": ql.PerChannel(0)}
    print(f"test images: {len(y)}, calibration images: {args.calib}")
    print(f"{'model':<34}{'per-tensor':>11}{'per-channel':>13}{'size (per-ch.)':>16}")
    print(f"{'FP32':<34}{evaluate(model, x, y):>11.3f}{evaluate(model, x, y):>13.3f}{fp32_bytes:>10,d} B 1.0x")
    for bits in (8, 4, 2):
        accs = {g: evaluate(quantize_weights(model, bits, gv), x, y) for g, gv in grans.items()}
        size = quantize_weights(model, bits, ql.PerChannel(0)).size_bytes()
        print(f"{f'weight-only W{bits}':<34}{accs['per-tensor']:>11.3f}{accs['per-channel']:>13.3f}"
              f"{size:>10,d} B {fp32_bytes / size:.1f}x")
    for w_bits, a_bits in ((8, 8), (4, 8), (8, 4)):
        for method in METHODS:
            ranges = calibrate_activations(model, x_cal, method=method, bits=a_bits)
            accs, size = {}, None
            for g, gv in grans.items():
                qm = convert(model, ranges, weight_bits=w_bits, act_bits=a_bits, granularity=gv)
                accs[g] = int_accuracy(qm, x, y)
                size = qm.size_bytes(packed=True)
            label = f"full W{w_bits}A{a_bits} ({method})"
            print(f"{label:<34}{accs['per-tensor']:>11.3f}{accs['per-channel']:>13.3f}"
                  f"{size:>10,d} B {fp32_bytes / size:.1f}x")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
