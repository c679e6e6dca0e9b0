"""QAT vs PTQ on the lab CNN at W8A8, W4A4, W3A3, W2A2 and W4A8; writes data/qat_table.json (+ checkpoints).

    .venv/bin/python benchmarks/qat_table.py [--out data] [--calib 500]

PTQ: the existing PTQ code (quantlab.ptq.calibrate_activations + convert, weights per channel), every
calibration method, the best by test accuracy (an upper bound for PTQ: chosen on the test set).
QAT: from data/cnn.pt, step 1 min/max ranges on the same calibration images, step 2 BN folded +
fake-quant nodes (weights per channel; ranges observed as in the text -- weights min/max, activations
moving average -- or learned by LSQ for weights and activations), step 3 fine-tuning on the
4,000 training images (one thread, seeded), step 4 export; accuracy of the *integer* model on all
1,000 test images, next to the fake-quant model's. Also writes the shipped checkpoints
qat_w4a4.pt (observed ranges) / qat_w2a2.pt (LSQ) and qat_trace.npz (curves, conv2 weights and
scales during the W2A2 LSQ run, for lab 07).
Runs one configuration at a time, ten fine-tunes, about 10 min on one busy core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from quantlab.data import calibration_batch, data_dir, load_mnist
from quantlab.engine import run_int
from quantlab.models import evaluate, load_trained
from quantlab.ptq import calibrate_activations, convert
from quantlab.qat import export, initial_ranges, prepare_qat, qat_train, save_qat

METHODS = ("minmax", "percentile", "mse", "kl", "symmetric_kl", "js")
#: (weight bits, activation bits, steps, lr): more steps where there is more to recover.
CONFIGS = [(8, 8, 100, 1e-4), (4, 8, 150, 3e-4), (4, 4, 200, 3e-4), (3, 3, 400, 5e-4), (2, 2, 600, 1e-3)]
#: The shipped checkpoints: (weight bits, act bits, ranges) with ranges "observed" (the text) or "lsq".
SHIP = {(4, 4, "observed"), (2, 2, "lsq")}
TRACE = (2, 2, "lsq")


def int_accuracy(qmodel, x, y) -> float:
    with torch.no_grad():
        return float((run_int(qmodel, x).argmax(1) == y).float().mean())


def best_ptq(model, x_cal, x, y, wb, ab) -> tuple[float, str]:
    best = (-1.0, "")
    for method in METHODS:
        ranges = calibrate_activations(model, x_cal, method=method, bits=ab)
        acc = int_accuracy(convert(model, ranges, weight_bits=wb, act_bits=ab), x, y)
        best = max(best, (acc, method))
    return best


def run_qat(model, x_cal, train, test, wb, ab, steps, lr, trace, learn=None):
    t0 = time.perf_counter()
    qat = prepare_qat(model, initial_ranges(model, x_cal), wb, ab, weight_learn=learn, act_learn=learn)
    snaps, scales, steps_seen = [], [], []

    def record(rec, m):
        if trace:
            steps_seen.append(rec["step"])
            snaps.append(m.net.conv2.layer.weight.detach().flatten().clone())
            scales.append(m.net.conv2.weight_fq.qparams().s.flatten().clone())

    if trace:
        record({"step": 0}, qat)
    every = max(steps // 20, 1) if trace else steps  # test-set curves only for the traced run
    hist = qat_train(qat, train, steps=steps, lr=lr, eval_data=test, eval_every=every, threads=1,
                     callback=record, progress=False)
    seconds = time.perf_counter() - t0
    qmodel = export(qat)
    out = {"qat": int_accuracy(qmodel, *test), "qat_fake_quant": evaluate(qat, *test), "steps": steps,
           "lr": lr, "seconds": round(seconds, 1), "size_bytes": qmodel.size_bytes(packed=True)}
    tr = None
    if trace:
        tr = {"trace_steps": np.array(steps_seen), "conv2_weights": torch.stack(snaps).numpy(),
              "curve_steps": np.array(hist.column("step")), "curve_loss": np.array(hist.column("loss")),
              "curve_test_acc": np.array(hist.column("test_acc")),
              "conv2_s": torch.stack(scales).numpy(), "weight_bits": wb, "act_bits": ab}
    return qat, out, tr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=data_dir())
    ap.add_argument("--calib", type=int, default=500)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = load_trained()
    test, train = load_mnist("test"), load_mnist("train")
    x_cal = calibration_batch(args.calib)
    fp32 = evaluate(model, *test)
    rows = []
    print(f"FP32 {fp32:.3f}\n{'config':<8}{'PTQ best':>10}{'(method)':>14}{'QAT int':>9}{'QAT fq':>8}{'s':>7}"
          f"{'LSQ int':>9}{'s':>7}")
    for wb, ab, steps, lr in CONFIGS:
        ptq, method = best_ptq(model, x_cal, *test, wb, ab)
        row = {"config": f"W{wb}A{ab}", "weight_bits": wb, "act_bits": ab, "ptq_best": ptq, "ptq_method": method}
        for ranges, learn in (("observed", None), ("lsq", "lsq")):
            tag = "qat" if learn is None else "qat_lsq"
            qat, res, tr = run_qat(model, x_cal, train, test, wb, ab, steps, lr,
                                   (wb, ab, ranges) == TRACE, learn)
            row.update({tag: res.pop("qat"), f"{tag}_fake_quant": res.pop("qat_fake_quant"),
                        f"{tag}_seconds": res.pop("seconds"), **res})
            if (wb, ab, ranges) in SHIP:
                save_qat(qat, args.out / f"qat_w{wb}a{ab}.pt")
            if tr is not None:
                np.savez_compressed(args.out / "qat_trace.npz", **tr)
        rows.append(row)
        print(f"{row['config']:<8}{ptq:>10.3f}{method:>14}{row['qat']:>9.3f}{row['qat_fake_quant']:>8.3f}"
              f"{row['qat_seconds']:>7.1f}{row['qat_lsq']:>9.3f}{row['qat_lsq_seconds']:>7.1f}", flush=True)
    table = {"fp32": fp32, "calib_images": args.calib, "test_images": len(test[1]), "rows": rows,
             "command": "python benchmarks/qat_table.py", "torch": torch.__version__}
    (args.out / "qat_table.json").write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out / 'qat_table.json'}")


if __name__ == "__main__":
    main()
