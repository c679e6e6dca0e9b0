"""The correction table (lab 06, README): accuracy with no correction, bias and/or weight correction.

    .venv/bin/python benchmarks/correction_table.py [--calib 500] [--out data/correction_table.json]

The trained CNN at weight bits 4, 3, 2, per-tensor and per-channel (symmetric narrow grid): weight-only
(fake-quantized weights, FP32 activations) and full quantization on quantlab's integer engine with 8-bit
activations (W4A8 ...) and W4A4 (min/max calibration). For every combination of bias correction (none,
empirical, data-free) and weight correction (none, the text's rule, the mean-and-norm rule): accuracy on all
1,000 test digits and, per layer and output channel, the output mean error a_i - a_q on the test digits.
Calibration (ranges, empirical bias correction): the first ``--calib`` training images. Writes a small JSON
file the lab and its explorer read (so the lab does not spend minutes recomputing it) and prints the table.
Where zeta_c folded into s_w makes M = s_w s_x / s_y >= 1, int_quantizer widens that layer's output grid;
a setting the integer engine still cannot deploy (a ValueError) would be stored with accuracy null.
Deterministic: same torch version and CPU -> same numbers. One torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from quantlab.correction import (
    channel_means,
    data_free_bias_correction,
    empirical_bias_correction,
    evaluate_quantized,
    int_quantizer,
    weight_quantizer,
)
from quantlab.data import calibration_batch, data_dir, load_mnist
from quantlab.granularity import PerChannel, PerTensor
from quantlab.models import evaluate, find_layers, fold_batchnorm, load_trained
from quantlab.ptq import calibrate_activations

GRANULARITIES = {"per-tensor": PerTensor(), "per-channel": PerChannel(0)}
BIAS = ("none", "empirical", "data_free")
WEIGHT = ("none", "text", "mean_norm")
SETTINGS = [("weight-only", b, None) for b in (4, 3, 2)] + [("full", b, 8) for b in (4, 3, 2)] + [("full", 4, 4)]


def run_one(model, quantizer, bias, x_cal, x, y, names, a_i):
    """Correct, quantize, evaluate; returns (accuracy, {layer: [a_i - a_q per channel]})."""
    if bias == "empirical":
        model, _ = empirical_bias_correction(model, quantizer, x_cal)
    elif bias == "data_free":
        model, _ = data_free_bias_correction(model, quantizer)
    qm = quantizer(model)
    a_q = channel_means(qm, x, names)
    errors = {n: [round(float(v), 5) for v in a_i[n] - a_q[n]] for n in names}
    return evaluate_quantized(qm, x, y), errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=500)
    ap.add_argument("--out", type=Path, default=data_dir() / "correction_table.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_trained()
    x, y = load_mnist("test")
    x_cal = calibration_batch(args.calib)
    names = [n for n, _ in find_layers(model)]
    a_i = channel_means(fold_batchnorm(model), x, names)
    ranges = {a: calibrate_activations(model, x_cal, "minmax", bits=a) for a in (4, 8)}
    rows = []
    for (mode, wb, ab), g, bias, rule in itertools.product(SETTINGS, GRANULARITIES, BIAS, WEIGHT):
        rule_arg = None if rule == "none" else rule
        if mode == "weight-only":
            quantizer = weight_quantizer(wb, GRANULARITIES[g], rule_arg)
        else:
            quantizer = int_quantizer(ranges[ab], wb, ab, GRANULARITIES[g], rule_arg)
        try:
            acc, errors = run_one(model, quantizer, bias, x_cal, x, y, names, a_i)
        except ValueError as e:  # a correction the integer engine cannot deploy (none in the shipped table)
            acc, errors = None, None
            print(f"  not deployable: {e}")
        rows.append({"mode": mode, "w_bits": wb, "a_bits": ab, "granularity": g, "bias": bias, "weight": rule,
                     "accuracy": acc, "errors": errors})
        print(f"{mode:<12} W{wb}{'' if ab is None else f'A{ab}'} {g:<12} bias={bias:<10} weight={rule:<10} "
              f"{'n/a' if acc is None else f'{acc:.3f}'}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {"fp32_accuracy": evaluate(model, x, y), "n_test": len(y), "n_calib": args.calib,
           "layers": names, "calibration": "minmax", "weights": "symmetric, narrow grid",
           "command": "python benchmarks/correction_table.py", "torch": torch.__version__, "rows": rows}
    args.out.write_text(json.dumps(out, separators=(",", ":")))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
